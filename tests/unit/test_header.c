/* Unit tests for src/mail/header.c: the streamed header-section scanner
 * that smtpd runs on authenticated and locally injected mail. Every input is
 * fed whole, split at every position and byte by byte; the output must be
 * the same, with the marker of the end callback at the same place. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "lib/util.h"
#include "mail/header.h"

struct sink {
	char *buf;
	size_t n, cap;
	int ends;
};

static void sink_put(struct sink *k, const char *p, size_t n)
{
	if (k->n + n + 1 > k->cap) {
		k->cap = (k->n + n + 1) * 2;
		k->buf = xrealloc(k->buf, k->cap);
	}
	memcpy(k->buf + k->n, p, n);
	k->n += n;
	k->buf[k->n] = '\0';
}

static void out_cb(void *ctx, const char *p, size_t n)
{
	sink_put(ctx, p, n);
}

static void end_cb(void *ctx, const struct header_scan *h)
{
	struct sink *k = ctx;
	(void)h;
	k->ends++;
	sink_put(k, "<END>", 5);
}

/* Runs msg through a scanner in pieces of `step` bytes (0: split once at
 * `split`); returns the output (caller frees) and leaves the state in h. */
static char *run(struct header_scan *h, const char *msg, size_t split, size_t step)
{
	struct sink k = { 0 };
	size_t len = strlen(msg);

	sink_put(&k, "", 0);
	header_scan_init(h);
	if (step == 0) {
		header_scan_feed(h, msg, split, out_cb, end_cb, &k);
		header_scan_feed(h, msg + split, len - split, out_cb, end_cb, &k);
	} else {
		for (size_t i = 0; i < len; i += step)
			header_scan_feed(h, msg + i, len - i < step ? len - i : step, out_cb, end_cb,
			    &k);
	}
	header_scan_finish(h, out_cb, end_cb, &k);
	assert_int_equal(k.ends, 1);
	return k.buf;
}

/* Checks msg gives `want` at every split, and the counts. */
static struct header_scan *check(const char *msg, const char *want, int from, int sender, int date,
    int msgid, enum header_scan_end end)
{
	static struct header_scan h;
	size_t len = strlen(msg);

	for (size_t split = 0; split <= len + 1; split++) {
		char *got = split <= len ? run(&h, msg, split, 0) : run(&h, msg, 0, 1);
		if (strcmp(got, want) != 0)
			fail_msg("split %zu: got [%s], want [%s]", split, got, want);
		free(got);
		assert_int_equal(h.count[HEADER_FROM], from);
		assert_int_equal(h.count[HEADER_SENDER], sender);
		assert_int_equal(h.count[HEADER_DATE], date);
		assert_int_equal(h.count[HEADER_MESSAGE_ID], msgid);
		assert_int_equal(h.end, end);
	}
	return &h;
}

static void test_plain(void **state)
{
	(void)state;
	struct header_scan *h = check("From: Me <me@x>\nSubject: hi\n\nbody\nFrom: victim@y\n",
	    "From: Me <me@x>\nSubject: hi\n<END>\nbody\nFrom: victim@y\n", 1, 0, 0, 0,
	    HEADER_END_BLANK);
	assert_string_equal(h->from.buf, " Me <me@x>");
	assert_int_equal(h->fields, 2);
	h = check("Date: x\nMessage-ID: <a@b>\nmessage-id: <c@d>\nDATE: y\n\n",
	    "Date: x\nMessage-ID: <a@b>\nmessage-id: <c@d>\nDATE: y\n<END>\n", 0, 0, 2, 2,
	    HEADER_END_BLANK);
}

static void test_folded_and_obs_names(void **state)
{
	(void)state;
	struct header_scan *h = check("from : <victim@x>,\n\t\"Me\" <me@x>\nSENDER\t:me@x\n\nb\n",
	    "from : <victim@x>,\n\t\"Me\" <me@x>\nSENDER\t:me@x\n<END>\nb\n", 1, 1, 0, 0,
	    HEADER_END_BLANK);
	assert_string_equal(h->from.buf, " <victim@x>,\n\t\"Me\" <me@x>");
	assert_string_equal(h->sender.buf, "me@x");
	/* the second From: is counted, the first one's body is kept */
	h = check("From: me@x\nX: 1\nFrom: victim@y\n\n", "From: me@x\nX: 1\nFrom: victim@y\n<END>\n",
	    2, 0, 0, 0, HEADER_END_BLANK);
	assert_string_equal(h->from.buf, " me@x");
	/* names that only look like From: */
	check("From-X: a\nXFrom: b\nFro: c\n\n", "From-X: a\nXFrom: b\nFro: c\n<END>\n", 0, 0, 0, 0,
	    HEADER_END_BLANK);
}

static void test_no_body(void **state)
{
	(void)state;
	check("Subject: only headers\n", "Subject: only headers\n<END>", 0, 0, 0, 0, HEADER_END_EOF);
	check("", "<END>", 0, 0, 0, 0, HEADER_END_EOF);
	check("Subject: x\n\n", "Subject: x\n<END>\n", 0, 0, 0, 0, HEADER_END_BLANK);
	check("\nbody\n", "<END>\nbody\n", 0, 0, 0, 0, HEADER_END_BLANK);
	/* a last line without LF is ended before anything is added */
	check("Subject: x", "Subject: x\n<END>", 0, 0, 0, 0, HEADER_END_EOF);
}

static void test_nonheader_line_ends_headers(void **state)
{
	(void)state;
	/* a separator is inserted: the From: after it is body for every reader */
	check("From: me@x\ngarbage\nFrom: victim@y\n\nb\n",
	    "From: me@x\n<END>\ngarbage\nFrom: victim@y\n\nb\n", 1, 0, 0, 0, HEADER_END_NONHEADER);
	check("hello world\n", "<END>\nhello world\n", 0, 0, 0, 0, HEADER_END_NONHEADER);
	check(" continued\nFrom: v@y\n\n", "<END>\n continued\nFrom: v@y\n\n", 0, 0, 0, 0,
	    HEADER_END_NONHEADER);
	check("From victim@y Mon\nFrom: me@x\n", "<END>\nFrom victim@y Mon\nFrom: me@x\n", 0, 0, 0,
	    0, HEADER_END_NONHEADER);
	check(": x\n", "<END>\n: x\n", 0, 0, 0, 0, HEADER_END_NONHEADER);
	check("Fr om: x\n", "<END>\nFr om: x\n", 0, 0, 0, 0, HEADER_END_NONHEADER);
	check("S:1\nno colon", "S:1\n<END>\nno colon", 0, 0, 0, 0, HEADER_END_NONHEADER);
	check("\xc3\xa9: x\n", "<END>\n\xc3\xa9: x\n", 0, 0, 0, 0, HEADER_END_NONHEADER);
}

static void test_bounds(void **state)
{
	(void)state;
	struct header_scan *h = xmalloc(sizeof(*h));
	struct sink k = { 0 };
	char *big = xmalloc(HEADER_BODY_MAX + 64);

	/* a From: body over the bound is cut and flagged, and still passed on whole */
	header_scan_init(h);
	header_scan_feed(h, "From: ", 6, out_cb, end_cb, &k);
	memset(big, 'a', HEADER_BODY_MAX + 10);
	header_scan_feed(h, big, HEADER_BODY_MAX + 10, out_cb, end_cb, &k);
	header_scan_feed(h, "\n\n", 2, out_cb, end_cb, &k);
	header_scan_finish(h, out_cb, end_cb, &k);
	assert_true(h->from.too_long);
	assert_int_equal(h->from.len, HEADER_BODY_MAX);
	assert_int_equal(k.n, 6 + HEADER_BODY_MAX + 10 + 2 + 5);
	free(k.buf);
	memset(&k, 0, sizeof(k));

	/* a field name up to HEADER_NAME_MAX is a field, one byte more is not */
	header_scan_init(h);
	memset(big, 'X', HEADER_NAME_MAX);
	header_scan_feed(h, big, HEADER_NAME_MAX, out_cb, end_cb, &k);
	header_scan_feed(h, ": v\n", 4, out_cb, end_cb, &k);
	assert_int_equal(h->fields, 1);
	assert_int_equal(h->end, HEADER_END_NONE);
	header_scan_feed(h, big, HEADER_NAME_MAX + 1, out_cb, end_cb, &k);
	assert_int_equal(h->end, HEADER_END_NONHEADER);
	header_scan_finish(h, out_cb, end_cb, &k);
	assert_int_equal(k.ends, 1);
	assert_int_equal(k.n, HEADER_NAME_MAX + 4 + 5 + 1 + HEADER_NAME_MAX + 1);
	free(k.buf);
	free(big);
	free(h);
}

/* The in-memory field iterator: folds, CRLF, obsolete "NAME WSP:", the end
 * at the empty line, at a non-field line and at the end of the bytes. */
static void test_field_next(void **state)
{
	const char *m = "From: a@b\r\nSubject: x\n\ty\nX-A :v\n\nbody: no\n";
	size_t pos = 0, len = strlen(m);
	struct header_field f;

	(void)state;
	assert_int_equal(header_field_next(m, len, &pos, &f), 1);
	assert_true(header_field_is(m, &f, "from"));
	assert_int_equal(f.len, 11);
	assert_int_equal(header_field_next(m, len, &pos, &f), 1);
	assert_true(header_field_is(m, &f, "SUBJECT"));
	assert_int_equal(f.len, strlen("Subject: x\n\ty\n"));
	assert_int_equal(header_field_next(m, len, &pos, &f), 1);
	assert_true(header_field_is(m, &f, "X-A"));
	assert_false(header_field_is(m, &f, "X-AB"));
	assert_int_equal(header_field_next(m, len, &pos, &f), 0);
	assert_int_equal(m[pos], '\n');
	/* a line without ':' ends the section; so does the end of the bytes */
	pos = 0;
	assert_int_equal(header_field_next("To: x\nnot a field\n", 19, &pos, &f), 1);
	assert_int_equal(header_field_next("To: x\nnot a field\n", 19, &pos, &f), 0);
	assert_int_equal(pos, 6);
	pos = 0;
	assert_int_equal(header_field_next("To: x", 5, &pos, &f), 1);
	assert_int_equal(f.len, 5);
	assert_int_equal(header_field_next("To: x", 5, &pos, &f), 0);
	pos = 0;
	assert_int_equal(header_field_next("To", 2, &pos, &f), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_folded_and_obs_names),
		cmocka_unit_test(test_no_body),
		cmocka_unit_test(test_nonheader_line_ends_headers),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_field_next),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
