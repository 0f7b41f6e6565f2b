/* pop3d: the POP3 server (RFC 1939, 2449, 2595) over local users' Maildirs:
 * STLS and implicit TLS (pop3s), USER/PASS against the policy store.
 * Runs as its own process, forked by the master, as run_as in data_dir. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "lib/log.h"
#include "lib/server.h"
#include "lib/util.h"
#include "lib/proc.h"
#include "pop3/pop3_mbox.h"
#include "pop3/pop3_parse.h"
#include "store/store.h"
#include "lookup/lookup.h"
#include "auth/brake.h"

#define POP3D_MAX_ERRORS     10      /* -ERR replies before we hang up */
#define POP3D_MAX_BAD_LOGINS 3       /* failed PASS before we hang up */
#define POP3D_IN_HIGH        8192    /* stop reading past this much unparsed input */
#define POP3D_OUT_HIGH       65536   /* stop producing past this much queued output */
#define POP3D_OUT_LOW        16384   /* resume producing below this */
#define POP3D_CHUNK          16384   /* bytes read from a message at a time */
#define POP3D_STOP_GRACE_S   5       /* after SIGTERM, sessions get this long to flush */

enum pop3d_state {
	POP3D_ST_AUTH  = 1 << 0,       /* AUTHORIZATION */
	POP3D_ST_TRANS = 1 << 1,       /* TRANSACTION */
	POP3D_ST_CLOSING = 1 << 2      /* flushing the last reply, then free */
};

struct pop3d;

struct pop3d_session {
	struct pop3d *srv;
	struct server_conn *conn;      /* the skeleton's connection (lib/server.h) */
	struct bufferevent *bev;       /* conn->bev */
	char ip[INET6_ADDRSTRLEN];
	const char *listener;          /* name of the listener it came in on */
	int tls;                       /* TLS is up (pop3s, or after STLS) */
	int tls_pending;               /* STLS answered; switch once flushed */
	enum pop3d_state state;
	char user[POP3_ARG_MAX + 1];   /* from USER, "" if none */
	char login[POP3_ARG_MAX + 1];  /* authenticated user */
	struct pop3_mbox *mb;
	int errors, bad_logins;
	int skipping;                  /* discarding the rest of an overlong line */
	int busy;                      /* a brake delay or a password check runs */
	int login_pending;             /* password check on the lookup pool */
	uint64_t login_req;
	struct brake_ticket brake;     /* the brute-force brake (auth/brake.h) */
	char *brake_pass;              /* PASS waiting for the brake's delay */
	struct event *delay;
	struct event *login_deadline;  /* AUTHORIZATION lasts at most 2 x command_timeout */
	int xfer_fd;                   /* message being sent by RETR/TOP, or -1 */
	struct pop3_xfer xfer;
	uint32_t retrieved;
};

struct pop3d {
	struct kale_ctx *ctx;
	const struct kale_config *cfg;
	struct event_base *base;
	store *st;
	int log_dirty;
	struct lookup_pool *pool;      /* password checks off the loop */
	struct server *server;         /* listeners, limits, TLS, drain */
	struct event *ev_flush;
};

struct pop3d_cmd_def {
	enum pop3_verb verb;
	int states;                    /* mask of enum pop3d_state */
	void (*run)(struct pop3d_session *s, struct pop3_cmd *cmd);
};

static void pop3d_process(struct pop3d_session *s);

/* ---- replies ---- */

static void pop3d_printf(struct pop3d_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void pop3d_printf(struct pop3d_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	(void)evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	(void)evbuffer_add(out, "\r\n", 2);
}

/* Stops reading and frees the session once the output is flushed. */
static void pop3d_close(struct pop3d_session *s)
{
	if (s->state == POP3D_ST_CLOSING)
		return;
	s->state = POP3D_ST_CLOSING;
	if (s->xfer_fd >= 0) {
		close(s->xfer_fd);
		s->xfer_fd = -1;
	}
	if (s->delay != NULL)
		event_del(s->delay);
	s->busy = 0;
	server_conn_close(s->conn);
}

static void pop3d_err(struct pop3d_session *s, const char *text)
{
	pop3d_printf(s, "-ERR %s", text);
	if (++s->errors >= POP3D_MAX_ERRORS) {
		pop3d_printf(s, "-ERR too many errors, closing connection");
		log_event(LOG_LVL_WARN, "pop3.too_many_errors", "client", s->ip,
		    "user", s->login[0] ? s->login : NULL, NULL);
		pop3d_close(s);
	}
}

/* ---- mail log ---- */

static void pop3d_maillog(struct pop3d_session *s, const char *user, const char *action,
    const char *reason)
{
	struct store_log_row row;

	memset(&row, 0, sizeof(row));
	row.client = s->ip;
	row.rcpt = user;
	row.action = action;
	row.reason = reason;
	row.relay = s->tls ? "pop3/tls" : "pop3";
	store_log_add(s->srv->st, &row);
	s->srv->log_dirty = 1;
}

/* ---- session lifetime ---- */

/* The skeleton's on_free: the connection goes away (it frees the
 * bufferevent). */
static void pop3d_session_release(void *arg)
{
	struct pop3d_session *s = arg;
	struct pop3d *srv = s->srv;

	if (s->login_pending)
		lookup_cancel(srv->pool, s->login_req);
	if (s->xfer_fd >= 0)
		close(s->xfer_fd);
	if (s->delay != NULL)
		event_free(s->delay);
	brake_end(srv->ctx->brake, &s->brake, BRAKE_NEUTRAL, brake_now());
	if (s->brake_pass != NULL)
		explicit_bzero(s->brake_pass, strlen(s->brake_pass));
	xfree(&s->brake_pass);
	if (s->login_deadline != NULL)
		event_free(s->login_deadline);
	pop3_mbox_free(&s->mb);
	explicit_bzero(s, sizeof(*s));
	free(s);
}

static void pop3d_bev_setup(struct pop3d_session *s)
{
	struct timeval tv;
	int t = s->srv->cfg->command_timeout > 0 ? s->srv->cfg->command_timeout : 300;

	tv.tv_sec = t;
	tv.tv_usec = 0;
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	bufferevent_setwatermark(s->bev, EV_READ, 0, POP3D_IN_HIGH);
	bufferevent_setwatermark(s->bev, EV_WRITE, POP3D_OUT_LOW, 0);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* STLS was answered and flushed: start TLS on the same socket (the
 * skeleton throws away whatever plaintext the client sent behind STLS). */
static int pop3d_start_tls(struct pop3d_session *s)
{
	int rc = server_conn_starttls(s->conn);

	s->bev = s->conn->bev;
	if (rc < 0)
		return -1;
	s->tls = 1;
	s->tls_pending = 0;
	s->user[0] = '\0';
	pop3d_bev_setup(s);
	return 0;
}

/* ---- message transfer (RETR, TOP) ---- */

/* Queues message data until the output is full or the message ends. */
static void pop3d_pump(struct pop3d_session *s)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	char in[POP3D_CHUNK], conv[2 * POP3D_CHUNK + 8];

	while (s->xfer_fd >= 0 && evbuffer_get_length(out) < POP3D_OUT_HIGH) {
		ssize_t r = read(s->xfer_fd, in, sizeof(in));
		size_t n;

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			/* Mid-reply: nothing sensible can follow. */
			log_event(LOG_LVL_ERROR, "pop3.read_failed", "user", s->login,
			    "client", s->ip, "error", strerror(errno), NULL);
			pop3d_close(s);
			return;
		}
		n = pop3_xfer_feed(&s->xfer, in, (size_t)r, conv);
		if (r == 0 || s->xfer.done)
			n += pop3_xfer_finish(&s->xfer, conv + n);
		(void)evbuffer_add(out, conv, n);
		if (r == 0 || s->xfer.done) {
			close(s->xfer_fd);
			s->xfer_fd = -1;
		}
	}
}

/* ---- commands ---- */

static int pop3d_plaintext_refused(struct pop3d_session *s)
{
	if (s->tls || s->srv->cfg->mailbox_plaintext_auth)
		return 0;
	pop3d_err(s, "[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS");
	return 1;
}

static void pop3d_cmd_capa(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	pop3d_printf(s, "+OK Capability list follows");
	pop3d_printf(s, "TOP");
	pop3d_printf(s, "UIDL");
	pop3d_printf(s, "RESP-CODES");
	pop3d_printf(s, "AUTH-RESP-CODE");
	pop3d_printf(s, "PIPELINING");
	if (s->state == POP3D_ST_AUTH) {
		if (s->tls || s->srv->cfg->mailbox_plaintext_auth)
			pop3d_printf(s, "USER");
		if (!s->tls && s->srv->ctx->tls != NULL)
			pop3d_printf(s, "STLS");
	}
	pop3d_printf(s, "IMPLEMENTATION kale");
	pop3d_printf(s, ".");
}

static void pop3d_cmd_stls(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	if (s->tls) {
		pop3d_err(s, "TLS already active");
		return;
	}
	if (s->srv->ctx->tls == NULL) {
		pop3d_err(s, "TLS not available");
		return;
	}
	pop3d_printf(s, "+OK Begin TLS negotiation");
	s->tls_pending = 1;
	bufferevent_disable(s->bev, EV_READ);
	evbuffer_drain(bufferevent_get_input(s->bev),
	    evbuffer_get_length(bufferevent_get_input(s->bev)));
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
}

static void pop3d_cmd_user(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	if (pop3d_plaintext_refused(s))
		return;
	if (strchr(cmd->arg, '@') == NULL) {
		pop3d_err(s, "[AUTH] log in with your full address");
		return;
	}
	memcpy(s->user, cmd->arg, sizeof(s->user));
	pop3d_printf(s, "+OK");
}

static void pop3d_pass_finish(struct pop3d_session *s, int rc);
static void pop3d_pass_check(struct pop3d_session *s, char *pass);

/* The brake's delay is over: the password is checked now. */
static void pop3d_delay_done(evutil_socket_t fd, short what, void *arg)
{
	struct pop3d_session *s = arg;
	char *pass = s->brake_pass;

	(void)fd;
	(void)what;
	s->busy = 0;
	s->brake_pass = NULL;
	if (pass == NULL || s->state == POP3D_ST_CLOSING) {
		brake_end(s->srv->ctx->brake, &s->brake, BRAKE_NEUTRAL, brake_now());
	} else {
		pop3d_pass_check(s, pass);
		pop3d_process(s);
	}
	if (pass != NULL)
		explicit_bzero(pass, strlen(pass));
	free(pass);
}

struct pop3d_login_job {
	const struct kale_config *cfg;
	struct pop3d_session *s;
	char user[320];
	char *pass;
	int result;
};

static void pop3d_login_work(void *arg)
{
	struct pop3d_login_job *j = arg;

	j->result = store_user_check_password_once(j->cfg, j->user, j->pass);
}

static void pop3d_login_job_done(void *arg, int cancelled)
{
	struct pop3d_login_job *j = arg;
	struct pop3d_session *s = j->s;
	int rc = j->result;

	explicit_bzero(j->pass, strlen(j->pass));
	free(j->pass);
	free(j);
	if (cancelled)
		return;
	s->login_pending = 0;
	s->login_req = 0;
	if (s->state != POP3D_ST_CLOSING) {
		s->busy = 0;
		pop3d_pass_finish(s, rc);
		pop3d_process(s);
	}
}

static void pop3d_cmd_pass(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	struct brake_params bp;

	if (pop3d_plaintext_refused(s))
		return;
	if (s->user[0] == '\0') {
		pop3d_err(s, "USER first");
		return;
	}
	/* The brake, shared with smtpd and imapd: over its limit the password
	 * is not checked at all; below it, the check may have to wait. */
	brake_params_conf(s->srv->cfg, &bp);
	if (brake_begin(s->srv->ctx->brake, &bp, s->ip, s->user, brake_now(), &s->brake) != BRAKE_GO) {
		explicit_bzero(cmd->arg, sizeof(cmd->arg));
		brake_log("pop3", s->ip, s->user, &s->brake, "refuse");
		pop3d_maillog(s, NULL, "login-failed", "too many failed logins");
		s->user[0] = '\0';
		pop3d_printf(s, "-ERR [SYS/TEMP] Too many failed logins, try again later");
		if (++s->bad_logins >= POP3D_MAX_BAD_LOGINS) {
			pop3d_printf(s, "-ERR too many failed logins, closing connection");
			pop3d_close(s);
		}
		return;
	}
	if (s->brake.delay_ms > 0) {
		if (s->delay == NULL)
			s->delay = evtimer_new(s->srv->base, pop3d_delay_done, s);
		if (s->delay != NULL) {
			struct timeval tv = { s->brake.delay_ms / 1000, (s->brake.delay_ms % 1000) * 1000 };
			brake_log("pop3", s->ip, s->user, &s->brake, "delay");
			s->brake_pass = xstrdup(cmd->arg);
			explicit_bzero(cmd->arg, sizeof(cmd->arg));
			s->busy = 1;
			evtimer_add(s->delay, &tv);
			return;
		}
	}
	pop3d_pass_check(s, cmd->arg);
	explicit_bzero(cmd->arg, sizeof(cmd->arg));
}

/* PASS after the brake: on the pool, or inline without one. */
static void pop3d_pass_check(struct pop3d_session *s, char *pass)
{
	int rc;

	if (s->srv->pool != NULL) {
		/* yescrypt costs tens of milliseconds: check on the pool so the
		 * other sessions of this process are not stalled meanwhile */
		struct pop3d_login_job *j = xcalloc(1, sizeof(*j));
		j->cfg = s->srv->cfg;
		j->s = s;
		(void)util_fmt(j->user, sizeof(j->user), "%s", s->user);
		j->pass = xstrdup(pass);
		s->busy = 1;
		s->login_pending = 1;
		s->login_req = lookup_pool_job(s->srv->pool, pop3d_login_work, pop3d_login_job_done, j);
		return;
	}
	rc = store_user_check_password(s->srv->st, s->user, pass);
	pop3d_pass_finish(s, rc);
}

/* Second half of PASS: rc 1 right, 0 wrong, -1 store error. */
static void pop3d_pass_finish(struct pop3d_session *s, int rc)
{
	char path[PATH_MAX];
	const char *err = NULL;
	uint32_t count;
	uint64_t size;

	brake_end(s->srv->ctx->brake, &s->brake, rc > 0 ? BRAKE_SUCCESS : rc == 0 ? BRAKE_FAILURE :
	    BRAKE_NEUTRAL, brake_now());
	if (rc < 0) {
		log_event(LOG_LVL_ERROR, "pop3.auth_error", "user", s->user, "client", s->ip, NULL);
		pop3d_err(s, "[SYS/TEMP] authentication temporarily unavailable");
		return;
	}
	if (rc == 0) {
		s->bad_logins++;
		log_event(LOG_LVL_WARN, "pop3.login_failed", "user", s->user, "client", s->ip,
		    "tls", s->tls ? "yes" : "no", NULL);
		pop3d_maillog(s, s->user, "login-failed", "authentication failed");
		s->user[0] = '\0';
		pop3d_printf(s, "-ERR [AUTH] Authentication failed");
		if (s->bad_logins >= POP3D_MAX_BAD_LOGINS) {
			pop3d_printf(s, "-ERR too many failed logins, closing connection");
			pop3d_close(s);
		}
		return;
	}
	if (deliver_mailbox_path("mail", s->user, path, sizeof(path)) < 0 ||
	    pop3_mbox_open(path, &s->mb, &err) < 0) {
		log_event(LOG_LVL_ERROR, "pop3.mailbox_error", "user", s->user, "client", s->ip,
		    "error", err != NULL ? err : "bad mailbox path", NULL);
		pop3d_err(s, "[SYS/TEMP] cannot open mailbox");
		return;
	}
	memcpy(s->login, s->user, sizeof(s->login));
	s->state = POP3D_ST_TRANS;
	if (s->login_deadline != NULL)
		event_del(s->login_deadline);
	pop3_mbox_stat(s->mb, &count, &size);
	log_event(LOG_LVL_INFO, "pop3.login", "user", s->login, "client", s->ip,
	    "tls", s->tls ? "yes" : "no", NULL);
	pop3d_maillog(s, s->login, "login", NULL);
	pop3d_printf(s, "+OK Logged in, %u messages (%llu octets)", count,
	    (unsigned long long)size);
}

static void pop3d_cmd_stat(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	uint32_t count;
	uint64_t size;

	(void)cmd;
	pop3_mbox_stat(s->mb, &count, &size);
	pop3d_printf(s, "+OK %u %llu", count, (unsigned long long)size);
}

/* Checks a message number; returns the 0-based index or -1 (replied). */
static int pop3d_msg(struct pop3d_session *s, uint32_t msg)
{
	if (msg == 0 || msg > s->mb->n) {
		pop3d_err(s, "no such message");
		return -1;
	}
	if (s->mb->msgs[msg - 1].deleted) {
		pop3d_err(s, "message is deleted");
		return -1;
	}
	return (int)(msg - 1);
}

static void pop3d_list_common(struct pop3d_session *s, struct pop3_cmd *cmd, int uidl)
{
	uint32_t count;
	uint64_t size;
	int i;

	if (cmd->has_msg) {
		if ((i = pop3d_msg(s, cmd->msg)) < 0)
			return;
		if (uidl)
			pop3d_printf(s, "+OK %u %s", cmd->msg, s->mb->msgs[i].uid);
		else
			pop3d_printf(s, "+OK %u %llu", cmd->msg,
			    (unsigned long long)s->mb->msgs[i].size);
		return;
	}
	pop3_mbox_stat(s->mb, &count, &size);
	if (uidl)
		pop3d_printf(s, "+OK");
	else
		pop3d_printf(s, "+OK %u messages (%llu octets)", count, (unsigned long long)size);
	for (uint32_t k = 0; k < s->mb->n; k++) {
		const struct pop3_msg *m = &s->mb->msgs[k];
		if (m->deleted)
			continue;
		if (uidl)
			pop3d_printf(s, "%u %s", k + 1, m->uid);
		else
			pop3d_printf(s, "%u %llu", k + 1, (unsigned long long)m->size);
	}
	pop3d_printf(s, ".");
}

static void pop3d_cmd_list(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	pop3d_list_common(s, cmd, 0);
}

static void pop3d_cmd_uidl(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	pop3d_list_common(s, cmd, 1);
}

static void pop3d_retr_common(struct pop3d_session *s, struct pop3_cmd *cmd, int top)
{
	const char *err;
	int i, fd;

	if ((i = pop3d_msg(s, cmd->msg)) < 0)
		return;
	fd = pop3_mbox_open_msg(s->mb, (uint32_t)i, &err);
	if (fd < 0) {
		pop3d_err(s, err);
		return;
	}
	if (top) {
		pop3d_printf(s, "+OK");
		pop3_xfer_init(&s->xfer, cmd->lines);
	} else {
		pop3d_printf(s, "+OK %llu octets", (unsigned long long)s->mb->msgs[i].size);
		pop3_xfer_init(&s->xfer, -1);
		/* The fd stays valid across the rename. */
		(void)pop3_mbox_mark_seen(s->mb, (uint32_t)i);
		s->retrieved++;
	}
	s->xfer_fd = fd;
	pop3d_pump(s);
}

static void pop3d_cmd_retr(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	pop3d_retr_common(s, cmd, 0);
}

static void pop3d_cmd_top(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	pop3d_retr_common(s, cmd, 1);
}

static void pop3d_cmd_dele(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	int i;

	if ((i = pop3d_msg(s, cmd->msg)) < 0)
		return;
	s->mb->msgs[i].deleted = 1;
	pop3d_printf(s, "+OK message %u deleted", cmd->msg);
}

static void pop3d_cmd_rset(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	uint32_t count;
	uint64_t size;

	(void)cmd;
	for (uint32_t k = 0; k < s->mb->n; k++)
		s->mb->msgs[k].deleted = 0;
	pop3_mbox_stat(s->mb, &count, &size);
	pop3d_printf(s, "+OK %u messages (%llu octets)", count, (unsigned long long)size);
}

static void pop3d_cmd_noop(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	pop3d_printf(s, "+OK");
}

static void pop3d_cmd_quit(struct pop3d_session *s, struct pop3_cmd *cmd)
{
	uint32_t deleted, failed = 0;
	char nd[16], nr[16];

	(void)cmd;
	if (s->state != POP3D_ST_TRANS) {
		pop3d_printf(s, "+OK bye");
		pop3d_close(s);
		return;
	}
	/* UPDATE state */
	deleted = pop3_mbox_commit(s->mb, &failed);
	(void)util_fmt(nd, sizeof(nd), "%u", deleted);
	(void)util_fmt(nr, sizeof(nr), "%u", s->retrieved);
	log_event(LOG_LVL_INFO, "pop3.logout", "user", s->login, "client", s->ip,
	    "retrieved", nr, "deleted", nd, NULL);
	if (failed > 0)
		pop3d_printf(s, "-ERR [SYS/TEMP] %u deleted messages could not be removed", failed);
	else
		pop3d_printf(s, "+OK Logging out, %u messages deleted", deleted);
	pop3d_close(s);
}

static const struct pop3d_cmd_def pop3d_cmds[] = {
	{ POP3_CMD_USER, POP3D_ST_AUTH, pop3d_cmd_user },
	{ POP3_CMD_PASS, POP3D_ST_AUTH, pop3d_cmd_pass },
	{ POP3_CMD_CAPA, POP3D_ST_AUTH | POP3D_ST_TRANS, pop3d_cmd_capa },
	{ POP3_CMD_STLS, POP3D_ST_AUTH, pop3d_cmd_stls },
	{ POP3_CMD_STAT, POP3D_ST_TRANS, pop3d_cmd_stat },
	{ POP3_CMD_LIST, POP3D_ST_TRANS, pop3d_cmd_list },
	{ POP3_CMD_UIDL, POP3D_ST_TRANS, pop3d_cmd_uidl },
	{ POP3_CMD_RETR, POP3D_ST_TRANS, pop3d_cmd_retr },
	{ POP3_CMD_TOP,  POP3D_ST_TRANS, pop3d_cmd_top },
	{ POP3_CMD_DELE, POP3D_ST_TRANS, pop3d_cmd_dele },
	{ POP3_CMD_RSET, POP3D_ST_TRANS, pop3d_cmd_rset },
	{ POP3_CMD_NOOP, POP3D_ST_TRANS, pop3d_cmd_noop },
	{ POP3_CMD_QUIT, POP3D_ST_AUTH | POP3D_ST_TRANS, pop3d_cmd_quit },
};

static void pop3d_command(struct pop3d_session *s, const char *line, size_t len)
{
	struct pop3_cmd cmd;
	const char *err;

	if (pop3_parse(line, len, &cmd, &err) != POP3_PARSE_OK) {
		pop3d_err(s, err);
		return;
	}
	for (size_t i = 0; i < sizeof(pop3d_cmds) / sizeof(pop3d_cmds[0]); i++) {
		if (pop3d_cmds[i].verb != cmd.verb)
			continue;
		if (!(pop3d_cmds[i].states & (int)s->state))
			pop3d_err(s, s->state == POP3D_ST_AUTH ? "not logged in" :
			    "command not valid in this state");
		else
			pop3d_cmds[i].run(s, &cmd);
		break;
	}
	explicit_bzero(&cmd, sizeof(cmd));
}

/* Handles every complete line in the input, unless a reply is still being
 * produced, a delay runs, TLS is starting, or the output is full. */
static void pop3d_process(struct pop3d_session *s)
{
	char line[POP3_LINE_MAX + 1];

	while (s->state != POP3D_ST_CLOSING && !s->busy && !s->tls_pending &&
	    s->xfer_fd < 0 && s->bev != NULL) {
		struct evbuffer *in = bufferevent_get_input(s->bev);
		size_t avail = evbuffer_get_length(in), len, eol_len = 0;
		struct evbuffer_ptr p;

		if (avail == 0 ||
		    evbuffer_get_length(bufferevent_get_output(s->bev)) >= POP3D_OUT_HIGH)
			break;
		p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (s->skipping) {
				evbuffer_drain(in, avail);
			} else if (avail > POP3_LINE_MAX) {
				evbuffer_drain(in, avail);
				s->skipping = 1;
				pop3d_err(s, "line too long");
			}
			break;
		}
		len = (size_t)p.pos;
		if (s->skipping || len + 1 > POP3_LINE_MAX) {
			evbuffer_drain(in, len + 1);
			if (!s->skipping)
				pop3d_err(s, "line too long");
			s->skipping = 0;
			continue;
		}
		if (evbuffer_remove(in, line, len + 1) != (int)(len + 1))
			break;
		if (len > 0 && line[len - 1] == '\r')
			len--;
		line[len] = '\0';
		pop3d_command(s, line, len);
		explicit_bzero(line, sizeof(line));
	}
}

/* The skeleton's callbacks (a closing session gets none of them). */
static void pop3d_on_read(void *arg)
{
	pop3d_process(arg);
}

static void pop3d_on_write(void *arg)
{
	struct pop3d_session *s = arg;
	int empty = evbuffer_get_length(bufferevent_get_output(s->bev)) == 0;

	if (s->tls_pending) {
		if (empty && pop3d_start_tls(s) < 0) {
			log_event(LOG_LVL_WARN, "pop3.tls_failed", "client", s->ip, NULL);
			server_conn_free(s->conn);
		}
		return;
	}
	if (s->xfer_fd >= 0)
		pop3d_pump(s);
	pop3d_process(s);
}

static void pop3d_on_event(void *arg, short what)
{
	struct pop3d_session *s = arg;
	struct bufferevent *bev = s->bev;

	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    s->state != POP3D_ST_CLOSING) {
		log_event(LOG_LVL_INFO, "pop3.timeout", "client", s->ip,
		    "user", s->login[0] ? s->login : NULL, NULL);
		pop3d_printf(s, "-ERR [SYS/TEMP] autologout: idle for too long");
		pop3d_close(s);
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e != 0) {
			char buf[256];
			ERR_error_string_n(e, buf, sizeof(buf));
			log_event(LOG_LVL_DEBUG, "pop3.tls_error", "client", s->ip, "error", buf, NULL);
		}
	}
	/* EOF, error or write timeout: the session ends without UPDATE, so
	 * nothing marked with DELE is removed (RFC 1939 section 6). */
	server_conn_free(s->conn);
}

/* A client that trickles bytes keeps resetting the idle timeout; before
 * login, the whole AUTHORIZATION state is bounded too. */
static void pop3d_on_login_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct pop3d_session *s = arg;

	(void)fd;
	(void)what;
	if (s->state != POP3D_ST_AUTH)
		return;
	log_event(LOG_LVL_INFO, "pop3.login_timeout", "client", s->ip, NULL);
	if (!s->tls_pending)
		pop3d_printf(s, "-ERR [SYS/TEMP] login timeout");
	s->tls_pending = 0;
	pop3d_close(s);
}

/* ---- connections (lib/server.c accepts, counts and drains) ---- */

static const char *pop3d_on_refuse(void *owner, const struct server_conn *c,
    enum server_refusal why)
{
	(void)owner;
	switch (why) {
	case SERVER_REFUSE_STOPPING:
		return "-ERR [SYS/TEMP] server shutting down\r\n";
	case SERVER_REFUSE_TOTAL:
		log_event(LOG_LVL_WARN, "pop3.refused", "client", c->ip, "reason", "max_connections", NULL);
		return "-ERR [SYS/TEMP] too many connections\r\n";
	case SERVER_REFUSE_PER_IP:
		log_event(LOG_LVL_WARN, "pop3.refused", "client", c->ip, "reason",
		    "max_connections_per_ip", NULL);
		return "-ERR [SYS/TEMP] too many connections from your address\r\n";
	case SERVER_REFUSE_NO_TLS:
		break;
	}
	return NULL;
}

static void *pop3d_on_accept(void *owner, struct server_conn *c)
{
	struct pop3d *srv = owner;
	const struct kale_config *cfg = srv->cfg;
	const struct kale_listener *kl = c->ldata;
	struct pop3d_session *s = xcalloc(1, sizeof(*s));

	s->srv = srv;
	s->conn = c;
	s->bev = c->bev;
	s->tls = c->tls;
	s->state = POP3D_ST_AUTH;
	s->xfer_fd = -1;
	s->listener = kl->name;
	(void)util_fmt(s->ip, sizeof(s->ip), "%s", c->ip);
	pop3d_bev_setup(s);
	s->login_deadline = evtimer_new(srv->base, pop3d_on_login_deadline, s);
	if (s->login_deadline != NULL) {
		struct timeval tv = { 2 * (cfg->command_timeout > 0 ? cfg->command_timeout : 300), 0 };
		evtimer_add(s->login_deadline, &tv);
	}
	log_event(LOG_LVL_DEBUG, "pop3.connect", "client", s->ip, "listener", s->listener, NULL);
	pop3d_printf(s, "+OK %s POP3 server ready",
	    cfg->hostname != NULL ? cfg->hostname : "kale");
	return s;
}

/* ---- process lifetime ---- */

/* SIGTERM: the skeleton has closed the listeners; every open session is
 * told, then closed once its reply is written. */
static void pop3d_on_drain(void *owner, int hard)
{
	(void)owner;
	(void)hard;
	log_event(LOG_LVL_INFO, "pop3.stopping", NULL);
}

static void pop3d_on_stop(void *arg)
{
	struct pop3d_session *s = arg;

	if (s->state == POP3D_ST_CLOSING)
		return;
	if (!s->tls_pending)
		pop3d_printf(s, "-ERR [SYS/TEMP] server shutting down");
	s->tls_pending = 0;
	pop3d_close(s);
}

static const struct server_ops pop3d_server_ops = {
	.on_accept = pop3d_on_accept,
	.on_refuse = pop3d_on_refuse,
	.on_read = pop3d_on_read,
	.on_write = pop3d_on_write,
	.on_event = pop3d_on_event,
	.on_free = pop3d_session_release,
	.on_drain = pop3d_on_drain,
	.on_stop = pop3d_on_stop,
};

static void pop3d_on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct pop3d *srv = arg;

	(void)fd;
	(void)what;
	if (srv->log_dirty && store_log_flush(srv->st) == 0)
		srv->log_dirty = 0;
}

int pop3d_main(struct kale_ctx *ctx)
{
	struct pop3d srv;
	struct timeval one = { 1, 0 };
	struct server_params sp;
	const char *serr = NULL;
	char *err = NULL;
	int ret = 1;

	memset(&srv, 0, sizeof(srv));
	srv.ctx = ctx;
	srv.cfg = ctx->cfg;
	log_set_proc("pop3d");
	signal(SIGPIPE, SIG_IGN);
	if (store_connect(ctx->cfg, &srv.st, &err) < 0) {
		log_event(LOG_LVL_ERROR, "pop3.store_failed", "error", err, NULL);
		goto cleanup;
	}
	store_set_mailbox_only(srv.st);
	srv.base = event_base_new();
	if (srv.base == NULL) {
		log_event(LOG_LVL_ERROR, "pop3.event_failed", NULL);
		goto cleanup;
	}
	srv.pool = lookup_pool_new(srv.base, ctx->cfg, 2, &err);
	if (srv.pool == NULL) {
		log_event(LOG_LVL_WARN, "pop3.pool", "error", err, "note", "password checks on the loop", NULL);
		xfree(&err);
	}
	memset(&sp, 0, sizeof(sp));
	sp.name = "pop3";
	sp.base = srv.base;
	sp.tls = ctx->tls;
	sp.conns = ctx->conn_table;
	sp.max_conns = srv.cfg->max_connections > 0 ? srv.cfg->max_connections : 1000;
	sp.max_conns_per_ip = srv.cfg->max_connections_per_ip > 0 ? srv.cfg->max_connections_per_ip : 20;
	sp.term_grace_s = POP3D_STOP_GRACE_S;
	sp.ops = &pop3d_server_ops;
	sp.owner = &srv;
	srv.server = server_new(&sp, &serr);
	if (srv.server == NULL) {
		log_event(LOG_LVL_ERROR, "pop3.event_failed", "error", serr, NULL);
		goto cleanup;
	}
	for (int i = 0; i < ctx->n_ls; i++) {
		const struct kale_listener *kl = &ctx->ls[i];
		struct server_listen sl;

		if (kl->kind != LISTEN_POP3 && kl->kind != LISTEN_POP3S)
			continue;
		if (kl->kind == LISTEN_POP3S && ctx->tls == NULL) {
			log_event(LOG_LVL_ERROR, "pop3.no_tls", "listener", kl->name, NULL);
			continue;
		}
		sl.fd = kl->fd;
		sl.implicit_tls = kl->implicit_tls || kl->kind == LISTEN_POP3S;
		sl.name = kl->name;
		sl.data = (void *)kl;
		if (server_listen(srv.server, &sl, &serr) < 0) {
			log_event(LOG_LVL_ERROR, "pop3.listen_failed", "listener", kl->name, NULL);
			goto cleanup;
		}
		log_event(LOG_LVL_INFO, "pop3.listen", "listener", kl->name,
		    "tls", kl->kind == LISTEN_POP3S ? "implicit" : "stls", NULL);
	}
	srv.ev_flush = event_new(srv.base, -1, EV_PERSIST, pop3d_on_flush, &srv);
	if (srv.ev_flush == NULL || event_add(srv.ev_flush, &one) < 0) {
		log_event(LOG_LVL_ERROR, "pop3.event_failed", NULL);
		goto cleanup;
	}
	if (event_base_dispatch(srv.base) < 0) {
		log_event(LOG_LVL_ERROR, "pop3.loop_failed", NULL);
		goto cleanup;
	}
	ret = 0;
cleanup:
	server_free(&srv.server);      /* every session, the listeners, the signals */
	lookup_pool_free(&srv.pool);
	if (srv.ev_flush != NULL)
		event_free(srv.ev_flush);
	if (srv.st != NULL)
		store_log_flush(srv.st);
	store_close(&srv.st);
	if (srv.base != NULL)
		event_base_free(srv.base);
	free(err);
	log_event(LOG_LVL_INFO, "pop3.stopped", NULL);
	return ret;
}
