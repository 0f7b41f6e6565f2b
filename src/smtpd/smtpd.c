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
#include <openssl/ssl.h>

#include "lib/log.h"
#include "lib/dns.h"
#include "lib/util.h"
#include "queue/queue_file.h"
#include "smtpd/smtpd_int.h"

/* ---------- connections (lib/server.c accepts, counts and drains) ---------- */

static const char *smtpd_on_refuse(void *owner, const struct server_conn *c, enum server_refusal why)
{
	(void)owner;
	log_event(LOG_LVL_INFO, "smtp.limit", "client", c->ip,
	    "limit", why == SERVER_REFUSE_PER_IP ? "per_ip" : "total", NULL);
	return why == SERVER_REFUSE_PER_IP ? "421 4.7.0 Too many connections from your host\r\n" :
	    "421 4.7.0 Too many connections, try again later\r\n";
}

static void *smtpd_on_accept(void *owner, struct server_conn *c)
{
	struct smtpd_worker *w = owner;
	const struct kale_listener *l = c->ldata;
	struct smtpd_session *s = xcalloc(1, sizeof(*s));

	s->w = w;
	s->conn = c;
	s->bev = c->bev;
	s->tls = c->tls;
	s->kind = l->kind;
	s->tx.fd = -1;
	s->local_uid = -1;
	if (l->kind == LISTEN_LOCAL) {
		/* kale-sendmail: local programs. They may relay, but a user other
		 * than root and run_as sends only as itself (smtpd_local_sender). */
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		(void)util_fmt(s->ip, sizeof(s->ip), "local");
		s->trusted = 1;
		if (getsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0)
			smtpd_local_identity(s, cred.uid);
		else
			s->local_uid = 65534;      /* unknown: treated as an ordinary user */
	} else {
		(void)util_fmt(s->ip, sizeof(s->ip), "%s", c->ip);
		s->trusted = store_network_match(w->st, (const struct sockaddr *)&c->sa) == 1;
	}
	s->fs = filter_sess_new(&w->fenv, (const struct sockaddr *)&c->sa, s->ip, s->trusted);
	smtpd_session_start(s);
	return s;
}

/* ---------- worker ---------- */

static void smtpd_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_worker *w = arg;

	(void)fd;
	(void)what;
	store_log_flush(w->st);
}

/* SIGTERM: stop now (the skeleton has closed the listeners and gives the
 * replies 2 s). Sessions that finished DATA in this round get their commit
 * first; smtpd_on_stop tells everyone else 421. SIGUSR2 (reload): open
 * sessions finish (command_timeout + 5 s at most). */
static void smtpd_on_drain(void *owner, int hard)
{
	struct smtpd_worker *w = owner;

	if (hard)
		queue_commit_drain(w->qc);
}

static void smtpd_on_stop(void *arg)
{
	struct smtpd_session *s = arg;

	if (s->state == SMTPD_CLOSING)
		return;
	smtpd_tx_reset(s);
	if (!s->tls_pending)       /* the client waits for a TLS handshake */
		smtpd_reply(s, "421 4.3.2 %s Service shutting down", s->w->cfg->hostname);
	s->state = SMTPD_CLOSING;
	s->tls_pending = 0;
	bufferevent_disable(s->bev, EV_READ);
}

static const struct server_ops smtpd_server_ops = {
	.on_accept = smtpd_on_accept,
	.on_refuse = smtpd_on_refuse,
	.on_read = smtpd_on_read,
	.on_write = smtpd_on_write,
	.on_event = smtpd_on_event,
	.on_free = smtpd_session_release,
	.on_drain = smtpd_on_drain,
	.on_stop = smtpd_on_stop,
	.refuse_on_tls = 1,            /* the 421 goes out on every listener, as it always has */
};

int smtpd_main(struct kale_ctx *ctx)
{
	struct smtpd_worker w;
	struct timeval flush_tv = { 1, 0 };
	struct server_params sp;
	char *error = NULL;
	const char *op = NULL, *serr = NULL;
	char name[32];
	int incoming_fd, rc = 0;

	memset(&w, 0, sizeof(w));
	w.ctx = ctx;
	w.cfg = ctx->cfg;
	(void)util_fmt(name, sizeof(name), "smtpd%d", ctx->worker_id);
	log_set_proc(name);
	if (store_connect(ctx->cfg, &w.st, &error) < 0) {
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
	{
		if (conf_dns_csv(ctx->cfg, w.dns_servers, sizeof(w.dns_servers)) < 0 ||
		    (w.dns = dns_new(w.base, w.dns_servers, &error)) == NULL) {
			/* the checks that need DNS answer "error" (4xx) */
			log_event(LOG_LVL_ERROR, "smtpd.dns", "error", error ? error : "[dns] servers", NULL);
			xfree(&error);
		}
	}
	w.fenv.base = w.base;
	w.fenv.dns = w.dns;
	w.fenv.st = w.st;
	w.fenv.hostname = ctx->cfg->hostname;
	w.fenv.pool = w.pool;
	w.fenv.dns_servers = w.dns_servers;
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
	memset(&sp, 0, sizeof(sp));
	sp.name = "smtp";
	sp.base = w.base;
	sp.tls = ctx->tls;
	sp.conns = ctx->conn_table;
	sp.row = ctx->worker_id;
	sp.max_conns = w.cfg->max_connections;
	sp.max_conns_per_ip = w.cfg->max_connections_per_ip;
	sp.term_grace_s = 2;
	sp.usr2_grace_s = w.cfg->command_timeout + 5;
	sp.close_timeout_s = 5;
	sp.ops = &smtpd_server_ops;
	sp.owner = &w;
	w.server = server_new(&sp, &serr);
	if (w.server == NULL) {
		log_event(LOG_LVL_ERROR, "smtpd.error", "op", "server", "error", serr, NULL);
		rc = 1;
		goto out;
	}
	for (int i = 0; i < ctx->n_ls; i++) {
		struct kale_listener *l = &ctx->ls[i];
		struct server_listen sl;
		if (l->kind != LISTEN_SMTP && l->kind != LISTEN_LOCAL &&
		    l->kind != LISTEN_SUBMISSION && l->kind != LISTEN_SUBMISSIONS)
			continue;
		sl.fd = l->fd;
		sl.implicit_tls = l->implicit_tls;
		sl.name = l->name;
		sl.data = l;
		if (server_listen(w.server, &sl, &serr) < 0) {
			log_event(LOG_LVL_ERROR, "smtpd.error", "listener", l->name, NULL);
			rc = 1;
			goto out;
		}
	}
	log_event(LOG_LVL_INFO, "smtpd.start", NULL);
	event_base_dispatch(w.base);
out:
	signal(SIGTERM, SIG_IGN);    /* a second TERM must not cut the clean-up short */
	queue_commit_drain(w.qc);
	server_free(&w.server);       /* every session (whatever its state), the listeners */
	lookup_pool_free(&w.pool);
	dns_free(&w.dns);             /* after the sessions: their checks' lookups are cancelled */
	store_log_flush(w.st);
	store_close(&w.st);
	queue_commit_free(&w.qc);     /* the thread, and queue/incoming's fd */
	event_free(w.flush_ev);
	event_base_free(w.base);
	log_event(LOG_LVL_INFO, "smtpd.stop", NULL);
	return rc;
}
