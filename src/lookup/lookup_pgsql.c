/* lookup_pgsql: the pgsql verification backend (libpq): a pooled connection
 * per worker thread; the template runs with %m %u %d as $N parameters,
 * sent asynchronously and waited for with a deadline. Runs in smtpd's
 * lookup threads and in kalectl verify test. */
#include "lookup/lookup_int.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "lib/util.h"

void lookup_pgsql_close(struct lookup_conn *c)
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

static int lookup_pgsql_connect(struct lookup_conn *c, char **detail_r)
{
	/* connect_timeout first: the URL's own setting, if any, overrides it */
	static const char *const keys[] = { "connect_timeout", "dbname", NULL };
	const char *vals[3];
	char tmo[16];
	PGconn *pg;

	if (util_fmt(tmo, sizeof(tmo), "%d", LOOKUP_TIMEOUT(c)) < 0)
		return -1;
	vals[0] = tmo;
	vals[1] = c->prof.url;
	vals[2] = NULL;
	pg = PQconnectdbParams(keys, vals, 1);
	if (pg == NULL) {
		*detail_r = xstrdup("pgsql: out of memory");
		return -1;
	}
	if (PQstatus(pg) != CONNECTION_OK) {
		*detail_r = lookup_pgsql_err("connect", PQerrorMessage(pg));
		PQfinish(pg);
		return -1;
	}
	c->handle = pg;
	return 0;
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

/* 0 found, 1 missing, -1 error; *conn_err_r 1 when the connection failed. */
static int lookup_pgsql_run(struct lookup_conn *c, const char *address, int *conn_err_r,
    char **detail_r)
{
	char *vals[LOOKUP_SQL_PARAMS] = { 0 };
	PGresult *res = NULL;
	int rc = -1;

	*conn_err_r = 0;
	for (int i = 0; i < c->sql.nparams; i++)
		vals[i] = lookup_expand(c->sql.params[i], address, 0);
	if (!PQsendQueryParams(c->handle, c->sql.sql, c->sql.nparams, NULL,
	    (const char *const *)vals, NULL, NULL, 0)) {
		*detail_r = lookup_pgsql_err("query", PQerrorMessage(c->handle));
		*conn_err_r = 1;
		goto out;
	}
	if ((res = lookup_pgsql_wait(c->handle, LOOKUP_TIMEOUT(c), detail_r)) == NULL) {
		*conn_err_r = 1;
		goto out;
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		*detail_r = lookup_pgsql_err("query", PQresultErrorMessage(res));
		*conn_err_r = PQstatus(c->handle) != CONNECTION_OK;
		goto out;
	}
	rc = PQntuples(res) > 0 ? 0 : 1;
out:
	PQclear(res);
	for (int i = 0; i < c->sql.nparams; i++)
		free(vals[i]);
	return rc;
}

enum lookup_result lookup_pgsql_ask(struct lookup_conn *c, const char *address, char **detail_r)
{
	int pooled = c->handle != NULL, conn_err = 0, rc;

	*detail_r = NULL;
	if (!c->sql_ready) {
		if (lookup_sql_compile(c->prof.query, 1, &c->sql, detail_r) < 0)
			return LOOKUP_ERROR;
		c->sql_ready = 1;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->handle == NULL && lookup_pgsql_connect(c, detail_r) < 0)
			return LOOKUP_ERROR;
		rc = lookup_pgsql_run(c, address, &conn_err, detail_r);
		if (rc >= 0)
			return rc == 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
		/* a failed query leaves the connection in an unknown state: drop it */
		lookup_pgsql_close(c);
		if (!conn_err || !pooled)
			return LOOKUP_ERROR;
		xfree(detail_r);
		pooled = 0;
	}
	return LOOKUP_ERROR;
}
