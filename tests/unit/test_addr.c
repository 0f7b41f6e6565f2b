/* Unit tests for src/mail/addr.c: the RFC 5322 address-list parser that the
 * submission From:/Sender: check relies on. Every reported bypass form, the
 * honest forms, the obsolete syntax, UTF-8, and the limits (length, count,
 * comment depth, linear time on hostile input). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "lib/util.h"
#include "mail/addr.h"

/* Parses s and checks the result is exactly the n addresses given. */
static void list_is(const char *s, size_t n, ...)
{
	struct addr_list l;
	const char *err = NULL;
	va_list ap;

	if (addr_parse_list(s, strlen(s), &l, &err) < 0)
		fail_msg("parse of [%s] failed: %s", s, err);
	if (l.n != n) {
		for (size_t i = 0; i < l.n; i++)
			print_message("  got [%s]\n", l.addr[i]);
		fail_msg("[%s]: %zu addresses, expected %zu", s, l.n, n);
	}
	va_start(ap, n);
	for (size_t i = 0; i < n; i++) {
		const char *want = va_arg(ap, const char *);
		if (strcmp(l.addr[i], want) != 0)
			fail_msg("[%s]: address %zu is [%s], expected [%s]", s, i, l.addr[i], want);
	}
	va_end(ap);
	addr_list_free(&l);
	assert_null(l.addr);
	assert_int_equal(l.n, 0);
}

static void bad(const char *s)
{
	struct addr_list l;
	const char *err = NULL;

	if (addr_parse_list(s, strlen(s), &l, &err) == 0) {
		for (size_t i = 0; i < l.n; i++)
			print_message("  got [%s]\n", l.addr[i]);
		fail_msg("[%s] parsed, expected an error", s);
	}
	assert_non_null(err);
	assert_int_equal(l.n, 0);
	assert_null(l.addr);
}

static void test_simple_forms(void **state)
{
	(void)state;
	list_is("me@x", 1, "me@x");
	list_is(" me@x ", 1, "me@x");
	list_is("<me@x>", 1, "me@x");
	list_is("\"Me\" <me@x>", 1, "me@x");
	list_is("Me Myself <me@x>", 1, "me@x");
	list_is("me@x (Me)", 1, "me@x");
	list_is("  \"Bob B.\" <BOB@Example.TEST>", 1, "BOB@Example.TEST");
	list_is("John Q. Public <jqp@example.com>", 1, "jqp@example.com");   /* obs-phrase */
	list_is("a@b, c@d", 2, "a@b", "c@d");
	list_is("first.last+tag@sub.example.org", 1, "first.last+tag@sub.example.org");
	list_is("!#$%&'*+-/=?^_`{|}~@x", 1, "!#$%&'*+-/=?^_`{|}~@x");
}

/* The forms that got past the old From: check. */
static void test_bypass_forms(void **state)
{
	(void)state;
	/* two mailboxes: the victim comes first */
	list_is("<victim@x>, \"Me\" <me@x>", 2, "victim@x", "me@x");
	list_is(" <victim@x>, \"Me\" <me@x>", 2, "victim@x", "me@x");
	/* an angle address in a comment is no address */
	list_is("victim@x (<me@x>)", 1, "victim@x");
	list_is("victim@x (\"Me\" <me@x>)", 1, "victim@x");
	list_is("(<me@x>) victim@x", 1, "victim@x");
	/* the display name holding an address */
	list_is("\"me@x\" <victim@x>", 1, "victim@x");
	list_is("\"<me@x>\" <victim@x>", 1, "victim@x");
	/* a quoted comma does not split */
	list_is("\"Me, <me@x>\" <victim@x>", 1, "victim@x");
	/* groups: every member counts */
	list_is("friends: me@x, victim@x;", 2, "me@x", "victim@x");
	list_is("me@x, g: victim@x;", 2, "me@x", "victim@x");
}

static void test_comments(void **state)
{
	(void)state;
	list_is("(c) me (c) @ (c) x (c)", 1, "me@x");
	list_is("me@x (a (nested (comment)) with \\) and \\( escaped)", 1, "me@x");
	list_is("me@x (\\(<victim@y>)", 1, "me@x");
	list_is("\"Me\" (comment) <(c)me(c)@(c)x(c)> (trailing)", 1, "me@x");
	bad("me@x (unterminated");
	bad("me@x (a (b)");
	bad("me@x )");
	bad("me@x (\\");
}

static void test_quoted_local_parts(void **state)
{
	(void)state;
	list_is("\"me\"@x", 1, "me@x");                  /* quotes not needed: removed */
	list_is("\"a\".\"b\"@x", 1, "a.b@x");            /* obs-local-part */
	list_is("\"a b\"@x", 1, "\"a b\"@x");
	list_is("\"a\\\"b\"@x", 1, "\"a\\\"b\"@x");
	list_is("\"a\\\\b\"@x", 1, "\"a\\\\b\"@x");
	list_is("\"\\m\\e\"@x", 1, "me@x");              /* quoted-pairs undone */
	list_is("\"a.\".b@x", 1, "\"a..b\"@x");
	list_is("\"\"@x", 1, "\"\"@x");
	list_is("\"a\r\n b\"@x", 1, "\"a b\"@x");        /* the fold's CRLF is invisible */
	bad("\"unterminated@x");
	bad("\"a\rb\"@x");
	bad("\"a\x01\"@x");
}

static void test_obsolete_forms(void **state)
{
	(void)state;
	list_is("me . x @ ex . com", 1, "me.x@ex.com");
	list_is("me (c) . (c) x@ex (c) . (c) com", 1, "me.x@ex.com");
	list_is("<@route1,@route2:me@x>", 1, "me@x");
	list_is("Me <@a.b, ,@c:me@x>", 1, "me@x");
	list_is("<,@a:me@x>", 1, "me@x");
	list_is("a@b,,c@d", 2, "a@b", "c@d");
	list_is(", a@b ,, , c@d ,", 2, "a@b", "c@d");
	list_is(",", 0);
	list_is("", 0);
	list_is("  (only a comment)  ", 0);
	list_is("undisclosed-recipients:;", 0);
	list_is("g: , a@b, ,c@d,;", 2, "a@b", "c@d");
	list_is("g:; , h: a@b;", 1, "a@b");
	bad("<@a me@x>");
	bad("<@a:>");
	bad("<me@x");
	bad("me@x>");
	bad("a.@x");
	bad(".a@x");
	bad("a..b@x");
	bad("a b@x");
	bad("me@x.");
	bad("me@.x");
	bad("me@");
	bad("@x");
	bad("me");
	bad("Just A Name");
	bad("me@x y@z");
	bad("me@x;");
	bad("g: a@b");                      /* group without ';' */
	bad("g: h: a@b;;");                 /* groups do not nest */
	bad(": a@b;");
	bad("<>");
	bad(". <me@x>");
}

static void test_domain_literals(void **state)
{
	(void)state;
	list_is("me@[192.0.2.1]", 1, "me@[192.0.2.1]");
	list_is("me@[ IPv6:2001:db8::1 ]", 1, "me@[IPv6:2001:db8::1]");
	list_is("Me <me@[10.0.0.1]> (c)", 1, "me@[10.0.0.1]");
	list_is("me@[a\\\t\\] b]", 1, "me@[a\\\t\\]b]");   /* quoted-pairs kept (fuzz) */
	bad("me@[1.2.3.4");
	bad("me@[a[b]");
	bad("me@1.2.3.4]");
	bad("me@[1.2].x");
}

static void test_utf8(void **state)
{
	(void)state;
	list_is("J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbc" "cher.example>", 1,
	    "j\xc3\xb6rg@b\xc3\xbc" "cher.example");
	list_is("\"\xe4\xbd\xa0\xe5\xa5\xbd\" <\xe4\xbd\xa0@x>", 1, "\xe4\xbd\xa0@x");
	list_is("me@x (\xf0\x9f\x98\x80)", 1, "me@x");
	bad("m\xc3@x");                     /* truncated sequence */
	bad("m\xc0\xaf@x");                 /* overlong */
	bad("m\xed\xa0\x80@x");             /* surrogate */
	bad("m\xf4\x90\x80\x80@x");         /* above U+10FFFF */
	bad("\"\xff\" <me@x>");
	bad("me@x (\xfe)");
}

static void test_folding_and_controls(void **state)
{
	(void)state;
	list_is("Me\r\n <me@x>,\r\n\tyou@y", 2, "me@x", "you@y");
	list_is("Me\n <me@x>,\n you@y", 2, "me@x", "you@y");
	list_is("me@x\r\n", 1, "me@x");
	bad("me@x\r\nvictim@y");
	bad("me@x\nvictim@y");
	bad("me@x\rvictim@y");
	bad("me@x\r");
	bad("me\x01@x");
	bad("me@x\x7f");
	{
		const char nul[] = "me@x\0, victim@y";
		struct addr_list l;
		const char *err;
		assert_int_equal(addr_parse_list(nul, sizeof(nul) - 1, &l, &err), -1);
	}
	bad("me@x ]");
	bad("me\\@x");
}

static void test_limits(void **state)
{
	(void)state;
	char *s = xmalloc(ADDR_INPUT_MAX + 64);
	struct addr_list l;
	const char *err;
	size_t o = 0;

	/* exactly ADDR_LIST_MAX addresses are fine, one more is not */
	for (int i = 0; i < ADDR_LIST_MAX; i++)
		o += (size_t)snprintf(s + o, 64, "u%d@x,", i);
	assert_int_equal(addr_parse_list(s, o, &l, &err), 0);
	assert_int_equal(l.n, ADDR_LIST_MAX);
	assert_string_equal(l.addr[99], "u99@x");
	addr_list_free(&l);
	o += (size_t)snprintf(s + o, 64, "one@more");
	assert_int_equal(addr_parse_list(s, o, &l, &err), -1);
	assert_string_equal(err, "too many addresses");

	/* an address longer than ADDR_SPEC_MAX */
	memset(s, 'a', ADDR_SPEC_MAX);
	memcpy(s + ADDR_SPEC_MAX, "@x", 3);
	assert_int_equal(addr_parse_list(s, strlen(s), &l, &err), -1);
	assert_string_equal(err, "address too long");
	/* ... but a long display name is fine */
	memset(s, 'a', 4000);
	memcpy(s + 4000, " <me@x>", 8);
	assert_int_equal(addr_parse_list(s, strlen(s), &l, &err), 0);
	assert_int_equal(l.n, 1);
	addr_list_free(&l);

	/* the input bound */
	memset(s, ' ', ADDR_INPUT_MAX + 1);
	assert_int_equal(addr_parse_list(s, ADDR_INPUT_MAX + 1, &l, &err), -1);
	assert_string_equal(err, "address field too long");

	/* comment depth */
	o = 0;
	s[o++] = 'm';
	s[o++] = '@';
	s[o++] = 'x';
	for (int i = 0; i < ADDR_COMMENT_DEPTH_MAX; i++)
		s[o++] = '(';
	for (int i = 0; i < ADDR_COMMENT_DEPTH_MAX; i++)
		s[o++] = ')';
	assert_int_equal(addr_parse_list(s, o, &l, &err), 0);
	addr_list_free(&l);
	o = 3;
	for (int i = 0; i <= ADDR_COMMENT_DEPTH_MAX; i++)
		s[o++] = '(';
	for (int i = 0; i <= ADDR_COMMENT_DEPTH_MAX; i++)
		s[o++] = ')';
	assert_int_equal(addr_parse_list(s, o, &l, &err), -1);
	free(s);
}

/* Hostile shapes of the maximum length parse (or fail) in linear time. */
static void test_linear_time(void **state)
{
	(void)state;
	static const char *const pats[] = { "(", "a.", "\"", ",", "a ", "<@a,", "g:", "\\(", "a@b ", "." };
	char *s = xmalloc(ADDR_INPUT_MAX);
	clock_t t0 = clock();

	for (size_t p = 0; p < sizeof(pats) / sizeof(pats[0]); p++) {
		size_t k = strlen(pats[p]);
		struct addr_list l;
		const char *err;
		for (size_t i = 0; i + k <= ADDR_INPUT_MAX; i += k)
			memcpy(s + i, pats[p], k);
		if (addr_parse_list(s, ADDR_INPUT_MAX - ADDR_INPUT_MAX % k, &l, &err) == 0)
			addr_list_free(&l);
	}
	assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 2.0);
	free(s);
}

/* Not NUL-terminated input: the parser reads only len bytes. */
static void test_length_bounded(void **state)
{
	(void)state;
	const char *s = "me@x, victim@y";
	struct addr_list l;
	const char *err;

	assert_int_equal(addr_parse_list(s, 4, &l, &err), 0);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.addr[0], "me@x");
	addr_list_free(&l);
	addr_list_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple_forms),
		cmocka_unit_test(test_bypass_forms),
		cmocka_unit_test(test_comments),
		cmocka_unit_test(test_quoted_local_parts),
		cmocka_unit_test(test_obsolete_forms),
		cmocka_unit_test(test_domain_literals),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_folding_and_controls),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_linear_time),
		cmocka_unit_test(test_length_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
