/* relay: qmgr's outbound SMTP client. Jobs (one message, one next hop, its
 * recipients there) queue per destination; each destination has at most
 * RELAY_DEST_CONCURRENCY connections, which are reused for the next job.
 * Runs in qmgr's event loop; never blocks. */
#include "deliver/relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "lib/dns.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/util.h"

#define RELAY_HOPS_MAX 32
#define RELAY_LINE_MAX 4096
#define RELAY_REPLY_LINES_MAX 200
#define RELAY_TEXT_MAX 400
#define RELAY_CONNECT_SECS 30
#define RELAY_CMD_SECS 300
#define RELAY_DOT_SECS 600
#define RELAY_OUT_HIGH (256 * 1024)
#define RELAY_CHUNK 16384

enum relay_state {
	RS_RESOLVE, RS_CONNECT, RS_BANNER, RS_EHLO, RS_HELO, RS_STARTTLS, RS_TLS,
	RS_IDLE, RS_RSET, RS_TX, RS_BODY, RS_DOT, RS_QUIT
};

struct relay_hop {
	char host[256];
	struct dns_addr a;
};

struct relay_dest {
	char route[320];
	int tls_require;
	struct relay_job *qhead, *qtail;
	int n_queued;
	int n_conns, n_connecting;
	struct relay_conn *idle;
	struct relay_dest *next;
};

struct relay_conn {
	struct relay *r;
	struct relay_dest *d;
	struct relay_conn *next, *idle_next;
	struct bufferevent *bev;
	struct event *idle_ev;
	enum relay_state st;
	/* where to go */
	char domain[256];
	int port, is_mx;
	struct dns_mx mx[DNS_MX_MAX];
	int n_mx, mx_i, dns_temp;
	struct relay_hop hops[RELAY_HOPS_MAX];
	int n_hops, cur;
	int no_tls, tls_on;
	char peer[320];
	/* last connection-level failure */
	int err_code;
	char err_status[16];
	char err_text[RELAY_TEXT_MAX];
	/* EHLO extensions */
	int x_pipe, x_size, x_8bit, x_tls, x_utf8;
	uint64_t size_max;
	int n_lines;
	/* the transaction */
	struct relay_job *job;
	unsigned char *accepted;
	int cmd_i, reply_i, n_ok, mail_failed, got_reply, dirty, reused;
	uint64_t body_off;
	struct relay_stuff stuff;
};

struct relay {
	struct event_base *base;
	const struct kale_config *cfg;
	struct dns *dns;
	SSL_CTX *tls;
	struct relay_dest *dests;
	struct relay_conn *conns;
	int n_conns;
	int n_jobs;
	struct relay_job *done_head, *done_tail;
	struct event *done_ev;
	struct event *kick_ev;
};

/* ---------- the wire form of the body ---------- */

size_t relay_stuff(struct relay_stuff *st, const char *in, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		char c = in[i];
		if (c == '\r')
			continue;
		if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			st->at_bol = 1;
			continue;
		}
		if (c == '.' && st->at_bol)
			out[o++] = '.';
		out[o++] = c;
		st->at_bol = 0;
	}
	return o;
}

size_t relay_stuff_end(struct relay_stuff *st, char *out)
{
	size_t o = 0;

	if (!st->at_bol) {
		out[o++] = '\r';
		out[o++] = '\n';
		st->at_bol = 1;
	}
	memcpy(out + o, ".\r\n", 3);
	return o + 3;
}

int relay_route_parse(const char *route, int default_port, char *host, size_t cap,
    int *port, int *mx)
{
	const char *p, *end;
	long long v;
	size_t hl;

	*mx = 0;
	*port = default_port;
	if (strncmp(route, "mx:", 3) == 0) {
		*mx = 1;
		if (route[3] == '\0' || util_fmt(host, cap, "%s", route + 3) < 0)
			return -1;
		return 0;
	}
	if (route[0] == '[') {
		end = strchr(route, ']');
		if (end == NULL)
			return -1;
		p = route + 1;
		hl = (size_t)(end - p);
		end++;
		if (*end == ':') {
			if (util_strtonum(end + 1, 1, 65535, &v) < 0)
				return -1;
			*port = (int)v;
		} else if (*end != '\0') {
			return -1;
		}
	} else {
		p = route;
		end = strrchr(route, ':');
		if (end != NULL) {
			if (util_strtonum(end + 1, 1, 65535, &v) < 0)
				return -1;
			*port = (int)v;
			hl = (size_t)(end - route);
		} else {
			hl = strlen(route);
		}
	}
	if (hl == 0 || hl >= cap)
		return -1;
	memcpy(host, p, hl);
	host[hl] = '\0';
	return 0;
}

/* ---------- helpers ---------- */

static void relay_conn_free(struct relay_conn *c);
static void relay_dest_kick(struct relay_dest *d);
static void relay_try_hop(struct relay_conn *c);
static void relay_conn_next(struct relay_conn *c);

static void relay_set_result(struct relay_rcpt *rc, int code, const char *status, const char *text)
{
	char buf[RELAY_TEXT_MAX + 32];

	rc->code = code;
	util_fmt(rc->status, sizeof(rc->status), "%s", status);
	util_fmt(buf, sizeof(buf), "%d %s %s", code, status, text);
	free(rc->text);
	rc->text = xstrdup(buf);
}

/* Hands a finished job back through the done event (never synchronously). */
static void relay_job_done(struct relay *r, struct relay_job *job)
{
	job->next = NULL;
	if (r->done_tail)
		r->done_tail->next = job;
	else
		r->done_head = job;
	r->done_tail = job;
	event_active(r->done_ev, 0, 0);
}

static void relay_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;

	(void)fd;
	(void)what;
	while (r->done_head) {
		struct relay_job *job = r->done_head;
		r->done_head = job->next;
		if (r->done_head == NULL)
			r->done_tail = NULL;
		r->n_jobs--;
		job->done(job, job->arg);
	}
}

/* Fails every recipient of job that has no result yet. */
static void relay_job_fail(struct relay *r, struct relay_job *job, int code, const char *status,
    const char *text)
{
	for (int i = 0; i < job->n_rcpt; i++)
		if (job->rcpt[i].code == 0)
			relay_set_result(&job->rcpt[i], code, status, text);
	relay_job_done(r, job);
}

static struct relay_job *relay_dest_pop(struct relay_dest *d)
{
	struct relay_job *job = d->qhead;

	if (job) {
		d->qhead = job->next;
		if (d->qhead == NULL)
			d->qtail = NULL;
		d->n_queued--;
		job->next = NULL;
	}
	return job;
}

static void relay_dest_push_head(struct relay_dest *d, struct relay_job *job)
{
	job->next = d->qhead;
	d->qhead = job;
	if (d->qtail == NULL)
		d->qtail = job;
	d->n_queued++;
}

/* Copies a reply's text as one printable line of at most RELAY_TEXT_MAX. */
static void relay_clean(char *out, size_t cap, const char *in, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n && o + 1 < cap && o + 1 < RELAY_TEXT_MAX; i++) {
		unsigned char ch = (unsigned char)in[i];
		out[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	out[o] = '\0';
}

/* Enhanced status at the start of text ("5.1.1 ..."), or made from code. */
static void relay_enh(int code, const char *text, char *status, size_t cap, const char **rest)
{
	const char *p = text;
	int parts = 0;

	*rest = text;
	if ((*p == '2' || *p == '4' || *p == '5') && p[0] - '0' == code / 100 && p[1] == '.') {
		const char *q = p + 2;
		int ok = 1;
		for (parts = 1; parts < 3 && ok; parts++) {
			int digits = 0;
			while (*q >= '0' && *q <= '9' && digits < 3) {
				q++;
				digits++;
			}
			if (digits == 0)
				ok = 0;
			else if (parts == 1 && *q == '.')
				q++;
			else if (parts == 2 && (*q == ' ' || *q == '\0'))
				;
			else
				ok = 0;
		}
		if (ok && (size_t)(q - p) < cap) {
			memcpy(status, p, (size_t)(q - p));
			status[q - p] = '\0';
			while (*q == ' ')
				q++;
			*rest = q;
			return;
		}
	}
	util_fmt(status, cap, "%d.0.0", code / 100);
}

static void relay_send(struct relay_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void relay_send(struct relay_conn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
	va_end(ap);
}

static void relay_timeouts(struct relay_conn *c, int secs)
{
	struct timeval tv = { secs, 0 };

	bufferevent_set_timeouts(c->bev, &tv, &tv);
}

/* ---------- connection set-up ---------- */

/* The connection could not be made ready: try the next address, or give
 * up on this destination's queue. */
static void relay_hop_failed(struct relay_conn *c, int code, const char *status, const char *text)
{
	c->err_code = code;
	util_fmt(c->err_status, sizeof(c->err_status), "%s", status);
	util_fmt(c->err_text, sizeof(c->err_text), "%s", text);
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	c->tls_on = 0;
	c->cur++;
	relay_try_hop(c);
}

/* No next hop could be reached: fail the queue (if no other connection to
 * this destination may still take it) and go away. */
static void relay_conn_give_up(struct relay_conn *c)
{
	struct relay_dest *d = c->d;

	if (d->n_conns == 1) {
		struct relay_job *job;
		while ((job = relay_dest_pop(d)) != NULL) {
			util_fmt(job->relay_host, sizeof(job->relay_host), "%s",
			    c->peer[0] ? c->peer : d->route);
			relay_job_fail(c->r, job, c->err_code ? c->err_code : 451,
			    c->err_status[0] ? c->err_status : "4.4.1",
			    c->err_text[0] ? c->err_text : "no next hop reachable");
		}
	}
	relay_conn_free(c);
}

static void relay_read_cb(struct bufferevent *bev, void *arg);
static void relay_write_cb(struct bufferevent *bev, void *arg);
static void relay_event_cb(struct bufferevent *bev, short what, void *arg);

static void relay_peer_name(struct relay_conn *c, const struct relay_hop *h)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (h->a.ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&h->a.ss;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		port = ntohs(sin->sin_port);
	} else if (h->a.ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&h->a.ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		port = ntohs(sin6->sin6_port);
	}
	util_fmt(c->peer, sizeof(c->peer), "%s[%s]:%d", h->host, ip, port);
}

static void relay_try_hop(struct relay_conn *c)
{
	while (c->cur < c->n_hops) {
		struct relay_hop *h = &c->hops[c->cur];
		relay_peer_name(c, h);
		c->bev = bufferevent_socket_new(c->r->base, -1, BEV_OPT_CLOSE_ON_FREE);
		if (c->bev == NULL)
			break;
		bufferevent_setcb(c->bev, relay_read_cb, relay_write_cb, relay_event_cb, c);
		relay_timeouts(c, RELAY_CONNECT_SECS);
		c->st = RS_CONNECT;
		c->x_pipe = c->x_size = c->x_8bit = c->x_tls = c->x_utf8 = 0;
		c->size_max = 0;
		if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&h->a.ss, (int)h->a.len) == 0) {
			bufferevent_enable(c->bev, EV_READ | EV_WRITE);
			return;
		}
		{
			char t[RELAY_TEXT_MAX];
			util_fmt(t, sizeof(t), "connect to %s: %s", c->peer, strerror(errno));
			c->err_code = 451;
			util_fmt(c->err_status, sizeof(c->err_status), "4.4.1");
			util_fmt(c->err_text, sizeof(c->err_text), "%s", t);
		}
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->cur++;
	}
	relay_conn_give_up(c);
}

static void relay_add_hops(struct relay_conn *c, const char *host, const struct dns_addr *a, int n)
{
	for (int i = 0; i < n && c->n_hops < RELAY_HOPS_MAX; i++) {
		struct relay_hop *h = &c->hops[c->n_hops++];
		util_fmt(h->host, sizeof(h->host), "%s", host);
		h->a = a[i];
	}
}

static void relay_resolved(struct relay_conn *c)
{
	if (c->n_hops == 0) {
		if (c->err_code == 0) {
			c->err_code = 451;
			util_fmt(c->err_status, sizeof(c->err_status), "4.4.3");
			util_fmt(c->err_text, sizeof(c->err_text), "no address for %s", c->domain);
		}
		relay_conn_give_up(c);
		return;
	}
	c->cur = 0;
	relay_try_hop(c);
}

static void relay_mx_addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error);

static void relay_mx_next(struct relay_conn *c)
{
	if (c->mx_i < c->n_mx) {
		dns_addr(c->r->dns, c->mx[c->mx_i].host, c->port, relay_mx_addr_cb, c);
		return;
	}
	if (c->n_hops == 0) {
		if (c->dns_temp) {
			c->err_code = 451;
			util_fmt(c->err_status, sizeof(c->err_status), "4.4.3");
			util_fmt(c->err_text, sizeof(c->err_text), "DNS lookup of the MX hosts of %s failed",
			    c->domain);
		} else {
			c->err_code = 550;
			util_fmt(c->err_status, sizeof(c->err_status), "5.4.4");
			util_fmt(c->err_text, sizeof(c->err_text), "MX hosts of %s have no address",
			    c->domain);
		}
	}
	relay_resolved(c);
}

static void relay_mx_addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error)
{
	struct relay_conn *c = arg;

	(void)error;
	if (st == DNS_CANCELLED)
		return;
	if (st == DNS_OK)
		relay_add_hops(c, c->mx[c->mx_i].host, a, n);
	else if (st == DNS_TEMPFAIL)
		c->dns_temp = 1;
	c->mx_i++;
	relay_mx_next(c);
}

/* Address lookup of a static route's host, or of a domain without MX. */
static void relay_addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error)
{
	struct relay_conn *c = arg;

	(void)error;
	if (st == DNS_CANCELLED)
		return;
	if (st == DNS_OK) {
		relay_add_hops(c, c->domain, a, n);
	} else if (c->is_mx && (st == DNS_NOTFOUND || st == DNS_NODATA)) {
		c->err_code = 550;
		util_fmt(c->err_status, sizeof(c->err_status), "5.1.2");
		util_fmt(c->err_text, sizeof(c->err_text), "domain %s has no MX and no address", c->domain);
	} else {
		c->err_code = 451;
		util_fmt(c->err_status, sizeof(c->err_status), "4.4.3");
		util_fmt(c->err_text, sizeof(c->err_text), "DNS lookup of %s failed%s", c->domain,
		    st == DNS_TEMPFAIL ? "" : " (no address)");
	}
	relay_resolved(c);
}

static void relay_mx_cb(void *arg, enum dns_status st, const struct dns_mx *mx, int n,
    const char *error)
{
	struct relay_conn *c = arg;

	(void)error;
	switch (st) {
	case DNS_CANCELLED:
		return;
	case DNS_OK:
		if (n == 1 && mx[0].host[0] == '\0') {
			c->err_code = 556;
			util_fmt(c->err_status, sizeof(c->err_status), "5.1.10");
			util_fmt(c->err_text, sizeof(c->err_text), "domain %s accepts no mail (null MX)",
			    c->domain);
			relay_resolved(c);
			return;
		}
		c->n_mx = 0;
		for (int i = 0; i < n && c->n_mx < DNS_MX_MAX; i++)
			if (mx[i].host[0])
				c->mx[c->n_mx++] = mx[i];
		c->mx_i = 0;
		relay_mx_next(c);
		return;
	case DNS_NODATA:
		/* RFC 5321 5.1: no MX, the domain itself is the host */
		dns_addr(c->r->dns, c->domain, c->port, relay_addr_cb, c);
		return;
	case DNS_NOTFOUND:
		c->err_code = 550;
		util_fmt(c->err_status, sizeof(c->err_status), "5.1.2");
		util_fmt(c->err_text, sizeof(c->err_text), "domain %s not found", c->domain);
		relay_resolved(c);
		return;
	default:
		c->err_code = 451;
		util_fmt(c->err_status, sizeof(c->err_status), "4.4.3");
		util_fmt(c->err_text, sizeof(c->err_text), "DNS lookup of the MX of %s failed", c->domain);
		relay_resolved(c);
		return;
	}
}

