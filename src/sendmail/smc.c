/* smc: kale-sendmail's SMTP client over sendmail.sock, shared with the
 * maildrop pickup (see smc.h). */
#include "sendmail/smc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "lib/util.h"

static void smc_err(struct smc *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void smc_err(struct smc *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)util_vfmt(s->error, sizeof(s->error), fmt, ap);   /* a message: cut if longer */
	va_end(ap);
}

static int smc_flush(struct smc *s)
{
	size_t off = 0;

	while (off < s->out_len) {
		ssize_t n = send(s->fd, s->out + off, s->out_len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			smc_err(s, "writing to the daemon: %s", n < 0 ? strerror(errno) : "closed");
			return -1;
		}
		off += (size_t)n;
	}
	s->out_len = 0;
	return 0;
}

static int smc_write(struct smc *s, const char *data, size_t len)
{
	while (len > 0) {
		size_t room = sizeof(s->out) - s->out_len, n = len < room ? len : room;
		memcpy(s->out + s->out_len, data, n);
		s->out_len += n;
		data += n;
		len -= n;
		if (s->out_len == sizeof(s->out) && smc_flush(s) < 0)
			return -1;
	}
	return 0;
}

/* One reply line (CRLF cut) into line. 0 or -1. */
static int smc_line(struct smc *s, char *line, size_t cap)
{
	for (;;) {
		char *nl = memchr(s->in, '\n', s->in_len);
		ssize_t n;

		if (nl != NULL) {
			size_t ll = (size_t)(nl - s->in), c = ll;
			if (c > 0 && s->in[c - 1] == '\r')
				c--;
			if (c >= cap)
				c = cap - 1;
			memcpy(line, s->in, c);
			line[c] = '\0';
			s->in_len -= ll + 1;
			memmove(s->in, nl + 1, s->in_len);
			return 0;
		}
		if (s->in_len == sizeof(s->in)) {
			smc_err(s, "reply line too long");
			return -1;
		}
		n = recv(s->fd, s->in + s->in_len, sizeof(s->in) - s->in_len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			smc_err(s, "reading from the daemon: %s", n < 0 ? strerror(errno) : "connection closed");
			return -1;
		}
		s->in_len += (size_t)n;
	}
}

/* Reads a whole (multi-line) reply; returns its code, or -1 on I/O error.
 * s->reply keeps the last line, cleaned. */
static int smc_reply(struct smc *s)
{
	char line[4096];

	for (;;) {
		if (smc_line(s, line, sizeof(line)) < 0)
			return -1;
		if (strlen(line) < 3 || line[0] < '2' || line[0] > '5' ||
		    line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9' ||
		    (line[3] != '\0' && line[3] != ' ' && line[3] != '-')) {
			smc_err(s, "bad reply from the daemon");
			return -1;
		}
		if (strncasecmp(line + 4, "8BITMIME", 8) == 0)
			s->has_8bitmime = 1;
		if (line[3] != '-') {
			size_t i;
			for (i = 0; line[i] && i < sizeof(s->reply) - 1; i++)
				s->reply[i] = (unsigned char)line[i] < 0x20 || line[i] == 0x7f ? '?' : line[i];
			s->reply[i] = '\0';
			return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		}
	}
}

/* Sends a command and checks the reply's first digit. 0 ok; else the exit code. */
static int smc_cmd(struct smc *s, const char *what, int want, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int smc_cmd(struct smc *s, const char *what, int want, const char *fmt, ...)
{
	char buf[SMC_ADDR_MAX + 300];
	va_list ap;
	int n, code;

	va_start(ap, fmt);
	n = util_vfmt(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0) {
		smc_err(s, "%s: command too long", what);
		return SMC_FAIL;
	}
	if (smc_write(s, buf, strlen(buf)) < 0 || smc_flush(s) < 0 || (code = smc_reply(s)) < 0)
		return SMC_TEMPFAIL;
	if (code / 100 == want)
		return 0;
	smc_err(s, "%s: %s", what, s->reply);
	return code / 100 == 4 ? SMC_TEMPFAIL : SMC_FAIL;
}

/* The message as CRLF lines, dot-stuffed, then ".\r\n". */
static int smc_body(struct smc *s, const char *msg, size_t len)
{
	size_t i = 0;

	while (i < len) {
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - (msg + i)) : len - i;
		size_t cl = ll > 0 && msg[i + ll - 1] == '\r' ? ll - 1 : ll;

		if (cl > 0 && msg[i] == '.' && smc_write(s, ".", 1) < 0)
			return -1;
		if (smc_write(s, msg + i, cl) < 0 || smc_write(s, "\r\n", 2) < 0)
			return -1;
		i += ll + 1;
	}
	if (smc_write(s, ".\r\n", 3) < 0)
		return -1;
	return smc_flush(s);
}

int smc_connect(struct smc *s, const char *data_dir, int timeout)
{
	struct sockaddr_un sun;
	struct timeval tv = { .tv_sec = timeout };
	int e;

	s->in_len = s->out_len = 0;
	s->has_8bitmime = 0;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (util_fmt(sun.sun_path, sizeof(sun.sun_path), "%s/public/sendmail.sock", data_dir) < 0) {
		smc_err(s, "data_dir %s is too long for a socket path", data_dir);
		errno = ENAMETOOLONG;
		return -1;
	}
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		smc_err(s, "socket: %s", strerror(errno));
		return -1;
	}
	(void)setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(s->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		e = errno;
		smc_err(s, "cannot reach kaled at %s: %s (is it running?)", sun.sun_path, strerror(e));
		close(s->fd);
		s->fd = -1;
		errno = e;
		return -1;
	}
	return 0;
}

void smc_close(struct smc *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

static int smc_has_8bit(const char *msg, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)msg[i] >= 0x80)
			return 1;
	return 0;
}

int smc_send(struct smc *s, const char *helo, long xuid, const char *sender,
    char *const *rcpt, int n_rcpt, const char *msg, size_t len)
{
	int rc, code;

	if ((code = smc_reply(s)) < 0)
		return SMC_TEMPFAIL;
	if (code != 220) {
		smc_err(s, "greeting: %s", s->reply);
		return code / 100 == 4 ? SMC_TEMPFAIL : SMC_FAIL;
	}
	if ((rc = smc_cmd(s, "EHLO", 2, "EHLO %s\r\n", helo)) != 0)
		return rc;
	if (xuid >= 0 && (rc = smc_cmd(s, "XUID", 2, "XUID %ld\r\n", xuid)) != 0)
		return rc;
	if ((rc = smc_cmd(s, "MAIL FROM", 2, "MAIL FROM:<%s>%s\r\n", sender,
	    s->has_8bitmime && smc_has_8bit(msg, len) ? " BODY=8BITMIME" : "")) != 0)
		return rc;
	for (int i = 0; i < n_rcpt; i++) {
		char what[SMC_ADDR_MAX + 16];
		if (util_fmt(what, sizeof(what), "RCPT TO <%s>", rcpt[i]) < 0)
			what[0] = '\0';
		if ((rc = smc_cmd(s, what, 2, "RCPT TO:<%s>\r\n", rcpt[i])) != 0)
			return rc;
	}
	if ((rc = smc_cmd(s, "DATA", 3, "DATA\r\n")) != 0)
		return rc;
	if (smc_body(s, msg, len) < 0 || (code = smc_reply(s)) < 0)
		return SMC_TEMPFAIL;
	if (code / 100 != 2) {
		smc_err(s, "end of data: %s", s->reply);
		return code / 100 == 4 ? SMC_TEMPFAIL : SMC_FAIL;
	}
	(void)smc_cmd(s, "QUIT", 2, "QUIT\r\n");
	return SMC_OK;
}
