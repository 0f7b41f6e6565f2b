/* test_lookup_backend: the lookup backend registry: every profile type has
 * its backend in the table, profile checks and lookups dispatch through it,
 * and the dispatcher's rules hold for any backend (a stand-in registered
 * here): connections are opened once and pooled, a pooled connection that
 * failed is retried once on a fresh one, a failed connection is closed,
 * configuration errors stay distinct from temporary errors, and a backend
 * that timed out is not asked again at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/util.h"
#include "lookup/lookup_int.h"

#define SET(field, value) assert_int_equal(util_fmt(field, sizeof(field), "%s", value), 0)

/* ---- a scripted stand-in backend ---- */

static struct {
	int opens, asks, closes;
	enum lookup_result open_res;        /* what open answers */
	enum lookup_result ask_res[4];      /* what the n-th ask answers (then the last) */
	int ask_conn_failed[4];
	unsigned ask_sleep_ms;
} fake;

static int fake_handle;

static void fake_reset(void)
{
	memset(&fake, 0, sizeof(fake));
}

static int fake_check(const struct store_verify *v, char **error_r)
{
	if (v->url[0] == '\0') {
		*error_r = xstrdup("fake needs --url");
		return -1;
	}
	return 0;
}

static enum lookup_result fake_open(struct lookup_conn *c, char **detail_r)
{
	fake.opens++;
	if (fake.open_res != LOOKUP_FOUND) {
		*detail_r = xstrdup("fake: cannot open");
		return fake.open_res;
	}
	c->handle = &fake_handle;
	return LOOKUP_FOUND;
}

static enum lookup_result fake_ask(struct lookup_conn *c, const char *address, char **route_r,
    char **detail_r, int *conn_failed_r)
{
	int n = fake.asks < 4 ? fake.asks : 3;

	(void)address;
	fake.asks++;
	if (fake.ask_sleep_ms > 0)
		usleep(fake.ask_sleep_ms * 1000);
	if (c->be->open != NULL)
		assert_ptr_equal(c->handle, &fake_handle);
	*conn_failed_r = fake.ask_conn_failed[n];
	if (fake.ask_res[n] == LOOKUP_FOUND)
		*route_r = xstrdup("10.0.0.1:25");
	else
		*detail_r = xstrdup("fake: no");
	return fake.ask_res[n];
}

static void fake_close(struct lookup_conn *c)
{
	fake.closes++;
	assert_ptr_equal(c->handle, &fake_handle);
	c->handle = NULL;
}

static const struct lookup_backend fake_backend = {
	.name = "fake",
	.check = fake_check,
	.open = fake_open,
	.ask = fake_ask,
	.close = fake_close,
};

/* connectionless, like smtp */
static const struct lookup_backend fake_oneshot = {
	.name = "oneshot",
	.ask = fake_ask,
};

static void profile(struct store_verify *v, const char *name, const char *type, int timeout)
{
	memset(v, 0, sizeof(*v));
	SET(v->name, name);
	SET(v->type, type);
	SET(v->url, "fake://x");
	SET(v->mode, "realtime");
	v->timeout = timeout;
}

static enum lookup_result ask(struct lookup_worker *w, const struct store_verify *v,
    char **route_r, char **detail_r)
{
	xfree(route_r);
	xfree(detail_r);
	return lookup_worker_backend(w, v, "alice@corp.test", route_r, detail_r);
}

/* ---- the table ---- */

static void test_table(void **state)
{
	static const char *const types[] = { "localdb", "mysql", "pgsql", "ldap", "smtp" };

	(void)state;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		const struct lookup_backend *b = lookup_backend_find(types[i]);
		assert_non_null(b);
		assert_string_equal(b->name, types[i]);
		assert_non_null(b->ask);
		/* a backend that opens a connection also closes it */
		assert_true((b->open == NULL) == (b->close == NULL));
	}
	assert_non_null(lookup_backend_find("mysql")->check);
	assert_non_null(lookup_backend_find("pgsql")->open);
	assert_null(lookup_backend_find("localdb")->open);
	assert_null(lookup_backend_find("nope"));
	assert_null(lookup_backend_find(""));
	assert_null(lookup_backend_find("LDAP"));
	assert_string_equal(lookup_result_word(LOOKUP_FOUND), "found");
	assert_string_equal(lookup_result_word(LOOKUP_MISSING), "missing");
	assert_string_equal(lookup_result_word(LOOKUP_ERROR), "error");
	assert_string_equal(lookup_result_word(LOOKUP_CONFIG), "config");
}

static void test_check_dispatch(void **state)
{
	struct store_verify v;
	char *err = NULL;

	(void)state;
	profile(&v, "f", "fake", 5);
	assert_int_equal(lookup_profile_check(&v, &err), 0);
	assert_null(err);
	v.url[0] = '\0';
	assert_int_equal(lookup_profile_check(&v, &err), -1);
	assert_string_equal(err, "fake needs --url");
	xfree(&err);
	assert_int_equal(lookup_profile_check(&v, NULL), -1);
	profile(&v, "o", "oneshot", 5);      /* no check: anything goes */
	assert_int_equal(lookup_profile_check(&v, &err), 0);
	profile(&v, "n", "nope", 5);
	assert_int_equal(lookup_profile_check(&v, &err), -1);
	assert_string_equal(err, "unknown type");
	xfree(&err);
	/* the built-in ones dispatch to their own checks */
	profile(&v, "m", "mysql", 5);
	assert_int_equal(lookup_profile_check(&v, &err), -1);
	assert_non_null(strstr(err, "mysql://"));
	xfree(&err);
	profile(&v, "l", "ldap", 5);
	SET(v.url, "ldap://127.0.0.1");
	SET(v.filter, "(mail=%m)");
	assert_int_equal(lookup_profile_check(&v, &err), -1);
	assert_non_null(strstr(err, "--base"));
	xfree(&err);
}

/* ---- the dispatcher ---- */

static void test_pooled_and_retried(void **state)
{
	struct lookup_worker w;
	struct store_verify v;
	char *route = NULL, *detail = NULL;

	(void)state;
	fake_reset();
	lookup_worker_init(&w, NULL);
	profile(&v, "pool", "fake", 5);
	/* opened once, then pooled */
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	assert_string_equal(route, "10.0.0.1:25");
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	assert_int_equal(fake.opens, 1);
	assert_int_equal(fake.asks, 2);
	/* the pooled connection went away: closed, once more on a fresh one */
	fake.asks = 0;
	fake.ask_res[0] = LOOKUP_ERROR;
	fake.ask_conn_failed[0] = 1;
	fake.ask_res[1] = LOOKUP_MISSING;
	fake.ask_res[2] = LOOKUP_MISSING;
	fake.ask_res[3] = LOOKUP_MISSING;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_MISSING);
	assert_null(route);
	assert_int_equal(fake.asks, 2);
	assert_int_equal(fake.opens, 2);
	assert_int_equal(fake.closes, 1);
	/* a fresh connection that fails is not tried again */
	lookup_worker_free(&w);
	assert_int_equal(fake.closes, 2);     /* the worker closes what it holds */
	fake_reset();
	lookup_worker_init(&w, NULL);
	fake.ask_res[0] = fake.ask_res[1] = LOOKUP_ERROR;
	fake.ask_conn_failed[0] = fake.ask_conn_failed[1] = 1;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_ERROR);
	assert_string_equal(detail, "fake: no");
	assert_null(route);
	assert_int_equal(fake.asks, 1);
	assert_int_equal(fake.closes, 1);
	/* changed settings: a new connection */
	fake.ask_res[0] = fake.ask_res[1] = fake.ask_res[2] = fake.ask_res[3] = LOOKUP_FOUND;
	fake.asks = 0;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	SET(v.url, "fake://y");
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	assert_int_equal(fake.opens, 3);
	assert_int_equal(fake.closes, 2);
	lookup_worker_free(&w);
	assert_int_equal(fake.closes, 3);
	xfree(&route);
	xfree(&detail);
}

static void test_config_apart_from_error(void **state)
{
	struct lookup_worker w;
	struct store_verify v;
	char *route = NULL, *detail = NULL;

	(void)state;
	fake_reset();
	lookup_worker_init(&w, NULL);
	profile(&v, "cfg", "fake", 5);
	/* the server refuses the query: config, connection dropped, no retry */
	fake.ask_res[0] = fake.ask_res[1] = LOOKUP_CONFIG;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_CONFIG);
	assert_int_equal(fake.asks, 1);
	assert_int_equal(fake.closes, 1);
	assert_non_null(detail);
	/* even on a pooled connection that failed */
	fake_reset();
	fake.ask_res[0] = LOOKUP_FOUND;
	fake.ask_res[1] = fake.ask_res[2] = fake.ask_res[3] = LOOKUP_CONFIG;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_CONFIG);
	assert_int_equal(fake.asks, 2);
	/* open says the credentials are wrong: config, never asked */
	fake_reset();
	fake.open_res = LOOKUP_CONFIG;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_CONFIG);
	assert_string_equal(detail, "fake: cannot open");
	assert_int_equal(fake.asks, 0);
	/* open cannot reach the server: temporary */
	fake.open_res = LOOKUP_ERROR;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_ERROR);
	/* a type without a backend */
	profile(&v, "gone", "nope", 5);
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_CONFIG);
	assert_non_null(detail);
	lookup_worker_free(&w);
	xfree(&route);
	xfree(&detail);
}

static void test_connectionless(void **state)
{
	struct lookup_worker w;
	struct store_verify v;
	char *route = NULL, *detail = NULL;

	(void)state;
	fake_reset();
	lookup_worker_init(&w, NULL);
	profile(&v, "one", "oneshot", 5);
	fake.ask_res[0] = fake.ask_res[1] = LOOKUP_ERROR;
	fake.ask_conn_failed[0] = fake.ask_conn_failed[1] = 1;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_ERROR);
	assert_int_equal(fake.asks, 1);       /* nothing pooled: no retry */
	assert_int_equal(fake.opens + fake.closes, 0);
	fake.ask_res[1] = LOOKUP_MISSING;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_MISSING);
	lookup_worker_free(&w);
	xfree(&route);
	xfree(&detail);
}

static void test_timed_out_is_held(void **state)
{
	struct lookup_worker w;
	struct store_verify v;
	char *route = NULL, *detail = NULL;

	(void)state;
	fake_reset();
	lookup_worker_init(&w, NULL);
	profile(&v, "slow", "fake", 1);
	fake.ask_res[0] = LOOKUP_ERROR;
	fake.ask_res[1] = fake.ask_res[2] = fake.ask_res[3] = LOOKUP_FOUND;
	fake.ask_sleep_ms = 950;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_ERROR);
	fake.ask_sleep_ms = 0;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_ERROR);
	assert_non_null(strstr(detail, "not asked again yet"));
	assert_int_equal(fake.asks, 1);
	/* another profile is not held */
	profile(&v, "quick", "fake", 1);
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	/* a configuration error that took long is not a timeout */
	fake_reset();
	profile(&v, "slowcfg", "fake", 1);
	fake.ask_res[0] = LOOKUP_CONFIG;
	fake.ask_res[1] = fake.ask_res[2] = fake.ask_res[3] = LOOKUP_FOUND;
	fake.ask_sleep_ms = 950;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_CONFIG);
	fake.ask_sleep_ms = 0;
	assert_int_equal(ask(&w, &v, &route, &detail), LOOKUP_FOUND);
	lookup_worker_free(&w);
	xfree(&route);
	xfree(&detail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_check_dispatch),
		cmocka_unit_test(test_pooled_and_retried),
		cmocka_unit_test(test_config_apart_from_error),
		cmocka_unit_test(test_connectionless),
		cmocka_unit_test(test_timed_out_is_held),
	};

	assert_int_equal(lookup_backend_register(&fake_backend), 0);
	assert_int_equal(lookup_backend_register(&fake_oneshot), 0);
	assert_int_equal(lookup_backend_register(&fake_oneshot), 0);   /* again: no new slot */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
