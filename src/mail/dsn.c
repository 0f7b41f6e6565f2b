/* dsn: builds RFC 3464 bounce messages (multipart/report) from the failed
 * recipients of one queued message. Run by qmgr; pure string building. */
#include "mail/dsn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

struct dsn_buf {
	char *p;
	size_t len, cap;
};

static void dsn_put(struct dsn_buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void dsn_puts(struct dsn_buf *b, const char *s)
{
	dsn_put(b, s, strlen(s));
}

/* Appends s with anything but printable ASCII made '?', cut at max bytes. */
static void dsn_put_clean(struct dsn_buf *b, const char *s, size_t max)
{
	for (size_t i = 0; s[i] && i < max; i++) {
		char c = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
		dsn_put(b, &c, 1);
	}
}

static void dsn_date(int64_t t, char *out, size_t cap)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	if (strftime(out, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm) == 0)
		out[0] = '\0';
}

size_t dsn_header_len(const char *body, size_t len)
{
	if (len >= 1 && body[0] == '\n')
		return 1;
	for (size_t i = 0; i + 1 < len; i++)
		if (body[i] == '\n' && body[i + 1] == '\n')
			return i + 2;
	return len;
}

/* "rfc822;a@b" -> type "rfc822", value "a@b"; without ';' all is the value. */
static void dsn_put_orcpt(struct dsn_buf *b, const char *orcpt)
{
	const char *semi = strchr(orcpt, ';');

	dsn_puts(b, "Original-Recipient: ");
	if (semi == NULL) {
		dsn_puts(b, "rfc822;");
		dsn_put_clean(b, orcpt, DSN_DIAG_MAX);
	} else {
		dsn_put_clean(b, orcpt, DSN_DIAG_MAX);
	}
	dsn_puts(b, "\n");
}

char *dsn_build(const struct dsn_info *info, const struct dsn_rcpt *r, int n,
    const char *orig, size_t orig_len, int full, size_t *len_r)
{
	struct dsn_buf b = { 0 };
	char now[64], arr[64], boundary[128];
	size_t hlen;
	int any_delay = 0;

	if (n < 1)
		return NULL;
	for (int i = 0; i < n; i++)
		any_delay |= strcmp(r[i].action, "delayed") == 0;
	dsn_date(info->now, now, sizeof(now));
	dsn_date(info->arrival, arr, sizeof(arr));
	if (util_fmt(boundary, sizeof(boundary), "%s/%s", info->boundary_seed ? info->boundary_seed : "x",
	    info->reporting_mta) < 0)
		util_fmt(boundary, sizeof(boundary), "%s", "kale-dsn-boundary");
	for (char *p = boundary; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '.' || *p == '-' || *p == '/'))
			*p = '_';

	/* header */
	dsn_puts(&b, "From: MAILER-DAEMON@");
	dsn_put_clean(&b, info->reporting_mta, 255);
	dsn_puts(&b, " (Mail Delivery System)\nTo: <");
	dsn_put_clean(&b, info->sender, DSN_DIAG_MAX);
	dsn_puts(&b, ">\nSubject: ");
	dsn_puts(&b, any_delay ? "Delayed Mail (still being retried)" : "Undelivered Mail Returned to Sender");
	dsn_puts(&b, "\nDate: ");
	dsn_puts(&b, now);
	dsn_puts(&b, "\nMessage-ID: <");
	dsn_put_clean(&b, info->boundary_seed ? info->boundary_seed : info->qid, 64);
	dsn_puts(&b, ".dsn@");
	dsn_put_clean(&b, info->reporting_mta, 255);
	dsn_puts(&b, ">\nAuto-Submitted: auto-replied\nMIME-Version: 1.0\n"
	    "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"");
	dsn_puts(&b, boundary);
	dsn_puts(&b, "\"\nContent-Transfer-Encoding: 7bit\n\nThis is a MIME-encapsulated message.\n\n");

	/* part 1: for humans */
	dsn_puts(&b, "--");
	dsn_puts(&b, boundary);
	dsn_puts(&b, "\nContent-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n"
	    "This is the mail system at host ");
	dsn_put_clean(&b, info->reporting_mta, 255);
	dsn_puts(&b, ".\n\n");
	dsn_puts(&b, any_delay ? "Your message could not be delivered yet; the mail system will\n"
	    "keep trying. The recipients concerned are listed below.\n\n" :
	    "I'm sorry to have to inform you that your message could not\n"
	    "be delivered to one or more recipients. It's attached below.\n\n");
	for (int i = 0; i < n; i++) {
		dsn_puts(&b, "<");
		dsn_put_clean(&b, r[i].addr, DSN_DIAG_MAX);
		dsn_puts(&b, ">: ");
		dsn_put_clean(&b, r[i].diag ? r[i].diag : r[i].status, DSN_DIAG_MAX);
		dsn_puts(&b, "\n");
	}
	dsn_puts(&b, "\n");

	/* part 2: message/delivery-status */
	dsn_puts(&b, "--");
	dsn_puts(&b, boundary);
	dsn_puts(&b, "\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
	    "Reporting-MTA: dns; ");
	dsn_put_clean(&b, info->reporting_mta, 255);
	dsn_puts(&b, "\nX-Kale-Queue-ID: ");
	dsn_put_clean(&b, info->qid, 64);
	dsn_puts(&b, "\n");
	if (info->envid) {
		dsn_puts(&b, "Original-Envelope-Id: ");
		dsn_put_clean(&b, info->envid, 100);
		dsn_puts(&b, "\n");
	}
	dsn_puts(&b, "Arrival-Date: ");
	dsn_puts(&b, arr);
	dsn_puts(&b, "\n");
	for (int i = 0; i < n; i++) {
		dsn_puts(&b, "\n");
		if (r[i].orcpt)
			dsn_put_orcpt(&b, r[i].orcpt);
		dsn_puts(&b, "Final-Recipient: rfc822; ");
		dsn_put_clean(&b, r[i].addr, DSN_DIAG_MAX);
		dsn_puts(&b, "\nAction: ");
		dsn_put_clean(&b, r[i].action, 32);
		dsn_puts(&b, "\nStatus: ");
		dsn_put_clean(&b, r[i].status, 16);
		dsn_puts(&b, "\n");
		if (r[i].remote_mta && r[i].remote_mta[0]) {
			dsn_puts(&b, "Remote-MTA: dns; ");
			dsn_put_clean(&b, r[i].remote_mta, 255);
			dsn_puts(&b, "\n");
		}
		if (r[i].diag && r[i].diag[0]) {
			dsn_puts(&b, "Diagnostic-Code: smtp; ");
			dsn_put_clean(&b, r[i].diag, DSN_DIAG_MAX);
			dsn_puts(&b, "\n");
		}
		dsn_puts(&b, "Last-Attempt-Date: ");
		dsn_puts(&b, now);
		dsn_puts(&b, "\n");
	}
	dsn_puts(&b, "\n");

	/* part 3: the original */
	hlen = dsn_header_len(orig ? orig : "", orig ? orig_len : 0);
	if (full && orig_len > DSN_ORIG_MAX)
		full = 0;
	dsn_puts(&b, "--");
	dsn_puts(&b, boundary);
	dsn_puts(&b, full ? "\nContent-Description: Undelivered Message\nContent-Type: message/rfc822\n\n" :
	    "\nContent-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n");
	if (orig != NULL) {
		size_t n_out = full ? orig_len : hlen;
		dsn_put(&b, orig, n_out);
		if (n_out > 0 && orig[n_out - 1] != '\n')
			dsn_puts(&b, "\n");
	}
	dsn_puts(&b, "\n--");
	dsn_puts(&b, boundary);
	dsn_puts(&b, "--\n");
	*len_r = b.len;
	return b.p;
}
