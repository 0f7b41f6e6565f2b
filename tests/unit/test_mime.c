/* Unit tests for src/mail/mime.c: real-world message shapes (nested
 * multipart, message/rfc822, broken boundaries) and the limits (100 levels,
 * 10,000 parts, linear time on hostile input). */
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
#include "mail/mime.h"

static struct mime_part *parse(const char *m, size_t *n, int *trunc)
{
	struct mime_part *r = mime_parse(m, strlen(m), n, trunc);
	assert_non_null(r);
	return r;
}

static void body_is(const char *m, const struct mime_part *p, const char *want)
{
	assert_int_equal(p->end_off - p->body_off, strlen(want));
	assert_memory_equal(m + p->body_off, want, strlen(want));
}

static void test_plain(void **state)
{
	(void)state;
	const char *m = "Subject: hi\r\nFrom: a@b\r\n\r\nline1\r\nline2\r\n";
	size_t n;
	struct mime_part *r = parse(m, &n, NULL);
	assert_int_equal(n, 1);
	assert_string_equal(r->type, "text");
	assert_string_equal(r->subtype, "plain");
	assert_string_equal(mime_param_get(r->params, r->n_params, "charset"), "us-ascii");
	body_is(m, r, "line1\r\nline2\r\n");
	assert_int_equal(r->body_lines, 2);
	mime_free(&r);
	assert_null(r);
}

static void test_no_body(void **state)
{
	(void)state;
	const char *m = "Subject: only a header\r\n";
	struct mime_part *r = parse(m, NULL, NULL);
	assert_int_equal(r->body_off, strlen(m));
	assert_int_equal(r->end_off, strlen(m));
	mime_free(&r);
	r = parse("", NULL, NULL);
	assert_int_equal(r->end_off, 0);
	mime_free(&r);
}

static void test_nested_multipart(void **state)
{
	(void)state;
	const char *m =
	    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
	    "\r\n"
	    "preamble\r\n"
	    "--outer\r\n"
	    "Content-Type: multipart/alternative; boundary=inner\r\n"
	    "\r\n"
	    "--inner\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\n"
	    "\r\n"
	    "plain text\r\n"
	    "--inner\r\n"
	    "Content-Type: text/html\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n"
	    "\r\n"
	    "<p>html</p>\r\n"
	    "--inner--\r\n"
	    "--outer\r\n"
	    "Content-Type: application/pdf; name=\"a b.pdf\"\r\n"
	    "Content-Disposition: attachment; filename=\"a b.pdf\"\r\n"
	    "Content-Transfer-Encoding: base64\r\n"
	    "\r\n"
	    "QUJD\r\n"
	    "--outer--\r\n"
	    "epilogue\r\n";
	size_t n;
	struct mime_part *r = parse(m, &n, NULL);
	assert_int_equal(n, 5);
	assert_string_equal(r->subtype, "mixed");
	assert_int_equal(r->n_children, 2);
	struct mime_part *alt = r->children;
	assert_string_equal(alt->subtype, "alternative");
	assert_int_equal(alt->n_children, 2);
	body_is(m, alt->children, "plain text");
	assert_string_equal(mime_param_get(alt->children->params, alt->children->n_params, "charset"), "utf-8");
	struct mime_part *html = alt->children->next;
	assert_string_equal(html->subtype, "html");
	assert_string_equal(html->encoding, "quoted-printable");
	body_is(m, html, "<p>html</p>");
	struct mime_part *pdf = alt->next;
	assert_string_equal(pdf->type, "application");
	assert_string_equal(pdf->disposition, "attachment");
	assert_string_equal(mime_param_get(pdf->disp_params, pdf->n_disp_params, "filename"), "a b.pdf");
	body_is(m, pdf, "QUJD");
	assert_int_equal(pdf->body_lines, 1);
	assert_null(pdf->next);
	mime_free(&r);
}

static void test_message_rfc822(void **state)
{
	(void)state;
	const char *m =
	    "Content-Type: multipart/mixed; boundary=b1\r\n"
	    "\r\n"
	    "--b1\r\n"
	    "\r\n"
	    "see attached\r\n"
	    "--b1\r\n"
	    "Content-Type: message/rfc822\r\n"
	    "\r\n"
	    "Subject: inner\r\n"
	    "Content-Type: multipart/mixed; boundary=b2\r\n"
	    "\r\n"
	    "--b2\r\n"
	    "\r\n"
	    "inner text\r\n"
	    "--b2--\r\n"
	    "--b1--\r\n";
	size_t n;
	struct mime_part *r = parse(m, &n, NULL);
	assert_int_equal(r->n_children, 2);
	struct mime_part *msg = r->children->next;
	assert_true(mime_is_message(msg));
	assert_int_equal(msg->n_children, 1);
	struct mime_part *inner = msg->children;
	char *subj = mime_header_get(m + inner->hdr_off, inner->body_off - inner->hdr_off, "subject", 100);
	assert_string_equal(subj, "inner");
	xfree(&subj);
	assert_true(mime_is_multipart(inner));
	assert_int_equal(inner->n_children, 1);
	body_is(m, inner->children, "inner text");
	/* the message/rfc822 body is the whole inner message */
	assert_int_equal(msg->body_off, inner->hdr_off);
	assert_int_equal(msg->end_off, inner->end_off);
	mime_free(&r);
}

static void test_broken_boundaries(void **state)
{
	(void)state;
	/* no closing delimiter, a boundary that never appears, LF-only lines */
	const char *m1 =
	    "Content-Type: multipart/mixed; boundary=zz\n"
	    "\n"
	    "--zz\n"
	    "\n"
	    "part one\n"
	    "--zz\n"
	    "Content-Type: text/plain\n"
	    "\n"
	    "part two, never closed\n";
	size_t n;
	struct mime_part *r = parse(m1, &n, NULL);
	assert_int_equal(r->n_children, 2);
	body_is(m1, r->children, "part one");
	assert_int_equal(r->children->next->end_off, strlen(m1));
	mime_free(&r);

	const char *m2 = "Content-Type: multipart/mixed; boundary=nothere\r\n\r\njust text\r\n";
	r = parse(m2, &n, NULL);
	assert_int_equal(r->n_children, 0);
	assert_true(mime_is_multipart(r));
	mime_free(&r);

	/* missing boundary parameter, garbage Content-Type */
	const char *m3 = "Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nbody\r\n";
	r = parse(m3, &n, NULL);
	assert_int_equal(r->n_children, 0);
	mime_free(&r);
	const char *m4 = "Content-Type: ;;;/\r\n\r\nbody\r\n";
	r = parse(m4, &n, NULL);
	assert_string_equal(r->type, "text");
	mime_free(&r);

	/* boundary cuts a part's header; an outer boundary closes inner parts */
	const char *m5 =
	    "Content-Type: multipart/mixed; boundary=o\r\n\r\n"
	    "--o\r\n"
	    "Content-Type: multipart/related; boundary=i\r\n\r\n"
	    "--i\r\n"
	    "Content-Type: text/plain\r\n"
	    "--o\r\n"
	    "\r\nlast\r\n"
	    "--o--\r\n";
	r = parse(m5, &n, NULL);
	assert_int_equal(r->n_children, 2);
	assert_int_equal(r->children->n_children, 1);
	body_is(m5, r->children->next, "last");
	mime_free(&r);
}

static void test_header_folding(void **state)
{
	(void)state;
	const char *h = "Subject: a\r\n  folded\r\n\tvalue\r\nX: y\r\n\r\nSubject: body\r\n";
	char *v = mime_header_get(h, strlen(h), "SUBJECT", 1000);
	assert_string_equal(v, "a  folded\tvalue");
	xfree(&v);
	assert_null(mime_header_get(h, strlen(h), "Missing", 10));
	v = mime_header_get(h, strlen(h), "subject", 3);
	assert_string_equal(v, "a");
	xfree(&v);
	const char *m = "Content-Type: text/plain;\r\n charset=\"iso-8859-1\" (comment);\r\n format=flowed\r\n\r\nx";
	struct mime_part *r = parse(m, NULL, NULL);
	assert_string_equal(mime_param_get(r->params, r->n_params, "charset"), "iso-8859-1");
	assert_string_equal(mime_param_get(r->params, r->n_params, "format"), "flowed");
	mime_free(&r);
}

static void test_digest_default(void **state)
{
	(void)state;
	const char *m =
	    "Content-Type: multipart/digest; boundary=d\r\n\r\n"
	    "--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n"
	    "--d--\r\n";
	struct mime_part *r = parse(m, NULL, NULL);
	assert_true(mime_is_message(r->children));
	assert_int_equal(r->children->n_children, 1);
	mime_free(&r);
}

/* Builds N nested multiparts, each with its own boundary. */
static char *nested(int levels, size_t *len_r)
{
	size_t cap = (size_t)levels * 120 + 100, o = 0;
	char *b = xmalloc(cap);
	for (int i = 0; i < levels; i++) {
		int w = snprintf(b + o, cap - o, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
		assert_true(w > 0 && (size_t)w < cap - o);
		o += (size_t)w;
	}
	int w = snprintf(b + o, cap - o, "\r\ndeep\r\n");
	o += (size_t)w;
	*len_r = o;
	return b;
}

static void test_depth_limit(void **state)
{
	(void)state;
	size_t len, n;
	int trunc;
	char *m = nested(1000, &len);
	struct mime_part *r = mime_parse(m, len, &n, &trunc);
	assert_non_null(r);
	assert_int_equal(trunc, 1);
	int depth = 0;
	for (struct mime_part *p = r; p->children != NULL; p = p->children)
		depth++;
	assert_true(depth <= MIME_MAX_DEPTH);
	mime_free(&r);
	xfree(&m);
}

static void test_parts_limit(void **state)
{
	(void)state;
	size_t cap = 100000 * 12 + 200, o = 0, n;
	char *m = xmalloc(cap);
	o += (size_t)snprintf(m, cap, "Content-Type: multipart/mixed; boundary=p\r\n\r\n");
	for (int i = 0; i < 100000; i++) {
		memcpy(m + o, "--p\r\n\r\nx\r\n", 10);
		o += 10;
	}
	int trunc;
	clock_t t0 = clock();
	struct mime_part *r = mime_parse(m, o, &n, &trunc);
	assert_non_null(r);
	assert_int_equal(trunc, 1);
	assert_true(n <= MIME_MAX_PARTS);
	assert_true(r->n_children < MIME_MAX_PARTS);
	mime_free(&r);
	xfree(&m);
	(void)t0;
}

static void test_hostile_boundary_lines(void **state)
{
	(void)state;
	/* 100 open levels with long similar boundaries, then many "--" lines
	 * that almost match: must stay linear (the hash check) */
	size_t cap = 4 * 1024 * 1024, o = 0;
	char *m = xmalloc(cap);
	char bnd[72];
	memset(bnd, 'a', 69);
	for (int i = 0; i < 100; i++) {
		bnd[69] = (char)('A' + i % 26);
		bnd[70] = (char)('A' + i / 26);
		bnd[71] = '\0';
		o += (size_t)snprintf(m + o, cap - o, "Content-Type: multipart/mixed; boundary=%s\r\n\r\n--%s\r\n", bnd, bnd);
	}
	while (o + 80 < cap) {
		memcpy(m + o, "--", 2);
		memset(m + o + 2, 'a', 70);
		memcpy(m + o + 72, "zz\r\n", 4);
		o += 76;
	}
	size_t n;
	struct mime_part *r = mime_parse(m, o, &n, NULL);
	assert_non_null(r);
	mime_free(&r);
	xfree(&m);
}

static void test_nul_and_header_flood(void **state)
{
	(void)state;
	size_t cap = 10 * 1024 * 1024 + 100, o = 0;
	char *m = xmalloc(cap);
	o += (size_t)snprintf(m, cap, "Content-Type: text/plain; x=\"");
	while (o + 10 < cap - 20)
		m[o++] = 'x';
	memcpy(m + o, "\"\r\n\r\na\0b", 8);
	o += 8;
	struct mime_part *r = mime_parse(m, o, NULL, NULL);
	assert_non_null(r);
	assert_int_equal(r->end_off - r->body_off, 3);
	mime_free(&r);
	xfree(&m);
}

/* 2,000 parts whose Content-Type holds 400 quoted parameters: each quoted
 * value used to be sized by strlen() of the rest of the header, quadratic
 * in the header (8.4 s per parse of a 25 MB message). Parameters past
 * MIME_MAX_PARAMS are not parsed at all. */
static void test_many_quoted_params(void **state)
{
	(void)state;
	size_t cap = 16 * 1024 * 1024, o = 0;
	char *m = xmalloc(cap);
	o += (size_t)snprintf(m, cap, "Content-Type: multipart/mixed; boundary=b\r\n\r\n");
	for (int i = 0; i < 2000; i++) {
		o += (size_t)snprintf(m + o, cap - o, "--b\r\nContent-Type: text/plain; charset=\"utf-8\"");
		for (int j = 0; j < 400; j++)
			o += (size_t)snprintf(m + o, cap - o, "; p%d=\"v\\\"%d\"", j, j);
		o += (size_t)snprintf(m + o, cap - o, "\r\n\r\nbody %d\r\n", i);
	}
	o += (size_t)snprintf(m + o, cap - o, "--b--\r\n");
	size_t n;
	struct mime_part *r = mime_parse(m, o, &n, NULL);
	assert_non_null(r);
	assert_true(n > 1000);
	assert_non_null(r->children);
	assert_int_equal(r->children->n_params, MIME_MAX_PARAMS);
	assert_string_equal(r->children->params[1].name, "p0");
	assert_string_equal(r->children->params[1].value, "v\"0");
	mime_free(&r);
	xfree(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_no_body),
		cmocka_unit_test(test_nested_multipart),
		cmocka_unit_test(test_message_rfc822),
		cmocka_unit_test(test_broken_boundaries),
		cmocka_unit_test(test_header_folding),
		cmocka_unit_test(test_digest_default),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_parts_limit),
		cmocka_unit_test(test_hostile_boundary_lines),
		cmocka_unit_test(test_nul_and_header_flood),
		cmocka_unit_test(test_many_quoted_params),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
