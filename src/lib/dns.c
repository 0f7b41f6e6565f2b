/* dns: c-ares driven from a libevent loop: one channel, an event per socket
 * c-ares opens, a timer for its retransmissions. Run by qmgr (relay client). */
#include "lib/dns.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <event2/event.h>

#include "lib/util.h"

#define DNS_MAX_SOCKS 32

struct dns_sock {
	ares_socket_t fd;
	struct event *ev;
	short what;
};

struct dns {
	struct event_base *base;
	ares_channel ch;
	struct event *timer;
	struct dns_sock socks[DNS_MAX_SOCKS];
	int destroying;
};

/* One A+AAAA lookup in progress. */
struct dns_addr_q {
	struct dns *d;
	dns_addr_cb *cb;
	void *arg;
	int port;
	int pending;
	enum dns_status st4, st6;
	struct dns_addr a4[DNS_ADDR_MAX], a6[DNS_ADDR_MAX];
	int n4, n6;
};

struct dns_mx_q {
	dns_mx_cb *cb;
	void *arg;
};

static void dns_schedule(struct dns *d);

static void dns_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	ares_process_fd(d->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
	    (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dns_schedule(d);
}

static void dns_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	(void)fd;
	(void)what;
	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_schedule(d);
}

static void dns_schedule(struct dns *d)
{
	struct timeval tv, *tvp;

	if (d->destroying)
		return;
	tvp = ares_timeout(d->ch, NULL, &tv);
	if (tvp == NULL)
		event_del(d->timer);
	else
		event_add(d->timer, tvp);
}

static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *d = data;
	struct dns_sock *s = NULL, *free_s = NULL;
	short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));

	for (int i = 0; i < DNS_MAX_SOCKS; i++) {
		if (d->socks[i].ev != NULL && d->socks[i].fd == fd)
			s = &d->socks[i];
		else if (d->socks[i].ev == NULL && free_s == NULL)
			free_s = &d->socks[i];
	}
	if (what == 0) {
		if (s != NULL) {
			event_free(s->ev);
			s->ev = NULL;
		}
		return;
	}
	if (s == NULL) {
		if (free_s == NULL)
			return;     /* too many sockets: c-ares times the query out */
		s = free_s;
		s->fd = fd;
	} else if (s->what == what) {
		return;
	} else {
		event_free(s->ev);
	}
	s->what = what;
	s->ev = event_new(d->base, fd, what | EV_PERSIST, dns_io_cb, d);
	event_add(s->ev, NULL);
}

struct dns *dns_new(struct event_base *base, const char *servers, char **error_r)
{
	struct dns *d = xcalloc(1, sizeof(*d));
	struct ares_options opt;
	int rc;

	static int inited;
	if (!inited) {
		ares_library_init(ARES_LIB_INIT_ALL);
		inited = 1;
	}
	memset(&opt, 0, sizeof(opt));
	opt.sock_state_cb = dns_sock_state_cb;
	opt.sock_state_cb_data = d;
	opt.timeout = 2000;
	opt.tries = 3;
	opt.flags = ARES_FLAG_NOSEARCH;
	rc = ares_init_options(&d->ch, &opt,
	    ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS);
	if (rc != ARES_SUCCESS) {
		if (asprintf(error_r, "c-ares: %s", ares_strerror(rc)) < 0)
			*error_r = NULL;
		free(d);
		return NULL;
	}
	if (servers != NULL && servers[0] != '\0') {
		rc = ares_set_servers_ports_csv(d->ch, servers);
		if (rc != ARES_SUCCESS) {
			if (asprintf(error_r, "[dns] servers: %s", ares_strerror(rc)) < 0)
				*error_r = NULL;
			ares_destroy(d->ch);
			free(d);
			return NULL;
		}
	}
	d->base = base;
	d->timer = evtimer_new(base, dns_timer_cb, d);
	return d;
}

void dns_free(struct dns **dp)
{
	struct dns *d = *dp;

	if (d == NULL)
		return;
	d->destroying = 1;
	ares_destroy(d->ch);     /* runs pending callbacks with ARES_EDESTRUCTION */
	for (int i = 0; i < DNS_MAX_SOCKS; i++)
		if (d->socks[i].ev)
			event_free(d->socks[i].ev);
	event_free(d->timer);
	free(d);
	*dp = NULL;
}

static enum dns_status dns_status_of(int rc)
{
	switch (rc) {
	case ARES_SUCCESS:
		return DNS_OK;
	case ARES_ENOTFOUND:
		return DNS_NOTFOUND;
	case ARES_ENODATA:
		return DNS_NODATA;
	case ARES_EDESTRUCTION:
	case ARES_ECANCELLED:
		return DNS_CANCELLED;
	default:
		return DNS_TEMPFAIL;
	}
}

void dns_mx_sort(struct dns_mx *mx, int n)
{
	/* insertion sort: stable, n is small */
	for (int i = 1; i < n; i++) {
		struct dns_mx t = mx[i];
		int j = i - 1;
		while (j >= 0 && mx[j].pref > t.pref) {
			mx[j + 1] = mx[j];
			j--;
		}
		mx[j + 1] = t;
	}
}

static void dns_mx_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_mx_q *q = arg;
	struct ares_mx_reply *rep = NULL;
	struct dns_mx mx[DNS_MX_MAX];
	enum dns_status st = dns_status_of(status);
	int n = 0;

	(void)timeouts;
	if (st == DNS_OK) {
		int rc = ares_parse_mx_reply(abuf, alen, &rep);
		st = dns_status_of(rc);
		if (st == DNS_CANCELLED)
			st = DNS_TEMPFAIL;
		for (struct ares_mx_reply *r = rep; st == DNS_OK && r && n < DNS_MX_MAX; r = r->next) {
			mx[n].pref = r->priority;
			if (util_fmt(mx[n].host, sizeof(mx[n].host), "%s", r->host) < 0)
				continue;
			if (strcmp(mx[n].host, ".") == 0)
				mx[n].host[0] = '\0';
			n++;
		}
		if (rep)
			ares_free_data(rep);
		if (st == DNS_OK && n == 0)
			st = DNS_NODATA;
	}
	dns_mx_sort(mx, n);
	q->cb(q->arg, st, mx, n, status == ARES_SUCCESS ? NULL : ares_strerror(status));
	free(q);
}

void dns_mx(struct dns *d, const char *domain, dns_mx_cb *cb, void *arg)
{
	struct dns_mx_q *q = xcalloc(1, sizeof(*q));

	q->cb = cb;
	q->arg = arg;
	ares_query(d->ch, domain, ns_c_in, ns_t_mx, dns_mx_answer, q);
	dns_schedule(d);
}

static void dns_addr_done(struct dns_addr_q *q)
{
	struct dns_addr all[2 * DNS_ADDR_MAX];
	enum dns_status st;
	int n = 0;

	if (--q->pending > 0)
		return;
	for (int i = 0; i < q->n6; i++)
		all[n++] = q->a6[i];
	for (int i = 0; i < q->n4; i++)
		all[n++] = q->a4[i];
	if (q->st4 == DNS_CANCELLED || q->st6 == DNS_CANCELLED)
		st = DNS_CANCELLED;
	else if (n > 0)
		st = DNS_OK;
	else if (q->st4 == DNS_TEMPFAIL || q->st6 == DNS_TEMPFAIL)
		st = DNS_TEMPFAIL;
	else if (q->st4 == DNS_NOTFOUND && q->st6 == DNS_NOTFOUND)
		st = DNS_NOTFOUND;
	else
		st = DNS_NODATA;
	q->cb(q->arg, st, all, n, st == DNS_TEMPFAIL ? "DNS lookup failed" : NULL);
	free(q);
}

static void dns_a_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_addr_q *q = arg;
	struct ares_addrttl ttl[DNS_ADDR_MAX];
	int n = DNS_ADDR_MAX;

	(void)timeouts;
	q->st4 = dns_status_of(status);
	if (q->st4 == DNS_OK) {
		int rc = ares_parse_a_reply(abuf, alen, NULL, ttl, &n);
		q->st4 = rc == ARES_SUCCESS ? DNS_OK : rc == ARES_ENODATA ? DNS_NODATA : DNS_TEMPFAIL;
		for (int i = 0; q->st4 == DNS_OK && i < n; i++) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&q->a4[q->n4].ss;
			memset(&q->a4[q->n4], 0, sizeof(q->a4[0]));
			sin->sin_family = AF_INET;
			sin->sin_port = htons((uint16_t)q->port);
			sin->sin_addr = ttl[i].ipaddr;
			q->a4[q->n4++].len = sizeof(*sin);
		}
	}
	dns_addr_done(q);
}

static void dns_aaaa_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_addr_q *q = arg;
	struct ares_addr6ttl ttl[DNS_ADDR_MAX];
	int n = DNS_ADDR_MAX;

	(void)timeouts;
	q->st6 = dns_status_of(status);
	if (q->st6 == DNS_OK) {
		int rc = ares_parse_aaaa_reply(abuf, alen, NULL, ttl, &n);
		q->st6 = rc == ARES_SUCCESS ? DNS_OK : rc == ARES_ENODATA ? DNS_NODATA : DNS_TEMPFAIL;
		for (int i = 0; q->st6 == DNS_OK && i < n; i++) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&q->a6[q->n6].ss;
			memset(&q->a6[q->n6], 0, sizeof(q->a6[0]));
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons((uint16_t)q->port);
			memcpy(&sin6->sin6_addr, &ttl[i].ip6addr, sizeof(sin6->sin6_addr));
			q->a6[q->n6++].len = sizeof(*sin6);
		}
	}
	dns_addr_done(q);
}

/* An IP literal or an /etc/hosts entry; 1 answered, 0 not. */
static int dns_addr_local(struct dns *d, const char *host, int port, dns_addr_cb *cb, void *arg)
{
	struct dns_addr a[2];
	struct hostent *he = NULL;
	int n = 0;

	memset(a, 0, sizeof(a));
	{
		struct sockaddr_in *sin = (struct sockaddr_in *)&a[0].ss;
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a[0].ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons((uint16_t)port);
			a[0].len = sizeof(*sin);
			cb(arg, DNS_OK, a, 1, NULL);
			return 1;
		}
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons((uint16_t)port);
			a[0].len = sizeof(*sin6);
			cb(arg, DNS_OK, a, 1, NULL);
			return 1;
		}
	}
	for (int fam = 0; fam < 2; fam++) {
		int af = fam == 0 ? AF_INET6 : AF_INET;
		if (ares_gethostbyname_file(d->ch, host, af, &he) != ARES_SUCCESS || he == NULL)
			continue;
		if (he->h_addr_list[0] != NULL) {
			if (af == AF_INET) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&a[n].ss;
				sin->sin_family = AF_INET;
				sin->sin_port = htons((uint16_t)port);
				memcpy(&sin->sin_addr, he->h_addr_list[0], sizeof(sin->sin_addr));
				a[n++].len = sizeof(*sin);
			} else {
				struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a[n].ss;
				sin6->sin6_family = AF_INET6;
				sin6->sin6_port = htons((uint16_t)port);
				memcpy(&sin6->sin6_addr, he->h_addr_list[0], sizeof(sin6->sin6_addr));
				a[n++].len = sizeof(*sin6);
			}
		}
		ares_free_hostent(he);
		he = NULL;
	}
	if (n == 0)
		return 0;
	cb(arg, DNS_OK, a, n, NULL);
	return 1;
}

void dns_addr(struct dns *d, const char *host, int port, dns_addr_cb *cb, void *arg)
{
	struct dns_addr_q *q;

	if (dns_addr_local(d, host, port, cb, arg))
		return;
	q = xcalloc(1, sizeof(*q));
	q->d = d;
	q->cb = cb;
	q->arg = arg;
	q->port = port;
	q->pending = 2;
	ares_query(d->ch, host, ns_c_in, ns_t_aaaa, dns_aaaa_answer, q);
	ares_query(d->ch, host, ns_c_in, ns_t_a, dns_a_answer, q);
	dns_schedule(d);
}
