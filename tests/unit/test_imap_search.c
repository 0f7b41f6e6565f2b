/* Unit tests for src/imap/imap_search.c: every SEARCH key the parser knows,
 * sequence and UID sets, NOT / OR / parentheses, the lazy accessors, and
 * malformed programs (refused with BAD, or NO [BADCHARSET]). The arguments
 * come from imap_cmd_parse(), as in imapd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imap_search.h"
#include "lib/util.h"

/* ---- a test message ---- */

struct tmsg {
	const char *text;          /* NULL: the file cannot be read */
	uint64_t size;
	int size_fails;
	time_t idate;
	int n_size, n_idate, n_text;   /* accessor calls */
};

static int t_size(void *arg, uint64_t *size_r)
{
	struct tmsg *t = arg;
	t->n_size++;
	if (t->size_fails)
		return -1;
	*size_r = t->size;
	return 0;
}

static time_t t_idate(void *arg)
{
	struct tmsg *t = arg;
	t->n_idate++;
	return t->idate;
}

static int t_text(void *arg, const char **data_r, size_t *len_r, size_t *body_off_r)
{
	struct tmsg *t = arg;
	t->n_text++;
	if (t->text == NULL)
		return -1;
	const char *e = strstr(t->text, "\r\n\r\n");
	*data_r = t->text;
	*len_r = strlen(t->text);
	*body_off_r = e != NULL ? (size_t)(e - t->text) + 4 : *len_r;
	return 0;
}

static const char MSG1[] =
    "Date: Tue, 1 Feb 1994 21:52:25 -0800\r\n"
    "From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
    "Subject: afternoon meeting\r\n"
    "To: mooch@owatagu.example\r\n"
    "Cc: Carol <carol@example.org>\r\n"
    "Bcc: hidden@example.net\r\n"
    "X-Priority: High\r\n"
    "X-Empty:\r\n"
    "\r\n"
    "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

static const char MSG2[] =
    "Date: 3 Mar 05 10:00:00 +0000\r\n"
    "From: alice@example.com\r\n"
    "Subject: Re: lunch\r\n"
    "\r\n"
    "Body with the word Meeting in it\r\n";

static const char MSG3[] =        /* no Date, unparsable headers for SENT* */
    "From: bob@example.com\r\n"
    "\r\n"
    "plain\r\n";

/* ---- helpers ---- */

#define STAR_SEQ 10
#define STAR_UID 500

/* Parses "SEARCH <prog>"; returns the imap_search_parse() result. */
static int parse(const char *prog, struct imap_search_key **k, const char **err)
{
	char buf[4096];
	struct imap_cmd c;
	const char *perr;
	int n = snprintf(buf, sizeof(buf), "t SEARCH%s%s\r\n", prog[0] != '\0' ? " " : "", prog);
	assert_true(n > 0 && (size_t)n < sizeof(buf));
	if (imap_cmd_parse(buf, (size_t)n, &c, &perr) < 0)
		fail_msg("not tokenized: %s (%s)", prog, perr);
	*err = NULL;
	int r = imap_search_parse(c.args, c.n_args, STAR_SEQ, STAR_UID, k, err);
	imap_cmd_free(&c);
	if (r != IMAP_SEARCH_OK) {
		assert_null(*k);
		assert_non_null(*err);
	} else {
		assert_non_null(*k);
	}
	return r;
}

static int match_msg(const char *prog, uint32_t seq, uint32_t uid, unsigned flags, struct tmsg *t)
{
	struct imap_search_key *k;
	const char *err;
	if (parse(prog, &k, &err) != IMAP_SEARCH_OK)
		fail_msg("program refused: %s (%s)", prog, err);
	struct imap_search_msg m = { seq, uid, flags, t, t_size, t_idate, t_text };
	int r = imap_search_match(k, &m);
	imap_search_free(&k);
	assert_null(k);
	return r;
}

/* matches with message 1 (seq 3, uid 103), the given flags */
static int match(const char *prog, unsigned flags)
{
	struct tmsg t = { MSG1, 1234, 0, 0, 0, 0, 0 };
	t.idate = 760060800 + 13 * 3600;    /* 1-Feb-1994 13:00 UTC */
	return match_msg(prog, 3, 103, flags, &t);
}

static void expect_bad(const char *prog, const char *want)
{
	struct imap_search_key *k = (struct imap_search_key *)1;
	const char *err;
	int r = parse(prog, &k, &err);
	if (r != IMAP_SEARCH_BAD)
		fail_msg("accepted: %s", prog);
	if (want != NULL)
		assert_string_equal(err, want);
}

/* ---- the keys ---- */

static void test_all(void **state)
{
	(void)state;
	assert_true(match("ALL", 0));
	assert_true(match("all", IMAP_FL_SEEN));
}

static void test_flags(void **state)
{
	(void)state;
	static const struct { const char *key; unsigned flag; } keys[] = {
		{ "ANSWERED", IMAP_FL_ANSWERED }, { "DELETED", IMAP_FL_DELETED }, { "DRAFT", IMAP_FL_DRAFT },
		{ "FLAGGED", IMAP_FL_FLAGGED }, { "SEEN", IMAP_FL_SEEN }, { "RECENT", IMAP_FL_RECENT },
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		char un[32];
		snprintf(un, sizeof(un), "UN%s", keys[i].key);
		assert_true(match(keys[i].key, keys[i].flag));
		assert_true(match(keys[i].key, IMAP_FL_STORED | IMAP_FL_RECENT));
		assert_false(match(keys[i].key, 0));
		assert_false(match(keys[i].key, (IMAP_FL_STORED | IMAP_FL_RECENT) & ~keys[i].flag));
		if (keys[i].flag == IMAP_FL_RECENT)
			continue;      /* there is no UNRECENT */
		assert_false(match(un, keys[i].flag));
		assert_true(match(un, 0));
		assert_true(match(un, IMAP_FL_STORED & ~keys[i].flag));
	}
	expect_bad("UNRECENT", "Invalid search key");
}

static void test_new_old(void **state)
{
	(void)state;
	assert_true(match("NEW", IMAP_FL_RECENT));
	assert_false(match("NEW", IMAP_FL_RECENT | IMAP_FL_SEEN));
	assert_false(match("NEW", 0));
	assert_true(match("OLD", 0));
	assert_true(match("OLD", IMAP_FL_SEEN));
	assert_false(match("OLD", IMAP_FL_RECENT));
}

static void test_keyword(void **state)
{
	(void)state;
	/* keywords are not kept: KEYWORD never matches, UNKEYWORD always */
	assert_false(match("KEYWORD $Forwarded", 0));
	assert_false(match("KEYWORD $Forwarded", IMAP_FL_STORED));
	assert_true(match("UNKEYWORD $Forwarded", 0));
	assert_true(match("unkeyword x", IMAP_FL_STORED));
	expect_bad("KEYWORD", "Invalid search key");
	expect_bad("UNKEYWORD", "Invalid search key");
}

static void test_size(void **state)
{
	(void)state;
	assert_true(match("LARGER 1233", 0));
	assert_false(match("LARGER 1234", 0));
	assert_true(match("SMALLER 1235", 0));
	assert_false(match("SMALLER 1234", 0));
	assert_true(match("LARGER 0", 0));
	assert_false(match("SMALLER 0", 0));
	/* the size cannot be found out: neither matches */
	struct tmsg t = { MSG1, 10, 1, 0, 0, 0, 0 };
	assert_false(match_msg("LARGER 1", 1, 1, 0, &t));
	assert_false(match_msg("SMALLER 100", 1, 1, 0, &t));
	assert_true(match_msg("NOT LARGER 1", 1, 1, 0, &t));
	expect_bad("LARGER", "Invalid search key");
	expect_bad("LARGER abc", "Invalid search key");
	expect_bad("SMALLER -1", "Invalid search key");
	expect_bad("SMALLER 12x", "Invalid search key");
	expect_bad("LARGER 99999999999999999999", "Invalid search key");
}

static void test_internal_dates(void **state)
{
	(void)state;
	/* the internal date is 1-Feb-1994 13:00 UTC; days are UTC days */
	assert_true(match("ON 1-Feb-1994", 0));
	assert_false(match("ON 2-Feb-1994", 0));
	assert_false(match("ON 31-Jan-1994", 0));
	assert_true(match("BEFORE 2-Feb-1994", 0));
	assert_false(match("BEFORE 1-Feb-1994", 0));
	assert_true(match("SINCE 1-Feb-1994", 0));
	assert_true(match("SINCE 31-Jan-1994", 0));
	assert_false(match("SINCE 2-Feb-1994", 0));
	assert_true(match("ON \"01-Feb-1994\"", 0));
	assert_true(match("on 1-feb-1994", 0));
	expect_bad("ON", "Invalid search key");
	expect_bad("BEFORE 1994-02-01", "Invalid search key");
	expect_bad("SINCE 32-Feb-1994", NULL);
	expect_bad("SINCE \"1-Feb-1994 10:00:00 +0000\"", "Invalid search key");
}

static void test_sent_dates(void **state)
{
	(void)state;
	/* Date: Tue, 1 Feb 1994 21:52:25 -0800: the day as written, zone ignored */
	assert_true(match("SENTON 1-Feb-1994", 0));
	assert_false(match("SENTON 2-Feb-1994", 0));
	assert_true(match("SENTBEFORE 2-Feb-1994", 0));
	assert_false(match("SENTBEFORE 1-Feb-1994", 0));
	assert_true(match("SENTSINCE 1-Feb-1994", 0));
	assert_false(match("SENTSINCE 2-Feb-1994", 0));
	/* "3 Mar 05": two-digit years below 50 are 20xx, no weekday */
	struct tmsg t2 = { MSG2, 10, 0, 0, 0, 0, 0 };
	assert_true(match_msg("SENTON 3-Mar-2005", 1, 1, 0, &t2));
	/* no Date header or no file: no SENT* key matches */
	struct tmsg t3 = { MSG3, 10, 0, 0, 0, 0, 0 };
	assert_false(match_msg("SENTSINCE 1-Jan-1900", 1, 1, 0, &t3));
	assert_false(match_msg("SENTBEFORE 1-Jan-2100", 1, 1, 0, &t3));
	struct tmsg t4 = { NULL, 10, 0, 0, 0, 0, 0 };
	assert_false(match_msg("SENTON 1-Feb-1994", 1, 1, 0, &t4));
	assert_true(match_msg("NOT SENTON 1-Feb-1994", 1, 1, 0, &t4));
	expect_bad("SENTON", "Invalid search key");
	expect_bad("SENTSINCE yesterday", "Invalid search key");
}

static void test_address_headers(void **state)
{
	(void)state;
	assert_true(match("FROM foobar", 0));
	assert_true(match("FROM BLURDYBLOOP", 0));
	assert_true(match("FROM \"Fred Foobar\"", 0));
	assert_false(match("FROM mooch", 0));
	assert_true(match("TO mooch", 0));
	assert_false(match("TO carol", 0));
	assert_true(match("CC carol@example.org", 0));
	assert_false(match("CC hidden", 0));
	assert_true(match("BCC hidden", 0));
	assert_true(match("SUBJECT \"afternoon MEETING\"", 0));
	assert_false(match("SUBJECT lunch", 0));
	/* the empty string matches whenever the header is there */
	assert_true(match("SUBJECT \"\"", 0));
	struct tmsg t3 = { MSG3, 10, 0, 0, 0, 0, 0 };
	assert_false(match_msg("SUBJECT \"\"", 1, 1, 0, &t3));
	assert_false(match_msg("TO \"\"", 1, 1, 0, &t3));
	/* the body is not a header */
	assert_false(match("FROM Hello", 0));
	/* a literal value */
	assert_true(match("FROM {6}\r\nfoobar", 0));
	expect_bad("FROM", "Invalid search key");
	expect_bad("SUBJECT", "Invalid search key");
	expect_bad("TO (x)", "Invalid search key");
}

static void test_header(void **state)
{
	(void)state;
	assert_true(match("HEADER X-Priority high", 0));
	assert_true(match("HEADER x-priority \"\"", 0));
	assert_false(match("HEADER X-Priority low", 0));
	assert_false(match("HEADER X-Missing \"\"", 0));
	assert_true(match("HEADER X-Empty \"\"", 0));
	assert_true(match("HEADER Subject meeting", 0));
	expect_bad("HEADER", "Invalid search key");
	expect_bad("HEADER X-Priority", "Invalid search key");
	expect_bad("HEADER \"\" x", "Invalid search key");
	expect_bad("HEADER X-Priority: high", "Invalid search key");
}

static void test_body_text(void **state)
{
	(void)state;
	assert_true(match("BODY joe", 0));
	assert_true(match("BODY \"3:30 TOMORROW\"", 0));
	assert_false(match("BODY afternoon", 0));   /* only in a header */
	assert_true(match("TEXT afternoon", 0));
	assert_true(match("TEXT joe", 0));
	assert_true(match("TEXT \"X-Priority: High\"", 0));
	assert_false(match("TEXT nowhere", 0));
	assert_true(match("BODY \"\"", 0));
	struct tmsg t2 = { MSG2, 10, 0, 0, 0, 0, 0 };
	assert_true(match_msg("BODY meeting", 1, 1, 0, &t2));
	assert_false(match_msg("SUBJECT meeting", 1, 1, 0, &t2));
	/* the file cannot be read: no text key matches */
	struct tmsg t4 = { NULL, 10, 0, 0, 0, 0, 0 };
	assert_false(match_msg("BODY \"\"", 1, 1, 0, &t4));
	assert_false(match_msg("TEXT \"\"", 1, 1, 0, &t4));
	assert_false(match_msg("HEADER From \"\"", 1, 1, 0, &t4));
	expect_bad("BODY", "Invalid search key");
	expect_bad("TEXT", "Invalid search key");
}

/* ---- sets ---- */

static void test_sequence_sets(void **state)
{
	(void)state;
	struct tmsg t = { MSG1, 10, 0, 0, 0, 0, 0 };
	assert_true(match_msg("3", 3, 103, 0, &t));
	assert_false(match_msg("4", 3, 103, 0, &t));
	assert_true(match_msg("1:5", 3, 103, 0, &t));
	assert_true(match_msg("5:1", 3, 103, 0, &t));
	assert_true(match_msg("1,3,7", 3, 103, 0, &t));
	assert_false(match_msg("1,4:6", 3, 103, 0, &t));
	/* '*' is star_seq (10) */
	assert_true(match_msg("*", 10, 1, 0, &t));
	assert_false(match_msg("*", 9, 1, 0, &t));
	assert_true(match_msg("8:*", 9, 1, 0, &t));
	assert_false(match_msg("103", 3, 103, 0, &t));      /* a sequence set is not by uid */
	expect_bad("0", "Invalid search key");
	expect_bad("1:", "Invalid search key");
	expect_bad("1,,2", "Invalid search key");
	expect_bad("$", "Invalid search key");
	expect_bad("\"1:3\"", "Invalid search key");      /* a set is an atom */
}

static void test_uid_sets(void **state)
{
	(void)state;
	struct tmsg t = { MSG1, 10, 0, 0, 0, 0, 0 };
	assert_true(match_msg("UID 103", 3, 103, 0, &t));
	assert_false(match_msg("UID 3", 3, 103, 0, &t));
	assert_true(match_msg("UID 100:200", 3, 103, 0, &t));
	assert_true(match_msg("UID 1,103", 3, 103, 0, &t));
	/* '*' is star_uid (500) */
	assert_true(match_msg("UID *", 3, 500, 0, &t));
	assert_true(match_msg("UID 400:*", 3, 450, 0, &t));
	assert_false(match_msg("UID 400:*", 3, 501, 0, &t));
	expect_bad("UID", "Invalid search key");
	expect_bad("UID abc", "Invalid search key");
	expect_bad("UID 0", "Invalid search key");
}

/* ---- NOT, OR, parentheses ---- */

static void test_not_or_and(void **state)
{
	(void)state;
	assert_true(match("NOT SEEN", 0));
	assert_false(match("NOT SEEN", IMAP_FL_SEEN));
	assert_true(match("NOT NOT SEEN", IMAP_FL_SEEN));
	assert_true(match("OR SEEN FLAGGED", IMAP_FL_FLAGGED));
	assert_true(match("OR SEEN FLAGGED", IMAP_FL_SEEN));
	assert_false(match("OR SEEN FLAGGED", IMAP_FL_DRAFT));
	assert_true(match("OR OR SEEN FLAGGED DRAFT", IMAP_FL_DRAFT));
	/* top-level keys are ANDed */
	assert_true(match("SEEN FLAGGED", IMAP_FL_SEEN | IMAP_FL_FLAGGED));
	assert_false(match("SEEN FLAGGED", IMAP_FL_SEEN));
	assert_true(match("SEEN FROM foobar LARGER 10", IMAP_FL_SEEN));
	/* parentheses group */
	assert_true(match("(SEEN FLAGGED)", IMAP_FL_SEEN | IMAP_FL_FLAGGED));
	assert_false(match("(SEEN FLAGGED)", IMAP_FL_SEEN));
	assert_true(match("NOT (SEEN FLAGGED)", IMAP_FL_SEEN));
	assert_true(match("OR (SEEN FLAGGED) DRAFT", IMAP_FL_DRAFT));
	assert_true(match("OR (SEEN FLAGGED) (DRAFT DELETED)", IMAP_FL_SEEN | IMAP_FL_FLAGGED));
	assert_false(match("OR (SEEN FLAGGED) (DRAFT DELETED)", IMAP_FL_SEEN | IMAP_FL_DRAFT));
	assert_true(match("((((SEEN))))", IMAP_FL_SEEN));
	assert_true(match("(OR 1 2) UID 103", 0) == 0);
	assert_true(match("(OR 3 2) UID 103", 0));
	/* the current code accepts an empty group, which matches everything */
	assert_true(match("()", 0));
	assert_false(match("NOT ()", 0));
}

static void test_charset(void **state)
{
	(void)state;
	struct imap_search_key *k;
	const char *err;
	assert_true(match("CHARSET UTF-8 FROM foobar", 0));
	assert_true(match("CHARSET us-ascii ALL", 0));
	assert_true(match("CHARSET \"UTF-8\" ALL", 0));
	assert_int_equal(parse("CHARSET ISO-8859-1 ALL", &k, &err), IMAP_SEARCH_BADCHARSET);
	assert_int_equal(parse("CHARSET (UTF-8) ALL", &k, &err), IMAP_SEARCH_BADCHARSET);
	/* CHARSET with nothing after the charset: no keys */
	expect_bad("CHARSET UTF-8", "Missing search keys");
	/* CHARSET alone is taken as a key */
	expect_bad("CHARSET", "Invalid search key");
	/* only the first argument may be CHARSET */
	expect_bad("ALL CHARSET UTF-8", "Invalid search key");
}

/* ---- malformed programs ---- */

/* word repeated n times, then tail */
static void chain(char *buf, size_t cap, const char *word, int n, const char *tail)
{
	size_t o = 0;
	for (int i = 0; i < n; i++) {
		int r = snprintf(buf + o, cap - o, "%s", word);
		assert_true(r > 0 && (size_t)r < cap - o);
		o += (size_t)r;
	}
	int r = snprintf(buf + o, cap - o, "%s", tail);
	assert_true(r > 0 && (size_t)r < cap - o);
}

static void test_malformed(void **state)
{
	(void)state;
	expect_bad("", "Missing search keys");
	expect_bad("RETURN (MIN) ALL", "ESEARCH is not supported");
	expect_bad("RETURN", "ESEARCH is not supported");
	expect_bad("NOSUCHKEY", "Invalid search key");
	expect_bad("SEEN NOSUCHKEY", "Invalid search key");
	expect_bad("(SEEN NOSUCHKEY)", "Invalid search key");
	expect_bad("\"ALL\"", "Invalid search key");      /* keys are atoms */
	expect_bad("{3}\r\nALL", "Invalid search key");
	expect_bad("NOT", "Invalid search key");
	expect_bad("OR", "Invalid search key");
	expect_bad("OR SEEN", "Invalid search key");
	expect_bad("OR (SEEN)", "Invalid search key");
	expect_bad("NIL", "Invalid search key");
	expect_bad("MODSEQ 5", "Invalid search key");
	expect_bad("SAVE", "Invalid search key");
	/* NOT chains deeper than the parser's limit are refused */
	char buf[1024];
	chain(buf, sizeof(buf), "NOT ", 66, "ALL");
	expect_bad(buf, "Invalid search key");
	chain(buf, sizeof(buf), "NOT ", 64, "ALL");
	assert_true(match(buf, 0));
	chain(buf, sizeof(buf), "NOT ", 30, "SEEN");
	assert_true(match(buf, IMAP_FL_SEEN));
	/* OR chains count as nesting too */
	chain(buf, sizeof(buf), "OR SEEN ", 70, "ALL");
	expect_bad(buf, "Invalid search key");
}

/* ---- the accessors are asked only when a key needs them ---- */

static void test_lazy_accessors(void **state)
{
	(void)state;
	struct tmsg t = { MSG1, 1234, 0, 0, 0, 0, 0 };
	assert_true(match_msg("SEEN 3 UID 103 NEW NOT DELETED", 3, 103, IMAP_FL_SEEN, &t) == 0);
	assert_true(match_msg("SEEN 3 UID 103 NOT DELETED", 3, 103, IMAP_FL_SEEN, &t));
	assert_int_equal(t.n_size + t.n_idate + t.n_text, 0);
	assert_true(match_msg("LARGER 1", 3, 103, 0, &t));
	assert_int_equal(t.n_size, 1);
	assert_int_equal(t.n_text, 0);
	assert_true(match_msg("SINCE 1-Jan-1970", 3, 103, 0, &t));
	assert_int_equal(t.n_idate, 1);
	assert_int_equal(t.n_text, 0);
	/* AND stops at the first key that does not match */
	assert_false(match_msg("DELETED FROM foobar", 3, 103, 0, &t));
	assert_int_equal(t.n_text, 0);
	/* OR stops at the first key that matches */
	assert_true(match_msg("OR ALL BODY x", 3, 103, 0, &t));
	assert_int_equal(t.n_text, 0);
	assert_true(match_msg("FROM foobar", 3, 103, 0, &t));
	assert_int_equal(t.n_text, 1);
}

static void test_free_null(void **state)
{
	(void)state;
	struct imap_search_key *k = NULL;
	imap_search_free(&k);
	assert_null(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_all),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_new_old),
		cmocka_unit_test(test_keyword),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_internal_dates),
		cmocka_unit_test(test_sent_dates),
		cmocka_unit_test(test_address_headers),
		cmocka_unit_test(test_header),
		cmocka_unit_test(test_body_text),
		cmocka_unit_test(test_sequence_sets),
		cmocka_unit_test(test_uid_sets),
		cmocka_unit_test(test_not_or_and),
		cmocka_unit_test(test_charset),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_lazy_accessors),
		cmocka_unit_test(test_free_null),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
