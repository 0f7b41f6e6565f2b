/* header: follows the header section of a streamed message (LF line
 * endings), counts From:/Sender:/Date:/Message-ID:, keeps the first From:
 * and Sender: bodies (bounded) and marks where the section ends. Pure
 * module, constant memory. Runs inside the smtpd workers on untrusted input. */
#include <string.h>
#include <strings.h>

#include "mail/header.h"

enum { HS_BOL = 0, HS_NAME, HS_NAMEWSP, HS_VALUE, HS_BODY };

struct header_scan_out {
	header_scan_out_fn *out;
	void *ctx;
	size_t n;
	char buf[1024];
};

static void header_scan_flush(struct header_scan_out *o)
{
	if (o->n > 0)
		o->out(o->ctx, o->buf, o->n);
	o->n = 0;
}

static void header_scan_put(struct header_scan_out *o, char c)
{
	o->buf[o->n++] = c;
	if (o->n == sizeof(o->buf))
		header_scan_flush(o);
}

/* ftext, RFC 5322 3.6.8: printable US-ASCII except ':' */
static int header_scan_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

void header_scan_init(struct header_scan *h)
{
	h->state = HS_BOL;
	h->end = HEADER_END_NONE;
	memset(h->count, 0, sizeof(h->count));
	h->from.len = h->sender.len = 0;
	h->from.too_long = h->sender.too_long = 0;
	h->from.buf[0] = h->sender.buf[0] = '\0';
	h->fields = 0;
	h->cur = -1;
	h->llen = h->nlen = 0;
}

static void header_scan_body_add(struct header_scan *h, char c)
{
	struct header_scan_body *b;

	if (h->cur == HEADER_FROM)
		b = &h->from;
	else if (h->cur == HEADER_SENDER)
		b = &h->sender;
	else
		return;
	if (b->len >= HEADER_BODY_MAX) {
		b->too_long = 1;
		return;
	}
	b->buf[b->len++] = c;
	b->buf[b->len] = '\0';
}

/* A header field begins: line[0..nlen) is its name. */
static void header_scan_field(struct header_scan *h)
{
	static const char *const names[HEADER_N] = { "From", "Sender", "Date", "Message-ID" };

	h->fields++;
	h->cur = -1;
	for (int k = 0; k < HEADER_N; k++) {
		if (h->nlen == strlen(names[k]) && strncasecmp(h->line, names[k], h->nlen) == 0) {
			h->count[k]++;
			if ((k == HEADER_FROM || k == HEADER_SENDER) && h->count[k] == 1)
				h->cur = k;
			break;
		}
	}
}

static void header_scan_end_at(struct header_scan *h, enum header_scan_end why,
    struct header_scan_out *o, header_scan_end_fn *end)
{
	h->end = why;
	h->cur = -1;
	header_scan_flush(o);
	end(o->ctx, h);
	h->state = HS_BODY;
}

/* The line held in h->line (plus c, if c >= 0) is not a header field. */
static void header_scan_nonheader(struct header_scan *h, int c, struct header_scan_out *o,
    header_scan_end_fn *end)
{
	header_scan_end_at(h, HEADER_END_NONHEADER, o, end);
	header_scan_put(o, '\n');
	for (size_t i = 0; i < h->llen; i++)
		header_scan_put(o, h->line[i]);
	if (c >= 0)
		header_scan_put(o, (char)c);
	h->llen = 0;
}

void header_scan_feed(struct header_scan *h, const char *p, size_t len, header_scan_out_fn *out,
    header_scan_end_fn *end, void *ctx)
{
	struct header_scan_out o;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];

		switch (h->state) {
		case HS_BODY:
			header_scan_flush(&o);
			out(ctx, p + i, len - i);
			return;
		case HS_BOL:
			if (c == '\n') {
				header_scan_end_at(h, HEADER_END_BLANK, &o, end);
				header_scan_put(&o, '\n');
			} else if (c == ' ' || c == '\t') {
				if (h->fields == 0) {
					header_scan_nonheader(h, c, &o, end);
					break;
				}
				h->state = HS_VALUE;
				header_scan_body_add(h, '\n');
				header_scan_body_add(h, (char)c);
				header_scan_put(&o, (char)c);
			} else if (header_scan_ftext(c)) {
				h->llen = 0;
				h->line[h->llen++] = (char)c;
				h->state = HS_NAME;
			} else {
				header_scan_nonheader(h, c, &o, end);
			}
			break;
		case HS_NAME:
		case HS_NAMEWSP:
			if (c == ':') {
				if (h->state == HS_NAME)
					h->nlen = h->llen;
				header_scan_field(h);
				for (size_t k = 0; k < h->llen; k++)
					header_scan_put(&o, h->line[k]);
				header_scan_put(&o, ':');
				h->llen = 0;
				h->state = HS_VALUE;
			} else if ((c == ' ' || c == '\t') && h->llen < HEADER_NAME_MAX) {
				if (h->state == HS_NAME)
					h->nlen = h->llen;
				h->line[h->llen++] = (char)c;
				h->state = HS_NAMEWSP;
			} else if (h->state == HS_NAME && header_scan_ftext(c) && h->llen < HEADER_NAME_MAX) {
				h->line[h->llen++] = (char)c;
			} else {
				header_scan_nonheader(h, c, &o, end);
			}
			break;
		case HS_VALUE:
			header_scan_put(&o, (char)c);
			if (c == '\n')
				h->state = HS_BOL;
			else
				header_scan_body_add(h, (char)c);
			break;
		}
	}
	header_scan_flush(&o);
}

void header_scan_finish(struct header_scan *h, header_scan_out_fn *out, header_scan_end_fn *end,
    void *ctx)
{
	struct header_scan_out o;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	switch (h->state) {
	case HS_BOL:
		header_scan_end_at(h, HEADER_END_EOF, &o, end);
		break;
	case HS_VALUE:
		/* a last line without its LF (never from smtp_parse): end it, so
		 * that what is added starts on a line of its own */
		header_scan_put(&o, '\n');
		header_scan_end_at(h, HEADER_END_EOF, &o, end);
		break;
	case HS_NAME:
	case HS_NAMEWSP:
		header_scan_nonheader(h, -1, &o, end);
		break;
	default:
		break;
	}
	header_scan_flush(&o);
}

/* ---------- a message held in memory ---------- */

int header_field_next(const char *msg, size_t len, size_t *pos, struct header_field *f)
{
	size_t p = *pos, n = 0, e;

	/* the name: printable ASCII but ':', then optional WSP (obsolete), then ':' */
	while (p + n < len && n < HEADER_NAME_MAX && msg[p + n] > 32 && msg[p + n] < 127 &&
	    msg[p + n] != ':')
		n++;
	if (n == 0)
		return 0;
	e = p + n;
	while (e < len && (msg[e] == ' ' || msg[e] == '\t'))
		e++;
	if (e >= len || msg[e] != ':')
		return 0;
	f->off = p;
	f->name_len = n;
	f->body = e + 1;
	/* the body: up to a line end not followed by WSP */
	for (e = f->body; e < len; e++) {
		if (msg[e] != '\n')
			continue;
		if (e + 1 < len && (msg[e + 1] == ' ' || msg[e + 1] == '\t'))
			continue;
		e++;
		break;
	}
	f->len = e - p;
	*pos = e;
	return 1;
}

int header_field_is(const char *msg, const struct header_field *f, const char *name)
{
	return strlen(name) == f->name_len && strncasecmp(msg + f->off, name, f->name_len) == 0;
}
