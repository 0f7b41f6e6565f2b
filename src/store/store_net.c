/* store_net: trusted networks (may relay without AUTH). CIDRs are parsed
 * with inet_pton and must have their host bits zero (10.0.0.1/8 is refused
 * with a hint, not silently widened). Matching runs in memory against a list
 * reloaded when PRAGMA data_version says another connection changed the
 * database. Runs in kalectl (changes) and in kaled's smtpd (match). */
#include "store/store_int.h"

#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "lib/util.h"

/* Parses "ADDR[/PREFIX]" into n and the normalised text. */
static int store_cidr_parse(const char *in, struct store_net *n, char *norm, size_t cap,
    char **error_r)
{
	char host[INET6_ADDRSTRLEN + 1], text[INET6_ADDRSTRLEN];
	const char *slash = strchr(in, '/');
	size_t hlen = slash ? (size_t)(slash - in) : strlen(in);
	long long prefix;
	int max, bad = 0;

	memset(n, 0, sizeof(*n));
	if (hlen == 0 || hlen >= sizeof(host))
		return util_err(error_r, "bad network '%.100s': expected ADDRESS[/PREFIX]", in);
	memcpy(host, in, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, n->addr) == 1) {
		n->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, n->addr) == 1) {
		n->family = AF_INET6;
		max = 128;
	} else {
		return util_err(error_r, "bad network '%.100s': not an IPv4 or IPv6 address", in);
	}
	prefix = max;
	if (slash != NULL && util_strtonum(slash + 1, 0, max, &prefix) < 0)
		return util_err(error_r, "bad network '%.100s': prefix must be 0-%d", in, max);
	n->prefix = (int)prefix;
	for (int i = 0; i < max / 8; i++) {
		int bits = n->prefix - i * 8;
		unsigned char mask = bits >= 8 ? 0xff : bits <= 0 ? 0 : (unsigned char)(0xff << (8 - bits));
		if (n->addr[i] & ~mask) {
			bad = 1;
			n->addr[i] &= mask;
		}
	}
	if (inet_ntop(n->family, n->addr, text, sizeof(text)) == NULL ||
	    util_fmt(norm, cap, "%s/%d", text, n->prefix) < 0)
		return util_err(error_r, "bad network '%.100s'", in);
	if (bad)
		return util_err(error_r, "bad network '%.100s': host bits set; did you mean %s?", in, norm);
	return 0;
}

void store_net_invalidate(store *st)
{
	st->nets_loaded = 0;
}

void store_net_free(store *st)
{
	free(st->nets);
	st->nets = NULL;
	st->n_nets = 0;
	st->nets_loaded = 0;
}

int store_network_add(store *st, const char *cidr, char **error_r)
{
	struct store_net n;
	char norm[INET6_ADDRSTRLEN + 8];
	int rc;

	if (cidr == NULL || store_cidr_parse(cidr, &n, norm, sizeof(norm), error_r) < 0)
		return cidr == NULL ? util_err(error_r, "no network") : -1;
	rc = store_run_added(st, store_run(st, ST_NET_ADD, "tiib", norm, n.family == AF_INET ? 4 : 6,
	    n.prefix, (const void *)n.addr, n.family == AF_INET ? 4 : 16), "network", norm, error_r);
	store_net_invalidate(st);
	return rc;
}

int store_network_del(store *st, const char *cidr, char **error_r)
{
	struct store_net n;
	char norm[INET6_ADDRSTRLEN + 8];
	int rc = -1;

	if (cidr == NULL || store_cidr_parse(cidr, &n, norm, sizeof(norm), error_r) < 0)
		return cidr == NULL ? util_err(error_r, "no network") : -1;
	if (store_run(st, ST_NET_DEL, "t", norm) != STORE_DONE)
		store_err_db(st, error_r, "store: delete network");
	else if (store_changes(st) == 0)
		util_err(error_r, "no such network %s", norm);
	else
		rc = 0;
	store_net_invalidate(st);
	return rc;
}

int store_network_list(store *st, int (*cb)(void *ctx, const char *cidr), void *ctx)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_NET_LIST, NULL, "") < 0)
		return -1;
	while ((rc = store_q_step(&q)) == STORE_ROW) {
		if (cb(ctx, store_q_text(&q, 0)) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	store_q_end(&q);
	return rc == STORE_DONE ? 0 : -1;
}

static int store_net_load(store *st)
{
	struct store_q q;
	struct store_net *nets = NULL;
	int n = 0, rc;

	if (store_q_start(st, &q, ST_NET_LOAD, NULL, "") < 0)
		return -1;
	while ((rc = store_q_step(&q)) == STORE_ROW) {
		int fam = (int)store_q_int(&q, 0), prefix = (int)store_q_int(&q, 1);
		int len = 0;
		const void *blob = store_q_blob(&q, 2, &len);
		struct store_net *e;
		if (!((fam == 4 && len == 4 && prefix >= 0 && prefix <= 32) ||
		    (fam == 6 && len == 16 && prefix >= 0 && prefix <= 128)) || blob == NULL)
			continue;        /* not written by us: ignore */
		nets = xrealloc(nets, sizeof(*nets) * (size_t)(n + 1));
		e = &nets[n++];
		memset(e, 0, sizeof(*e));
		e->family = fam == 4 ? AF_INET : AF_INET6;
		e->prefix = prefix;
		memcpy(e->addr, blob, (size_t)len);
	}
	store_q_end(&q);
	if (rc != STORE_DONE) {
		free(nets);
		return -1;
	}
	free(st->nets);
	st->nets = nets;
	st->n_nets = n;
	st->nets_loaded = 1;
	return 0;
}

static int store_prefix_match(const unsigned char *a, const unsigned char *net, int prefix)
{
	int bytes = prefix / 8, bits = prefix % 8;

	if (memcmp(a, net, (size_t)bytes) != 0)
		return 0;
	if (bits == 0)
		return 1;
	unsigned char mask = (unsigned char)(0xff << (8 - bits));
	return (a[bytes] & mask) == (net[bytes] & mask);
}

int store_network_match(store *st, const struct sockaddr *sa)
{
	unsigned char addr[16];
	int family;
	int64_t v;

	if (sa == NULL)
		return 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		memcpy(addr, &in->sin_addr, 4);
		family = AF_INET;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			memcpy(addr, in6->sin6_addr.s6_addr + 12, 4);
			family = AF_INET;
		} else {
			memcpy(addr, &in6->sin6_addr, 16);
			family = AF_INET6;
		}
	} else {
		return 0;
	}
	if (store_data_version(st, &v) < 0)
		return -1;
	if (!st->nets_loaded || v != st->nets_version) {
		if (store_net_load(st) < 0)
			return -1;
		st->nets_version = v;
	}
	for (int i = 0; i < st->n_nets; i++)
		if (st->nets[i].family == family &&
		    store_prefix_match(addr, st->nets[i].addr, st->nets[i].prefix))
			return 1;
	return 0;
}
