/* relay: the outbound SMTP client of qmgr's delivery agent. Event-driven
 * (libevent), one transaction per message and next hop for all of its
 * recipients there, EHLO, opportunistic or required STARTTLS, PIPELINING,
 * SIZE, 8BITMIME, connection reuse and a per-destination concurrency limit.
 * Routes: "HOST[:PORT]" (IPv4 or name, A/AAAA), "[IPv6][:PORT]", and
 * "mx:DOMAIN" (MX lookup, A/AAAA fallback, [delivery] remote_port). */
#ifndef KALE_RELAY_H
#define KALE_RELAY_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct kale_config;
struct relay;

#define RELAY_DEST_CONCURRENCY 20   /* connections per destination (Postfix: 20) */
#define RELAY_MAX_CONNS 200         /* connections in all */
#define RELAY_JOB_RCPT_MAX 100      /* recipients per transaction */
#define RELAY_IDLE_SECS 5           /* an unused connection is kept this long */

struct relay_rcpt {
	const char *addr;       /* not owned */
	int idx;                /* recipient index in the queue file */
	int notify;             /* DSN NOTIFY bits (queue_file.h), 0 none */
	const char *orcpt;      /* ORCPT, decoded ("rfc822;addr"), or NULL; not owned */
	/* result, set before the job's done callback: */
	int code;               /* SMTP reply code: 2xx delivered, 4xx defer, 5xx bounce */
	char status[16];        /* enhanced status "5.1.1" */
	char *text;             /* malloc'd one-line diagnostic "550 5.1.1 ..." */
};

struct relay_job {
	/* set by the caller: */
	char qid[32];
	int fd;                 /* the queue file; body is [0, body_len); not closed */
	uint64_t body_len;
	const char *sender;     /* "" = <> */
	int body8bit, smtputf8;
	int ret;                /* DSN RET: 0 none, 1 FULL, 2 HDRS */
	const char *envid;      /* DSN ENVID, decoded, or NULL; not owned */
	char route[320];        /* see above */
	int tls_require;
	struct relay_rcpt *rcpt;
	int n_rcpt;
	void (*done)(struct relay_job *job, void *arg);
	void *arg;
	/* result: the next hop that answered last, "host[addr]:port" */
	char relay_host[320];
	/* private to relay.c */
	struct relay_job *next;
	int requeued;
};

/* NULL with a malloc'd *error_r on failure. */
struct relay *relay_new(struct event_base *base, const struct kale_config *cfg, char **error_r);
/* Closes every connection; queued and running jobs are dropped without
 * their callbacks (the caller owns and frees them). Accepts NULL. */
void relay_free(struct relay **r);
/* Starts or queues the job; done(job, arg) is called exactly once, later
 * (never from inside relay_submit), with every rcpt[i].code set. */
void relay_submit(struct relay *r, struct relay_job *job);
/* Number of jobs not finished yet. */
int relay_pending(const struct relay *r);

/* ---- the wire form of a stored body (pure, unit-tested) ---- */
struct relay_stuff {
	int at_bol;             /* at the beginning of a line; start with 1 */
};
/* Converts in[0..n) to wire form: LF -> CRLF, a '.' at the start of a line
 * doubled, CR dropped (stored bodies have none; defence in depth). out
 * must hold 2 * n bytes. Returns the bytes written. */
size_t relay_stuff(struct relay_stuff *st, const char *in, size_t n, char *out);
/* The end of data: CRLF first when the body did not end with a line end,
 * then ".\r\n". out must hold 5 bytes. Returns the bytes written. */
size_t relay_stuff_end(struct relay_stuff *st, char *out);

/* Parses a route: "mx:DOMAIN" -> *mx 1 and host = DOMAIN; "[v6]:port",
 * "[v6]", "host:port", "host" -> host (without brackets) and port
 * (default_port when absent). 0 ok, -1 bad. */
int relay_route_parse(const char *route, int default_port, char *host, size_t cap,
    int *port, int *mx);

#endif
