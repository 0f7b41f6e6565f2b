/* store: the shared validation helpers and the domain table of the policy
 * store (the engine, connection and migrations are in store_sqlite.c, the
 * SQL texts in store_sql.c). Runs in every process that opens the store
 * (kaled's children, kalectl). */
#include "store/store_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "conf/conf.h"
#include "lib/util.h"

/* ---- validation ---- */

int store_domain_name_norm(const char *in, char *out, size_t cap, char **error_r)
{
	size_t len = in ? strlen(in) : 0, label = 0;

	if (len == 0)
		return util_err(error_r, "empty domain name");
	if (len > 253 || len >= cap)
		return util_err(error_r, "domain name too long (max 253)");
	for (size_t i = 0; i <= len; i++) {
		char c = (char)tolower((unsigned char)in[i]);
		if (c == '.' || c == '\0') {
			if (label == 0)
				return util_err(error_r, "bad domain name '%.253s': empty label", in);
			if (out[i - 1] == '-')
				return util_err(error_r, "bad domain name '%.253s': label ends with '-'", in);
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
			if (label == 0 && c == '-')
				return util_err(error_r, "bad domain name '%.253s': label starts with '-'", in);
			if (++label > 63)
				return util_err(error_r, "bad domain name '%.253s': label longer than 63", in);
		} else {
			return util_err(error_r, "bad domain name '%.253s': only a-z 0-9 - and dots allowed", in);
		}
		out[i] = c;
	}
	return 0;
}

int store_localpart_norm(const char *in, char *out, size_t cap, char **error_r)
{
	size_t len = strlen(in);

	if (len == 0)
		return util_err(error_r, "empty local part");
	if (len > 64 || len >= cap)
		return util_err(error_r, "local part too long (max 64)");
	for (size_t i = 0; i < len; i++) {
		char c = (char)tolower((unsigned char)in[i]);
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '_' || c == '+' || c == '-'))
			return util_err(error_r, "bad local part '%.64s': only a-z 0-9 . _ + - allowed", in);
		if (c == '.' && (i == 0 || i == len - 1 || in[i - 1] == '.'))
			return util_err(error_r, "bad local part '%.64s': leading, trailing or double dot", in);
		out[i] = c;
	}
	out[len] = '\0';
	return 0;
}

/* RFC 5322 atext plus dots (dot-atom); quoted local parts are not accepted */
static int store_atext(unsigned char c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+/=?^_`{|}~-", c) != NULL);
}

int store_address_norm(const char *in, char *out, size_t cap, char **error_r)
{
	const char *at = strrchr(in, '@');
	size_t llen;

	if (at == NULL)
		return util_err(error_r, "bad address '%.300s': no '@'", in);
	llen = (size_t)(at - in);
	if (llen == 0 || llen > 64)
		return util_err(error_r, "bad address '%.300s': local part empty or longer than 64", in);
	if (llen + 2 >= cap)
		return util_err(error_r, "address too long");
	for (size_t i = 0; i < llen; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '.') {
			if (i == 0 || i == llen - 1 || in[i - 1] == '.')
				return util_err(error_r, "bad address '%.300s': leading, trailing or double dot", in);
		} else if (!store_atext(c)) {
			return util_err(error_r, "bad address '%.300s': character not allowed in local part", in);
		}
		out[i] = (char)tolower(c);
	}
	out[llen] = '@';
	if (store_domain_name_norm(at + 1, out + llen + 1, cap - llen - 1, error_r) < 0)
		return -1;
	return 0;
}

int store_local_address(store *st, const char *in, int relay_ok, char *addr, size_t acap,
    char *domain, size_t dcap, char **error_r)
{
	struct store_domain d;
	const char *at = in ? strrchr(in, '@') : NULL;
	char local[65];
	char *lp;
	int rc;

	if (at == NULL)
		return util_err(error_r, "bad address '%.300s': expected local@domain", in ? in : "");
	if ((size_t)(at - in) > 64)
		return util_err(error_r, "local part too long (max 64)");
	lp = xstrndup(in, (size_t)(at - in));
	rc = store_localpart_norm(lp, local, sizeof(local), error_r);
	free(lp);
	if (rc < 0)
		return -1;
	if (store_domain_name_norm(at + 1, domain, dcap, error_r) < 0)
		return -1;
	rc = store_domain_get(st, domain, &d);
	if (rc < 0)
		return store_err_db(st, error_r, "store: domain lookup");
	if (rc == 0)
		return util_err(error_r, "domain %s does not exist", domain);
	if (!d.local && !relay_ok)
		return util_err(error_r, "domain %s is not a local domain", domain);
	if (util_fmt(addr, acap, "%s@%s", local, domain) < 0)
		return util_err(error_r, "address too long");
	return 0;
}

int store_name_ok(const char *s, size_t max)
{
	size_t len = strlen(s);

	if (len == 0 || len > max)
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
			return 0;
	return 1;
}

static int store_port_ok(const char *s)
{
	long long v;

	return util_strtonum(s, 1, 65535, &v) == 0 && isdigit((unsigned char)*s);
}

int store_relay_check(const char *relay, char **error_r)
{
	char host[300], norm[300];
	const char *port = NULL, *end;
	struct in6_addr a6;
	size_t hlen;

	if (relay == NULL || *relay == '\0')
		return util_err(error_r, "empty relay");
	if (strlen(relay) >= sizeof(host))
		return util_err(error_r, "relay too long");
	if (strcmp(relay, "mx") == 0)
		return 0;
	if (strncmp(relay, "ldap:", 5) == 0) {
		if (!store_name_ok(relay + 5, 63))
			return util_err(error_r, "bad relay '%s': ldap:PROFILE with a profile name of "
			    "letters, digits, - _ .", relay);
		return 0;
	}
	if (relay[0] == '[') {
		end = strchr(relay, ']');
		if (end == NULL)
			return util_err(error_r, "bad relay '%s': missing ']'", relay);
		hlen = (size_t)(end - relay - 1);
		memcpy(host, relay + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1)
			return util_err(error_r, "bad relay '%s': not an IPv6 address in brackets", relay);
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return util_err(error_r, "bad relay '%s': expected [IPv6][:PORT]", relay);
	} else {
		end = strchr(relay, ':');
		hlen = end ? (size_t)(end - relay) : strlen(relay);
		memcpy(host, relay, hlen);
		host[hlen] = '\0';
		if (end != NULL)
			port = end + 1;
		/* a host name or an IPv4 literal; both fit the domain-name syntax */
		if (store_domain_name_norm(host, norm, sizeof(norm), NULL) < 0)
			return util_err(error_r, "bad relay '%s': expected HOST[:PORT], [IPv6][:PORT], "
			    "mx or ldap:PROFILE", relay);
	}
	if (port != NULL && !store_port_ok(port))
		return util_err(error_r, "bad relay '%s': port must be 1-65535", relay);
	return 0;
}

/* ---- domains ---- */

static void store_domain_row(struct store_q *q, struct store_domain *d)
{
	memset(d, 0, sizeof(*d));
	store_q_copy(q, 0, d->name, sizeof(d->name));
	d->local = (int)store_q_int(q, 1);
	store_q_copy(q, 2, d->relay, sizeof(d->relay));
	store_q_copy(q, 3, d->tls, sizeof(d->tls));
	store_q_copy(q, 4, d->verify, sizeof(d->verify));
	store_q_copy(q, 5, d->filter, sizeof(d->filter));
}

int store_domain_get(store *st, const char *name, struct store_domain *d_r)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_DOMAIN_GET, NULL, "t", name) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_domain_row(&q, d_r);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

static int store_verify_check(store *st, const char *verify, char **error_r)
{
	struct store_verify v;
	int rc;

	if (*verify == '\0')
		return 0;
	if (!store_name_ok(verify, 63))
		return util_err(error_r, "bad verification profile name '%.64s'", verify);
	/* a domain pointing at a profile that does not exist would answer 451
	 * to every recipient: refuse it here */
	rc = store_verify_get(st, verify, &v);
	if (rc < 0)
		return util_err(error_r, "cannot read verification profile '%s'", verify);
	if (rc == 0)
		return util_err(error_r, "no verification profile '%s' (kalectl verify add)", verify);
	return 0;
}

int store_domain_add(store *st, const struct store_domain *d, char **error_r)
{
	char name[256];
	const char *tls = d->tls[0] ? d->tls : "opportunistic";
	const char *verify = d->verify;
	const char *filter = d->filter[0] ? d->filter : "default";

	if (store_domain_name_norm(d->name, name, sizeof(name), error_r) < 0)
		return -1;
	if (d->local && d->relay[0] != '\0')
		return util_err(error_r, "a domain is either local or relayed, not both");
	if (!d->local && d->relay[0] == '\0')
		return util_err(error_r, "a domain needs --local or --relay");
	if (!d->local && store_relay_check(d->relay, error_r) < 0)
		return -1;
	if (strcmp(tls, "opportunistic") != 0 && strcmp(tls, "require") != 0)
		return util_err(error_r, "tls must be 'opportunistic' or 'require'");
	/* A domain routed by ldap:PROFILE asks that profile at RCPT unless
	 * the caller says otherwise ("none"): its directory knows who exists,
	 * and accepting the others would bounce them later (backscatter). */
	if (strcmp(verify, "none") == 0)
		verify = "";
	else if (verify[0] == '\0' && !d->local && strncmp(d->relay, "ldap:", 5) == 0)
		verify = d->relay + 5;
	if (store_verify_check(st, verify, error_r) < 0 || store_filter_policy_check(st, filter, error_r) < 0)
		return -1;
	return store_run_added(st, store_run(st, ST_DOMAIN_ADD, "titttt", name, d->local ? 1 : 0,
	    d->local ? "" : d->relay, tls, verify, filter), "domain", name, error_r);
}

int store_domain_set_filter(store *st, const char *name, const char *policy, char **error_r)
{
	if (store_filter_policy_check(st, policy, error_r) < 0)
		return -1;
	if (store_run(st, ST_DOMAIN_SET_FILTER, "tt", policy, name) != STORE_DONE)
		return store_err_db(st, error_r, "store: set filter");
	if (store_changes(st) == 0)
		return util_err(error_r, "domain %.253s does not exist", name);
	return 0;
}

int store_domain_set_verify(store *st, const char *name, const char *verify, char **error_r)
{
	if (verify == NULL || strcmp(verify, "none") == 0)
		verify = "";
	if (store_verify_check(st, verify, error_r) < 0)
		return -1;
	if (store_run(st, ST_DOMAIN_SET_VERIFY, "tt", verify, name) != STORE_DONE)
		return store_err_db(st, error_r, "store: set verify");
	if (store_changes(st) == 0)
		return util_err(error_r, "domain %.253s does not exist", name);
	return 0;
}

/* inside store_domain_del's transaction */
static int store_domain_del_tx(store *st, void *ctx, char **error_r)
{
	const char *name = ctx;
	int64_t n;

	if (store_run_int(st, ST_DOMAIN_COUNT_USERS, &n, "t", name) < 0)
		return store_err_db(st, error_r, "store: count users");
	if (n > 0)
		return util_err(error_r, "domain has %ld user%s; delete them first", (long)n,
		    n == 1 ? "" : "s");
	if (store_run_int(st, ST_DOMAIN_COUNT_ALIASES, &n, "t", name) < 0)
		return store_err_db(st, error_r, "store: count aliases");
	if (n > 0)
		return util_err(error_r, "domain has %ld alias%s; delete them first", (long)n,
		    n == 1 ? "" : "es");
	if (store_run(st, ST_DOMAIN_DEL, "t", name) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete domain");
	if (store_changes(st) == 0)
		return util_err(error_r, "domain %.253s does not exist", name);
	return 0;
}

int store_domain_del(store *st, const char *name, char **error_r)
{
	return store_tx(st, store_domain_del_tx, (void *)name, error_r);
}

struct store_domain_each {
	int (*cb)(void *ctx, const struct store_domain *d);
	void *ctx;
};

static int store_domain_each_row(struct store_q *q, void *arg)
{
	const struct store_domain_each *e = arg;
	struct store_domain d;

	store_domain_row(q, &d);
	return e->cb(e->ctx, &d);
}

int store_domain_list(store *st, int (*cb)(void *ctx, const struct store_domain *d), void *ctx)
{
	struct store_domain_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_DOMAIN_LIST, NULL, "") < 0)
		return -1;
	return store_q_each(&q, store_domain_each_row, &e);
}

int store_schema_version(void)
{
	return store_n_migrations;
}

int store_connect(const struct kale_config *cfg, store **st_r, char **error_r)
{
	return store_open_flags(cfg, 0, st_r, error_r);
}

int store_open_migrate(const struct kale_config *cfg, store **st_r, char **error_r)
{
	return store_open_flags(cfg, STORE_OPEN_MIGRATE, st_r, error_r);
}

int store_migrate(const struct kale_config *cfg, char **error_r)
{
	store *st = NULL;

	if (store_open_migrate(cfg, &st, error_r) < 0)
		return -1;
	store_close(&st);
	return 0;
}
