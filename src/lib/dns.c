/* dns: c-ares driven from a libevent loop: one channel, an event per socket
 * c-ares opens, a timer for its retransmissions. Every answer goes through
 * one check (status, CNAME chain) before c-ares's parser for its type. The
 * blocking form runs a private base per thread. Run by qmgr (relay client)
 * and the filtering checks. */
#include "lib/dns.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ares.h>
#include <event2/event.h>

#include "lib/util.h"

#define DNS_MAX_SOCKS 32
#define DNS_PTR_QNAME 80        /* 32 nibbles "x." and "ip6.arpa", with NUL */
#define DNS_U16(p) ((unsigned)(p)[0] << 8 | (unsigned)(p)[1])

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

/* One address family's half of a dns_addr query. */
struct dns_addr_half {
	struct dns_addr_q *q;
	int af;
	enum dns_status st;
	struct dns_addr a[DNS_ADDR_MAX];
	int n;
};

struct dns_addr_q {
	struct dns *d;
	dns_addr_cb *cb;
	void *arg;
	int port;
	int pending;
	struct dns_addr_half h6, h4; /* AAAA first: IPv6 is tried first */
};

/* A single-type lookup's callback, by record type. */
union dns_cb {
	dns_mx_cb *mx;
	dns_a4_cb *a4;
	dns_txt_cb *txt;
	dns_ptr_cb *ptr;
	dns_raw_cb *raw;
};

/* One single-type lookup in progress. */
struct dns_q {
	union dns_cb cb;
	void *arg;
	int af;                       /* dns_ptr: the address asked about */
	unsigned char ip[16];
};

/* A blocking resolver: its own base, a deadline timer for each call. */
struct dns_sync {
	struct event_base *base;
	struct dns *d;
	struct event *deadline;
	struct timeval deadline_tv;
	int expired;
};

/* One blocking call's answer, filled by a dns_sync_*_cb. */
struct dns_sync_res {
	int done;
	enum dns_status st;
	const char *error;
	void *out;                    /* the caller's buffer */
	size_t size;                  /* of one item, or of the buffer (raw) */
	int *n_r;
};

static void dns_schedule(struct dns *d);

/* A socket of c-ares is ready. */
static void dns_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	ares_process_fd(d->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
	    (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dns_schedule(d);
}

/* c-ares's timeout for a retransmission (or giving up) came. */
static void dns_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns *d = arg;

	(void)fd;
	(void)what;
	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_schedule(d);
}

/* Sets the timer to c-ares's next timeout, or clears it. */
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

/* c-ares opens, closes or changes interest in a socket: its event. */
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

/* Once per process: c-ares's global state. */
static void dns_lib_init(void)
{
	ares_library_init(ARES_LIB_INIT_ALL);
}

/* A resolver on base; see dns.h. */
struct dns *dns_new_opts(struct event_base *base, const char *servers,
    const struct dns_opts *opts, char **error_r)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct dns *d = xcalloc(1, sizeof(*d));
	struct ares_options opt;
	int rc;

	pthread_once(&once, dns_lib_init);
	memset(&opt, 0, sizeof(opt));
	opt.sock_state_cb = dns_sock_state_cb;
	opt.sock_state_cb_data = d;
	opt.timeout = opts != NULL && opts->timeout_ms > 0 ? opts->timeout_ms : 2000;
	opt.tries = opts != NULL && opts->tries > 0 ? opts->tries : 3;
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

/* dns_new_opts with the defaults. */
struct dns *dns_new(struct event_base *base, const char *servers, char **error_r)
{
	return dns_new_opts(base, servers, NULL, error_r);
}

/* Cancels what is pending (callbacks run with DNS_CANCELLED) and frees. */
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

/* The status c-ares reports for a query. */
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

/* The name at abuf[*off] as a string c-ares allocated (ares_free_string),
 * *off moved past it; NULL when it is malformed. */
static char *dns_name_at(const unsigned char *abuf, int alen, int *off)
{
	char *name;
	long enclen;

	if (*off >= alen || ares_expand_name(abuf + *off, abuf, alen, &name, &enclen) != ARES_SUCCESS)
		return NULL;
	*off += (int)enclen;
	return name;
}

/* A static text for st, NULL for DNS_OK. */
static const char *dns_status_error(enum dns_status st)
{
	switch (st) {
	case DNS_OK:
		return NULL;
	case DNS_NOTFOUND:
		return "domain name not found";
	case DNS_NODATA:
		return "no record of that type";
	case DNS_CANCELLED:
		return "DNS lookup cancelled";
	default:
		return "DNS lookup failed";
	}
}

/* Follows the CNAME chain in the answer section from the question name, in
 * any order: NULL when it ends within DNS_CNAME_MAX hops, else why not (a
 * longer chain or a loop, a malformed answer). Each pass over the answer
 * moves one hop at least or ends, so there are DNS_CNAME_MAX + 1 at most. */
static const char *dns_cname_check(const unsigned char *abuf, int alen)
{
	const char *why = "malformed DNS answer";
	char *cur, *owner = NULL, *target;
	int off = NS_HFIXEDSZ, first, an, hops = 0, moved = 1;

	if (abuf == NULL || alen < NS_HFIXEDSZ || DNS_U16(abuf + 4) != 1)
		return why;
	an = (int)DNS_U16(abuf + 6);
	if ((cur = dns_name_at(abuf, alen, &off)) == NULL)
		return why;
	first = off + NS_QFIXEDSZ;
	while (moved) {
		moved = 0;
		off = first;
		for (int i = 0; i < an; i++) {
			unsigned type, rdlen;

			if ((owner = dns_name_at(abuf, alen, &off)) == NULL || off + NS_RRFIXEDSZ > alen)
				goto out;
			type = DNS_U16(abuf + off);
			rdlen = DNS_U16(abuf + off + 8);
			off += NS_RRFIXEDSZ;
			if (off + (int)rdlen > alen)
				goto out;
			if (type == ns_t_cname && strcasecmp(owner, cur) == 0) {
				int toff = off;

				if ((target = dns_name_at(abuf, alen, &toff)) == NULL)
					goto out;
				ares_free_string(cur);
				cur = target;
				moved = 1;
				if (++hops > DNS_CNAME_MAX) {
					why = "CNAME chain too long";
					goto out;
				}
			}
			ares_free_string(owner);
			owner = NULL;
			off += (int)rdlen;
		}
	}
	why = NULL;
out:
	if (owner != NULL)
		ares_free_string(owner);
	ares_free_string(cur);
	return why;
}

/* The status of an answer as c-ares hands it to a callback, its CNAME chain
 * checked; *error_r is a static string unless DNS_OK. */
static enum dns_status dns_answer_status(int status, const unsigned char *abuf, int alen,
    const char **error_r)
{
	enum dns_status st = dns_status_of(status);

	*error_r = st == DNS_OK ? NULL : ares_strerror(status);
	if (st == DNS_OK && (*error_r = dns_cname_check(abuf, alen)) != NULL)
		st = DNS_TEMPFAIL;
	return st;
}

/* The status of an ares_parse_*_reply that returned rc; DNS_NODATA as well
 * when it succeeded with n == 0 records kept. */
static enum dns_status dns_parse_status(int rc, int n, const char **error_r)
{
	if (rc == ARES_SUCCESS && n == 0)
		rc = ARES_ENODATA;
	*error_r = rc == ARES_SUCCESS ? NULL : ares_strerror(rc);
	return rc == ARES_SUCCESS ? DNS_OK : rc == ARES_ENODATA ? DNS_NODATA : DNS_TEMPFAIL;
}

/* Sends the query (name, IN, type); fn gets a malloc'd copy of q and frees
 * it. fn may run before this returns. */
static void dns_query(struct dns *d, const char *name, int type, ares_callback fn,
    const struct dns_q *q)
{
	struct dns_q *c = xmalloc(sizeof(*c));

	*c = *q;
	ares_query(d->ch, name, ns_c_in, type, fn, c);
	dns_schedule(d);
}

/* Sorts mx by preference. */
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

/* The answer to a dns_mx query. */
static void dns_mx_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	struct ares_mx_reply *rep = NULL;
	struct dns_mx mx[DNS_MX_MAX];
	const char *error;
	enum dns_status st = dns_answer_status(status, abuf, alen, &error);
	int n = 0, rc;

	(void)timeouts;
	if (st == DNS_OK) {
		rc = ares_parse_mx_reply(abuf, alen, &rep);
		for (struct ares_mx_reply *r = rep; rc == ARES_SUCCESS && r && n < DNS_MX_MAX; r = r->next) {
			mx[n].pref = r->priority;
			if (util_fmt(mx[n].host, sizeof(mx[n].host), "%s", r->host) < 0)
				continue;
			if (strcmp(mx[n].host, ".") == 0)
				mx[n].host[0] = '\0';
			n++;
		}
		if (rep)
			ares_free_data(rep);
		st = dns_parse_status(rc, n, &error);
	}
	dns_mx_sort(mx, n);
	q->cb.mx(q->arg, st, mx, n, error);
	free(q);
}

/* The MX records of domain. */
void dns_mx(struct dns *d, const char *domain, dns_mx_cb *cb, void *arg)
{
	dns_query(d, domain, ns_t_mx, dns_mx_answer, &(struct dns_q){ .cb.mx = cb, .arg = arg });
}

/* Sets *a to address ip (struct in_addr or in6_addr by af), port port. */
static void dns_addr_fill(struct dns_addr *a, int af, const void *ip, int port)
{
	memset(a, 0, sizeof(*a));
	if (af == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		memcpy(&sin->sin_addr, ip, sizeof(sin->sin_addr));
		a->len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		memcpy(&sin6->sin6_addr, ip, sizeof(sin6->sin6_addr));
		a->len = sizeof(*sin6);
	}
}

/* One half of a dns_addr query is in: the answer once both are. */
static void dns_addr_done(struct dns_addr_q *q)
{
	struct dns_addr all[2 * DNS_ADDR_MAX];
	enum dns_status st4 = q->h4.st, st6 = q->h6.st, st;
	int n = 0;

	if (--q->pending > 0)
		return;
	for (int i = 0; i < q->h6.n; i++)
		all[n++] = q->h6.a[i];
	for (int i = 0; i < q->h4.n; i++)
		all[n++] = q->h4.a[i];
	if (st4 == DNS_CANCELLED || st6 == DNS_CANCELLED)
		st = DNS_CANCELLED;
	else if (n > 0)
		st = DNS_OK;
	else if (st4 == DNS_TEMPFAIL || st6 == DNS_TEMPFAIL)
		st = DNS_TEMPFAIL;
	else if (st4 == DNS_NOTFOUND && st6 == DNS_NOTFOUND)
		st = DNS_NOTFOUND;
	else
		st = DNS_NODATA;
	q->cb(q->arg, st, all, n, dns_status_error(st));
	free(q);
}

/* The answer to one half (A or AAAA) of a dns_addr query. */
static void dns_addr_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_addr_half *h = arg;
	struct ares_addrttl t4[DNS_ADDR_MAX];
	struct ares_addr6ttl t6[DNS_ADDR_MAX];
	const char *error;
	int n = DNS_ADDR_MAX, rc;

	(void)timeouts;
	h->st = dns_answer_status(status, abuf, alen, &error);
	if (h->st == DNS_OK) {
		rc = h->af == AF_INET ? ares_parse_a_reply(abuf, alen, NULL, t4, &n)
				      : ares_parse_aaaa_reply(abuf, alen, NULL, t6, &n);
		h->st = dns_parse_status(rc, n, &error);
		for (int i = 0; h->st == DNS_OK && i < n; i++)
			dns_addr_fill(&h->a[h->n++], h->af,
				      h->af == AF_INET ? (const void *)&t4[i].ipaddr : (const void *)&t6[i].ip6addr,
				      h->q->port);
	}
	dns_addr_done(h->q);
}

/* An IP literal or an /etc/hosts entry; 1 answered, 0 not. */
static int dns_addr_local(struct dns *d, const char *host, int port, dns_addr_cb *cb, void *arg)
{
	static const int fams[2] = { AF_INET6, AF_INET };
	struct dns_addr a[2];
	struct hostent *he = NULL;
	unsigned char ip[sizeof(struct in6_addr)];
	int n = 0;

	for (int i = 0; i < 2; i++)
		if (inet_pton(fams[i], host, ip) == 1) {
			dns_addr_fill(&a[0], fams[i], ip, port);
			cb(arg, DNS_OK, a, 1, NULL);
			return 1;
		}
	for (int i = 0; i < 2; i++) {
		if (ares_gethostbyname_file(d->ch, host, fams[i], &he) != ARES_SUCCESS || he == NULL)
			continue;
		if (he->h_addr_list[0] != NULL)
			dns_addr_fill(&a[n++], fams[i], he->h_addr_list[0], port);
		ares_free_hostent(he);
		he = NULL;
	}
	if (n == 0)
		return 0;
	cb(arg, DNS_OK, a, n, NULL);
	return 1;
}

/* The addresses of host: local first, then AAAA and A. */
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
	q->h6.q = q->h4.q = q;
	q->h6.af = AF_INET6;
	q->h4.af = AF_INET;
	ares_query(d->ch, host, ns_c_in, ns_t_aaaa, dns_addr_answer, &q->h6);
	ares_query(d->ch, host, ns_c_in, ns_t_a, dns_addr_answer, &q->h4);
	dns_schedule(d);
}

/* The answer to a dns_a4 query. */
static void dns_a4_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	struct ares_addrttl t4[DNS_ADDR_MAX];
	struct in_addr a[DNS_ADDR_MAX];
	const char *error;
	enum dns_status st = dns_answer_status(status, abuf, alen, &error);
	int n = DNS_ADDR_MAX, rc;

	(void)timeouts;
	if (st == DNS_OK) {
		rc = ares_parse_a_reply(abuf, alen, NULL, t4, &n);
		st = dns_parse_status(rc, n, &error);
	}
	if (st != DNS_OK)
		n = 0;
	for (int i = 0; i < n; i++)
		a[i] = t4[i].ipaddr;
	q->cb.a4(q->arg, st, a, n, error);
	free(q);
}

/* The A records of name, from DNS only. */
void dns_a4(struct dns *d, const char *name, dns_a4_cb *cb, void *arg)
{
	dns_query(d, name, ns_t_a, dns_a4_answer, &(struct dns_q){ .cb.a4 = cb, .arg = arg });
}

/* Joins the character-strings of each TXT record in list (a record starts
 * at record_start) into set, whole records only, within DNS_TXT_MAX records
 * and DNS_TXT_BYTES bytes; truncated when some were left out. */
static void dns_txt_join(struct dns_txt_set *set, const struct ares_txt_ext *list)
{
	const struct ares_txt_ext *t = list, *end;
	size_t off = 0, bytes = 0, len;

	set->n = 0;
	while (t != NULL && set->n < DNS_TXT_MAX) {
		len = t->length;
		for (end = t->next; end != NULL && !end->record_start; end = end->next)
			len += end->length;
		if (bytes + len > DNS_TXT_BYTES)
			break;
		set->rec[set->n].s = set->buf + off;
		set->rec[set->n++].len = len;
		for (; t != end; t = t->next) {
			memcpy(set->buf + off, t->txt, t->length);
			off += t->length;
		}
		set->buf[off++] = '\0';
		bytes += len;
	}
	set->truncated = t != NULL;
}

/* The answer to a dns_txt query. */
static void dns_txt_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	struct ares_txt_ext *list = NULL;
	struct dns_txt_set *set = xmalloc(sizeof(*set));
	const char *error;
	enum dns_status st = dns_answer_status(status, abuf, alen, &error);
	int rc;

	(void)timeouts;
	set->n = set->truncated = 0;
	if (st == DNS_OK) {
		rc = ares_parse_txt_reply_ext(abuf, alen, &list);
		st = dns_parse_status(rc, list != NULL, &error);
		if (st == DNS_OK)
			dns_txt_join(set, list);
		if (list != NULL)
			ares_free_data(list);
	}
	q->cb.txt(q->arg, st, set, error);
	free(set);
	free(q);
}

/* The TXT records of name. */
void dns_txt(struct dns *d, const char *name, dns_txt_cb *cb, void *arg)
{
	dns_query(d, name, ns_t_txt, dns_txt_answer, &(struct dns_q){ .cb.txt = cb, .arg = arg });
}

/* The reverse name of sa into buf (cap DNS_PTR_QNAME) and its address into
 * q: in-addr.arpa for IPv4 and v4-mapped IPv6, ip6.arpa nibbles for IPv6;
 * 0, or -1 for another family. */
static int dns_ptr_qname(const struct sockaddr *sa, struct dns_q *q, char *buf, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = q->ip;
	size_t off = 0;

	if (sa->sa_family == AF_INET) {
		memcpy(q->ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		q->af = AF_INET;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		q->af = IN6_IS_ADDR_V4MAPPED(a6) ? AF_INET : AF_INET6;
		memcpy(q->ip, q->af == AF_INET ? a6->s6_addr + 12 : a6->s6_addr,
		    q->af == AF_INET ? 4 : 16);
	} else {
		return -1;
	}
	if (q->af == AF_INET)
		return util_fmt(buf, cap, "%u.%u.%u.%u.in-addr.arpa", p[3], p[2], p[1], p[0]);
	for (int i = 15; i >= 0; i--) {
		buf[off++] = hex[p[i] & 0xf];
		buf[off++] = '.';
		buf[off++] = hex[p[i] >> 4];
		buf[off++] = '.';
	}
	return util_fmt(buf + off, cap - off, "ip6.arpa");
}

/* The answer to a dns_ptr query: the names of every PTR record (c-ares
 * lists them all in h_aliases). */
static void dns_ptr_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	struct dns_name names[DNS_PTR_MAX];
	struct hostent *he = NULL;
	char **al;
	const char *error;
	enum dns_status st = dns_answer_status(status, abuf, alen, &error);
	int n = 0, rc;

	(void)timeouts;
	if (st == DNS_OK) {
		rc = ares_parse_ptr_reply(abuf, alen, q->ip, q->af == AF_INET ? 4 : 16, q->af, &he);
		al = rc == ARES_SUCCESS ? he->h_aliases : NULL;
		for (int i = 0; al != NULL && al[i] != NULL && n < DNS_PTR_MAX; i++) {
			if (al[i][0] == '\0' || util_fmt(names[n].name, sizeof(names[n].name), "%s", al[i]) < 0)
				continue;
			util_lower(names[n++].name);
		}
		if (he != NULL)
			ares_free_hostent(he);
		st = dns_parse_status(rc, n, &error);
	}
	q->cb.ptr(q->arg, st, names, n, error);
	free(q);
}

/* The PTR names of sa's address. */
void dns_ptr(struct dns *d, const struct sockaddr *sa, dns_ptr_cb *cb, void *arg)
{
	struct dns_q q = { .cb.ptr = cb, .arg = arg };
	struct dns_name none = { "" };
	char name[DNS_PTR_QNAME];

	if (dns_ptr_qname(sa, &q, name, sizeof(name)) < 0) {
		cb(arg, DNS_TEMPFAIL, &none, 0, "address family not supported");
		return;
	}
	dns_query(d, name, ns_t_ptr, dns_ptr_answer, &q);
}

/* The answer to a dns_raw query, passed on as received. */
static void dns_raw_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_q *q = arg;
	const char *error;
	enum dns_status st = dns_answer_status(status, abuf, alen, &error);

	(void)timeouts;
	if (abuf == NULL || alen <= 0 || alen > DNS_RAW_MAX) {
		if (st == DNS_OK) {
			st = DNS_TEMPFAIL;
			error = "DNS answer too large";
		}
		abuf = NULL;
		alen = 0;
	}
	q->cb.raw(q->arg, st, abuf, alen, error);
	free(q);
}

/* The raw answer to (name, IN, type). */
void dns_raw(struct dns *d, const char *name, int type, dns_raw_cb *cb, void *arg)
{
	dns_query(d, name, type, dns_raw_answer, &(struct dns_q){ .cb.raw = cb, .arg = arg });
}

/* The deadline of a blocking call passed. */
static void dns_sync_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns_sync *ds = arg;

	(void)fd;
	(void)what;
	ds->expired = 1;
}

/* A blocking resolver with its own base. */
struct dns_sync *dns_sync_new(const char *servers, const struct dns_opts *opts,
    char **error_r)
{
	struct dns_sync *ds = xcalloc(1, sizeof(*ds));
	int ms = opts != NULL && opts->deadline_ms > 0 ? opts->deadline_ms : 12000;

	ds->deadline_tv.tv_sec = ms / 1000;
	ds->deadline_tv.tv_usec = (ms % 1000) * 1000;
	if ((ds->base = event_base_new()) == NULL) {
		util_err(error_r, "event_base_new failed");
		free(ds);
		return NULL;
	}
	ds->deadline = evtimer_new(ds->base, dns_sync_deadline_cb, ds);
	ds->d = dns_new_opts(ds->base, servers, opts, error_r);
	if (ds->d == NULL) {
		dns_sync_free(&ds);
		return NULL;
	}
	return ds;
}

/* Frees a blocking resolver; accepts NULL. */
void dns_sync_free(struct dns_sync **dsp)
{
	struct dns_sync *ds = *dsp;

	if (ds == NULL)
		return;
	dns_free(&ds->d);
	if (ds->deadline != NULL)
		event_free(ds->deadline);
	event_base_free(ds->base);
	free(ds);
	*dsp = NULL;
}

/* Runs ds's base until r is answered or the deadline passes; then the
 * query is cancelled (its callback runs now) and the call is DNS_TEMPFAIL. */
static enum dns_status dns_sync_wait(struct dns_sync *ds, struct dns_sync_res *r,
    const char **error_r)
{
	ds->expired = 0;
	if (!r->done) {
		evtimer_add(ds->deadline, &ds->deadline_tv);
		while (!r->done && !ds->expired)
			if (event_base_loop(ds->base, EVLOOP_ONCE) != 0)
				break;      /* an error, or nothing left to wait for */
		evtimer_del(ds->deadline);
	}
	if (!r->done || r->st == DNS_CANCELLED) {
		ares_cancel(ds->d->ch);
		dns_schedule(ds->d);
		r->st = DNS_TEMPFAIL;
		r->error = ds->expired ? "DNS deadline passed" : NULL;
	}
	*error_r = r->st == DNS_OK ? NULL : r->error != NULL ? r->error : dns_status_error(r->st);
	return r->st;
}

/* Records a blocking call's status; 1 when there is an answer to copy. */
static int dns_sync_done(struct dns_sync_res *r, enum dns_status st, const char *error)
{
	r->done = 1;
	r->st = st;
	r->error = error;
	return st == DNS_OK;
}

/* The answer of dns_sync_a4 / dns_sync_ptr: n items of r->size bytes. */
static void dns_sync_items(struct dns_sync_res *r, enum dns_status st, const void *items,
    int n, const char *error)
{
	if (!dns_sync_done(r, st, error) || n <= 0)
		return;
	memcpy(r->out, items, (size_t)n * r->size);
	*r->n_r = n;
}

/* dns_a4_cb of dns_sync_a4. */
static void dns_sync_a4_cb(void *arg, enum dns_status st, const struct in_addr *a, int n,
    const char *error)
{
	dns_sync_items(arg, st, a, n, error);
}

/* dns_ptr_cb of dns_sync_ptr. */
static void dns_sync_ptr_cb(void *arg, enum dns_status st, const struct dns_name *names, int n,
    const char *error)
{
	dns_sync_items(arg, st, names, n, error);
}

/* dns_txt_cb of dns_sync_txt: a copy of the set, its pointers moved over. */
static void dns_sync_txt_cb(void *arg, enum dns_status st, const struct dns_txt_set *txt,
    const char *error)
{
	struct dns_sync_res *r = arg;
	struct dns_txt_set *out = r->out;

	if (!dns_sync_done(r, st, error))
		return;
	memcpy(out, txt, sizeof(*out));
	for (int i = 0; i < out->n; i++)
		out->rec[i].s = out->buf + (txt->rec[i].s - txt->buf);
}

/* dns_raw_cb of dns_sync_raw: any answer received is copied, if it fits. */
static void dns_sync_raw_cb(void *arg, enum dns_status st, const unsigned char *abuf, int alen,
    const char *error)
{
	struct dns_sync_res *r = arg;

	dns_sync_done(r, st, error);
	if (alen > 0 && (size_t)alen > r->size) {
		r->st = DNS_TEMPFAIL;
		r->error = "DNS answer larger than the buffer";
	} else if (alen > 0) {
		memcpy(r->out, abuf, (size_t)alen);
		*r->n_r = alen;
	}
}

/* dns_a4, blocking. */
enum dns_status dns_sync_a4(struct dns_sync *ds, const char *name,
    struct in_addr a[DNS_ADDR_MAX], int *n_r, const char **error_r)
{
	struct dns_sync_res r = { .out = a, .size = sizeof(*a), .n_r = n_r };

	*n_r = 0;
	dns_a4(ds->d, name, dns_sync_a4_cb, &r);
	return dns_sync_wait(ds, &r, error_r);
}

/* dns_txt, blocking. */
enum dns_status dns_sync_txt(struct dns_sync *ds, const char *name,
    struct dns_txt_set *txt, const char **error_r)
{
	struct dns_sync_res r = { .out = txt };

	txt->n = txt->truncated = 0;
	dns_txt(ds->d, name, dns_sync_txt_cb, &r);
	return dns_sync_wait(ds, &r, error_r);
}

/* dns_ptr, blocking. */
enum dns_status dns_sync_ptr(struct dns_sync *ds, const struct sockaddr *sa,
    struct dns_name names[DNS_PTR_MAX], int *n_r, const char **error_r)
{
	struct dns_sync_res r = { .out = names, .size = sizeof(*names), .n_r = n_r };

	*n_r = 0;
	dns_ptr(ds->d, sa, dns_sync_ptr_cb, &r);
	return dns_sync_wait(ds, &r, error_r);
}

/* dns_raw, blocking, into buf. */
enum dns_status dns_sync_raw(struct dns_sync *ds, const char *name, int type,
    unsigned char *buf, size_t cap, int *len_r, const char **error_r)
{
	struct dns_sync_res r = { .out = buf, .size = cap, .n_r = len_r };

	*len_r = 0;
	dns_raw(ds->d, name, type, dns_sync_raw_cb, &r);
	return dns_sync_wait(ds, &r, error_r);
}
