/* smtpd: the SMTP receive engine. Runs in each smtpd worker process (one
 * per core, unprivileged, cwd = data_dir). This file is the worker: its
 * libevent loop, the listeners and accept, signals and shutdown. The rooms:
 * smtpd_session.c (connection I/O, the command table), smtpd_tx.c (the
 * transaction), smtpd_rcpt.c (recipients), smtpd_auth.c (AUTH), and
 * queue/queue_commit.c (the group commit: one syncfs + one directory fsync
 * for every session that finished together). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "lib/log.h"
#include "lib/util.h"
#include "queue/queue_file.h"
#include "smtpd/conntable.h"
#include "smtpd/smtpd_int.h"

/* ---------- accept ---------- */

static void smtpd_ip16(const struct sockaddr *sa, uint8_t ip[16], char *text, size_t cap)
{
	memset(ip, 0, 16);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		ip[10] = ip[11] = 0xff;
		memcpy(ip + 12, &in->sin_addr, 4);
		inet_ntop(AF_INET, &in->sin_addr, text, (socklen_t)cap);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		memcpy(ip, &in6->sin6_addr, 16);
		inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)cap);
	} else {
		snprintf(text, cap, "unknown");
	}
}

static void smtpd_accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct smtpd_lctx *lc = arg;
	struct kale_listener *l = lc->l;
	struct smtpd_worker *w = lc->w;
	struct smtpd_session *s;
	uint8_t ip[16];
	char text[INET6_ADDRSTRLEN];
	int slot;
	enum conntable_result cr;

	(void)salen;
	(void)lev;
	smtpd_ip16(sa, ip, text, sizeof(text));
	cr = conntable_add(w->ctx->conn_table, w->ctx->worker_id, ip,
	    w->cfg->max_connections_per_ip, w->cfg->max_connections, &slot);
	if (cr != CONNTABLE_OK || w->stopping) {
		static const char total[] = "421 4.7.0 Too many connections, try again later\r\n";
		static const char perip[] = "421 4.7.0 Too many connections from your host\r\n";
		const char *msg = cr == CONNTABLE_PER_IP ? perip : total;
		if (send(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		}
		log_event(LOG_LVL_INFO, "smtp.limit", "client", text,
		    "limit", cr == CONNTABLE_PER_IP ? "per_ip" : "total", NULL);
		close(fd);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->w = w;
	s->kind = l->kind;
	s->conn_slot = slot;
	s->tx.fd = -1;
	s->local_uid = -1;
	if (l->kind == LISTEN_LOCAL) {
		/* kale-sendmail: local programs. They may relay, but a user other
		 * than root and run_as sends only as itself (smtpd_local_sender). */
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		snprintf(s->ip, sizeof(s->ip), "local");
		s->trusted = 1;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0)
			smtpd_local_identity(s, cred.uid);
		else
			s->local_uid = 65534;      /* unknown: treated as an ordinary user */
	} else {
		snprintf(s->ip, sizeof(s->ip), "%s", text);
		s->trusted = store_network_match(w->st, sa) == 1;
	}
	if (l->implicit_tls && w->ctx->tls) {
		SSL *ssl = SSL_new(w->ctx->tls);
		s->bev = ssl ? bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS) : NULL;
		s->tls = 1;
	} else {
		s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	if (s->bev == NULL) {
		close(fd);
		conntable_del(w->ctx->conn_table, w->ctx->worker_id, slot);
		free(s);
		return;
	}
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
	w->n_sessions++;
	smtpd_session_start(s);
}

/* ---------- worker ---------- */

static void smtpd_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_worker *w = arg;

	(void)fd;
	(void)what;
	store_log_flush(w->st);
}

static void smtpd_stop_listening(struct smtpd_worker *w)
{
	for (int i = 0; i < w->n_lev; i++)
		if (w->lev[i]) {
			evconnlistener_free(w->lev[i]);
			w->lev[i] = NULL;
		}
}

static void smtpd_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_worker *w = arg;

	(void)fd;
	(void)what;
	event_base_loopexit(w->base, NULL);
}

/* SIGTERM/SIGINT: stop now. Sessions that finished DATA in this round get
 * their commit first; everyone else is told 421 and the worker exits once
 * the replies are written (at most 2 s). */
static void smtpd_sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	struct smtpd_worker *w = arg;
	struct timeval tv = { 2, 0 };

	(void)sig;
	(void)what;
	if (w->stopping == 2)
		return;
	w->stopping = 2;
	smtpd_stop_listening(w);
	queue_commit_drain(w->qc);
	for (struct smtpd_session *s = w->sessions, *next; s; s = next) {
		next = s->next;
		if (s->state == SMTPD_CLOSING)
			continue;
		smtpd_tx_reset(s);
		smtpd_reply(s, "421 4.3.2 %s Service shutting down", w->cfg->hostname);
		s->state = SMTPD_CLOSING;
		bufferevent_disable(s->bev, EV_READ);
	}
	if (w->n_sessions == 0)
		event_base_loopexit(w->base, NULL);
	else
		event_add(w->stop_ev, &tv);
}

/* SIGUSR2 (reload): stop accepting, let open sessions finish, then exit. */
static void smtpd_sigusr2_cb(evutil_socket_t sig, short what, void *arg)
{
	struct smtpd_worker *w = arg;
	struct timeval tv = { w->cfg->command_timeout + 5, 0 };

	(void)sig;
	(void)what;
	if (w->stopping)
		return;
	w->stopping = 1;
	smtpd_stop_listening(w);
	if (w->n_sessions == 0)
		event_base_loopexit(w->base, NULL);
	else
		event_add(w->stop_ev, &tv);
}

int smtpd_main(struct kale_ctx *ctx)
{
	struct smtpd_worker w;
	struct timeval flush_tv = { 1, 0 };
	char *error = NULL;
	const char *op = NULL;
	char name[32];
	int incoming_fd, rc = 0;

	memset(&w, 0, sizeof(w));
	w.ctx = ctx;
	w.cfg = ctx->cfg;
	snprintf(name, sizeof(name), "smtpd%d", ctx->worker_id);
	log_set_proc(name);
	if (store_open(ctx->cfg, &w.st, &error) < 0) {
		log_event(LOG_LVL_ERROR, "store.error", "error", error, NULL);
		free(error);
		return 1;
	}
	incoming_fd = open(QUEUE_DIR_INCOMING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (incoming_fd < 0) {
		log_event(LOG_LVL_ERROR, "queue.error", "op", "open", "path", QUEUE_DIR_INCOMING,
		    "error", strerror(errno), NULL);
		store_close(&w.st);
		return 1;
	}
	w.base = event_base_new();
	event_base_priority_init(w.base, 2);
	w.pool = lookup_pool_new(w.base, ctx->cfg, 2, &error);
	if (w.pool == NULL) {
		log_event(LOG_LVL_ERROR, "smtpd.pool", "error", error, NULL);
		xfree(&error);
	}
	w.qc = queue_commit_new(w.base, incoming_fd, smtpd_committed, &op);
	if (w.qc == NULL) {
		if (strcmp(op, "pipe") == 0)
			log_event(LOG_LVL_ERROR, "smtpd.error", "op", op, "error", strerror(errno), NULL);
		else
			log_event(LOG_LVL_ERROR, "smtpd.error", "op", op, NULL);
		return 1;
	}
	w.flush_ev = event_new(w.base, -1, EV_PERSIST, smtpd_flush_cb, &w);
	event_add(w.flush_ev, &flush_tv);
	w.stop_ev = evtimer_new(w.base, smtpd_stop_cb, &w);
	w.sig_term = evsignal_new(w.base, SIGTERM, smtpd_sigterm_cb, &w);
	w.sig_usr2 = evsignal_new(w.base, SIGUSR2, smtpd_sigusr2_cb, &w);
	event_add(w.sig_term, NULL);
	event_add(w.sig_usr2, NULL);
	for (int i = 0; i < ctx->n_ls && w.n_lev < 16; i++) {
		struct kale_listener *l = &ctx->ls[i];
		if (l->kind != LISTEN_SMTP && l->kind != LISTEN_LOCAL &&
		    l->kind != LISTEN_SUBMISSION && l->kind != LISTEN_SUBMISSIONS)
			continue;
		w.lctx[w.n_lev].w = &w;
		w.lctx[w.n_lev].l = l;
		w.lev[w.n_lev] = evconnlistener_new(w.base, smtpd_accept_cb, &w.lctx[w.n_lev],
		    LEV_OPT_CLOSE_ON_EXEC, -1, l->fd);
		if (w.lev[w.n_lev] == NULL) {
			log_event(LOG_LVL_ERROR, "smtpd.error", "listener", l->name, NULL);
			rc = 1;
			goto out;
		}
		w.n_lev++;
	}
	log_event(LOG_LVL_INFO, "smtpd.start", NULL);
	event_base_dispatch(w.base);
out:
	signal(SIGTERM, SIG_IGN);    /* a second TERM must not cut the clean-up short */
	queue_commit_drain(w.qc);
	smtpd_stop_listening(&w);
	while (w.sessions) {
		w.sessions->state = SMTPD_CMD;
		smtpd_free(w.sessions);
	}
	lookup_pool_free(&w.pool);
	store_log_flush(w.st);
	store_close(&w.st);
	queue_commit_free(&w.qc);     /* the thread, and queue/incoming's fd */
	event_free(w.flush_ev);
	event_free(w.stop_ev);
	event_free(w.sig_term);
	event_free(w.sig_usr2);
	event_base_free(w.base);
	log_event(LOG_LVL_INFO, "smtpd.stop", NULL);
	return rc;
}
