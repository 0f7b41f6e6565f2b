/* store: opens the SQLite policy store, runs the versioned migrations, holds
 * the shared validation helpers and the domain table. Runs in every process
 * that opens the store (kaled's children, kalectl).
 *
 * Schema (version 1; docs/architecture-store.md):
 *   schema_version(version)                         one row, the applied version
 *   domains(name PK NOCASE, local, relay, tls, verify)
 *   users(address PK NOCASE, domain -> domains, password_hash NULL = no login, created)
 *   aliases(address PK NOCASE, domain -> domains, targets "a@x,b@y")
 *   networks(cidr PK, family 4|6, prefix, addr BLOB 4|16 bytes, host bits zero)
 *   maillog(id, ts, qid, client, helo, sender, rcpt, action, code, reason,
 *           profile, relay, size, delay_ms), indexed on ts rcpt sender client action
 * Migration N is a list of statements applied in one transaction at open. */
#include "store/store_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "conf/conf.h"
#include "lib/util.h"

static const char *const store_mig1[] = {
	"CREATE TABLE domains ("
	" name TEXT PRIMARY KEY COLLATE NOCASE,"
	" local INTEGER NOT NULL,"
	" relay TEXT NOT NULL DEFAULT '',"
	" tls TEXT NOT NULL DEFAULT 'opportunistic',"
	" verify TEXT NOT NULL DEFAULT '')",
	"CREATE TABLE users ("
	" address TEXT PRIMARY KEY COLLATE NOCASE,"
	" domain TEXT NOT NULL COLLATE NOCASE REFERENCES domains(name),"
	" password_hash TEXT,"
	" created INTEGER NOT NULL)",
	"CREATE INDEX users_domain ON users(domain)",
	"CREATE TABLE aliases ("
	" address TEXT PRIMARY KEY COLLATE NOCASE,"
	" domain TEXT NOT NULL COLLATE NOCASE REFERENCES domains(name),"
	" targets TEXT NOT NULL)",
	"CREATE INDEX aliases_domain ON aliases(domain)",
	"CREATE TABLE networks ("
	" cidr TEXT PRIMARY KEY,"
	" family INTEGER NOT NULL,"
	" prefix INTEGER NOT NULL,"
	" addr BLOB NOT NULL)",
	"CREATE TABLE maillog ("
	" id INTEGER PRIMARY KEY,"
	" ts INTEGER NOT NULL,"
	" qid TEXT, client TEXT, helo TEXT, sender TEXT, rcpt TEXT,"
	" action TEXT, code TEXT, reason TEXT, profile TEXT, relay TEXT,"
	" size INTEGER, delay_ms INTEGER)",
	"CREATE INDEX maillog_ts ON maillog(ts)",
	"CREATE INDEX maillog_rcpt ON maillog(rcpt)",
	"CREATE INDEX maillog_sender ON maillog(sender)",
	"CREATE INDEX maillog_client ON maillog(client)",
	"CREATE INDEX maillog_action ON maillog(action)",
	NULL
};

/* Version 2 (H11, recipient verification; store_verify.c):
 *   verify_profiles(name PK NOCASE, type, url, query, base, filter, bind_dn,
 *                   bind_password, route_attr, starttls, mode, ttl_found,
 *                   ttl_missing, fallback, timeout)
 *   verify_cache(profile, address, result 0 found|1 missing, route, expires)
 * Triggers empty the cache of localdb profiles whenever users, aliases or
 * domains change, whoever changes them. */
#define STORE_VERIFY_FLUSH_LOCAL \
	" BEGIN DELETE FROM verify_cache WHERE profile IN" \
	" (SELECT name FROM verify_profiles WHERE type = 'localdb'); END"
static const char *const store_mig2[] = {
	"CREATE TABLE verify_profiles ("
	" name TEXT PRIMARY KEY COLLATE NOCASE,"
	" type TEXT NOT NULL,"
	" url TEXT NOT NULL DEFAULT '',"
	" query TEXT NOT NULL DEFAULT '',"
	" base TEXT NOT NULL DEFAULT '',"
	" filter TEXT NOT NULL DEFAULT '',"
	" bind_dn TEXT NOT NULL DEFAULT '',"
	" bind_password TEXT NOT NULL DEFAULT '',"
	" route_attr TEXT NOT NULL DEFAULT 'mailHost',"
	" starttls INTEGER NOT NULL DEFAULT 0,"
	" mode TEXT NOT NULL DEFAULT 'realtime',"
	" ttl_found INTEGER NOT NULL DEFAULT 3600,"
	" ttl_missing INTEGER NOT NULL DEFAULT 600,"
	" fallback TEXT NOT NULL DEFAULT '' COLLATE NOCASE,"
	" timeout INTEGER NOT NULL DEFAULT 5)",
	"CREATE TABLE verify_cache ("
	" profile TEXT NOT NULL COLLATE NOCASE,"
	" address TEXT NOT NULL,"
	" result INTEGER NOT NULL,"
	" route TEXT,"
	" expires INTEGER NOT NULL,"
	" PRIMARY KEY (profile, address))",
	"CREATE INDEX verify_cache_expires ON verify_cache(expires)",
	"CREATE TRIGGER verify_flush_ui AFTER INSERT ON users" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_uu AFTER UPDATE ON users" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_ud AFTER DELETE ON users" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_ai AFTER INSERT ON aliases" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_au AFTER UPDATE ON aliases" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_ad AFTER DELETE ON aliases" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_di AFTER INSERT ON domains" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_du AFTER UPDATE ON domains" STORE_VERIFY_FLUSH_LOCAL,
	"CREATE TRIGGER verify_flush_dd AFTER DELETE ON domains" STORE_VERIFY_FLUSH_LOCAL,
	NULL
};

/* Version 3 (H12, SMTP AUTH; store_auth.c):
 *   auth_settings(key PK, value)          unset keys take src/auth defaults
 *   auth_servers(id PK, position, proto pop3|imap, tls plain|ssl|starttls,
 *                host, port, enabled)     tried in position order */
static const char *const store_mig3[] = {
	"CREATE TABLE auth_settings ("
	" key TEXT PRIMARY KEY,"
	" value TEXT NOT NULL)",
	"CREATE TABLE auth_servers ("
	" id INTEGER PRIMARY KEY,"
	" position INTEGER NOT NULL,"
	" proto TEXT NOT NULL,"
	" tls TEXT NOT NULL,"
	" host TEXT NOT NULL,"
	" port INTEGER NOT NULL,"
	" enabled INTEGER NOT NULL DEFAULT 1)",
	NULL
};

/* Version 4: a domain routed by ldap:PROFILE verifies with that profile
 * by default (store_domain_add); domains made before, which had no
 * verification, get it. */
static const char *const store_mig4[] = {
	"UPDATE domains SET verify = substr(relay, 6) WHERE local = 0 AND verify = ''"
	" AND relay LIKE 'ldap:%' AND substr(relay, 6) IN (SELECT name FROM verify_profiles)",
	NULL
};

/* migrations[i] brings the schema from version i to i + 1 */
static const char *const *const store_migrations[] = { store_mig1, store_mig2, store_mig3,
	store_mig4 };
#define STORE_SCHEMA_VERSION ((int)(sizeof(store_migrations) / sizeof(store_migrations[0])))

int store_err(char **error_r, const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	va_start(ap, fmt);
	if (vsnprintf(buf, sizeof(buf), fmt, ap) < 0)
		buf[0] = '\0';
	va_end(ap);
	if (error_r != NULL)
		*error_r = xstrdup(buf);
	return -1;
}

int store_err_db(store *st, char **error_r, const char *what)
{
	return store_err(error_r, "%s: %s", what, sqlite3_errmsg(st->db));
}

sqlite3_stmt *store_prepare(store *st, const char *sql, char **error_r)
{
	sqlite3_stmt *s = NULL;

	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) {
		store_err_db(st, error_r, "store: prepare");
		sqlite3_finalize(s);
		return NULL;
	}
	return s;
}

int store_exec(store *st, const char *sql, char **error_r)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		store_err(error_r, "store: %s: %s", sql, msg ? msg : "failed");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

int store_bind_text(sqlite3_stmt *s, int idx, const char *v)
{
	if (v == NULL)
		return sqlite3_bind_null(s, idx);
	return sqlite3_bind_text(s, idx, v, -1, SQLITE_TRANSIENT);
}

/* ---- validation ---- */

int store_domain_name_norm(const char *in, char *out, size_t cap, char **error_r)
{
	size_t len = in ? strlen(in) : 0, label = 0;

	if (len == 0)
		return store_err(error_r, "empty domain name");
	if (len > 253 || len >= cap)
		return store_err(error_r, "domain name too long (max 253)");
	for (size_t i = 0; i <= len; i++) {
		char c = (char)tolower((unsigned char)in[i]);
		if (c == '.' || c == '\0') {
			if (label == 0)
				return store_err(error_r, "bad domain name '%.253s': empty label", in);
			if (out[i - 1] == '-')
				return store_err(error_r, "bad domain name '%.253s': label ends with '-'", in);
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
			if (label == 0 && c == '-')
				return store_err(error_r, "bad domain name '%.253s': label starts with '-'", in);
			if (++label > 63)
				return store_err(error_r, "bad domain name '%.253s': label longer than 63", in);
		} else {
			return store_err(error_r, "bad domain name '%.253s': only a-z 0-9 - and dots allowed", in);
		}
		out[i] = c;
	}
	return 0;
}

int store_localpart_norm(const char *in, char *out, size_t cap, char **error_r)
{
	size_t len = strlen(in);

	if (len == 0)
		return store_err(error_r, "empty local part");
	if (len > 64 || len >= cap)
		return store_err(error_r, "local part too long (max 64)");
	for (size_t i = 0; i < len; i++) {
		char c = (char)tolower((unsigned char)in[i]);
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '_' || c == '+' || c == '-'))
			return store_err(error_r, "bad local part '%.64s': only a-z 0-9 . _ + - allowed", in);
		if (c == '.' && (i == 0 || i == len - 1 || in[i - 1] == '.'))
			return store_err(error_r, "bad local part '%.64s': leading, trailing or double dot", in);
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
		return store_err(error_r, "bad address '%.300s': no '@'", in);
	llen = (size_t)(at - in);
	if (llen == 0 || llen > 64)
		return store_err(error_r, "bad address '%.300s': local part empty or longer than 64", in);
	if (llen + 2 >= cap)
		return store_err(error_r, "address too long");
	for (size_t i = 0; i < llen; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '.') {
			if (i == 0 || i == llen - 1 || in[i - 1] == '.')
				return store_err(error_r, "bad address '%.300s': leading, trailing or double dot", in);
		} else if (!store_atext(c)) {
			return store_err(error_r, "bad address '%.300s': character not allowed in local part", in);
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
		return store_err(error_r, "bad address '%.300s': expected local@domain", in ? in : "");
	if ((size_t)(at - in) > 64)
		return store_err(error_r, "local part too long (max 64)");
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
		return store_err(error_r, "domain %s does not exist", domain);
	if (!d.local && !relay_ok)
		return store_err(error_r, "domain %s is not a local domain", domain);
	if (util_fmt(addr, acap, "%s@%s", local, domain) < 0)
		return store_err(error_r, "address too long");
	return 0;
}

static int store_name_ok(const char *s, size_t max)
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
		return store_err(error_r, "empty relay");
	if (strlen(relay) >= sizeof(host))
		return store_err(error_r, "relay too long");
	if (strcmp(relay, "mx") == 0)
		return 0;
	if (strncmp(relay, "ldap:", 5) == 0) {
		if (!store_name_ok(relay + 5, 63))
			return store_err(error_r, "bad relay '%s': ldap:PROFILE with a profile name of "
			    "letters, digits, - _ .", relay);
		return 0;
	}
	if (relay[0] == '[') {
		end = strchr(relay, ']');
		if (end == NULL)
			return store_err(error_r, "bad relay '%s': missing ']'", relay);
		hlen = (size_t)(end - relay - 1);
		memcpy(host, relay + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1)
			return store_err(error_r, "bad relay '%s': not an IPv6 address in brackets", relay);
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return store_err(error_r, "bad relay '%s': expected [IPv6][:PORT]", relay);
	} else {
		end = strchr(relay, ':');
		hlen = end ? (size_t)(end - relay) : strlen(relay);
		memcpy(host, relay, hlen);
		host[hlen] = '\0';
		if (end != NULL)
			port = end + 1;
		/* a host name or an IPv4 literal; both fit the domain-name syntax */
		if (store_domain_name_norm(host, norm, sizeof(norm), NULL) < 0)
			return store_err(error_r, "bad relay '%s': expected HOST[:PORT], [IPv6][:PORT], "
			    "mx or ldap:PROFILE", relay);
	}
	if (port != NULL && !store_port_ok(port))
		return store_err(error_r, "bad relay '%s': port must be 1-65535", relay);
	return 0;
}

/* ---- open / close / migrations ---- */

static int store_migrate(store *st, char **error_r)
{
	sqlite3_stmt *s = NULL;
	int version = 0, rc = -1;

	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	if (store_exec(st, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
	    error_r) < 0)
		goto out;
	if ((s = store_prepare(st, "SELECT max(version) FROM schema_version", error_r)) == NULL)
		goto out;
	if (sqlite3_step(s) == SQLITE_ROW)
		version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	s = NULL;
	if (version > STORE_SCHEMA_VERSION) {
		store_err(error_r, "store: schema version %d is newer than this program (%d)",
		    version, STORE_SCHEMA_VERSION);
		goto out;
	}
	for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
		for (const char *const *sql = store_migrations[v]; *sql != NULL; sql++)
			if (store_exec(st, *sql, error_r) < 0)
				goto out;
	}
	if (version < STORE_SCHEMA_VERSION) {
		if (store_exec(st, "DELETE FROM schema_version", error_r) < 0)
			goto out;
		if ((s = store_prepare(st, "INSERT INTO schema_version(version) VALUES (?)", error_r)) == NULL)
			goto out;
		sqlite3_bind_int(s, 1, STORE_SCHEMA_VERSION);
		if (sqlite3_step(s) != SQLITE_DONE) {
			store_err_db(st, error_r, "store: schema_version");
			goto out;
		}
	}
	rc = store_exec(st, "COMMIT", error_r);
out:
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_open(const struct kale_config *cfg, store **st_r, char **error_r)
{
	const char *url = cfg && cfg->db_url ? cfg->db_url : "sqlite:kale.db";
	store *st;

	*st_r = NULL;
	if (strncmp(url, "sqlite:", 7) != 0 || url[7] == '\0')
		return store_err(error_r, "store: unsupported database url '%.200s' (only sqlite:PATH)", url);
	st = xcalloc(1, sizeof(*st));
	if (sqlite3_open_v2(url + 7, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
	    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		store_err(error_r, "store: open %s: %s", url + 7,
		    st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(st->db, 5000);
	sqlite3_extended_result_codes(st->db, 1);
	if (store_exec(st, "PRAGMA journal_mode=WAL", error_r) < 0 ||
	    store_exec(st, "PRAGMA synchronous=NORMAL", error_r) < 0 ||
	    store_exec(st, "PRAGMA foreign_keys=ON", error_r) < 0 ||
	    store_migrate(st, error_r) < 0)
		goto fail;
	*st_r = st;
	return 0;
fail:
	sqlite3_close(st->db);
	free(st);
	return -1;
}

void store_close(store **stp)
{
	store *st = stp ? *stp : NULL;

	if (st == NULL)
		return;
	store_log_flush(st);
	store_log_free(st);
	store_net_free(st);
	sqlite3_close(st->db);
	free(st);
	*stp = NULL;
}

/* ---- domains ---- */

static void store_copy_col(char *dst, size_t cap, sqlite3_stmt *s, int col)
{
	const unsigned char *v = sqlite3_column_text(s, col);

	if (util_fmt(dst, cap, "%s", v ? (const char *)v : "") < 0)
		dst[0] = '\0';
}

static void store_domain_row(sqlite3_stmt *s, struct store_domain *d)
{
	memset(d, 0, sizeof(*d));
	store_copy_col(d->name, sizeof(d->name), s, 0);
	d->local = sqlite3_column_int(s, 1);
	store_copy_col(d->relay, sizeof(d->relay), s, 2);
	store_copy_col(d->tls, sizeof(d->tls), s, 3);
	store_copy_col(d->verify, sizeof(d->verify), s, 4);
}

int store_domain_get(store *st, const char *name, struct store_domain *d_r)
{
	sqlite3_stmt *s;
	int rc;

	s = store_prepare(st, "SELECT name, local, relay, tls, verify FROM domains WHERE name = ?", NULL);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, name);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		store_domain_row(s, d_r);
		rc = 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -1;
	}
	sqlite3_finalize(s);
	return rc;
}

static int store_verify_check(store *st, const char *verify, char **error_r)
{
	struct store_verify v;
	int rc;

	if (*verify == '\0')
		return 0;
	if (!store_name_ok(verify, 63))
		return store_err(error_r, "bad verification profile name '%.64s'", verify);
	/* a domain pointing at a profile that does not exist would answer 451
	 * to every recipient: refuse it here */
	rc = store_verify_get(st, verify, &v);
	if (rc < 0)
		return store_err(error_r, "cannot read verification profile '%s'", verify);
	if (rc == 0)
		return store_err(error_r, "no verification profile '%s' (kalectl verify add)", verify);
	return 0;
}

int store_domain_add(store *st, const struct store_domain *d, char **error_r)
{
	char name[256];
	const char *tls = d->tls[0] ? d->tls : "opportunistic";
	const char *verify = d->verify;
	sqlite3_stmt *s = NULL;
	int rc = -1;

	if (store_domain_name_norm(d->name, name, sizeof(name), error_r) < 0)
		return -1;
	if (d->local && d->relay[0] != '\0')
		return store_err(error_r, "a domain is either local or relayed, not both");
	if (!d->local && d->relay[0] == '\0')
		return store_err(error_r, "a domain needs --local or --relay");
	if (!d->local && store_relay_check(d->relay, error_r) < 0)
		return -1;
	if (strcmp(tls, "opportunistic") != 0 && strcmp(tls, "require") != 0)
		return store_err(error_r, "tls must be 'opportunistic' or 'require'");
	/* A domain routed by ldap:PROFILE asks that profile at RCPT unless
	 * the caller says otherwise ("none"): its directory knows who exists,
	 * and accepting the others would bounce them later (backscatter). */
	if (strcmp(verify, "none") == 0)
		verify = "";
	else if (verify[0] == '\0' && !d->local && strncmp(d->relay, "ldap:", 5) == 0)
		verify = d->relay + 5;
	if (store_verify_check(st, verify, error_r) < 0)
		return -1;
	s = store_prepare(st, "INSERT INTO domains(name, local, relay, tls, verify) "
	    "VALUES (?, ?, ?, ?, ?)", error_r);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, name);
	sqlite3_bind_int(s, 2, d->local ? 1 : 0);
	store_bind_text(s, 3, d->local ? "" : d->relay);
	store_bind_text(s, 4, tls);
	store_bind_text(s, 5, verify);
	switch (sqlite3_step(s)) {
	case SQLITE_DONE:
		rc = 0;
		break;
	case SQLITE_CONSTRAINT_PRIMARYKEY:
		store_err(error_r, "domain %s already exists", name);
		break;
	default:
		store_err_db(st, error_r, "store: add domain");
	}
	sqlite3_finalize(s);
	return rc;
}

int store_domain_set_verify(store *st, const char *name, const char *verify, char **error_r)
{
	sqlite3_stmt *s;
	int rc = -1;

	if (verify == NULL || strcmp(verify, "none") == 0)
		verify = "";
	if (store_verify_check(st, verify, error_r) < 0)
		return -1;
	s = store_prepare(st, "UPDATE domains SET verify = ? WHERE name = ?", error_r);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, verify);
	store_bind_text(s, 2, name);
	if (sqlite3_step(s) != SQLITE_DONE)
		store_err_db(st, error_r, "store: set verify");
	else if (sqlite3_changes(st->db) == 0)
		store_err(error_r, "domain %.253s does not exist", name);
	else
		rc = 0;
	sqlite3_finalize(s);
	return rc;
}

static int store_count(store *st, const char *sql, const char *arg, long *n_r)
{
	sqlite3_stmt *s = store_prepare(st, sql, NULL);
	int rc = -1;

	if (s == NULL)
		return -1;
	store_bind_text(s, 1, arg);
	if (sqlite3_step(s) == SQLITE_ROW) {
		*n_r = (long)sqlite3_column_int64(s, 0);
		rc = 0;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_domain_del(store *st, const char *name, char **error_r)
{
	sqlite3_stmt *s = NULL;
	long n;
	int rc = -1;

	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	if (store_count(st, "SELECT count(*) FROM users WHERE domain = ?", name, &n) < 0) {
		store_err_db(st, error_r, "store: count users");
		goto out;
	}
	if (n > 0) {
		store_err(error_r, "domain has %ld user%s; delete them first", n, n == 1 ? "" : "s");
		goto out;
	}
	if (store_count(st, "SELECT count(*) FROM aliases WHERE domain = ?", name, &n) < 0) {
		store_err_db(st, error_r, "store: count aliases");
		goto out;
	}
	if (n > 0) {
		store_err(error_r, "domain has %ld alias%s; delete them first", n, n == 1 ? "" : "es");
		goto out;
	}
	if ((s = store_prepare(st, "DELETE FROM domains WHERE name = ?", error_r)) == NULL)
		goto out;
	store_bind_text(s, 1, name);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: delete domain");
		goto out;
	}
	if (sqlite3_changes(st->db) == 0) {
		store_err(error_r, "domain %.253s does not exist", name);
		goto out;
	}
	rc = store_exec(st, "COMMIT", error_r);
out:
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_domain_list(store *st, int (*cb)(void *ctx, const struct store_domain *d), void *ctx)
{
	sqlite3_stmt *s;
	struct store_domain d;
	int rc;

	s = store_prepare(st, "SELECT name, local, relay, tls, verify FROM domains ORDER BY name", NULL);
	if (s == NULL)
		return -1;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		store_domain_row(s, &d);
		if (cb(ctx, &d) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : -1;
}

int store_schema_version(void)
{
	return STORE_SCHEMA_VERSION;
}
