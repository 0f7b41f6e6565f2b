/* smc: the small blocking SMTP client that hands one message to kaled over
 * <data_dir>/public/sendmail.sock (kale-sendmail, and the maildrop pickup).
 * LF or CRLF lines go out as CRLF, dot-stuffed. */
#ifndef KALE_SMC_H
#define KALE_SMC_H

#include <stddef.h>

#define SMC_ADDR_MAX 320

/* Exit codes, sendmail's: 0 queued, SMC_TEMPFAIL try later, SMC_FAIL refused. */
#define SMC_OK       0
#define SMC_TEMPFAIL 75   /* EX_TEMPFAIL */
#define SMC_FAIL     1

struct smc {
	int fd;
	char in[4096];            /* socket read buffer */
	size_t in_len;
	char out[65536];          /* socket write buffer */
	size_t out_len;
	char reply[512];          /* last reply, cleaned for printing */
	char error[700];          /* what went wrong, for the caller to print or log */
	int has_8bitmime;
};

/* Connects to data_dir's sendmail.sock (timeout seconds per read/write).
 * 0, or -1 with s->error set and errno kept (ENOENT/ECONNREFUSED: no daemon). */
int smc_connect(struct smc *s, const char *data_dir, int timeout);
/* One transaction: greeting, EHLO, [XUID uid], MAIL, RCPTs, DATA, QUIT.
 * xuid < 0: none. Returns SMC_OK, SMC_TEMPFAIL (4xx, I/O) or SMC_FAIL (5xx)
 * with s->error set. */
int smc_send(struct smc *s, const char *helo, long xuid, const char *sender,
    char *const *rcpt, int n_rcpt, const char *msg, size_t len);
void smc_close(struct smc *s);

#endif
