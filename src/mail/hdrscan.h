/* hdrscan: follows the header section of a message while it is streamed
 * (LF line endings, as kale stores it), counts the fields that matter to the
 * submission checks (From:, Sender:, Date:, Message-ID:), keeps the bodies of
 * the first From: and Sender: (bounded), and finds the end of the header
 * section so that missing fields can be added there. Pure: no I/O, no
 * allocation. Runs inside the smtpd workers on untrusted input. */
#ifndef KALE_HDRSCAN_H
#define KALE_HDRSCAN_H

#include <stddef.h>
#include <stdint.h>

#define HDRSCAN_BODY_MAX 16384   /* longest From:/Sender: body kept */
#define HDRSCAN_NAME_MAX 256     /* a line with no ':' in its first 256 bytes is no header field */

enum hdrscan_field { HDRSCAN_FROM, HDRSCAN_SENDER, HDRSCAN_DATE, HDRSCAN_MESSAGE_ID, HDRSCAN_N };

enum hdrscan_end {
	HDRSCAN_END_NONE = 0,    /* still in the header section */
	HDRSCAN_END_BLANK,       /* the empty line */
	HDRSCAN_END_NONHEADER,   /* a line that is not a header field (a separator was inserted) */
	HDRSCAN_END_EOF          /* the message ended inside the header section */
};

struct hdrscan_body {
	char buf[HDRSCAN_BODY_MAX + 1];  /* the field body, folds kept, NUL-terminated */
	size_t len;
	int too_long;                    /* longer than HDRSCAN_BODY_MAX: buf is cut */
};

struct hdrscan {
	int state;                       /* internal */
	enum hdrscan_end end;
	unsigned count[HDRSCAN_N];       /* fields of each kind seen */
	struct hdrscan_body from, sender;/* bodies of the first From: and first Sender: */
	uint64_t fields;                 /* header fields seen */
	int cur;                         /* internal: kind of the current field, -1 other */
	size_t llen, nlen;               /* internal */
	char line[HDRSCAN_NAME_MAX + 2]; /* internal: start of a line not yet decided */
};

typedef void hdrscan_out_fn(void *ctx, const char *p, size_t n);
/* Called once, when the header section ends, before the bytes that end it
 * (the empty line, the first body line) are passed on: the place to add
 * header fields. h->end says why it ended. */
typedef void hdrscan_end_fn(void *ctx, const struct hdrscan *h);

void hdrscan_init(struct hdrscan *h);

/* Passes len bytes on to out, in order, and calls end at the end of the
 * header section. A header field line is "NAME:" or "NAME WSP:" (obsolete
 * syntax; NAME is printable ASCII without ':'), names matched
 * case-insensitively; a line starting with WSP continues the field before it.
 * Any other line in the header section (no ':', a bad name, a continuation
 * with no field before it) ends the section: an empty line is inserted
 * before it, so that the stored message has a well-formed header section and
 * that line (and anything after it) is body for every reader. */
void hdrscan_feed(struct hdrscan *h, const char *p, size_t len, hdrscan_out_fn *out,
    hdrscan_end_fn *end, void *ctx);

/* At the end of the message: passes on what is held back and, if the header
 * section has not ended, calls end (HDRSCAN_END_EOF). */
void hdrscan_finish(struct hdrscan *h, hdrscan_out_fn *out, hdrscan_end_fn *end, void *ctx);

#endif
