/* server: the accept / limits / TLS / close / drain skeleton of kale's
 * network servers (see server.h). Runs inside the unprivileged server
 * process that uses it (each smtpd worker, pop3d, imapd); knows no protocol. */
#include "lib/server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>

#include "lib/conntable.h"
#include "lib/log.h"
#include "lib/util.h"

#define SERVER_BACKOFF_S 1         /* a listener whose accept() failed rests this long */

struct server_lis {
	struct server *srv;
	struct evconnlistener *l;
	struct event *resume;
	int implicit_tls;
	char *name;
	void *data;
};

TAILQ_HEAD(server_conns, server_conn);

struct server {
	struct server_params p;
	struct conntable *own_conns;   /* made here when the master gave none */
	struct server_lis **lis;
	int n_lis;
	struct server_conns conns;
	int n_conns;
	int stopping;                  /* 0, 1 (SIGUSR2) or 2 (SIGTERM) */
	struct event *ev_term, *ev_int, *ev_usr2, *ev_stop;
};

static void server_event_name(const struct server *srv, const char *what, char *buf, size_t cap)
{
	if (util_fmt(buf, cap, "%s.%s", srv->p.name, what) < 0)
		(void)util_fmt(buf, cap, "server.%s", what);
}

/* ---- connections ---- */

static void server_read_cb(struct bufferevent *bev, void *arg);
static void server_write_cb(struct bufferevent *bev, void *arg);
static void server_event_cb(struct bufferevent *bev, short what, void *arg);

static void server_conn_setcb(struct server_conn *c)
{
	bufferevent_setcb(c->bev, server_read_cb, server_write_cb, server_event_cb, c);
}

/* A TLS bufferevent (accepting) that owns fd; NULL (fd closed) on failure. */
static struct bufferevent *server_tls_bev(struct server *srv, int fd)
{
	struct bufferevent *bev;
	SSL *ssl = srv->p.tls != NULL ? SSL_new(srv->p.tls) : NULL;

	if (ssl == NULL) {
		close(fd);
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(srv->p.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		SSL_free(ssl);
		close(fd);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

void server_conn_free(struct server_conn *c)
{
	struct server *srv = c->srv;

	if (c->hs_ev != NULL)
		event_free(c->hs_ev);
	c->hs_ev = NULL;

	if (c->sess != NULL && srv->p.ops->on_free != NULL)
		srv->p.ops->on_free(c->sess);
	c->sess = NULL;
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	if (c->free_ev != NULL)
		event_free(c->free_ev);
	conntable_del(srv->p.conns, srv->p.row, c->slot);
	TAILQ_REMOVE(&srv->conns, c, link);
	srv->n_conns--;
	explicit_bzero(c, sizeof(*c));
	free(c);
	if (srv->stopping && srv->n_conns == 0)
		event_base_loopexit(srv->p.base, NULL);
}

static void server_free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	server_conn_free(arg);
}

static int server_out_empty(const struct server_conn *c)
{
	return c->bev == NULL || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

void server_conn_close(struct server_conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	if (c->bev != NULL) {
		bufferevent_disable(c->bev, EV_READ);
		bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
		if (c->srv->p.close_timeout_s > 0) {
			struct timeval wt = { c->srv->p.close_timeout_s, 0 };
			bufferevent_set_timeouts(c->bev, NULL, &wt);
		}
		bufferevent_enable(c->bev, EV_WRITE);
	}
	if (server_out_empty(c))
		event_active(c->free_ev, EV_TIMEOUT, 1);
}

/* A TLS handshake gets SERVER_HANDSHAKE_S seconds of its own, whatever the
 * bufferevent's timeouts do meanwhile (libevent's are not reliable while
 * an OpenSSL bufferevent is still accepting). */
#define SERVER_HANDSHAKE_S 10

static void server_hs_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->handshaking)
		server_conn_free(c);
}

static void server_hs_arm(struct server_conn *c)
{
	struct timeval tv = { SERVER_HANDSHAKE_S, 0 };

	c->handshaking = 1;
	if (c->hs_ev == NULL)
		c->hs_ev = evtimer_new(c->srv->p.base, server_hs_cb, c);
	if (c->hs_ev != NULL)
		evtimer_add(c->hs_ev, &tv);
}

int server_conn_starttls(struct server_conn *c)
{
	int fd = fcntl(bufferevent_getfd(c->bev), F_DUPFD_CLOEXEC, 0);

	/* the plaintext read behind the command goes with the old bufferevent */
	bufferevent_free(c->bev);
	c->bev = NULL;
	if (fd < 0)
		return -1;
	c->bev = server_tls_bev(c->srv, fd);
	if (c->bev == NULL)
		return -1;
	c->tls = 1;
	server_hs_arm(c);
	server_conn_setcb(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return 0;
}

static void server_read_cb(struct bufferevent *bev, void *arg)
{
	struct server_conn *c = arg;

	(void)bev;
	if (c->closing)
		return;
	c->srv->p.ops->on_read(c->sess);
}

static void server_write_cb(struct bufferevent *bev, void *arg)
{
	struct server_conn *c = arg;

	(void)bev;
	if (c->closing) {
		if (server_out_empty(c))
			server_conn_free(c);
		return;
	}
	if (c->srv->p.ops->on_write != NULL)
		c->srv->p.ops->on_write(c->sess);
}

static void server_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct server_conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		c->handshaking = 0;        /* TLS handshake done */
		if (c->hs_ev != NULL)
			evtimer_del(c->hs_ev);
		return;
	}
	if (c->handshaking && (what & (BEV_EVENT_TIMEOUT | BEV_EVENT_EOF | BEV_EVENT_ERROR))) {
		/* A handshake that stalls or fails: nothing can be said to the
		 * peer (a reply would wait for the handshake forever, and the
		 * handshake's timeout carries neither READING nor WRITING). */
		server_conn_free(c);
		return;
	}
	if (c->closing) {
		/* EOF, error or the write timeout while flushing: done (a read
		 * timeout that fired as the session closed is not that) */
		if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) || (what & BEV_EVENT_WRITING))
			server_conn_free(c);
		return;
	}
	c->srv->p.ops->on_event(c->sess, what);
}

/* ---- accept ---- */

static void server_peer(struct server_conn *c, const struct sockaddr *sa, int salen)
{
	memset(&c->sa, 0, sizeof(c->sa));
	if (salen > 0)
		memcpy(&c->sa, sa, (size_t)salen < sizeof(c->sa) ? (size_t)salen : sizeof(c->sa));
	memset(c->ip16, 0, sizeof(c->ip16));
	c->ip[0] = '\0';
	if (c->sa.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)&c->sa;
		c->ip16[10] = c->ip16[11] = 0xff;
		memcpy(c->ip16 + 12, &in->sin_addr, 4);
		(void)inet_ntop(AF_INET, &in->sin_addr, c->ip, sizeof(c->ip));
	} else if (c->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)&c->sa;
		memcpy(c->ip16, &in6->sin6_addr, 16);
		(void)inet_ntop(AF_INET6, &in6->sin6_addr, c->ip, sizeof(c->ip));
	}
	if (c->ip[0] == '\0')
		(void)util_fmt(c->ip, sizeof(c->ip), "unknown");
}

static void server_refuse(struct server *srv, struct server_conn *c, int fd, enum server_refusal why)
{
	const char *text = srv->p.ops->on_refuse != NULL ?
	    srv->p.ops->on_refuse(srv->p.owner, c, why) : NULL;

	if (text != NULL && (!c->tls || srv->p.ops->refuse_on_tls))
		(void)send(fd, text, strlen(text), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(fd);
}

static void server_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct server_lis *sl = arg;
	struct server *srv = sl->srv;
	struct server_conn *c = xcalloc(1, sizeof(*c));
	enum conntable_result cr;

	(void)l;
	c->srv = srv;
	c->slot = -1;
	c->ldata = sl->data;
	c->lname = sl->name;
	c->tls = sl->implicit_tls;
	server_peer(c, sa, salen);
	if (srv->stopping) {
		server_refuse(srv, c, fd, SERVER_REFUSE_STOPPING);
		goto drop;
	}
	if (c->tls && srv->p.tls == NULL) {
		server_refuse(srv, c, fd, SERVER_REFUSE_NO_TLS);
		goto drop;
	}
	cr = conntable_add(srv->p.conns, srv->p.row, c->ip16, srv->p.max_conns_per_ip,
	    srv->p.max_conns, &c->slot);
	if (cr != CONNTABLE_OK) {
		server_refuse(srv, c, fd, cr == CONNTABLE_PER_IP ? SERVER_REFUSE_PER_IP : SERVER_REFUSE_TOTAL);
		goto drop;
	}
	c->free_ev = evtimer_new(srv->p.base, server_free_cb, c);
	if (c->tls) {
		c->bev = server_tls_bev(srv, fd);
		server_hs_arm(c);
	} else if ((c->bev = bufferevent_socket_new(srv->p.base, fd,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)) == NULL)
		close(fd);
	if (c->bev == NULL || c->free_ev == NULL) {
		char ev[64];
		server_event_name(srv, "accept_failed", ev, sizeof(ev));
		log_event(LOG_LVL_ERROR, ev, "client", c->ip, NULL);
		if (c->bev != NULL)
			bufferevent_free(c->bev);
		if (c->free_ev != NULL)
			event_free(c->free_ev);
		conntable_del(srv->p.conns, srv->p.row, c->slot);
		goto drop;
	}
	server_conn_setcb(c);
	TAILQ_INSERT_TAIL(&srv->conns, c, link);
	srv->n_conns++;
	c->sess = srv->p.ops->on_accept(srv->p.owner, c);
	if (c->sess == NULL)
		server_conn_free(c);
	return;
drop:
	free(c);
}

static void server_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_lis *sl = arg;

	(void)fd;
	(void)what;
	if (sl->l != NULL && !sl->srv->stopping)
		evconnlistener_enable(sl->l);
}

/* accept() failed for a reason libevent does not retry by itself (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM): pause this listener instead of spinning. */
static void server_accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct server_lis *sl = arg;
	struct timeval tv = { SERVER_BACKOFF_S, 0 };
	int e = EVUTIL_SOCKET_ERROR();
	char ev[64];

	server_event_name(sl->srv, "accept_error", ev, sizeof(ev));
	log_event(LOG_LVL_WARN, ev, "listener", sl->name,
	    "error", evutil_socket_error_to_string(e), NULL);
	evconnlistener_disable(l);
	if (sl->resume == NULL || evtimer_add(sl->resume, &tv) < 0)
		evconnlistener_enable(l);
}

int server_listen(struct server *srv, const struct server_listen *l, const char **error_r)
{
	struct server_lis *sl = xcalloc(1, sizeof(*sl));

	sl->srv = srv;
	sl->implicit_tls = l->implicit_tls;
	sl->name = xstrdup(l->name != NULL ? l->name : "");
	sl->data = l->data;
	sl->resume = evtimer_new(srv->p.base, server_resume_cb, sl);
	/* backlog 0: the master already called listen() */
	sl->l = evconnlistener_new(srv->p.base, server_accept_cb, sl,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, l->fd);
	if (sl->l == NULL || sl->resume == NULL) {
		if (sl->l != NULL)
			evconnlistener_free(sl->l);
		if (sl->resume != NULL)
			event_free(sl->resume);
		xfree(&sl->name);
		free(sl);
		*error_r = "cannot listen";
		return -1;
	}
	evconnlistener_set_error_cb(sl->l, server_accept_error_cb);
	srv->lis = xrealloc(srv->lis, (size_t)(srv->n_lis + 1) * sizeof(*srv->lis));
	srv->lis[srv->n_lis++] = sl;
	return 0;
}

static void server_unlisten(struct server *srv)
{
	for (int i = 0; i < srv->n_lis; i++) {
		struct server_lis *sl = srv->lis[i];
		if (sl->l != NULL)
			evconnlistener_free(sl->l);
		sl->l = NULL;
		if (sl->resume != NULL)
			event_del(sl->resume);
	}
}

/* ---- drain ---- */

static void server_stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	event_base_loopexit(srv->p.base, NULL);
}

void server_stop(struct server *srv, int hard)
{
	struct server_conn *c, *next;
	struct timeval tv = { hard ? srv->p.term_grace_s : srv->p.usr2_grace_s, 0 };

	if (srv->stopping >= (hard ? 2 : 1))
		return;
	srv->stopping = hard ? 2 : 1;
	server_unlisten(srv);
	if (srv->p.ops->on_drain != NULL)
		srv->p.ops->on_drain(srv->p.owner, hard);
	if (hard && srv->p.ops->on_stop != NULL) {
		for (c = TAILQ_FIRST(&srv->conns); c != NULL; c = next) {
			next = TAILQ_NEXT(c, link);
			if (!c->closing && c->bev != NULL)
				srv->p.ops->on_stop(c->sess);
		}
	}
	if (srv->n_conns == 0) {
		event_base_loopexit(srv->p.base, NULL);
		return;
	}
	if (srv->ev_stop == NULL)
		srv->ev_stop = evtimer_new(srv->p.base, server_stop_timer_cb, srv);
	if (srv->ev_stop == NULL || evtimer_add(srv->ev_stop, &tv) < 0)
		event_base_loopexit(srv->p.base, NULL);
}

static void server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	server_stop(arg, sig != SIGUSR2);
}

/* ---- the server ---- */

struct server *server_new(const struct server_params *p, const char **error_r)
{
	struct server *srv = xcalloc(1, sizeof(*srv));

	srv->p = *p;
	TAILQ_INIT(&srv->conns);
	if (srv->p.name == NULL)
		srv->p.name = "server";
	if (srv->p.conns == NULL) {
		srv->own_conns = conntable_create(1, p->max_conns > 0 ? p->max_conns : 1);
		if (srv->own_conns == NULL) {
			*error_r = "cannot map a connection table";
			goto fail;
		}
		srv->p.conns = srv->own_conns;
		srv->p.row = 0;
	}
	srv->ev_term = evsignal_new(p->base, SIGTERM, server_signal_cb, srv);
	if (srv->ev_term == NULL || evsignal_add(srv->ev_term, NULL) < 0)
		goto fail_ev;
	if (p->sigint) {
		srv->ev_int = evsignal_new(p->base, SIGINT, server_signal_cb, srv);
		if (srv->ev_int == NULL || evsignal_add(srv->ev_int, NULL) < 0)
			goto fail_ev;
	}
	if (p->usr2_grace_s > 0) {
		srv->ev_usr2 = evsignal_new(p->base, SIGUSR2, server_signal_cb, srv);
		if (srv->ev_usr2 == NULL || evsignal_add(srv->ev_usr2, NULL) < 0)
			goto fail_ev;
	}
	return srv;
fail_ev:
	*error_r = "cannot add the signal events";
fail:
	server_free(&srv);
	return NULL;
}

void server_free(struct server **srvp)
{
	struct server *srv = *srvp;

	if (srv == NULL)
		return;
	server_unlisten(srv);
	while (!TAILQ_EMPTY(&srv->conns))
		server_conn_free(TAILQ_FIRST(&srv->conns));
	for (int i = 0; i < srv->n_lis; i++) {
		if (srv->lis[i]->resume != NULL)
			event_free(srv->lis[i]->resume);
		xfree(&srv->lis[i]->name);
		free(srv->lis[i]);
	}
	xfree(&srv->lis);
	if (srv->ev_term != NULL)
		event_free(srv->ev_term);
	if (srv->ev_int != NULL)
		event_free(srv->ev_int);
	if (srv->ev_usr2 != NULL)
		event_free(srv->ev_usr2);
	if (srv->ev_stop != NULL)
		event_free(srv->ev_stop);
	conntable_free(&srv->own_conns);
	free(srv);
	*srvp = NULL;
}

int server_stopping(const struct server *srv)
{
	return srv->stopping;
}

int server_conn_count(const struct server *srv)
{
	return srv->n_conns;
}
