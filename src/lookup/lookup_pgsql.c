/* lookup_pgsql: the pgsql verification backend (libpq): a pooled connection
 * per worker thread; the template runs with %m %u %d as $N parameters,
 * sent asynchronously and waited for with a deadline. Runs in the lookup
 * threads of smtpd and qmgr and in kalectl verify test. */
#include "lookup/lookup_int.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "lib/util.h"

static void lookup_pgsql_close(struct lookup_conn *c)
{
	if (c->handle != NULL)
		PQfinish(c->handle);
	c->handle = NULL;
}

static char *lookup_pgsql_err(const char *what, const char *msg)
{
	char buf[512];
	size_t n;

	if (util_fmt(buf, sizeof(buf), "pgsql %s: %s", what, msg ? msg : "failed") < 0)
		buf[0] = '\0';
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	for (size_t i = 0; i < n; i++)
		if (buf[i] == '\n' || buf[i] == '\t')
			buf[i] = ' ';
	return xstrdup(buf);
}

/* A refused connection attempt: libpq gives no SQLSTATE for it, only the
 * server's message, so the usual English texts of a wrong profile (bad
 * password, no such role or database, no pg_hba.conf entry) count as
 * configuration errors; anything else (refused, timed out, too many
 * clients, starting up) is temporary. */
static enum lookup_result lookup_pgsql_connect_kind(const char *msg)
{
	static const char *const config[] = { "authentication failed", "does not exist",
	    "no pg_hba.conf entry", "password is not", "invalid connection option",
	    "invalid URI", "invalid sslmode", NULL };

	for (int i = 0; msg != NULL && config[i] != NULL; i++)
		if (strstr(msg, config[i]) != NULL)
			return LOOKUP_CONFIG;
	return LOOKUP_ERROR;
}

/* SQLSTATE classes of a profile's fault: 42 syntax error or access rule
 * violation (42601 syntax, 42703 undefined column, 42P01 undefined table,
 * 42501 insufficient privilege), 28 invalid authorization, 3D invalid
 * catalog, 3F invalid schema. */
static enum lookup_result lookup_pgsql_kind(const char *sqlstate)
{
	if (sqlstate == NULL || strlen(sqlstate) != 5)
		return LOOKUP_ERROR;
	if (strncmp(sqlstate, "42", 2) == 0 || strncmp(sqlstate, "28", 2) == 0 ||
	    strncmp(sqlstate, "3D", 2) == 0 || strncmp(sqlstate, "3F", 2) == 0)
		return LOOKUP_CONFIG;
	return LOOKUP_ERROR;
}

static enum lookup_result lookup_pgsql_connect(struct lookup_conn *c, char **detail_r)
{
	/* connect_timeout first: the URL's own setting, if any, overrides it */
	static const char *const keys[] = { "connect_timeout", "dbname", NULL };
	const char *vals[3];
	enum lookup_result res;
	char tmo[16];
	PGconn *pg;

	if (!c->sql_ready) {
		if (lookup_sql_compile(c->prof.query, 1, &c->sql, detail_r) < 0)
			return LOOKUP_CONFIG;
		c->sql_ready = 1;
	}
	if (util_fmt(tmo, sizeof(tmo), "%d", LOOKUP_TIMEOUT(c)) < 0)
		return LOOKUP_ERROR;
	vals[0] = tmo;
	vals[1] = c->prof.url;
	vals[2] = NULL;
	pg = PQconnectdbParams(keys, vals, 1);
	if (pg == NULL) {
		*detail_r = xstrdup("pgsql: out of memory");
		return LOOKUP_ERROR;
	}
	if (PQstatus(pg) != CONNECTION_OK) {
		*detail_r = lookup_pgsql_err("connect", PQerrorMessage(pg));
		res = lookup_pgsql_connect_kind(PQerrorMessage(pg));
		PQfinish(pg);
		return res;
	}
	c->handle = pg;
	return LOOKUP_FOUND;
}

/* Waits for the result of the query sent; NULL on timeout or error. */
static PGresult *lookup_pgsql_wait(PGconn *pg, int timeout_s, char **detail_r)
{
	uint64_t deadline = util_now_ms() + (uint64_t)timeout_s * 1000ULL;
	PGresult *res = NULL, *r;
	int flushing = 1;

	for (;;) {
		struct pollfd pfd;
		uint64_t now = util_now_ms();
		int n;

		if (flushing) {
			n = PQflush(pg);
			if (n < 0)
				goto fail;
			flushing = n > 0;
		}
		if (!flushing) {
			if (PQconsumeInput(pg) == 0)
				goto fail;
			if (!PQisBusy(pg)) {
				/* collect every result; keep the first */
				while ((r = PQgetResult(pg)) != NULL) {
					if (res == NULL)
						res = r;
					else
						PQclear(r);
				}
				if (res == NULL)
					goto fail;
				return res;
			}
		}
		if (now >= deadline) {
			*detail_r = xstrdup("pgsql query: timed out");
			return NULL;
		}
		pfd.fd = PQsocket(pg);
		pfd.events = (short)(POLLIN | (flushing ? POLLOUT : 0));
		pfd.revents = 0;
		if (pfd.fd < 0)
			goto fail;
		n = poll(&pfd, 1, (int)(deadline - now));
		if (n < 0 && errno != EINTR)
			goto fail;
	}
fail:
	*detail_r = lookup_pgsql_err("query", PQerrorMessage(pg));
	return NULL;
}

static enum lookup_result lookup_pgsql_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r, int *conn_failed_r)
{
	char *vals[LOOKUP_SQL_PARAMS] = { 0 };
	enum lookup_result ret = LOOKUP_ERROR;
	PGresult *res = NULL;

	(void)route_r;
	for (int i = 0; i < c->sql.nparams; i++)
		vals[i] = lookup_expand(c->sql.params[i], address, 0);
	if (!PQsendQueryParams(c->handle, c->sql.sql, c->sql.nparams, NULL,
	    (const char *const *)vals, NULL, NULL, 0)) {
		*detail_r = lookup_pgsql_err("query", PQerrorMessage(c->handle));
		*conn_failed_r = 1;
		goto out;
	}
	if ((res = lookup_pgsql_wait(c->handle, LOOKUP_TIMEOUT(c), detail_r)) == NULL) {
		*conn_failed_r = 1;
		goto out;
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		*detail_r = lookup_pgsql_err("query", PQresultErrorMessage(res));
		*conn_failed_r = PQstatus(c->handle) != CONNECTION_OK;
		ret = lookup_pgsql_kind(PQresultErrorField(res, PG_DIAG_SQLSTATE));
		goto out;
	}
	ret = PQntuples(res) > 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
out:
	PQclear(res);
	for (int i = 0; i < c->sql.nparams; i++)
		free(vals[i]);
	return ret;
}

static int lookup_pgsql_check(const struct store_verify *v, char **error_r)
{
	struct lookup_sql q;

	if (strncmp(v->url, "postgresql://", 13) != 0 && strncmp(v->url, "postgres://", 11) != 0) {
		*error_r = xstrdup("pgsql needs --url postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE");
		return -1;
	}
	if (v->query[0] == '\0') {
		*error_r = xstrdup("--query is needed");
		return -1;
	}
	if (lookup_sql_compile(v->query, 1, &q, error_r) < 0)
		return -1;
	lookup_sql_free(&q);
	return 0;
}

const struct lookup_backend lookup_backend_pgsql = {
	.name = "pgsql",
	.check = lookup_pgsql_check,
	.open = lookup_pgsql_connect,
	.ask = lookup_pgsql_ask,
	.close = lookup_pgsql_close,
};
