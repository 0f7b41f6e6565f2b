/* header: follows the header section of a message while it is streamed
 * (LF line endings, as kale stores it), counts the fields that matter to the
 * submission checks (From:, Sender:, Date:, Message-ID:), keeps the bodies of
 * the first From: and Sender: (bounded), and finds the end of the header
 * section so that missing fields can be added there. Pure: no I/O, no
 * allocation. Runs inside the smtpd workers on untrusted input. */
#ifndef KALE_HEADER_H
#define KALE_HEADER_H

#include <stddef.h>
#include <stdint.h>

#define HEADER_BODY_MAX 16384   /* longest From:/Sender: body kept */
#define HEADER_NAME_MAX 256     /* a line with no ':' in its first 256 bytes is no header field */

enum header_scan_field { HEADER_FROM, HEADER_SENDER, HEADER_DATE, HEADER_MESSAGE_ID, HEADER_N };

enum header_scan_end {
	HEADER_END_NONE = 0,    /* still in the header section */
	HEADER_END_BLANK,       /* the empty line */
	HEADER_END_NONHEADER,   /* a line that is not a header field (a separator was inserted) */
	HEADER_END_EOF          /* the message ended inside the header section */
};

struct header_scan_body {
	char buf[HEADER_BODY_MAX + 1];  /* the field body, folds kept, NUL-terminated */
	size_t len;
	int too_long;                    /* longer than HEADER_BODY_MAX: buf is cut */
};

struct header_scan {
	int state;                       /* internal */
	enum header_scan_end end;
	unsigned count[HEADER_N];        /* fields of each kind seen */
	struct header_scan_body from, sender; /* bodies of the first From: and Sender: */
	uint64_t fields;                 /* header fields seen */
	int cur;                         /* internal: kind of the current field, -1 other */
	size_t llen, nlen;               /* internal */
	char line[HEADER_NAME_MAX + 2];  /* internal: start of a line not yet decided */
};

typedef void header_scan_out_fn(void *ctx, const char *p, size_t n);
/* Called once, when the header section ends, before the bytes that end it
 * (the empty line, the first body line) are passed on: the place to add
 * header fields. h->end says why it ended. */
typedef void header_scan_end_fn(void *ctx, const struct header_scan *h);

void header_scan_init(struct header_scan *h);

/* Passes len bytes on to out, in order, and calls end at the end of the
 * header section. A header field line is "NAME:" or "NAME WSP:" (obsolete
 * syntax; NAME is printable ASCII without ':'), names matched
 * case-insensitively; a line starting with WSP continues the field before it.
 * Any other line in the header section (no ':', a bad name, a continuation
 * with no field before it) ends the section: an empty line is inserted
 * before it, so that the stored message has a well-formed header section and
 * that line (and anything after it) is body for every reader. */
void header_scan_feed(struct header_scan *h, const char *p, size_t len, header_scan_out_fn *out,
    header_scan_end_fn *end, void *ctx);

/* At the end of the message: passes on what is held back and, if the header
 * section has not ended, calls end (HEADER_END_EOF). */
void header_scan_finish(struct header_scan *h, header_scan_out_fn *out, header_scan_end_fn *end,
    void *ctx);

/* ---- a message held in memory ----
 * One header field of msg[0..len): bytes [off, off + len) are the whole
 * field, folds and its line end included; the name is [off, off + name_len),
 * the body starts at body (after the ':'). LF or CRLF line ends. */
struct header_field {
	size_t off, len;
	size_t name_len;
	size_t body;
};

/* The field at *pos (start with 0): 1 with *f filled and *pos past it, or 0
 * at the end of the header section (*pos then at the empty line, at the first
 * line that is no header field, or at len). Linear in the field's size. */
int header_field_next(const char *msg, size_t len, size_t *pos, struct header_field *f);
/* 1 if field f is named name (case-insensitive; "NAME WSP:" counts). */
int header_field_is(const char *msg, const struct header_field *f, const char *name);

#endif
