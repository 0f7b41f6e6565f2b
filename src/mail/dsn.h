/* dsn: builds RFC 3464 delivery status notifications (bounces): a
 * multipart/report with a human-readable part, message/delivery-status and
 * the original headers (or the whole message for RET=FULL). Pure string
 * building, no I/O; used by qmgr. Output uses LF line endings (the stored
 * form of a queued body). */
#ifndef KALE_DSN_H
#define KALE_DSN_H

#include <stddef.h>
#include <stdint.h>

#define DSN_DIAG_MAX 512        /* bytes of a diagnostic kept */
#define DSN_ORIG_MAX (10u * 1024 * 1024)  /* largest original returned in full */

struct dsn_rcpt {
	const char *addr;        /* final recipient */
	const char *orcpt;       /* ORCPT value ("rfc822;addr") or NULL */
	const char *action;      /* "failed" (bounce, expiry) or "delayed" */
	const char *status;      /* RFC 3463 code, e.g. "5.1.1" */
	const char *remote_mta;  /* next hop host or NULL */
	const char *diag;        /* "550 5.1.1 no such user" or NULL */
};

struct dsn_info {
	const char *reporting_mta;   /* our host name */
	const char *qid;             /* the original's queue id */
	const char *envid;           /* ENVID or NULL */
	const char *sender;          /* the original sender: the DSN's recipient */
	int64_t arrival;             /* unix seconds */
	int64_t now;                 /* unix seconds (Date:, Last-Attempt-Date) */
	const char *boundary_seed;   /* makes the MIME boundary; e.g. a new qid */
};

/* Builds the DSN for n recipients. orig is the stored original body
 * ([0, orig_len), LF endings); with full == 0 only its header block is
 * returned (text/rfc822-headers), else the whole of it (message/rfc822).
 * Diagnostics and addresses are cleaned (control characters replaced, cut
 * to DSN_DIAG_MAX). Returns a malloc'd NUL-terminated text and its length
 * in *len_r, or NULL when n < 1. */
char *dsn_build(const struct dsn_info *info, const struct dsn_rcpt *r, int n,
    const char *orig, size_t orig_len, int full, size_t *len_r);

/* Length of the header block of a stored body: up to and including the
 * empty line, or all of it when there is none. */
size_t dsn_header_len(const char *body, size_t len);

#endif
