/* test_store_engine: the statement layer of src/store/ (statement cache,
 * bind-and-step, re-entrant use), the transaction helpers (rollback on
 * error, nesting refused), the connect/migrate split (a current store is
 * opened without writing, a newer one refused, an older one migrated only
 * when asked) and the per-thread read-only password-check handles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <pthread.h>
#include <sqlite3.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "lib/util.h"
#include "store/store_int.h"
#include "unit_store.h"


static void add_domain(store *st, const char *name, int local, const char *relay)
{
	struct store_domain d;
	char *err = NULL;

	memset(&d, 0, sizeof(d));
	snprintf(d.name, sizeof(d.name), "%s", name);
	d.local = local;
	snprintf(d.relay, sizeof(d.relay), "%s", relay ? relay : "");
	if (store_domain_add(st, &d, &err) != 0)
		fail_msg("add domain %s: %s", name, err);
}

static int setup(void **state)
{
	struct fix *f = unit_store_new("steng");
	char *err = NULL;

	add_domain(f->st, "example.test", 1, NULL);
	add_domain(f->st, "relay.test", 0, "mx");
	assert_int_equal(store_user_add(f->st, "alice@example.test", "alice-pw", &err), 0);
	assert_int_equal(store_user_add(f->st, "rita@relay.test", "rita-pw", &err), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	store_user_thread_close();
	return unit_store_free(state);
}

static sqlite3 *raw_open(void)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open("kale.db", &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *s = NULL;
	int64_t v;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return v;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

/* Takes a current schema back to version 3: undoes the migrations after
 * it (4 only updates rows; 5 adds the filter tables and domains.filter).
 * A new migration adds its undo here. */
static void raw_to_v3(sqlite3 *db)
{
	raw_exec(db, "DROP TABLE filter_policies; DROP TABLE filter_checks; DROP TABLE filter_lists;"
	    " DROP TABLE filter_version; DROP TABLE greylist; DROP TABLE greylist_clients;"
	    " DROP TABLE rate; DROP TABLE dkim_keys; DROP INDEX maillog_session;"
	    " DROP INDEX maillog_qid;"
	    " ALTER TABLE domains DROP COLUMN filter; ALTER TABLE maillog DROP COLUMN session;"
	    " UPDATE schema_version SET version = 3");
	assert_int_equal(store_schema_version(), 5);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- statement layer ---- */

/* every named statement has a text that prepares against the current schema */
static void test_stmt_table(void **state)
{
	struct fix *f = *state;
	struct store_q q;
	char *err = NULL;

	for (int i = 0; i < ST__COUNT; i++) {
		assert_non_null(store_sql_sqlite[i]);
		if (store_q_start(f->st, &q, (enum store_stmt)i, &err, "") < 0)
			fail_msg("statement %d: %s", i, err);
		store_q_end(&q);
		assert_non_null(f->st->stmts[i]);
	}
}

static void test_stmt_cache(void **state)
{
	struct fix *f = *state;
	struct store_q q;
	struct store_domain d;
	void *h;

	assert_null(f->st->stmts[ST_AUTH_GET]);
	assert_int_equal(store_q_start(f->st, &q, ST_AUTH_GET, NULL, "t", "method"), 0);
	assert_int_equal(q.id, ST_AUTH_GET);
	h = q.h;
	assert_ptr_equal(f->st->stmts[ST_AUTH_GET], h);
	assert_int_equal(f->st->busy[ST_AUTH_GET], 1);
	assert_int_equal(store_q_step(&q), STORE_DONE);
	store_q_end(&q);
	assert_int_equal(f->st->busy[ST_AUTH_GET], 0);
	assert_null(q.h);
	store_q_end(&q);               /* twice is harmless */

	/* the second use takes the same prepared statement */
	assert_int_equal(store_q_start(f->st, &q, ST_AUTH_GET, NULL, "t", "x"), 0);
	assert_ptr_equal(q.h, h);
	store_q_end(&q);

	/* bindings are cleared after use: a call without arguments finds
	 * nothing, not the previous row */
	assert_int_equal(store_domain_get(f->st, "example.test", &d), 1);
	assert_int_equal(store_run(f->st, ST_DOMAIN_GET, ""), STORE_DONE);
	for (int i = 0; i < 100; i++)
		assert_int_equal(store_domain_get(f->st, "EXAMPLE.test", &d), 1);
	assert_string_equal(d.name, "example.test");
	assert_int_equal(d.local, 1);
	assert_int_equal(store_domain_get(f->st, "nope.test", &d), 0);
}

static void test_stmt_results(void **state)
{
	struct fix *f = *state;
	struct store_q q;
	const void *blob;
	int64_t n = -1;
	int len = 0;
	const unsigned char addr[4] = { 192, 0, 2, 0 };

	/* STORE_DUP for a taken primary key, STORE_DONE otherwise */
	assert_int_equal(store_run(f->st, ST_DOMAIN_ADD, "titttt", "x.test", 1, "", "opportunistic", "", "default"),
	    STORE_DONE);
	assert_int_equal(store_changes(f->st), 1);
	assert_int_equal(store_run(f->st, ST_DOMAIN_ADD, "titttt", "X.TEST", 1, "", "opportunistic", "", "default"),
	    STORE_DUP);
	assert_int_equal(store_run(f->st, ST_USER_EXISTS, "t", "alice@example.test"), STORE_ROW);
	assert_int_equal(store_run(f->st, ST_USER_EXISTS, "t", NULL), STORE_DONE);
	assert_int_equal(store_run_int(f->st, ST_DOMAIN_COUNT_USERS, &n, "t", "example.test"), 0);
	assert_int_equal(n, 1);
	/* blobs and int64 round trip */
	assert_int_equal(store_run(f->st, ST_NET_ADD, "tiib", "192.0.2.0/24", 4, 24,
	    (const void *)addr, 4), STORE_DONE);
	assert_int_equal(store_q_start(f->st, &q, ST_NET_LOAD, NULL, ""), 0);
	assert_int_equal(store_q_step(&q), STORE_ROW);
	assert_int_equal(store_q_int(&q, 0), 4);
	assert_int_equal(store_q_int(&q, 1), 24);
	blob = store_q_blob(&q, 2, &len);
	assert_int_equal(len, 4);
	assert_memory_equal(blob, addr, 4);
	assert_int_equal(store_q_step(&q), STORE_DONE);
	store_q_end(&q);
	/* a bad format letter is an error, and the statement is free again */
	assert_int_equal(store_q_start(f->st, &q, ST_USER_EXISTS, NULL, "z", 1), -1);
	assert_int_equal(f->st->busy[ST_USER_EXISTS], 0);
	assert_int_equal(store_user_exists(f->st, "alice@example.test"), 1);
	/* dynamic SQL: a one-off, finalized at the end */
	assert_int_equal(store_q_start_sql(f->st, &q, "SELECT ? + 1", NULL, "I", (int64_t)41), 0);
	assert_int_equal(q.id, -1);
	assert_int_equal(store_q_step(&q), STORE_ROW);
	assert_int_equal(store_q_int(&q, 0), 42);
	store_q_end(&q);
	/* a prepare error carries the engine's message */
	{
		char *err = NULL;
		assert_int_equal(store_q_start_sql(f->st, &q, "SELEKT", &err, ""), -1);
		assert_non_null(strstr(err, "store: prepare: "));
		free(err);
	}
}

struct nest {
	store *st;
	int outer, inner;
};

static int inner_cb(void *ctx, const struct store_domain *d)
{
	(void)d;
	((struct nest *)ctx)->inner++;
	return 0;
}

/* a callback that runs the same listing again while the outer one is
 * stepping: the cached statement is busy, so the inner one is a one-off */
static int outer_cb(void *ctx, const struct store_domain *d)
{
	struct nest *n = ctx;
	struct store_domain x;

	n->outer++;
	assert_int_equal(store_domain_list(n->st, inner_cb, n), 0);
	assert_int_equal(store_domain_get(n->st, d->name, &x), 1);
	return 0;
}

static void test_stmt_reentrant(void **state)
{
	struct fix *f = *state;
	struct nest n = { f->st, 0, 0 };
	struct store_q a, b;

	assert_int_equal(store_domain_list(f->st, outer_cb, &n), 0);
	assert_int_equal(n.outer, 2);
	assert_int_equal(n.inner, 4);
	assert_int_equal(f->st->busy[ST_DOMAIN_LIST], 0);
	/* directly: the second start of a busy statement is a one-off */
	assert_int_equal(store_q_start(f->st, &a, ST_DOMAIN_LIST, NULL, ""), 0);
	assert_int_equal(store_q_start(f->st, &b, ST_DOMAIN_LIST, NULL, ""), 0);
	assert_int_equal(a.id, ST_DOMAIN_LIST);
	assert_int_equal(b.id, -1);
	assert_ptr_not_equal(a.h, b.h);
	assert_int_equal(store_q_step(&a), STORE_ROW);
	assert_int_equal(store_q_step(&b), STORE_ROW);
	assert_string_equal(store_q_text(&a, 0), store_q_text(&b, 0));
	store_q_end(&b);
	store_q_end(&a);
}

/* ---- transactions ---- */

static int tx_add_then_fail(store *st, void *ctx, char **error_r)
{
	(void)ctx;
	assert_int_equal(store_run(st, ST_DOMAIN_ADD, "titttt", "gone.test", 1, "", "opportunistic", "", "default"),
	    STORE_DONE);
	return util_err(error_r, "deliberate failure");
}

static int tx_add(store *st, void *ctx, char **error_r)
{
	(void)error_r;
	return store_run(st, ST_DOMAIN_ADD, "titttt", (const char *)ctx, 1, "", "opportunistic", "", "default")
	    == STORE_DONE ? 0 : -1;
}

static int tx_nested(store *st, void *ctx, char **error_r)
{
	char *err = NULL;

	(void)ctx;
	(void)error_r;
	assert_int_equal(store_tx_active(st), 1);
	assert_int_equal(store_tx(st, tx_add, "inner.test", &err), -1);
	assert_string_equal(err, "store: transaction already open");
	free(err);
	return 0;
}

static void test_tx(void **state)
{
	struct fix *f = *state;
	struct store_domain d;
	char *err = NULL;

	/* an error inside rolls everything back and passes the message on */
	assert_int_equal(store_tx(f->st, tx_add_then_fail, NULL, &err), -1);
	assert_string_equal(err, "deliberate failure");
	free(err);
	err = NULL;
	assert_int_equal(store_tx_active(f->st), 0);
	assert_int_equal(store_domain_get(f->st, "gone.test", &d), 0);
	/* success commits */
	assert_int_equal(store_tx(f->st, tx_add, "kept.test", &err), 0);
	assert_int_equal(store_domain_get(f->st, "kept.test", &d), 1);
	/* nesting is refused, the outer transaction goes on */
	assert_int_equal(store_tx(f->st, tx_nested, NULL, &err), 0);
	assert_int_equal(store_domain_get(f->st, "inner.test", &d), 0);
	assert_int_equal(store_tx_begin(f->st, &err), 0);
	assert_int_equal(store_tx_begin(f->st, &err), -1);
	assert_string_equal(err, "store: transaction already open");
	free(err);
	err = NULL;
	assert_int_equal(store_run(f->st, ST_DOMAIN_ADD, "titttt", "rolled.test", 1, "", "opportunistic",
	    "", "default"), STORE_DONE);
	store_tx_rollback(f->st);
	store_tx_rollback(f->st);      /* outside a transaction: nothing */
	assert_int_equal(store_domain_get(f->st, "rolled.test", &d), 0);
	/* commit without begin */
	assert_int_equal(store_tx_commit(f->st, &err), -1);
	assert_string_equal(err, "store: no transaction open");
	free(err);
	err = NULL;
	/* a public call that uses a transaction inside refuses to nest */
	assert_int_equal(store_tx_begin(f->st, &err), 0);
	assert_int_equal(store_domain_del(f->st, "kept.test", &err), -1);
	assert_string_equal(err, "store: transaction already open");
	free(err);
	err = NULL;
	assert_int_equal(store_tx_commit(f->st, &err), 0);
	assert_int_equal(store_domain_get(f->st, "kept.test", &d), 1);
	/* the texts of the public calls are unchanged */
	assert_int_equal(store_domain_del(f->st, "example.test", &err), -1);
	assert_string_equal(err, "domain has 1 user; delete them first");
	free(err);
	err = NULL;
	assert_int_equal(store_domain_del(f->st, "nope.test", &err), -1);
	assert_string_equal(err, "domain nope.test does not exist");
	free(err);
	err = NULL;
	assert_int_equal(store_domain_del(f->st, "kept.test", &err), 0);
}

/* reads through cached statements go on while another connection holds
 * the write lock (WAL), and the handle can write once it is released */
static void test_reads_during_write(void **state)
{
	struct fix *f = *state;
	sqlite3 *db = raw_open();
	char *err = NULL;
	double t0;

	raw_exec(db, "BEGIN IMMEDIATE");
	sqlite3_busy_timeout(db, 0);
	t0 = now_s();
	/* reads go on while another connection writes (WAL) */
	assert_int_equal(store_user_exists(f->st, "alice@example.test"), 1);
	assert_true(now_s() - t0 < 1.0);
	raw_exec(db, "ROLLBACK");
	sqlite3_close(db);
	assert_int_equal(store_tx(f->st, tx_add, "after.test", &err), 0);
}

/* ---- connect / migrate ---- */

static void test_open_current_writes_nothing(void **state)
{
	struct fix *f = *state;
	sqlite3 *db = raw_open();
	store *st = NULL;
	char *err = NULL;
	int64_t v0;
	double t0;

	v0 = raw_int(db, "PRAGMA data_version");
	/* hold the write lock: an open that wanted it would wait 5 s, fail */
	raw_exec(db, "BEGIN IMMEDIATE");
	t0 = now_s();
	assert_int_equal(store_open_migrate(&f->cfg, &st, &err), 0);
	assert_true(now_s() - t0 < 2.0);
	assert_int_equal(store_user_exists(st, "alice@example.test"), 1);
	assert_int_equal(store_user_check_password(st, "alice@example.test", "alice-pw"), 1);
	store_close(&st);
	/* read-only, as the password-check threads open it */
	assert_int_equal(store_open_flags(&f->cfg, STORE_OPEN_READONLY, &st, &err), 0);
	assert_int_equal(store_user_exists(st, "alice@example.test"), 1);
	store_close(&st);
	assert_int_equal(store_user_check_password_once(&f->cfg, "alice@example.test", "alice-pw"), 1);
	assert_true(now_s() - t0 < 4.0);
	raw_exec(db, "ROLLBACK");
	/* nobody committed anything meanwhile */
	assert_int_equal(raw_int(db, "PRAGMA data_version"), v0);
	sqlite3_close(db);
}

static void test_open_newer_refused(void **state)
{
	struct fix *f = *state;
	sqlite3 *db = raw_open();
	store *st = NULL;
	char *err = NULL, want[128];

	raw_exec(db, "UPDATE schema_version SET version = 99");
	sqlite3_close(db);
	snprintf(want, sizeof(want), "store: schema version 99 is newer than this program (%d)",
	    store_schema_version());
	assert_int_equal(store_open_migrate(&f->cfg, &st, &err), -1);
	assert_null(st);
	assert_string_equal(err, want);
	free(err);
	err = NULL;
	assert_int_equal(store_open_flags(&f->cfg, STORE_OPEN_READONLY, &st, &err), -1);
	assert_string_equal(err, want);
	free(err);
	assert_int_equal(store_user_check_password_once(&f->cfg, "alice@example.test", "alice-pw"), -1);
	/* the version was not touched */
	db = raw_open();
	assert_int_equal(raw_int(db, "SELECT max(version) FROM schema_version"), 99);
	sqlite3_close(db);
}

static void test_open_older(void **state)
{
	struct fix *f = *state;
	sqlite3 *db = raw_open();
	store *st = NULL;
	char *err = NULL;
	int v = -1;

	raw_to_v3(db);
	/* without MIGRATE (a child): refused, nothing written */
	assert_int_equal(store_open_flags(&f->cfg, 0, &st, &err), -1);
	assert_non_null(strstr(err, "store schema version 3, this kaled expects"));
	free(err);
	err = NULL;
	assert_int_equal(store_open_flags(&f->cfg, STORE_OPEN_READONLY, &st, &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(raw_int(db, "SELECT max(version) FROM schema_version"), 3);
	/* store_open_migrate (the master, kalectl) migrates */
	assert_int_equal(store_open_migrate(&f->cfg, &st, &err), 0);
	assert_int_equal(store_schema_read(st, &v, &err), 0);
	assert_int_equal(v, store_schema_version());
	assert_int_equal(raw_int(db, "SELECT count(*) FROM schema_version"), 1);
	store_close(&st);
	sqlite3_close(db);
}

static void test_open_fresh(void **state)
{
	struct fix *f = *state;
	struct kale_config cfg = f->cfg;
	store *st = NULL;
	char *err = NULL;
	int v = -1;

	/* a read-only handle never creates the file */
	cfg.db_url = "sqlite:fresh.db";
	assert_int_equal(store_open_flags(&cfg, STORE_OPEN_READONLY, &st, &err), -1);
	assert_non_null(strstr(err, "store: open fresh.db"));
	free(err);
	err = NULL;
	assert_int_equal(access("fresh.db", F_OK), -1);
	/* nor does a non-migrating open (store_connect), which names the fix */
	assert_int_equal(store_connect(&cfg, &st, &err), -1);
	assert_null(st);
	assert_string_equal(err, "store: open fresh.db: no such file: start kaled (master) to create it");
	free(err);
	err = NULL;
	assert_int_equal(access("fresh.db", F_OK), -1);
	assert_int_equal(store_open_migrate(&cfg, &st, &err), 0);
	assert_int_equal(store_schema_read(st, &v, &err), 0);
	assert_int_equal(v, store_schema_version());
	store_close(&st);
	unlink("fresh.db");
	unlink("fresh.db-wal");
	unlink("fresh.db-shm");
}

/* store_connect (every kaled child) on a file that exists but was never
 * migrated: refused with the fix named, nothing written; after
 * store_migrate (the master) it connects. */
static void test_connect_unmigrated(void **state)
{
	struct fix *f = *state;
	struct kale_config cfg = f->cfg;
	struct store_domain d;
	store *st = NULL;
	char *err = NULL, want[128];
	sqlite3 *db;
	int v = -1;

	cfg.db_url = "sqlite:bare.db";
	assert_int_equal(sqlite3_open("bare.db", &db), SQLITE_OK);
	raw_exec(db, "CREATE TABLE unrelated (x INTEGER)");
	snprintf(want, sizeof(want), "store schema version 0, this kaled expects %d: "
	    "start kaled (master) to migrate", store_schema_version());
	assert_int_equal(store_connect(&cfg, &st, &err), -1);
	assert_null(st);
	assert_string_equal(err, want);
	free(err);
	err = NULL;
	/* nothing was written, not even the journal mode */
	assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_master"), 1);
	{
		sqlite3_stmt *q = NULL;
		assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(q), SQLITE_ROW);
		assert_string_equal((const char *)sqlite3_column_text(q, 0), "delete");
		sqlite3_finalize(q);
	}
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	/* an older schema gets the same answer with its number */
	assert_int_equal(store_migrate(&cfg, &err), 0);
	assert_int_equal(sqlite3_open("bare.db", &db), SQLITE_OK);
	raw_to_v3(db);
	snprintf(want, sizeof(want), "store schema version 3, this kaled expects %d: "
	    "start kaled (master) to migrate", store_schema_version());
	assert_int_equal(store_connect(&cfg, &st, &err), -1);
	assert_string_equal(err, want);
	free(err);
	err = NULL;
	assert_int_equal(raw_int(db, "SELECT max(version) FROM schema_version"), 3);
	sqlite3_close(db);
	/* the master migrates; now every child connects */
	assert_int_equal(store_migrate(&cfg, &err), 0);
	assert_int_equal(store_connect(&cfg, &st, &err), 0);
	assert_non_null(st);
	assert_int_equal(store_schema_read(st, &v, &err), 0);
	assert_int_equal(v, store_schema_version());
	assert_int_equal(store_domain_get(st, "example.test", &d), 0);
	store_close(&st);
	unlink("bare.db");
	unlink("bare.db-wal");
	unlink("bare.db-shm");
}

static void test_readonly_handle(void **state)
{
	struct fix *f = *state;
	struct store_domain d;
	store *st = NULL;
	char *err = NULL;

	assert_int_equal(store_open_flags(&f->cfg, STORE_OPEN_READONLY, &st, &err), 0);
	assert_int_equal(store_domain_get(st, "example.test", &d), 1);
	memset(&d, 0, sizeof(d));
	snprintf(d.name, sizeof(d.name), "ro.test");
	d.local = 1;
	assert_int_equal(store_domain_add(st, &d, &err), -1);
	assert_non_null(strstr(err, "store: add domain: "));
	free(err);
	err = NULL;
	assert_int_equal(store_tx_begin(st, &err), -1);
	assert_string_equal(err, "store: read-only handle");
	free(err);
	/* it still sees what other connections commit */
	add_domain(f->st, "later.test", 1, NULL);
	assert_int_equal(store_domain_get(st, "later.test", &d), 1);
	store_close(&st);
}

/* ---- password checks on worker threads ---- */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		n++;
	closedir(d);
	return n;
}

struct pw_job {
	const struct kale_config *cfg;
	int ok, wrong, relay, unknown;
};

static void *pw_thread(void *arg)
{
	struct pw_job *j = arg;

	for (int i = 0; i < 3; i++)
		j->ok += store_user_check_password_once(j->cfg, "alice@example.test", "alice-pw");
	j->wrong = store_user_check_password_once(j->cfg, "alice@example.test", "nope");
	/* mailbox-only: a relay-domain user has no POP3/IMAP login */
	j->relay = store_user_check_password_once(j->cfg, "rita@relay.test", "rita-pw");
	j->unknown = store_user_check_password_once(j->cfg, "who@example.test", "x");
	return NULL;
}

static void test_password_threads(void **state)
{
	struct fix *f = *state;
	int fds = -1;

	/* rounds of two threads: each thread's handle is closed when it ends,
	 * so the process does not gain descriptors round after round (SQLite
	 * keeps the first closed ones for reuse while f->st holds locks) */
	for (int round = 0; round < 4; round++) {
		struct pw_job j[2] = { { .cfg = &f->cfg }, { .cfg = &f->cfg } };
		pthread_t th[2];

		for (int i = 0; i < 2; i++)
			assert_int_equal(pthread_create(&th[i], NULL, pw_thread, &j[i]), 0);
		for (int i = 0; i < 2; i++) {
			assert_int_equal(pthread_join(th[i], NULL), 0);
			assert_int_equal(j[i].ok, 3);
			assert_int_equal(j[i].wrong, 0);
			assert_int_equal(j[i].relay, 0);
			assert_int_equal(j[i].unknown, 0);
		}
		if (round == 1)
			fds = count_fds();
		else if (round > 1)
			assert_int_equal(count_fds(), fds);
	}
	/* the caller's own handle is not mailbox-only */
	assert_int_equal(store_user_check_password(f->st, "rita@relay.test", "rita-pw"), 1);
	/* a handle kept open sees a password changed meanwhile */
	{
		char *err = NULL;
		assert_int_equal(store_user_check_password_once(&f->cfg, "alice@example.test", "alice-pw"), 1);
		assert_int_equal(store_user_passwd(f->st, "alice@example.test", "new-pw", &err), 0);
		assert_int_equal(store_user_check_password_once(&f->cfg, "alice@example.test", "alice-pw"), 0);
		assert_int_equal(store_user_check_password_once(&f->cfg, "alice@example.test", "new-pw"), 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_stmt_table, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stmt_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stmt_results, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stmt_reentrant, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tx, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reads_during_write, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_current_writes_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_newer_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_older, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_fresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_unmigrated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_handle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_password_threads, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
