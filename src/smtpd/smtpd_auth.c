/* smtpd_auth: SMTP AUTH (PLAIN, LOGIN) in an smtpd worker: where AUTH is
 * offered, the shared brute-force brake (auth/brake.h), the password check
 * off the loop (lookup pool), and fake sender control: the envelope and
 * header senders an authenticated user may use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "lib/log.h"
#include "lib/util.h"
#include "mail/addr.h"
#include "smtpd/smtpd_int.h"

const struct auth_settings *smtpd_auth_settings(struct smtpd_worker *w)
{
	uint64_t now = util_now_ms();
	char *error = NULL;

	if (w->auth_read_ms == 0 || now - w->auth_read_ms >= 1000) {
		struct auth_settings as;
		if (auth_settings_get(w->cfg, &as, &error) == 0)
			w->auth = as;
		else
			log_event(LOG_LVL_ERROR, "auth.settings", "error", error, NULL);
		free(error);
		w->auth_read_ms = now;
	}
	return &w->auth;
}

int smtpd_is_submission(const struct smtpd_session *s)
{
	return s->kind == LISTEN_SUBMISSION || s->kind == LISTEN_SUBMISSIONS;
}

/* AUTH is offered on the submission ports (and the MX port with
 * auth_on_mx), and only inside TLS unless the admin turned tls-only off. */
int smtpd_auth_allowed(struct smtpd_session *s, int *need_tls_r)
{
	const struct auth_settings *as = smtpd_auth_settings(s->w);

	*need_tls_r = 0;
	if (!as->enable || !(smtpd_is_submission(s) || (s->kind == LISTEN_SMTP && s->w->cfg->auth_on_mx)))
		return 0;
	if (as->tls_only && !s->tls) {
		*need_tls_r = 1;
		return 0;
	}
	return 1;
}

struct smtpd_authjob {
	const struct kale_config *cfg;
	struct smtpd_session *s;
	char *user, *pass;
	enum auth_result result;
	char *address, *detail;
};

static void smtpd_authjob_work(void *arg)
{
	struct smtpd_authjob *j = arg;

	j->result = auth_check(j->cfg, j->user, j->pass, &j->address, &j->detail);
}

void smtpd_authjob_free(struct smtpd_authjob *j)
{
	if (j->pass)
		OPENSSL_cleanse(j->pass, strlen(j->pass));
	free(j->user);
	free(j->pass);
	free(j->address);
	free(j->detail);
	free(j);
}

static void smtpd_authjob_done(void *arg, int cancelled);

/* The brake's delay is over: the password is checked now. */
static void smtpd_auth_delay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_session *s = arg;
	struct smtpd_authjob *j = s->auth_delayed;

	(void)fd;
	(void)what;
	s->auth_delayed = NULL;
	if (j == NULL)
		return;
	if (s->state != SMTPD_WAIT || s->w->pool == NULL) {
		brake_end(s->w->ctx->brake, &s->auth_brake, BRAKE_NEUTRAL, brake_now());
		smtpd_authjob_free(j);
		return;
	}
	s->auth_req = lookup_pool_job(s->w->pool, smtpd_authjob_work, smtpd_authjob_done, j);
}

static void smtpd_authjob_done(void *arg, int cancelled)
{
	struct smtpd_authjob *j = arg;
	struct smtpd_session *s = j->s;

	if (!cancelled)
		brake_end(s->w->ctx->brake, &s->auth_brake, j->result == AUTH_OK ? BRAKE_SUCCESS :
		    j->result == AUTH_FAIL ? BRAKE_FAILURE : BRAKE_NEUTRAL, brake_now());
	if (!cancelled && s->state == SMTPD_CLOSING) {
		s->auth_req = 0;           /* shutting down: the 421 is on its way */
	} else if (!cancelled) {
		s->auth_req = 0;
		switch (j->result) {
		case AUTH_OK:
			s->auth_address = j->address;
			j->address = NULL;
			if (s->fs != NULL)
				filter_auth(s->fs, s->auth_address);
			smtpd_reply(s, "235 2.7.0 Authentication successful");
			log_event(LOG_LVL_INFO, "auth.ok", "client", s->ip, "user", s->auth_address,
			    "detail", j->detail, NULL);
			s->state = SMTPD_CMD;
			break;
		case AUTH_FAIL: {
			struct store_log_row row = { 0 };
			s->auth_fails++;
			row.session = s->sid[0] ? s->sid : NULL;
			row.client = s->ip;
			row.rcpt = j->user;
			row.action = "auth-failed";
			row.code = "535 5.7.8";
			row.reason = j->detail;
			store_log_add(s->w->st, &row);
			log_event(LOG_LVL_WARN, "auth.fail", "client", s->ip, "user", j->user,
			    "detail", j->detail, NULL);
			smtpd_reply(s, "535 5.7.8 Authentication credentials invalid");
			if (s->auth_fails >= 3) {
				smtpd_reply(s, "421 4.7.0 Too many failed authentications");
				s->state = SMTPD_CLOSING;
				break;
			}
			/* the next AUTH waits for the brake (smtpd_auth_start) */
			s->state = SMTPD_CMD;
			break;
		}
		default:
			log_event(LOG_LVL_WARN, "auth.tempfail", "client", s->ip, "user", j->user,
			    "detail", j->detail, NULL);
			smtpd_reply(s, "454 4.7.0 Temporary authentication failure");
			s->state = SMTPD_CMD;
			break;
		}
		if (s->state == SMTPD_CMD) {
			bufferevent_enable(s->bev, EV_READ);
			smtpd_process(s);
		} else if (s->state == SMTPD_CLOSING) {
			smtpd_close(s);
		}
	}
	smtpd_authjob_free(j);
}

static void smtpd_auth_start(struct smtpd_session *s, const char *user, const char *pass)
{
	struct smtpd_authjob *j;
	struct brake_params bp;

	/* The brake, shared by every worker, pop3d and imapd: over the limit
	 * the password is not even checked; below it, the check waits. */
	brake_params_conf(s->w->cfg, &bp);
	if (brake_begin(s->w->ctx->brake, &bp, s->ip, user, brake_now(), &s->auth_brake) != BRAKE_GO) {
		brake_log("smtp", s->ip, user, &s->auth_brake, "refuse");
		smtpd_reply(s, "421 4.7.0 Too many failed authentications from your address or for this user, try again later");
		s->state = SMTPD_CLOSING;
		return;
	}
	if (s->w->pool == NULL) {
		brake_end(s->w->ctx->brake, &s->auth_brake, BRAKE_NEUTRAL, brake_now());
		smtpd_reply(s, "454 4.7.0 Temporary authentication failure");
		s->state = SMTPD_CMD;
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->cfg = s->w->cfg;
	j->s = s;
	j->user = xstrdup(user);
	j->pass = xstrdup(pass);
	s->state = SMTPD_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	if (s->auth_brake.delay_ms > 0) {
		struct timeval tv = { s->auth_brake.delay_ms / 1000, (s->auth_brake.delay_ms % 1000) * 1000 };
		brake_log("smtp", s->ip, user, &s->auth_brake, "delay");
		if (s->auth_delay_ev == NULL)
			s->auth_delay_ev = evtimer_new(s->w->base, smtpd_auth_delay_cb, s);
		if (s->auth_delay_ev != NULL) {
			s->auth_delayed = j;
			evtimer_add(s->auth_delay_ev, &tv);
			return;
		}
	}
	s->auth_req = lookup_pool_job(s->w->pool, smtpd_authjob_work, smtpd_authjob_done, j);
}

/* Decodes base64 into a NUL-terminated buffer; -1 on bad input. */
static int smtpd_b64(const char *in, char *out, size_t cap, size_t *len_r)
{
	size_t n = strlen(in), pad = 0;
	int k;

	if (n == 0 || n % 4 != 0 || (n / 4) * 3 + 1 > cap)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = in[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '+' || c == '/' || (c == '=' && i >= n - 2)))
			return -1;
	}
	if (in[n - 1] == '=')
		pad++;
	if (in[n - 2] == '=')
		pad++;
	k = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)in, (int)n);
	if (k < 0)
		return -1;
	*len_r = (size_t)k - pad;
	out[*len_r] = '\0';
	return 0;
}

/* Handles a PLAIN response (base64 of authzid NUL authcid NUL passwd). */
static void smtpd_auth_plain(struct smtpd_session *s, const char *b64)
{
	char buf[1024];
	size_t len;
	const char *authz, *user, *pass;
	size_t l1, l2;

	if (smtpd_b64(b64, buf, sizeof(buf), &len) < 0) {
		smtpd_reply(s, "501 5.5.2 Invalid base64 data");
		s->state = SMTPD_CMD;
		return;
	}
	authz = buf;
	l1 = strnlen(authz, len);
	if (l1 >= len) {
		smtpd_reply(s, "501 5.5.2 Malformed PLAIN response");
		s->state = SMTPD_CMD;
		return;
	}
	user = buf + l1 + 1;
	l2 = strnlen(user, len - l1 - 1);
	if (l1 + 1 + l2 >= len) {
		smtpd_reply(s, "501 5.5.2 Malformed PLAIN response");
		s->state = SMTPD_CMD;
		return;
	}
	pass = user + l2 + 1;
	if (strlen(pass) != len - l1 - l2 - 2 || (*authz && strcmp(authz, user) != 0)) {
		/* embedded NUL in the password, or acting for someone else */
		smtpd_reply(s, "535 5.7.8 Authentication credentials invalid");
		s->state = SMTPD_CMD;
		OPENSSL_cleanse(buf, sizeof(buf));
		return;
	}
	smtpd_auth_start(s, user, pass);
	OPENSSL_cleanse(buf, sizeof(buf));
}

/* A continuation line during AUTH: "*" cancels. */
void smtpd_auth_line(struct smtpd_session *s, const char *line)
{
	char buf[512];
	size_t len;

	if (strcmp(line, "*") == 0) {
		smtpd_reply(s, "501 5.0.0 Authentication cancelled");
		s->state = SMTPD_CMD;
		xfree(&s->auth_login);
		return;
	}
	if (s->auth_mech == 1) {
		smtpd_auth_plain(s, line);
		return;
	}
	if (smtpd_b64(line, buf, sizeof(buf), &len) < 0 || strlen(buf) != len) {
		smtpd_reply(s, "501 5.5.2 Invalid base64 data");
		s->state = SMTPD_CMD;
		xfree(&s->auth_login);
		return;
	}
	if (s->auth_login == NULL) {
		s->auth_login = xstrdup(buf);
		smtpd_reply(s, "334 UGFzc3dvcmQ6");          /* "Password:" */
		return;
	}
	smtpd_auth_start(s, s->auth_login, buf);
	OPENSSL_cleanse(buf, sizeof(buf));
	xfree(&s->auth_login);
}

void smtpd_cmd_auth(struct smtpd_session *s, char *arg)
{
	char *mech = arg, *initial;
	int need_tls;

	if (!smtpd_auth_allowed(s, &need_tls)) {
		if (need_tls)
			smtpd_reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
		else
			smtpd_reply(s, "502 5.5.1 AUTH not available on this port");
		s->errors++;
		return;
	}
	if (!s->helo_done || !s->esmtp) {
		smtpd_reply(s, "503 5.5.1 Send EHLO first");
		return;
	}
	if (s->auth_address) {
		smtpd_reply(s, "503 5.5.1 Already authenticated");
		return;
	}
	if (s->tx.active) {
		smtpd_reply(s, "503 5.5.1 AUTH not allowed during a mail transaction");
		return;
	}
	initial = strchr(mech, ' ');
	if (initial) {
		*initial++ = '\0';
		while (*initial == ' ')
			initial++;
	}
	if (strcasecmp(mech, "PLAIN") == 0) {
		s->auth_mech = 1;
		s->state = SMTPD_AUTH;
		if (initial && *initial) {
			if (strcmp(initial, "=") == 0) {
				smtpd_reply(s, "535 5.7.8 Authentication credentials invalid");
				s->state = SMTPD_CMD;
				return;
			}
			smtpd_auth_line(s, initial);
		} else {
			smtpd_reply(s, "334 ");
		}
	} else if (strcasecmp(mech, "LOGIN") == 0) {
		s->auth_mech = 2;
		s->state = SMTPD_AUTH;
		xfree(&s->auth_login);
		if (initial && *initial)
			smtpd_auth_line(s, initial);
		else
			smtpd_reply(s, "334 VXNlcm5hbWU6");   /* "Username:" */
	} else {
		smtpd_reply(s, "504 5.5.4 Unrecognized authentication mechanism");
		s->errors++;
	}
}

/* An over-long line in the middle of AUTH ends the exchange: the next line
 * is a command again, not more AUTH data. */
void smtpd_auth_abort(struct smtpd_session *s)
{
	if (s->state != SMTPD_AUTH)
		return;
	s->state = SMTPD_CMD;
	s->auth_mech = 0;
	xfree(&s->auth_login);
}


/* ---------- fake sender control ---------- */

/* Fake sender control: the envelope sender must be the user's own address or
 * an alias that delivers to the user. 1 allowed, 0 not, -1 lookup error. */
int smtpd_sender_owned(struct smtpd_session *s, const char *sender)
{
	char **t = NULL;
	char *error = NULL;
	int n, ok = 0;

	if (strcasecmp(sender, s->auth_address) == 0)
		return 1;
	n = store_rcpt_resolve(s->w->st, sender, &t, &error);
	free(error);
	if (n < 0)
		return -1;
	for (int i = 0; i < n; i++)
		if (strcasecmp(t[i], s->auth_address) == 0)
			ok = 1;
	store_targets_free(t, n > 0 ? n : 0);
	return ok;
}

/* Fake sender control for the header (the header scanner has seen the
 * whole header section): at most one From: and one Sender:, each parsed as
 * an RFC 5322 address list, every From: address and the one Sender: address
 * owned by the login. No From: is fine: smtpd_hdr_end has added the login's.
 * 1 allowed, 0 refused with the reply in *reply_r, -1 lookup error. */
int smtpd_header_senders(struct smtpd_session *s, const char **reply_r)
{
	static const struct {
		int kind;
		const char *many, *too_long, *syntax, *count, *owner;
	} f[2] = {
		{ HEADER_FROM, "550 5.7.1 More than one From: header field",
		  "550 5.7.1 From: header field too long",
		  "550 5.7.1 From: header field cannot be parsed",
		  "550 5.7.1 From: header field without an address",
		  "550 5.7.1 From: header address not owned by the authenticated user" },
		{ HEADER_SENDER, "550 5.7.1 More than one Sender: header field",
		  "550 5.7.1 Sender: header field too long",
		  "550 5.7.1 Sender: header field cannot be parsed",
		  "550 5.7.1 Sender: header field must hold exactly one address",
		  "550 5.7.1 Sender: header address not owned by the authenticated user" },
	};
	const struct header_scan *h = s->tx.hs;

	if (h == NULL)
		return -1;         /* cannot check: never let it pass */
	for (int i = 0; i < 2; i++) {
		const struct header_scan_body *b = f[i].kind == HEADER_FROM ? &h->from : &h->sender;
		struct addr_list l;
		const char *err;
		int own = 1;

		if (h->count[f[i].kind] == 0)
			continue;
		if (h->count[f[i].kind] > 1) {
			*reply_r = f[i].many;
			return 0;
		}
		if (b->too_long) {
			*reply_r = f[i].too_long;
			return 0;
		}
		if (addr_parse_list(b->buf, b->len, &l, &err) < 0) {
			log_event(LOG_LVL_INFO, "smtp.header", "qid", s->tx.qid, "client", s->ip, "field",
			    f[i].kind == HEADER_FROM ? "From" : "Sender", "error", err, NULL);
			*reply_r = f[i].syntax;
			return 0;
		}
		if (l.n == 0 || (f[i].kind == HEADER_SENDER && l.n != 1)) {
			addr_list_free(&l);
			*reply_r = f[i].count;
			return 0;
		}
		for (size_t k = 0; k < l.n && own == 1; k++)
			own = smtpd_sender_owned(s, l.addr[k]);
		addr_list_free(&l);
		if (own < 0)
			return -1;
		if (own == 0) {
			*reply_r = f[i].owner;
			return 0;
		}
	}
	return 1;
}
