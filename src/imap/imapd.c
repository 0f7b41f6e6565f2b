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
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "imap/imap_cache.h"
#include "imap/imap_parse.h"
#include "imap/imapd.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/server.h"
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

/* ---- connections (lib/server.c accepts, counts and drains) ---- */

static const char *imapd_on_refuse(void *owner, const struct server_conn *c, enum server_refusal why)
{
	(void)owner;
	(void)why;
	log_event(LOG_LVL_WARN, "imap.refused", "client", c->ip, "reason", "connection limit", NULL);
	return "* BYE Too many connections\r\n";
}

static void *imapd_on_accept(void *owner, struct server_conn *c)
{
	struct imapd *d = owner;
	const struct kale_config *cfg = d->ctx->cfg;
	struct imapd_sess *s = xcalloc(1, sizeof(*s));

	s->d = d;
	s->conn = c;
	s->bev = c->bev;
	s->ino_fd = -1;
	s->state = IMAPD_NOAUTH;
	util_fmt(s->ip, sizeof(s->ip), "%s", c->ip);
	s->tls = c->tls;
	s->can_starttls = !c->tls && d->ctx->tls != NULL;
	imapd_set_timeout(s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->login_deadline = evtimer_new(d->base, imapd_on_login_deadline, s);
	if (s->login_deadline != NULL) {
		struct timeval tv = { 2 * (cfg->command_timeout > 0 ? cfg->command_timeout : 300), 0 };
		evtimer_add(s->login_deadline, &tv);
	}
	log_event(LOG_LVL_DEBUG, "imap.connect", "client", s->ip, "tls", c->tls ? "yes" : "no", NULL);
	evbuffer_add_printf(imapd_out(s), "* OK [CAPABILITY ");
	imapd_capability(s, imapd_out(s));
	evbuffer_add_printf(imapd_out(s), "] %s kale IMAP ready\r\n",
	    cfg->hostname != NULL ? cfg->hostname : "localhost");
	return s;
}

/* SIGTERM/SIGINT: the skeleton has closed the listeners. */
static void imapd_on_drain(void *owner, int hard)
{
	(void)owner;
	(void)hard;
	log_event(LOG_LVL_INFO, "imap.shutdown", NULL);
}

static void imapd_on_stop(void *arg)
{
	struct imapd_sess *s = arg;

	if (s->closing)
		return;
	imapd_idle_stop(s);
	if (s->fetch == NULL)   /* a FETCH being written may be inside a literal */
		imapd_printf(s, "* BYE Server shutting down");
	imapd_close(s);
}

static const struct server_ops imapd_server_ops = {
	.on_accept = imapd_on_accept,
	.on_refuse = imapd_on_refuse,
	.on_read = imapd_on_read,
	.on_write = imapd_on_write,
	.on_event = imapd_on_event,
	.on_free = imapd_sess_release,
	.on_drain = imapd_on_drain,
	.on_stop = imapd_on_stop,
};

int imapd_main(struct kale_ctx *ctx)
{
	struct imapd d;
	struct server_params sp;
	const char *serr = NULL;
	char *err = NULL;
	int rc = 1;

	memset(&d, 0, sizeof(d));
	d.ctx = ctx;
	log_set_proc("imapd");
	signal(SIGPIPE, SIG_IGN);
	if (store_connect(ctx->cfg, &d.st, &err) < 0) {
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
	memset(&sp, 0, sizeof(sp));
	sp.name = "imap";
	sp.base = d.base;
	sp.tls = ctx->tls;
	sp.conns = ctx->conn_table;
	sp.max_conns = ctx->cfg->max_connections > 0 ? ctx->cfg->max_connections : 1000;
	sp.max_conns_per_ip = ctx->cfg->max_connections_per_ip > 0 ? ctx->cfg->max_connections_per_ip : 20;
	sp.term_grace_s = IMAPD_SHUTDOWN_SECS;
	sp.sigint = 1;
	sp.close_timeout_s = 5;
	sp.ops = &imapd_server_ops;
	sp.owner = &d;
	d.server = server_new(&sp, &serr);
	if (d.server == NULL) {
		log_event(LOG_LVL_ERROR, "imap.server_failed", "error", serr, NULL);
		goto out;
	}
	for (int i = 0; i < ctx->n_ls; i++) {
		const struct kale_listener *l = &ctx->ls[i];
		struct server_listen sl;
		if (l->kind != LISTEN_IMAP && l->kind != LISTEN_IMAPS)
			continue;
		sl.fd = l->fd;
		sl.implicit_tls = imapd_is_tls_kind(l);
		sl.name = l->name;
		sl.data = (void *)l;
		if (server_listen(d.server, &sl, &serr) < 0) {
			log_event(LOG_LVL_ERROR, "imap.listen_failed", "listener", l->name, NULL);
			goto out;
		}
		log_event(LOG_LVL_INFO, "imap.listen", "listener", l->name, "tls", imapd_is_tls_kind(l) ? "implicit" : "starttls", NULL);
	}
	event_base_dispatch(d.base);
	rc = 0;
out:
	server_free(&d.server);     /* every session, the listeners, the signals */
	imap_cache_clear();
	lookup_pool_free(&d.pool);
	if (d.base != NULL)
		event_base_free(d.base);
	store_close(&d.st);
	return rc;
}
