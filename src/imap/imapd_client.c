/* imapd_client: one IMAP session's I/O in the imapd process: output and
 * flow control, reading command lines and literals (bounded where read),
 * the IDLE/AUTHENTICATE continuation lines, the switch to TLS, timeouts,
 * the login deadline, close and free. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "imap/imap_parse.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lookup/lookup.h"
#include "auth/brake.h"

struct evbuffer *imapd_out(struct imapd_sess *s)
{
	return bufferevent_get_output(s->bev);
}

void imapd_printf(struct imapd_sess *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(imapd_out(s), fmt, ap);
	va_end(ap);
	evbuffer_add(imapd_out(s), "\r\n", 2);
}

/* Closes once the output is written; never frees synchronously. The
 * skeleton bounds the flush (a client that never reads cannot hold the
 * session forever: server_params.close_timeout_s). */
void imapd_close(struct imapd_sess *s)
{
	s->closing = 1;
	server_conn_close(s->conn);
}

void imapd_bad(struct imapd_sess *s, const char *tag, const char *text)
{
	imapd_printf(s, "%s BAD %s", tag, text);
	if (++s->errors >= IMAPD_MAX_ERRORS) {
		imapd_printf(s, "* BYE Too many errors");
		log_event(LOG_LVL_WARN, "imap.too_many_errors", "client", s->ip, NULL);
		imapd_close(s);
	}
}

void imapd_sess_free(struct imapd_sess *s)
{
	server_conn_free(s->conn);
}

/* The connection goes away: everything but the bufferevent (the
 * skeleton's). */
void imapd_sess_release(void *arg)
{
	struct imapd_sess *s = arg;
	struct imapd *d = s->d;
	if (s->login_pending)
		lookup_cancel(d->pool, s->login_req);
	brake_end(d->ctx->brake, &s->brake, BRAKE_NEUTRAL, brake_now());
	if (s->brake_ev != NULL)
		event_free(s->brake_ev);
	if (s->brake_pass != NULL)
		OPENSSL_cleanse(s->brake_pass, strlen(s->brake_pass));
	xfree(&s->brake_pass);
	xfree(&s->brake_user);
	imapd_idle_stop(s);
	imapd_fetch_free(&s->fetch);
	imapd_unselect(s);
	if (s->login_deadline != NULL)
		event_free(s->login_deadline);
	xfree(&s->cmd);
	xfree(&s);
}

void imapd_set_timeout(struct imapd_sess *s)
{
	int secs = s->d->ctx->cfg->command_timeout > 0 ? s->d->ctx->cfg->command_timeout : 300;
	if (s->state != IMAPD_NOAUTH && secs < IMAPD_AUTH_TIMEOUT)
		secs = IMAPD_AUTH_TIMEOUT;
	struct timeval tv = { secs, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &tv);
}

/* The size a command may reach. Its first line is in s->cmd, or, before any
 * of it is taken, the first ll bytes of in. */
static size_t imapd_cmd_limit(struct imapd_sess *s, struct evbuffer *in, size_t ll)
{
	const char *p = s->cmd, *sp;
	size_t n = s->cmd_len;

	if (s->state == IMAPD_NOAUTH)
		return IMAPD_CMD_MAX_PREAUTH;
	if (n == 0) {
		n = ll < 64 ? ll : 64;
		p = n > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)n) : NULL;
		if (p == NULL)
			return IMAPD_CMD_MAX;
	}
	/* APPEND may carry a whole message */
	sp = memchr(p, ' ', n);
	if (sp != NULL && n - (size_t)(sp - p) > 7 && strncasecmp(sp + 1, "APPEND ", 7) == 0)
		return (size_t)s->d->ctx->cfg->message_size + IMAPD_CMD_MAX;
	return IMAPD_CMD_MAX;
}

static void imapd_cmd_reserve(struct imapd_sess *s, size_t more)
{
	if (s->cmd_len + more <= s->cmd_cap)
		return;
	size_t cap = s->cmd_cap ? s->cmd_cap : 1024;
	while (cap < s->cmd_len + more)
		cap *= 2;
	s->cmd = xrealloc(s->cmd, cap);
	s->cmd_cap = cap;
}

static void imapd_cmd_reset(struct imapd_sess *s)
{
	s->cmd_len = 0;
	s->lit_left = 0;
	s->cmd_bad = 0;
	if (s->cmd_cap > 65536) {
		xfree(&s->cmd);
		s->cmd_cap = 0;
	}
}

/* The tag at the start of buf, for an error reply ("*" if none). */
static void imapd_tag_of(const char *buf, size_t len, char *tag, size_t cap)
{
	size_t n = 0;
	while (n < len && n + 1 < cap && buf[n] > ' ' && buf[n] < 127 && buf[n] != '{' &&
	    buf[n] != '"' && buf[n] != '(' && buf[n] != ')' && buf[n] != '+' && buf[n] != '*' &&
	    buf[n] != '%')
		n++;
	if (n == 0 || n >= len || buf[n] != ' ') {
		util_fmt(tag, cap, "*");
		return;
	}
	memcpy(tag, buf, n);
	tag[n] = '\0';
}

static void imapd_cur_tag(struct imapd_sess *s, char *tag, size_t cap)
{
	imapd_tag_of(s->cmd, s->cmd_len, tag, cap);
}

/* Handles one line while IDLE or AUTHENTICATE waits for the client. */
static void imapd_continuation_line(struct imapd_sess *s, const char *line)
{
	if (s->idling) {
		char tag[IMAP_TAG_MAX + 1];
		memcpy(tag, s->idle_tag, sizeof(tag));
		imapd_idle_stop(s);
		if (strcasecmp(line, "DONE") == 0)
			imapd_printf(s, "%s OK IDLE terminated", tag);
		else
			imapd_bad(s, tag, "Expected DONE");
		return;
	}
	s->auth_pending = 0;
	imapd_auth_plain(s, s->auth_tag, line);
}

void imapd_read_cb(struct bufferevent *bev, void *arg)
{
	struct imapd_sess *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (!s->closing && !s->starttls_pending && !s->login_pending && !s->brake_wait &&
	    s->fetch == NULL) {   /* a FETCH still being written holds the next command */
		/* Flow control: a client that sends commands and reads no replies
		 * gets no more work done until it has read them. */
		if (evbuffer_get_length(imapd_out(s)) > IMAPD_OUT_HIGH) {
			s->out_blocked = 1;
			bufferevent_disable(s->bev, EV_READ);
			return;
		}
		if (s->lit_left > 0) {
			size_t avail = evbuffer_get_length(in);
			if (avail == 0)
				return;
			size_t take = avail < s->lit_left ? avail : (size_t)s->lit_left;
			imapd_cmd_reserve(s, take);
			evbuffer_remove(in, s->cmd + s->cmd_len, take);
			s->cmd_len += take;
			s->lit_left -= take;
			continue;
		}
		size_t eol_len = 0;
		struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		if (eol.pos < 0) {
			if (evbuffer_get_length(in) > IMAPD_LINE_MAX) {
				imapd_printf(s, "* BYE Line too long");
				log_event(LOG_LVL_WARN, "imap.line_too_long", "client", s->ip, NULL);
				imapd_close(s);
			}
			return;
		}
		size_t ll = (size_t)eol.pos;
		if (ll > IMAPD_LINE_MAX) {
			imapd_printf(s, "* BYE Line too long");
			imapd_close(s);
			return;
		}
		if (s->idling || s->auth_pending) {
			char *line = xmalloc(ll + 1);
			evbuffer_remove(in, line, ll);
			evbuffer_drain(in, eol_len);
			line[ll] = '\0';
			if (memchr(line, '\0', ll) != NULL)
				line[0] = '\0';
			imapd_continuation_line(s, line);
			OPENSSL_cleanse(line, ll);
			xfree(&line);
			continue;
		}
		size_t limit = imapd_cmd_limit(s, in, ll);
		if (s->cmd_len + ll + 2 > limit) {
			char tag[IMAP_TAG_MAX + 1];
			if (s->cmd_len == 0) {
				char head[IMAP_TAG_MAX + 2];
				ev_ssize_t hn = evbuffer_copyout(in, head, sizeof(head));
				imapd_tag_of(head, hn > 0 ? (size_t)hn : 0, tag, sizeof(tag));
			} else {
				imapd_cur_tag(s, tag, sizeof(tag));
			}
			evbuffer_drain(in, ll + eol_len);
			imapd_cmd_reset(s);
			imapd_bad(s, tag, "Command too long");
			continue;
		}
		imapd_cmd_reserve(s, ll + 2);
		evbuffer_remove(in, s->cmd + s->cmd_len, ll);
		evbuffer_drain(in, eol_len);
		if (memchr(s->cmd + s->cmd_len, '\0', ll) != NULL)
			s->cmd_bad = 1;
		const char *line = s->cmd + s->cmd_len;
		uint64_t lsize = 0;
		int nonsync = 0;
		size_t room = limit - (s->cmd_len + ll + 2);
		int lr = imap_literal_header(line, ll, room, &lsize, &nonsync);
		s->cmd_len += ll;
		memcpy(s->cmd + s->cmd_len, "\r\n", 2);
		s->cmd_len += 2;
		if (lr < 0) {
			char tag[IMAP_TAG_MAX + 1];
			imapd_cur_tag(s, tag, sizeof(tag));
			imapd_cmd_reset(s);
			if (line[ll - 2] == '+' || nonsync) {
				/* the client sends the data anyway: we cannot resync */
				imapd_printf(s, "* BYE Literal too large");
				imapd_close(s);
				return;
			}
			if (s->state == IMAPD_NOAUTH)
				imapd_bad(s, tag, "Literal too large");
			else
				imapd_printf(s, "%s NO [TOOBIG] Literal too large", tag);
			continue;
		}
		if (lr > 0) {
			if (s->cmd_bad) {
				char tag[IMAP_TAG_MAX + 1];
				imapd_cur_tag(s, tag, sizeof(tag));
				imapd_cmd_reset(s);
				if (nonsync) {
					imapd_printf(s, "* BYE NUL in command");
					imapd_close(s);
					return;
				}
				imapd_bad(s, tag, "NUL in command");
				continue;
			}
			s->lit_left = lsize;
			if (!nonsync)
				imapd_printf(s, "+ Ready for literal data");
			if (lsize == 0)
				continue;
			continue;
		}
		/* the command is complete */
		if (s->cmd_bad) {
			char tag[IMAP_TAG_MAX + 1];
			imapd_cur_tag(s, tag, sizeof(tag));
			imapd_cmd_reset(s);
			imapd_bad(s, tag, "NUL in command");
			continue;
		}
		imapd_execute(s, s->cmd, s->cmd_len);
		imapd_cmd_reset(s);
	}
}

/* The tagged OK to STARTTLS is written: TLS on the same socket. What the
 * client sent behind STARTTLS in plaintext goes with the old bufferevent
 * (CVE-2011-0411 class). */
static void imapd_start_tls(struct imapd_sess *s)
{
	int rc = server_conn_starttls(s->conn);

	s->bev = s->conn->bev;
	if (rc < 0) {
		imapd_sess_free(s);
		return;
	}
	s->tls = 1;
	s->starttls_pending = 0;
	imapd_cmd_reset(s);
	imapd_set_timeout(s);
}

void imapd_on_read(void *arg)
{
	struct imapd_sess *s = arg;
	imapd_read_cb(s->bev, s);
}

/* Not called once the session is closing (the skeleton frees it). */
void imapd_on_write(void *arg)
{
	struct imapd_sess *s = arg;
	if (s->fetch != NULL) {
		if (!imapd_fetch_pump(s))
			return;
		/* done: read the next command once the rest is written */
		bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
		s->out_blocked = 1;
	}
	if (evbuffer_get_length(imapd_out(s)) > 0 || s->closing)
		return;
	if (s->starttls_pending) {
		imapd_start_tls(s);
		return;
	}
	if (s->out_blocked) {
		s->out_blocked = 0;
		bufferevent_enable(s->bev, EV_READ);
		imapd_read_cb(s->bev, s);
	}
}

/* EOF, error or timeout of a session that is not closing yet. */
void imapd_on_event(void *arg, short what)
{
	struct imapd_sess *s = arg;
	if (what & BEV_EVENT_TIMEOUT) {
		log_event(LOG_LVL_INFO, "imap.timeout", "client", s->ip, "user", s->user[0] ? s->user : NULL, NULL);
		if (s->fetch == NULL)   /* else it would land inside a literal */
			imapd_printf(s, "* BYE Autologout; idle for too long");
		imapd_close(s);          /* the reply gets 5 s to be written */
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		imapd_sess_free(s);
}

/* A client that trickles bytes keeps resetting the idle timeout; before
 * login the whole session is bounded too, as in pop3d. */
void imapd_on_login_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct imapd_sess *s = arg;

	(void)fd;
	(void)what;
	if (s->state != IMAPD_NOAUTH || s->closing)
		return;
	log_event(LOG_LVL_INFO, "imap.login_timeout", "client", s->ip, NULL);
	if (!s->starttls_pending)
		imapd_printf(s, "* BYE Login timeout");
	imapd_close(s);
}
