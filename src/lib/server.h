/* server: the skeleton kale's network servers (smtpd, pop3d, imapd) share. It
 * listens on the fds it is given, accepts (pausing a listener for a second
 * on EMFILE/ENFILE and the like), counts every connection against the total
 * and per-IP limits in one conntable (lib/conntable.h), wraps TLS (implicit,
 * and STARTTLS/STLS with the plaintext already read thrown away), keeps the
 * list of connections, closes after the output is flushed, and drains on
 * SIGTERM (and SIGUSR2 when asked). The protocol lives behind struct
 * server_ops. No mail knowledge: it runs in whichever process uses it. */
#ifndef KALE_SERVER_H
#define KALE_SERVER_H

#include <stdint.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

struct server;
struct conntable;

enum server_refusal {
	SERVER_REFUSE_STOPPING,    /* a drain has begun */
	SERVER_REFUSE_TOTAL,       /* max connections (or no free slot) */
	SERVER_REFUSE_PER_IP,      /* max connections from this address */
	SERVER_REFUSE_NO_TLS       /* an implicit-TLS listener, but no TLS context */
};

/* One connection. The protocol reads the public fields; it never frees the
 * struct itself (server_conn_close, server_conn_free). */
struct server_conn {
	struct server *srv;
	struct bufferevent *bev;   /* replaced by server_conn_starttls */
	void *sess;                /* what ops->on_accept returned */
	void *ldata;               /* the listener's server_listen.data */
	const char *lname;         /* the listener's name */
	char ip[INET6_ADDRSTRLEN]; /* the client's address as text, or "unknown" */
	uint8_t ip16[16];          /* the same, IPv4 mapped into IPv6; 0 if none */
	struct sockaddr_storage sa;
	int tls;                   /* TLS is up (implicit, or after STARTTLS) */
	int closing;               /* server_conn_close was called */
	int handshaking;           /* a TLS handshake has not completed yet */
	struct event *hs_ev;       /* the handshake's own deadline */
	/* the skeleton's own */
	int slot;
	struct event *free_ev;
	TAILQ_ENTRY(server_conn) link;
};

struct server_ops {
	/* A connection was accepted and counted; c->bev exists (TLS for an
	 * implicit-TLS listener) but is not enabled yet. Returns the protocol
	 * session (stored in c->sess), which typically sets its timeouts and
	 * watermarks, enables the bufferevent and queues the greeting; NULL
	 * drops the connection. */
	void *(*on_accept)(void *owner, struct server_conn *c);
	/* Refused before a session exists: logs it, and returns the line to
	 * write (sent only on a plaintext listener unless ops->refuse_on_tls)
	 * or NULL. c has ip, sa, ldata, lname and tls; no bev. */
	const char *(*on_refuse)(void *owner, const struct server_conn *c, enum server_refusal why);
	/* The bufferevent callbacks, never called once the connection closes. */
	void (*on_read)(void *sess);
	void (*on_write)(void *sess);
	/* EOF, error or timeout (TLS "connected" events are swallowed): the
	 * protocol closes (server_conn_close) or frees (server_conn_free). */
	void (*on_event)(void *sess, short what);
	/* The connection goes away: free the protocol session (not c->bev). */
	void (*on_free)(void *sess);
	/* Drain: called once per SIGTERM (hard = 1) or SIGUSR2 (hard = 0),
	 * after the listeners are closed and before on_stop. Optional. */
	void (*on_drain)(void *owner, int hard);
	/* SIGTERM: say goodbye to one open session and close it. Optional. */
	void (*on_stop)(void *sess);
	int refuse_on_tls;         /* write on_refuse's line on TLS listeners too */
};

struct server_params {
	const char *name;          /* log prefix: "pop3" gives "pop3.accept_error" */
	struct event_base *base;
	SSL_CTX *tls;              /* NULL: no TLS */
	struct conntable *conns;   /* the master's; NULL: a private one is made */
	int row;                   /* this process's row in conns */
	int max_conns, max_conns_per_ip;
	int term_grace_s;          /* after SIGTERM, sessions get this long */
	int usr2_grace_s;          /* SIGUSR2 drains with this grace; 0: not handled */
	int sigint;                /* SIGINT drains like SIGTERM */
	int close_timeout_s;       /* write timeout of a closing session; 0: unchanged */
	const struct server_ops *ops;
	void *owner;               /* handed to on_accept, on_refuse, on_drain */
};

struct server_listen {
	int fd;                    /* bound and listening */
	int implicit_tls;
	const char *name;
	void *data;                /* the caller's: becomes server_conn.ldata */
};

/* NULL with *error_r (static text) on failure. */
struct server *server_new(const struct server_params *p, const char **error_r);
/* Starts accepting on l->fd (closed by server_free or a drain). */
int server_listen(struct server *srv, const struct server_listen *l, const char **error_r);
/* Frees every connection (on_free for each), the listeners and the signal
 * events; NULL-safe, nulls the pointer. */
void server_free(struct server **srvp);

/* 0: running; 1: draining after SIGUSR2; 2: stopping after SIGTERM. */
int server_stopping(const struct server *srv);
/* What a SIGTERM (hard) or SIGUSR2 does, for callers without the signal. */
void server_stop(struct server *srv, int hard);
int server_conn_count(const struct server *srv);

/* Stops reading; the connection is freed once its output is written. Never
 * frees synchronously. */
void server_conn_close(struct server_conn *c);
/* Frees now: on_free, the bufferevent, the connection's slot. */
void server_conn_free(struct server_conn *c);
/* Starts TLS on the connection's socket; call it once the reply to
 * STARTTLS/STLS is flushed. Whatever the client sent behind that command in
 * plaintext is discarded with the old bufferevent (CVE-2011-0411): later
 * bytes must be a TLS handshake. The new c->bev has the skeleton's
 * callbacks, enabled, and no timeouts or watermarks: the protocol sets its
 * own. -1 if it failed (c->bev is NULL then; free the connection). */
int server_conn_starttls(struct server_conn *c);

#endif
