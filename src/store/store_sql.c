/* store_sql: every SQL text of the policy store, in the SQLite dialect:
 * the versioned migrations and the named statements (enum store_stmt)
 * that the statement layer prepares once per handle. A second engine
 * (PostgreSQL) would bring its own copy of this file. Linked into every
 * process that opens the store.
 *
 * Schema (docs/architecture-store.md):
 *   schema_version(version)                         one row, the applied version
 *   domains(name PK NOCASE, local, relay, tls, verify)
 *   users(address PK NOCASE, domain -> domains, password_hash NULL = no login, created)
 *   aliases(address PK NOCASE, domain -> domains, targets "a@x,b@y")
 *   networks(cidr PK, family 4|6, prefix, addr BLOB 4|16 bytes, host bits zero)
 *   maillog(id, ts, qid, client, helo, sender, rcpt, action, code, reason,
 *           profile, relay, size, delay_ms), indexed on ts rcpt sender client action
 *   verify_profiles, verify_cache (version 2), auth_settings, auth_servers (3) */
#include "store/store_int.h"

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

/* Version 5 (issue 13, filtering; store_filter.c):
 *   filter_policies(name PK NOCASE, tag_score, quarantine_score, reject_score)
 *                         "default" always exists
 *   filter_checks(policy, name, action, score, on_error, options JSON)
 *                         a check without a row has its built-in settings
 *   filter_lists(id, policy, list allow|block, kind sender|client|helo|recipient,
 *                value, skip, comment)
 *   filter_version(version)   one row, moved by triggers on every change of
 *                         the three tables above (the filter cache's clock)
 *   greylist(net, sender, rcpt, first_seen, last_seen, expires, passed)
 *   greylist_clients(net PK, passes, expires)
 *   rate(key PK, window_start, messages, rcpts)   the rate check's counters
 *   dkim_keys(domain, selector, algorithm, private_key PEM, txt, created)
 *   domains.filter        the domain's filter policy
 *   maillog.session       the SMTP session a row belongs to (kalectl trace),
 *                         indexed, and maillog(qid) indexed too */
static const char *const store_mig5[] = {
	"CREATE TABLE filter_policies ("
	" name TEXT PRIMARY KEY COLLATE NOCASE,"
	" tag_score REAL NOT NULL DEFAULT 5,"
	" quarantine_score REAL NOT NULL DEFAULT 10,"
	" reject_score REAL NOT NULL DEFAULT 15)",
	"INSERT INTO filter_policies(name) VALUES ('default')",
	"CREATE TABLE filter_checks ("
	" policy TEXT NOT NULL COLLATE NOCASE,"
	" name TEXT NOT NULL,"
	" action TEXT NOT NULL,"
	" score REAL NOT NULL DEFAULT 0,"
	" on_error TEXT NOT NULL DEFAULT 'tempfail',"
	" options TEXT NOT NULL DEFAULT '{}',"
	" PRIMARY KEY (policy, name))",
	"CREATE TABLE filter_lists ("
	" id INTEGER PRIMARY KEY,"
	" policy TEXT NOT NULL COLLATE NOCASE,"
	" list TEXT NOT NULL,"
	" kind TEXT NOT NULL,"
	" value TEXT NOT NULL COLLATE NOCASE,"
	" skip TEXT NOT NULL DEFAULT '',"
	" comment TEXT NOT NULL DEFAULT '',"
	" UNIQUE (policy, list, kind, value))",
	"CREATE TABLE filter_version (version INTEGER NOT NULL)",
	"INSERT INTO filter_version VALUES (1)",
#define STORE_FV_TRIGGER(t, op) \
	"CREATE TRIGGER " t "_" op " AFTER " op " ON " t \
	" BEGIN UPDATE filter_version SET version = version + 1; END"
	STORE_FV_TRIGGER("filter_policies", "INSERT"),
	STORE_FV_TRIGGER("filter_policies", "UPDATE"),
	STORE_FV_TRIGGER("filter_policies", "DELETE"),
	STORE_FV_TRIGGER("filter_checks", "INSERT"),
	STORE_FV_TRIGGER("filter_checks", "UPDATE"),
	STORE_FV_TRIGGER("filter_checks", "DELETE"),
	STORE_FV_TRIGGER("filter_lists", "INSERT"),
	STORE_FV_TRIGGER("filter_lists", "UPDATE"),
	STORE_FV_TRIGGER("filter_lists", "DELETE"),
#undef STORE_FV_TRIGGER
	"CREATE TABLE greylist ("
	" net TEXT NOT NULL,"
	" sender TEXT NOT NULL COLLATE NOCASE,"
	" rcpt TEXT NOT NULL COLLATE NOCASE,"
	" first_seen INTEGER NOT NULL,"
	" last_seen INTEGER NOT NULL,"
	" expires INTEGER NOT NULL,"
	" passed INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY (net, sender, rcpt))",
	"CREATE INDEX greylist_expires ON greylist(expires)",
	"CREATE TABLE greylist_clients ("
	" net TEXT PRIMARY KEY,"
	" passes INTEGER NOT NULL,"
	" expires INTEGER NOT NULL)",
	"CREATE TABLE rate ("
	" key TEXT PRIMARY KEY,"
	" window_start INTEGER NOT NULL,"
	" messages INTEGER NOT NULL,"
	" rcpts INTEGER NOT NULL)",
	"CREATE TABLE dkim_keys ("
	" domain TEXT NOT NULL COLLATE NOCASE,"
	" selector TEXT NOT NULL COLLATE NOCASE,"
	" algorithm TEXT NOT NULL,"
	" private_key TEXT NOT NULL,"
	" txt TEXT NOT NULL,"
	" created INTEGER NOT NULL,"
	" PRIMARY KEY (domain, selector))",
	"ALTER TABLE domains ADD COLUMN filter TEXT NOT NULL DEFAULT 'default' COLLATE NOCASE",
	"ALTER TABLE maillog ADD COLUMN session TEXT",
	"CREATE INDEX maillog_session ON maillog(session)",
	"CREATE INDEX maillog_qid ON maillog(qid)",
	NULL
};

/* store_migrations[i] brings the schema from version i to i + 1 */
const char *const *const store_migrations[] = { store_mig1, store_mig2, store_mig3,
	store_mig4, store_mig5 };
const int store_n_migrations = (int)(sizeof(store_migrations) / sizeof(store_migrations[0]));

#define STORE_VERIFY_COLS "name, type, url, query, base, filter, bind_dn, bind_password, " \
	"route_attr, starttls, mode, ttl_found, ttl_missing, fallback, timeout"

const char *const store_sql_sqlite[ST__COUNT] = {
	[ST_DOMAIN_GET] = "SELECT name, local, relay, tls, verify, filter FROM domains WHERE name = ?",
	[ST_DOMAIN_ADD] = "INSERT INTO domains(name, local, relay, tls, verify, filter)"
	    " VALUES (?, ?, ?, ?, ?, ?)",
	[ST_DOMAIN_SET_VERIFY] = "UPDATE domains SET verify = ? WHERE name = ?",
	[ST_DOMAIN_SET_FILTER] = "UPDATE domains SET filter = ? WHERE name = ?",
	[ST_DOMAIN_COUNT_USERS] = "SELECT count(*) FROM users WHERE domain = ?",
	[ST_DOMAIN_COUNT_ALIASES] = "SELECT count(*) FROM aliases WHERE domain = ?",
	[ST_DOMAIN_DEL] = "DELETE FROM domains WHERE name = ?",
	[ST_DOMAIN_LIST] = "SELECT name, local, relay, tls, verify, filter FROM domains ORDER BY name",

	[ST_USER_EXISTS] = "SELECT 1 FROM users WHERE address = ?",
	[ST_USER_IS_ALIAS] = "SELECT count(*) FROM aliases WHERE address = ?",
	[ST_USER_ADD] = "INSERT INTO users(address, domain, password_hash, created) VALUES (?, ?, ?, ?)",
	[ST_USER_PASSWD] = "UPDATE users SET password_hash = ? WHERE address = ?",
	[ST_USER_DEL] = "DELETE FROM users WHERE address = ?",
	[ST_USER_HASH] = "SELECT password_hash FROM users WHERE address = ?",
	[ST_USER_HASH_MAILBOX] = "SELECT u.password_hash FROM users u JOIN domains d ON d.name = u.domain"
	    " WHERE u.address = ? AND d.local = 1",
	[ST_USER_LIST] = "SELECT address FROM users ORDER BY domain, address",
	[ST_USER_LIST_DOMAIN] = "SELECT address FROM users WHERE domain = ? ORDER BY domain, address",

	[ST_ALIAS_ADD] = "INSERT INTO aliases(address, domain, targets) VALUES (?, ?, ?)",
	[ST_ALIAS_DEL] = "DELETE FROM aliases WHERE address = ?",
	[ST_ALIAS_LIST] = "SELECT address, targets FROM aliases ORDER BY domain, address",
	[ST_ALIAS_TARGETS] = "SELECT targets FROM aliases WHERE address = ?",

	[ST_NET_ADD] = "INSERT INTO networks(cidr, family, prefix, addr) VALUES (?, ?, ?, ?)",
	[ST_NET_DEL] = "DELETE FROM networks WHERE cidr = ?",
	[ST_NET_LIST] = "SELECT cidr FROM networks ORDER BY family, addr, prefix",
	[ST_NET_LOAD] = "SELECT family, prefix, addr FROM networks",
	/* engine-specific: changes when another connection commits */
	[ST_DATA_VERSION] = "PRAGMA data_version",

	[ST_LOG_INSERT] = "INSERT INTO maillog(ts, qid, client, helo, sender, rcpt, action, "
	    "code, reason, profile, relay, size, delay_ms, session) "
	    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",

	[ST_AUTH_GET] = "SELECT value FROM auth_settings WHERE key = ?",
	[ST_AUTH_SET] = "INSERT INTO auth_settings(key, value) VALUES (?, ?) "
	    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
	[ST_AUTH_SERVER_COUNT] = "SELECT count(*) FROM auth_servers",
	[ST_AUTH_SERVER_ADD] = "INSERT INTO auth_servers(position, proto, tls, host, port, enabled) "
	    "VALUES (?, ?, ?, ?, ?, ?)",
	[ST_AUTH_SERVER_DEL] = "DELETE FROM auth_servers WHERE id = ?",
	[ST_AUTH_SERVER_POSITION] = "UPDATE auth_servers SET position = ? WHERE id = ?",
	[ST_AUTH_SERVER_IDS] = "SELECT id FROM auth_servers ORDER BY position, id",
	[ST_AUTH_SERVER_LIST] = "SELECT id, position, proto, tls, host, port, enabled FROM auth_servers "
	    "ORDER BY position, id",

	[ST_VERIFY_GET] = "SELECT " STORE_VERIFY_COLS " FROM verify_profiles WHERE name = ?",
	[ST_VERIFY_ADD] = "INSERT INTO verify_profiles(" STORE_VERIFY_COLS ") "
	    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
	[ST_VERIFY_USED_BY_DOMAIN] = "SELECT name FROM domains WHERE verify = ? COLLATE NOCASE "
	    "ORDER BY name LIMIT 1",
	[ST_VERIFY_USED_AS_FALLBACK] = "SELECT name FROM verify_profiles WHERE fallback = ? "
	    "ORDER BY name LIMIT 1",
	[ST_VERIFY_DEL] = "DELETE FROM verify_profiles WHERE name = ?",
	[ST_VERIFY_LIST] = "SELECT " STORE_VERIFY_COLS " FROM verify_profiles ORDER BY name",
	[ST_VERIFY_CACHE_GET] = "SELECT result, route FROM verify_cache "
	    "WHERE profile = ? AND address = ? AND expires > ?",
	[ST_VERIFY_CACHE_PUT] = "INSERT OR REPLACE INTO verify_cache(profile, address, result, route, "
	    "expires) VALUES (?, ?, ?, ?, ?)",
	[ST_VERIFY_CACHE_EXPIRE] = "DELETE FROM verify_cache WHERE expires <= ?",
	[ST_VERIFY_CACHE_FLUSH] = "DELETE FROM verify_cache WHERE profile = ?",
	[ST_VERIFY_CACHE_FLUSH_ALL] = "DELETE FROM verify_cache",

	[ST_FILTER_VERSION] = "SELECT version FROM filter_version",
	[ST_FPOL_GET] = "SELECT name, tag_score, quarantine_score, reject_score FROM filter_policies"
	    " WHERE name = ?",
	[ST_FPOL_LIST] = "SELECT name, tag_score, quarantine_score, reject_score FROM filter_policies"
	    " ORDER BY name",
	[ST_FPOL_ADD] = "INSERT INTO filter_policies(name, tag_score, quarantine_score, reject_score)"
	    " VALUES (?, ?, ?, ?)",
	[ST_FPOL_COPY_CHECKS] = "INSERT INTO filter_checks(policy, name, action, score, on_error, options)"
	    " SELECT ?, name, action, score, on_error, options FROM filter_checks WHERE policy = ?",
	[ST_FPOL_COPY_LISTS] = "INSERT INTO filter_lists(policy, list, kind, value, skip, comment)"
	    " SELECT ?, list, kind, value, skip, comment FROM filter_lists WHERE policy = ?",
	[ST_FPOL_USED] = "SELECT count(*) FROM domains WHERE filter = ?",
	[ST_FPOL_DEL] = "DELETE FROM filter_policies WHERE name = ?",
	[ST_FPOL_DEL_CHECKS] = "DELETE FROM filter_checks WHERE policy = ?",
	[ST_FPOL_DEL_LISTS] = "DELETE FROM filter_lists WHERE policy = ?",
	[ST_FPOL_SCORES] = "UPDATE filter_policies SET tag_score = ?, quarantine_score = ?,"
	    " reject_score = ? WHERE name = ?",
	[ST_FCHECK_LIST] = "SELECT name, action, score, on_error, options FROM filter_checks"
	    " WHERE policy = ? ORDER BY name",
	[ST_FCHECK_SET] = "INSERT INTO filter_checks(policy, name, action, score, on_error, options)"
	    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (policy, name) DO UPDATE SET"
	    " action = excluded.action, score = excluded.score, on_error = excluded.on_error,"
	    " options = excluded.options",
	[ST_FLIST_ADD] = "INSERT INTO filter_lists(policy, list, kind, value, skip, comment)"
	    " VALUES (?, ?, ?, ?, ?, ?)",
	[ST_FLIST_DEL] = "DELETE FROM filter_lists WHERE policy = ? AND list = ? AND kind = ?"
	    " AND value = ?",
	[ST_FLIST_ALL] = "SELECT policy, list, kind, value, skip, comment FROM filter_lists"
	    " ORDER BY policy, list, kind, value",
	[ST_FLIST_POLICY] = "SELECT policy, list, kind, value, skip, comment FROM filter_lists"
	    " WHERE policy = ? ORDER BY list, kind, value",
	[ST_GREY_GET] = "SELECT net, sender, rcpt, first_seen, last_seen, expires, passed"
	    " FROM greylist WHERE net = ? AND sender = ? AND rcpt = ?",
	[ST_GREY_PUT] = "INSERT OR REPLACE INTO greylist(net, sender, rcpt, first_seen, last_seen,"
	    " expires, passed) VALUES (?, ?, ?, ?, ?, ?, ?)",
	[ST_GREY_LIST] = "SELECT net, sender, rcpt, first_seen, last_seen, expires, passed"
	    " FROM greylist WHERE expires > ? ORDER BY last_seen DESC LIMIT ?",
	[ST_GREY_FLUSH] = "DELETE FROM greylist WHERE ? IS NULL OR net = ? OR sender = ? OR rcpt = ?",
	[ST_GREY_EXPIRE] = "DELETE FROM greylist WHERE expires <= ?",
	[ST_GREY_CLIENT_GET] = "SELECT passes, expires FROM greylist_clients WHERE net = ?",
	[ST_GREY_CLIENT_PUT] = "INSERT OR REPLACE INTO greylist_clients(net, passes, expires)"
	    " VALUES (?, ?, ?)",
	[ST_GREY_CLIENT_FLUSH] = "DELETE FROM greylist_clients WHERE ? IS NULL OR net = ?"
	    " OR expires <= ?",
	/* a window that has passed starts again at this hit */
	[ST_RATE_HIT] = "INSERT INTO rate(key, window_start, messages, rcpts) VALUES (?1, ?2, ?3, ?4)"
	    " ON CONFLICT (key) DO UPDATE SET"
	    " messages = CASE WHEN window_start <= ?2 - ?5 THEN ?3 ELSE messages + ?3 END,"
	    " rcpts = CASE WHEN window_start <= ?2 - ?5 THEN ?4 ELSE rcpts + ?4 END,"
	    " window_start = CASE WHEN window_start <= ?2 - ?5 THEN ?2 ELSE window_start END",
	[ST_RATE_GET] = "SELECT window_start, messages, rcpts FROM rate WHERE key = ?",

	[ST_DKIM_ADD] = "INSERT INTO dkim_keys(domain, selector, algorithm, private_key, txt, created)"
	    " VALUES (?, ?, ?, ?, ?, ?)",
	[ST_DKIM_GET] = "SELECT domain, selector, algorithm, private_key, txt, created FROM dkim_keys"
	    " WHERE domain = ? AND selector = ?",
	/* the newest key of a domain: the one it signs with */
	[ST_DKIM_NEWEST] = "SELECT domain, selector, algorithm, private_key, txt, created FROM dkim_keys"
	    " WHERE domain = ? ORDER BY created DESC, rowid DESC LIMIT 1",
	/* never the private key */
	[ST_DKIM_LIST] = "SELECT domain, selector, algorithm, '', txt, created FROM dkim_keys"
	    " ORDER BY domain, created DESC, rowid DESC",
	[ST_DKIM_DEL] = "DELETE FROM dkim_keys WHERE domain = ? AND selector = ?",
	[ST_DKIM_DEL_DOMAIN] = "DELETE FROM dkim_keys WHERE domain = ?",
};
