/* Unit tests for src/filter/filter_util.c: DNSBL query names (RFC 5782
 * IPv4 and IPv6), greylist networks, HELO syntax, list matching of
 * addresses and client addresses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include "filter/filter_int.h"
#include "unit_store.h"

static void test_dnsbl_name(void **state)
{
	struct sockaddr_storage a = unit_sa("192.0.2.99"), b = unit_sa("2001:db8:1:2:3:4:567:89ab");
	struct sockaddr_storage m = unit_sa("::ffff:192.0.2.99");
	char out[300];

	(void)state;
	assert_int_equal(filter_dnsbl_name((struct sockaddr *)&a, "bl.example", out, sizeof(out)), 0);
	assert_string_equal(out, "99.2.0.192.bl.example");
	/* RFC 5782 section 2.4's example */
	assert_int_equal(filter_dnsbl_name((struct sockaddr *)&b, "bl.example", out, sizeof(out)), 0);
	assert_string_equal(out, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example");
	/* an IPv4-mapped client is asked as IPv4 */
	assert_int_equal(filter_dnsbl_name((struct sockaddr *)&m, "bl.example", out, sizeof(out)), 0);
	assert_string_equal(out, "99.2.0.192.bl.example");
	assert_int_equal(filter_dnsbl_name((struct sockaddr *)&b, "bl.example", out, 40), -1);
}

static void test_grey_net(void **state)
{
	struct sockaddr_storage a = unit_sa("198.51.100.77"), b = unit_sa("2001:db8:aa:bb:1:2:3:4");
	char out[64];

	(void)state;
	assert_int_equal(filter_grey_net((struct sockaddr *)&a, out, sizeof(out)), 0);
	assert_string_equal(out, "198.51.100.0/24");
	assert_int_equal(filter_grey_net((struct sockaddr *)&b, out, sizeof(out)), 0);
	assert_string_equal(out, "2001:db8:aa:bb::/64");
}

static void test_helo_syntax(void **state)
{
	(void)state;
	assert_true(filter_helo_syntax("mail.example.com"));
	assert_true(filter_helo_syntax("mail.example.com."));
	assert_true(filter_helo_syntax("[192.0.2.1]"));
	assert_true(filter_helo_syntax("[IPv6:2001:db8::1]"));
	assert_false(filter_helo_syntax("localhost"));
	assert_false(filter_helo_syntax(""));
	assert_false(filter_helo_syntax("bad..example"));
	assert_false(filter_helo_syntax("-bad.example"));
	assert_false(filter_helo_syntax("bad-.example"));
	assert_false(filter_helo_syntax("sp ace.example"));
	assert_false(filter_helo_syntax("[192.0.2.300]"));
	assert_false(filter_helo_syntax("[IPv6:zz::1]"));
	assert_false(filter_helo_syntax("[192.0.2.1"));
	{
		char big[300];
		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		big[10] = '.';
		assert_false(filter_helo_syntax(big));       /* labels of 64+ */
	}
}

static void test_addr_match(void **state)
{
	(void)state;
	assert_true(filter_addr_match("bad@spam.example", "Bad@SPAM.example"));
	assert_false(filter_addr_match("bad@spam.example", "good@spam.example"));
	assert_true(filter_addr_match("@spam.example", "x@spam.example"));
	assert_true(filter_addr_match("@spam.example", "x@mx.spam.example"));
	assert_false(filter_addr_match("@spam.example", "x@notspam.example"));
	assert_false(filter_addr_match("@spam.example", "x@spam.example.org"));
	assert_false(filter_addr_match("@spam.example", ""));
	assert_false(filter_addr_match("@", "x@y"));
}

static void test_ip_match(void **state)
{
	struct sockaddr_storage a = unit_sa("203.0.113.9"), b = unit_sa("2001:db8::5");
	struct sockaddr_storage m = unit_sa("::ffff:203.0.113.9");

	(void)state;
	assert_int_equal(filter_ip_match("203.0.113.9", (struct sockaddr *)&a), 1);
	assert_int_equal(filter_ip_match("203.0.113.0/24", (struct sockaddr *)&a), 1);
	assert_int_equal(filter_ip_match("203.0.113.0/24", (struct sockaddr *)&m), 1);
	assert_int_equal(filter_ip_match("203.0.112.0/24", (struct sockaddr *)&a), 0);
	assert_int_equal(filter_ip_match("203.0.113.8/31", (struct sockaddr *)&a), 1);
	assert_int_equal(filter_ip_match("0.0.0.0/0", (struct sockaddr *)&a), 1);
	assert_int_equal(filter_ip_match("2001:db8::/32", (struct sockaddr *)&b), 1);
	assert_int_equal(filter_ip_match("2001:db9::/32", (struct sockaddr *)&b), 0);
	assert_int_equal(filter_ip_match("2001:db8::/32", (struct sockaddr *)&a), 0);
	assert_int_equal(filter_ip_match("203.0.113.0/33", (struct sockaddr *)&a), -1);
	assert_int_equal(filter_ip_match("nonsense", (struct sockaddr *)&a), -1);
	assert_int_equal(filter_sa_equal((struct sockaddr *)&a, (struct sockaddr *)&m), 1);
	assert_int_equal(filter_sa_equal((struct sockaddr *)&a, (struct sockaddr *)&b), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dnsbl_name),
		cmocka_unit_test(test_grey_net),
		cmocka_unit_test(test_helo_syntax),
		cmocka_unit_test(test_addr_match),
		cmocka_unit_test(test_ip_match),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
