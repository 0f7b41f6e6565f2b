/* test_smtp_parse: unit and hostile-input tests for the SMTP command, path,
 * parameter, HELO and BDAT parsers and the DATA/BDAT state machines
 * (including SMTP smuggling variants and split-at-every-position checks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/util.h"
#include "smtpd/smtp_parse.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* ---------------- command lines ---------------- */

static enum smtp_parse_result cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd,
    char *buf)
{
	memcpy(buf, line, len);
	return smtp_parse_command(buf, len, cmd);
}

static void expect_cmd(const char *line, enum smtp_parse_result res, enum smtp_verb verb,
    const char *arg)
{
	char buf[1200];
	struct smtp_cmd cmd;
	enum smtp_parse_result r = cmd_parse(line, strlen(line), &cmd, buf);

	if (r != res || cmd.verb != verb || (arg != NULL && strcmp(cmd.arg, arg) != 0))
		print_error("line [%s]: got res=%d verb=%d arg=[%s]\n", line, r, cmd.verb, cmd.arg);
	assert_int_equal(r, res);
	assert_int_equal(cmd.verb, verb);
	if (arg != NULL)
		assert_string_equal(cmd.arg, arg);
}

static void test_command_verbs(void **state)
{
	(void)state;
	expect_cmd("HELO client.example", SMTP_PARSE_OK, SMTP_HELO, "client.example");
	expect_cmd("ehlo Client.Example", SMTP_PARSE_OK, SMTP_EHLO, "Client.Example");
	expect_cmd("EhLo   spaced  ", SMTP_PARSE_OK, SMTP_EHLO, "spaced");
	expect_cmd("MAIL FROM:<a@b.example>", SMTP_PARSE_OK, SMTP_MAIL, "<a@b.example>");
	expect_cmd("mail from:<a@b.example> SIZE=10", SMTP_PARSE_OK, SMTP_MAIL, "<a@b.example> SIZE=10");
	expect_cmd("MAIL FROM: <a@b.example>", SMTP_PARSE_OK, SMTP_MAIL, "<a@b.example>");
	expect_cmd("MAIL FROM:   <a@b.example>", SMTP_PARSE_OK, SMTP_MAIL, "<a@b.example>");
	expect_cmd("MAIL FROM:<>", SMTP_PARSE_OK, SMTP_MAIL, "<>");
	expect_cmd("RCPT TO:<u@d.example>", SMTP_PARSE_OK, SMTP_RCPT, "<u@d.example>");
	expect_cmd("rcpt to: <u@d.example> NOTIFY=NEVER", SMTP_PARSE_OK, SMTP_RCPT,
	    "<u@d.example> NOTIFY=NEVER");
	expect_cmd("DATA", SMTP_PARSE_OK, SMTP_DATA, "");
	expect_cmd("data ", SMTP_PARSE_OK, SMTP_DATA, "");
	expect_cmd("BDAT 100 LAST", SMTP_PARSE_OK, SMTP_BDAT, "100 LAST");
	expect_cmd("RSET", SMTP_PARSE_OK, SMTP_RSET, "");
	expect_cmd("NOOP", SMTP_PARSE_OK, SMTP_NOOP, "");
	expect_cmd("NOOP anything goes", SMTP_PARSE_OK, SMTP_NOOP, "anything goes");
	expect_cmd("QUIT", SMTP_PARSE_OK, SMTP_QUIT, "");
	expect_cmd("VRFY user", SMTP_PARSE_OK, SMTP_VRFY, "user");
	expect_cmd("EXPN list", SMTP_PARSE_OK, SMTP_EXPN, "list");
	expect_cmd("HELP", SMTP_PARSE_OK, SMTP_HELP, "");
	expect_cmd("help MAIL", SMTP_PARSE_OK, SMTP_HELP, "MAIL");
	expect_cmd("STARTTLS", SMTP_PARSE_OK, SMTP_STARTTLS, "");
	expect_cmd("AUTH PLAIN AGFAYg==", SMTP_PARSE_OK, SMTP_AUTH, "PLAIN AGFAYg==");
}

static void test_command_syntax(void **state)
{
	(void)state;
	/* verbs that take no argument */
	expect_cmd("DATA x", SMTP_PARSE_SYNTAX, SMTP_DATA, NULL);
	expect_cmd("RSET x", SMTP_PARSE_SYNTAX, SMTP_RSET, NULL);
	expect_cmd("QUIT now", SMTP_PARSE_SYNTAX, SMTP_QUIT, NULL);
	expect_cmd("STARTTLS please", SMTP_PARSE_SYNTAX, SMTP_STARTTLS, NULL);
	/* verbs that need one */
	expect_cmd("HELO", SMTP_PARSE_SYNTAX, SMTP_HELO, "");
	expect_cmd("EHLO   ", SMTP_PARSE_SYNTAX, SMTP_EHLO, "");
	expect_cmd("MAIL", SMTP_PARSE_SYNTAX, SMTP_MAIL, "");
	expect_cmd("MAIL FROM:", SMTP_PARSE_SYNTAX, SMTP_MAIL, "");
	expect_cmd("MAIL TO:<a@b>", SMTP_PARSE_SYNTAX, SMTP_MAIL, "");
	expect_cmd("MAIL FRO", SMTP_PARSE_SYNTAX, SMTP_MAIL, "");
	expect_cmd("RCPT FROM:<a@b>", SMTP_PARSE_SYNTAX, SMTP_RCPT, "");
	expect_cmd("RCPT <a@b>", SMTP_PARSE_SYNTAX, SMTP_RCPT, "");
	expect_cmd("BDAT", SMTP_PARSE_SYNTAX, SMTP_BDAT, "");
	expect_cmd("VRFY", SMTP_PARSE_SYNTAX, SMTP_VRFY, "");
	/* unknown verbs are OK for the parser; the engine answers 500/502 */
	expect_cmd("FOO bar", SMTP_PARSE_OK, SMTP_UNKNOWN, "bar");
	expect_cmd("MAILFROM:<a@b>", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("HELOx y", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("", SMTP_PARSE_OK, SMTP_UNKNOWN, "");
	expect_cmd(" HELO x", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("\xc3\x89HLO x", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("HEL\xcf", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("DAT\xc1", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
	expect_cmd("HELO\tx", SMTP_PARSE_OK, SMTP_UNKNOWN, NULL);
}

static void test_command_limits(void **state)
{
	char line[1100], buf[1200];
	struct smtp_cmd cmd;

	(void)state;
	memcpy(line, "NOOP ", 5);
	memset(line + 5, 'a', sizeof(line) - 5);
	assert_int_equal(cmd_parse(line, SMTP_LINE_MAX - 2, &cmd, buf), SMTP_PARSE_OK);
	assert_int_equal(cmd.verb, SMTP_NOOP);
	assert_int_equal(strlen(cmd.arg), SMTP_LINE_MAX - 2 - 5);
	assert_int_equal(cmd_parse(line, SMTP_LINE_MAX - 1, &cmd, buf), SMTP_PARSE_TOO_LONG);
	assert_int_equal(cmd_parse(line, sizeof(line), &cmd, buf), SMTP_PARSE_TOO_LONG);
	assert_int_equal(cmd.verb, SMTP_UNKNOWN);

	/* NUL anywhere */
	assert_int_equal(cmd_parse(S("HELO a\0b"), &cmd, buf), SMTP_PARSE_NUL);
	assert_int_equal(cmd_parse(S("\0HELO ab"), &cmd, buf), SMTP_PARSE_NUL);
	assert_int_equal(cmd_parse(S("MAIL FROM:<a@b>\0"), &cmd, buf), SMTP_PARSE_NUL);
	assert_int_equal(cmd.verb, SMTP_UNKNOWN);
	/* bare CR / LF inside the line: one bad command, never two */
	assert_int_equal(cmd_parse(S("MAIL FROM:<a@b>\rRCPT TO:<c@d>"), &cmd, buf), SMTP_PARSE_BARE_CRLF);
	assert_int_equal(cmd_parse(S("MAIL FROM:<a@b>\nRCPT TO:<c@d>"), &cmd, buf), SMTP_PARSE_BARE_CRLF);
	assert_int_equal(cmd_parse(S("RSET\r"), &cmd, buf), SMTP_PARSE_BARE_CRLF);
	assert_int_equal(cmd_parse(S("\nQUIT"), &cmd, buf), SMTP_PARSE_BARE_CRLF);
	assert_int_equal(cmd.verb, SMTP_UNKNOWN);
}

/* ---------------- paths ---------------- */

struct path_ok {
	int is_mail;
	const char *arg;
	const char *addr;
	const char *local;
	const char *domain;
	int literal;
	int utf8;
};

static const struct path_ok path_oks[] = {
	{ 1, "<user@example.com>", "user@example.com", "user", "example.com", 0, 0 },
	{ 0, "<User.Name@EXAMPLE.Com>", "User.Name@example.com", "User.Name", "example.com", 0, 0 },
	{ 0, "  <a@b>", "a@b", "a", "b", 0, 0 },
	{ 0, "<a-b_c+tag@sub-1.example-2.org>", "a-b_c+tag@sub-1.example-2.org", "a-b_c+tag",
	    "sub-1.example-2.org", 0, 0 },
	/* every atext character */
	{ 0, "<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~@x.example",
	    "!#$%&'*+-/=?^_`{|}~", "x.example", 0, 0 },
	/* shell metacharacters are data */
	{ 0, "<\"$(id)\"@x.example>", "\"$(id)\"@x.example", "\"$(id)\"", "x.example", 0, 0 },
	{ 0, "<${run{/bin/sh}}@x.example>", "${run{/bin/sh}}@x.example", "${run{/bin/sh}}",
	    "x.example", 0, 0 },
	{ 0, "<`id`|x@x.example>", "`id`|x@x.example", "`id`|x", "x.example", 0, 0 },
	{ 0, "<\";sleep 66;\"@x.example>", "\";sleep 66;\"@x.example", "\";sleep 66;\"", "x.example", 0, 0 },
	{ 0, "<\"a(b)c\"@x.example>", "\"a(b)c\"@x.example", "\"a(b)c\"", "x.example", 0, 0 },
	/* quoted local parts */
	{ 0, "<\"plain\"@x.example>", "plain@x.example", "plain", "x.example", 0, 0 },
	{ 0, "<\"first.last\"@x.example>", "first.last@x.example", "first.last", "x.example", 0, 0 },
	{ 0, "<\"\\a\\b\"@x.example>", "ab@x.example", "ab", "x.example", 0, 0 },
	{ 0, "<\"with space\"@x.example>", "\"with space\"@x.example", "\"with space\"", "x.example", 0, 0 },
	{ 0, "<\"a\\\"b\"@x.example>", "\"a\\\"b\"@x.example", "\"a\\\"b\"", "x.example", 0, 0 },
	{ 0, "<\"a..b\"@x.example>", "\"a..b\"@x.example", "\"a..b\"", "x.example", 0, 0 },
	{ 0, "<\"a>b\"@x.example>", "\"a>b\"@x.example", "\"a>b\"", "x.example", 0, 0 },
	/* address literals */
	{ 0, "<user@[192.0.2.1]>", "user@[192.0.2.1]", "user", "[192.0.2.1]", 1, 0 },
	{ 0, "<user@[IPv6:2001:DB8::1]>", "user@[ipv6:2001:db8::1]", "user", "[ipv6:2001:db8::1]", 1, 0 },
	{ 0, "<user@[ipv6:::1]>", "user@[ipv6:::1]", "user", "[ipv6:::1]", 1, 0 },
	{ 0, "<user@[IPv6:::ffff:192.0.2.1]>", "user@[ipv6:::ffff:192.0.2.1]", "user",
	    "[ipv6:::ffff:192.0.2.1]", 1, 0 },
	/* source routes: accepted, dropped */
	{ 0, "<@a.example:user@d.example>", "user@d.example", "user", "d.example", 0, 0 },
	{ 0, "<@a.example,@b.example:user@d.example>", "user@d.example", "user", "d.example", 0, 0 },
	{ 1, "<@[192.0.2.1]:u@d.example>", "u@d.example", "u", "d.example", 0, 0 },
	{ 1, "<@[IPv6:2001:db8::1],@b.example:u@d.example>", "u@d.example", "u", "d.example", 0, 0 },
	/* open-relay battery forms: all parse; relay policy decides later */
	{ 0, "<user%other@us.example>", "user%other@us.example", "user%other", "us.example", 0, 0 },
	{ 0, "<\"user@other\"@us.example>", "\"user@other\"@us.example", "\"user@other\"", "us.example", 0, 0 },
	{ 0, "<@us.example:user@other.example>", "user@other.example", "user", "other.example", 0, 0 },
	{ 0, "<other!user@us.example>", "other!user@us.example", "other!user", "us.example", 0, 0 },
	{ 0, "<user@[1.2.3.4]>", "user@[1.2.3.4]", "user", "[1.2.3.4]", 1, 0 },
	/* postmaster and null path */
	{ 0, "<postmaster>", "postmaster", "postmaster", "", 0, 0 },
	{ 0, "<PostMaster>", "PostMaster", "PostMaster", "", 0, 0 },
	{ 1, "<>", "", "", "", 0, 0 },
	/* UTF-8 (RCPT: caller checks SMTPUTF8 of the transaction) */
	{ 0, "<j\xc3\xb6rg@b\xc3\xbc" "cher.example>", "j\xc3\xb6rg@b\xc3\xbc" "cher.example", "j\xc3\xb6rg",
	    "b\xc3\xbc" "cher.example", 0, 1 },
	{ 0, "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8>", NULL, NULL, NULL, 0, 1 },
	{ 0, "<\xf0\x9f\x98\x80@x.example>", NULL, NULL, NULL, 0, 1 },
	{ 1, "<j\xc3\xb6rg@x.example> SMTPUTF8", "j\xc3\xb6rg@x.example", NULL, NULL, 0, 1 },
	{ 0, "<\"\xc3\xa9 t\xc3\xa9\"@x.example>", "\"\xc3\xa9 t\xc3\xa9\"@x.example", NULL, NULL, 0, 1 },
	/* case of domain lowered, local kept */
	{ 1, "<MiXeD@MiXeD.Example>", "MiXeD@mixed.example", "MiXeD", "mixed.example", 0, 0 },
	/* numeric-only labels are syntactically fine */
	{ 0, "<u@123.example>", "u@123.example", "u", "123.example", 0, 0 },
};

static void test_path_ok(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(path_oks) / sizeof(path_oks[0]); i++) {
		const struct path_ok *t = &path_oks[i];
		struct smtp_path p;
		const char *err = "unset";
		int r = smtp_parse_path(t->arg, t->is_mail, &p, &err);

		if (r != 0)
			print_error("path %s: %s\n", t->arg, err);
		assert_int_equal(r, 0);
		assert_null(err);
		if (t->addr != NULL)
			assert_string_equal(p.addr, t->addr);
		if (t->local != NULL)
			assert_string_equal(p.local, t->local);
		if (t->domain != NULL)
			assert_string_equal(p.domain, t->domain);
		assert_int_equal(p.domain_literal, t->literal);
		assert_int_equal(p.utf8, t->utf8);
		assert_int_equal(p.is_null, strcmp(t->arg, "<>") == 0);
	}
}

struct path_bad {
	int is_mail;
	const char *arg;
	const char *err;
};

#define ES "501 5.1.7 Bad sender address syntax"
#define ER "501 5.1.3 Bad recipient address syntax"

static const struct path_bad path_bads[] = {
	{ 1, "user@example.com", ES },
	{ 0, "user@example.com", ER },
	{ 0, "<user@example.com", ER },
	{ 0, "user@example.com>", ER },
	{ 0, "", ER },
	{ 0, "<>", ER },                     /* null path only for MAIL */
	{ 1, "<postmaster>", ES },           /* unqualified only for RCPT */
	{ 0, "<\"postmaster\">", ER },
	{ 0, "<user>", ER },
	{ 0, "<user@other@us.example>", ER },
	{ 0, "<user@>", ER },
	{ 0, "<@example.com>", ER },
	{ 0, "<@a.example:>", ER },
	{ 0, "<@a.example,user@d.example>", ER },
	{ 0, "<@:user@d.example>", ER },
	{ 0, "<@a..b:user@d.example>", ER },
	{ 0, "<@[1.2.3.4:user@d.example>", ER },
	{ 0, "<@[1.2.3.4]x:user@d.example>", ER },
	{ 0, "<@[x:y]:user@d.example>", ER },
	{ 0, "<\"\"@x.example>", ER },
	{ 0, "<.user@x.example>", ER },
	{ 0, "<user.@x.example>", ER },
	{ 0, "<us..er@x.example>", ER },
	{ 0, "<us er@x.example>", ER },
	{ 0, "<us;er@x.example>", ER },       /* ; ( ) are not atext: quote them */
	{ 0, "<us(er)@x.example>", ER },
	{ 0, "<$(id)@x.example>", ER },
	{ 0, "<a|b;c@x.example>", ER },
	{ 0, "<us\ter@x.example>", ER },
	{ 0, "<us\x01" "er@x.example>", ER },
	{ 0, "<\"a\x01\"@x.example>", ER },
	{ 0, "<\"a\tb\"@x.example>", ER },
	{ 0, "<\"a\\\x01\"@x.example>", ER },
	{ 0, "<\"unterminated@x.example>", ER },
	{ 0, "<\"a\"b@x.example>", ER },
	{ 0, "<u@x..example>", ER },
	{ 0, "<u@.x.example>", ER },
	{ 0, "<u@x.example.>", ER },
	{ 0, "<u@-x.example>", ER },
	{ 0, "<u@x-.example>", ER },
	{ 0, "<u@x_y.example>", ER },
	{ 0, "<u@x.example >", ER },
	{ 0, "<u@x.example>junk", ER },
	{ 0, "<u@x.example><v@y>", ER },
	{ 0, "<u@[1.2.3]>", ER },
	{ 0, "<u@[1.2.3.256]>", ER },
	{ 0, "<u@[1.2.3.4>", ER },
	{ 0, "<u@[1.2.3.4]x>", ER },
	{ 0, "<u@[2001:db8::1]>", ER },          /* IPv6 without tag */
	{ 0, "<u@[IPv6:2001:db8::g]>", ER },
	{ 0, "<u@[IPv6:1.2.3.4]>", ER },
	{ 0, "<u@[x400:anything]>", ER },        /* General-address-literal */
	{ 0, "<u@[]>", ER },
	/* invalid UTF-8 */
	{ 0, "<\xc3@x.example>", ER },
	{ 0, "<\xc0\xaf@x.example>", ER },       /* overlong '/' */
	{ 0, "<\xe0\x80\xaf@x.example>", ER },   /* overlong 3-byte */
	{ 0, "<\xf0\x80\x80\xaf@x.example>", ER },
	{ 0, "<\xed\xa0\x80@x.example>", ER },   /* surrogate D800 */
	{ 0, "<\xf4\x90\x80\x80@x.example>", ER }, /* > U+10FFFF */
	{ 0, "<\xff@x.example>", ER },
	{ 0, "<\x80@x.example>", ER },
	{ 0, "<u@b\xc3.example>", ER },
	{ 0, "<\"\xc3\"@x.example>", ER },
	/* MAIL with UTF-8 needs SMTPUTF8 */
	{ 1, "<j\xc3\xb6rg@x.example>", "553 5.6.7 Address needs the SMTPUTF8 parameter" },
};

static void test_path_bad(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(path_bads) / sizeof(path_bads[0]); i++) {
		const struct path_bad *t = &path_bads[i];
		struct smtp_path p;
		const char *err = NULL;
		int r = smtp_parse_path(t->arg, t->is_mail, &p, &err);

		if (r != -1 || err == NULL || strcmp(err, t->err) != 0)
			print_error("path [%s]: r=%d err=%s addr=%s\n", t->arg, r, err ? err : "(null)", p.addr);
		assert_int_equal(r, -1);
		assert_non_null(err);
		assert_string_equal(err, t->err);
	}
}

static void test_path_lengths(void **state)
{
	char arg[600], local[80], dom[300];
	struct smtp_path p;
	const char *err;
	size_t n;

	(void)state;
	/* local part: 64 ok, 65 refused */
	memset(local, 'l', 64);
	local[64] = '\0';
	snprintf(arg, sizeof(arg), "<%s@x.example>", local);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), 0);
	assert_string_equal(p.local, local);
	local[64] = 'l';
	local[65] = '\0';
	snprintf(arg, sizeof(arg), "<%s@x.example>", local);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), -1);
	/* quoted local part, 64 octets with quotes */
	memset(local, 'q', 62);
	local[62] = '\0';
	snprintf(arg, sizeof(arg), "<\"%s\"@x.example>", local);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), 0);
	snprintf(arg, sizeof(arg), "<\"%sq\"@x.example>", local);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), -1);

	/* a label of 63 ok, 64 refused */
	memset(dom, 'd', 63);
	memcpy(dom + 63, ".example", 9);
	snprintf(arg, sizeof(arg), "<u@%s>", dom);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), 0);
	memset(dom, 'd', 64);
	memcpy(dom + 64, ".example", 9);
	snprintf(arg, sizeof(arg), "<u@%s>", dom);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), -1);

	/* whole path: 256 inside the brackets ok, 257 refused */
	n = 0;
	while (n < 252) {
		memset(dom + n, 'a', 9);
		dom[n + 9] = '.';
		n += 10;
	}
	/* dom now has 252 chars "aaaaaaaaa.aaaa..." ending in '.', trim to fit */
	dom[252] = '\0';
	dom[249] = 'z';
	dom[250] = 'z';
	dom[251] = 'z';
	/* "u@" + 252 = 254 */
	snprintf(arg, sizeof(arg), "<uu@%s>", dom); /* 255 */
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), 0);
	snprintf(arg, sizeof(arg), "<uuu@%s>", dom); /* 256 */
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), 0);
	assert_int_equal(strlen(p.addr), 256);
	snprintf(arg, sizeof(arg), "<uuuu@%s>", dom); /* 257 */
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), -1);
	/* domain over 255 */
	memset(dom, 'a', 299);
	for (n = 50; n < 299; n += 50)
		dom[n] = '.';
	dom[299] = '\0';
	snprintf(arg, sizeof(arg), "<u@%s>", dom);
	assert_int_equal(smtp_parse_path(arg, 0, &p, &err), -1);
}

/* ---------------- parameters ---------------- */

static void test_params_mail(void **state)
{
	struct smtp_path p;
	const char *err;

	(void)state;
	assert_int_equal(smtp_parse_path("<a@b.example> SIZE=12345 BODY=8BITMIME RET=HDRS "
	                                 "ENVID=QQ+2Bid+3D1 AUTH=<> SMTPUTF8", 1, &p, &err), 0);
	assert_int_equal(p.size, 12345);
	assert_int_equal(p.body, 8);
	assert_int_equal(p.ret, 2);
	assert_string_equal(p.envid, "QQ+id=1");
	assert_int_equal(p.smtputf8, 1);
	assert_int_equal(smtp_parse_path("<> size=0 body=7bit ret=full  auth=a+40b.example  ",
	                     1, &p, &err), 0);
	assert_int_equal(p.is_null, 1);
	assert_int_equal(p.body, 7);
	assert_int_equal(p.ret, 1);
	assert_string_equal(p.addr, "");
	/* SIZE bounds: 2^53 ok, 2^53+1 and 2^64 overflow refused */
	assert_int_equal(smtp_parse_path("<a@b> SIZE=9007199254740992", 1, &p, &err), 0);
	assert_int_equal(p.size, UINT64_C(9007199254740992));
	assert_int_equal(smtp_parse_path("<a@b> SIZE=00000000000000000000000000042", 1, &p, &err), 0);
	assert_int_equal(p.size, 42);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=9007199254740993", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_int_equal(smtp_parse_path("<a@b> SIZE=18446744073709551616", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=184467440737095516160000", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=-1", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=1k", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE= 1", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_int_equal(smtp_parse_path("<a@b> SIZE=", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> BODY=BINARYMIME", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_int_equal(smtp_parse_path("<a@b> RET=NONE", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SMTPUTF8=yes", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	/* duplicates and unknown */
	assert_int_equal(smtp_parse_path("<a@b> SIZE=1 size=2", 1, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Duplicate parameter");
	assert_int_equal(smtp_parse_path("<a@b> SMTPUTF8 SMTPUTF8", 1, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Duplicate parameter");
	assert_int_equal(smtp_parse_path("<a@b> XFOO=1", 1, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Unsupported parameter");
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=NEVER", 1, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Unsupported parameter");
	assert_int_equal(smtp_parse_path("<a@b> =x", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter syntax");
	assert_int_equal(smtp_parse_path("<a@b> SI_ZE=1", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=1=2", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> SIZE=1\t", 1, &p, &err), -1);
	/* xtext decoding to control characters: refused, never stored */
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+0ARCPT", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_string_equal(p.envid, ""); /* nothing half-decoded is kept */
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+0D", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+00", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+7F", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+09", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+C3+A9", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+4", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ENVID=abc+G0", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> AUTH=x+0Ay", 1, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_int_equal(smtp_parse_path("<a@b> AUTH=x+0Dy", 1, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> AUTH=x+00y", 1, &p, &err), -1);
	/* ENVID of 100 chars fits, 101 does not */
	{
		char arg[300];
		size_t n = (size_t)snprintf(arg, sizeof(arg), "<a@b> ENVID=");

		memset(arg + n, 'e', 100);
		arg[n + 100] = '\0';
		assert_int_equal(smtp_parse_path(arg, 1, &p, &err), 0);
		assert_int_equal(strlen(p.envid), 100);
		arg[n + 100] = 'e';
		arg[n + 101] = '\0';
		assert_int_equal(smtp_parse_path(arg, 1, &p, &err), -1);
	}
}

static void test_params_rcpt(void **state)
{
	struct smtp_path p;
	const char *err;

	(void)state;
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=NEVER", 0, &p, &err), 0);
	assert_int_equal(p.notify, 1);
	assert_int_equal(smtp_parse_path("<a@b> notify=success,Failure,DELAY", 0, &p, &err), 0);
	assert_int_equal(p.notify, 2 | 4 | 8);
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=DELAY", 0, &p, &err), 0);
	assert_int_equal(p.notify, 8);
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=NEVER,DELAY", 0, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=SUCCESS,", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=,SUCCESS", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY=SOMETIMES", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> NOTIFY", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;x+2By+40d.example NOTIFY=FAILURE", 0, &p, &err), 0);
	assert_string_equal(p.orcpt, "rfc822;x+y@d.example");
	assert_int_equal(p.notify, 4);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=utf-8;j+C3+B6rg@d.example", 0, &p, &err), 0);
	assert_string_equal(p.orcpt, "utf-8;j\xc3\xb6rg@d.example");
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;a+0D+0AMAIL", 0, &p, &err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter value");
	assert_null(memchr(p.orcpt, '\r', sizeof(p.orcpt)));
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;a+0Ab", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;a+00b", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;+C3", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=;a@b", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rf/c;a@b", 0, &p, &err), -1);
	assert_int_equal(smtp_parse_path("<a@b> ORCPT=rfc822;a@b ORCPT=rfc822;a@b", 0, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Duplicate parameter");
	assert_int_equal(smtp_parse_path("<a@b> SIZE=10", 0, &p, &err), -1);
	assert_string_equal(err, "555 5.5.4 Unsupported parameter");
	assert_int_equal(smtp_parse_path("<postmaster> NOTIFY=NEVER", 0, &p, &err), 0);
	assert_string_equal(p.addr, "postmaster");
	assert_string_equal(p.domain, "");
}

/* ---------------- HELO and BDAT ---------------- */

static void test_helo(void **state)
{
	char big[300];

	(void)state;
	assert_int_equal(smtp_parse_helo("mail.example.com"), 0);
	assert_int_equal(smtp_parse_helo("Mail.Example.COM."), 0);
	assert_int_equal(smtp_parse_helo("localhost"), 0);
	assert_int_equal(smtp_parse_helo("MY_PC"), 0);
	assert_int_equal(smtp_parse_helo("[192.0.2.1]"), 0);
	assert_int_equal(smtp_parse_helo("[IPv6:::1]"), 0);
	assert_int_equal(smtp_parse_helo("b\xc3\xbc" "cher.example"), 0);
	assert_int_equal(smtp_parse_helo(""), -1);
	assert_int_equal(smtp_parse_helo("two words"), -1);
	assert_int_equal(smtp_parse_helo("a\tb"), -1);
	assert_int_equal(smtp_parse_helo("a\x01" "b"), -1);
	assert_int_equal(smtp_parse_helo("a..b"), -1);
	assert_int_equal(smtp_parse_helo("."), -1);
	assert_int_equal(smtp_parse_helo("-a.example"), -1);
	assert_int_equal(smtp_parse_helo("a;b"), -1);
	assert_int_equal(smtp_parse_helo("$(id)"), -1);
	assert_int_equal(smtp_parse_helo("[1.2.3.999]"), -1);
	assert_int_equal(smtp_parse_helo("[x:y]"), -1);
	assert_int_equal(smtp_parse_helo("\xc0\xaf"), -1);
	memset(big, 'a', sizeof(big));
	for (size_t i = 60; i < sizeof(big); i += 60)
		big[i] = '.';
	big[255] = '\0';
	assert_int_equal(smtp_parse_helo(big), 0);
	big[255] = 'a';
	big[256] = '\0';
	assert_int_equal(smtp_parse_helo(big), -1);
	big[256] = 'a';
	big[299] = '\0';
	assert_int_equal(smtp_parse_helo(big), -1);
}

static void test_bdat_cmd(void **state)
{
	uint64_t n = 99;
	int last = 99;

	(void)state;
	assert_int_equal(smtp_parse_bdat("100", &n, &last), 0);
	assert_int_equal(n, 100);
	assert_int_equal(last, 0);
	assert_int_equal(smtp_parse_bdat("0 LAST", &n, &last), 0);
	assert_int_equal(n, 0);
	assert_int_equal(last, 1);
	assert_int_equal(smtp_parse_bdat("  42   last  ", &n, &last), 0);
	assert_int_equal(n, 42);
	assert_int_equal(last, 1);
	assert_int_equal(smtp_parse_bdat("9007199254740992 LaSt", &n, &last), 0);
	assert_int_equal(n, UINT64_C(9007199254740992));
	assert_int_equal(smtp_parse_bdat("9007199254740993", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("18446744073709551617", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("LAST", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("-1", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10 LASTX", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10 LAS", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10 LAST x", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10x", &n, &last), -1);
	assert_int_equal(smtp_parse_bdat("10 20", &n, &last), -1);
}

/* ---------------- DATA state machine ---------------- */

struct sink {
	char *buf;
	size_t len, cap;
	size_t calls;
};

static void sink_out(void *ctx, const char *p, size_t n)
{
	struct sink *s = ctx;

	assert_true(n > 0);
	if (s->len + n + 1 > s->cap) {
		s->cap = (s->len + n + 1) * 2;
		s->buf = xrealloc(s->buf, s->cap);
	}
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	s->buf[s->len] = '\0';
	s->calls++;
}

struct run {
	struct sink sink;
	struct smtp_data d;
	size_t consumed;
	int done;
};

/* Feeds in[0..len) cut at the given positions (ascending); stops at done. */
static void data_run(const char *in, size_t len, uint64_t max, const size_t *cuts, size_t ncuts,
    struct run *r)
{
	size_t pos = 0, k;

	memset(r, 0, sizeof(*r));
	smtp_data_init(&r->d, max);
	for (k = 0; k <= ncuts && !r->done; k++) {
		size_t end = k < ncuts ? cuts[k] : len;
		size_t got;

		assert_true(end >= pos);
		got = smtp_data_feed(&r->d, in + pos, end - pos, &r->done, sink_out, &r->sink);
		if (!r->done)
			assert_int_equal(got, end - pos);
		r->consumed += got;
		pos = end;
	}
}

static void run_free(struct run *r)
{
	xfree(&r->sink.buf);
}

static void run_same(const struct run *a, const struct run *b)
{
	assert_int_equal(a->sink.len, b->sink.len);
	if (a->sink.len > 0)
		assert_memory_equal(a->sink.buf, b->sink.buf, a->sink.len);
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->done, b->done);
	assert_int_equal(a->d.size, b->d.size);
	assert_int_equal(a->d.too_big, b->d.too_big);
	assert_int_equal(a->d.nul, b->d.nul);
	assert_int_equal(a->d.bare_lf, b->d.bare_lf);
	assert_int_equal(a->d.bare_cr, b->d.bare_cr);
	assert_int_equal(a->d.in_header, b->d.in_header);
	assert_int_equal(a->d.hops, b->d.hops);
}

/* Runs in whole, byte by byte, split at every position and (for short
 * inputs) at every pair of positions; all must agree. Returns the whole run
 * in *whole (caller frees). */
static void data_check_splits(const char *in, size_t len, uint64_t max, struct run *whole)
{
	struct run r;
	size_t *cuts = xmalloc((len + 1) * sizeof(size_t));
	size_t i, j;

	data_run(in, len, max, NULL, 0, whole);
	assert_int_equal(whole->d.size, whole->sink.len);
	for (i = 0; i < len; i++)
		cuts[i] = i + 1;
	data_run(in, len, max, cuts, len, &r);
	run_same(whole, &r);
	run_free(&r);
	for (i = 0; i <= len; i++) {
		data_run(in, len, max, &i, 1, &r);
		run_same(whole, &r);
		run_free(&r);
	}
	if (len <= 160) {
		for (i = 0; i <= len; i++) {
			for (j = i; j <= len; j++) {
				cuts[0] = i;
				cuts[1] = j;
				data_run(in, len, max, cuts, 2, &r);
				run_same(whole, &r);
				run_free(&r);
			}
		}
	}
	xfree(&cuts);
}

static void data_expect(const char *in, size_t len, uint64_t max, const char *out, size_t outlen,
    size_t consumed, int done)
{
	struct run w;

	data_check_splits(in, len, max, &w);
	if (w.sink.len != outlen || (outlen && memcmp(w.sink.buf, out, outlen) != 0))
		print_error("out [%.*s] expected [%.*s]\n", (int)w.sink.len, w.sink.buf ? w.sink.buf : "",
		    (int)outlen, out);
	assert_int_equal(w.sink.len, outlen);
	if (outlen > 0)
		assert_memory_equal(w.sink.buf, out, outlen);
	assert_int_equal(w.consumed, consumed);
	assert_int_equal(w.done, done);
	assert_int_equal(w.d.size, outlen);
	run_free(&w);
}

static void test_data_basic(void **state)
{
	struct run w;
	int done = 0;

	(void)state;
	/* ".\r\n" right away: empty message (the DATA line's CRLF is the first) */
	data_expect(S(".\r\n"), 0, "", 0, 3, 1);
	data_expect(S(".\r\nQUIT\r\n"), 0, "", 0, 3, 1);
	/* plain message, trailing bytes left unconsumed */
	data_expect(S("Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"), 0, S("Subject: hi\n\nbody\n"),
	    sizeof("Subject: hi\r\n\r\nbody\r\n.\r\n") - 1, 1);
	/* not finished yet */
	data_expect(S("abc\r\n.\r"), 0, S("abc\n"), 7, 0);
	data_expect(S("abc\r\n."), 0, S("abc\n"), 6, 0);
	data_expect(S("abc\r"), 0, S("abc"), 4, 0);
	/* dot-unstuffing on CRLF and bare-LF lines */
	data_expect(S("..foo\r\n.bar\r\n...\r\n..\r\n.\r\n"), 0, S(".foo\nbar\n..\n.\n"), 25, 1);
	data_expect(S("a\n..b\r\n.c\r\n.\r\n"), 0, S("a\n.b\nc\n"), 14, 1);
	/* after a bare-LF line, ".\r\n" is a lone-dot content line, not the end */
	data_expect(S("a\n.c\n.\r\n"), 0, S("a\nc\n.\n"), 8, 0);
	data_expect(S("a\r\n.\r\r\n.\r\n"), 0, S("a\n \n"), 10, 1);
	/* dots not at a line start stay */
	data_expect(S("a.b\r\nx .\r\n.\r\n"), 0, S("a.b\nx .\n"), 13, 1);
	/* bare CR -> space, bare LF kept as line end */
	data_expect(S("a\rb\nc\r\n.\r\n"), 0, S("a b\nc\n"), 10, 1);
	data_check_splits(S("a\rb\nc\r\n.\r\n"), 0, &w);
	assert_int_equal(w.d.bare_cr, 1);
	assert_int_equal(w.d.bare_lf, 1);
	assert_int_equal(w.d.nul, 0);
	run_free(&w);
	data_check_splits(S("a\r\nb\r\n.\r\n"), 0, &w);
	assert_int_equal(w.d.bare_cr, 0);
	assert_int_equal(w.d.bare_lf, 0);
	run_free(&w);
	/* CR CR LF: the first CR is bare */
	data_expect(S("a\r\r\n.\r\n"), 0, S("a \n"), 7, 1);
	/* NUL dropped and flagged */
	data_expect(S("a\0b\0\r\n\0\r\n.\r\n"), 0, S("ab\n\n"), 12, 1);
	data_check_splits(S("a\0b\r\n.\r\n"), 0, &w);
	assert_int_equal(w.d.nul, 1);
	run_free(&w);
	/* 8-bit bytes pass through */
	data_expect(S("\xc3\xa9\xff\r\n.\r\n"), 0, S("\xc3\xa9\xff\n"), 8, 1);

	/* after done, feed consumes nothing */
	smtp_data_init(&w.d, 0);
	assert_int_equal(smtp_data_feed(&w.d, S(".\r\n"), &done, NULL, NULL), 3);
	assert_int_equal(done, 1);
	done = 0;
	assert_int_equal(smtp_data_feed(&w.d, S("more\r\n.\r\n"), &done, NULL, NULL), 0);
	assert_int_equal(done, 1);
}

/* The smuggling battery: each variant is content, the real end is later. */
static void test_data_smuggling(void **state)
{
	static const struct {
		const char *v;
		size_t vlen;
		const char *mid; /* how the variant appears in the output */
	} vars[] = {
		{ S("\n.\n"), "hello\n.\n" },
		{ S("\n.\r\n"), "hello\n.\n" },
		{ S("\r\n.\n"), "hello\n.\n" },
		{ S("\r.\r\n"), "hello .\n" },
		{ S("\r\n.\r"), "hello\n " },
		{ S("\r.\r"), "hello . " },
		{ S("\n.\r"), "hello\n " },
		{ S("\r\n\0.\r\n"), "hello\n.\n" },
		{ S("\n\0.\r\n"), "hello\n.\n" },
		{ S("\r\n.\0\r\n"), "hello\n\n" },
	};
	static const char head[] = "From: a@b\r\nSubject: t\r\n\r\nhello";
	static const char smuggled[] = "MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\n"
	                               "DATA\r\nSubject: evil\r\n\r\nevil";
	static const char tail[] = "\r\n.\r\nQUIT\r\n";
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
		char in[512], exp[512];
		size_t n = 0, en;
		struct run w;

		memcpy(in + n, head, sizeof(head) - 1);
		n += sizeof(head) - 1;
		memcpy(in + n, vars[i].v, vars[i].vlen);
		n += vars[i].vlen;
		memcpy(in + n, smuggled, sizeof(smuggled) - 1);
		n += sizeof(smuggled) - 1;
		memcpy(in + n, tail, sizeof(tail) - 1);
		n += sizeof(tail) - 1;

		en = (size_t)snprintf(exp, sizeof(exp), "From: a@b\nSubject: t\n\n%s"
		    "MAIL FROM:<evil@x.example>\nRCPT TO:<victim@y.example>\nDATA\nSubject: evil\n\nevil\n",
		    vars[i].mid);
		data_check_splits(in, n, 0, &w);
		if (w.sink.len != en || memcmp(w.sink.buf, exp, en) != 0)
			print_error("variant %zu: got [%.*s]\n", i, (int)w.sink.len, w.sink.buf);
		assert_int_equal(w.done, 1);
		assert_int_equal(w.consumed, n - (sizeof("QUIT\r\n") - 1));
		assert_int_equal(w.sink.len, en);
		assert_memory_equal(w.sink.buf, exp, en);
		assert_non_null(strstr(w.sink.buf, "MAIL FROM:<evil@x.example>"));
		run_free(&w);
	}
	/* variants right at the start of the data (after the DATA line's CRLF) */
	data_expect(S(".\nMAIL\r\n.\r\n"), 0, S(".\nMAIL\n"), 11, 1);
	data_expect(S(".\rMAIL\r\n.\r\n"), 0, S(" MAIL\n"), 11, 1);
	data_expect(S("\0.\r\nMAIL\r\n.\r\n"), 0, S(".\nMAIL\n"), 13, 1);
	data_expect(S("\n.\r\nMAIL\r\n.\r\n"), 0, S("\n.\nMAIL\n"), 13, 1);
	/* a bare-LF line followed by a proper CRLF line and the real end */
	data_expect(S("a\n\r\n.\r\n"), 0, S("a\n\n"), 7, 1);
	/* "\n.\r\n" then ".\r\n": the lone-dot line ended with CRLF, so the next is the end */
	data_expect(S("a\n.\r\n.\r\nX"), 0, S("a\n.\n"), 8, 1);
}

static void test_data_size_limit(void **state)
{
	struct run w;

	(void)state;
	data_check_splits(S("0123456789ABCDEF\r\nmore\r\n.\r\nQUIT\r\n"), 10, &w);
	assert_int_equal(w.done, 1);
	assert_int_equal(w.consumed, sizeof("0123456789ABCDEF\r\nmore\r\n.\r\n") - 1);
	assert_int_equal(w.d.too_big, 1);
	assert_int_equal(w.d.size, 10);
	assert_int_equal(w.sink.len, 10);
	assert_memory_equal(w.sink.buf, "0123456789", 10);
	run_free(&w);
	/* exactly at the limit is fine */
	data_check_splits(S("12345678\r\n.\r\n"), 9, &w);
	assert_int_equal(w.d.too_big, 0);
	assert_int_equal(w.d.size, 9);
	run_free(&w);
	data_check_splits(S("12345678\r\n.\r\n"), 8, &w);
	assert_int_equal(w.d.too_big, 1);
	assert_int_equal(w.d.size, 8);
	assert_int_equal(w.done, 1);
	run_free(&w);
	/* a large body: bounded output, scanning goes on to the real end */
	{
		size_t n = 100000, i;
		char *big = xmalloc(n + 16);
		struct smtp_data d;
		struct sink s = { 0 };
		int done = 0;

		for (i = 0; i < n; i++)
			big[i] = (i % 80 == 79) ? '\n' : 'x';
		memcpy(big + n, "\r\n.\r\n", 5);
		smtp_data_init(&d, 4096);
		assert_int_equal(smtp_data_feed(&d, big, n + 5, &done, sink_out, &s), n + 5);
		assert_int_equal(done, 1);
		assert_int_equal(d.too_big, 1);
		assert_int_equal(s.len, 4096);
		assert_int_equal(d.size, 4096);
		xfree(&s.buf);
		xfree(&big);
	}
}

static void test_data_hops(void **state)
{
	static const char msg[] =
	    "Received: from a\r\n"
	    "received: from b\r\n"
	    "\tby c\r\n"
	    "X-Received: no\r\n"
	    "RECEIVED:from d\r\n"
	    "Receive: no\r\n"
	    " Received: continuation, no\r\n"
	    "Subject: Received: no\r\n"
	    "\r\n"
	    "Received: in the body, no\r\n"
	    ".\r\n";
	struct run w;

	(void)state;
	data_check_splits(S(msg), 0, &w);
	assert_int_equal(w.done, 1);
	assert_int_equal(w.d.hops, 3);
	assert_int_equal(w.d.in_header, 0);
	run_free(&w);
	/* header not yet ended */
	data_check_splits(S("Received: x\r\nReceived: y\r\n"), 0, &w);
	assert_int_equal(w.done, 0);
	assert_int_equal(w.d.hops, 2);
	assert_int_equal(w.d.in_header, 1);
	run_free(&w);
	/* bare-LF empty line also ends the header */
	data_check_splits(S("A: b\n\nReceived: x\r\n.\r\n"), 0, &w);
	assert_int_equal(w.d.hops, 0);
	assert_int_equal(w.d.in_header, 0);
	run_free(&w);
	/* many hops counted, hops still counted past the size limit */
	{
		char buf[4000];
		size_t n = 0;
		int i;

		for (i = 0; i < 60; i++)
			n += (size_t)snprintf(buf + n, sizeof(buf) - n, "Received: hop %d\r\n", i);
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\nbody\r\n.\r\n");
		data_check_splits(buf, n, 100, &w);
		assert_int_equal(w.d.hops, 60);
		assert_int_equal(w.d.too_big, 1);
		assert_int_equal(w.done, 1);
		run_free(&w);
	}
}

/* ---------------- BDAT normalisation ---------------- */

static void bdat_run(const char *const *chunks, const size_t *lens, size_t n, uint64_t max,
    struct sink *s, struct smtp_data *d)
{
	size_t i;

	memset(s, 0, sizeof(*s));
	smtp_bdat_init(d, max);
	for (i = 0; i < n; i++)
		smtp_bdat_feed(d, chunks[i], lens[i], sink_out, s);
	smtp_bdat_last(d, sink_out, s);
}

static void bdat_expect_splits(const char *in, size_t len, uint64_t max, const char *out, size_t outlen)
{
	size_t i, j;

	for (i = 0; i <= len; i++) {
		for (j = i; j <= len; j++) {
			const char *ch[3] = { in, in + i, in + j };
			size_t ln[3] = { i, j - i, len - j };
			struct sink s;
			struct smtp_data d;

			bdat_run(ch, ln, 3, max, &s, &d);
			assert_int_equal(s.len, outlen);
			if (outlen > 0)
				assert_memory_equal(s.buf, out, outlen);
			assert_int_equal(d.size, outlen);
			xfree(&s.buf);
		}
	}
}

static void test_bdat_data(void **state)
{
	struct sink s;
	struct smtp_data d;

	(void)state;
	{
		const char *ch[] = { "Subject: x\r", "\n\r\nline\r", "\nbare\rcr\r" };
		size_t ln[] = { strlen(ch[0]), strlen(ch[1]), strlen(ch[2]) };

		bdat_run(ch, ln, 3, 0, &s, &d);
		assert_string_equal(s.buf, "Subject: x\n\nline\nbare cr \n");
		assert_int_equal(d.bare_cr, 1);
		assert_int_equal(d.in_header, 0);
		xfree(&s.buf);
	}
	/* CR at a chunk boundary followed by LF in the next chunk is a CRLF */
	{
		const char *ch[] = { "a\r", "\nb" };
		size_t ln[] = { 2, 2 };

		bdat_run(ch, ln, 2, 0, &s, &d);
		assert_string_equal(s.buf, "a\nb\n");
		assert_int_equal(d.bare_cr, 0);
		xfree(&s.buf);
	}
	/* dots are not special in BDAT */
	bdat_expect_splits(S(".\r\n..\r\n.x\r\n"), 0, S(".\n..\n.x\n"));
	bdat_expect_splits(S("a\r\n.\r\nMAIL FROM:<x@y>\r\n"), 0, S("a\n.\nMAIL FROM:<x@y>\n"));
	bdat_expect_splits(S("a\rb\nc\0d\r\r\n\r"), 0, S("a b\ncd \n \n"));
	bdat_expect_splits(S("Received: a\r\nReceived: b\r\n\r\nx"), 10, S("Received: "));
	/* the last line always ends with a line end, one added is not counted
	 * against the limit; an empty message stays empty */
	bdat_expect_splits(S("a\r\n\r\nbody"), 0, S("a\n\nbody\n"));
	bdat_expect_splits(S("abc"), 3, S("abc\n"));
	bdat_expect_splits(S("abc\r\n"), 0, S("abc\n"));
	bdat_expect_splits(S(""), 0, S(""));
	{
		const char *ch[] = { "Received: a\r\nreceived: b\r\n\r\nReceived: c\r\n" };
		size_t ln[] = { strlen(ch[0]) };

		bdat_run(ch, ln, 1, 10, &s, &d);
		assert_int_equal(d.hops, 2);
		assert_int_equal(d.too_big, 1);
		assert_int_equal(d.size, 10);
		xfree(&s.buf);
	}
	{
		const char *ch[] = { "a\0b\n" };
		size_t ln[] = { 4 };

		bdat_run(ch, ln, 1, 0, &s, &d);
		assert_string_equal(s.buf, "ab\n");
		assert_int_equal(d.nul, 1);
		assert_int_equal(d.bare_lf, 1);
		xfree(&s.buf);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_command_verbs),
		cmocka_unit_test(test_command_syntax),
		cmocka_unit_test(test_command_limits),
		cmocka_unit_test(test_path_ok),
		cmocka_unit_test(test_path_bad),
		cmocka_unit_test(test_path_lengths),
		cmocka_unit_test(test_params_mail),
		cmocka_unit_test(test_params_rcpt),
		cmocka_unit_test(test_helo),
		cmocka_unit_test(test_bdat_cmd),
		cmocka_unit_test(test_data_basic),
		cmocka_unit_test(test_data_smuggling),
		cmocka_unit_test(test_data_size_limit),
		cmocka_unit_test(test_data_hops),
		cmocka_unit_test(test_bdat_data),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
