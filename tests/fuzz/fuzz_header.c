/* fuzz_header: libFuzzer target for the streamed header-section scanner of
 * src/mail/header.c (built by CMake with -DKALE_FUZZ=ON, run by
 * scripts/fuzz.sh). The input is scanned twice, split in two different ways:
 * in two pieces at a position taken from the first byte, and in chunks of a
 * size taken from the second. Checks: no crash; both runs give the same
 * output bytes, the same end (kind and output position) and the same counts
 * and From:/Sender: bodies; the end callback is called at most once while
 * feeding and exactly once after finish, never with HEADER_END_NONE; the
 * counts are consistent (no kind counted more often than there are fields,
 * bodies kept only for fields seen, within HEADER_BODY_MAX). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mail/header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_IN_MAX 65536

struct run {
	char *out;
	size_t len, cap;
	int ends;
	size_t end_at;       /* output length when the end callback ran */
	enum header_scan_end end;
};

static void out_cb(void *ctx, const char *p, size_t n)
{
	struct run *r = ctx;

	if (r->len + n > r->cap)
		abort();         /* more than the input plus the two LFs it may add */
	memcpy(r->out + r->len, p, n);
	r->len += n;
}

static void end_cb(void *ctx, const struct header_scan *h)
{
	struct run *r = ctx;

	if (h->end == HEADER_END_NONE || ++r->ends > 1)
		abort();
	r->end_at = r->len;
	r->end = h->end;
}

static void check_counts(const struct header_scan *h)
{
	uint64_t kinds = 0;

	for (int k = 0; k < HEADER_N; k++) {
		if (h->count[k] > h->fields)
			abort();
		kinds += h->count[k];
	}
	if (kinds > h->fields)
		abort();
	if (h->from.len > HEADER_BODY_MAX || h->sender.len > HEADER_BODY_MAX)
		abort();
	if ((h->count[HEADER_FROM] == 0 && (h->from.len > 0 || h->from.too_long)) ||
	    (h->count[HEADER_SENDER] == 0 && (h->sender.len > 0 || h->sender.too_long)))
		abort();
	if ((h->from.too_long && h->from.len != HEADER_BODY_MAX) ||
	    (h->sender.too_long && h->sender.len != HEADER_BODY_MAX))
		abort();
	if (h->from.buf[h->from.len] != '\0' || h->sender.buf[h->sender.len] != '\0')
		abort();
}

static void same(const struct header_scan *a, const struct header_scan *b)
{
	if (a->end != b->end || a->fields != b->fields ||
	    memcmp(a->count, b->count, sizeof(a->count)) != 0 ||
	    a->from.len != b->from.len || a->from.too_long != b->from.too_long ||
	    memcmp(a->from.buf, b->from.buf, a->from.len) != 0 ||
	    a->sender.len != b->sender.len || a->sender.too_long != b->sender.too_long ||
	    memcmp(a->sender.buf, b->sender.buf, a->sender.len) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct header_scan h1, h2;
	static char out1[FUZZ_IN_MAX + 2], out2[FUZZ_IN_MAX + 2];
	struct run r1 = { out1, 0, size + 2, 0, 0, HEADER_END_NONE };
	struct run r2 = { out2, 0, size + 2, 0, 0, HEADER_END_NONE };
	const char *in = (const char *)data;
	size_t split = size > 0 ? data[0] % (size + 1) : 0;
	size_t step = size > 1 ? (size_t)data[1] % 7 + 1 : 1;

	if (size > FUZZ_IN_MAX)
		return 0;
	/* first way: two pieces */
	header_scan_init(&h1);
	header_scan_feed(&h1, in, split, out_cb, end_cb, &r1);
	header_scan_feed(&h1, in + split, size - split, out_cb, end_cb, &r1);
	if (r1.ends > 1)
		abort();
	header_scan_finish(&h1, out_cb, end_cb, &r1);
	/* second way: small chunks of 1..7 bytes, with empty feeds between */
	header_scan_init(&h2);
	for (size_t i = 0; i < size; i += step) {
		header_scan_feed(&h2, in + i, size - i < step ? size - i : step, out_cb, end_cb, &r2);
		header_scan_feed(&h2, in + i, 0, out_cb, end_cb, &r2);
	}
	header_scan_finish(&h2, out_cb, end_cb, &r2);
	if (r1.ends != 1 || r2.ends != 1 || r1.end != h1.end || r2.end != h2.end)
		abort();
	if (r1.len != r2.len || memcmp(out1, out2, r1.len) != 0 || r1.end_at != r2.end_at)
		abort();
	if (r1.len < size)
		abort();
	check_counts(&h1);
	same(&h1, &h2);
	return 0;
}
