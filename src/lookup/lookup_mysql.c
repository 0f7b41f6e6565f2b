/* lookup_mysql: the mysql verification backend (libmariadb): a pooled
 * connection per worker thread, the template run as a prepared statement
 * with %m %u %d bound as parameters. Runs in smtpd's lookup threads and in
 * kalectl verify test. */
#include "lookup/lookup_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysql.h>

#include "lib/util.h"

/* mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, user and password
 * percent-decoded. 0 or -1. */
struct lookup_mysql_url {
	char user[128], pass[256], host[256], db[128];
	unsigned port;
};

static int lookup_hexval(char c)
{
	return isdigit((unsigned char)c) ? c - '0' : (tolower((unsigned char)c) - 'a' + 10);
}

static int lookup_pct_decode(const char *p, size_t n, char *out, size_t cap)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned v;
		char c = p[i];
		if (c == '%') {
			if (i + 2 >= n || !isxdigit((unsigned char)p[i + 1]) ||
			    !isxdigit((unsigned char)p[i + 2]))
				return -1;
			v = (unsigned)(lookup_hexval(p[i + 1]) * 16 + lookup_hexval(p[i + 2]));
			if (v == 0)
				return -1;
			c = (char)v;
			i += 2;
		}
		if (o + 1 >= cap)
			return -1;
		out[o++] = c;
	}
	out[o] = '\0';
	return 0;
}

static int lookup_mysql_parse(const char *url, struct lookup_mysql_url *u)
{
	const char *p, *at, *slash, *colon, *hostp;
	long long port = 3306;

	memset(u, 0, sizeof(*u));
	if (strncmp(url, "mysql://", 8) != 0)
		return -1;
	p = url + 8;
	slash = strchr(p, '/');
	if (slash == NULL)
		return -1;
	at = memrchr(p, '@', (size_t)(slash - p));
	hostp = p;
	if (at != NULL) {
		colon = memchr(p, ':', (size_t)(at - p));
		if (lookup_pct_decode(p, (size_t)((colon ? colon : at) - p), u->user, sizeof(u->user)) < 0)
			return -1;
		if (colon != NULL && lookup_pct_decode(colon + 1, (size_t)(at - colon - 1), u->pass,
		    sizeof(u->pass)) < 0)
			return -1;
		hostp = at + 1;
	}
	colon = memchr(hostp, ':', (size_t)(slash - hostp));
	if (colon != NULL) {
		char num[8];
		if (util_fmt(num, sizeof(num), "%.*s", (int)(slash - colon - 1), colon + 1) < 0 ||
		    util_strtonum(num, 1, 65535, &port) < 0)
			return -1;
	}
	if (lookup_pct_decode(hostp, (size_t)((colon ? colon : slash) - hostp), u->host,
	    sizeof(u->host)) < 0 || u->host[0] == '\0')
		return -1;
	if (util_fmt(u->db, sizeof(u->db), "%s", slash + 1) < 0 || u->db[0] == '\0' ||
	    strpbrk(u->db, "?/#") != NULL)
		return -1;
	u->port = (unsigned)port;
	return 0;
}

int lookup_mysql_url_ok(const char *url)
{
	struct lookup_mysql_url u;
	int rc = lookup_mysql_parse(url, &u);

	explicit_bzero(&u, sizeof(u));
	return rc;
}

void lookup_mysql_close(struct lookup_conn *c)
{
	if (c->handle != NULL)
		mysql_close(c->handle);
	c->handle = NULL;
}

static char *lookup_mysql_err(const char *what, MYSQL *m, MYSQL_STMT *s)
{
	char buf[512];

	if (util_fmt(buf, sizeof(buf), "mysql %s: %s", what,
	    s != NULL ? mysql_stmt_error(s) : m != NULL ? mysql_error(m) : "out of memory") < 0)
		buf[0] = '\0';
	return xstrdup(buf);
}

static int lookup_mysql_connect(struct lookup_conn *c, char **detail_r)
{
	struct lookup_mysql_url u;
	unsigned int timeout = (unsigned int)LOOKUP_TIMEOUT(c);
	MYSQL *m;
	int rc = -1;

	if (lookup_mysql_parse(c->prof.url, &u) < 0) {
		*detail_r = xstrdup("mysql: bad url (mysql://USER:PASSWORD@HOST[:PORT]/DATABASE)");
		return -1;
	}
	if ((m = mysql_init(NULL)) == NULL) {
		*detail_r = xstrdup("mysql: out of memory");
		goto out;
	}
	mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
	mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &timeout);
	mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &timeout);
	mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	if (mysql_real_connect(m, u.host, u.user, u.pass, u.db, u.port, NULL, 0) == NULL) {
		*detail_r = lookup_mysql_err("connect", m, NULL);
		mysql_close(m);
		goto out;
	}
	c->handle = m;
	rc = 0;
out:
	explicit_bzero(&u, sizeof(u));
	return rc;
}

/* 0 found, 1 missing, -1 error (detail set); *conn_err_r 1 when the
 * connection itself failed (retry on a fresh one). */
static int lookup_mysql_run(struct lookup_conn *c, const char *address, int *conn_err_r,
    char **detail_r)
{
	MYSQL_BIND bind[LOOKUP_SQL_PARAMS];
	char *vals[LOOKUP_SQL_PARAMS] = { 0 };
	unsigned long lens[LOOKUP_SQL_PARAMS];
	MYSQL_STMT *s;
	int rc = -1;
	unsigned err;

	*conn_err_r = 0;
	if ((s = mysql_stmt_init(c->handle)) == NULL) {
		*detail_r = lookup_mysql_err("statement", c->handle, NULL);
		*conn_err_r = 1;
		return -1;
	}
	if (mysql_stmt_prepare(s, c->sql.sql, strlen(c->sql.sql)) != 0)
		goto fail;
	if (mysql_stmt_param_count(s) != (unsigned long)c->sql.nparams) {
		*detail_r = xstrdup("mysql: the query's parameters do not match its placeholders");
		goto out;
	}
	memset(bind, 0, sizeof(bind));
	for (int i = 0; i < c->sql.nparams; i++) {
		vals[i] = lookup_expand(c->sql.params[i], address, 0);
		lens[i] = strlen(vals[i]);
		bind[i].buffer_type = MYSQL_TYPE_STRING;
		bind[i].buffer = vals[i];
		bind[i].buffer_length = lens[i];
		bind[i].length = &lens[i];
	}
	if (mysql_stmt_bind_param(s, bind) != 0 || mysql_stmt_execute(s) != 0 ||
	    mysql_stmt_store_result(s) != 0)
		goto fail;
	rc = mysql_stmt_num_rows(s) > 0 ? 0 : 1;
	goto out;
fail:
	err = mysql_stmt_errno(s);
	*detail_r = lookup_mysql_err("query", NULL, s);
	/* CR_SERVER_GONE_ERROR 2006, CR_SERVER_LOST 2013, CR_CONNECTION_ERROR 2002 ... */
	if (err >= 2000 && err < 3000)
		*conn_err_r = 1;
out:
	mysql_stmt_close(s);
	for (int i = 0; i < c->sql.nparams; i++)
		free(vals[i]);
	return rc;
}

enum lookup_result lookup_mysql_ask(struct lookup_conn *c, const char *address, char **detail_r)
{
	int pooled = c->handle != NULL, conn_err = 0, rc;

	*detail_r = NULL;
	if (!c->sql_ready) {
		if (lookup_sql_compile(c->prof.query, 0, &c->sql, detail_r) < 0)
			return LOOKUP_ERROR;
		c->sql_ready = 1;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->handle == NULL && lookup_mysql_connect(c, detail_r) < 0)
			return LOOKUP_ERROR;
		rc = lookup_mysql_run(c, address, &conn_err, detail_r);
		if (rc >= 0)
			return rc == 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
		lookup_mysql_close(c);
		if (!conn_err || !pooled)
			return LOOKUP_ERROR;
		/* the pooled connection had gone away: try once on a new one */
		xfree(detail_r);
		pooled = 0;
	}
	return LOOKUP_ERROR;
}
