/* hdrscan: follows the header section of a streamed message (LF line
 * endings), counts From:/Sender:/Date:/Message-ID:, keeps the first From:
 * and Sender: bodies (bounded) and marks where the section ends. Pure
 * module, constant memory. Runs inside the smtpd workers on untrusted input. */
#include <string.h>
#include <strings.h>

#include "mail/hdrscan.h"

enum { HS_BOL = 0, HS_NAME, HS_NAMEWSP, HS_VALUE, HS_BODY };

struct hdrscan_out {
	hdrscan_out_fn *out;
	void *ctx;
	size_t n;
	char buf[1024];
};

static void hdrscan_flush(struct hdrscan_out *o)
{
	if (o->n > 0)
		o->out(o->ctx, o->buf, o->n);
	o->n = 0;
}

static void hdrscan_put(struct hdrscan_out *o, char c)
{
	o->buf[o->n++] = c;
	if (o->n == sizeof(o->buf))
		hdrscan_flush(o);
}

/* ftext, RFC 5322 3.6.8: printable US-ASCII except ':' */
static int hdrscan_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

void hdrscan_init(struct hdrscan *h)
{
	h->state = HS_BOL;
	h->end = HDRSCAN_END_NONE;
	memset(h->count, 0, sizeof(h->count));
	h->from.len = h->sender.len = 0;
	h->from.too_long = h->sender.too_long = 0;
	h->from.buf[0] = h->sender.buf[0] = '\0';
	h->fields = 0;
	h->cur = -1;
	h->llen = h->nlen = 0;
}

static void hdrscan_body_add(struct hdrscan *h, char c)
{
	struct hdrscan_body *b;

	if (h->cur == HDRSCAN_FROM)
		b = &h->from;
	else if (h->cur == HDRSCAN_SENDER)
		b = &h->sender;
	else
		return;
	if (b->len >= HDRSCAN_BODY_MAX) {
		b->too_long = 1;
		return;
	}
	b->buf[b->len++] = c;
	b->buf[b->len] = '\0';
}

/* A header field begins: line[0..nlen) is its name. */
static void hdrscan_field(struct hdrscan *h)
{
	static const char *const names[HDRSCAN_N] = { "From", "Sender", "Date", "Message-ID" };

	h->fields++;
	h->cur = -1;
	for (int k = 0; k < HDRSCAN_N; k++) {
		if (h->nlen == strlen(names[k]) && strncasecmp(h->line, names[k], h->nlen) == 0) {
			h->count[k]++;
			if ((k == HDRSCAN_FROM || k == HDRSCAN_SENDER) && h->count[k] == 1)
				h->cur = k;
			break;
		}
	}
}

static void hdrscan_end_at(struct hdrscan *h, enum hdrscan_end why, struct hdrscan_out *o,
    hdrscan_end_fn *end)
{
	h->end = why;
	h->cur = -1;
	hdrscan_flush(o);
	end(o->ctx, h);
	h->state = HS_BODY;
}

/* The line held in h->line (plus c, if c >= 0) is not a header field. */
static void hdrscan_nonheader(struct hdrscan *h, int c, struct hdrscan_out *o, hdrscan_end_fn *end)
{
	hdrscan_end_at(h, HDRSCAN_END_NONHEADER, o, end);
	hdrscan_put(o, '\n');
	for (size_t i = 0; i < h->llen; i++)
		hdrscan_put(o, h->line[i]);
	if (c >= 0)
		hdrscan_put(o, (char)c);
	h->llen = 0;
}

void hdrscan_feed(struct hdrscan *h, const char *p, size_t len, hdrscan_out_fn *out,
    hdrscan_end_fn *end, void *ctx)
{
	struct hdrscan_out o;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];

		switch (h->state) {
		case HS_BODY:
			hdrscan_flush(&o);
			out(ctx, p + i, len - i);
			return;
		case HS_BOL:
			if (c == '\n') {
				hdrscan_end_at(h, HDRSCAN_END_BLANK, &o, end);
				hdrscan_put(&o, '\n');
			} else if (c == ' ' || c == '\t') {
				if (h->fields == 0) {
					hdrscan_nonheader(h, c, &o, end);
					break;
				}
				h->state = HS_VALUE;
				hdrscan_body_add(h, '\n');
				hdrscan_body_add(h, (char)c);
				hdrscan_put(&o, (char)c);
			} else if (hdrscan_ftext(c)) {
				h->llen = 0;
				h->line[h->llen++] = (char)c;
				h->state = HS_NAME;
			} else {
				hdrscan_nonheader(h, c, &o, end);
			}
			break;
		case HS_NAME:
		case HS_NAMEWSP:
			if (c == ':') {
				if (h->state == HS_NAME)
					h->nlen = h->llen;
				hdrscan_field(h);
				for (size_t k = 0; k < h->llen; k++)
					hdrscan_put(&o, h->line[k]);
				hdrscan_put(&o, ':');
				h->llen = 0;
				h->state = HS_VALUE;
			} else if ((c == ' ' || c == '\t') && h->llen < HDRSCAN_NAME_MAX) {
				if (h->state == HS_NAME)
					h->nlen = h->llen;
				h->line[h->llen++] = (char)c;
				h->state = HS_NAMEWSP;
			} else if (h->state == HS_NAME && hdrscan_ftext(c) && h->llen < HDRSCAN_NAME_MAX) {
				h->line[h->llen++] = (char)c;
			} else {
				hdrscan_nonheader(h, c, &o, end);
			}
			break;
		case HS_VALUE:
			hdrscan_put(&o, (char)c);
			if (c == '\n')
				h->state = HS_BOL;
			else
				hdrscan_body_add(h, (char)c);
			break;
		}
	}
	hdrscan_flush(&o);
}

void hdrscan_finish(struct hdrscan *h, hdrscan_out_fn *out, hdrscan_end_fn *end, void *ctx)
{
	struct hdrscan_out o;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	switch (h->state) {
	case HS_BOL:
		hdrscan_end_at(h, HDRSCAN_END_EOF, &o, end);
		break;
	case HS_VALUE:
		/* a last line without its LF (never from smtp_parse): end it, so
		 * that what is added starts on a line of its own */
		hdrscan_put(&o, '\n');
		hdrscan_end_at(h, HDRSCAN_END_EOF, &o, end);
		break;
	case HS_NAME:
	case HS_NAMEWSP:
		hdrscan_nonheader(h, -1, &o, end);
		break;
	default:
		break;
	}
	hdrscan_flush(&o);
}
