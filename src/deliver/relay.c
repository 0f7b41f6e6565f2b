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
	int x_pipe, x_size, x_8bit, x_tls, x_utf8, x_dsn;
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

/* No next hop could be reached: fail the whole queue if no other connection
 * to this destination may still take it, else the one job this connection
 * was opened for (so a failing destination never respawns connections
 * without end), and go away. */
static void relay_conn_give_up(struct relay_conn *c)
{
	struct relay_dest *d = c->d;
	int n = d->n_conns == 1 ? d->n_queued : 1;

	{
		struct relay_job *job;
		while (n-- > 0 && (job = relay_dest_pop(d)) != NULL) {
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
		c->x_pipe = c->x_size = c->x_8bit = c->x_tls = c->x_utf8 = c->x_dsn = 0;
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

static void relay_conn_new(struct relay *r, struct relay_dest *d)
{
	struct relay_conn *c = xcalloc(1, sizeof(*c));

	c->r = r;
	c->d = d;
	c->next = r->conns;
	r->conns = c;
	r->n_conns++;
	d->n_conns++;
	d->n_connecting++;
	c->st = RS_RESOLVE;
	c->no_tls = 0;
	if (relay_route_parse(d->route, 25, c->domain, sizeof(c->domain), &c->port, &c->is_mx) < 0) {
		c->err_code = 451;
		util_fmt(c->err_status, sizeof(c->err_status), "4.3.5");
		util_fmt(c->err_text, sizeof(c->err_text), "bad route '%.200s'", d->route);
		relay_conn_give_up(c);
		return;
	}
	if (c->is_mx) {
		c->port = r->cfg->remote_port > 0 ? r->cfg->remote_port : 25;
		dns_mx(r->dns, c->domain, relay_mx_cb, c);
	} else {
		dns_addr(r->dns, c->domain, c->port, relay_addr_cb, c);
	}
}

static void relay_conn_unlink_idle(struct relay_conn *c)
{
	struct relay_conn **pp = &c->d->idle;

	while (*pp && *pp != c)
		pp = &(*pp)->idle_next;
	if (*pp)
		*pp = c->idle_next;
	c->idle_next = NULL;
	if (c->idle_ev)
		event_del(c->idle_ev);
}

static void relay_conn_free(struct relay_conn *c)
{
	struct relay *r = c->r;
	struct relay_conn **pp = &r->conns;

	while (*pp && *pp != c)
		pp = &(*pp)->next;
	if (*pp)
		*pp = c->next;
	r->n_conns--;
	c->d->n_conns--;
	if (c->st < RS_IDLE)
		c->d->n_connecting--;
	if (c->st == RS_IDLE)
		relay_conn_unlink_idle(c);
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->idle_ev)
		event_free(c->idle_ev);
	free(c->accepted);
	/* others may be waiting for a connection slot */
	event_active(r->kick_ev, 0, 0);
	free(c);
}

/* ---------- the transaction ---------- */

static void relay_tx_send(struct relay_conn *c);

static void relay_tx_finish(struct relay_conn *c)
{
	struct relay_job *job = c->job;

	c->job = NULL;
	free(c->accepted);
	c->accepted = NULL;
	for (int i = 0; i < job->n_rcpt; i++)
		if (job->rcpt[i].code == 0)
			relay_set_result(&job->rcpt[i], 451, "4.4.2", "no reply from the next hop");
	relay_job_done(c->r, job);
	relay_conn_next(c);
}

static void relay_tx_begin(struct relay_conn *c)
{
	struct relay_job *job = c->job;

	util_fmt(job->relay_host, sizeof(job->relay_host), "%s", c->peer);
	c->accepted = xcalloc((size_t)job->n_rcpt + 1, 1);
	c->cmd_i = c->reply_i = c->n_ok = c->mail_failed = c->got_reply = 0;
	c->body_off = 0;
	c->stuff.at_bol = 1;
	if (c->x_size && c->size_max > 0 && job->body_len > c->size_max) {
		char t[RELAY_TEXT_MAX];
		util_fmt(t, sizeof(t), "message size %llu exceeds the limit %llu of %s",
		    (unsigned long long)job->body_len, (unsigned long long)c->size_max, c->peer);
		c->st = RS_TX;
		for (int i = 0; i < job->n_rcpt; i++)
			relay_set_result(&job->rcpt[i], 552, "5.3.4", t);
		relay_tx_finish(c);
		return;
	}
	if (job->smtputf8 && !c->x_utf8) {
		char t[RELAY_TEXT_MAX];
		util_fmt(t, sizeof(t), "SMTPUTF8 is required, but was not offered by %s", c->peer);
		c->st = RS_TX;
		for (int i = 0; i < job->n_rcpt; i++)
			relay_set_result(&job->rcpt[i], 553, "5.6.7", t);
		relay_tx_finish(c);
		return;
	}
	c->st = RS_TX;
	relay_timeouts(c, RELAY_CMD_SECS);
	bufferevent_setwatermark(c->bev, EV_WRITE, RELAY_OUT_HIGH / 4, 0);
	relay_tx_send(c);
}

/* Appends s as RFC 3461 xtext: '+', '=' and bytes outside 33..126 as +HH. */
static void relay_xtext(struct evbuffer *out, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch < 33 || ch > 126 || ch == '+' || ch == '=')
			evbuffer_add_printf(out, "+%02X", ch);
		else
			evbuffer_add(out, s, 1);
	}
}

/* Writes the next commands: all of them with PIPELINING, else one at a time.
 * A pipelined group goes out in one write (one TLS record, one segment). */
static void relay_tx_send(struct relay_conn *c)
{
	struct relay_job *job = c->job;
	struct evbuffer *group = evbuffer_new();
	int finish = 0;

	while (c->cmd_i <= job->n_rcpt + 1 && (c->x_pipe || c->cmd_i == c->reply_i)) {
		if (c->cmd_i == 0) {
			char size[40] = "";
			if (c->x_size)
				util_fmt(size, sizeof(size), " SIZE=%llu", (unsigned long long)job->body_len);
			evbuffer_add_printf(group, "MAIL FROM:<%s>%s%s%s", job->sender, size,
			    job->body8bit && c->x_8bit ? " BODY=8BITMIME" : "",
			    job->smtputf8 && c->x_utf8 ? " SMTPUTF8" : "");
			if (c->x_dsn && job->ret)
				evbuffer_add_printf(group, " RET=%s", job->ret == 1 ? "FULL" : "HDRS");
			if (c->x_dsn && job->envid) {
				evbuffer_add_printf(group, " ENVID=");
				relay_xtext(group, job->envid);
			}
			evbuffer_add(group, "\r\n", 2);
		} else if (c->cmd_i <= job->n_rcpt) {
			const struct relay_rcpt *rc = &job->rcpt[c->cmd_i - 1];
			evbuffer_add_printf(group, "RCPT TO:<%s>", rc->addr);
			if (c->x_dsn && rc->notify) {
				if (rc->notify & 1)
					evbuffer_add_printf(group, " NOTIFY=NEVER");
				else
					evbuffer_add_printf(group, " NOTIFY=%s%s%s%s%s",
					    rc->notify & 2 ? "SUCCESS" : "",
					    (rc->notify & 2) && (rc->notify & 12) ? "," : "",
					    rc->notify & 4 ? "FAILURE" : "",
					    (rc->notify & 4) && (rc->notify & 8) ? "," : "",
					    rc->notify & 8 ? "DELAY" : "");
			}
			if (c->x_dsn && rc->orcpt && strchr(rc->orcpt, ';') && rc->orcpt[0] != ';') {
				const char *semi = strchr(rc->orcpt, ';');
				evbuffer_add_printf(group, " ORCPT=%.*s;", (int)(semi - rc->orcpt), rc->orcpt);
				relay_xtext(group, semi + 1);
			}
			evbuffer_add(group, "\r\n", 2);
		} else {
			if (!c->x_pipe && (c->n_ok == 0 || c->mail_failed)) {
				finish = 1;
				break;
			}
			evbuffer_add_printf(group, "DATA\r\n");
		}
		c->cmd_i++;
	}
	if (evbuffer_get_length(group) > 0)
		bufferevent_write_buffer(c->bev, group);
	evbuffer_free(group);
	if (finish) {
		c->dirty = 1;
		relay_tx_finish(c);
	}
}

/* Returns -1 when c is gone. */
static int relay_body_fill(struct relay_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char in[RELAY_CHUNK], wire[2 * RELAY_CHUNK];

	while (c->st == RS_BODY && evbuffer_get_length(out) < RELAY_OUT_HIGH) {
		uint64_t left = c->job->body_len - c->body_off;
		size_t want = left < sizeof(in) ? (size_t)left : sizeof(in);
		ssize_t n;

		if (want == 0) {
			size_t w = relay_stuff_end(&c->stuff, wire);
			evbuffer_add(out, wire, w);
			c->st = RS_DOT;
			relay_timeouts(c, RELAY_DOT_SECS);
			return 0;
		}
		n = pread(c->job->fd, in, want, (off_t)c->body_off);
		if (n <= 0) {
			/* cannot finish the data: drop the connection so the next
			 * hop never sees an end of data */
			struct relay_job *job = c->job;
			c->job = NULL;
			relay_job_fail(c->r, job, 451, "4.3.0", "cannot read the queue file");
			relay_conn_free(c);
			return -1;
		}
		c->body_off += (uint64_t)n;
		evbuffer_add(out, wire, relay_stuff(&c->stuff, in, (size_t)n, wire));
	}
	return 0;
}

/* A reply during the transaction. Returns -1 when c is gone. */
static int relay_tx_reply(struct relay_conn *c, int code, const char *status, const char *text)
{
	struct relay_job *job = c->job;
	int i;

	c->got_reply = 1;
	if (c->st == RS_DOT || c->st == RS_BODY) {
		for (int k = 0; k < job->n_rcpt; k++)
			if (c->accepted[k])
				relay_set_result(&job->rcpt[k], code, status, text);
		if (c->st == RS_BODY) {
			/* the next hop spoke before the end of data: give up the link */
			struct relay_job *j = c->job;
			c->job = NULL;
			relay_job_fail(c->r, j, 451, "4.4.2", "next hop replied during the data");
			relay_conn_free(c);
			return -1;
		}
		c->dirty = 0;     /* the end of data ends the transaction either way */
		relay_tx_finish(c);
		return 0;
	}
	i = c->reply_i++;
	if (i == 0) {
		if (code / 100 != 2) {
			c->mail_failed = 1;
			for (int k = 0; k < job->n_rcpt; k++)
				relay_set_result(&job->rcpt[k], code, status, text);
		}
	} else if (i <= job->n_rcpt) {
		if (!c->mail_failed) {
			if (code / 100 == 2) {
				c->accepted[i - 1] = 1;
				c->n_ok++;
			} else {
				relay_set_result(&job->rcpt[i - 1], code, status, text);
			}
		}
	} else {
		/* the DATA reply */
		if (code == 354) {
			if (c->n_ok == 0 || c->mail_failed) {
				/* nothing to send: end the data at once */
				relay_send(c, ".\r\n");
				c->st = RS_DOT;
				for (int k = 0; k < job->n_rcpt; k++)
					c->accepted[k] = 0;
				return 0;
			}
			c->st = RS_BODY;
			return relay_body_fill(c);
		}
		if (!c->mail_failed)
			for (int k = 0; k < job->n_rcpt; k++)
				if (c->accepted[k])
					relay_set_result(&job->rcpt[k], code, status, text);
		c->dirty = 1;
		relay_tx_finish(c);
		return 0;
	}
	if (!c->x_pipe)
		relay_tx_send(c);
	return 0;
}

/* ---------- connection use ---------- */

static void relay_idle_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_conn *c = arg;

	(void)fd;
	(void)what;
	relay_conn_unlink_idle(c);
	c->st = RS_QUIT;
	relay_timeouts(c, 10);
	relay_send(c, "QUIT\r\n");
}

/* The connection is free: take the next job of its destination or idle. */
static void relay_conn_next(struct relay_conn *c)
{
	struct relay_dest *d = c->d;

	c->job = relay_dest_pop(d);
	if (c->job == NULL) {
		c->st = RS_IDLE;
		c->idle_next = d->idle;
		d->idle = c;
		if (c->idle_ev == NULL)
			c->idle_ev = evtimer_new(c->r->base, relay_idle_cb, c);
		{
			struct timeval tv = { RELAY_IDLE_SECS, 0 };
			evtimer_add(c->idle_ev, &tv);
		}
		bufferevent_set_timeouts(c->bev, NULL, NULL);
		return;
	}
	if (c->dirty) {
		c->st = RS_RSET;
		relay_timeouts(c, RELAY_CMD_SECS);
		relay_send(c, "RSET\r\n");
		return;
	}
	relay_tx_begin(c);
}

/* The connection is ready for transactions (after EHLO, maybe TLS). */
static void relay_conn_ready(struct relay_conn *c)
{
	if (c->d->tls_require && !c->tls_on) {
		char t[RELAY_TEXT_MAX];
		util_fmt(t, sizeof(t), "TLS is required, but was not offered by %s", c->peer);
		relay_hop_failed(c, 451, "4.7.5", t);
		return;
	}
	c->d->n_connecting--;
	c->dirty = 0;
	c->reused = 0;
	relay_conn_next(c);
}

static void relay_ehlo_line(struct relay_conn *c, const char *kw)
{
	if (strncasecmp(kw, "PIPELINING", 10) == 0 && (kw[10] == '\0' || kw[10] == ' '))
		c->x_pipe = 1;
	else if (strncasecmp(kw, "8BITMIME", 8) == 0 && (kw[8] == '\0' || kw[8] == ' '))
		c->x_8bit = 1;
	else if (strncasecmp(kw, "STARTTLS", 8) == 0 && (kw[8] == '\0' || kw[8] == ' '))
		c->x_tls = 1;
	else if (strncasecmp(kw, "SMTPUTF8", 8) == 0 && (kw[8] == '\0' || kw[8] == ' '))
		c->x_utf8 = 1;
	else if (strncasecmp(kw, "DSN", 3) == 0 && (kw[3] == '\0' || kw[3] == ' '))
		c->x_dsn = 1;
	else if (strncasecmp(kw, "SIZE", 4) == 0 && (kw[4] == '\0' || kw[4] == ' ')) {
		long long v;
		c->x_size = 1;
		if (kw[4] == ' ' && util_strtonum(kw + 5, 0, (long long)1 << 50, &v) == 0)
			c->size_max = (uint64_t)v;
	}
}

static void relay_start_tls(struct relay_conn *c)
{
	SSL *ssl = SSL_new(c->r->tls);
	struct bufferevent *tb;

	if (ssl == NULL) {
		relay_hop_failed(c, 451, "4.7.5", "cannot create a TLS session");
		return;
	}
	{
		struct in6_addr tmp;
		const char *h = c->hops[c->cur].host;
		if (inet_pton(AF_INET, h, &tmp) != 1 && inet_pton(AF_INET6, h, &tmp) != 1)
			SSL_set_tlsext_host_name(ssl, h);
	}
	/* nothing the peer sent before the handshake may be read as TLS-protected */
	evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
	tb = bufferevent_openssl_filter_new(c->r->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (tb == NULL) {
		SSL_free(ssl);
		relay_hop_failed(c, 451, "4.7.5", "cannot start TLS");
		return;
	}
	c->bev = tb;
	c->st = RS_TLS;
	bufferevent_setcb(c->bev, relay_read_cb, relay_write_cb, relay_event_cb, c);
	relay_timeouts(c, RELAY_CONNECT_SECS);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* A complete reply before the connection is ready. Returns -1 when c is gone
 * or was replaced. */
static int relay_setup_reply(struct relay_conn *c, int code, const char *status, const char *text)
{
	char t[RELAY_TEXT_MAX + 64];

	switch (c->st) {
	case RS_BANNER:
		if (code != 220) {
			util_fmt(t, sizeof(t), "%s refused to talk: %d %s %s", c->peer, code, status, text);
			relay_hop_failed(c, code / 100 == 5 ? 451 : code, "4.4.1", t);
			return -1;
		}
		c->st = RS_EHLO;
		c->x_pipe = c->x_size = c->x_8bit = c->x_tls = c->x_utf8 = c->x_dsn = 0;
		relay_send(c, "EHLO %s\r\n", c->r->cfg->hostname);
		return 0;
	case RS_EHLO:
		if (code / 100 == 2) {
			if (c->x_tls && !c->tls_on && !c->no_tls && c->r->tls) {
				c->st = RS_STARTTLS;
				relay_send(c, "STARTTLS\r\n");
				return 0;
			}
			relay_conn_ready(c);
			return -1;
		}
		c->st = RS_HELO;
		relay_send(c, "HELO %s\r\n", c->r->cfg->hostname);
		return 0;
	case RS_HELO:
		if (code / 100 == 2) {
			relay_conn_ready(c);
			return -1;
		}
		util_fmt(t, sizeof(t), "%s refused HELO: %d %s %s", c->peer, code, status, text);
		relay_hop_failed(c, 451, "4.4.1", t);
		return -1;
	case RS_STARTTLS:
		if (code == 220) {
			relay_start_tls(c);
			return -1;
		}
		relay_conn_ready(c);    /* fails it when TLS is required */
		return -1;
	case RS_RSET:
		if (code / 100 == 2) {
			c->dirty = 0;
			relay_tx_begin(c);
			return -1;
		}
		{
			struct relay_job *job = c->job;
			c->job = NULL;
			relay_dest_push_head(c->d, job);
			relay_conn_free(c);
		}
		return -1;
	case RS_QUIT:
		relay_conn_free(c);
		return -1;
	default:
		/* unexpected talk (e.g. while idle): drop the link */
		relay_conn_free(c);
		return -1;
	}
}

static void relay_read_cb(struct bufferevent *bev, void *arg)
{
	struct relay_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
		char text[RELAY_TEXT_MAX], status[16];
		const char *rest;
		int code, last, rc;

		if (line == NULL) {
			if (evbuffer_get_length(in) > RELAY_LINE_MAX) {
				if (c->job) {
					struct relay_job *job = c->job;
					c->job = NULL;
					relay_job_fail(c->r, job, 451, "4.4.2", "next hop sent an over-long line");
					relay_conn_free(c);
				} else {
					relay_hop_failed(c, 451, "4.4.2", "next hop sent an over-long line");
				}
			}
			return;
		}
		if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-') ||
		    ++c->n_lines > RELAY_REPLY_LINES_MAX) {
			free(line);
			if (c->job) {
				struct relay_job *job = c->job;
				c->job = NULL;
				relay_job_fail(c->r, job, 451, "4.4.2", "next hop sent a malformed reply");
				relay_conn_free(c);
			} else {
				relay_hop_failed(c, 451, "4.4.2", "next hop sent a malformed reply");
			}
			return;
		}
		code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		last = len == 3 || line[3] == ' ';
		if (c->st == RS_EHLO && c->n_lines > 1 && len > 4)
			relay_ehlo_line(c, line + 4);
		if (!last) {
			free(line);
			continue;
		}
		c->n_lines = 0;
		relay_clean(text, sizeof(text), len > 4 ? line + 4 : "", len > 4 ? len - 4 : 0);
		free(line);
		relay_enh(code, text, status, sizeof(status), &rest);
		if (c->st == RS_TX || c->st == RS_BODY || c->st == RS_DOT)
			rc = relay_tx_reply(c, code, status, rest);
		else
			rc = relay_setup_reply(c, code, status, rest);
		if (rc < 0 || c->bev != bev)
			return;
	}
}

static void relay_write_cb(struct bufferevent *bev, void *arg)
{
	struct relay_conn *c = arg;

	(void)bev;
	if (c->st == RS_BODY)
		relay_body_fill(c);
}

static void relay_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct relay_conn *c = arg;
	char t[RELAY_TEXT_MAX];

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->st == RS_CONNECT) {
			c->st = RS_BANNER;
			relay_timeouts(c, RELAY_CMD_SECS);
		} else if (c->st == RS_TLS) {
			c->tls_on = 1;
			c->st = RS_EHLO;
			/* what was offered in plain text no longer counts */
			c->x_pipe = c->x_size = c->x_8bit = c->x_tls = c->x_utf8 = c->x_dsn = 0;
			c->size_max = 0;
			relay_timeouts(c, RELAY_CMD_SECS);
			relay_send(c, "EHLO %s\r\n", c->r->cfg->hostname);
		}
		return;
	}
	util_fmt(t, sizeof(t), "%s with %s",
	    (what & BEV_EVENT_TIMEOUT) ? "timeout" : (what & BEV_EVENT_EOF) ? "lost connection" :
	    "connection error", c->peer);
	if (c->st == RS_CONNECT && (what & BEV_EVENT_ERROR)) {
		int e = EVUTIL_SOCKET_ERROR();
		util_fmt(t, sizeof(t), "connect to %s: %s", c->peer, e ? strerror(e) : "failed");
	}
	if (c->st == RS_TLS && !c->d->tls_require) {
		/* opportunistic TLS failed: try the same host again in plain text */
		c->no_tls = 1;
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->tls_on = 0;
		relay_try_hop(c);
		return;
	}
	if (c->st < RS_IDLE) {
		relay_hop_failed(c, 451, "4.4.1", t);
		return;
	}
	if (c->job) {
		struct relay_job *job = c->job;
		c->job = NULL;
		if (c->reused && !c->got_reply && !job->requeued) {
			/* a reused link that the peer had closed: not the job's fault */
			job->requeued = 1;
			relay_dest_push_head(c->d, job);
		} else {
			relay_job_fail(c->r, job, 451, "4.4.2", t);
		}
	}
	relay_conn_free(c);
}

/* ---------- destinations ---------- */

static struct relay_dest *relay_dest_get(struct relay *r, const char *route, int tls_require)
{
	struct relay_dest *d;

	for (d = r->dests; d; d = d->next)
		if (d->tls_require == tls_require && strcmp(d->route, route) == 0)
			return d;
	d = xcalloc(1, sizeof(*d));
	util_fmt(d->route, sizeof(d->route), "%s", route);
	d->tls_require = tls_require;
	d->next = r->dests;
	r->dests = d;
	return d;
}

static void relay_kick_all(struct relay *r)
{
	for (struct relay_dest *d = r->dests; d; d = d->next) {
		while (d->qhead && d->idle) {
			struct relay_conn *c = d->idle;
			relay_conn_unlink_idle(c);
			c->reused = 1;
			bufferevent_set_timeouts(c->bev, NULL, NULL);
			relay_conn_next(c);
		}
		while (d->n_queued > d->n_connecting && d->n_conns < RELAY_DEST_CONCURRENCY &&
		    r->n_conns < RELAY_MAX_CONNS)
			relay_conn_new(r, d);
	}
}

static void relay_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	relay_kick_all(arg);
}

void relay_submit(struct relay *r, struct relay_job *job)
{
	struct relay_dest *d = relay_dest_get(r, job->route, job->tls_require);

	job->next = NULL;
	job->requeued = 0;
	for (int i = 0; i < job->n_rcpt; i++) {
		job->rcpt[i].code = 0;
		job->rcpt[i].status[0] = '\0';
	}
	if (d->qtail)
		d->qtail->next = job;
	else
		d->qhead = job;
	d->qtail = job;
	d->n_queued++;
	r->n_jobs++;
	event_active(r->kick_ev, 0, 0);
}

int relay_pending(const struct relay *r)
{
	return r->n_jobs;
}

struct relay *relay_new(struct event_base *base, const struct kale_config *cfg, char **error_r)
{
	struct relay *r = xcalloc(1, sizeof(*r));
	char *terr = NULL;

	r->base = base;
	r->cfg = cfg;
	{
		char csv[CONF_MAX_ADDRS * 300];
		if (conf_dns_csv(cfg, csv, sizeof(csv)) < 0)
			csv[0] = '\0';
		r->dns = dns_new(base, csv, error_r);
	}
	if (r->dns == NULL) {
		free(r);
		return NULL;
	}
	r->tls = tls_client_ctx(&terr);
	if (r->tls == NULL) {
		/* STARTTLS is then never tried; routes that require TLS defer */
		log_event(LOG_LVL_WARN, "relay.tls", "error", terr, NULL);
		free(terr);
	}
	r->done_ev = event_new(base, -1, 0, relay_done_cb, r);
	r->kick_ev = event_new(base, -1, 0, relay_kick_cb, r);
	return r;
}

void relay_free(struct relay **rp)
{
	struct relay *r = *rp;

	if (r == NULL)
		return;
	dns_free(&r->dns);
	while (r->conns) {
		struct relay_conn *c = r->conns;
		c->job = NULL;
		relay_conn_free(c);
	}
	while (r->dests) {
		struct relay_dest *d = r->dests;
		r->dests = d->next;
		free(d);
	}
	event_free(r->done_ev);
	event_free(r->kick_ev);
	if (r->tls)
		SSL_CTX_free(r->tls);
	free(r);
	*rp = NULL;
}
