/* lookup_mysql: the mysql verification backend (libmariadb): a pooled
 * connection per worker thread, the template run as a prepared statement
 * with %m %u %d bound as parameters. Runs in the lookup threads of smtpd
 * and qmgr and in kalectl verify test. */
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

/* 0 if url is mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, else -1. */
static int lookup_mysql_url_ok(const char *url)
{
	struct lookup_mysql_url u;
	int rc = lookup_mysql_parse(url, &u);

	explicit_bzero(&u, sizeof(u));
	return rc;
}

static void lookup_mysql_close(struct lookup_conn *c)
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

/* Server error numbers that say the profile is wrong, not the server down:
 * ER_DBACCESS_DENIED_ERROR 1044, ER_ACCESS_DENIED_ERROR 1045, ER_BAD_DB_ERROR
 * 1049, ER_BAD_FIELD_ERROR 1054, ER_PARSE_ERROR 1064, ER_TABLEACCESS_DENIED
 * 1142, ER_COLUMNACCESS_DENIED 1143, ER_NO_SUCH_TABLE 1146,
 * ER_ACCESS_DENIED_NO_PASSWORD_ERROR 1698, ER_SP_DOES_NOT_EXIST 1305.
 * Client errors (2000-2999: refused, lost, timed out) and the rest (lock
 * waits, too many connections) are temporary. */
static enum lookup_result lookup_mysql_kind(unsigned err)
{
	static const unsigned config[] = { 1044, 1045, 1049, 1054, 1064, 1142, 1143, 1146, 1305,
	    1698 };

	for (size_t i = 0; i < sizeof(config) / sizeof(config[0]); i++)
		if (err == config[i])
			return LOOKUP_CONFIG;
	return LOOKUP_ERROR;
}

static enum lookup_result lookup_mysql_connect(struct lookup_conn *c, char **detail_r)
{
	struct lookup_mysql_url u;
	unsigned int timeout = (unsigned int)LOOKUP_TIMEOUT(c);
	enum lookup_result res = LOOKUP_ERROR;
	MYSQL *m;

	if (!c->sql_ready) {
		if (lookup_sql_compile(c->prof.query, 0, &c->sql, detail_r) < 0)
			return LOOKUP_CONFIG;
		c->sql_ready = 1;
	}
	if (lookup_mysql_parse(c->prof.url, &u) < 0) {
		*detail_r = xstrdup("mysql: bad url (mysql://USER:PASSWORD@HOST[:PORT]/DATABASE)");
		return LOOKUP_CONFIG;
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
		res = lookup_mysql_kind(mysql_errno(m));
		mysql_close(m);
		goto out;
	}
	c->handle = m;
	res = LOOKUP_FOUND;
out:
	explicit_bzero(&u, sizeof(u));
	return res;
}

static enum lookup_result lookup_mysql_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r, int *conn_failed_r)
{
	MYSQL_BIND bind[LOOKUP_SQL_PARAMS];
	char *vals[LOOKUP_SQL_PARAMS] = { 0 };
	unsigned long lens[LOOKUP_SQL_PARAMS];
	enum lookup_result res = LOOKUP_ERROR;
	MYSQL_STMT *s;
	unsigned err;

	(void)route_r;
	if ((s = mysql_stmt_init(c->handle)) == NULL) {
		*detail_r = lookup_mysql_err("statement", c->handle, NULL);
		*conn_failed_r = 1;
		return LOOKUP_ERROR;
	}
	if (mysql_stmt_prepare(s, c->sql.sql, strlen(c->sql.sql)) != 0)
		goto fail;
	if (mysql_stmt_param_count(s) != (unsigned long)c->sql.nparams) {
		*detail_r = xstrdup("mysql: the query's parameters do not match its placeholders");
		res = LOOKUP_CONFIG;
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
	res = mysql_stmt_num_rows(s) > 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
	goto out;
fail:
	err = mysql_stmt_errno(s);
	*detail_r = lookup_mysql_err("query", NULL, s);
	/* CR_SERVER_GONE_ERROR 2006, CR_SERVER_LOST 2013, CR_CONNECTION_ERROR 2002 ... */
	if (err >= 2000 && err < 3000)
		*conn_failed_r = 1;
	res = lookup_mysql_kind(err);
out:
	mysql_stmt_close(s);
	for (int i = 0; i < c->sql.nparams; i++)
		free(vals[i]);
	return res;
}

static int lookup_mysql_check(const struct store_verify *v, char **error_r)
{
	struct lookup_sql q;

	if (lookup_mysql_url_ok(v->url) < 0) {
		*error_r = xstrdup("mysql needs --url mysql://USER:PASSWORD@HOST[:PORT]/DATABASE");
		return -1;
	}
	if (v->query[0] == '\0') {
		*error_r = xstrdup("--query is needed");
		return -1;
	}
	if (lookup_sql_compile(v->query, 0, &q, error_r) < 0)
		return -1;
	lookup_sql_free(&q);
	return 0;
}

static void lookup_mysql_init(void)
{
	(void)mysql_library_init(0, NULL, NULL);
}

static void lookup_mysql_thread_init(void)
{
	(void)mysql_thread_init();
}

static void lookup_mysql_thread_end(void)
{
	mysql_thread_end();
}

const struct lookup_backend lookup_backend_mysql = {
	.name = "mysql",
	.check = lookup_mysql_check,
	.open = lookup_mysql_connect,
	.ask = lookup_mysql_ask,
	.close = lookup_mysql_close,
	.init = lookup_mysql_init,
	.thread_init = lookup_mysql_thread_init,
	.thread_end = lookup_mysql_thread_end,
};
