/* Unit tests for the relay client's wire form of a stored body (LF -> CRLF,
 * dot-stuffing, exactly one CRLF.CRLF at the end) and its route parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "deliver/relay.h"

/* Converts in, fed in pieces of chunk bytes, plus the end. */
static char *wire(const char *in, size_t n, size_t chunk, size_t *len_r)
{
	struct relay_stuff st = { 1 };
	char *out = malloc(2 * n + 8);
	size_t o = 0;

	assert_non_null(out);
	for (size_t off = 0; off < n; off += chunk)
		o += relay_stuff(&st, in + off, n - off < chunk ? n - off : chunk, out + o);
	o += relay_stuff_end(&st, out + o);
	out[o] = '\0';
	*len_r = o;
	return out;
}

static void check(const char *in, const char *expect)
{
	for (size_t chunk = 1; chunk <= strlen(in) + 1; chunk++) {
		size_t len;
		char *w = wire(in, strlen(in), chunk, &len);
		assert_int_equal(len, strlen(expect));
		assert_string_equal(w, expect);
		free(w);
	}
}

static void test_plain(void **state)
{
	(void)state;
	check("a\nb\n", "a\r\nb\r\n.\r\n");
	check("", ".\r\n");
}

static void test_dots(void **state)
{
	(void)state;
	check(".\n", "..\r\n.\r\n");
	check("a\n.\nb\n", "a\r\n..\r\nb\r\n.\r\n");
	check("..x\n", "...x\r\n.\r\n");
	check("a.b\n.c.\n", "a.b\r\n..c.\r\n.\r\n");
}

static void test_no_final_newline(void **state)
{
	(void)state;
	check("abc", "abc\r\n.\r\n");
	check("a\n.", "a\r\n..\r\n.\r\n");
}

static void test_cr_dropped(void **state)
{
	(void)state;
	/* stored bodies have no CR; should one appear it must not make a bare CR */
	check("a\r\n.\r\nb\rc\n", "a\r\n..\r\nbc\r\n.\r\n");
}

static void test_one_end_of_data(void **state)
{
	/* whatever the body, the output has exactly one CRLF.CRLF, at the end */
	static const char *bodies[] = { "\n.\n", ".\n.\n", "x\n\n.\n\n", "\n", ".", "..\n..", "\n\n\n" };

	(void)state;
	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		size_t len;
		char *w = wire(bodies[i], strlen(bodies[i]), 3, &len);
		char *p = strstr(w, "\r\n.\r\n");
		if (strncmp(w, ".\r\n", 3) == 0)
			assert_int_equal(len, 3);
		else {
			assert_non_null(p);
			assert_ptr_equal(p, w + len - 5);
		}
		free(w);
	}
}

static void test_route_parse(void **state)
{
	char host[256];
	int port, mx;

	(void)state;
	assert_int_equal(relay_route_parse("192.0.2.1", 25, host, sizeof(host), &port, &mx), 0);
	assert_string_equal(host, "192.0.2.1");
	assert_int_equal(port, 25);
	assert_int_equal(mx, 0);
	assert_int_equal(relay_route_parse("mail.example.com:2525", 25, host, sizeof(host), &port, &mx), 0);
	assert_string_equal(host, "mail.example.com");
	assert_int_equal(port, 2525);
	assert_int_equal(relay_route_parse("[::1]:2526", 25, host, sizeof(host), &port, &mx), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 2526);
	assert_int_equal(relay_route_parse("[2001:db8::1]", 25, host, sizeof(host), &port, &mx), 0);
	assert_string_equal(host, "2001:db8::1");
	assert_int_equal(port, 25);
	assert_int_equal(relay_route_parse("mx:example.org", 2500, host, sizeof(host), &port, &mx), 0);
	assert_string_equal(host, "example.org");
	assert_int_equal(mx, 1);
	assert_int_equal(relay_route_parse("host:0", 25, host, sizeof(host), &port, &mx), -1);
	assert_int_equal(relay_route_parse("host:70000", 25, host, sizeof(host), &port, &mx), -1);
	assert_int_equal(relay_route_parse("[::1", 25, host, sizeof(host), &port, &mx), -1);
	assert_int_equal(relay_route_parse("[::1]x", 25, host, sizeof(host), &port, &mx), -1);
	assert_int_equal(relay_route_parse(":25", 25, host, sizeof(host), &port, &mx), -1);
	assert_int_equal(relay_route_parse("mx:", 25, host, sizeof(host), &port, &mx), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_dots),
		cmocka_unit_test(test_no_final_newline),
		cmocka_unit_test(test_cr_dropped),
		cmocka_unit_test(test_one_end_of_data),
		cmocka_unit_test(test_route_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
