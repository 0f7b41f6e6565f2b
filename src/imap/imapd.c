/* imapd: the IMAP4rev1 server (RFC 3501 + IDLE, UIDPLUS, LITERAL+, NAMESPACE,
 * ID, ENABLE, MOVE, SPECIAL-USE, UNSELECT) over the local users' Maildirs.
 * One process forked by the master, already running as run_as in data_dir;
 * a libevent loop serves every session. This file is the process (listeners,
 * accept, signals, shutdown) and the command table; the rooms around it are
 * listed in docs/imap.md. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "imap/imap_cache.h"
#include "imap/imap_parse.h"
#include "imap/imapd.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lib/proc.h"
#include "store/store.h"
#include "lookup/lookup.h"

const char *imapd_arg_cstr(const struct imap_cmd *c, size_t i)
{
	if (i >= c->n_args)
		return NULL;
	return imap_arg_str(&c->args[i]);
}

/* ---- the command table ---- */

#define ANY (IMAPD_NOAUTH | IMAPD_AUTH | IMAPD_SELECTED)
#define AUTHD (IMAPD_AUTH | IMAPD_SELECTED)

static const struct imapd_command {
	const char *name;
	int states;
	int uid_ok;
	void (*fn)(struct imapd_sess *, struct imap_cmd *, int);
} imapd_commands[] = {
	{ "CAPABILITY", ANY, 0, imapd_cmd_capability },
	{ "NOOP", ANY, 0, imapd_cmd_noop },
	{ "LOGOUT", ANY, 0, imapd_cmd_logout },
	{ "ID", ANY, 0, imapd_cmd_id },
	{ "STARTTLS", IMAPD_NOAUTH, 0, imapd_cmd_starttls },
	{ "LOGIN", IMAPD_NOAUTH, 0, imapd_cmd_login },
	{ "AUTHENTICATE", IMAPD_NOAUTH, 0, imapd_cmd_authenticate },
	{ "ENABLE", AUTHD, 0, imapd_cmd_enable },
	{ "NAMESPACE", AUTHD, 0, imapd_cmd_namespace },
	{ "SELECT", AUTHD, 0, imapd_cmd_select },
	{ "EXAMINE", AUTHD, 0, imapd_cmd_select },
	{ "CREATE", AUTHD, 0, imapd_cmd_create },
	{ "DELETE", AUTHD, 0, imapd_cmd_delete },
	{ "RENAME", AUTHD, 0, imapd_cmd_rename },
	{ "SUBSCRIBE", AUTHD, 0, imapd_cmd_subscribe },
	{ "UNSUBSCRIBE", AUTHD, 0, imapd_cmd_subscribe },
	{ "LIST", AUTHD, 0, imapd_cmd_list },
	{ "LSUB", AUTHD, 0, imapd_cmd_list },
	{ "STATUS", AUTHD, 0, imapd_cmd_status },
	{ "APPEND", AUTHD, 0, imapd_cmd_append },
	{ "IDLE", AUTHD, 0, imapd_cmd_idle },
	{ "CHECK", IMAPD_SELECTED, 0, imapd_cmd_noop },
	{ "CLOSE", IMAPD_SELECTED, 0, imapd_cmd_close },
	{ "UNSELECT", IMAPD_SELECTED, 0, imapd_cmd_close },
	{ "EXPUNGE", IMAPD_SELECTED, 1, imapd_cmd_expunge },
	{ "SEARCH", IMAPD_SELECTED, 1, imapd_cmd_search },
	{ "FETCH", IMAPD_SELECTED, 1, imapd_cmd_fetch },
	{ "STORE", IMAPD_SELECTED, 1, imapd_cmd_store },
	{ "COPY", IMAPD_SELECTED, 1, imapd_cmd_copy },
	{ "MOVE", IMAPD_SELECTED, 1, imapd_cmd_copy },
};

void imapd_execute(struct imapd_sess *s, const char *buf, size_t len)
{
	struct imap_cmd cmd;
	const char *err = NULL;
	if (imap_cmd_parse(buf, len, &cmd, &err) < 0) {
		imapd_bad(s, cmd.tag[0] != '\0' ? cmd.tag : "*", err);
		imap_cmd_free(&cmd);
		return;
	}
	struct imap_cmd view = cmd;
	int uid = 0;
	if (strcmp(cmd.name, "UID") == 0) {
		if (cmd.n_args < 1 || cmd.args[0].type != IMAP_ARG_ATOM || strlen(cmd.args[0].s) >= sizeof(view.name)) {
			imapd_bad(s, cmd.tag, "UID needs a command");
			imap_cmd_free(&cmd);
			return;
		}
		uid = 1;
		for (size_t i = 0; i <= strlen(cmd.args[0].s); i++)
			view.name[i] = (char)((cmd.args[0].s[i] >= 'a' && cmd.args[0].s[i] <= 'z') ?
			    cmd.args[0].s[i] - 32 : cmd.args[0].s[i]);
		view.args = cmd.args + 1;
		view.n_args = cmd.n_args - 1;
	}
	const struct imapd_command *c = NULL;
	for (size_t i = 0; i < sizeof(imapd_commands) / sizeof(imapd_commands[0]); i++)
		if (strcmp(imapd_commands[i].name, view.name) == 0)
			c = &imapd_commands[i];
	if (c == NULL || (uid && !c->uid_ok)) {
		imapd_bad(s, cmd.tag, "Unknown command");
	} else if (!(c->states & (int)s->state)) {
		if (s->state == IMAPD_NOAUTH)
			imapd_bad(s, cmd.tag, "Not logged in");
		else
			imapd_bad(s, cmd.tag, "Command not valid in this state");
	} else {
		c->fn(s, &view, uid);
	}
	imap_cmd_free(&cmd);
}

static int imapd_is_tls_kind(const struct kale_listener *l)
{
	return l->kind == LISTEN_IMAPS || l->implicit_tls;
}

static void imapd_ip(const struct sockaddr *sa, char *buf, size_t cap)
{
	buf[0] = '\0';
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf, (socklen_t)cap);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf, (socklen_t)cap);
	if (buf[0] == '\0')
		util_fmt(buf, cap, "unknown");
}

struct imapd_lis {
	struct imapd *d;
	const struct kale_listener *l;
};

static void imapd_accept_cb(struct evconnlistener *el, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct imapd_lis *li = arg;
	struct imapd *d = li->d;
	const struct kale_config *cfg = d->ctx->cfg;
	char ip[64];
	(void)el;
	(void)salen;
	imapd_ip(sa, ip, sizeof(ip));
	int per_ip = 0;
	for (struct imapd_sess *t = d->sessions; t != NULL; t = t->next)
		if (strcmp(t->ip, ip) == 0)
			per_ip++;
	int tls = imapd_is_tls_kind(li->l);
	if (d->shutting_down || (cfg->max_connections > 0 && d->n_sessions >= cfg->max_connections) ||
	    (cfg->max_connections_per_ip > 0 && per_ip >= cfg->max_connections_per_ip) ||
	    (tls && d->ctx->tls == NULL)) {
		static const char bye[] = "* BYE Too many connections\r\n";
		if (!tls && write(fd, bye, sizeof(bye) - 1) < 0) {
			/* nothing to do: the connection is being refused anyway */
		}
		log_event(LOG_LVL_WARN, "imap.refused", "client", ip, "reason", "connection limit", NULL);
		evutil_closesocket(fd);
		return;
	}
	struct imapd_sess *s = xcalloc(1, sizeof(*s));
	s->d = d;
	s->ino_fd = -1;
	s->state = IMAPD_NOAUTH;
	memcpy(s->ip, ip, sizeof(s->ip));
	s->can_starttls = !tls && d->ctx->tls != NULL;
	evutil_make_socket_nonblocking(fd);
	if (tls) {
		SSL *ssl = SSL_new(d->ctx->tls);
		s->bev = ssl != NULL ? bufferevent_openssl_socket_new(d->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS) : NULL;
		if (s->bev == NULL && ssl != NULL)
			SSL_free(ssl);
		if (s->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		s->tls = 1;
	} else {
		s->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	if (s->bev == NULL) {
		evutil_closesocket(fd);
		xfree(&s);
		return;
	}
	s->next = d->sessions;
	if (d->sessions != NULL)
		d->sessions->prev = s;
	d->sessions = s;
	d->n_sessions++;
	bufferevent_setcb(s->bev, imapd_read_cb, imapd_write_cb, imapd_event_cb, s);
	imapd_set_timeout(s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->login_deadline = evtimer_new(d->base, imapd_on_login_deadline, s);
	if (s->login_deadline != NULL) {
		struct timeval tv = { 2 * (cfg->command_timeout > 0 ? cfg->command_timeout : 300), 0 };
		evtimer_add(s->login_deadline, &tv);
	}
	log_event(LOG_LVL_DEBUG, "imap.connect", "client", ip, "tls", tls ? "yes" : "no", NULL);
	evbuffer_add_printf(imapd_out(s), "* OK [CAPABILITY ");
	imapd_capability(s, imapd_out(s));
	evbuffer_add_printf(imapd_out(s), "] %s kale IMAP ready\r\n",
	    cfg->hostname != NULL ? cfg->hostname : "localhost");
}

static void imapd_shutdown_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct imapd *d = arg;
	(void)fd;
	(void)what;
	event_base_loopexit(d->base, NULL);
}

static void imapd_sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	struct imapd *d = arg;
	(void)sig;
	(void)what;
	if (d->shutting_down)
		return;
	d->shutting_down = 1;
	log_event(LOG_LVL_INFO, "imap.shutdown", NULL);
	for (int i = 0; i < d->n_lis; i++) {
		evconnlistener_free(d->lis[i]);
		d->lis[i] = NULL;
	}
	struct imapd_sess *next;
	for (struct imapd_sess *s = d->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		imapd_idle_stop(s);
		if (s->fetch == NULL)   /* a FETCH being written may be inside a literal */
			imapd_printf(s, "* BYE Server shutting down");
		imapd_close(s);
	}
	if (d->n_sessions == 0) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	struct timeval tv = { IMAPD_SHUTDOWN_SECS, 0 };
	d->shutdown_timer = evtimer_new(d->base, imapd_shutdown_timer_cb, d);
	evtimer_add(d->shutdown_timer, &tv);
}

int imapd_main(struct kale_ctx *ctx)
{
	struct imapd d;
	struct imapd_lis lis[32];
	char *err = NULL;
	int rc = 1;

	memset(&d, 0, sizeof(d));
	d.ctx = ctx;
	log_set_proc("imapd");
	signal(SIGPIPE, SIG_IGN);
	if (store_open(ctx->cfg, &d.st, &err) < 0) {
		log_event(LOG_LVL_ERROR, "imap.store_open_failed", "error", err, NULL);
		xfree(&err);
		return 1;
	}
	store_set_mailbox_only(d.st);
	d.base = event_base_new();
	if (d.base == NULL)
		goto out;
	d.pool = lookup_pool_new(d.base, ctx->cfg, 2, &err);
	if (d.pool == NULL) {
		log_event(LOG_LVL_WARN, "imap.pool", "error", err, "note", "password checks on the loop", NULL);
		xfree(&err);
	}
	for (int i = 0; i < ctx->n_ls && d.n_lis < 32; i++) {
		const struct kale_listener *l = &ctx->ls[i];
		if (l->kind != LISTEN_IMAP && l->kind != LISTEN_IMAPS)
			continue;
		lis[d.n_lis].d = &d;
		lis[d.n_lis].l = l;
		d.lis[d.n_lis] = evconnlistener_new(d.base, imapd_accept_cb, &lis[d.n_lis],
		    LEV_OPT_CLOSE_ON_EXEC, -1, l->fd);
		if (d.lis[d.n_lis] == NULL) {
			log_event(LOG_LVL_ERROR, "imap.listen_failed", "listener", l->name, NULL);
			goto out;
		}
		log_event(LOG_LVL_INFO, "imap.listen", "listener", l->name, "tls", imapd_is_tls_kind(l) ? "implicit" : "starttls", NULL);
		d.n_lis++;
	}
	d.sig_term = evsignal_new(d.base, SIGTERM, imapd_sigterm_cb, &d);
	d.sig_int = evsignal_new(d.base, SIGINT, imapd_sigterm_cb, &d);
	event_add(d.sig_term, NULL);
	event_add(d.sig_int, NULL);
	event_base_dispatch(d.base);
	rc = 0;
out:
	while (d.sessions != NULL)
		imapd_sess_free(d.sessions);
	imap_cache_clear();
	lookup_pool_free(&d.pool);
	for (int i = 0; i < d.n_lis; i++)
		if (d.lis[i] != NULL)
			evconnlistener_free(d.lis[i]);
	if (d.sig_term != NULL)
		event_free(d.sig_term);
	if (d.sig_int != NULL)
		event_free(d.sig_int);
	if (d.shutdown_timer != NULL)
		event_free(d.shutdown_timer);
	if (d.base != NULL)
		event_base_free(d.base);
	store_close(&d.st);
	return rc;
}
