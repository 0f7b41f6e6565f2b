/* smtp_parse: pure parsers for the SMTP server: command lines, MAIL/RCPT
 * paths and ESMTP parameters, and the DATA / BDAT byte state machines that
 * find the end of data and normalise line endings. No I/O, no allocation in
 * the DATA path. Runs inside the smtpd workers on untrusted input. */
#ifndef KALE_SMTP_PARSE_H
#define KALE_SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define SMTP_LINE_MAX 512      /* command line incl. CRLF, RFC 5321 4.5.3.1.4 */
#define SMTP_PATH_MAX 256      /* reverse/forward path, RFC 5321 4.5.3.1.3 */
#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255

enum smtp_verb {
	SMTP_UNKNOWN = 0, SMTP_HELO, SMTP_EHLO, SMTP_MAIL, SMTP_RCPT, SMTP_DATA,
	SMTP_BDAT, SMTP_RSET, SMTP_NOOP, SMTP_QUIT, SMTP_VRFY, SMTP_EXPN,
	SMTP_HELP, SMTP_STARTTLS, SMTP_AUTH,
	SMTP_XUID            /* kale's own, sendmail.sock only (maildrop pickup) */
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg;   /* points into the line: after the verb (and "FROM:"/"TO:"
	                      for MAIL/RCPT), leading spaces skipped; "" if none */
};

enum smtp_parse_result {
	SMTP_PARSE_OK = 0,
	SMTP_PARSE_SYNTAX,   /* 500/501 */
	SMTP_PARSE_TOO_LONG, /* 500 5.5.2 line too long */
	SMTP_PARSE_NUL,      /* 501 5.5.2 NUL byte */
	SMTP_PARSE_BARE_CRLF /* bare CR or LF inside the line: 501 5.5.2 */
};

/* Parses one command line, given WITHOUT its terminating CRLF (len bytes,
 * not NUL terminated; the caller guarantees buf[len] is writable and the
 * parser NUL-terminates there). The verb is case-insensitive. MAIL needs
 * "FROM:" and RCPT "TO:" (a space before the '<' is tolerated). */
enum smtp_parse_result smtp_parse_command(char *buf, size_t len, struct smtp_cmd *cmd);

/* A parsed path with its ESMTP parameters. */
struct smtp_path {
	char addr[SMTP_PATH_MAX + 1];  /* "local@domain", domain lower-cased, local
	                                  part as given (quotes removed if the quoted
	                                  form was needed only for no reason, else kept);
	                                  "" for the null path <> */
	char local[SMTP_LOCAL_MAX * 2 + 3];
	char domain[SMTP_DOMAIN_MAX + 1]; /* "" for <> and for unqualified "postmaster" */
	int is_null;          /* <> */
	int domain_literal;   /* [1.2.3.4] or [IPv6:...] */
	int utf8;             /* contains UTF-8 (needs SMTPUTF8) */
	/* MAIL parameters */
	uint64_t size;        /* SIZE=, 0 if absent */
	int body;             /* 0 none, 7 BODY=7BIT, 8 BODY=8BITMIME */
	int smtputf8;         /* SMTPUTF8 given */
	int ret;              /* 0 none, 1 RET=FULL, 2 RET=HDRS */
	char envid[101];      /* ENVID= xtext decoded; never holds CR, LF or NUL */
	/* RCPT parameters */
	int notify;           /* bit 1 NEVER, 2 SUCCESS, 4 FAILURE, 8 DELAY; 0 none */
	char orcpt[SMTP_PATH_MAX + 10]; /* ORCPT= decoded; never holds CR, LF or NUL */
};

/* Parses the argument of MAIL (is_mail=1) or RCPT (is_mail=0): "<path> [params]".
 * Accepts a source route "@a,@b:user@dom" (ignored, RFC 5321 C.), the null path
 * for MAIL only, unqualified "postmaster" for RCPT only (case-insensitive).
 * Refuses: missing brackets, "user@other@dom", empty local part or domain,
 * bad characters, over-long parts, bad/unknown/duplicate parameters, xtext
 * that decodes to control characters, invalid UTF-8. Returns 0 or -1 with a
 * static reply text in *error_r such as "501 5.1.7 Bad sender address syntax"
 * (5.1.7 sender / 5.1.3 recipient / 5.5.4 bad parameter). */
int smtp_parse_path(const char *arg, int is_mail, struct smtp_path *p, const char **error_r);

/* Validates a HELO/EHLO argument (domain or address literal, <= 255). 0 ok. */
int smtp_parse_helo(const char *arg);

/* ---- DATA: finds CRLF.CRLF, undoes dot-stuffing, normalises endings ----
 * Output is the message with LF line endings (how kale stores it). Only
 * <CRLF>.<CRLF> ends the data; the DATA command's own CRLF counts as the first
 * CRLF so ".\r\n" right away is an empty message. A bare LF ends a *line* (it
 * is stored as LF) but never starts or ends the terminating sequence; a bare
 * CR (not followed by LF) is stored as a space. So "\n.\n", "\r\n.\n",
 * "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r.\r", "\n.\r" are content and a line
 * holding a lone "." is stored as "." (re-stuffed on the way out). NUL bytes set
 * `nul` and are dropped. Output past `max` bytes is not emitted and sets
 * `too_big`, but scanning goes on to the real end. */
struct smtp_data {
	int state;            /* internal */
	uint64_t max;         /* size limit, 0 = none */
	uint64_t size;        /* bytes emitted so far (normalised) */
	int too_big;
	int nul;
	int bare_lf;          /* saw a bare LF */
	int bare_cr;          /* saw a bare CR */
	int in_header;        /* still in the header section */
	int line_start;       /* internal: at start of an output line */
	int hops;             /* "Received:" header lines seen */
	char hdrbuf[16];      /* internal: start of the current header line */
	int hdrlen;           /* internal */
};

typedef void smtp_data_out_fn(void *ctx, const char *p, size_t n);

void smtp_data_init(struct smtp_data *d, uint64_t max);
/* Feeds len bytes. Returns the number consumed: all of them unless the end
 * was found, then the bytes up to and including the final LF; *done is set
 * to 1 then. Output goes to out(ctx, ...) in pieces. */
size_t smtp_data_feed(struct smtp_data *d, const char *buf, size_t len, int *done,
    smtp_data_out_fn *out, void *ctx);

/* ---- BDAT: chunk bytes are taken as they are (no dot handling) but line
 * endings are normalised the same way (CRLF -> LF, bare CR -> space, a CR at
 * the end of one chunk is resolved with the next). Call smtp_bdat_feed with
 * each chunk's bytes and smtp_bdat_last once after the LAST chunk; it ends
 * an unterminated last line with LF. */
void smtp_bdat_init(struct smtp_data *d, uint64_t max);
void smtp_bdat_feed(struct smtp_data *d, const char *buf, size_t len, smtp_data_out_fn *out, void *ctx);
void smtp_bdat_last(struct smtp_data *d, smtp_data_out_fn *out, void *ctx);

/* Parses "BDAT <size> [LAST]"; 0 ok with *size_r and *last_r set, -1 syntax. */
int smtp_parse_bdat(const char *arg, uint64_t *size_r, int *last_r);

#endif
