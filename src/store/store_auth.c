/* store_auth: the SMTP AUTH settings (key/value rows) and the ordered list of
 * POP3/IMAP servers that the "servers" method logs in to. Runs in kalectl
 * (auth set / auth server ...) and in kaled's smtpd (auth_check reads). */
#include "store/store_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "lib/util.h"

#define STORE_AUTH_SERVERS_MAX 100

static int store_auth_key_ok(const char *key)
{
	size_t len = key ? strlen(key) : 0;

	if (len == 0 || len > 63)
		return 0;
	for (; *key; key++)
		if (!islower((unsigned char)*key) && *key != '_')
			return 0;
	return 1;
}

int store_auth_get(store *st, const char *key, char *value, size_t cap)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_AUTH_GET, NULL, "t", key) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		const char *v = store_q_text(&q, 0);
		rc = util_fmt(value, cap, "%s", v ? v : "") < 0 ? -1 : 1;
	} else {
		rc = rc == STORE_DONE ? 0 : -1;
	}
	store_q_end(&q);
	return rc;
}

int store_auth_set(store *st, const char *key, const char *value, char **error_r)
{
	if (!store_auth_key_ok(key))
		return util_err(error_r, "bad auth setting name");
	if (value == NULL || strlen(value) > 300)
		return util_err(error_r, "auth setting %s: value missing or too long", key);
	if (store_run(st, ST_AUTH_SET, "tt", key, value) != STORE_DONE)
		return store_err_db(st, error_r, "store: auth set");
	return 0;
}

/* host name, IPv4 or IPv6 literal (no brackets) */
static int store_auth_host_ok(const char *host)
{
	char norm[256];
	struct in6_addr a6;

	if (host == NULL || *host == '\0' || strlen(host) > 253)
		return 0;
	if (strchr(host, ':') != NULL)
		return inet_pton(AF_INET6, host, &a6) == 1;
	return store_domain_name_norm(host, norm, sizeof(norm), NULL) == 0;
}

int store_auth_server_check(const struct store_auth_server *srv, char **error_r)
{
	if (strcmp(srv->proto, "pop3") != 0 && strcmp(srv->proto, "imap") != 0)
		return util_err(error_r, "proto must be pop3 or imap");
	if (strcmp(srv->tls, "plain") != 0 && strcmp(srv->tls, "ssl") != 0 &&
	    strcmp(srv->tls, "starttls") != 0)
		return util_err(error_r, "tls must be plain, ssl or starttls");
	if (!store_auth_host_ok(srv->host))
		return util_err(error_r, "bad host '%.253s': a host name, IPv4 or IPv6 address", srv->host);
	if (srv->port < 1 || srv->port > 65535)
		return util_err(error_r, "port must be 1-65535");
	return 0;
}

struct store_auth_add {
	const struct store_auth_server *srv;
	int64_t *id_r;
};

static int store_auth_server_add_tx(store *st, void *ctx, char **error_r)
{
	struct store_auth_add *a = ctx;
	const struct store_auth_server *srv = a->srv;
	int64_t n = 0;

	if (store_run_int(st, ST_AUTH_SERVER_COUNT, &n, "") < 0)
		return store_err_db(st, error_r, "store: count auth servers");
	if (n >= STORE_AUTH_SERVERS_MAX)
		return util_err(error_r, "at most %d auth servers", STORE_AUTH_SERVERS_MAX);
	if (store_run(st, ST_AUTH_SERVER_ADD, "Itttii", n + 1, srv->proto, srv->tls, srv->host,
	    srv->port, srv->enabled ? 1 : 0) != STORE_DONE)
		return store_err_db(st, error_r, "store: add auth server");
	if (a->id_r != NULL)
		*a->id_r = store_last_id(st);
	return 0;
}

int store_auth_server_add(store *st, const struct store_auth_server *srv, int64_t *id_r,
    char **error_r)
{
	struct store_auth_add a = { srv, id_r };

	if (store_auth_server_check(srv, error_r) < 0)
		return -1;
	return store_tx(st, store_auth_server_add_tx, &a, error_r);
}

/* Rewrites positions 1..n in the order of ids[] (inside a transaction). */
static int store_auth_renumber(store *st, const int64_t *ids, long n, char **error_r)
{
	for (long i = 0; i < n; i++)
		if (store_run(st, ST_AUTH_SERVER_POSITION, "II", (int64_t)(i + 1), ids[i]) != STORE_DONE)
			return store_err_db(st, error_r, "store: renumber auth servers");
	return 0;
}

/* The ids in position order; malloc'd array, count in *n_r. */
static int64_t *store_auth_ids(store *st, long *n_r, char **error_r)
{
	struct store_q q;
	int64_t *ids;
	long n = 0;
	int rc;

	if (store_q_start(st, &q, ST_AUTH_SERVER_IDS, error_r, "") < 0)
		return NULL;
	ids = xmalloc(sizeof(*ids) * (STORE_AUTH_SERVERS_MAX + 1));
	while ((rc = store_q_step(&q)) == STORE_ROW && n <= STORE_AUTH_SERVERS_MAX)
		ids[n++] = store_q_int(&q, 0);
	if (rc != STORE_ROW && rc != STORE_DONE) {
		store_err_db(st, error_r, "store: list auth servers");
		store_q_end(&q);
		free(ids);
		return NULL;
	}
	store_q_end(&q);
	*n_r = n;
	return ids;
}

static int store_auth_server_del_tx(store *st, void *ctx, char **error_r)
{
	int64_t id = *(const int64_t *)ctx, *ids;
	long n = 0;
	int rc;

	if (store_run(st, ST_AUTH_SERVER_DEL, "I", id) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete auth server");
	if (store_changes(st) == 0)
		return util_err(error_r, "auth server %lld does not exist", (long long)id);
	if ((ids = store_auth_ids(st, &n, error_r)) == NULL)
		return -1;
	rc = store_auth_renumber(st, ids, n, error_r);
	free(ids);
	return rc;
}

int store_auth_server_del(store *st, int64_t id, char **error_r)
{
	return store_tx(st, store_auth_server_del_tx, &id, error_r);
}

struct store_auth_move {
	int64_t id;
	int position;
};

static int store_auth_server_move_tx(store *st, void *ctx, char **error_r)
{
	const struct store_auth_move *m = ctx;
	int64_t *ids;
	long n = 0, at = -1, to;
	int rc;

	if ((ids = store_auth_ids(st, &n, error_r)) == NULL)
		return -1;
	for (long i = 0; i < n; i++)
		if (ids[i] == m->id)
			at = i;
	if (at < 0) {
		free(ids);
		return util_err(error_r, "auth server %lld does not exist", (long long)m->id);
	}
	to = m->position > n ? n - 1 : m->position - 1;
	if (to < at)
		memmove(ids + to + 1, ids + to, sizeof(*ids) * (size_t)(at - to));
	else if (to > at)
		memmove(ids + at, ids + at + 1, sizeof(*ids) * (size_t)(to - at));
	ids[to] = m->id;
	rc = store_auth_renumber(st, ids, n, error_r);
	free(ids);
	return rc;
}

int store_auth_server_move(store *st, int64_t id, int position, char **error_r)
{
	struct store_auth_move m = { id, position };

	if (position < 1)
		return util_err(error_r, "position must be 1 or more");
	return store_tx(st, store_auth_server_move_tx, &m, error_r);
}

int store_auth_server_list(store *st, int (*cb)(void *ctx, const struct store_auth_server *srv),
    void *ctx)
{
	struct store_q q;
	struct store_auth_server srv;
	int rc;

	if (store_q_start(st, &q, ST_AUTH_SERVER_LIST, NULL, "") < 0)
		return -1;
	while ((rc = store_q_step(&q)) == STORE_ROW) {
		const char *proto = store_q_text(&q, 2);
		const char *tls = store_q_text(&q, 3);
		const char *host = store_q_text(&q, 4);

		memset(&srv, 0, sizeof(srv));
		srv.id = store_q_int(&q, 0);
		srv.position = (int)store_q_int(&q, 1);
		if (util_fmt(srv.proto, sizeof(srv.proto), "%s", proto ? proto : "") < 0 ||
		    util_fmt(srv.tls, sizeof(srv.tls), "%s", tls ? tls : "") < 0 ||
		    util_fmt(srv.host, sizeof(srv.host), "%s", host ? host : "") < 0)
			continue;     /* cannot be stored by store_auth_server_add */
		srv.port = (int)store_q_int(&q, 5);
		srv.enabled = (int)store_q_int(&q, 6);
		if (cb(ctx, &srv) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	store_q_end(&q);
	return rc == STORE_DONE ? 0 : -1;
}
