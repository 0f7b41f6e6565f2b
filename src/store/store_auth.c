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
	sqlite3_stmt *s;
	const unsigned char *v;
	int rc;

	s = store_prepare(st, "SELECT value FROM auth_settings WHERE key = ?", NULL);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, key);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		v = sqlite3_column_text(s, 0);
		rc = util_fmt(value, cap, "%s", v ? (const char *)v : "") < 0 ? -1 : 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -1;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_auth_set(store *st, const char *key, const char *value, char **error_r)
{
	sqlite3_stmt *s;
	int rc = -1;

	if (!store_auth_key_ok(key))
		return store_err(error_r, "bad auth setting name");
	if (value == NULL || strlen(value) > 300)
		return store_err(error_r, "auth setting %s: value missing or too long", key);
	s = store_prepare(st, "INSERT INTO auth_settings(key, value) VALUES (?, ?) "
	    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", error_r);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, key);
	store_bind_text(s, 2, value);
	if (sqlite3_step(s) != SQLITE_DONE)
		store_err_db(st, error_r, "store: auth set");
	else
		rc = 0;
	sqlite3_finalize(s);
	return rc;
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
		return store_err(error_r, "proto must be pop3 or imap");
	if (strcmp(srv->tls, "plain") != 0 && strcmp(srv->tls, "ssl") != 0 &&
	    strcmp(srv->tls, "starttls") != 0)
		return store_err(error_r, "tls must be plain, ssl or starttls");
	if (!store_auth_host_ok(srv->host))
		return store_err(error_r, "bad host '%.253s': a host name, IPv4 or IPv6 address", srv->host);
	if (srv->port < 1 || srv->port > 65535)
		return store_err(error_r, "port must be 1-65535");
	return 0;
}

static int store_auth_count(store *st, long *n_r)
{
	sqlite3_stmt *s = store_prepare(st, "SELECT count(*) FROM auth_servers", NULL);
	int rc = -1;

	if (s == NULL)
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW) {
		*n_r = (long)sqlite3_column_int64(s, 0);
		rc = 0;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_auth_server_add(store *st, const struct store_auth_server *srv, int64_t *id_r,
    char **error_r)
{
	sqlite3_stmt *s = NULL;
	long n = 0;
	int rc = -1;

	if (store_auth_server_check(srv, error_r) < 0)
		return -1;
	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	if (store_auth_count(st, &n) < 0) {
		store_err_db(st, error_r, "store: count auth servers");
		goto out;
	}
	if (n >= STORE_AUTH_SERVERS_MAX) {
		store_err(error_r, "at most %d auth servers", STORE_AUTH_SERVERS_MAX);
		goto out;
	}
	s = store_prepare(st, "INSERT INTO auth_servers(position, proto, tls, host, port, enabled) "
	    "VALUES (?, ?, ?, ?, ?, ?)", error_r);
	if (s == NULL)
		goto out;
	sqlite3_bind_int64(s, 1, n + 1);
	store_bind_text(s, 2, srv->proto);
	store_bind_text(s, 3, srv->tls);
	store_bind_text(s, 4, srv->host);
	sqlite3_bind_int(s, 5, srv->port);
	sqlite3_bind_int(s, 6, srv->enabled ? 1 : 0);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: add auth server");
		goto out;
	}
	if (id_r != NULL)
		*id_r = sqlite3_last_insert_rowid(st->db);
	rc = store_exec(st, "COMMIT", error_r);
out:
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/* Rewrites positions 1..n in the order of ids[] (inside a transaction). */
static int store_auth_renumber(store *st, const int64_t *ids, long n, char **error_r)
{
	sqlite3_stmt *s = store_prepare(st, "UPDATE auth_servers SET position = ? WHERE id = ?", error_r);

	if (s == NULL)
		return -1;
	for (long i = 0; i < n; i++) {
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, i + 1);
		sqlite3_bind_int64(s, 2, ids[i]);
		if (sqlite3_step(s) != SQLITE_DONE) {
			sqlite3_finalize(s);
			return store_err_db(st, error_r, "store: renumber auth servers");
		}
	}
	sqlite3_finalize(s);
	return 0;
}

/* The ids in position order; malloc'd array, count in *n_r. */
static int64_t *store_auth_ids(store *st, long *n_r, char **error_r)
{
	sqlite3_stmt *s = store_prepare(st, "SELECT id FROM auth_servers ORDER BY position, id", error_r);
	int64_t *ids;
	long n = 0;
	int rc;

	if (s == NULL)
		return NULL;
	ids = xmalloc(sizeof(*ids) * (STORE_AUTH_SERVERS_MAX + 1));
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && n <= STORE_AUTH_SERVERS_MAX)
		ids[n++] = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		free(ids);
		store_err_db(st, error_r, "store: list auth servers");
		return NULL;
	}
	*n_r = n;
	return ids;
}

int store_auth_server_del(store *st, int64_t id, char **error_r)
{
	sqlite3_stmt *s = NULL;
	int64_t *ids = NULL;
	long n = 0;
	int rc = -1;

	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	if ((s = store_prepare(st, "DELETE FROM auth_servers WHERE id = ?", error_r)) == NULL)
		goto out;
	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: delete auth server");
		goto out;
	}
	if (sqlite3_changes(st->db) == 0) {
		store_err(error_r, "auth server %lld does not exist", (long long)id);
		goto out;
	}
	if ((ids = store_auth_ids(st, &n, error_r)) == NULL ||
	    store_auth_renumber(st, ids, n, error_r) < 0)
		goto out;
	rc = store_exec(st, "COMMIT", error_r);
out:
	free(ids);
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_auth_server_move(store *st, int64_t id, int position, char **error_r)
{
	int64_t *ids = NULL;
	long n = 0, at = -1, to;
	int rc = -1;

	if (position < 1)
		return store_err(error_r, "position must be 1 or more");
	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	if ((ids = store_auth_ids(st, &n, error_r)) == NULL)
		goto out;
	for (long i = 0; i < n; i++)
		if (ids[i] == id)
			at = i;
	if (at < 0) {
		store_err(error_r, "auth server %lld does not exist", (long long)id);
		goto out;
	}
	to = position > n ? n - 1 : position - 1;
	if (to < at)
		memmove(ids + to + 1, ids + to, sizeof(*ids) * (size_t)(at - to));
	else if (to > at)
		memmove(ids + at, ids + at + 1, sizeof(*ids) * (size_t)(to - at));
	ids[to] = id;
	if (store_auth_renumber(st, ids, n, error_r) < 0)
		goto out;
	rc = store_exec(st, "COMMIT", error_r);
out:
	free(ids);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_auth_server_list(store *st, int (*cb)(void *ctx, const struct store_auth_server *srv),
    void *ctx)
{
	sqlite3_stmt *s;
	struct store_auth_server srv;
	int rc;

	s = store_prepare(st, "SELECT id, position, proto, tls, host, port, enabled FROM auth_servers "
	    "ORDER BY position, id", NULL);
	if (s == NULL)
		return -1;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const unsigned char *proto = sqlite3_column_text(s, 2);
		const unsigned char *tls = sqlite3_column_text(s, 3);
		const unsigned char *host = sqlite3_column_text(s, 4);

		memset(&srv, 0, sizeof(srv));
		srv.id = sqlite3_column_int64(s, 0);
		srv.position = sqlite3_column_int(s, 1);
		if (util_fmt(srv.proto, sizeof(srv.proto), "%s", proto ? (const char *)proto : "") < 0 ||
		    util_fmt(srv.tls, sizeof(srv.tls), "%s", tls ? (const char *)tls : "") < 0 ||
		    util_fmt(srv.host, sizeof(srv.host), "%s", host ? (const char *)host : "") < 0)
			continue;     /* cannot be stored by store_auth_server_add */
		srv.port = sqlite3_column_int(s, 5);
		srv.enabled = sqlite3_column_int(s, 6);
		if (cb(ctx, &srv) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : -1;
}
