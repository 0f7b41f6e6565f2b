/* imapd_auth: the not-authenticated state of an imapd session: CAPABILITY,
 * ID, ENABLE, STARTTLS, LOGIN, AUTHENTICATE PLAIN, LOGOUT, and the glue to
 * the brute-force brake shared with smtpd and pop3d (src/auth/brake.h).
 * Password checks run on the lookup thread pool, off the loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/util.h"
#include "store/store.h"
#include "lookup/lookup.h"
#include "auth/brake.h"

void imapd_capability(struct imapd_sess *s, struct evbuffer *o)
{
	evbuffer_add_printf(o, "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE "
	    "SPECIAL-USE UNSELECT CHILDREN");
	if (s->state == IMAPD_NOAUTH) {
		if (!s->tls && s->can_starttls)
			evbuffer_add_printf(o, " STARTTLS");
		if (!s->tls && !s->d->ctx->cfg->mailbox_plaintext_auth)
			evbuffer_add_printf(o, " LOGINDISABLED");
		else
			evbuffer_add_printf(o, " AUTH=PLAIN");
	}
}

static void imapd_maillog(struct imapd_sess *s, const char *user, const char *action, const char *reason)
{
	struct store_log_row row;
	memset(&row, 0, sizeof(row));
	row.client = s->ip;
	row.rcpt = user;
	row.action = action;
	row.reason = reason;
	row.relay = s->tls ? "imap/tls" : "imap";
	if (s->d->st != NULL) {
		store_log_add(s->d->st, &row);
		store_log_flush(s->d->st);
	}
}

void imapd_cmd_capability(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	evbuffer_add_printf(imapd_out(s), "* CAPABILITY ");
	imapd_capability(s, imapd_out(s));
	evbuffer_add(imapd_out(s), "\r\n", 2);
	imapd_printf(s, "%s OK CAPABILITY completed", c->tag);
}

void imapd_cmd_logout(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* BYE Logging out");
	imapd_printf(s, "%s OK LOGOUT completed", c->tag);
	imapd_close(s);
}

void imapd_cmd_id(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* ID (\"name\" \"kale\")");
	imapd_printf(s, "%s OK ID completed", c->tag);
}

void imapd_cmd_enable(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* ENABLED");
	imapd_printf(s, "%s OK ENABLE completed", c->tag);
}

void imapd_cmd_starttls(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (s->tls || !s->can_starttls || s->d->ctx->tls == NULL) {
		imapd_bad(s, c->tag, "STARTTLS not available");
		return;
	}
	imapd_printf(s, "%s OK Begin TLS negotiation now", c->tag);
	s->starttls_pending = 1;
	/* anything the client sent behind STARTTLS is discarded, now and at
	 * the switch (CVE-2011-0411 class) */
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
}

/* Second half of LOGIN / AUTHENTICATE PLAIN, once the password check has
 * answered: r is 1 right, 0 wrong, -1 store error. */
static void imapd_login_finish(struct imapd_sess *s, const char *tag, const char *addr, int r)
{
	brake_end(s->d->ctx->brake, &s->brake, r > 0 ? BRAKE_SUCCESS : r == 0 ? BRAKE_FAILURE :
	    BRAKE_NEUTRAL, brake_now());
	if (r < 0) {
		imapd_printf(s, "%s NO [UNAVAILABLE] Temporary authentication failure", tag);
		log_event(LOG_LVL_ERROR, "imap.auth_error", "user", addr, "client", s->ip, NULL);
		return;
	}
	if (r == 0) {
		s->bad_logins++;
		log_event(LOG_LVL_WARN, "imap.login_failed", "user", addr, "client", s->ip, NULL);
		imapd_maillog(s, addr, "login-failed", "authentication failed");
		imapd_printf(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed", tag);
		goto check;
	}
	const char *err;
	if (deliver_mailbox_path("mail", addr, s->root, sizeof(s->root)) < 0 ||
	    imap_folder_init_user(s->root, &err) < 0) {
		imapd_printf(s, "%s NO [SERVERBUG] Cannot open the mailbox", tag);
		log_event(LOG_LVL_ERROR, "imap.mailbox_error", "user", addr, NULL);
		return;
	}
	(void)util_fmt(s->user, sizeof(s->user), "%s", addr);
	s->state = IMAPD_AUTH;
	imapd_set_timeout(s);
	log_event(LOG_LVL_INFO, "imap.login", "user", addr, "client", s->ip, "tls", s->tls ? "yes" : "no", NULL);
	imapd_maillog(s, addr, "login", NULL);
	evbuffer_add_printf(imapd_out(s), "%s OK [CAPABILITY ", tag);
	imapd_capability(s, imapd_out(s));
	evbuffer_add_printf(imapd_out(s), "] Logged in\r\n");
	return;
check:
	if (s->bad_logins >= IMAPD_MAX_BAD_LOGINS) {
		imapd_printf(s, "* BYE Too many failed logins");
		imapd_close(s);
	}
}

/* A password check on the lookup thread pool: yescrypt costs tens of
 * milliseconds, which must not stall every other session of this process. */
struct imapd_login_job {
	const struct kale_config *cfg;
	struct imapd_sess *s;
	char tag[IMAP_TAG_MAX + 1];
	char addr[320];
	char *pass;
	int result;
};

static void imapd_login_work(void *arg)
{
	struct imapd_login_job *j = arg;

	j->result = store_user_check_password_once(j->cfg, j->addr, j->pass);
}

static void imapd_login_job_done(void *arg, int cancelled)
{
	struct imapd_login_job *j = arg;
	struct imapd_sess *s = j->s;

	if (!cancelled) {
		s->login_pending = 0;
		s->login_req = 0;
		imapd_login_finish(s, j->tag, j->addr, j->result);
	}
	OPENSSL_cleanse(j->pass, strlen(j->pass));
	free(j->pass);
	free(j);
	if (!cancelled && !s->closing)
		imapd_read_cb(s->bev, s);     /* go on with what the client pipelined */
}

static void imapd_login_check(struct imapd_sess *s, const char *tag, const char *user, const char *pass)
{
	char addr[320];
	if (util_fmt(addr, sizeof(addr), "%s", user) < 0 || strchr(addr, '@') == NULL) {
		brake_end(s->d->ctx->brake, &s->brake, BRAKE_FAILURE, brake_now());
		s->bad_logins++;
		imapd_maillog(s, NULL, "login-failed", "invalid user name");
		imapd_printf(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed", tag);
		if (s->bad_logins >= IMAPD_MAX_BAD_LOGINS) {
			imapd_printf(s, "* BYE Too many failed logins");
			imapd_close(s);
		}
		return;
	}
	util_lower(addr);
	if (s->d->pool != NULL) {
		struct imapd_login_job *j = xcalloc(1, sizeof(*j));
		j->cfg = s->d->ctx->cfg;
		j->s = s;
		(void)util_fmt(j->tag, sizeof(j->tag), "%s", tag);
		(void)util_fmt(j->addr, sizeof(j->addr), "%s", addr);
		j->pass = xstrdup(pass);
		s->login_pending = 1;
		s->login_req = lookup_pool_job(s->d->pool, imapd_login_work, imapd_login_job_done, j);
		return;
	}
	imapd_login_finish(s, tag, addr,
	    s->d->st != NULL ? store_user_check_password(s->d->st, addr, pass) : -1);
}

/* The brake's delay is over: the password is checked now. */
static void imapd_brake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct imapd_sess *s = arg;

	(void)fd;
	(void)what;
	s->brake_wait = 0;
	if (s->closing)
		brake_end(s->d->ctx->brake, &s->brake, BRAKE_NEUTRAL, brake_now());
	else
		imapd_login_check(s, s->brake_tag, s->brake_user, s->brake_pass);
	OPENSSL_cleanse(s->brake_pass, strlen(s->brake_pass));
	xfree(&s->brake_pass);
	xfree(&s->brake_user);
	if (!s->closing)
		bufferevent_enable(s->bev, EV_READ);
	if (!s->closing && !s->login_pending)
		imapd_read_cb(s->bev, s);     /* go on with what the client pipelined */
}

/* LOGIN / AUTHENTICATE PLAIN: the brute-force brake shared with smtpd and
 * pop3d first (over its limit the password is not checked at all), then
 * the check, after the brake's delay if there is one. */
static void imapd_login_done(struct imapd_sess *s, const char *tag, const char *user, const char *pass)
{
	struct brake_params bp;

	brake_params_conf(s->d->ctx->cfg, &bp);
	if (brake_begin(s->d->ctx->brake, &bp, s->ip, user, brake_now(), &s->brake) != BRAKE_GO) {
		brake_log("imap", s->ip, user, &s->brake, "refuse");
		imapd_maillog(s, NULL, "login-failed", "too many failed logins");
		imapd_printf(s, "%s NO [UNAVAILABLE] Too many failed logins, try again later", tag);
		if (++s->bad_logins >= IMAPD_MAX_BAD_LOGINS) {
			imapd_printf(s, "* BYE Too many failed logins");
			imapd_close(s);
		}
		return;
	}
	if (s->brake.delay_ms > 0) {
		struct timeval tv = { s->brake.delay_ms / 1000, (s->brake.delay_ms % 1000) * 1000 };
		if (s->brake_ev == NULL)
			s->brake_ev = evtimer_new(s->d->base, imapd_brake_cb, s);
		if (s->brake_ev != NULL) {
			brake_log("imap", s->ip, user, &s->brake, "delay");
			(void)util_fmt(s->brake_tag, sizeof(s->brake_tag), "%s", tag);
			s->brake_user = xstrdup(user);
			s->brake_pass = xstrdup(pass);
			s->brake_wait = 1;
			bufferevent_disable(s->bev, EV_READ);   /* no input piles up meanwhile */
			evtimer_add(s->brake_ev, &tv);
			return;
		}
	}
	imapd_login_check(s, tag, user, pass);
}

static int imapd_plaintext_ok(struct imapd_sess *s, const char *tag)
{
	if (s->tls || s->d->ctx->cfg->mailbox_plaintext_auth)
		return 1;
	imapd_printf(s, "%s NO [PRIVACYREQUIRED] Use STARTTLS or TLS first", tag);
	return 0;
}

void imapd_cmd_login(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (!imapd_plaintext_ok(s, c->tag))
		return;
	const char *u = imapd_arg_cstr(c, 0), *p = imapd_arg_cstr(c, 1);
	if (c->n_args != 2 || u == NULL || p == NULL) {
		imapd_bad(s, c->tag, "LOGIN needs a user name and a password");
		return;
	}
	imapd_login_done(s, c->tag, u, p);
}

/* Strict base64 decoding; -1 on any bad input. */
static int imapd_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap, size_t *len_r)
{
	static const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	if (n % 4 != 0)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			char ch = in[i + k];
			if (ch == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || ch == '\0')
				return -1;
			const char *q = strchr(tab, ch);
			if (q == NULL)
				return -1;
			v[k] = (int)(q - tab);
		}
		unsigned long w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
		    ((unsigned long)v[2] << 6) | (unsigned long)v[3];
		for (int k = 0; k < 3 - pad; k++) {
			if (o >= cap)
				return -1;
			out[o++] = (unsigned char)(w >> (16 - 8 * k));
		}
	}
	*len_r = o;
	return 0;
}

void imapd_auth_plain(struct imapd_sess *s, const char *tag, const char *b64)
{
	unsigned char buf[1024];
	size_t n;
	if (strcmp(b64, "*") == 0) {
		imapd_bad(s, tag, "Authentication cancelled");
		return;
	}
	if (imapd_b64_decode(b64, strlen(b64), buf, sizeof(buf) - 1, &n) < 0) {
		imapd_bad(s, tag, "Invalid base64");
		return;
	}
	buf[n] = '\0';
	/* authzid NUL authcid NUL password */
	unsigned char *z1 = memchr(buf, '\0', n);
	unsigned char *z2 = z1 != NULL ? memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - buf)) : NULL;
	if (z1 == NULL || z2 == NULL || memchr(z2 + 1, '\0', n - (size_t)(z2 + 1 - buf)) != NULL) {
		imapd_bad(s, tag, "Malformed PLAIN response");
		return;
	}
	const char *authz = (const char *)buf, *authc = (const char *)z1 + 1, *pass = (const char *)z2 + 1;
	if (authz[0] != '\0' && strcasecmp(authz, authc) != 0) {
		imapd_printf(s, "%s NO [AUTHORIZATIONFAILED] Authorization identity not allowed", tag);
		return;
	}
	imapd_login_done(s, tag, authc, pass);
	OPENSSL_cleanse(buf, sizeof(buf));
}

void imapd_cmd_authenticate(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *mech = imapd_arg_cstr(c, 0);
	if (mech == NULL || c->n_args > 2) {
		imapd_bad(s, c->tag, "AUTHENTICATE needs a mechanism");
		return;
	}
	if (strcasecmp(mech, "PLAIN") != 0) {
		imapd_printf(s, "%s NO Unsupported authentication mechanism", c->tag);
		return;
	}
	if (!imapd_plaintext_ok(s, c->tag))
		return;
	if (c->n_args == 2) {
		const char *ir = imapd_arg_cstr(c, 1);
		if (ir == NULL) {
			imapd_bad(s, c->tag, "Bad initial response");
			return;
		}
		imapd_auth_plain(s, c->tag, strcmp(ir, "=") == 0 ? "" : ir);
		return;
	}
	s->auth_pending = 1;
	memcpy(s->auth_tag, c->tag, sizeof(s->auth_tag));
	imapd_printf(s, "+ ");
}
