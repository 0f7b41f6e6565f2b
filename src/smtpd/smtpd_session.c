/* smtpd_session: one SMTP connection in an smtpd worker (unprivileged, one
 * libevent loop): reading bounded command lines, the command table, replies
 * and the rejection log, deadlines and timeouts, STARTTLS, closing. The
 * transaction is in smtpd_tx.c, RCPT in smtpd_rcpt.c, AUTH in smtpd_auth.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <pwd.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "lib/log.h"
#include "lib/util.h"
#include "queue/queue_file.h"
#include "smtpd/smtpd_int.h"

static void smtpd_process_loop(struct smtpd_session *s);
static void smtpd_timeout(struct smtpd_session *s);

/* ---------- replies and logging ---------- */

void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

void smtpd_log_row(struct smtpd_session *s, const char *action, const char *rcpt,
    const char *code, const char *reason)
{
	struct store_log_row row = { 0 };

	row.qid = s->tx.qid[0] ? s->tx.qid : NULL;
	row.session = s->sid[0] ? s->sid : NULL;
	row.client = s->ip;
	row.helo = s->helo[0] ? s->helo : NULL;
	row.sender = s->tx.active ? s->tx.mail.addr : NULL;
	row.rcpt = rcpt;
	row.action = action;
	row.code = code;
	row.reason = reason;
	row.size = (int64_t)s->tx.body_len;
	if (s->w->st)
		store_log_add(s->w->st, &row);
}

/* Replies with a rejection and logs it as a "rejected" row. text is "CODE X.Y.Z words". */
void smtpd_reject(struct smtpd_session *s, const char *rcpt, const char *text)
{
	char code[16] = "";
	const char *reason = text;

	if (strlen(text) > 10 && text[3] == ' ') {
		size_t n = strcspn(text + 4, " ");
		if (n < 8) {
			memcpy(code, text, 4 + n);
			code[4 + n] = '\0';
			reason = text + 4 + n + (text[4 + n] == ' ');
		}
	}
	smtpd_reply(s, "%s", text);
	smtpd_log_row(s, "rejected", rcpt, code, reason);
	log_event(LOG_LVL_INFO, "smtp.reject", "client", s->ip, "from",
	    s->tx.active ? s->tx.mail.addr : NULL, "to", rcpt, "reply", text, NULL);
}

/* ---------- commands of the connection ---------- */

static void smtpd_helo(struct smtpd_session *s, const char *arg, int esmtp)
{
	const struct kale_config *cfg = s->w->cfg;

	if (smtp_parse_helo(arg) < 0) {
		smtpd_reply(s, "501 5.5.4 Invalid domain name");
		s->errors++;
		return;
	}
	smtpd_tx_reset(s);
	(void)util_fmt(s->helo, sizeof(s->helo), "%s", arg);
	filter_helo(s->fs, s->helo);
	s->helo_done = 1;
	s->esmtp = esmtp;
	if (!esmtp) {
		smtpd_reply(s, "250 %s", cfg->hostname);
		return;
	}
	smtpd_reply(s, "250-%s", cfg->hostname);
	smtpd_reply(s, "250-PIPELINING");
	smtpd_reply(s, "250-SIZE %llu", (unsigned long long)cfg->message_size);
	smtpd_reply(s, "250-8BITMIME");
	smtpd_reply(s, "250-SMTPUTF8");
	smtpd_reply(s, "250-CHUNKING");
	if (!s->tls && s->w->ctx->tls)
		smtpd_reply(s, "250-STARTTLS");
	{
		int need_tls;
		if (smtpd_auth_allowed(s, &need_tls))
			smtpd_reply(s, "250-AUTH PLAIN LOGIN");
	}
	smtpd_reply(s, "250 ENHANCEDSTATUSCODES");
}


static void smtpd_cmd_helo(struct smtpd_session *s, char *arg)
{
	smtpd_helo(s, arg, 0);
}

static void smtpd_cmd_ehlo(struct smtpd_session *s, char *arg)
{
	smtpd_helo(s, arg, 1);
}

static void smtpd_cmd_starttls(struct smtpd_session *s, char *arg)
{
	struct smtpd_worker *w = s->w;

	if (s->tls) {
		smtpd_reply(s, "503 5.5.1 TLS already active");
		return;
	}
	if (*arg) {
		smtpd_reply(s, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (w->ctx->tls == NULL) {
		smtpd_reply(s, "454 4.7.0 TLS not available");
		return;
	}
	smtpd_reply(s, "220 2.0.0 Ready to start TLS");
	/* Anything the client pipelined behind STARTTLS is plaintext that must
	 * not be taken as coming through TLS (CVE-2011-0411): drop it now, and
	 * with the plaintext bufferevent at the switch (smtpd_start_tls). */
	evbuffer_drain(bufferevent_get_input(s->bev), evbuffer_get_length(bufferevent_get_input(s->bev)));
	bufferevent_disable(s->bev, EV_READ);
	s->tls_pending = 1;
}

/* The 220 to STARTTLS is written: TLS on the same socket (lib/server.c). */
static void smtpd_start_tls(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;
	struct timeval tv = { w->cfg->command_timeout, 0 };
	int rc = server_conn_starttls(s->conn);

	s->bev = s->conn->bev;
	s->tls_pending = 0;
	if (rc < 0) {
		smtpd_free(s);
		return;
	}
	bufferevent_setwatermark(s->bev, EV_READ, 0, 1024 * 1024);
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	s->tls = 1;
	s->helo_done = 0;
	s->esmtp = 0;
	s->helo[0] = '\0';
	xfree(&s->auth_address);
	smtpd_tx_reset(s);
}

/* The local peer's uid and login (sendmail.sock). */
void smtpd_local_identity(struct smtpd_session *s, uid_t uid)
{
	struct passwd pw, *pwr = NULL;
	char pwbuf[1024];

	s->local_uid = (long)uid;
	s->local_user[0] = '\0';
	if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwr) == 0 && pwr != NULL)
		(void)util_fmt(s->local_user, sizeof(s->local_user), "%s", pwr->pw_name);
}

/* "XUID uid" on sendmail.sock, from root or run_as only (the maildrop
 * pickup): the session then speaks for that uid, as if the user had
 * connected (sender rules, added headers, Received). Once per session,
 * before MAIL; the new identity is not trusted to change it again. */
static void smtpd_cmd_xuid(struct smtpd_session *s, char *arg)
{
	char *end;
	unsigned long uid;

	if (s->local_uid != 0 && s->local_uid != (long)geteuid()) {
		smtpd_reply(s, "550 5.7.0 XUID is for the maildrop pickup only");
		return;
	}
	if (s->tx.active) {
		smtpd_reply(s, "503 5.5.1 XUID inside a transaction");
		return;
	}
	errno = 0;
	uid = strtoul(arg, &end, 10);
	if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || errno != 0 || uid > 0xfffffffeUL) {
		smtpd_reply(s, "501 5.5.4 Syntax: XUID uid");
		return;
	}
	smtpd_local_identity(s, (uid_t)uid);
	smtpd_reply(s, "250 2.0.0 Ok");
}

/* The commands that need no room of their own. */
static void smtpd_cmd_noop(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_reply(s, "250 2.0.0 Ok");
}

static void smtpd_cmd_quit(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_reply(s, "221 2.0.0 Bye");
	s->state = SMTPD_CLOSING;
}

static void smtpd_cmd_vrfy(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
}

static void smtpd_cmd_expn(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_reply(s, "502 5.5.1 EXPN not supported");
}

static void smtpd_cmd_help(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS");
}

/* ---------- dispatch ---------- */

/* Commands are read only in SMTPD_CMD (AUTH continuation lines, DATA and
 * BDAT bytes are taken by smtpd_process_loop before this). A need not met
 * is answered with the entry's reply, not counted as an error; the checks
 * that depend on more than the session's state stay in the handlers.
 * XUID elsewhere than on sendmail.sock is as unknown as any other verb. */
#define CMD SMTPD_ST(SMTPD_CMD)
static const struct smtpd_command smtpd_commands[] = {
	{ SMTP_HELO, "HELO", CMD, 0, NULL, smtpd_cmd_helo },
	{ SMTP_EHLO, "EHLO", CMD, 0, NULL, smtpd_cmd_ehlo },
	{ SMTP_MAIL, "MAIL", CMD, SMTPD_NEED_HELO, "503 5.5.1 Send HELO/EHLO first", smtpd_cmd_mail },
	{ SMTP_RCPT, "RCPT", CMD, SMTPD_NEED_MAIL, "503 5.5.1 Need MAIL before RCPT", smtpd_cmd_rcpt },
	{ SMTP_DATA, "DATA", CMD, SMTPD_NEED_MAIL, "503 5.5.1 Need MAIL command", smtpd_cmd_data },
	/* BDAT checks its needs itself: the chunk must be read all the same */
	{ SMTP_BDAT, "BDAT", CMD, 0, NULL, smtpd_cmd_bdat },
	{ SMTP_RSET, "RSET", CMD, 0, NULL, smtpd_cmd_rset },
	{ SMTP_NOOP, "NOOP", CMD, 0, NULL, smtpd_cmd_noop },
	{ SMTP_QUIT, "QUIT", CMD, 0, NULL, smtpd_cmd_quit },
	{ SMTP_VRFY, "VRFY", CMD, 0, NULL, smtpd_cmd_vrfy },
	{ SMTP_EXPN, "EXPN", CMD, 0, NULL, smtpd_cmd_expn },
	{ SMTP_HELP, "HELP", CMD, 0, NULL, smtpd_cmd_help },
	{ SMTP_STARTTLS, "STARTTLS", CMD, 0, NULL, smtpd_cmd_starttls },
	{ SMTP_AUTH, "AUTH", CMD, 0, NULL, smtpd_cmd_auth },
	{ SMTP_XUID, "XUID", CMD, SMTPD_NEED_LOCAL, "500 5.5.1 Command unrecognized", smtpd_cmd_xuid },
};
#undef CMD

const struct smtpd_command *smtpd_command_find(enum smtp_verb verb)
{
	for (size_t i = 0; i < sizeof(smtpd_commands) / sizeof(smtpd_commands[0]); i++)
		if (smtpd_commands[i].verb == verb)
			return &smtpd_commands[i];
	return NULL;
}

const char *smtpd_command_refusal(const struct smtpd_command *c, enum smtpd_state st, unsigned have)
{
	if (!(c->states & SMTPD_ST(st)))
		return "503 5.5.1 Bad sequence of commands";
	if ((c->needs & have) != c->needs)
		return c->refuse;
	return NULL;
}

/* The enum smtpd_need bits the session meets now. */
static unsigned smtpd_session_has(const struct smtpd_session *s)
{
	return (s->helo_done ? SMTPD_NEED_HELO : 0u) | (s->tx.active ? SMTPD_NEED_MAIL : 0u) |
	    (s->kind == LISTEN_LOCAL ? SMTPD_NEED_LOCAL : 0u);
}

static void smtpd_command(struct smtpd_session *s, char *line, size_t len)
{
	struct smtp_cmd cmd;
	const struct smtpd_command *c;
	const char *refuse;
	enum smtp_parse_result r = smtp_parse_command(line, len, &cmd);

	switch (r) {
	case SMTP_PARSE_OK:
		break;
	case SMTP_PARSE_TOO_LONG:
		smtpd_reply(s, "500 5.5.2 Line too long");
		s->errors++;
		return;
	case SMTP_PARSE_NUL:
		smtpd_reply(s, "501 5.5.2 NUL character in command");
		s->errors++;
		return;
	case SMTP_PARSE_BARE_CRLF:
		smtpd_reply(s, "501 5.5.2 Bare CR or LF in command");
		s->errors++;
		return;
	default:
		smtpd_reply(s, "501 5.5.4 Syntax error");
		s->errors++;
		return;
	}
	c = smtpd_command_find(cmd.verb);
	if (s->refused[0] != '\0' && cmd.verb != SMTP_QUIT) {
		/* refused at connect: only QUIT (RFC 5321 3.1) */
		smtpd_reply(s, "503 5.5.1 Bad sequence of commands: the connection was refused");
		s->errors++;
	} else if (c == NULL) {
		smtpd_reply(s, "500 5.5.1 Command unrecognized");
		s->errors++;
	} else if ((refuse = smtpd_command_refusal(c, s->state, smtpd_session_has(s))) != NULL) {
		smtpd_reply(s, "%s", refuse);
	} else {
		/* arg points into line, which is ours to change (AUTH splits it) */
		c->fn(s, (char *)cmd.arg);
	}
	if (s->errors >= SMTPD_MAX_ERRORS && s->state != SMTPD_CLOSING) {
		smtpd_reply(s, "421 4.7.0 Too many errors, closing connection");
		s->state = SMTPD_CLOSING;
	}
}

/* ---------- input ---------- */

/* The idle timer restarts with every byte, so a client trickling one byte
 * a second would never time out. Each command must be complete within
 * command_timeout of the previous one, and a message must arrive at
 * SMTPD_MIN_DATA_RATE (Postfix's smtpd_min_data_rate) on top of that. */
static void smtpd_deadline_arm(struct smtpd_session *s)
{
	struct timeval tv = { s->w->cfg->command_timeout, 0 };

	s->phase_ms = util_now_ms();
	if (s->deadline_ev != NULL)
		evtimer_add(s->deadline_ev, &tv);
}

static void smtpd_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_session *s = arg;
	uint64_t allowed = (uint64_t)s->w->cfg->command_timeout * 1000, now = util_now_ms();

	(void)fd;
	(void)what;
	if (s->state == SMTPD_CLOSING || s->state == SMTPD_GREETING)
		return;
	if (s->state == SMTPD_COMMIT || s->state == SMTPD_WAIT) {
		smtpd_deadline_arm(s);  /* our turn, not the client's: the clock restarts */
		return;
	}
	if (s->state == SMTPD_DATA || s->state == SMTPD_BDAT)
		allowed += s->tx.body_len * 1000 / SMTPD_MIN_DATA_RATE;
	if (now - s->phase_ms < allowed) {
		uint64_t left = allowed - (now - s->phase_ms);
		struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
		evtimer_add(s->deadline_ev, &tv);
		return;
	}
	log_event(LOG_LVL_INFO, "smtp.deadline", "client", s->ip, "state",
	    s->state == SMTPD_DATA || s->state == SMTPD_BDAT ? "data" : "command", NULL);
	smtpd_timeout(s);
}

void smtpd_process(struct smtpd_session *s)
{
	if (s->busy)
		return;
	s->busy = 1;
	smtpd_process_loop(s);     /* clears busy before it may free s */
}

static void smtpd_process_loop(struct smtpd_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);

	for (;;) {
		if (s->state == SMTPD_COMMIT || s->state == SMTPD_CLOSING || s->state == SMTPD_GREETING ||
		    s->state == SMTPD_WAIT || s->tls_pending)
			break;
		if (s->state == SMTPD_BDAT) {
			/* before the length test: "BDAT 0 LAST" has no bytes to wait for */
			smtpd_read_bdat(s, in);
			if (s->state == SMTPD_BDAT)
				break;
			continue;
		}
		if (evbuffer_get_length(in) == 0)
			break;
		if (s->state == SMTPD_DATA) {
			if (!smtpd_read_data(s, in))
				break;
			s->state = SMTPD_CMD;
			smtpd_deadline_arm(s);
			smtpd_message_done(s);
			continue;
		}
		/* SMTPD_CMD: one line, bounded. Only CRLF ends a command line: a
		 * bare CR or LF inside it makes it one bad command, not two. */
		struct evbuffer_ptr eol = evbuffer_search(in, "\r\n", 2, NULL);
		if (eol.pos < 0) {
			size_t have = evbuffer_get_length(in);
			if (have >= SMTP_LINE_MAX) {
				if (!s->discard_line) {
					smtpd_reply(s, "500 5.5.2 Line too long");
					s->errors++;
					smtpd_auth_abort(s);
				}
				s->discard_line = 1;
				/* keep a trailing CR: its LF may come in the next read */
				evbuffer_drain(in, have - 1);
			}
			break;
		}
		if (s->discard_line) {
			evbuffer_drain(in, (size_t)eol.pos + 2);
			s->discard_line = 0;
			continue;
		}
		if ((size_t)eol.pos + 2 > SMTP_LINE_MAX) {
			evbuffer_drain(in, (size_t)eol.pos + 2);
			smtpd_reply(s, "500 5.5.2 Line too long");
			s->errors++;
			smtpd_auth_abort(s);
			continue;
		}
		char line[SMTP_LINE_MAX + 1];
		size_t len = (size_t)eol.pos;
		evbuffer_remove(in, line, len + 2);
		line[len] = '\0';
		smtpd_deadline_arm(s);
		if (s->state == SMTPD_AUTH) {
			smtpd_auth_line(s, line);
			OPENSSL_cleanse(line, len);
			continue;
		}
		smtpd_command(s, line, len);
		if (s->errors >= SMTPD_MAX_ERRORS)
			s->state = SMTPD_CLOSING;
		if (s->state == SMTPD_BDAT || s->state == SMTPD_DATA)
			continue;
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > SMTPD_OUT_MAX)
			break;
	}
	s->busy = 0;
	if (s->state == SMTPD_CLOSING) {
		bufferevent_disable(s->bev, EV_READ);
		smtpd_close(s);
		return;
	}
	if (s->state != SMTPD_COMMIT && s->state != SMTPD_WAIT && !s->tls_pending) {
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > SMTPD_OUT_MAX)
			bufferevent_disable(s->bev, EV_READ);
		else
			bufferevent_enable(s->bev, EV_READ);
	}
}

/* Frees the session once its last reply has left (the skeleton gives the
 * flush 5 s: server_params.close_timeout_s). Never frees synchronously. */
void smtpd_close(struct smtpd_session *s)
{
	server_conn_close(s->conn);
}

void smtpd_on_read(void *arg)
{
	struct smtpd_session *s = arg;

	if (s->tls_pending)
		return;
	if (s->state == SMTPD_GREETING) {
		/* Talking before the greeting: a spambot that does not wait. */
		smtpd_reply(s, "554 5.5.0 Protocol error: talking before the greeting");
		smtpd_log_row(s, "rejected", NULL, "554 5.5.0", "early talker");
		s->state = SMTPD_CLOSING;
		bufferevent_disable(s->bev, EV_READ);
		return;
	}
	smtpd_process(s);
}

void smtpd_on_write(void *arg)
{
	struct smtpd_session *s = arg;

	if (s->state == SMTPD_CLOSING) {
		smtpd_close(s);
		return;
	}
	if (s->tls_pending) {
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
			smtpd_start_tls(s);
		return;
	}
	if (s->state != SMTPD_COMMIT && s->state != SMTPD_GREETING && s->state != SMTPD_WAIT) {
		bufferevent_enable(s->bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
			smtpd_process(s);
	}
}

void smtpd_on_event(void *arg, short what)
{
	struct smtpd_session *s = arg;

	if (what & BEV_EVENT_TIMEOUT) {
		if (s->state == SMTPD_COMMIT || s->state == SMTPD_WAIT)
			return;
		if (s->state == SMTPD_CLOSING) {
			/* the peer does not even take our last reply; a read
			 * timeout due in the same loop turn as the deadline that
			 * closed the session is not that */
			if (what & BEV_EVENT_WRITING)
				smtpd_free(s);
			return;
		}
		smtpd_timeout(s);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->state == SMTPD_COMMIT) {
			/* the commit callback still owns it; it will notice on write */
			return;
		}
		smtpd_free(s);
	}
}

void smtpd_free(struct smtpd_session *s)
{
	if (s->state == SMTPD_COMMIT) {
		/* never free a session inside the commit batch */
		return;
	}
	server_conn_free(s->conn);
}

/* The connection goes away (the skeleton frees the bufferevent and the
 * connection's slot). */
void smtpd_session_release(void *arg)
{
	struct smtpd_session *s = arg;
	struct smtpd_worker *w = s->w;

	smtpd_tx_reset(s);
	if (s->auth_req)
		lookup_cancel(w->pool, s->auth_req);
	if (s->rw) {
		lookup_cancel(w->pool, s->rw->req);
		xfree(&s->rw);
	}
	filter_sess_free(&s->fs);        /* a pending verdict is not called back */
	if (s->fw) {
		store_targets_free(s->fw->targets, s->fw->n);
		xfree(&s->fw);
	}
	if (s->auth_delay_ev)
		event_free(s->auth_delay_ev);
	if (s->auth_delayed)
		smtpd_authjob_free(s->auth_delayed);
	brake_end(w->ctx->brake, &s->auth_brake, BRAKE_NEUTRAL, brake_now());
	free(s->auth_login);
	free(s->auth_address);
	if (s->greet_ev)
		event_free(s->greet_ev);
	if (s->deadline_ev)
		event_free(s->deadline_ev);
	free(s);
}

/* 421 and close: the idle timer or the deadline ran out. */
static void smtpd_timeout(struct smtpd_session *s)
{
	struct timeval tv = { 5, 0 };

	smtpd_reply(s, "421 4.4.2 %s Timeout, closing connection", s->w->cfg->hostname);
	smtpd_log_row(s, "rejected", NULL, "421 4.4.2", "timeout");
	s->state = SMTPD_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_set_timeouts(s->bev, NULL, NULL);
	bufferevent_set_timeouts(s->bev, NULL, &tv);
	bufferevent_enable(s->bev, EV_WRITE);
}

static void smtpd_greet(struct smtpd_session *s)
{
	struct timeval tv = { s->w->cfg->command_timeout, 0 };

	s->state = SMTPD_CMD;
	if (s->deadline_ev == NULL)
		s->deadline_ev = evtimer_new(s->w->base, smtpd_deadline_cb, s);
	smtpd_deadline_arm(s);
	if (s->refused[0] != '\0')
		smtpd_reply(s, "%s", s->refused);     /* RFC 5321 3.1: 554 instead of 220 */
	else
		smtpd_reply(s, "220 %s ESMTP kale", s->w->cfg->hostname);
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void smtpd_greet_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_session *s = arg;

	(void)fd;
	(void)what;
	if (s->state == SMTPD_GREETING)
		smtpd_greet(s);
}

/* The session's id in the mail log: a queue id (unique across nodes and
 * time, strictly increasing in this process) written in base 32, 20
 * characters, so it is never taken for a queue id. */
static void smtpd_session_id(char sid[24])
{
	static const char b32[] = "0123456789abcdefghjkmnpqrstvwxyz";
	char qid[32];
	uint64_t acc = 0;
	int bits = 0, o = 0;

	queue_qid_new(qid);
	for (int i = 0; i < 24 && qid[i] != '\0'; i++) {
		char c = qid[i];
		acc = acc << 4 | (uint64_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
		bits += 4;
		if (bits >= 5) {
			sid[o++] = b32[(acc >> (bits - 5)) & 31];
			bits -= 5;
		}
	}
	if (bits > 0)
		sid[o++] = b32[(acc << (5 - bits)) & 31];
	sid[o] = '\0';
}

static void smtpd_session_open(struct smtpd_session *s);

/* The verdict on the connection itself (maybe inside filter_connect). */
static void smtpd_connect_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason)
{
	struct smtpd_session *s = arg;

	(void)check;
	if (v == FILTER_REJECT || v == FILTER_TEMPFAIL) {
		char code[16] = "";
		size_t k = strcspn(reply + 4, " ");
		if (k < 8)
			(void)util_fmt(code, sizeof(code), "%.*s", (int)(4 + k), reply);
		smtpd_log_row(s, "rejected", NULL, code, reason);
		log_event(LOG_LVL_INFO, "smtp.reject", "client", s->ip, "reply", reply, NULL);
	}
	if (v == FILTER_TEMPFAIL) {
		/* no verdict now: 421 and close (RFC 5321 3.8) */
		smtpd_reply(s, "421 4.7.1 %s", strlen(reply) > 10 ? reply + 10 : "try again later");
		s->state = SMTPD_CLOSING;
		bufferevent_enable(s->bev, EV_WRITE);
		return;
	}
	if (v == FILTER_REJECT)
		(void)util_fmt(s->refused, sizeof(s->refused), "%s", reply);
	smtpd_session_open(s);
}

/* A new session on its bufferevent (from smtpd_on_accept, right after
 * filter_sess_new): its id and "connect" row, then the greeting, at once or
 * after greeting_delay. */
void smtpd_session_start(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;
	struct store_log_row row = { 0 };
	char how[48];

	smtpd_session_id(s->sid);
	if (s->fs != NULL)
		filter_sess_id(s->fs, s->sid);
	(void)util_fmt(how, sizeof(how), "%s%s", s->kind == LISTEN_LOCAL ? "local"
	    : smtpd_is_submission(s) ? "submission" : "smtp",
	    s->trusted && s->kind != LISTEN_LOCAL ? ", trusted network" : "");
	row.session = s->sid;
	row.client = s->ip;
	row.action = "connect";
	row.reason = how;
	if (w->st)
		store_log_add(w->st, &row);
	bufferevent_setwatermark(s->bev, EV_READ, 0, 1024 * 1024);
	if (s->fs != NULL && !s->trusted && s->kind != LISTEN_LOCAL && filter_connect_wanted(s->fs)) {
		/* the connection is decided first (dnsbl --at connect); nothing is
		 * read until then */
		s->state = SMTPD_GREETING;
		filter_connect(s->fs, smtpd_connect_cb, s);
		return;
	}
	smtpd_session_open(s);
}

/* The greeting, at once or after greeting_delay. */
static void smtpd_session_open(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;

	if (w->cfg->greeting_delay > 0) {
		struct timeval tv = { w->cfg->greeting_delay, 0 };
		s->state = SMTPD_GREETING;
		s->greet_ev = evtimer_new(w->base, smtpd_greet_cb, s);
		evtimer_add(s->greet_ev, &tv);
		bufferevent_enable(s->bev, EV_READ);
	} else {
		smtpd_greet(s);
	}
}
