/* store_sqlite: the SQLite engine behind the statement layer: connecting
 * (PRAGMAs, read-only handles), the schema version check and migrations,
 * the per-handle statement cache, binding, stepping, columns, transactions
 * and engine error texts. The only file of src/store/ that calls sqlite3_*.
 * Runs in every process that opens the store (kaled's children, kalectl). */
#include "store/store_int.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/util.h"

#define STORE_BUSY_MS 5000

int store_err_db(store *st, char **error_r, const char *what)
{
	return util_err(error_r, "%s: %s", what, sqlite3_errmsg(st->db));
}

/* Runs SQL without results (PRAGMAs, migrations, BEGIN/COMMIT). 0 or -1. */
static int store_sqlite_exec(store *st, const char *sql, char **error_r)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		util_err(error_r, "store: %s: %s", sql, msg ? msg : "failed");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

/* ---- statements ---- */

static int store_q_vbind(struct store_q *q, int idx, const char *fmt, va_list ap)
{
	sqlite3_stmt *s = q->h;
	int rc = SQLITE_OK;

	for (const char *f = fmt ? fmt : ""; *f && rc == SQLITE_OK; f++, idx++) {
		switch (*f) {
		case 't': {
			const char *v = va_arg(ap, const char *);
			rc = v == NULL ? sqlite3_bind_null(s, idx) :
			    sqlite3_bind_text(s, idx, v, -1, SQLITE_TRANSIENT);
			break;
		}
		case 'i':
			rc = sqlite3_bind_int(s, idx, va_arg(ap, int));
			break;
		case 'I':
			rc = sqlite3_bind_int64(s, idx, (sqlite3_int64)va_arg(ap, int64_t));
			break;
		case 'd':
			rc = sqlite3_bind_double(s, idx, va_arg(ap, double));
			break;
		case 'b': {
			const void *v = va_arg(ap, const void *);
			int len = va_arg(ap, int);
			rc = sqlite3_bind_blob(s, idx, v, len, SQLITE_TRANSIENT);
			break;
		}
		default:
			rc = SQLITE_MISUSE;    /* a bug in the caller's format */
		}
	}
	return rc == SQLITE_OK ? 0 : -1;
}

static int store_q_vstart(store *st, struct store_q *q, int id, const char *sql, char **error_r,
    const char *fmt, va_list ap)
{
	sqlite3_stmt *s = NULL;

	q->st = st;
	q->h = NULL;
	q->id = -1;
	if (id >= 0 && !st->busy[id]) {
		/* the cached statement, prepared on first use */
		if (st->stmts[id] == NULL) {
			if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL)
			    != SQLITE_OK) {
				store_err_db(st, error_r, "store: prepare");
				sqlite3_finalize(s);
				return -1;
			}
			st->stmts[id] = s;
		}
		q->h = st->stmts[id];
		q->id = id;
		st->busy[id] = 1;
	} else {
		/* dynamic SQL, or the cached statement is in use further up
		 * (a callback of a list running the same statement): a one-off */
		if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) {
			store_err_db(st, error_r, "store: prepare");
			sqlite3_finalize(s);
			return -1;
		}
		q->h = s;
	}
	if (store_q_vbind(q, 1, fmt, ap) < 0) {
		store_err_db(st, error_r, "store: bind");
		store_q_end(q);
		return -1;
	}
	return 0;
}

int store_q_bind(struct store_q *q, int idx, const char *fmt, ...)
{
	va_list ap;
	int rc;

	if (q->h == NULL)
		return -1;
	va_start(ap, fmt);
	rc = store_q_vbind(q, idx, fmt, ap);
	va_end(ap);
	return rc;
}

int store_q_start(store *st, struct store_q *q, enum store_stmt id, char **error_r,
    const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = store_q_vstart(st, q, (int)id, st->sql[id], error_r, fmt, ap);
	va_end(ap);
	return rc;
}

int store_q_start_sql(store *st, struct store_q *q, const char *sql, char **error_r,
    const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = store_q_vstart(st, q, -1, sql, error_r, fmt, ap);
	va_end(ap);
	return rc;
}

int store_q_step(struct store_q *q)
{
	int rc;

	if (q->h == NULL)
		return STORE_ERROR;
	rc = sqlite3_step(q->h);
	if (rc == SQLITE_ROW)
		return STORE_ROW;
	if (rc == SQLITE_DONE)
		return STORE_DONE;
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
		return STORE_DUP;
	return STORE_ERROR;
}

const char *store_q_text(struct store_q *q, int col)
{
	return (const char *)sqlite3_column_text(q->h, col);
}

int64_t store_q_int(struct store_q *q, int col)
{
	return (int64_t)sqlite3_column_int64(q->h, col);
}

double store_q_double(struct store_q *q, int col)
{
	return sqlite3_column_double(q->h, col);
}

const void *store_q_blob(struct store_q *q, int col, int *len_r)
{
	const void *v = sqlite3_column_blob(q->h, col);

	*len_r = sqlite3_column_bytes(q->h, col);
	return v;
}

void store_q_copy(struct store_q *q, int col, char *dst, size_t cap)
{
	const char *v = store_q_text(q, col);

	if (util_fmt(dst, cap, "%s", v ? v : "") < 0)
		dst[0] = '\0';
}

void store_q_end(struct store_q *q)
{
	if (q->h == NULL)
		return;
	if (q->id >= 0) {
		/* keeps the error message of a failed step (prepare_v2/v3
		 * statements hand it to the connection at the step) */
		sqlite3_reset(q->h);
		sqlite3_clear_bindings(q->h);
		q->st->busy[q->id] = 0;
	} else {
		sqlite3_finalize(q->h);
	}
	q->h = NULL;
}

static int store_vrun(store *st, enum store_stmt id, int64_t *v_r, const char *fmt, va_list ap)
{
	struct store_q q;
	int rc;

	if (store_q_vstart(st, &q, (int)id, st->sql[id], NULL, fmt, ap) < 0)
		return STORE_ERROR;
	rc = store_q_step(&q);
	if (v_r != NULL)
		*v_r = rc == STORE_ROW ? store_q_int(&q, 0) : 0;
	store_q_end(&q);
	return rc;
}

int store_run(store *st, enum store_stmt id, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = store_vrun(st, id, NULL, fmt, ap);
	va_end(ap);
	return rc;
}

int store_run_added(store *st, int res, const char *kind, const char *name, char **error_r)
{
	switch (res) {
	case STORE_DONE:
		return 0;
	case STORE_DUP:
		return util_err(error_r, "%s %s already exists", kind, name);
	default:
		return util_err(error_r, "store: add %s: %s", kind, sqlite3_errmsg(st->db));
	}
}

int store_q_each(struct store_q *q, int (*row)(struct store_q *q, void *arg), void *arg)
{
	int rc;

	while ((rc = store_q_step(q)) == STORE_ROW)
		if (row(q, arg) != 0) {
			rc = STORE_DONE;
			break;
		}
	store_q_end(q);
	return rc == STORE_DONE ? 0 : -1;
}

int store_run_int(store *st, enum store_stmt id, int64_t *v_r, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = store_vrun(st, id, v_r, fmt, ap);
	va_end(ap);
	return rc == STORE_ROW ? 0 : -1;
}

long store_changes(store *st)
{
	return (long)sqlite3_changes(st->db);
}

int64_t store_last_id(store *st)
{
	return (int64_t)sqlite3_last_insert_rowid(st->db);
}

int store_data_version(store *st, int64_t *v_r)
{
	return store_run_int(st, ST_DATA_VERSION, v_r, "");
}

/* ---- transactions ---- */

int store_tx_begin(store *st, char **error_r)
{
	if (st->in_tx || !sqlite3_get_autocommit(st->db))
		return util_err(error_r, "store: transaction already open");
	if (st->readonly)
		return util_err(error_r, "store: read-only handle");
	if (store_sqlite_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	st->in_tx = 1;
	return 0;
}

int store_tx_commit(store *st, char **error_r)
{
	if (!st->in_tx)
		return util_err(error_r, "store: no transaction open");
	if (store_sqlite_exec(st, "COMMIT", error_r) < 0) {
		store_tx_rollback(st);
		return -1;
	}
	st->in_tx = 0;
	return 0;
}

void store_tx_rollback(store *st)
{
	if (!st->in_tx)
		return;
	if (!sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	st->in_tx = 0;
}

int store_tx_active(const store *st)
{
	return st->in_tx;
}

int store_tx(store *st, int (*fn)(store *st, void *ctx, char **error_r), void *ctx,
    char **error_r)
{
	int rc;

	if (store_tx_begin(st, error_r) < 0)
		return -1;
	rc = fn(st, ctx, error_r);
	if (rc < 0) {
		store_tx_rollback(st);
		return rc;
	}
	if (store_tx_commit(st, error_r) < 0)
		return -1;
	return rc;
}

/* ---- schema version and migrations ---- */

int store_schema_read(store *st, int *version_r, char **error_r)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*version_r = 0;
	/* a fresh file has no schema_version table: version 0 */
	if (sqlite3_prepare_v2(st->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
	    "AND name = 'schema_version'", -1, &s, NULL) != SQLITE_OK)
		goto fail;
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		goto fail;
	rc = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	s = NULL;
	if (rc == 0)
		return 0;
	if (sqlite3_prepare_v2(st->db, "SELECT max(version) FROM schema_version", -1, &s, NULL)
	    != SQLITE_OK)
		goto fail;
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		goto fail;
	if (rc == SQLITE_ROW)
		*version_r = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	return 0;
fail:
	store_err_db(st, error_r, "store: schema version");
	sqlite3_finalize(s);
	return -1;
}

static int store_newer_err(int version, char **error_r)
{
	return util_err(error_r, "store: schema version %d is newer than this program (%d)",
	    version, store_n_migrations);
}

/* Inside one BEGIN IMMEDIATE: every migration above the stored version,
 * then the new version. The version is read again under the write lock:
 * another process may have migrated meanwhile. */
static int store_migrate_tx(store *st, void *ctx, char **error_r)
{
	sqlite3_stmt *s = NULL;
	int version = 0;

	(void)ctx;
	if (store_sqlite_exec(st, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
	    error_r) < 0)
		return -1;
	if (store_schema_read(st, &version, error_r) < 0)
		return -1;
	if (version > store_n_migrations)
		return store_newer_err(version, error_r);
	if (version == store_n_migrations)
		return 0;
	for (int v = version; v < store_n_migrations; v++)
		for (const char *const *sql = store_migrations[v]; *sql != NULL; sql++)
			if (store_sqlite_exec(st, *sql, error_r) < 0)
				return -1;
	if (store_sqlite_exec(st, "DELETE FROM schema_version", error_r) < 0)
		return -1;
	if (sqlite3_prepare_v2(st->db, "INSERT INTO schema_version(version) VALUES (?)", -1, &s, NULL)
	    != SQLITE_OK)
		return store_err_db(st, error_r, "store: prepare");
	sqlite3_bind_int(s, 1, store_n_migrations);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: schema_version");
		sqlite3_finalize(s);
		return -1;
	}
	sqlite3_finalize(s);
	return 0;
}

/* WAL is a property of the file: set it only when it is not set yet, so
 * that opening a current store writes nothing. */
static int store_sqlite_wal(store *st, char **error_r)
{
	sqlite3_stmt *s = NULL;
	int wal = 0;

	if (sqlite3_prepare_v2(st->db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW) {
		const unsigned char *m = sqlite3_column_text(s, 0);
		wal = m != NULL && strcmp((const char *)m, "wal") == 0;
	}
	sqlite3_finalize(s);
	return wal ? 0 : store_sqlite_exec(st, "PRAGMA journal_mode=WAL", error_r);
}

int store_open_flags(const struct kale_config *cfg, int flags, store **st_r, char **error_r)
{
	const char *url = cfg && cfg->db_url ? cfg->db_url : "sqlite:kale.db";
	int ro = (flags & STORE_OPEN_READONLY) != 0, version = 0;
	int migrate = !ro && (flags & STORE_OPEN_MIGRATE) != 0;
	store *st;

	*st_r = NULL;
	if (strncmp(url, "sqlite:", 7) != 0 || url[7] == '\0')
		return util_err(error_r, "store: unsupported database url '%.200s' (only sqlite:PATH)", url);
	st = xcalloc(1, sizeof(*st));
	st->readonly = ro;
	st->sql = store_sql_sqlite;
	/* only a migrating open creates the file */
	if (sqlite3_open_v2(url + 7, &st->db, (ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
	    (migrate ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		if (!ro && !migrate && access(url + 7, F_OK) < 0 && errno == ENOENT)
			util_err(error_r, "store: open %s: no such file: start kaled (master) to create it",
			    url + 7);
		else
			util_err(error_r, "store: open %s: %s", url + 7,
			    st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(st->db, STORE_BUSY_MS);
	sqlite3_extended_result_codes(st->db, 1);
	/* read the version first, without a transaction (no write lock), so
	 * that a refused open has written nothing, not even the WAL mode */
	if (store_schema_read(st, &version, error_r) < 0)
		goto fail;
	if (version > store_n_migrations) {
		store_newer_err(version, error_r);
		goto fail;
	}
	if (version < store_n_migrations && !migrate) {
		util_err(error_r, "store schema version %d, this kaled expects %d: "
		    "start kaled (master) to migrate", version, store_n_migrations);
		goto fail;
	}
	if (!ro && (store_sqlite_wal(st, error_r) < 0 ||
	    store_sqlite_exec(st, "PRAGMA synchronous=NORMAL", error_r) < 0 ||
	    store_sqlite_exec(st, "PRAGMA foreign_keys=ON", error_r) < 0))
		goto fail;
	if (version < store_n_migrations && store_tx(st, store_migrate_tx, NULL, error_r) < 0)
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
	store_tx_rollback(st);
	for (int i = 0; i < ST__COUNT; i++)
		sqlite3_finalize(st->stmts[i]);
	sqlite3_close(st->db);
	free(st);
	*stp = NULL;
}
