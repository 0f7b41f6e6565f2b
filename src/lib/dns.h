/* dns: asynchronous DNS lookups (MX, A/AAAA, A only, TXT, PTR, raw) with
 * c-ares inside a libevent loop, plus a blocking wrapper for lookup-pool
 * threads. No mail knowledge beyond the MX record type. Used by qmgr's relay
 * client and the filtering checks. Answers distinguish found / not found /
 * no data / temporary failure / cancelled; every answer is bounded. */
#ifndef KALE_DNS_H
#define KALE_DNS_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

struct event_base;
struct dns;
struct dns_sync;

enum dns_status {
	DNS_OK = 0,
	DNS_NOTFOUND,       /* NXDOMAIN: the name does not exist */
	DNS_NODATA,         /* the name exists, no record of that type */
	DNS_TEMPFAIL,       /* timeout, SERVFAIL, refused, malformed answer, CNAME
	                     * chain longer than DNS_CNAME_MAX, deadline... */
	DNS_CANCELLED       /* the resolver is being destroyed: touch nothing */
};

#define DNS_MX_MAX 16
#define DNS_ADDR_MAX 16
#define DNS_PTR_MAX 8
#define DNS_TXT_MAX 32          /* TXT records kept per answer */
#define DNS_TXT_BYTES 16384     /* their joined bytes, in total */
#define DNS_CNAME_MAX 8         /* CNAME hops followed inside one answer */
#define DNS_NAME_MAX 256        /* a domain name as text, with its NUL */
#define DNS_RAW_MAX 65535       /* an answer over TCP cannot be larger */

struct dns_mx {
	int pref;
	char host[DNS_NAME_MAX];     /* "" for a null MX (RFC 7505) */
};

struct dns_addr {
	struct sockaddr_storage ss;   /* port set as asked */
	socklen_t len;
};

struct dns_name {
	char name[DNS_NAME_MAX];     /* lowercase, no trailing dot */
};

/* One TXT record: its character-strings joined without separator (RFC 7208
 * 3.3). s is NUL-terminated but may hold NUL bytes itself: use len. */
struct dns_txt {
	const char *s;
	size_t len;
};

/* The TXT records of a name. A record is kept whole or not at all: past
 * DNS_TXT_MAX records or DNS_TXT_BYTES bytes the rest are left out and
 * truncated is set (the status stays DNS_OK); a caller that must see every
 * record (SPF, DMARC) treats truncated as a temporary error. */
struct dns_txt_set {
	int n;
	int truncated;
	struct dns_txt rec[DNS_TXT_MAX];
	char buf[DNS_TXT_BYTES + DNS_TXT_MAX];
};

/* Resolver tuning; a zero field takes its default. c-ares doubles the
 * timeout after each round over the servers, so one server and the defaults
 * give up after 2+4+8 s. */
struct dns_opts {
	int timeout_ms;     /* first try, default 2000 */
	int tries;          /* default 3 */
	int deadline_ms;    /* dns_sync_*() only: bound on one call, default 12000 */
};

/* error is a static string (never to be freed), NULL when st is DNS_OK. */
typedef void dns_mx_cb(void *arg, enum dns_status st, const struct dns_mx *mx, int n,
    const char *error);
typedef void dns_addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error);
typedef void dns_a4_cb(void *arg, enum dns_status st, const struct in_addr *a, int n,
    const char *error);
typedef void dns_txt_cb(void *arg, enum dns_status st, const struct dns_txt_set *txt,
    const char *error);
typedef void dns_ptr_cb(void *arg, enum dns_status st, const struct dns_name *names, int n,
    const char *error);
/* The answer as received (abuf may be NULL, alen 0, when there was none, e.g.
 * on a timeout); NXDOMAIN and no-data answers come with their buffer too. */
typedef void dns_raw_cb(void *arg, enum dns_status st, const unsigned char *abuf, int alen,
    const char *error);

/* servers: c-ares's "host:port,[v6]:port" list (from [dns] servers), or
 * NULL / "" for /etc/resolv.conf. Returns NULL with a malloc'd *error_r. */
struct dns *dns_new(struct event_base *base, const char *servers, char **error_r);
/* The same with tuning (opts may be NULL). */
struct dns *dns_new_opts(struct event_base *base, const char *servers,
    const struct dns_opts *opts, char **error_r);
/* Cancels pending queries (their callbacks run with DNS_CANCELLED) and frees. */
void dns_free(struct dns **d);

/* In every lookup below the callback may run before the function returns,
 * and CNAMEs inside an answer are followed (at most DNS_CNAME_MAX hops). */

/* MX records of domain, sorted by preference (stable). */
void dns_mx(struct dns *d, const char *domain, dns_mx_cb *cb, void *arg);
/* Addresses of host (AAAA first, then A; /etc/hosts is consulted first),
 * each with port set. An IP literal answers at once. */
void dns_addr(struct dns *d, const char *host, int port, dns_addr_cb *cb, void *arg);
/* The A records of name, from DNS only: no /etc/hosts, no IP literal
 * shortcut (DNSBL queries such as 2.0.0.127.zen.example). */
void dns_a4(struct dns *d, const char *name, dns_a4_cb *cb, void *arg);
/* The TXT records of name. A record whose strings overrun its data makes the
 * whole answer DNS_TEMPFAIL. */
void dns_txt(struct dns *d, const char *name, dns_txt_cb *cb, void *arg);
/* PTR names of an AF_INET or AF_INET6 address (a v4-mapped v6 address is
 * asked as IPv4), at most DNS_PTR_MAX, lowercased, without the trailing dot;
 * names longer than DNS_NAME_MAX - 1 are left out. */
void dns_ptr(struct dns *d, const struct sockaddr *sa, dns_ptr_cb *cb, void *arg);
/* The raw answer to (name, class IN, type), for parsers of their own
 * (libspf2, libopendkim); at most DNS_RAW_MAX bytes. */
void dns_raw(struct dns *d, const char *name, int type, dns_raw_cb *cb, void *arg);

/* Sorts mx[0..n) by preference, keeping the order of equal ones. */
void dns_mx_sort(struct dns_mx *mx, int n);

/* Blocking lookups for a thread without an event loop: a private event base
 * and resolver, one per thread (not shared). Each call runs the base until
 * the answer is in or opts->deadline_ms passes (then DNS_TEMPFAIL). *error_r
 * is set to a static string when the status is not DNS_OK. */
struct dns_sync *dns_sync_new(const char *servers, const struct dns_opts *opts,
    char **error_r);
void dns_sync_free(struct dns_sync **ds);
enum dns_status dns_sync_a4(struct dns_sync *ds, const char *name,
    struct in_addr a[DNS_ADDR_MAX], int *n_r, const char **error_r);
enum dns_status dns_sync_txt(struct dns_sync *ds, const char *name,
    struct dns_txt_set *txt, const char **error_r);
enum dns_status dns_sync_ptr(struct dns_sync *ds, const struct sockaddr *sa,
    struct dns_name names[DNS_PTR_MAX], int *n_r, const char **error_r);
/* Copies the answer into buf; one larger than cap is DNS_TEMPFAIL. */
enum dns_status dns_sync_raw(struct dns_sync *ds, const char *name, int type,
    unsigned char *buf, size_t cap, int *len_r, const char **error_r);

#endif
