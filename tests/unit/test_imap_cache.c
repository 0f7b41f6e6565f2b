/* Unit tests for src/imap/imap_cache.c (the parsed-structure LRU: hits,
 * keys, the byte budget, pins, too-big entries) and the bounded readers of
 * src/imap/imap_mbox.c that FETCH streams from (CRLF form of files with and
 * without bare LF, every offset and length, a file that shrinks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "imap/imap_cache.h"
#include "imap/imap_fetch.h"
#include "imap/imap_mbox.h"
#include "lib/util.h"

static struct imap_cache_ent *mk(uint64_t ino, const char *base, size_t payload)
{
	struct imap_cache_ent *e = xcalloc(1, sizeof(*e));
	e->dev = 1;
	e->ino = ino;
	e->fsize = 100;
	e->mtime_ns = 5;
	e->base = xstrdup(base);
	e->bodystructure = xcalloc(1, payload + 1);
	e->bodystructure_len = payload;
	return e;
}

static struct imap_cache_key key(uint64_t ino, const char *base)
{
	struct imap_cache_key k = { 1, ino, 100, 5, base };
	return k;
}

static void test_hit_and_key(void **state)
{
	(void)state;
	imap_cache_clear();
	struct imap_cache_ent *e = imap_cache_put(mk(7, "a", 10));
	assert_true(e->cached);
	imap_cache_release(&e);
	assert_null(e);
	struct imap_cache_key k = key(7, "a");
	struct imap_cache_ent *g = imap_cache_get(&k);
	assert_non_null(g);
	assert_string_equal(g->base, "a");
	imap_cache_release(&g);
	k = key(7, "b");           /* same inode, other name (a hard link) */
	assert_null(imap_cache_get(&k));
	k = key(7, "a");
	k.mtime_ns = 6;            /* changed file */
	assert_null(imap_cache_get(&k));
	k = key(8, "a");
	assert_null(imap_cache_get(&k));
	imap_cache_clear();
	k = key(7, "a");
	assert_null(imap_cache_get(&k));
}

static void test_budget_pins_and_too_big(void **state)
{
	(void)state;
	imap_cache_clear();
	imap_cache_set_limits(64 * 1024, 16 * 1024);
	struct imap_cache_ent *pinned = imap_cache_put(mk(1, "pinned", 10000));
	for (uint64_t i = 2; i < 200; i++) {
		struct imap_cache_ent *e = imap_cache_put(mk(i, "x", 10000));
		imap_cache_release(&e);
		struct imap_cache_stats st;
		imap_cache_get_stats(&st);
		assert_true(st.bytes <= 64 * 1024);
	}
	/* the pinned one survived, the oldest unpinned ones went, the newest stayed */
	struct imap_cache_key k = key(1, "pinned");
	struct imap_cache_ent *g = imap_cache_get(&k);
	assert_ptr_equal(g, pinned);
	imap_cache_release(&g);
	imap_cache_release(&pinned);
	k = key(2, "x");
	assert_null(imap_cache_get(&k));
	k = key(199, "x");
	g = imap_cache_get(&k);
	assert_non_null(g);
	imap_cache_release(&g);
	/* larger than one entry may be: served, not kept, freed on release */
	struct imap_cache_stats before, after;
	imap_cache_get_stats(&before);
	struct imap_cache_ent *big = imap_cache_put(mk(500, "big", 20000));
	assert_false(big->cached);
	imap_cache_release(&big);
	imap_cache_get_stats(&after);
	assert_int_equal(after.too_big, before.too_big + 1);
	k = key(500, "big");
	assert_null(imap_cache_get(&k));
	imap_cache_clear();
	imap_cache_set_limits(IMAP_CACHE_MAX_BYTES, IMAP_CACHE_MAX_ENTRY);
}

/* A message with many parts: parsed once, rendered once, the cost counted. */
static void test_parse_many_parts(void **state)
{
	(void)state;
	size_t cap = 4 * 1024 * 1024, n = 0;
	char *m = xmalloc(cap);
	n += (size_t)snprintf(m + n, cap - n, "Subject: many\r\nMIME-Version: 1.0\r\n"
	    "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n");
	for (int i = 0; i < 9000; i++)
		n += (size_t)snprintf(m + n, cap - n, "--b\r\nContent-Type: text/plain; name=\"%0300d\"\r\n\r\nx%d\r\n", i, i);
	n += (size_t)snprintf(m + n, cap - n, "--b--\r\n");
	struct imap_cache_ent *a = imap_fetch_parse(m, n);
	struct imap_cache_ent *b = imap_fetch_parse(m, n);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(a->mime->n_children, 9000);
	assert_int_equal(a->bodystructure_len, b->bodystructure_len);
	assert_memory_equal(a->bodystructure, b->bodystructure, a->bodystructure_len);
	assert_true(a->body_len < a->bodystructure_len);
	assert_true(imap_cache_mime_cost(a->mime) > 9000 * sizeof(struct mime_part));
	/* only the shape is kept, and sections are still found in it */
	assert_null(a->mime->params);
	assert_null(a->mime->children->params);
	struct imap_fetch_att att;
	const char *err = NULL;
	assert_int_equal(imap_fetch_att_parse("BODY[9000]", &att, &err), 0);
	size_t off = 0, len = 0;
	assert_int_equal(imap_section_range(a->mime, n, &att, &off, &len), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(m + off, "x8999", 5);
	imap_fetch_att_free(&att);
	a->dev = 1;
	a->ino = 42;
	a->fsize = n;
	a->base = xstrdup("many");
	a = imap_cache_put(a);
	assert_true(a->cached);           /* small enough to be kept */
	imap_cache_release(&a);
	struct imap_cache_key k = { 1, 42, n, 0, "many" };
	struct imap_cache_stats s0, s1;
	imap_cache_get_stats(&s0);
	struct imap_cache_ent *g = imap_cache_get(&k);
	imap_cache_get_stats(&s1);
	assert_non_null(g);
	assert_int_equal(s1.hits, s0.hits + 1);
	assert_memory_equal(g->bodystructure, b->bodystructure, b->bodystructure_len);
	imap_cache_release(&g);
	b->base = xstrdup("other");
	b = imap_cache_put(b);
	imap_cache_release(&b);
	imap_cache_clear();
	xfree(&m);
}

static char tmpl[64];

static int mkfile(const char *data, size_t len)
{
	snprintf(tmpl, sizeof(tmpl), "/tmp/kale-imap-cache-XXXXXX");
	int fd = mkstemp(tmpl);
	assert_true(fd >= 0);
	unlink(tmpl);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	return fd;
}

static size_t to_crlf(const char *in, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = in[i];
	}
	return o;
}

static void check_ranges(const char *raw, size_t n)
{
	char want[256];
	size_t wl = to_crlf(raw, n, want);
	int fd = mkfile(raw, n);
	int64_t size = -1;
	assert_int_equal(imap_mbox_crlf_size(fd, n, &size), 0);
	assert_int_equal(size, (int64_t)wl);
	int conv = wl != n;
	for (size_t off = 0; off <= wl; off++)
		for (size_t len = 0; off + len <= wl; len++) {
			struct imap_mbox_buf b;
			assert_int_equal(imap_mbox_read_range(fd, conv, off, len, &b), 0);
			assert_int_equal(b.len, len);
			assert_memory_equal(b.data, want + off, len);
			imap_mbox_buf_free(&b);
			/* streamed in the smallest pieces */
			struct imap_crlf_rd rd;
			imap_crlf_rd_init(&rd, fd, conv, off, len);
			char got[256];
			size_t gl = 0;
			ssize_t r;
			while ((r = imap_crlf_rd_next(&rd, got + gl, 2)) > 0)
				gl += (size_t)r;
			assert_int_equal(r, 0);
			assert_int_equal(gl, len);
			assert_memory_equal(got, want + off, len);
		}
	/* past the end of the file (it shrank): an error, never made-up bytes */
	struct imap_crlf_rd rd;
	char buf[512];
	imap_crlf_rd_init(&rd, fd, conv, 0, wl + 5);
	ssize_t r;
	size_t total = 0;
	while ((r = imap_crlf_rd_next(&rd, buf + total, sizeof(buf) - total)) > 0)
		total += (size_t)r;
	assert_int_equal(r, -1);
	assert_int_equal(total, wl);
	close(fd);
}

static void test_crlf_reader(void **state)
{
	(void)state;
	static const char crlf[] = "Subject: a\r\n\r\nbody\r\nline\r\n";
	static const char lf[] = "Subject: a\n\nbody\nline\n";
	static const char mixed[] = "\nA: b\r\n\n\r\r\nx\ny\r";
	check_ranges(crlf, sizeof(crlf) - 1);
	check_ranges(lf, sizeof(lf) - 1);
	check_ranges(mixed, sizeof(mixed) - 1);
	check_ranges("", 0);
}

/* Big ranges come from an anonymous mapping and are exact too. */
static void test_big_range(void **state)
{
	(void)state;
	size_t n = 3 * 1024 * 1024;
	char *raw = xmalloc(n);
	for (size_t i = 0; i < n; i++)
		raw[i] = i % 71 == 70 ? '\n' : (char)('a' + i % 26);
	int fd = mkfile(raw, n);
	int64_t size;
	assert_int_equal(imap_mbox_crlf_size(fd, n, &size), 0);
	struct imap_mbox_buf b;
	assert_int_equal(imap_mbox_read_range(fd, 1, 0, (size_t)size, &b), 0);
	assert_true(b.map_len > 0);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (raw[i] == '\n')
			assert_int_equal(b.data[o++], '\r');
		assert_int_equal(b.data[o++], raw[i]);
	}
	assert_int_equal(o, b.len);
	imap_mbox_buf_free(&b);
	assert_null(b.data);
	close(fd);
	xfree(&raw);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hit_and_key),
		cmocka_unit_test(test_budget_pins_and_too_big),
		cmocka_unit_test(test_parse_many_parts),
		cmocka_unit_test(test_crlf_reader),
		cmocka_unit_test(test_big_range),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
