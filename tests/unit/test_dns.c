/* test_dns: the resolver against a tiny DNS responder thread on loopback
 * (UDP, and TCP on the same port for answers over 512 bytes) serving canned
 * answers. Every case is asked through the blocking API first, then through
 * the asynchronous one, whose callback checks it got the same answer: A,
 * TXT (joined strings, several records, truncation, malformed), PTR (v4, v6,
 * v4-mapped), not found / no data / SERVFAIL / no answer at all, CNAME
 * chains and loops, raw answers, cancellation. Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <cmocka.h>
#include <event2/event.h>

#include "lib/dns.h"
#include "lib/util.h"

#define V6_PTR "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
#define WAIT_MS 5000            /* bound on any one asynchronous answer */
#define MSG_CAP 65535
#define TCP_CLIENTS 4

/* The canned zone; "|" separates the character-strings of one TXT record.
 * Served like an authoritative server: CNAMEs followed inside the zone. */
struct zrec {
	const char *name;
	int type;
	const char *data;
};

static const struct zrec zone[] = {
	{ "a.test", ns_t_a, "192.0.2.1" },
	{ "a.test", ns_t_a, "192.0.2.2" },
	{ "mx.test", ns_t_mx, "mx.a.test" },
	{ "multi.test", ns_t_txt, "v=spf1 |ip4:192.0.2.0/24 |-all" },
	{ "several.test", ns_t_txt, "one" },
	{ "several.test", ns_t_txt, "two|2" },
	{ "several.test", ns_t_txt, "three" },
	{ "txtalias.test", ns_t_cname, "multi.test" },
	{ "2.0.0.127.in-addr.arpa", ns_t_ptr, "Mail.Example.TEST" },
	{ "2.0.0.127.in-addr.arpa", ns_t_ptr, "second.example.test" },
	{ V6_PTR, ns_t_ptr, "v6.example.test" },
	/* chain.test: DNS_CNAME_MAX hops to c8; toolong.test: one more */
	{ "chain.test", ns_t_cname, "c1.test" },
	{ "toolong.test", ns_t_cname, "c0.test" },
	{ "c0.test", ns_t_cname, "c1.test" },
	{ "c1.test", ns_t_cname, "c2.test" },
	{ "c2.test", ns_t_cname, "c3.test" },
	{ "c3.test", ns_t_cname, "c4.test" },
	{ "c4.test", ns_t_cname, "c5.test" },
	{ "c5.test", ns_t_cname, "c6.test" },
	{ "c6.test", ns_t_cname, "c7.test" },
	{ "c7.test", ns_t_cname, "c8.test" },
	{ "c8.test", ns_t_a, "192.0.2.8" },
	{ "loop.test", ns_t_cname, "loop2.test" },
	{ "loop2.test", ns_t_cname, "loop.test" },
};

struct msg {
	unsigned char b[MSG_CAP];
	size_t len;
	int an;
	int bad;                /* overflowed: not sent */
};

struct responder {
	int udp, tcp;
	int port;
	pthread_t th;
	atomic_int stop;
	pthread_mutex_t mu;
	char qname[DNS_NAME_MAX];       /* the last query seen */
	int qtype;
	int queries;
	unsigned char answer[MSG_CAP];  /* the last answer sent */
	size_t answer_len;
};

static void put(struct msg *m, const void *p, size_t n)
{
	if (m->len + n > sizeof(m->b)) {
		m->bad = 1;
		return;
	}
	memcpy(m->b + m->len, p, n);
	m->len += n;
}

static void put16(struct msg *m, unsigned v)
{
	unsigned char b[2] = { (unsigned char)(v >> 8), (unsigned char)v };

	put(m, b, 2);
}

/* A dotted name, uncompressed. */
static void put_name(struct msg *m, const char *name)
{
	const char *p = name, *dot;

	while (*p != '\0') {
		size_t n;
		unsigned char c;

		dot = strchr(p, '.');
		n = dot ? (size_t)(dot - p) : strlen(p);
		c = (unsigned char)n;
		put(m, &c, 1);
		put(m, p, n);
		p += n + (dot != NULL);
	}
	put(m, "", 1);
}

/* Starts a record of owner and type; returns where its length goes. */
static size_t rr_begin(struct msg *m, const char *owner, int type)
{
	size_t at;

	put_name(m, owner);
	put16(m, (unsigned)type);
	put16(m, ns_c_in);
	put16(m, 0);
	put16(m, 60);
	at = m->len;
	put16(m, 0);
	return at;
}

static void rr_end(struct msg *m, size_t at)
{
	size_t n = m->len - at - 2;

	if (m->bad)
		return;
	m->b[at] = (unsigned char)(n >> 8);
	m->b[at + 1] = (unsigned char)n;
	m->an++;
}

/* A TXT record of the strings of data ("|" between them). */
static void rr_txt(struct msg *m, const char *owner, const char *data)
{
	size_t at = rr_begin(m, owner, ns_t_txt);
	const char *p = data;

	for (;;) {
		size_t n = strcspn(p, "|");
		unsigned char c = (unsigned char)n;

		put(m, &c, 1);
		put(m, p, n);
		if (p[n] == '\0')
			break;
		p += n + 1;
	}
	rr_end(m, at);
}

/* The record z with owner owner. */
static void rr_zone(struct msg *m, const char *owner, const struct zrec *z)
{
	struct in_addr a;
	size_t at;

	if (z->type == ns_t_txt) {
		rr_txt(m, owner, z->data);
		return;
	}
	at = rr_begin(m, owner, z->type);
	if (z->type == ns_t_a) {
		inet_pton(AF_INET, z->data, &a);
		put(m, &a, sizeof(a));
	} else {
		if (z->type == ns_t_mx)
			put16(m, 10);
		put_name(m, z->data);
	}
	rr_end(m, at);
}

/* Names answered by code rather than the zone: 1 handled (*rcode set, -1
 * for no answer at all), 0 not one of them. */
static int answer_special(struct msg *m, const char *qname, int qtype, int *rcode)
{
	char s[256];
	size_t at;

	*rcode = 0;
	if (strcmp(qname, "drop.test") == 0) {
		*rcode = -1;
	} else if (strcmp(qname, "fail.test") == 0) {
		*rcode = ns_r_servfail;
	} else if (strcmp(qname, "many.test") == 0 && qtype == ns_t_txt) {
		for (int i = 0; i < DNS_TXT_MAX + 8; i++) {
			snprintf(s, sizeof(s), "rec-%02d", i);
			rr_txt(m, qname, s);
		}
	} else if (strcmp(qname, "big.test") == 0 && qtype == ns_t_txt) {
		/* 10 records of 8 strings of 255 bytes: past DNS_TXT_BYTES */
		for (int i = 0; i < 10; i++) {
			at = rr_begin(m, qname, ns_t_txt);
			memset(s, 'a' + i, 255);
			for (int j = 0; j < 8; j++) {
				unsigned char c = 255;
				put(m, &c, 1);
				put(m, s, 255);
			}
			rr_end(m, at);
		}
	} else if (strcmp(qname, "manya.test") == 0 && qtype == ns_t_a) {
		for (int i = 0; i < DNS_ADDR_MAX + 4; i++) {
			at = rr_begin(m, qname, ns_t_a);
			put(m, (unsigned char[4]){ 192, 0, 2, (unsigned char)i }, 4);
			rr_end(m, at);
		}
	} else if (strcmp(qname, "4.0.0.127.in-addr.arpa") == 0 && qtype == ns_t_ptr) {
		for (int i = 0; i < DNS_PTR_MAX + 2; i++) {
			snprintf(s, sizeof(s), "p%d.example.test", i);
			at = rr_begin(m, qname, ns_t_ptr);
			put_name(m, s);
			rr_end(m, at);
		}
	} else if (strcmp(qname, "badtxt.test") == 0 && qtype == ns_t_txt) {
		/* a string of 5 bytes in 3 bytes of data */
		rr_txt(m, qname, "fine");
		at = rr_begin(m, qname, ns_t_txt);
		put(m, "\5ab", 3);
		rr_end(m, at);
	} else {
		return 0;
	}
	return 1;
}

/* The answer section for (qname, qtype); the rcode, or -1 for none. */
static int answer_zone(struct msg *m, const char *qname, int qtype)
{
	char cur[DNS_NAME_MAX];
	int rcode;

	if (answer_special(m, qname, qtype, &rcode))
		return rcode;
	snprintf(cur, sizeof(cur), "%s", qname);
	for (int hops = 0; hops < 20; hops++) {
		const struct zrec *cname = NULL;
		int found = 0;

		for (size_t i = 0; i < sizeof(zone) / sizeof(zone[0]); i++)
			if (strcasecmp(zone[i].name, cur) == 0) {
				found = 1;
				if (zone[i].type == ns_t_cname)
					cname = &zone[i];
			}
		if (!found)
			return ns_r_nxdomain;
		if (cname != NULL && qtype != ns_t_cname) {
			rr_zone(m, cur, cname);
			snprintf(cur, sizeof(cur), "%s", cname->data);
			continue;
		}
		for (size_t i = 0; i < sizeof(zone) / sizeof(zone[0]); i++)
			if (strcasecmp(zone[i].name, cur) == 0 && zone[i].type == qtype)
				rr_zone(m, cur, &zone[i]);
		break;
	}
	return 0;
}

/* Builds the answer to query q into m: 0, or -1 for no answer. Over UDP an
 * answer over 512 bytes goes with TC set and its records left out. */
static int respond(struct responder *r, const unsigned char *q, size_t qlen, int tcp,
    struct msg *m)
{
	char name[DNS_NAME_MAX];
	size_t off = 12, nlen = 0;
	int qtype, rcode;

	if (qlen < 12 || q[4] != 0 || q[5] != 1)
		return -1;
	while (off < qlen && q[off] != 0) {
		size_t n = q[off];

		if (n > 63 || off + 1 + n >= qlen || nlen + n + 2 > sizeof(name))
			return -1;
		if (nlen > 0)
			name[nlen++] = '.';
		for (size_t i = 0; i < n; i++)
			name[nlen++] = (char)(q[off + 1 + i] | 0x20);
		off += 1 + n;
	}
	if (off + 5 > qlen)
		return -1;
	name[nlen] = '\0';
	qtype = q[off + 1] << 8 | q[off + 2];
	off += 5;
	pthread_mutex_lock(&r->mu);
	snprintf(r->qname, sizeof(r->qname), "%s", name);
	r->qtype = qtype;
	r->queries++;
	pthread_mutex_unlock(&r->mu);

	memset(m->b, 0, 12);
	m->len = 12;
	m->an = 0;
	m->bad = 0;
	put(m, q + 12, off - 12);
	rcode = answer_zone(m, name, qtype);
	if (rcode < 0 || m->bad)
		return -1;
	m->b[0] = q[0];
	m->b[1] = q[1];
	m->b[2] = (unsigned char)(0x84 | (q[2] & 0x01));
	m->b[3] = (unsigned char)rcode;
	m->b[5] = 1;
	if (!tcp && m->len > 512) {
		m->b[2] |= 0x02;
		m->len = off;
		m->an = 0;
	}
	m->b[6] = (unsigned char)(m->an >> 8);
	m->b[7] = (unsigned char)m->an;
	pthread_mutex_lock(&r->mu);
	memcpy(r->answer, m->b, m->len);
	r->answer_len = m->len;
	pthread_mutex_unlock(&r->mu);
	return 0;
}

/* One query on a TCP connection: 0, or -1 when it is to be closed. */
static int serve_tcp(struct responder *r, int fd, struct msg *m)
{
	unsigned char q[514], len[2];
	size_t n;

	if (recv(fd, len, 2, MSG_WAITALL) != 2)
		return -1;
	n = (size_t)(len[0] << 8 | len[1]);
	if (n > sizeof(q) || recv(fd, q, n, MSG_WAITALL) != (ssize_t)n)
		return -1;
	if (respond(r, q, n, 1, m) < 0)
		return 0;
	len[0] = (unsigned char)(m->len >> 8);
	len[1] = (unsigned char)m->len;
	if (send(fd, len, 2, MSG_NOSIGNAL) != 2 ||
	    send(fd, m->b, m->len, MSG_NOSIGNAL) != (ssize_t)m->len)
		return -1;
	return 0;
}

/* The responder thread: polls its sockets every 100 ms until stopped. */
static void *responder_main(void *arg)
{
	struct responder *r = arg;
	struct msg *m = malloc(sizeof(*m));
	struct pollfd p[2 + TCP_CLIENTS];
	unsigned char q[512];
	int ncl = 0;

	if (m == NULL)
		return NULL;
	while (!atomic_load(&r->stop)) {
		p[0] = (struct pollfd){ .fd = r->udp, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = r->tcp, .events = POLLIN };
		if (poll(p, (nfds_t)(2 + ncl), 100) <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			struct sockaddr_storage from;
			socklen_t flen = sizeof(from);
			ssize_t n = recvfrom(r->udp, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);

			if (n > 0 && respond(r, q, (size_t)n, 0, m) == 0)
				sendto(r->udp, m->b, m->len, 0, (struct sockaddr *)&from, flen);
		}
		for (int i = 2; i < 2 + ncl; i++)
			if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) && serve_tcp(r, p[i].fd, m) < 0) {
				close(p[i].fd);
				p[i] = p[1 + ncl--];
				i--;
			}
		if ((p[1].revents & POLLIN) && ncl < TCP_CLIENTS) {
			struct timeval tv = { 1, 0 };
			int fd = accept(r->tcp, NULL, NULL);

			if (fd >= 0) {
				setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
				p[2 + ncl++] = (struct pollfd){ .fd = fd, .events = POLLIN };
			}
		}
	}
	for (int i = 0; i < ncl; i++)
		close(p[2 + i].fd);
	free(m);
	return NULL;
}

/* Binds UDP on a free loopback port and TCP on the same port number. */
static void responder_start(struct responder *r)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int one = 1;

	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->mu, NULL);
	for (int tries = 0; tries < 50; tries++) {
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sin.sin_port = 0;
		r->udp = socket(AF_INET, SOCK_DGRAM, 0);
		r->tcp = socket(AF_INET, SOCK_STREAM, 0);
		assert_true(r->udp >= 0 && r->tcp >= 0);
		setsockopt(r->tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		assert_int_equal(bind(r->udp, (struct sockaddr *)&sin, sizeof(sin)), 0);
		assert_int_equal(getsockname(r->udp, (struct sockaddr *)&sin, &len), 0);
		if (bind(r->tcp, (struct sockaddr *)&sin, sizeof(sin)) == 0 && listen(r->tcp, 8) == 0)
			break;
		close(r->udp);
		close(r->tcp);
		r->udp = r->tcp = -1;
	}
	assert_true(r->udp >= 0);
	r->port = ntohs(sin.sin_port);
	assert_int_equal(pthread_create(&r->th, NULL, responder_main, r), 0);
}

static void responder_stop(struct responder *r)
{
	atomic_store(&r->stop, 1);
	pthread_join(r->th, NULL);
	close(r->udp);
	close(r->tcp);
	pthread_mutex_destroy(&r->mu);
}

/* The name of the last query the responder saw. */
static void last_qname(struct responder *r, char *buf, size_t cap)
{
	pthread_mutex_lock(&r->mu);
	snprintf(buf, cap, "%s", r->qname);
	pthread_mutex_unlock(&r->mu);
}

struct fixture {
	struct responder r;
	struct event_base *base;
	struct event *tick;
	struct dns *d;
	struct dns_sync *ds;
	char servers[64];
};

static const struct dns_opts test_opts = { .timeout_ms = 200, .tries = 1, .deadline_ms = 3000 };

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct timeval tv = { 0, 50000 };
	char *err = NULL;

	assert_non_null(f);
	responder_start(&f->r);
	snprintf(f->servers, sizeof(f->servers), "127.0.0.1:%d", f->r.port);
	f->base = event_base_new();
	assert_non_null(f->base);
	/* wakes the loop now and then, so that every wait below is bounded */
	f->tick = event_new(f->base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(f->tick, &tv);
	f->d = dns_new_opts(f->base, f->servers, &test_opts, &err);
	assert_null(err);
	assert_non_null(f->d);
	f->ds = dns_sync_new(f->servers, &test_opts, &err);
	assert_null(err);
	assert_non_null(f->ds);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	dns_free(&f->d);
	dns_sync_free(&f->ds);
	event_free(f->tick);
	event_base_free(f->base);
	responder_stop(&f->r);
	free(f);
	return 0;
}

/* The blocking answer of a case, which the asynchronous one must equal. */
struct want {
	enum dns_status st;
	int n;
	struct in_addr a[DNS_ADDR_MAX];
	struct dns_name names[DNS_PTR_MAX];
	struct dns_txt_set txt;
	unsigned char raw[4096];
	int calls;                      /* of the asynchronous callback */
};

/* The error string goes with the status. */
static void check_error(enum dns_status st, const char *error)
{
	if (st == DNS_OK)
		assert_null(error);
	else
		assert_true(error != NULL && error[0] != '\0');
}

/* Records one asynchronous answer, checking its status against w. */
static void got(struct want *w, enum dns_status st, int n, const char *error)
{
	w->calls++;
	assert_int_equal(st, w->st);
	assert_int_equal(n, w->n);
	check_error(st, error);
}

/* Runs the loop until the asynchronous answer of w came, within WAIT_MS. */
static void run(struct fixture *f, struct want *w)
{
	uint64_t end = util_now_ms() + WAIT_MS;

	while (w->calls == 0 && util_now_ms() < end)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_int_equal(w->calls, 1);
}

static void a4_cb(void *arg, enum dns_status st, const struct in_addr *a, int n,
    const char *error)
{
	struct want *w = arg;

	got(w, st, n, error);
	if (n > 0)
		assert_memory_equal(a, w->a, (size_t)n * sizeof(*a));
}

/* name's A records into w, both ways; the status. */
static enum dns_status ask_a4(struct fixture *f, const char *name, struct want *w)
{
	const char *err = "unset";

	memset(w, 0, sizeof(*w));
	w->st = dns_sync_a4(f->ds, name, w->a, &w->n, &err);
	check_error(w->st, err);
	dns_a4(f->d, name, a4_cb, w);
	run(f, w);
	return w->st;
}

static void txt_cb(void *arg, enum dns_status st, const struct dns_txt_set *txt,
    const char *error)
{
	struct want *w = arg;

	got(w, st, txt->n, error);
	assert_int_equal(txt->truncated, w->txt.truncated);
	for (int i = 0; i < txt->n; i++) {
		assert_int_equal(txt->rec[i].len, w->txt.rec[i].len);
		assert_memory_equal(txt->rec[i].s, w->txt.rec[i].s, txt->rec[i].len + 1);
	}
}

static enum dns_status ask_txt(struct fixture *f, const char *name, struct want *w)
{
	const char *err = "unset";

	memset(w, 0, sizeof(*w));
	w->st = dns_sync_txt(f->ds, name, &w->txt, &err);
	w->n = w->txt.n;
	check_error(w->st, err);
	dns_txt(f->d, name, txt_cb, w);
	run(f, w);
	return w->st;
}

static void ptr_cb(void *arg, enum dns_status st, const struct dns_name *names, int n,
    const char *error)
{
	struct want *w = arg;

	got(w, st, n, error);
	for (int i = 0; i < n; i++)
		assert_string_equal(names[i].name, w->names[i].name);
}

/* The PTR names of the address ip (v4 or v6 text), both ways. */
static enum dns_status ask_ptr(struct fixture *f, const char *ip, struct want *w)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	const char *err = "unset";

	memset(&ss, 0, sizeof(ss));
	memset(w, 0, sizeof(*w));
	if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
	} else {
		assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
		sin6->sin6_family = AF_INET6;
	}
	w->st = dns_sync_ptr(f->ds, (struct sockaddr *)&ss, w->names, &w->n, &err);
	check_error(w->st, err);
	dns_ptr(f->d, (struct sockaddr *)&ss, ptr_cb, w);
	run(f, w);
	return w->st;
}

static void raw_cb(void *arg, enum dns_status st, const unsigned char *abuf, int alen,
    const char *error)
{
	struct want *w = arg;

	got(w, st, alen, error);
	/* the same answer but for the query id */
	if (alen > 2)
		assert_memory_equal(abuf + 2, w->raw + 2, (size_t)alen - 2);
}

static enum dns_status ask_raw(struct fixture *f, const char *name, int type, struct want *w)
{
	const char *err = "unset";

	memset(w, 0, sizeof(*w));
	w->st = dns_sync_raw(f->ds, name, type, w->raw, sizeof(w->raw), &w->n, &err);
	check_error(w->st, err);
	dns_raw(f->d, name, type, raw_cb, w);
	run(f, w);
	return w->st;
}

static void test_a4(void **state)
{
	struct fixture *f = *state;
	struct want w;
	char ip[INET_ADDRSTRLEN];

	assert_int_equal(ask_a4(f, "a.test", &w), DNS_OK);
	assert_int_equal(w.n, 2);
	assert_string_equal(inet_ntop(AF_INET, &w.a[0], ip, sizeof(ip)), "192.0.2.1");
	assert_string_equal(inet_ntop(AF_INET, &w.a[1], ip, sizeof(ip)), "192.0.2.2");
	assert_int_equal(ask_a4(f, "A.Test", &w), DNS_OK);
	assert_int_equal(ask_a4(f, "nx.test", &w), DNS_NOTFOUND);
	/* from DNS only: neither /etc/hosts nor an IP literal answers */
	assert_int_equal(ask_a4(f, "localhost", &w), DNS_NOTFOUND);
	assert_int_equal(ask_a4(f, "127.0.0.1", &w), DNS_NOTFOUND);
	assert_int_equal(ask_a4(f, "mx.test", &w), DNS_NODATA);
	assert_int_equal(ask_a4(f, "fail.test", &w), DNS_TEMPFAIL);
	assert_int_equal(w.n, 0);
	/* at most DNS_ADDR_MAX, in order */
	assert_int_equal(ask_a4(f, "manya.test", &w), DNS_OK);
	assert_int_equal(w.n, DNS_ADDR_MAX);
	assert_string_equal(inet_ntop(AF_INET, &w.a[DNS_ADDR_MAX - 1], ip, sizeof(ip)), "192.0.2.15");
}

static void test_cname(void **state)
{
	struct fixture *f = *state;
	struct want w;
	char ip[INET_ADDRSTRLEN];

	/* DNS_CNAME_MAX hops: followed */
	assert_int_equal(ask_a4(f, "chain.test", &w), DNS_OK);
	assert_int_equal(w.n, 1);
	assert_string_equal(inet_ntop(AF_INET, &w.a[0], ip, sizeof(ip)), "192.0.2.8");
	/* one more, or a loop: a temporary failure */
	assert_int_equal(ask_a4(f, "toolong.test", &w), DNS_TEMPFAIL);
	assert_int_equal(ask_a4(f, "loop.test", &w), DNS_TEMPFAIL);
	assert_int_equal(ask_txt(f, "loop.test", &w), DNS_TEMPFAIL);
	/* a chain to a name without the type */
	assert_int_equal(ask_a4(f, "txtalias.test", &w), DNS_NODATA);
	assert_int_equal(ask_txt(f, "chain.test", &w), DNS_NODATA);
	assert_int_equal(ask_txt(f, "txtalias.test", &w), DNS_OK);
	assert_int_equal(w.txt.n, 1);
	assert_string_equal(w.txt.rec[0].s, "v=spf1 ip4:192.0.2.0/24 -all");
}

static void test_txt(void **state)
{
	struct fixture *f = *state;
	struct want w;

	assert_int_equal(ask_txt(f, "multi.test", &w), DNS_OK);
	assert_int_equal(w.txt.n, 1);
	assert_int_equal(w.txt.truncated, 0);
	assert_int_equal(w.txt.rec[0].len, strlen("v=spf1 ip4:192.0.2.0/24 -all"));
	assert_string_equal(w.txt.rec[0].s, "v=spf1 ip4:192.0.2.0/24 -all");

	assert_int_equal(ask_txt(f, "several.test", &w), DNS_OK);
	assert_int_equal(w.txt.n, 3);
	assert_int_equal(w.txt.truncated, 0);
	assert_string_equal(w.txt.rec[0].s, "one");
	assert_string_equal(w.txt.rec[1].s, "two2");
	assert_string_equal(w.txt.rec[2].s, "three");

	assert_int_equal(ask_txt(f, "a.test", &w), DNS_NODATA);
	assert_int_equal(ask_txt(f, "nx.test", &w), DNS_NOTFOUND);
	assert_int_equal(ask_txt(f, "fail.test", &w), DNS_TEMPFAIL);
	/* a string overrunning its record: the whole answer fails */
	assert_int_equal(ask_txt(f, "badtxt.test", &w), DNS_TEMPFAIL);
	assert_int_equal(w.txt.n, 0);
}

static void test_txt_bounds(void **state)
{
	struct fixture *f = *state;
	struct want w;
	char s[16];

	/* past DNS_TXT_MAX records (and over 512 bytes: retried over TCP) */
	assert_int_equal(ask_txt(f, "many.test", &w), DNS_OK);
	assert_int_equal(w.txt.n, DNS_TXT_MAX);
	assert_int_equal(w.txt.truncated, 1);
	for (int i = 0; i < DNS_TXT_MAX; i++) {
		snprintf(s, sizeof(s), "rec-%02d", i);
		assert_string_equal(w.txt.rec[i].s, s);
	}
	/* past DNS_TXT_BYTES: whole records of 2040 bytes only */
	assert_int_equal(ask_txt(f, "big.test", &w), DNS_OK);
	assert_int_equal(w.txt.n, DNS_TXT_BYTES / 2040);
	assert_int_equal(w.txt.truncated, 1);
	for (int i = 0; i < w.txt.n; i++) {
		assert_int_equal(w.txt.rec[i].len, 2040);
		assert_int_equal(w.txt.rec[i].s[0], 'a' + i);
		assert_int_equal(w.txt.rec[i].s[2039], 'a' + i);
		assert_int_equal(w.txt.rec[i].s[2040], '\0');
	}
}

static void test_ptr(void **state)
{
	struct fixture *f = *state;
	struct want w;
	char q[DNS_NAME_MAX];

	assert_int_equal(ask_ptr(f, "127.0.0.2", &w), DNS_OK);
	last_qname(&f->r, q, sizeof(q));
	assert_string_equal(q, "2.0.0.127.in-addr.arpa");
	assert_int_equal(w.n, 2);
	assert_string_equal(w.names[0].name, "mail.example.test");
	assert_string_equal(w.names[1].name, "second.example.test");

	assert_int_equal(ask_ptr(f, "2001:db8::1", &w), DNS_OK);
	last_qname(&f->r, q, sizeof(q));
	assert_string_equal(q, V6_PTR);
	assert_int_equal(w.n, 1);
	assert_string_equal(w.names[0].name, "v6.example.test");

	/* v4-mapped: asked as IPv4 */
	assert_int_equal(ask_ptr(f, "::ffff:127.0.0.2", &w), DNS_OK);
	last_qname(&f->r, q, sizeof(q));
	assert_string_equal(q, "2.0.0.127.in-addr.arpa");
	assert_int_equal(w.n, 2);

	/* at most DNS_PTR_MAX */
	assert_int_equal(ask_ptr(f, "127.0.0.4", &w), DNS_OK);
	assert_int_equal(w.n, DNS_PTR_MAX);
	assert_string_equal(w.names[DNS_PTR_MAX - 1].name, "p7.example.test");

	assert_int_equal(ask_ptr(f, "127.0.0.3", &w), DNS_NOTFOUND);
	assert_int_equal(w.n, 0);
}

static void test_ptr_family(void **state)
{
	struct fixture *f = *state;
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct dns_name names[DNS_PTR_MAX];
	struct want w;
	const char *err = NULL;
	int n = -1;

	/* answered at once, without a query */
	memset(&w, 0, sizeof(w));
	w.st = DNS_TEMPFAIL;
	dns_ptr(f->d, (struct sockaddr *)&un, ptr_cb, &w);
	assert_int_equal(w.calls, 1);
	assert_int_equal(dns_sync_ptr(f->ds, (struct sockaddr *)&un, names, &n, &err),
	    DNS_TEMPFAIL);
	assert_int_equal(n, 0);
	assert_non_null(err);
}

static void test_timeout(void **state)
{
	struct fixture *f = *state;
	struct dns_opts slow = { .timeout_ms = 2000, .tries = 3, .deadline_ms = 300 };
	struct dns_sync *ds;
	struct in_addr a[DNS_ADDR_MAX];
	struct want w;
	const char *err = NULL;
	char *e = NULL;
	uint64_t t0 = util_now_ms();
	int n;

	/* no answer: the resolver's timeout (200 ms, one try), both ways */
	assert_int_equal(ask_a4(f, "drop.test", &w), DNS_TEMPFAIL);
	assert_true(util_now_ms() - t0 < 2000);
	t0 = util_now_ms();
	assert_int_equal(ask_txt(f, "drop.test", &w), DNS_TEMPFAIL);
	assert_true(util_now_ms() - t0 < 2000);

	/* the blocking call's deadline comes before the resolver gives up */
	ds = dns_sync_new(f->servers, &slow, &e);
	assert_null(e);
	assert_non_null(ds);
	t0 = util_now_ms();
	assert_int_equal(dns_sync_a4(ds, "drop.test", a, &n, &err), DNS_TEMPFAIL);
	assert_true(util_now_ms() - t0 >= 250 && util_now_ms() - t0 < 1500);
	assert_non_null(err);
	assert_non_null(strstr(err, "deadline"));
	/* and the resolver is still usable */
	assert_int_equal(dns_sync_a4(ds, "a.test", a, &n, &err), DNS_OK);
	assert_int_equal(n, 2);
	assert_null(err);
	dns_sync_free(&ds);
	assert_null(ds);
}

static void test_raw(void **state)
{
	struct fixture *f = *state;
	unsigned char small[16];
	struct want w;
	const char *err = NULL;
	int len = -1;

	assert_int_equal(ask_raw(f, "a.test", ns_t_a, &w), DNS_OK);
	assert_true(w.n > 12);
	/* the bytes the responder sent (its last answer: the asynchronous one) */
	pthread_mutex_lock(&f->r.mu);
	assert_int_equal(f->r.answer_len, (size_t)w.n);
	assert_memory_equal(f->r.answer + 2, w.raw + 2, (size_t)w.n - 2);
	pthread_mutex_unlock(&f->r.mu);
	assert_int_equal(w.raw[7], 2);          /* two answers */

	assert_int_equal(dns_sync_raw(f->ds, "a.test", ns_t_a, small, sizeof(small), &len, &err),
	    DNS_TEMPFAIL);
	assert_non_null(err);

	/* NXDOMAIN comes with its answer */
	assert_int_equal(ask_raw(f, "nx.test", ns_t_txt, &w), DNS_NOTFOUND);
	assert_true(w.n >= 12);
	assert_int_equal(w.raw[3] & 0x0f, ns_r_nxdomain);
	assert_int_equal(ask_raw(f, "drop.test", ns_t_txt, &w), DNS_TEMPFAIL);
	assert_int_equal(w.n, 0);
}

/* dns_addr and dns_mx, which go through the same answer check. */
static void mx_cb(void *arg, enum dns_status st, const struct dns_mx *mx, int n,
    const char *error)
{
	struct want *w = arg;

	got(w, st, n, error);
	assert_int_equal(mx[0].pref, 10);
	assert_string_equal(mx[0].host, "mx.a.test");
}

static void addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error)
{
	struct want *w = arg;

	got(w, st, n, error);
	for (int i = 0; i < n; i++) {
		assert_int_equal(a[i].ss.ss_family, AF_INET);
		assert_int_equal(ntohs(((const struct sockaddr_in *)&a[i].ss)->sin_port), 25);
	}
}

static void test_mx_addr(void **state)
{
	struct fixture *f = *state;
	struct want w;

	memset(&w, 0, sizeof(w));
	w.n = 1;
	dns_mx(f->d, "mx.test", mx_cb, &w);
	run(f, &w);
	memset(&w, 0, sizeof(w));
	w.n = 2;
	dns_addr(f->d, "a.test", 25, addr_cb, &w);
	run(f, &w);
	memset(&w, 0, sizeof(w));
	w.st = DNS_TEMPFAIL;
	dns_addr(f->d, "toolong.test", 25, addr_cb, &w);
	run(f, &w);
}

static void cancel_cb(void *arg, enum dns_status st, const struct dns_txt_set *txt,
    const char *error)
{
	struct want *w = arg;

	got(w, st, txt->n, error);
}

static void test_cancel(void **state)
{
	struct fixture *f = *state;
	struct want w;

	memset(&w, 0, sizeof(w));
	w.st = DNS_CANCELLED;
	dns_txt(f->d, "drop.test", cancel_cb, &w);
	assert_int_equal(w.calls, 0);
	dns_free(&f->d);
	assert_null(f->d);
	assert_int_equal(w.calls, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_a4, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cname, setup, teardown),
		cmocka_unit_test_setup_teardown(test_txt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_txt_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ptr, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ptr_family, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_raw, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mx_addr, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
