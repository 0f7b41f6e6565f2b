/* store_int: private to src/store/: the store handle, the statement layer
 * (named statements prepared once per handle, bind-and-step, transactions)
 * and the small helpers the store_*.c files share (validation, errors).
 * Nothing outside src/store/ includes this. The engine (SQLite) lives behind
 * the statement layer in store_sqlite.c; the SQL texts in store_sql.c. */
#ifndef KALE_STORE_INT_H
#define KALE_STORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define STORE_LOG_BATCH 500      /* flush when the batch holds this many rows */
#define STORE_LOG_MAX   10000    /* rows kept across failed flushes */

/* ---- named statements (SQL texts in store_sql.c) ---- */
enum store_stmt {
	/* domains (store.c) */
	ST_DOMAIN_GET,
	ST_DOMAIN_ADD,
	ST_DOMAIN_SET_VERIFY,
	ST_DOMAIN_SET_FILTER,
	ST_DOMAIN_COUNT_USERS,
	ST_DOMAIN_COUNT_ALIASES,
	ST_DOMAIN_DEL,
	ST_DOMAIN_LIST,
	/* users (store_user.c) */
	ST_USER_EXISTS,
	ST_USER_IS_ALIAS,
	ST_USER_ADD,
	ST_USER_PASSWD,
	ST_USER_DEL,
	ST_USER_HASH,
	ST_USER_HASH_MAILBOX,
	ST_USER_LIST,
	ST_USER_LIST_DOMAIN,
	/* aliases (store_alias.c) */
	ST_ALIAS_ADD,
	ST_ALIAS_DEL,
	ST_ALIAS_LIST,
	ST_ALIAS_TARGETS,
	/* trusted networks (store_net.c) */
	ST_NET_ADD,
	ST_NET_DEL,
	ST_NET_LIST,
	ST_NET_LOAD,
	ST_DATA_VERSION,
	/* mail log (store_log.c) */
	ST_LOG_INSERT,
	/* SMTP AUTH (store_auth.c) */
	ST_AUTH_GET,
	ST_AUTH_SET,
	ST_AUTH_SERVER_COUNT,
	ST_AUTH_SERVER_ADD,
	ST_AUTH_SERVER_DEL,
	ST_AUTH_SERVER_POSITION,
	ST_AUTH_SERVER_IDS,
	ST_AUTH_SERVER_LIST,
	/* verification profiles and cache (store_verify.c) */
	ST_VERIFY_GET,
	ST_VERIFY_ADD,
	ST_VERIFY_USED_BY_DOMAIN,
	ST_VERIFY_USED_AS_FALLBACK,
	ST_VERIFY_DEL,
	ST_VERIFY_LIST,
	ST_VERIFY_CACHE_GET,
	ST_VERIFY_CACHE_PUT,
	ST_VERIFY_CACHE_EXPIRE,
	ST_VERIFY_CACHE_FLUSH,
	ST_VERIFY_CACHE_FLUSH_ALL,
	/* filter policies, lists and greylisting (store_filter.c) */
	ST_FILTER_VERSION,
	ST_FPOL_GET,
	ST_FPOL_LIST,
	ST_FPOL_ADD,
	ST_FPOL_COPY_CHECKS,
	ST_FPOL_COPY_LISTS,
	ST_FPOL_USED,
	ST_FPOL_DEL,
	ST_FPOL_DEL_CHECKS,
	ST_FPOL_DEL_LISTS,
	ST_FPOL_SCORES,
	ST_FCHECK_LIST,
	ST_FCHECK_SET,
	ST_FLIST_ADD,
	ST_FLIST_DEL,
	ST_FLIST_ALL,
	ST_FLIST_POLICY,
	ST_GREY_GET,
	ST_GREY_PUT,
	ST_GREY_LIST,
	ST_GREY_FLUSH,
	ST_GREY_EXPIRE,
	ST_GREY_CLIENT_GET,
	ST_GREY_CLIENT_PUT,
	ST_GREY_CLIENT_FLUSH,
	ST_RATE_HIT,
	ST_RATE_GET,
	/* DKIM keys (store_dkim.c) */
	ST_DKIM_ADD,
	ST_DKIM_GET,
	ST_DKIM_NEWEST,
	ST_DKIM_LIST,
	ST_DKIM_DEL,
	ST_DKIM_DEL_DOMAIN,
	ST__COUNT
};

/* The SQL text of each statement in the SQLite dialect, indexed by enum
 * store_stmt (store_sql.c); a handle uses its engine's table (st->sql). */
extern const char *const store_sql_sqlite[ST__COUNT];
/* Migrations: store_migrations[i] brings the schema from version i to i+1;
 * each is a NULL-terminated list of statements (store_sql.c). */
extern const char *const *const store_migrations[];
extern const int store_n_migrations;

/* Results of store_q_step / store_run. */
enum store_res {
	STORE_ERROR = -1,    /* the message: store_err_db() */
	STORE_DONE = 0,      /* no (more) rows */
	STORE_ROW = 1,       /* a row: read it with store_q_* */
	STORE_DUP = 2        /* primary key or unique key taken (INSERT of an existing one) */
};

/* A statement in use: from the handle's cache, or prepared for this one
 * use (dynamic SQL, or the cached one busy with an outer loop). */
struct store_q {
	store *st;
	void *h;             /* engine statement (sqlite3_stmt) */
	int id;              /* enum store_stmt, or -1 for a one-off */
};

/* Takes statement ID (prepared on first use, then kept), binds the
 * arguments described by fmt, one letter each:
 *   t  const char *  (NULL binds NULL)     i  int
 *   I  int64_t                             b  const void *, int length
 *   d  double
 * 0, or -1 with *error_r "store: prepare: ..." (error_r may be NULL). */
int store_q_start(store *st, struct store_q *q, enum store_stmt id, char **error_r,
    const char *fmt, ...);
/* The same for SQL built at run time (only from fixed fragments!); the
 * statement is finalized by store_q_end. */
int store_q_start_sql(store *st, struct store_q *q, const char *sql, char **error_r,
    const char *fmt, ...);
/* Binds more arguments, from parameter idx (1-based) on, as store_q_start
 * (for SQL whose parameters vary). 0 or -1. */
int store_q_bind(struct store_q *q, int idx, const char *fmt, ...);
/* Steps: STORE_ROW, STORE_DONE, STORE_DUP or STORE_ERROR. */
int store_q_step(struct store_q *q);
/* Columns of the current row (0-based). text: NULL for SQL NULL, valid
 * until the next step or end. */
const char *store_q_text(struct store_q *q, int col);
int64_t store_q_int(struct store_q *q, int col);
double store_q_double(struct store_q *q, int col);
const void *store_q_blob(struct store_q *q, int col, int *len_r);
/* Resets and clears the bindings (cached) or finalizes (one-off). Accepts
 * a q that was never started or already ended. The engine's error message
 * survives it, so store_err_db may come after. */
void store_q_end(struct store_q *q);
/* start + one step + end, for statements whose row (if any) is not read:
 * STORE_ROW, STORE_DONE, STORE_DUP or STORE_ERROR (prepare errors too). */
int store_run(store *st, enum store_stmt id, const char *fmt, ...);
/* The answer to store_run of an INSERT that adds KIND (a word: "domain",
 * "user", ...) named NAME: 0 for STORE_DONE, -1 with *error_r "KIND NAME
 * already exists" for STORE_DUP, "store: add KIND: engine message" else. */
int store_run_added(store *st, int res, const char *kind, const char *name, char **error_r);
/* Steps through the rows of a started q, calling row(q, arg) for each; a
 * non-zero return stops early. Ends q. 0 (all rows, or stopped) or -1. */
int store_q_each(struct store_q *q, int (*row)(struct store_q *q, void *arg), void *arg);
/* start + step + read column 0 as an integer (count(*) and the like):
 * 0 with *v_r, -1 on error or no row. */
int store_run_int(store *st, enum store_stmt id, int64_t *v_r, const char *fmt, ...);
/* Rows changed by the last INSERT/UPDATE/DELETE; id of the last INSERT. */
long store_changes(store *st);
int64_t store_last_id(store *st);
/* A number that changes when another connection commits (PRAGMA
 * data_version in SQLite; ST_DATA_VERSION). 0 or -1. */
int store_data_version(store *st, int64_t *v_r);

/* ---- transactions ---- */
/* Begins a write transaction (BEGIN IMMEDIATE: the write lock is taken
 * now, not at the first write). Refused on a read-only handle and inside a
 * transaction (no nesting: "store: transaction already open"). 0 or -1. */
int store_tx_begin(store *st, char **error_r);
/* Commits; on failure rolls back. 0 or -1 with *error_r. */
int store_tx_commit(store *st, char **error_r);
/* Rolls back; does nothing outside a transaction. */
void store_tx_rollback(store *st);
/* 1 inside a transaction begun by store_tx_begin. */
int store_tx_active(const store *st);
/* Runs fn inside a transaction: commits if it returns 0, rolls back if it
 * returns < 0 (its *error_r is passed on). Returns fn's result or -1. */
int store_tx(store *st, int (*fn)(store *st, void *ctx, char **error_r), void *ctx,
    char **error_r);

/* ---- connection (store_sqlite.c) ---- */
#define STORE_OPEN_MIGRATE  1    /* create the file, bring an older schema up to date */
#define STORE_OPEN_READONLY 2    /* no writes, no write lock, no create */
/* Opens cfg->db_url. A current schema is only read (nothing is written);
 * a newer one is refused; a missing file is created and an older schema
 * migrated with STORE_OPEN_MIGRATE (store_open_migrate), refused without
 * (store_connect: flags 0) before anything is written. */
int store_open_flags(const struct kale_config *cfg, int flags, store **st_r, char **error_r);
/* Reads the schema version (0: none yet). 0 or -1 with *error_r. */
int store_schema_read(store *st, int *version_r, char **error_r);

/* ---- the handle ---- */
struct store_net {
	int family;                  /* AF_INET or AF_INET6 */
	int prefix;
	unsigned char addr[16];      /* network address, host bits zero */
};

struct store_log_item {
	int64_t ts, size, delay_ms;
	char *s[11];                 /* qid client helo sender rcpt action code reason profile relay */
};

struct sqlite3;

struct store {
	struct sqlite3 *db;          /* only store_sqlite.c touches it */
	const char *const *sql;      /* the engine's SQL texts, by enum store_stmt */
	void *stmts[ST__COUNT];      /* prepared statements, NULL until first use */
	unsigned char busy[ST__COUNT];   /* between store_q_start and store_q_end */
	int readonly;
	int in_tx;

	/* trusted networks, cached; reloaded when data_version changes */
	struct store_net *nets;
	int n_nets;
	int nets_loaded;
	int64_t nets_version;

	/* mail log batch */
	struct store_log_item *log;
	int n_log, cap_log;
	long log_dropped;

	int mailbox_only;     /* password checks only for users with a mailbox */
};

/* Messages are set with util_err (lib/util.h); this one appends the
 * engine's message for the handle: "WHAT: message". Returns -1. */
int store_err_db(store *st, char **error_r, const char *what);

/* Validation (store.c). Each fills a lower-cased copy into out[cap]. */
int store_domain_name_norm(const char *in, char *out, size_t cap, char **error_r);
/* local part of a local user/alias: [a-z0-9._+-], <=64, no edge/double dot */
int store_localpart_norm(const char *in, char *out, size_t cap, char **error_r);
/* any syntactically valid address (alias targets): dot-atom@domain */
int store_address_norm(const char *in, char *out, size_t cap, char **error_r);
/* ADDRESS in an existing local domain (or, with relay_ok, in any existing
 * domain: users of a relay domain are LocalDB recipients without a mailbox);
 * fills the normalised address and its domain. */
int store_local_address(store *st, const char *in, int relay_ok, char *addr, size_t acap,
    char *domain, size_t dcap, char **error_r);
/* 1 if s is a name of 1..max of [A-Za-z0-9._-] (profiles, policies). */
int store_name_ok(const char *s, size_t max);
/* Copies a text column (NULL as "") into dst[cap], "" if it does not fit. */
void store_q_copy(struct store_q *q, int col, char *dst, size_t cap);

/* store_net.c: marks the in-memory list stale after a local change. */
void store_net_invalidate(store *st);
void store_net_free(store *st);

/* store_log.c */
void store_log_free(store *st);

/* store_user.c: closes the calling thread's password-check handle. */
void store_user_thread_close(void);

#endif
