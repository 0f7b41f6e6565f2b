/* dns: asynchronous DNS lookups (MX, A/AAAA) with c-ares inside a libevent
 * loop. No mail knowledge beyond the MX record type. Used by qmgr's relay
 * client. Answers distinguish found / not found / temporary failure. */
#ifndef KALE_DNS_H
#define KALE_DNS_H

#include <sys/socket.h>

struct event_base;
struct dns;

enum dns_status {
	DNS_OK = 0,
	DNS_NOTFOUND,       /* NXDOMAIN: the name does not exist */
	DNS_NODATA,         /* the name exists, no record of that type */
	DNS_TEMPFAIL,       /* timeout, SERVFAIL, refused, bad answer... */
	DNS_CANCELLED       /* the resolver is being destroyed: touch nothing */
};

#define DNS_MX_MAX 16
#define DNS_ADDR_MAX 16

struct dns_mx {
	int pref;
	char host[256];     /* "" for a null MX (RFC 7505) */
};

struct dns_addr {
	struct sockaddr_storage ss;   /* port set as asked */
	socklen_t len;
};

typedef void dns_mx_cb(void *arg, enum dns_status st, const struct dns_mx *mx, int n,
    const char *error);
typedef void dns_addr_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error);

/* servers: c-ares's "host:port,[v6]:port" list (from [dns] servers), or
 * NULL / "" for /etc/resolv.conf. Returns NULL with a malloc'd *error_r. */
struct dns *dns_new(struct event_base *base, const char *servers, char **error_r);
/* Cancels pending queries (their callbacks run with DNS_CANCELLED) and frees. */
void dns_free(struct dns **d);

/* MX records of domain, sorted by preference (stable). The callback may run
 * before dns_mx returns. */
void dns_mx(struct dns *d, const char *domain, dns_mx_cb *cb, void *arg);
/* Addresses of host (AAAA first, then A; /etc/hosts is consulted first),
 * each with port set. An IP literal answers at once. */
void dns_addr(struct dns *d, const char *host, int port, dns_addr_cb *cb, void *arg);

/* Sorts mx[0..n) by preference, keeping the order of equal ones. */
void dns_mx_sort(struct dns_mx *mx, int n);

#endif
