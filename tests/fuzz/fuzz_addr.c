/* fuzz_addr: libFuzzer target for src/mail/addr.c and src/mail/header.c
 * (built by CMake with -DKALE_FUZZ=ON, run by scripts/fuzz.sh). The input is
 * parsed as an address list, then streamed through the header scanner in two
 * pieces, the From:/Sender: bodies it keeps parsed too. Checks: no crash; at
 * most ADDR_LIST_MAX addresses, each with an '@', no CR/LF/NUL, at most
 * ADDR_SPEC_MAX bytes, and canonical (parsing it again gives itself); the
 * scanner passes every byte on in order (plus at most the separator and a
 * final LF it inserts) and reports the end of the header section once. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mail/addr.h"
#include "mail/header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_list(const char *s, size_t len)
{
	struct addr_list l;
	const char *err = NULL;

	if (addr_parse_list(s, len, &l, &err) < 0) {
		if (err == NULL || l.n != 0 || l.addr != NULL)
			abort();
		return;
	}
	if (l.n > ADDR_LIST_MAX)
		abort();
	for (size_t i = 0; i < l.n; i++) {
		const char *a = l.addr[i];
		size_t n = strlen(a);
		struct addr_list again;
		if (n == 0 || n > ADDR_SPEC_MAX || strchr(a, '@') == NULL || strpbrk(a, "\r\n") != NULL)
			abort();
		if (addr_parse_list(a, n, &again, &err) < 0 || again.n != 1 ||
		    strcmp(again.addr[0], a) != 0)
			abort();
		addr_list_free(&again);
	}
	addr_list_free(&l);
	if (l.addr != NULL || l.n != 0)
		abort();
}

struct sink {
	const uint8_t *in;
	size_t in_len, pos, extra;
	int ends;
};

static void out_cb(void *ctx, const char *p, size_t n)
{
	struct sink *k = ctx;

	for (size_t i = 0; i < n; i++) {
		if (k->pos < k->in_len && (uint8_t)p[i] == k->in[k->pos])
			k->pos++;
		else if (p[i] == '\n' && k->extra < 2)
			k->extra++;   /* the separator before a body line, or an ending LF */
		else
			abort();
	}
}

static void end_cb(void *ctx, const struct header_scan *h)
{
	struct sink *k = ctx;

	if (h->end == HEADER_END_NONE)
		abort();
	k->ends++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct header_scan h;
	struct sink k = { data, size, 0, 0, 0 };
	size_t split = size > 0 ? data[0] % (size + 1) : 0;

	if (size > 65536)
		return 0;
	check_list((const char *)data, size);
	header_scan_init(&h);
	header_scan_feed(&h, (const char *)data, split, out_cb, end_cb, &k);
	header_scan_feed(&h, (const char *)data + split, size - split, out_cb, end_cb, &k);
	header_scan_finish(&h, out_cb, end_cb, &k);
	if (k.ends != 1 || k.pos != size)
		abort();
	if (h.from.len > HEADER_BODY_MAX || h.sender.len > HEADER_BODY_MAX)
		abort();
	if (h.count[HEADER_FROM] > 0)
		check_list(h.from.buf, h.from.len);
	if (h.count[HEADER_SENDER] > 0)
		check_list(h.sender.buf, h.sender.len);
	return 0;
}
