/* lookup_smtp: the smtp verification backend: asks the domain's next hop
 * (its relay route HOST[:PORT] or [IPv6][:PORT]) with RCPT TO in a short
 * probe session (EHLO, MAIL FROM:<>, RCPT TO, QUIT; never DATA). Blocking
 * sockets with deadlines; runs in the lookup threads of smtpd and qmgr and
 * in kalectl. */
#include "lookup/lookup_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "conf/conf.h"
#include "lib/util.h"

#define LOOKUP_SMTP_LINE 1024
#define LOOKUP_SMTP_LINES 100      /* lines of one reply */

struct lookup_smtp {
	int fd;
	uint64_t deadline_ms;        /* of the current step */
	int timeout_s;
	char buf[4096];
	size_t len;
};

static char *lookup_smtp_err(const char *fmt, const char *a, const char *b)
{
	char buf[600];

	if (util_fmt(buf, sizeof(buf), fmt, a ? a : "", b ? b : "") < 0)
		buf[0] = '\0';
	/* a server's words: no control characters in the detail */
	for (char *p = buf; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return xstrdup(buf);
}

static int lookup_smtp_wait(struct lookup_smtp *s, short events)
{
	struct pollfd pfd = { s->fd, events, 0 };
	uint64_t now = util_now_ms();
	int n;

	if (now >= s->deadline_ms)
		return -1;
	do
		n = poll(&pfd, 1, (int)(s->deadline_ms - now));
	while (n < 0 && errno == EINTR);
	return n > 0 ? 0 : -1;
}

static int lookup_smtp_connect(struct lookup_smtp *s, const char *host, const char *port,
    char **detail_r)
{
	struct addrinfo hints, *res = NULL, *ai;
	int e, rc = -1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	e = getaddrinfo(host, port, &hints, &res);
	if (e != 0) {
		*detail_r = lookup_smtp_err("smtp probe: %s: %s", host, gai_strerror(e));
		return -1;
	}
	for (ai = res; ai != NULL && rc < 0; ai = ai->ai_next) {
		int err = 0;
		socklen_t elen = sizeof(err);
		s->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (s->fd < 0)
			continue;
		s->deadline_ms = util_now_ms() + (uint64_t)s->timeout_s * 1000;
		if (connect(s->fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS && lookup_smtp_wait(s, POLLOUT) == 0 &&
		    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0)) {
			rc = 0;
			break;
		}
		close(s->fd);
		s->fd = -1;
	}
	freeaddrinfo(res);
	if (rc < 0)
		*detail_r = lookup_smtp_err("smtp probe: cannot connect to %s port %s", host, port);
	return rc;
}

/* Reads one line (without CRLF) into line[cap]. 0, or -1 on timeout/EOF/too long. */
static int lookup_smtp_line(struct lookup_smtp *s, char *line, size_t cap)
{
	for (;;) {
		char *nl = memchr(s->buf, '\n', s->len);
		ssize_t n;
		if (nl != NULL) {
			size_t l = (size_t)(nl - s->buf);
			size_t take = l > 0 && s->buf[l - 1] == '\r' ? l - 1 : l;
			if (take >= cap)
				return -1;
			memcpy(line, s->buf, take);
			line[take] = '\0';
			memmove(s->buf, nl + 1, s->len - l - 1);
			s->len -= l + 1;
			return 0;
		}
		if (s->len >= sizeof(s->buf) - 1)
			return -1;
		if (lookup_smtp_wait(s, POLLIN) < 0)
			return -1;
		n = read(s->fd, s->buf + s->len, sizeof(s->buf) - 1 - s->len);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			return -1;
		s->len += (size_t)n;
	}
}

/* Reads a reply; returns its code (100-599) with the last line in last[cap], or -1. */
static int lookup_smtp_reply(struct lookup_smtp *s, char *last, size_t cap)
{
	s->deadline_ms = util_now_ms() + (uint64_t)s->timeout_s * 1000;
	for (int i = 0; i < LOOKUP_SMTP_LINES; i++) {
		if (lookup_smtp_line(s, last, cap) < 0)
			return -1;
		if (strlen(last) < 3 || !isdigit((unsigned char)last[0]) || last[0] < '1' ||
		    last[0] > '5' || !isdigit((unsigned char)last[1]) || !isdigit((unsigned char)last[2]) ||
		    (last[3] != '\0' && last[3] != ' ' && last[3] != '-'))
			return -1;
		if (last[3] != '-')
			return (last[0] - '0') * 100 + (last[1] - '0') * 10 + (last[2] - '0');
	}
	return -1;
}

static int lookup_smtp_send(struct lookup_smtp *s, const char *cmd)
{
	size_t len = strlen(cmd), off = 0;

	s->deadline_ms = util_now_ms() + (uint64_t)s->timeout_s * 1000;
	while (off < len) {
		ssize_t n = send(s->fd, cmd + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (lookup_smtp_wait(s, POLLOUT) < 0)
				return -1;
			continue;
		}
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/* Sends cmd, reads the reply: its code or -1. */
static int lookup_smtp_cmd(struct lookup_smtp *s, const char *cmd, char *last, size_t cap)
{
	if (lookup_smtp_send(s, cmd) < 0)
		return -1;
	return lookup_smtp_reply(s, last, cap);
}

/* Splits a relay route into host and port; 0 or -1 (mx, ldap:). */
static int lookup_smtp_route(const char *relay, int defport, char *host, size_t hcap,
    char *port, size_t pcap)
{
	const char *p = NULL, *end;

	if (relay[0] == '[') {
		end = strchr(relay, ']');
		if (end == NULL || util_fmt(host, hcap, "%.*s", (int)(end - relay - 1), relay + 1) < 0)
			return -1;
		if (end[1] == ':')
			p = end + 2;
	} else {
		if (strcmp(relay, "mx") == 0 || strncmp(relay, "ldap:", 5) == 0)
			return -1;
		end = strchr(relay, ':');
		if (util_fmt(host, hcap, "%.*s", end ? (int)(end - relay) : (int)strlen(relay), relay) < 0)
			return -1;
		if (end != NULL)
			p = end + 1;
	}
	if (p != NULL)
		return util_fmt(port, pcap, "%s", p);
	return util_fmt(port, pcap, "%d", defport);
}

/* 1 if the reply says the mailbox does not exist (as opposed to a policy or
 * temporary refusal): 550/551/553, with an enhanced code 5.1.x if any. */
static int lookup_smtp_unknown(int code, const char *last)
{
	const char *t = last + (strlen(last) > 4 ? 4 : strlen(last));

	if (code != 550 && code != 551 && code != 553)
		return 0;
	if (t[0] == '5' && t[1] == '.' && isdigit((unsigned char)t[2]))
		return t[2] == '1';
	return 1;
}

static enum lookup_result lookup_smtp_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r, int *conn_failed_r)
{
	const struct kale_config *cfg = c->cfg;
	const struct store_verify *v = &c->prof;
	store *st = c->st;
	struct lookup_smtp s;
	struct store_domain d;
	char host[300], port[16], cmd[LOOKUP_ADDR_MAX + 64], last[LOOKUP_SMTP_LINE];
	const char *at = strrchr(address, '@');
	enum lookup_result res = LOOKUP_ERROR;
	int code, rc;

	(void)route_r;
	(void)conn_failed_r;     /* one session per lookup: nothing pooled */
	memset(&s, 0, sizeof(s));
	s.fd = -1;
	s.timeout_s = v->timeout > 0 ? v->timeout : LOOKUP_TIMEOUT_S;
	for (const char *p = address; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>') {
			*detail_r = xstrdup("smtp probe: the address cannot be sent in RCPT TO");
			return LOOKUP_MISSING;
		}
	if (at == NULL || at[1] == '\0') {
		*detail_r = xstrdup("smtp probe: no domain in the address");
		return LOOKUP_MISSING;
	}
	rc = store_domain_get(st, at + 1, &d);
	if (rc <= 0) {
		*detail_r = lookup_smtp_err("smtp probe: %s%s", rc < 0 ? "cannot read the policy store" :
		    "no route for the domain ", rc < 0 ? NULL : at + 1);
		return rc < 0 ? LOOKUP_ERROR : LOOKUP_CONFIG;
	}
	if (d.local || lookup_smtp_route(d.relay, cfg && cfg->remote_port > 0 ? cfg->remote_port : 25,
	    host, sizeof(host), port, sizeof(port)) < 0) {
		*detail_r = lookup_smtp_err("smtp probe: domain %s needs a --relay HOST[:PORT] route%s",
		    d.name, NULL);
		return LOOKUP_CONFIG;
	}
	if (lookup_smtp_connect(&s, host, port, detail_r) < 0)
		return LOOKUP_ERROR;
	code = lookup_smtp_reply(&s, last, sizeof(last));
	if (code != 220) {
		*detail_r = code < 0 ? xstrdup("smtp probe: no greeting") :
		    lookup_smtp_err("smtp probe: greeting: %s%s", last, NULL);
		goto out;
	}
	if (util_fmt(cmd, sizeof(cmd), "EHLO %s\r\n", cfg && cfg->hostname ? cfg->hostname :
	    "localhost") < 0)
		goto out;
	code = lookup_smtp_cmd(&s, cmd, last, sizeof(last));
	if (code >= 500 && code < 600) {
		cmd[0] = 'H';
		cmd[1] = 'E';
		code = lookup_smtp_cmd(&s, cmd, last, sizeof(last));
	}
	if (code != 250) {
		*detail_r = code < 0 ? xstrdup("smtp probe: EHLO: no reply") :
		    lookup_smtp_err("smtp probe: EHLO: %s%s", last, NULL);
		goto out;
	}
	code = lookup_smtp_cmd(&s, "MAIL FROM:<>\r\n", last, sizeof(last));
	if (code != 250) {
		*detail_r = code < 0 ? xstrdup("smtp probe: MAIL: no reply") :
		    lookup_smtp_err("smtp probe: MAIL: %s%s", last, NULL);
		goto out;
	}
	if (util_fmt(cmd, sizeof(cmd), "RCPT TO:<%s>\r\n", address) < 0)
		goto out;
	code = lookup_smtp_cmd(&s, cmd, last, sizeof(last));
	if (code == 250 || code == 251) {
		res = LOOKUP_FOUND;
	} else if (code > 0 && lookup_smtp_unknown(code, last)) {
		res = LOOKUP_MISSING;
		*detail_r = lookup_smtp_err("smtp probe: %s%s", last, NULL);
	} else {
		*detail_r = code < 0 ? xstrdup("smtp probe: RCPT: no reply") :
		    lookup_smtp_err("smtp probe: RCPT: %s%s", last, NULL);
	}
	/* QUIT without waiting for its reply: the answer is known */
	(void)lookup_smtp_send(&s, "QUIT\r\n");
out:
	if (s.fd >= 0)
		close(s.fd);
	return res;
}

const struct lookup_backend lookup_backend_smtp = {
	.name = "smtp",
	.ask = lookup_smtp_ask,
};
