/* test_lookup_pool: the lookup thread pool with the localdb backend on a
 * temp policy store: answers come back on the loop thread, cancelled
 * requests are never answered, jobs run and are told when cancelled, the
 * cache and fallbacks work, and the synchronous form gives the same answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "lib/util.h"
#include "lookup/lookup.h"
#include "store/store.h"

struct fixture {
	char dir[64];
	char url[128];
	struct kale_config cfg;
	struct event_base *base;
};

struct got {
	int n;
	enum lookup_result result[16];
	char profile[16][64];
	int cached[16];
};

static void add_profile(store *st, const char *name, const char *mode, const char *fallback)
{
	struct store_verify v;
	char *err = NULL;

	memset(&v, 0, sizeof(v));
	assert_int_equal(util_fmt(v.name, sizeof(v.name), "%s", name), 0);
	assert_int_equal(util_fmt(v.type, sizeof(v.type), "localdb"), 0);
	assert_int_equal(util_fmt(v.mode, sizeof(v.mode), "%s", mode), 0);
	assert_int_equal(util_fmt(v.fallback, sizeof(v.fallback), "%s", fallback), 0);
	v.ttl_found = 3600;
	v.ttl_missing = 3600;
	v.timeout = 5;
	assert_int_equal(store_verify_add(st, &v, &err), 0);
	assert_null(err);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct store_domain d;
	store *st = NULL;
	char *err = NULL;

	assert_non_null(f);
	assert_int_equal(util_fmt(f->dir, sizeof(f->dir), "/tmp/kale-lookup-XXXXXX"), 0);
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(util_fmt(f->url, sizeof(f->url), "sqlite:%s/kale.db", f->dir), 0);
	f->cfg.db_url = f->url;
	assert_int_equal(store_open_migrate(&f->cfg, &st, &err), 0);
	memset(&d, 0, sizeof(d));
	assert_int_equal(util_fmt(d.name, sizeof(d.name), "example.test"), 0);
	d.local = 1;
	assert_int_equal(util_fmt(d.tls, sizeof(d.tls), "opportunistic"), 0);
	assert_int_equal(store_domain_add(st, &d, &err), 0);
	assert_int_equal(store_user_add(st, "alice@example.test", NULL, &err), 0);
	assert_int_equal(store_alias_add(st, "sales@example.test", "alice@example.test", &err), 0);
	add_profile(st, "local", "cache", "");
	add_profile(st, "rt", "realtime", "");
	add_profile(st, "first", "realtime", "local");
	store_close(&st);
	f->base = event_base_new();
	assert_non_null(f->base);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char path[128];

	event_base_free(f->base);
	for (const char *const *s = (const char *const[]){ "kale.db", "kale.db-wal", "kale.db-shm",
	    NULL }; *s != NULL; s++) {
		if (util_fmt(path, sizeof(path), "%s/%s", f->dir, *s) == 0)
			(void)unlink(path);
	}
	(void)rmdir(f->dir);
	free(f);
	return 0;
}

static void on_answer(void *ctx, const struct lookup_answer *a)
{
	struct got *g = ctx;

	assert_true(g->n < 16);
	g->result[g->n] = a->result;
	assert_int_equal(util_fmt(g->profile[g->n], sizeof(g->profile[0]), "%s",
	    a->profile ? a->profile : "?"), 0);
	g->cached[g->n] = a->cached;
	g->n++;
}

static void on_unexpected(void *ctx, const struct lookup_answer *a)
{
	(void)ctx;
	(void)a;
	fail_msg("a cancelled request was answered");
}

/* Runs the loop until *n reaches want (bounded: 20 s). */
static void run_until(struct fixture *f, const int *n, int want)
{
	uint64_t end = util_now_ms() + 20000;

	while (*n < want && util_now_ms() < end) {
		struct timeval tv = { 0, 50000 };
		event_base_loopexit(f->base, &tv);
		event_base_dispatch(f->base);
	}
	assert_int_equal(*n, want);
}

static void test_pool_answers(void **state)
{
	struct fixture *f = *state;
	struct lookup_pool *pool;
	struct got g;
	char *err = NULL;
	uint64_t id;

	memset(&g, 0, sizeof(g));
	pool = lookup_pool_new(f->base, &f->cfg, 2, &err);
	assert_non_null(pool);
	assert_true(lookup_verify(pool, "rt", "alice@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 1);
	assert_true(lookup_verify(pool, "rt", "Sales@Example.TEST", on_answer, &g) > 0);
	run_until(f, &g.n, 2);
	assert_true(lookup_verify(pool, "rt", "bob@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 3);
	assert_true(lookup_verify(pool, "nosuch", "alice@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 4);
	assert_int_equal(g.result[0], LOOKUP_FOUND);
	assert_int_equal(g.result[1], LOOKUP_FOUND);
	assert_int_equal(g.result[2], LOOKUP_MISSING);
	assert_int_equal(g.result[3], LOOKUP_CONFIG);     /* no such profile */
	/* cache: the second answer is a hit */
	assert_true(lookup_verify(pool, "local", "bob@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 5);
	assert_true(lookup_verify(pool, "local", "bob@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 6);
	assert_int_equal(g.result[4], LOOKUP_MISSING);
	assert_int_equal(g.cached[4], 0);
	assert_int_equal(g.result[5], LOOKUP_MISSING);
	assert_int_equal(g.cached[5], 1);
	/* fallback: first (realtime) says missing, local answers */
	assert_true(lookup_verify(pool, "first", "nobody@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 7);
	assert_int_equal(g.result[6], LOOKUP_MISSING);
	assert_string_equal(g.profile[6], "local");
	/* a cancelled request is never answered */
	id = lookup_verify(pool, "rt", "alice@example.test", on_unexpected, NULL);
	lookup_cancel(pool, id);
	assert_true(lookup_verify(pool, "rt", "alice@example.test", on_answer, &g) > 0);
	run_until(f, &g.n, 8);
	lookup_pool_free(&pool);
	assert_null(pool);
}

struct job {
	int worked, done, cancelled;
	int *ndone;
};

static void job_work(void *p)
{
	struct job *j = p;

	j->worked = 1;
}

static void job_done(void *p, int cancelled)
{
	struct job *j = p;

	j->done = 1;
	j->cancelled = cancelled;
	(*j->ndone)++;
}

static void test_pool_jobs(void **state)
{
	struct fixture *f = *state;
	struct lookup_pool *pool;
	struct job jobs[8];
	int ndone = 0;
	char *err = NULL;

	pool = lookup_pool_new(f->base, &f->cfg, 3, &err);
	assert_non_null(pool);
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < 8; i++) {
		jobs[i].ndone = &ndone;
		uint64_t id = lookup_pool_job(pool, job_work, job_done, &jobs[i]);
		assert_true(id > 0);
		if (i == 7)
			lookup_cancel(pool, id);
	}
	run_until(f, &ndone, 8);
	for (int i = 0; i < 7; i++) {
		assert_int_equal(jobs[i].worked, 1);
		assert_int_equal(jobs[i].cancelled, 0);
	}
	assert_int_equal(jobs[7].done, 1);
	assert_int_equal(jobs[7].cancelled, 1);
	/* jobs still queued when the pool goes away are told they were cancelled */
	ndone = 0;
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < 8; i++) {
		jobs[i].ndone = &ndone;
		(void)lookup_pool_job(pool, job_work, job_done, &jobs[i]);
	}
	lookup_pool_free(&pool);
	assert_int_equal(ndone, 8);
}

static void test_sync(void **state)
{
	struct fixture *f = *state;
	struct lookup_answer a;
	char *buf = NULL;

	assert_int_equal(lookup_verify_sync(&f->cfg, "first", "alice@example.test", &a, &buf),
	    LOOKUP_FOUND);
	assert_string_equal(a.profile, "first");
	assert_null(a.route);
	free(buf);
	assert_int_equal(lookup_verify_sync(&f->cfg, "first", "nobody@example.test", &a, &buf),
	    LOOKUP_MISSING);
	assert_string_equal(a.profile, "local");
	assert_null(a.route);
	free(buf);
	assert_int_equal(lookup_verify_sync(&f->cfg, "rt", "nobody@example.test", &a, &buf),
	    LOOKUP_MISSING);
	assert_string_equal(a.profile, "rt");
	free(buf);
	/* a profile that does not exist is a configuration error, not missing */
	assert_int_equal(lookup_verify_sync(&f->cfg, "nope", "alice@example.test", &a, &buf),
	    LOOKUP_CONFIG);
	assert_true(strlen(a.detail) > 0);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pool_answers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pool_jobs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
