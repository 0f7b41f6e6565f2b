/* Unit tests for the queue manager's retry schedule (qmgr_retry_delay). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "queue/qmgr.h"

static void test_schedule_then_last_repeats(void **state)
{
	struct kale_config cfg;
	static const int sched[] = { 60, 300, 900, 1800, 3600, 7200, 14400 };

	(void)state;
	memset(&cfg, 0, sizeof(cfg));
	memcpy(cfg.retry, sched, sizeof(sched));
	cfg.n_retry = 7;
	assert_int_equal(qmgr_retry_delay(&cfg, 1), 60);
	assert_int_equal(qmgr_retry_delay(&cfg, 2), 300);
	assert_int_equal(qmgr_retry_delay(&cfg, 7), 14400);
	assert_int_equal(qmgr_retry_delay(&cfg, 8), 14400);
	assert_int_equal(qmgr_retry_delay(&cfg, 1000), 14400);
}

static void test_bad_attempts_and_empty(void **state)
{
	struct kale_config cfg;

	(void)state;
	memset(&cfg, 0, sizeof(cfg));
	assert_int_equal(qmgr_retry_delay(&cfg, 1), 300);
	cfg.retry[0] = 1;
	cfg.retry[1] = 2;
	cfg.n_retry = 2;
	assert_int_equal(qmgr_retry_delay(&cfg, 0), 1);
	assert_int_equal(qmgr_retry_delay(&cfg, -5), 1);
	assert_int_equal(qmgr_retry_delay(&cfg, 2), 2);
	assert_int_equal(qmgr_retry_delay(&cfg, 3), 2);
}

static void test_conf_durations(void **state)
{
	(void)state;
	assert_int_equal(conf_parse_duration("1s"), 1);
	assert_int_equal(conf_parse_duration("5m"), 300);
	assert_int_equal(conf_parse_duration("4h"), 14400);
	assert_int_equal(conf_parse_duration("5d"), 432000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_schedule_then_last_repeats),
		cmocka_unit_test(test_bad_attempts_and_empty),
		cmocka_unit_test(test_conf_durations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
