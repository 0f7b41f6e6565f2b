/* Unit tests for src/imap/imap_parse.c (and the pure helpers of
 * imap_mbox.c): literal headers, the tokenizer on good and hostile input,
 * sequence sets, dates, FETCH attributes, mailbox names, flag letters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "lib/util.h"

static void test_literal_header(void **state)
{
	(void)state;
	uint64_t n;
	int ns;
	assert_int_equal(imap_literal_header("a LOGIN {5}", 11, 100, &n, &ns), 1);
	assert_int_equal(n, 5);
	assert_int_equal(ns, 0);
	assert_int_equal(imap_literal_header("a LOGIN {5+}", 12, 100, &n, &ns), 1);
	assert_int_equal(ns, 1);
	assert_int_equal(imap_literal_header("a NOOP", 6, 100, &n, &ns), 0);
	assert_int_equal(imap_literal_header("a X {}", 6, 100, &n, &ns), 0);
	assert_int_equal(imap_literal_header("a X {101}", 9, 100, &n, &ns), -1);
	const char *big = "a LOGIN {4294967296}";
	assert_int_equal(imap_literal_header(big, strlen(big), 1 << 20, &n, &ns), -1);
	const char *huge = "a LOGIN {18446744073709551616}";
	assert_int_equal(imap_literal_header(huge, strlen(huge), UINT64_MAX, &n, &ns), -1);
	const char *max = "a LOGIN {18446744073709551615}";
	assert_int_equal(imap_literal_header(max, strlen(max), UINT64_MAX, &n, &ns), 1);
	const char *digits = "a LOGIN {000000000000000000000000000000000000000001}";
	assert_int_equal(imap_literal_header(digits, strlen(digits), 10, &n, &ns), 1);
	assert_int_equal(n, 1);
}

static int parse(const char *s, struct imap_cmd *c, const char **err)
{
	return imap_cmd_parse(s, strlen(s), c, err);
}

static void test_cmd_parse(void **state)
{
	(void)state;
	struct imap_cmd c;
	const char *err;
	assert_int_equal(parse("a1 noop\r\n", &c, &err), 0);
	assert_string_equal(c.tag, "a1");
	assert_string_equal(c.name, "NOOP");
	assert_int_equal(c.n_args, 0);
	imap_cmd_free(&c);

	const char *s = "t LOGIN \"bob \\\"q\\\\\" {3}\r\np\0w\r\n";
	assert_int_equal(imap_cmd_parse(s, 30, &c, &err), 0);
	assert_int_equal(c.n_args, 2);
	assert_int_equal(c.args[0].type, IMAP_ARG_STRING);
	assert_string_equal(c.args[0].s, "bob \"q\\");
	assert_int_equal(c.args[1].type, IMAP_ARG_LITERAL);
	assert_int_equal(c.args[1].len, 3);
	assert_true(c.args[1].has_nul);
	assert_null(imap_arg_str(&c.args[1]));   /* NUL never reaches a C string */
	imap_cmd_free(&c);

	assert_int_equal(parse("f UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.10>)\r\n", &c, &err), 0);
	assert_int_equal(c.n_args, 3);
	assert_int_equal(c.args[2].type, IMAP_ARG_LIST);
	assert_int_equal(c.args[2].n, 2);
	assert_string_equal(c.args[2].list[1].s, "BODY.PEEK[HEADER.FIELDS (From To)]<0.10>");
	imap_cmd_free(&c);

	assert_int_equal(parse("x STATUS INBOX ()\r\n", &c, &err), 0);
	assert_int_equal(c.args[1].type, IMAP_ARG_LIST);
	assert_int_equal(c.args[1].n, 0);
	imap_cmd_free(&c);
}

static void test_cmd_hostile(void **state)
{
	(void)state;
	struct imap_cmd c;
	const char *err;
	static const char *const bad[] = {
		"\r\n", "a\r\n", " a NOOP\r\n", "a NOOP", "a NOOP\n", "a LIST ((\r\n", "a LIST ))\r\n",
		"a LIST (a))\r\n", "a LOGIN \"unterminated\r\n", "a LOGIN \"bad\\escape\"\r\n",
		"a FETCH 1 BODY[p\r\n", "a LOGIN {5}\r\nab\r\n", "a LOGIN {99999999999999999999999}\r\nab\r\n",
		"a LOGIN {3}ab\r\n", "a  NOOP\r\n", "a NOOP \r\n", "a LOGIN x\ry\r\n",
		"toolongtagtoolongtagtoolongtagtoolongtagtoolongtagtoolongtagtoolongtag NOOP\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], &c, &err);
		if (r == 0)
			fail_msg("accepted: %s", bad[i]);
		imap_cmd_free(&c);
	}
	/* 10,000 nested parentheses: refused at the depth limit */
	size_t n = 10000;
	char *deep = xmalloc(n + 16);
	memcpy(deep, "a ID ", 5);
	memset(deep + 5, '(', n);
	memcpy(deep + 5 + n, "\r\n", 2);
	assert_int_equal(imap_cmd_parse(deep, n + 7, &c, &err), -1);
	imap_cmd_free(&c);
	/* and balanced, still too deep */
	char *bal = xmalloc(2 * n + 16);
	memcpy(bal, "a ID ", 5);
	memset(bal + 5, '(', n);
	memset(bal + 5 + n, ')', n);
	memcpy(bal + 5 + 2 * n, "\r\n", 2);
	assert_int_equal(imap_cmd_parse(bal, 2 * n + 7, &c, &err), -1);
	imap_cmd_free(&c);
	xfree(&deep);
	xfree(&bal);
	/* a NUL inside a quoted string */
	const char q[] = "a LOGIN \"b\0b\" x\r\n";
	assert_int_equal(imap_cmd_parse(q, sizeof(q) - 1, &c, &err), -1);
	imap_cmd_free(&c);
}

static void test_seqset(void **state)
{
	(void)state;
	struct imap_seqset s;
	assert_int_equal(imap_seqset_parse("1:3,7,9:*", 12, &s), 0);
	assert_true(imap_seqset_has(&s, 1));
	assert_true(imap_seqset_has(&s, 3));
	assert_false(imap_seqset_has(&s, 4));
	assert_true(imap_seqset_has(&s, 7));
	assert_true(imap_seqset_has(&s, 12));
	assert_false(imap_seqset_has(&s, 13));
	imap_seqset_free(&s);
	assert_int_equal(imap_seqset_parse("*:5", 2, &s), 0);  /* reversed */
	assert_true(imap_seqset_has(&s, 4));
	imap_seqset_free(&s);
	static const char *const bad[] = { "", "0", "1,", ",1", "1::2", "a", "4294967296", "1:0", "$" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(imap_seqset_parse(bad[i], 10, &s), -1);
}

static void test_dates(void **state)
{
	(void)state;
	time_t t;
	assert_int_equal(imap_date_parse("1-Feb-1994", &t), 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_date_parse("01-feb-1994", &t), 0);
	assert_int_equal(imap_date_parse("1-Foo-1994", &t), -1);
	assert_int_equal(imap_date_parse("1-Feb-94", &t), -1);
	assert_int_equal(imap_datetime_parse("17-Jul-1996 02:44:25 -0700", &t), 0);
	assert_int_equal(t, 837596665);
	assert_int_equal(imap_datetime_parse(" 7-Jul-1996 02:44:25 +0000", &t), 0);
	assert_int_equal(imap_datetime_parse("17-Jul-1996 02:44:25", &t), -1);
	char buf[32];
	imap_datetime_format(837596665, buf);
	assert_string_equal(buf, "17-Jul-1996 09:44:25 +0000");
}

static void test_fetch_att(void **state)
{
	(void)state;
	struct imap_fetch_att a;
	const char *err;
	assert_int_equal(imap_fetch_att_parse("body.peek[1.2.HEADER.FIELDS (From \"To\")]<5.10>", &a, &err), 0);
	assert_int_equal(a.kind, IMAP_F_SECTION);
	assert_true(a.peek);
	assert_int_equal(a.n_part, 2);
	assert_int_equal(a.part[1], 2);
	assert_int_equal(a.sect, IMAP_S_FIELDS);
	assert_int_equal(a.n_fields, 2);
	assert_string_equal(a.fields[1], "To");
	assert_true(a.partial);
	assert_int_equal(a.p_off, 5);
	assert_int_equal(a.p_len, 10);
	assert_string_equal(a.name, "BODY[1.2.HEADER.FIELDS (FROM \"TO\")]<5>");
	imap_fetch_att_free(&a);
	assert_int_equal(imap_fetch_att_parse("BODY[]", &a, &err), 0);
	assert_int_equal(a.sect, IMAP_S_ALL);
	assert_false(a.peek);
	imap_fetch_att_free(&a);
	assert_int_equal(imap_fetch_att_parse("RFC822.SIZE", &a, &err), 0);
	assert_int_equal(a.kind, IMAP_F_SIZE);
	assert_int_equal(imap_fetch_att_parse("BODY[3.MIME]", &a, &err), 0);
	assert_int_equal(a.sect, IMAP_S_MIME);
	static const char *const bad[] = {
		"BODY[p", "BODY[1.]", "BODY[0]", "BODY[MIME]", "BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]",
		"BODY[HEADER.FIELDS (a:b)]", "BODY[]<1>", "BODY[]<1.0>", "BODY[]<4294967296.1>", "BODY[TEXT]x",
		"BODY[99999999999]", "FOO", "BODY.PEEK", "BODY[HEADER.FIELDS (a]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (imap_fetch_att_parse(bad[i], &a, &err) == 0)
			fail_msg("accepted: %s", bad[i]);
	}
}

static void test_mailbox_names(void **state)
{
	(void)state;
	assert_int_equal(imap_mailbox_name_ok("Sent"), 0);
	assert_int_equal(imap_mailbox_name_ok("a.b.c"), 0);
	static const char *const bad[] = { "", ".", ".hidden", "a..b", "a.", "a/b", "../x", "a*", "a%", "a\tb", "a\\b" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(imap_mailbox_name_ok(bad[i]), -1);
	char p[256];
	assert_int_equal(imap_folder_path("mail/d/u", "inbox", p, sizeof(p)), 0);
	assert_string_equal(p, "mail/d/u");
	assert_int_equal(imap_folder_path("mail/d/u", "Sent", p, sizeof(p)), 0);
	assert_string_equal(p, "mail/d/u/.Sent");
	assert_int_equal(imap_folder_path("mail/d/u", "../../x", p, sizeof(p)), -1);
}

static void test_flags_and_match(void **state)
{
	(void)state;
	char extra[32], info[40];
	unsigned f = imap_flags_from_info("TSRaFD", extra);
	assert_int_equal(f, IMAP_FL_DELETED | IMAP_FL_SEEN | IMAP_FL_ANSWERED | IMAP_FL_FLAGGED | IMAP_FL_DRAFT);
	assert_string_equal(extra, "a");
	imap_flags_to_info(IMAP_FL_SEEN | IMAP_FL_DELETED | IMAP_FL_DRAFT, "a", info);
	assert_string_equal(info, "DSTa");
	assert_true(imap_list_match("*", "a.b"));
	assert_false(imap_list_match("%", "a.b"));
	assert_true(imap_list_match("a.%", "a.b"));
	assert_true(imap_list_match("INBOX", "INBOX"));
	assert_false(imap_list_match("Sent", "Sent.x"));
	/* many stars: still quick (dynamic programming, not backtracking) */
	char pat[301];
	memset(pat, '*', 299);
	pat[299] = 'z';
	pat[300] = '\0';
	assert_false(imap_list_match(pat, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_literal_header),
		cmocka_unit_test(test_cmd_parse),
		cmocka_unit_test(test_cmd_hostile),
		cmocka_unit_test(test_seqset),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_fetch_att),
		cmocka_unit_test(test_mailbox_names),
		cmocka_unit_test(test_flags_and_match),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
