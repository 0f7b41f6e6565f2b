/* auth_server: the "servers" AUTH method's client: logs in to one POP3 (USER/
 * PASS) or IMAP (LOGIN) server over plain TCP, implicit TLS or STARTTLS/STLS,
 * with a non-blocking socket, poll() and one deadline for everything.
 * Runs on smtpd's lookup threads and in kalectl auth test. */
#include "auth/auth_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "lib/tls.h"
#include "lib/util.h"

#define AUTH_LINE_MAX 8192
#define AUTH_CMD_MAX  (AUTH_PASSWORD_MAX + AUTH_USER_MAX + 64)

struct auth_conn {
	int fd;
	SSL *ssl;
	uint64_t deadline;
	size_t len;
	char buf[AUTH_LINE_MAX];
	char err[256];
};

static int auth_conn_fail(struct auth_conn *c, const char *what, const char *why)
{
	if (util_fmt(c->err, sizeof(c->err), "%s: %s", what, why) < 0)
		c->err[sizeof(c->err) - 1] = '\0';
	return -1;
}

/* Waits for events on the socket until the deadline. 0 ready, -1 timeout/error. */
static int auth_conn_wait(struct auth_conn *c, short events, const char *what)
{
	struct pollfd pfd = { .fd = c->fd, .events = events };

	for (;;) {
		uint64_t now = util_now_ms();
		int n;

		if (now >= c->deadline)
			return auth_conn_fail(c, what, "timed out");
		n = poll(&pfd, 1, (int)(c->deadline - now > 60000 ? 60000 : c->deadline - now));
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return auth_conn_fail(c, what, strerror(errno));
	}
}

static int auth_conn_connect(struct auth_conn *c, const struct store_auth_server *srv)
{
	struct addrinfo hints, *res = NULL, *ai;
	char port[8];
	int gai, err = 0;
	socklen_t elen;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (util_fmt(port, sizeof(port), "%d", srv->port) < 0)
		return auth_conn_fail(c, "connect", "bad port");
	if ((gai = getaddrinfo(srv->host, port, &hints, &res)) != 0)
		return auth_conn_fail(c, "resolve", gai_strerror(gai));
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (c->fd < 0) {
			err = errno;
			continue;
		}
		if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		if (err == EINPROGRESS) {
			if (auth_conn_wait(c, POLLOUT, "connect") < 0) {
				freeaddrinfo(res);
				return -1;
			}
			elen = sizeof(err);
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
				err = errno;
			if (err == 0)
				break;
		}
		close(c->fd);
		c->fd = -1;
	}
	freeaddrinfo(res);
	if (c->fd < 0)
		return auth_conn_fail(c, "connect", strerror(err ? err : ECONNREFUSED));
	return 0;
}

/* Waits as OpenSSL asks after a non-blocking call; 0 to retry, -1 to give up. */
static int auth_conn_ssl_retry(struct auth_conn *c, int ret, const char *what)
{
	char ebuf[200];

	switch (SSL_get_error(c->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		return auth_conn_wait(c, POLLIN, what);
	case SSL_ERROR_WANT_WRITE:
		return auth_conn_wait(c, POLLOUT, what);
	case SSL_ERROR_ZERO_RETURN:
		return auth_conn_fail(c, what, "connection closed");
	case SSL_ERROR_SYSCALL:
		return auth_conn_fail(c, what, errno ? strerror(errno) : "connection closed");
	default:
		tls_error_string(ebuf, sizeof(ebuf));
		return auth_conn_fail(c, what, ebuf[0] ? ebuf : "TLS error");
	}
}

static int auth_conn_tls(struct auth_conn *c, const char *host, SSL_CTX **ctx)
{
	struct in6_addr a;
	char *error = NULL;
	int ret;

	if (*ctx == NULL && (*ctx = tls_client_ctx(&error)) == NULL) {
		auth_conn_fail(c, "tls", error ? error : "no client context");
		free(error);
		return -1;
	}
	ERR_clear_error();
	if ((c->ssl = SSL_new(*ctx)) == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
		return auth_conn_fail(c, "tls", "cannot create a session");
	if (inet_pton(AF_INET, host, &a) != 1 && inet_pton(AF_INET6, host, &a) != 1)
		SSL_set_tlsext_host_name(c->ssl, host);
	while ((ret = SSL_connect(c->ssl)) != 1)
		if (auth_conn_ssl_retry(c, ret, "tls handshake") < 0)
			return -1;
	return 0;
}

static int auth_conn_write(struct auth_conn *c, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n;

		if (c->ssl != NULL) {
			int ret;
			ERR_clear_error();
			ret = SSL_write(c->ssl, data, (int)(len > 16384 ? 16384 : len));
			if (ret <= 0) {
				if (auth_conn_ssl_retry(c, ret, "write") < 0)
					return -1;
				continue;
			}
			n = ret;
		} else {
			n = send(c->fd, data, len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK)
					return auth_conn_fail(c, "write", strerror(errno));
				if (auth_conn_wait(c, POLLOUT, "write") < 0)
					return -1;
				continue;
			}
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int auth_conn_fill(struct auth_conn *c)
{
	for (;;) {
		size_t room = sizeof(c->buf) - c->len;
		ssize_t n;

		if (c->ssl != NULL) {
			int ret;
			ERR_clear_error();
			ret = SSL_read(c->ssl, c->buf + c->len, (int)room);
			if (ret <= 0) {
				if (auth_conn_ssl_retry(c, ret, "read") < 0)
					return -1;
				continue;
			}
			n = ret;
		} else {
			n = recv(c->fd, c->buf + c->len, room, 0);
			if (n == 0)
				return auth_conn_fail(c, "read", "connection closed");
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK)
					return auth_conn_fail(c, "read", strerror(errno));
				if (auth_conn_wait(c, POLLIN, "read") < 0)
					return -1;
				continue;
			}
		}
		c->len += (size_t)n;
		return 0;
	}
}

/* One line without its CRLF into out (truncated to cap - 1). 0 or -1. */
static int auth_conn_line(struct auth_conn *c, char *out, size_t cap)
{
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);

		if (nl != NULL) {
			size_t ll = (size_t)(nl - c->buf), copy = ll;
			if (copy > 0 && c->buf[copy - 1] == '\r')
				copy--;
			if (copy >= cap)
				copy = cap - 1;
			memcpy(out, c->buf, copy);
			out[copy] = '\0';
			for (size_t i = 0; i < copy; i++)
				if (out[i] == '\0')
					out[i] = '?';
			c->len -= ll + 1;
			memmove(c->buf, nl + 1, c->len);
			return 0;
		}
		if (c->len == sizeof(c->buf))
			return auth_conn_fail(c, "read", "line too long");
		if (auth_conn_fill(c) < 0)
			return -1;
	}
}

/* After the server's yes to STARTTLS/STLS: whatever it sent behind that
 * answer was not protected and is thrown away (CVE-2021-38371). */
static int auth_conn_starttls(struct auth_conn *c, const char *host, SSL_CTX **ctx)
{
	c->len = 0;
	return auth_conn_tls(c, host, ctx);
}

static void auth_conn_close(struct auth_conn *c)
{
	if (c->ssl != NULL) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	explicit_bzero(c->buf, sizeof(c->buf));
}

/* A server's line cut for a detail message: printable ASCII only. */
static void auth_clean(char *s)
{
	for (size_t i = 0; s[i]; i++) {
		if (i >= 200) {
			s[i] = '\0';
			break;
		}
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			s[i] = '?';
	}
}

/* ---- POP3 ---- */

static enum auth_result auth_pop3_err(char *line, char *why, size_t cap)
{
	enum auth_result r = AUTH_FAIL;

	if (strstr(line, "[SYS/") != NULL)
		r = AUTH_TEMPFAIL;
	else if (strstr(line, "[IN-USE]") != NULL)
		r = AUTH_OK;          /* RFC 3206: authenticated, but the maildrop is locked */
	auth_clean(line);
	if (util_fmt(why, cap, "%s", line) < 0)
		why[cap - 1] = '\0';
	return r;
}

static enum auth_result auth_pop3(struct auth_conn *c, const struct store_auth_server *srv,
    const char *user, const char *password, SSL_CTX **ctx, char *why, size_t wcap)
{
	char line[512], cmd[AUTH_CMD_MAX];
	enum auth_result r = AUTH_TEMPFAIL;

	if (auth_conn_line(c, line, sizeof(line)) < 0)
		goto io;
	if (strncmp(line, "+OK", 3) != 0) {
		auth_clean(line);
		util_fmt(why, wcap, "greeting: %s", line);
		return AUTH_TEMPFAIL;
	}
	if (strcmp(srv->tls, "starttls") == 0) {
		if (auth_conn_write(c, "STLS\r\n", 6) < 0 || auth_conn_line(c, line, sizeof(line)) < 0)
			goto io;
		if (strncmp(line, "+OK", 3) != 0) {
			auth_clean(line);
			util_fmt(why, wcap, "STLS refused: %s", line);
			return AUTH_TEMPFAIL;
		}
		if (auth_conn_starttls(c, srv->host, ctx) < 0)
			goto io;
	}
	if (util_fmt(cmd, sizeof(cmd), "USER %s\r\n", user) < 0)
		return AUTH_FAIL;
	if (auth_conn_write(c, cmd, strlen(cmd)) < 0 || auth_conn_line(c, line, sizeof(line)) < 0)
		goto io;
	if (strncmp(line, "+OK", 3) != 0)
		return auth_pop3_err(line, why, wcap);
	if (util_fmt(cmd, sizeof(cmd), "PASS %s\r\n", password) < 0)
		return AUTH_FAIL;
	if (auth_conn_write(c, cmd, strlen(cmd)) < 0) {
		explicit_bzero(cmd, sizeof(cmd));
		goto io;
	}
	explicit_bzero(cmd, sizeof(cmd));
	if (auth_conn_line(c, line, sizeof(line)) < 0)
		goto io;
	if (strncmp(line, "+OK", 3) == 0)
		r = AUTH_OK;
	else
		r = auth_pop3_err(line, why, wcap);
	/* polite, but the answer is known: no waiting for the server's reply */
	(void)auth_conn_write(c, "QUIT\r\n", 6);
	return r;
io:
	util_fmt(why, wcap, "%s", c->err);
	return AUTH_TEMPFAIL;
}

/* ---- IMAP ---- */

int auth_imap_needs_literal(const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
			return 1;
	}
	return 0;
}

/* Reads until the line tagged TAG; untagged lines are skipped, "* BYE" ends.
 * 0 with the tagged line in line, -1 on I/O error, -2 on BYE. */
static int auth_imap_tagged(struct auth_conn *c, const char *tag, char *line, size_t cap)
{
	size_t tl = strlen(tag);

	for (;;) {
		if (auth_conn_line(c, line, cap) < 0)
			return -1;
		if (strncmp(line, tag, tl) == 0 && line[tl] == ' ')
			return 0;
		if (strncasecmp(line, "* BYE", 5) == 0)
			return -2;
	}
}

static enum auth_result auth_imap_answer(char *line, size_t tl, char *why, size_t cap)
{
	char *p = line + tl + 1;
	enum auth_result r;

	if (strncasecmp(p, "OK", 2) == 0)
		r = AUTH_OK;
	else if (strncasecmp(p, "NO", 2) == 0)
		r = (strstr(p, "[UNAVAILABLE]") || strstr(p, "[SERVERBUG]") || strstr(p, "[INUSE]") ||
		    strstr(p, "[LIMIT]")) ? AUTH_TEMPFAIL : AUTH_FAIL;
	else
		r = AUTH_TEMPFAIL;   /* BAD or garbage: no answer about the password */
	auth_clean(p);
	if (util_fmt(why, cap, "%s", p) < 0)
		why[cap - 1] = '\0';
	return r;
}

/* Sends one LOGIN argument, then sep. Literals wait for the server's "+".
 * 0 sent; 1 the server answered the command already (line holds it); -1 I/O. */
static int auth_imap_arg(struct auth_conn *c, const char *arg, const char *sep,
    char *line, size_t cap)
{
	char head[32];
	size_t len = strlen(arg);

	if (!auth_imap_needs_literal(arg)) {
		if (auth_conn_write(c, "\"", 1) < 0 || auth_conn_write(c, arg, len) < 0 ||
		    auth_conn_write(c, "\"", 1) < 0 || auth_conn_write(c, sep, strlen(sep)) < 0)
			return -1;
		return 0;
	}
	if (util_fmt(head, sizeof(head), "{%zu}\r\n", len) < 0 ||
	    auth_conn_write(c, head, strlen(head)) < 0)
		return -1;
	for (;;) {
		if (auth_conn_line(c, line, cap) < 0)
			return -1;
		if (line[0] == '+')
			break;
		if (strncmp(line, "* ", 2) != 0)
			return 1;
	}
	if (auth_conn_write(c, arg, len) < 0 || auth_conn_write(c, sep, strlen(sep)) < 0)
		return -1;
	return 0;
}

/* The connection was lost (rc -1) or the server said BYE (rc -2). */
static enum auth_result auth_imap_lost(struct auth_conn *c, int rc, char *why, size_t wcap)
{
	if (rc == -2)
		util_fmt(why, wcap, "the server said BYE");
	else
		util_fmt(why, wcap, "%s", c->err);
	return AUTH_TEMPFAIL;
}

static enum auth_result auth_imap(struct auth_conn *c, const struct store_auth_server *srv,
    const char *user, const char *password, SSL_CTX **ctx, char *why, size_t wcap)
{
	char line[1024];
	enum auth_result r;
	int rc;

	if (auth_conn_line(c, line, sizeof(line)) < 0)
		return auth_imap_lost(c, -1, why, wcap);
	if (strncasecmp(line, "* OK", 4) != 0) {
		auth_clean(line);
		util_fmt(why, wcap, "greeting: %s", line);
		return AUTH_TEMPFAIL;
	}
	if (strcmp(srv->tls, "starttls") == 0) {
		if (auth_conn_write(c, "a1 STARTTLS\r\n", 13) < 0)
			return auth_imap_lost(c, -1, why, wcap);
		if ((rc = auth_imap_tagged(c, "a1", line, sizeof(line))) < 0)
			return auth_imap_lost(c, rc, why, wcap);
		if (strncasecmp(line + 3, "OK", 2) != 0) {
			auth_clean(line);
			util_fmt(why, wcap, "STARTTLS refused: %s", line);
			return AUTH_TEMPFAIL;
		}
		if (auth_conn_starttls(c, srv->host, ctx) < 0)
			return auth_imap_lost(c, -1, why, wcap);
	} else if (strcmp(srv->tls, "plain") == 0 && strstr(line, "LOGINDISABLED") != NULL) {
		util_fmt(why, wcap, "the server refuses LOGIN without TLS (LOGINDISABLED)");
		return AUTH_TEMPFAIL;
	}
	if (auth_conn_write(c, "a2 LOGIN ", 9) < 0)
		return auth_imap_lost(c, -1, why, wcap);
	rc = auth_imap_arg(c, user, " ", line, sizeof(line));
	if (rc == 0)
		rc = auth_imap_arg(c, password, "\r\n", line, sizeof(line));
	if (rc < 0)
		return auth_imap_lost(c, -1, why, wcap);
	if (rc == 0 && (rc = auth_imap_tagged(c, "a2", line, sizeof(line))) < 0)
		return auth_imap_lost(c, rc, why, wcap);
	if (strncmp(line, "a2 ", 3) != 0) {
		auth_clean(line);
		util_fmt(why, wcap, "unexpected answer: %s", line);
		return AUTH_TEMPFAIL;
	}
	r = auth_imap_answer(line, 2, why, wcap);
	(void)auth_conn_write(c, "a3 LOGOUT\r\n", 11);   /* no waiting for its answer */
	return r;
}

enum auth_result auth_server_login(const struct store_auth_server *srv, const char *user,
    const char *password, SSL_CTX **ctx, uint64_t deadline_ms, char **detail_r)
{
	struct auth_conn *c = xcalloc(1, sizeof(*c));
	enum auth_result r = AUTH_TEMPFAIL;
	char why[300], detail[600];
	int pop3 = strcmp(srv->proto, "pop3") == 0;

	c->fd = -1;
	c->deadline = deadline_ms;
	why[0] = '\0';
	if (pop3 && (strpbrk(user, "\r\n") != NULL || strpbrk(password, "\r\n") != NULL)) {
		r = AUTH_FAIL;
		util_fmt(why, sizeof(why), "user or password cannot be sent over POP3 (CR/LF)");
	} else if (auth_conn_connect(c, srv) < 0 ||
	    (strcmp(srv->tls, "ssl") == 0 && auth_conn_tls(c, srv->host, ctx) < 0)) {
		util_fmt(why, sizeof(why), "%s", c->err);
	} else {
		r = pop3 ? auth_pop3(c, srv, user, password, ctx, why, sizeof(why)) :
		    auth_imap(c, srv, user, password, ctx, why, sizeof(why));
	}
	auth_conn_close(c);
	free(c);
	if (detail_r != NULL) {
		if (util_fmt(detail, sizeof(detail), "server %lld %s %s%s%s:%d %s: %s%s%s",
		    (long long)srv->id, srv->proto, strchr(srv->host, ':') ? "[" : "", srv->host,
		    strchr(srv->host, ':') ? "]" : "", srv->port, srv->tls,
		    r == AUTH_OK ? "accepted" : r == AUTH_FAIL ? "refused" : "no answer",
		    why[0] ? ": " : "", why) < 0)
			detail[sizeof(detail) - 1] = '\0';
		*detail_r = xstrdup(detail);
	}
	return r;
}
