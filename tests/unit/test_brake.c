/* Unit tests for the brute-force brake table (src/auth/brake.c): the delay
 * schedule, per-address and per-account limits, in-flight attempts, what a
 * success clears, ageing, IPv6 /64 keys, eviction, status, and the table
 * shared with (and surviving the death of) another process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "auth/brake.h"

static const struct brake_params P = { .limit = 10, .window_s = 900, .max_delay_s = 15 };

/* One whole attempt; returns the verdict and the ticket's delay. */
static enum brake_verdict attempt(struct brake *b, const struct brake_params *p, const char *ip,
    const char *user, enum brake_outcome o, int64_t now, int *delay_r)
{
	struct brake_ticket t;
	enum brake_verdict v = brake_begin(b, p, ip, user, now, &t);

	if (delay_r != NULL)
		*delay_r = t.delay_ms;
	if (v == BRAKE_GO)
		brake_end(b, &t, o, now);
	else
		assert_int_equal(t.active, 0);
	return v;
}

static void test_delay_schedule(void **state)
{
	struct brake_params p = P;

	(void)state;
	assert_int_equal(brake_delay_ms(&p, 0), 0);
	assert_int_equal(brake_delay_ms(&p, 1), 1000);
	assert_int_equal(brake_delay_ms(&p, 2), 2000);
	assert_int_equal(brake_delay_ms(&p, 3), 4000);
	assert_int_equal(brake_delay_ms(&p, 4), 8000);
	assert_int_equal(brake_delay_ms(&p, 5), 15000);
	assert_int_equal(brake_delay_ms(&p, 1000), 15000);
	assert_int_equal(brake_delay_ms(&p, -3), 0);
	p.max_delay_s = 0;
	assert_int_equal(brake_delay_ms(&p, 7), 0);
	p.max_delay_s = 3;
	assert_int_equal(brake_delay_ms(&p, 2), 2000);
	assert_int_equal(brake_delay_ms(&p, 3), 3000);
}

static void test_ip_limit_across_accounts(void **state)
{
	struct brake *b = brake_create(0);
	char user[64];
	int delay;

	(void)state;
	assert_non_null(b);
	for (int i = 0; i < 10; i++) {
		snprintf(user, sizeof(user), "u%d@example.test", i);
		assert_int_equal(attempt(b, &P, "192.0.2.7", user, BRAKE_FAILURE, 100, &delay), BRAKE_GO);
		assert_int_equal(delay, brake_delay_ms(&P, i));
	}
	/* the 11th is refused whatever the account, even the right password */
	assert_int_equal(attempt(b, &P, "192.0.2.7", "new@example.test", BRAKE_SUCCESS, 101, NULL),
	    BRAKE_REFUSE);
	/* another address is not braked */
	assert_int_equal(attempt(b, &P, "192.0.2.8", "new@example.test", BRAKE_SUCCESS, 101, &delay),
	    BRAKE_GO);
	assert_int_equal(delay, 0);
	brake_free(&b);
	assert_null(b);
	brake_free(&b);
}

static void test_account_limit_across_ips(void **state)
{
	struct brake *b = brake_create(0);
	char ip[32];

	(void)state;
	for (int i = 0; i < 10; i++) {
		snprintf(ip, sizeof(ip), "198.51.100.%d", i + 1);
		assert_int_equal(attempt(b, &P, ip, i % 2 ? "Bob@Example.TEST" : "bob@example.test",
		    BRAKE_FAILURE, 50, NULL), BRAKE_GO);
	}
	assert_int_equal(attempt(b, &P, "203.0.113.1", "BOB@example.test", BRAKE_FAILURE, 51, NULL),
	    BRAKE_REFUSE);
	assert_int_equal(attempt(b, &P, "203.0.113.1", "alice@example.test", BRAKE_SUCCESS, 51, NULL),
	    BRAKE_GO);
	brake_free(&b);
}

/* "fail, fail, log in as myself" must not guess forever. */
static void test_success_keeps_address_count(void **state)
{
	struct brake *b = brake_create(0);
	enum brake_verdict v = BRAKE_GO;
	int guesses = 0;

	(void)state;
	for (int round = 0; round < 100 && v == BRAKE_GO; round++) {
		v = attempt(b, &P, "192.0.2.9", "victim@example.test", BRAKE_FAILURE, 10, NULL);
		if (v == BRAKE_GO)
			guesses++;
		if (v == BRAKE_GO)
			v = attempt(b, &P, "192.0.2.9", "me@example.test", BRAKE_SUCCESS, 10, NULL);
	}
	assert_int_equal(v, BRAKE_REFUSE);
	assert_int_equal(guesses, 10);
	brake_free(&b);
}

/* A success clears the account's own count (not the address's). */
static void test_success_clears_own_account(void **state)
{
	struct brake *b = brake_create(0);
	int delay;

	(void)state;
	for (int i = 0; i < 3; i++)
		attempt(b, &P, "198.51.100.1", "carol@example.test", BRAKE_FAILURE, 10, NULL);
	/* carol from her own address: braked by her account's count */
	assert_int_equal(attempt(b, &P, "203.0.113.5", "carol@example.test", BRAKE_SUCCESS, 11, &delay),
	    BRAKE_GO);
	assert_int_equal(delay, brake_delay_ms(&P, 3));
	assert_int_equal(attempt(b, &P, "203.0.113.5", "carol@example.test", BRAKE_SUCCESS, 12, &delay),
	    BRAKE_GO);
	assert_int_equal(delay, 0);
	/* the attacking address still is braked */
	attempt(b, &P, "198.51.100.1", "dave@example.test", BRAKE_SUCCESS, 12, &delay);
	assert_int_equal(delay, brake_delay_ms(&P, 3));
	brake_free(&b);
}

/* Attempts in flight count against the limit, so parallel connections
 * cannot all get their check in; a neutral end gives the place back. */
static void test_pending_counts(void **state)
{
	struct brake *b = brake_create(0);
	struct brake_ticket t[10], extra;

	(void)state;
	for (int i = 0; i < 10; i++) {
		assert_int_equal(brake_begin(b, &P, "192.0.2.1", "x@example.test", 5, &t[i]), BRAKE_GO);
		assert_int_equal(t[i].delay_ms, 0);         /* nothing failed yet */
	}
	assert_int_equal(brake_begin(b, &P, "192.0.2.1", "y@example.test", 5, &extra), BRAKE_REFUSE);
	assert_int_equal(brake_end(b, &t[0], BRAKE_NEUTRAL, 5), 0);
	assert_int_equal(brake_end(b, &t[0], BRAKE_FAILURE, 5), 0);   /* already ended: nothing */
	assert_int_equal(brake_begin(b, &P, "192.0.2.1", "y@example.test", 5, &extra), BRAKE_GO);
	assert_int_equal(brake_end(b, &extra, BRAKE_FAILURE, 5), 1);
	for (int i = 1; i < 10; i++)
		brake_end(b, &t[i], BRAKE_FAILURE, 5);
	assert_int_equal(brake_begin(b, &P, "192.0.2.1", "z@example.test", 5, &extra), BRAKE_REFUSE);
	brake_free(&b);
}

static void test_window_expiry(void **state)
{
	struct brake *b = brake_create(0);
	struct brake_params p = P;
	int delay;

	(void)state;
	p.window_s = 60;
	for (int i = 0; i < 10; i++)
		attempt(b, &p, "192.0.2.3", "a@example.test", BRAKE_FAILURE, 1000 + i, NULL);
	assert_int_equal(attempt(b, &p, "192.0.2.3", "b@example.test", BRAKE_FAILURE, 1060, NULL),
	    BRAKE_REFUSE);
	/* refused attempts do not extend the window: 60 s after the last failure */
	assert_int_equal(attempt(b, &p, "192.0.2.3", "b@example.test", BRAKE_FAILURE, 1070, &delay),
	    BRAKE_GO);
	assert_int_equal(delay, 0);
	brake_free(&b);
}

static void test_ipv6_by_64(void **state)
{
	struct brake *b = brake_create(0);
	char ip[64];
	int delay;

	(void)state;
	for (int i = 0; i < 10; i++) {
		snprintf(ip, sizeof(ip), "2001:db8:1:2::%x", i + 1);
		attempt(b, &P, ip, "", BRAKE_FAILURE, 1, NULL);
	}
	assert_int_equal(attempt(b, &P, "2001:db8:1:2:ffff::1", "", BRAKE_FAILURE, 1, NULL), BRAKE_REFUSE);
	assert_int_equal(attempt(b, &P, "2001:db8:1:3::1", "", BRAKE_FAILURE, 1, &delay), BRAKE_GO);
	assert_int_equal(delay, 0);
	/* IPv4, also v4-mapped, is the whole address */
	attempt(b, &P, "192.0.2.10", "", BRAKE_FAILURE, 1, NULL);
	attempt(b, &P, "::ffff:192.0.2.10", "", BRAKE_SUCCESS, 1, &delay);
	assert_int_equal(delay, 1000);
	attempt(b, &P, "192.0.2.11", "", BRAKE_SUCCESS, 1, &delay);
	assert_int_equal(delay, 0);
	brake_free(&b);
}

/* A full table evicts the entry idle longest; a ticket whose slot was
 * taken over meanwhile changes nothing when it ends. */
static void test_eviction(void **state)
{
	struct brake *b = brake_create(4);
	struct brake_ticket t;
	struct brake_stats st;
	int delay;

	(void)state;
	assert_int_equal(brake_begin(b, &P, "192.0.2.1", "", 10, &t), BRAKE_GO);
	brake_end(b, &t, BRAKE_FAILURE, 10);
	attempt(b, &P, "192.0.2.1", "", BRAKE_FAILURE, 11, NULL);
	for (int i = 2; i <= 5; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "192.0.2.%d", i);
		attempt(b, &P, ip, "", BRAKE_FAILURE, 20 + i, NULL);
	}
	/* 192.0.2.1 was the oldest and is gone */
	attempt(b, &P, "192.0.2.1", "", BRAKE_SUCCESS, 30, &delay);
	assert_int_equal(delay, 0);
	assert_int_equal(brake_stats(b, &P, 30, &st), 0);
	assert_true(st.ips <= 4);
	/* in-flight entries are evicted last */
	assert_int_equal(brake_begin(b, &P, "192.0.2.100", "", 40, &t), BRAKE_GO);
	for (int i = 0; i < 8; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "198.51.100.%d", i);
		attempt(b, &P, ip, "", BRAKE_FAILURE, 50, NULL);
	}
	assert_int_equal(brake_end(b, &t, BRAKE_FAILURE, 60), 1);
	/* a stale ticket: its slot aged out and was taken by another key */
	assert_int_equal(brake_begin(b, &P, "192.0.2.101", "", 100, &t), BRAKE_GO);
	for (int i = 0; i < 4; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "203.0.113.%d", i);
		attempt(b, &P, ip, "", BRAKE_FAILURE, 1100, NULL);
	}
	assert_int_equal(brake_end(b, &t, BRAKE_FAILURE, 1100), 0);
	assert_int_equal(brake_stats(b, &P, 1100, &st), 0);
	assert_int_equal(st.ips, 4);
	for (int i = 0; i < st.n_top; i++)
		assert_int_equal(st.top[i].failures, 1);
	brake_free(&b);
}

static void test_stats(void **state)
{
	struct brake *b = brake_create(0);
	struct brake_stats st;

	(void)state;
	assert_int_equal(brake_stats(NULL, &P, 0, &st), 0);
	assert_int_equal(st.ips, 0);
	for (int i = 0; i < 10; i++)
		attempt(b, &P, "192.0.2.200", "bob@example.test", BRAKE_FAILURE, 100, NULL);
	for (int i = 0; i < 2; i++)
		attempt(b, &P, "2001:db8::5", "alice@example.test", BRAKE_FAILURE, 100, NULL);
	attempt(b, &P, "192.0.2.201", "carol@example.test", BRAKE_SUCCESS, 100, NULL);
	assert_int_equal(brake_stats(b, &P, 105, &st), 0);
	assert_int_equal(st.ips, 2);
	assert_int_equal(st.accounts, 2);
	assert_int_equal(st.ips_blocked, 1);
	assert_int_equal(st.accounts_blocked, 1);
	assert_int_equal(st.n_top, 4);
	assert_int_equal(st.top[0].failures, 10);
	assert_int_equal(st.top[0].blocked, 1);
	assert_int_equal(st.top[0].idle_s, 5);
	assert_string_equal(st.top[st.top[0].is_account ? 1 : 0].name, "192.0.2.200");
	assert_string_equal(st.top[st.top[0].is_account ? 0 : 1].name, "bob@example.test");
	assert_int_equal(st.top[2].failures, 2);
	assert_string_equal(st.top[st.top[2].is_account ? 3 : 2].name, "2001:db8::/64");
	/* expired entries are not shown */
	assert_int_equal(brake_stats(b, &P, 100 + 901, &st), 0);
	assert_int_equal(st.ips + st.accounts + st.n_top, 0);
	brake_free(&b);
}

/* More than BRAKE_TOP keys: the top list keeps the worst ones. */
static void test_stats_top_bounded(void **state)
{
	struct brake *b = brake_create(0);
	struct brake_stats st;

	(void)state;
	for (int i = 0; i < 30; i++) {
		char ip[32];
		snprintf(ip, sizeof(ip), "10.0.0.%d", i);
		for (int k = 0; k <= i % 7; k++)
			attempt(b, &P, ip, "", BRAKE_FAILURE, 1, NULL);
	}
	assert_int_equal(brake_stats(b, &P, 1, &st), 0);
	assert_int_equal(st.ips, 30);
	assert_int_equal(st.n_top, BRAKE_TOP);
	assert_int_equal(st.top[0].failures, 7);
	for (int i = 1; i < st.n_top; i++)
		assert_true(st.top[i - 1].failures >= st.top[i].failures);
	brake_free(&b);
}

/* The table is shared with forked processes, and a process that dies
 * holding the lock does not wedge it. The lock is the first member of the
 * mapping, which is the first member of struct brake (white box). */
static void test_shared_and_robust(void **state)
{
	struct brake *b = brake_create(0);
	int status, delay;
	pid_t pid;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (int i = 0; i < 4; i++)
			attempt(b, &P, "192.0.2.77", "eve@example.test", BRAKE_FAILURE, 1, NULL);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(attempt(b, &P, "192.0.2.77", "x@example.test", BRAKE_FAILURE, 2, &delay), BRAKE_GO);
	assert_int_equal(delay, brake_delay_ms(&P, 4));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		pthread_mutex_t *mu = *(pthread_mutex_t **)(void *)b;
		pthread_mutex_lock(mu);
		_exit(0);              /* dies holding the lock */
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(attempt(b, &P, "192.0.2.77", "x@example.test", BRAKE_FAILURE, 3, &delay), BRAKE_GO);
	assert_int_equal(delay, brake_delay_ms(&P, 5));
	assert_int_equal(attempt(b, &P, "192.0.2.78", "", BRAKE_FAILURE, 3, &delay), BRAKE_GO);
	brake_free(&b);
}

static void test_null_table(void **state)
{
	struct brake_ticket t;

	(void)state;
	assert_int_equal(brake_begin(NULL, &P, "192.0.2.1", "a", 1, &t), BRAKE_GO);
	assert_int_equal(t.delay_ms, 0);
	assert_int_equal(brake_end(NULL, &t, BRAKE_FAILURE, 1), 0);
	/* odd input is still a key */
	{
		struct brake *b = brake_create(0);
		char longname[600];
		memset(longname, 'A', sizeof(longname) - 1);
		longname[sizeof(longname) - 1] = '\0';
		assert_int_equal(attempt(b, &P, "not-an-ip", longname, BRAKE_FAILURE, 1, NULL), BRAKE_GO);
		assert_int_equal(attempt(b, &P, "", "a\r\nb", BRAKE_FAILURE, 1, NULL), BRAKE_GO);
		assert_int_equal(attempt(b, &P, NULL, NULL, BRAKE_FAILURE, 1, NULL), BRAKE_GO);
		brake_free(&b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_delay_schedule),
		cmocka_unit_test(test_ip_limit_across_accounts),
		cmocka_unit_test(test_account_limit_across_ips),
		cmocka_unit_test(test_success_keeps_address_count),
		cmocka_unit_test(test_success_clears_own_account),
		cmocka_unit_test(test_pending_counts),
		cmocka_unit_test(test_window_expiry),
		cmocka_unit_test(test_ipv6_by_64),
		cmocka_unit_test(test_eviction),
		cmocka_unit_test(test_stats),
		cmocka_unit_test(test_stats_top_bounded),
		cmocka_unit_test(test_shared_and_robust),
		cmocka_unit_test(test_null_table),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
