/* test_pop3_parse: the POP3 command parser, the wire-form transfer filter
 * (CRLF, dot-stuffing, TOP), size accounting and Maildir seen-flag names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pop3/pop3_mbox.h"
#include "pop3/pop3_parse.h"

static enum pop3_parse_result parse(const char *line, struct pop3_cmd *cmd, const char **err)
{
	*err = NULL;
	return pop3_parse(line, strlen(line), cmd, err);
}

static void test_verbs(void **state)
{
	struct pop3_cmd c;
	const char *err;

	(void)state;
	assert_int_equal(parse("STAT", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_STAT);
	assert_int_equal(parse("stat", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_STAT);
	assert_int_equal(parse("CaPa", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_CAPA);
	assert_int_equal(parse("QUIT", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_QUIT);
	assert_int_equal(parse("STLS", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_STLS);
	assert_int_equal(parse("NOOP", &c, &err), POP3_PARSE_OK);
	assert_int_equal(parse("RSET", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_RSET);
	assert_int_equal(parse("XTND", &c, &err), POP3_PARSE_UNKNOWN);
	assert_non_null(err);
	assert_int_equal(parse("", &c, &err), POP3_PARSE_UNKNOWN);
	assert_int_equal(parse("STATS", &c, &err), POP3_PARSE_UNKNOWN);
	assert_int_equal(parse("STA", &c, &err), POP3_PARSE_UNKNOWN);
	assert_int_equal(parse(" STAT", &c, &err), POP3_PARSE_UNKNOWN);
	assert_int_equal(parse("STAT 1", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("QUIT now", &c, &err), POP3_PARSE_SYNTAX);
	assert_string_equal(pop3_verb_name(POP3_CMD_TOP), "TOP");
}

static void test_numbers(void **state)
{
	struct pop3_cmd c;
	const char *err;

	(void)state;
	assert_int_equal(parse("LIST", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.has_msg, 0);
	assert_int_equal(parse("LIST 3", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.has_msg, 1);
	assert_int_equal(c.msg, 3);
	assert_int_equal(parse("UIDL 4294967295", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.msg, 4294967295u);
	assert_int_equal(parse("UIDL 4294967296", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 99999999999999999999", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 0", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR -1", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR +1", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 1x", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 1 2", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("RETR 12", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_RETR);
	assert_int_equal(c.msg, 12);
	assert_int_equal(parse("DELE 1", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_DELE);
	assert_int_equal(parse("TOP 1 0", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_TOP);
	assert_int_equal(c.msg, 1);
	assert_int_equal(c.lines, 0);
	assert_int_equal(parse("top 2 10", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.lines, 10);
	assert_int_equal(parse("TOP 1", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("TOP 1 2 3", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("TOP 0 2", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("LIST  5", &c, &err), POP3_PARSE_OK); /* lenient spacing */
	assert_int_equal(c.msg, 5);
}

static void test_user_pass(void **state)
{
	struct pop3_cmd c;
	const char *err;

	(void)state;
	assert_int_equal(parse("USER alice@example.test", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_USER);
	assert_string_equal(c.arg, "alice@example.test");
	assert_int_equal(parse("USER", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("USER a b", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("PASS secret with spaces ", &c, &err), POP3_PARSE_OK);
	assert_int_equal(c.verb, POP3_CMD_PASS);
	assert_string_equal(c.arg, "secret with spaces ");
	assert_int_equal(parse("PASS  x", &c, &err), POP3_PARSE_OK);
	assert_string_equal(c.arg, " x");
	assert_int_equal(parse("PASS", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("PASS ", &c, &err), POP3_PARSE_SYNTAX);
	/* shell metacharacters are data */
	assert_int_equal(parse("USER $(id)`x`;|@d", &c, &err), POP3_PARSE_OK);
	assert_string_equal(c.arg, "$(id)`x`;|@d");
}

static void test_hostile(void **state)
{
	struct pop3_cmd c;
	const char *err;
	char line[400];

	(void)state;
	/* NUL in the middle */
	assert_int_equal(pop3_parse("USER a\0b", 8, &c, &err), POP3_PARSE_SYNTAX);
	assert_string_equal(err, "NUL byte in command");
	assert_int_equal(pop3_parse("STAT\0", 5, &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(pop3_parse("\0", 1, &c, &err), POP3_PARSE_SYNTAX);
	/* bare CR, escape, DEL */
	assert_int_equal(parse("STAT\r", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("NOOP\rQUIT", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("USER a\x1b@b", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("USER a\x7f@b", &c, &err), POP3_PARSE_SYNTAX);
	assert_int_equal(parse("LIST\t1", &c, &err), POP3_PARSE_UNKNOWN);
	assert_int_equal(parse("LIST 1\t", &c, &err), POP3_PARSE_SYNTAX);
	/* 253 bytes + CRLF = 255 is the longest allowed line */
	memset(line, 'a', sizeof(line));
	memcpy(line, "PASS ", 5);
	line[253] = '\0';
	assert_int_equal(parse(line, &c, &err), POP3_PARSE_OK);
	assert_int_equal(strlen(c.arg), 248);
	line[253] = 'a';
	line[254] = '\0';
	assert_int_equal(parse(line, &c, &err), POP3_PARSE_SYNTAX);
	assert_string_equal(err, "line too long");
	line[399] = '\0';
	assert_int_equal(parse(line, &c, &err), POP3_PARSE_SYNTAX);
	/* high bytes are allowed (UTF-8 passwords) */
	assert_int_equal(parse("PASS p\xc3\xa4ss", &c, &err), POP3_PARSE_OK);
}

/* Runs the filter over input split into pieces of size step. */
static char *xfer(const char *in, size_t n, int64_t top, size_t step, size_t *len_r)
{
	struct pop3_xfer x;
	char *out = malloc(2 * n + 16);
	size_t o = 0;

	assert_non_null(out);
	pop3_xfer_init(&x, top);
	for (size_t i = 0; i < n; i += step) {
		size_t k = n - i < step ? n - i : step;
		o += pop3_xfer_feed(&x, in + i, k, out + o);
	}
	o += pop3_xfer_finish(&x, out + o);
	out[o] = '\0';
	*len_r = o;
	return out;
}

static void check_xfer(const char *in, int64_t top, const char *want)
{
	for (size_t step = 1; step <= strlen(in) + 1; step++) {
		size_t len;
		char *out = xfer(in, strlen(in), top, step, &len);
		assert_int_equal(len, strlen(want));
		assert_string_equal(out, want);
		free(out);
	}
}

static void test_xfer(void **state)
{
	(void)state;
	check_xfer("", -1, ".\r\n");
	check_xfer("a\n", -1, "a\r\n.\r\n");
	check_xfer("a", -1, "a\r\n.\r\n");
	check_xfer("a\r\nb\r\n", -1, "a\r\nb\r\n.\r\n");
	check_xfer("Subject: x\n\n.\n.foo\n..\nend\n", -1,
	    "Subject: x\r\n\r\n..\r\n..foo\r\n...\r\nend\r\n.\r\n");
	check_xfer(".", -1, "..\r\n.\r\n");
	check_xfer("a\rb\n", -1, "a\rb\r\n.\r\n");
	check_xfer("a\r", -1, "a\r\r\n.\r\n");
	check_xfer("x\n.\r\n", -1, "x\r\n..\r\n.\r\n");
	/* TOP */
	check_xfer("H: 1\nH: 2\n\nb1\nb2\nb3\n", 0, "H: 1\r\nH: 2\r\n\r\n.\r\n");
	check_xfer("H: 1\nH: 2\n\nb1\nb2\nb3\n", 2, "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n.\r\n");
	check_xfer("H: 1\nH: 2\n\nb1\nb2\nb3\n", 10, "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\nb3\r\n.\r\n");
	check_xfer("H: 1\r\n\r\n.b1\r\nb2", 1, "H: 1\r\n\r\n..b1\r\n.\r\n");
	check_xfer("H: 1\n\nb1\nb2", 5, "H: 1\r\n\r\nb1\r\nb2\r\n.\r\n");
	check_xfer("H: 1\nno blank line", 0, "H: 1\r\nno blank line\r\n.\r\n");
}

static uint64_t size_of(const char *in, size_t step)
{
	struct pop3_size s;
	size_t n = strlen(in);

	pop3_size_init(&s);
	for (size_t i = 0; i < n; i += step)
		pop3_size_feed(&s, in + i, n - i < step ? n - i : step);
	return pop3_size_total(&s);
}

static void test_size(void **state)
{
	static const char *cases[] = {
		"", "a", "a\n", "a\r\nb\n", "a\r", "a\rb\n\n", "Subject: x\n\n.\n.foo\n",
		"\r\n\r\n", "\n\n\n",
	};

	(void)state;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		/* the size is the filter's output less the stuffed dots and ".\r\n" */
		size_t len, dots = 0;
		char *out = xfer(cases[c], strlen(cases[c]), -1, 64, &len);
		for (size_t i = 0; i + 3 < len; i++)
			if (out[i] == '.' && (i == 0 || out[i - 1] == '\n'))
				dots++;
		free(out);
		assert_int_equal(size_of(cases[c], 100), len - 3 - dots);
		for (size_t step = 1; step < 5; step++)
			assert_int_equal(size_of(cases[c], step), size_of(cases[c], 100));
	}
	assert_int_equal(size_of("", 1), 0);
	assert_int_equal(size_of("a", 1), 3);
	assert_int_equal(size_of("a\n", 1), 3);
	assert_int_equal(size_of("a\r\n", 1), 3);
	assert_int_equal(size_of("a\nb\n", 1), 6);
	assert_int_equal(size_of("Subject: x\n\n.\n.foo\n", 3), 23);
	assert_int_equal(size_of("a\r", 1), 4);
}

static void test_uid(void **state)
{
	(void)state;
	assert_true(pop3_uid_valid("1700000000.M1P2Q3.host", 22));
	assert_false(pop3_uid_valid("", 0));
	assert_false(pop3_uid_valid("a b", 3));
	assert_false(pop3_uid_valid("a\x80", 2));
	char long_uid[80];
	memset(long_uid, 'x', sizeof(long_uid));
	assert_true(pop3_uid_valid(long_uid, 70));
	assert_false(pop3_uid_valid(long_uid, 71));
}

static void test_seen_name(void **state)
{
	char out[256];

	(void)state;
	assert_int_equal(pop3_mbox_seen_name("123.abc", out, sizeof(out)), 0);
	assert_string_equal(out, "cur/123.abc:2,S");
	assert_int_equal(pop3_mbox_seen_name("123.abc:2,", out, sizeof(out)), 0);
	assert_string_equal(out, "cur/123.abc:2,S");
	assert_int_equal(pop3_mbox_seen_name("123.abc:2,FR", out, sizeof(out)), 0);
	assert_string_equal(out, "cur/123.abc:2,FRS");
	assert_int_equal(pop3_mbox_seen_name("123.abc:2,DT", out, sizeof(out)), 0);
	assert_string_equal(out, "cur/123.abc:2,DST");
	assert_int_equal(pop3_mbox_seen_name("123.abc:2,RST", out, sizeof(out)), 0);
	assert_string_equal(out, "cur/123.abc:2,RST");
	assert_int_equal(pop3_mbox_seen_name("123.abc:2,FR", out, 10), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verbs),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_user_pass),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_xfer),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_uid),
		cmocka_unit_test(test_seen_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
