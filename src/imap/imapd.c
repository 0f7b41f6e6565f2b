/* imapd: the IMAP4rev1 server (RFC 3501 + IDLE, UIDPLUS, LITERAL+, NAMESPACE,
 * ID, ENABLE, MOVE, SPECIAL-USE, UNSELECT) over the local users' Maildirs.
 * One process forked by the master, already running as run_as in data_dir;
 * a libevent loop serves every session. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
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
#include "deliver/deliver.h"
#include "imap/imap_cache.h"
#include "imap/imap_fetch.h"
#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imapd.h"
#include "lib/log.h"
#include "lib/util.h"
#include "mail/mime.h"
#include "master/kaled.h"
#include "store/store.h"
#include "lookup/lookup.h"
#include "auth/brake.h"

#define IMAPD_LINE_MAX        65536            /* one command line */
#define IMAPD_OUT_HIGH        (256 * 1024)     /* queued output that stops command reading */
#define IMAPD_OUT_LOW         (64 * 1024)      /* a FETCH being written is resumed below this */
#define IMAPD_STREAM_CHUNK    (64 * 1024)      /* literal bytes read from a file at a time */
#define IMAPD_CMD_MAX_PREAUTH 8192             /* a whole command before login */
#define IMAPD_CMD_MAX         (1024 * 1024)    /* a whole command after login */
#define IMAPD_MAX_ERRORS      20
#define IMAPD_MAX_BAD_LOGINS  3
#define IMAPD_AUTH_TIMEOUT    1800             /* RFC 3501 autologout: 30 min */
#define IMAPD_SHUTDOWN_SECS   8

enum imapd_state { IMAPD_NOAUTH = 1, IMAPD_AUTH = 2, IMAPD_SELECTED = 4 };

struct imapd;

struct imapd_sess {
	struct imapd *d;
	struct imapd_sess *next, *prev;
	struct bufferevent *bev;
	char ip[64];
	int tls, can_starttls;
	enum imapd_state state;
	char user[320];
	char root[4096];
	/* selected folder */
	struct imap_mbox mb;
	char mbname[256];
	int readonly;
	/* command assembly */
	char *cmd;
	size_t cmd_len, cmd_cap;
	uint64_t lit_left;
	int cmd_bad;              /* NUL seen: answer BAD when complete */
	/* continuation states */
	int idling;
	char idle_tag[IMAP_TAG_MAX + 1];
	int ino_fd;
	struct event *ino_ev;
	struct event *poll_ev;
	int auth_pending;
	char auth_tag[IMAP_TAG_MAX + 1];
	int starttls_pending;
	int login_pending;        /* password check running on the pool */
	int out_blocked;          /* output above IMAPD_OUT_HIGH: commands wait */
	struct imapd_fetch *fetch; /* a FETCH still being written: commands wait */
	uint64_t login_req;
	int closing;
	struct event *close_ev;
	struct event *login_deadline;  /* not authenticated: at most 2 x command_timeout */
	int errors, bad_logins;
	/* the brute-force brake: a login waiting for its delay */
	struct brake_ticket brake;
	int brake_wait;
	struct event *brake_ev;
	char brake_tag[IMAP_TAG_MAX + 1];
	char *brake_user, *brake_pass;
};

struct imapd {
	struct kale_ctx *ctx;
	struct event_base *base;
	store *st;
	struct evconnlistener *lis[32];
	int n_lis;
	struct imapd_sess *sessions;
	int n_sessions;
	struct lookup_pool *pool;   /* password checks off the loop */
	int shutting_down;
	struct event *sig_term, *sig_int, *shutdown_timer;
};

static void imapd_read_cb(struct bufferevent *bev, void *arg);
static void imapd_write_cb(struct bufferevent *bev, void *arg);
static void imapd_event_cb(struct bufferevent *bev, short what, void *arg);
static void imapd_sess_free(struct imapd_sess *s);
struct imapd_fetch;
static void imapd_fetch_free(struct imapd_fetch **jp);
static int imapd_fetch_pump(struct imapd_sess *s);

/* ---- output ---- */

static struct evbuffer *imapd_out(struct imapd_sess *s)
{
	return bufferevent_get_output(s->bev);
}

static void imapd_printf(struct imapd_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void imapd_printf(struct imapd_sess *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(imapd_out(s), fmt, ap);
	va_end(ap);
	evbuffer_add(imapd_out(s), "\r\n", 2);
}

static void imapd_close_cb(evutil_socket_t fd, short what, void *arg)
{
	struct imapd_sess *s = arg;
	(void)fd;
	(void)what;
	/* after STARTTLS the TLS filter writes into the socket bufferevent
	 * below it: wait until that is flushed too */
	struct bufferevent *under = bufferevent_get_underlying(s->bev);
	if (evbuffer_get_length(imapd_out(s)) > 0 ||
	    (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) > 0)) {
		struct timeval tv = { 0, 20000 };
		evtimer_add(s->close_ev, &tv);
		return;
	}
	imapd_sess_free(s);
}

/* Closes once the output is written; never frees synchronously. */
static void imapd_close(struct imapd_sess *s)
{
	s->closing = 1;
	bufferevent_disable(s->bev, EV_READ);
	if (s->close_ev == NULL) {
		struct timeval tv = { 0, 0 };
		s->close_ev = evtimer_new(s->d->base, imapd_close_cb, s);
		evtimer_add(s->close_ev, &tv);
	}
	/* a client that never reads cannot hold the session forever */
	struct timeval wt = { 5, 0 };
	bufferevent_set_timeouts(s->bev, NULL, &wt);
}

static void imapd_bad(struct imapd_sess *s, const char *tag, const char *text)
{
	imapd_printf(s, "%s BAD %s", tag, text);
	if (++s->errors >= IMAPD_MAX_ERRORS) {
		imapd_printf(s, "* BYE Too many errors");
		log_event(LOG_LVL_WARN, "imap.too_many_errors", "client", s->ip, NULL);
		imapd_close(s);
	}
}

static const char *imapd_flag_names[] = { "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent" };

static void imapd_write_flags(struct evbuffer *o, unsigned flags)
{
	evbuffer_add(o, "(", 1);
	int first = 1;
	for (int i = 0; i < 6; i++)
		if (flags & (1u << i)) {
			if (!first)
				evbuffer_add(o, " ", 1);
			evbuffer_add(o, imapd_flag_names[i], strlen(imapd_flag_names[i]));
			first = 0;
		}
	evbuffer_add(o, ")", 1);
}

static void imapd_capability(struct imapd_sess *s, struct evbuffer *o)
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

/* ---- session lifetime ---- */

static void imapd_idle_stop(struct imapd_sess *s)
{
	if (s->ino_ev != NULL)
		event_free(s->ino_ev);
	s->ino_ev = NULL;
	if (s->poll_ev != NULL)
		event_free(s->poll_ev);
	s->poll_ev = NULL;
	if (s->ino_fd >= 0)
		close(s->ino_fd);
	s->ino_fd = -1;
	s->idling = 0;
}

static void imapd_unselect(struct imapd_sess *s)
{
	imap_mbox_msgs_free(s->mb.msgs, s->mb.n);
	s->mb.msgs = NULL;
	s->mb.n = 0;
	xfree(&s->mb.path);
	s->mbname[0] = '\0';
	if (s->state == IMAPD_SELECTED)
		s->state = IMAPD_AUTH;
}

static void imapd_sess_free(struct imapd_sess *s)
{
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
	if (s->close_ev != NULL)
		event_free(s->close_ev);
	if (s->login_deadline != NULL)
		event_free(s->login_deadline);
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	xfree(&s->cmd);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		d->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	d->n_sessions--;
	xfree(&s);
	if (d->shutting_down && d->n_sessions == 0)
		event_base_loopexit(d->base, NULL);
}

static void imapd_set_timeout(struct imapd_sess *s)
{
	int secs = s->d->ctx->cfg->command_timeout > 0 ? s->d->ctx->cfg->command_timeout : 300;
	if (s->state != IMAPD_NOAUTH && secs < IMAPD_AUTH_TIMEOUT)
		secs = IMAPD_AUTH_TIMEOUT;
	struct timeval tv = { secs, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &tv);
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

/* ---- mailbox synchronisation ---- */

/* Rescans the selected folder and tells the client what changed: EXPUNGE
 * (only if allow_expunge), FETCH FLAGS, EXISTS, RECENT. */
static int imapd_sync(struct imapd_sess *s, int allow_expunge)
{
	struct imap_mbox nm;
	const char *err;
	size_t recent = 0;
	memset(&nm, 0, sizeof(nm));
	nm.path = s->mb.path;
	if (imap_mbox_scan(&nm, &recent, &err) < 0) {
		log_event(LOG_LVL_WARN, "imap.sync_failed", "user", s->user, "error", err, NULL);
		return -1;
	}
	struct evbuffer *o = imapd_out(s);
	struct imap_msg *old = s->mb.msgs;
	size_t on = s->mb.n;
	/* merge by uid: both lists are sorted */
	struct imap_msg *res = xcalloc(nm.n + on + 1, sizeof(*res));
	size_t rn = 0, i = 0, j = 0;
	size_t seq = 0;
	while (i < on) {
		while (j < nm.n && nm.msgs[j].uid < old[i].uid)
			j++;  /* a new file with a lower uid cannot happen; skip it */
		if (j < nm.n && nm.msgs[j].uid == old[i].uid) {
			struct imap_msg *m = &nm.msgs[j];
			unsigned keep = old[i].flags & IMAP_FL_RECENT;
			seq++;
			if ((m->flags & IMAP_FL_STORED) != (old[i].flags & IMAP_FL_STORED)) {
				evbuffer_add_printf(o, "* %zu FETCH (FLAGS ", seq);
				imapd_write_flags(o, m->flags | keep);
				evbuffer_add(o, ")\r\n", 3);
			}
			m->flags |= keep;
			if (old[i].size >= 0)
				m->size = old[i].size;
			if (old[i].idate != 0)
				m->idate = old[i].idate;
			res[rn++] = *m;
			memset(m, 0, sizeof(*m));
			imap_msg_free(&old[i]);
			i++;
			j++;
		} else if (allow_expunge) {
			evbuffer_add_printf(o, "* %zu EXPUNGE\r\n", seq + 1);
			imap_msg_free(&old[i]);
			i++;
		} else {
			/* keep the vanished message until an EXPUNGE may be sent */
			seq++;
			res[rn++] = old[i];
			memset(&old[i], 0, sizeof(old[i]));
			i++;
		}
	}
	uint32_t last = rn > 0 ? res[rn - 1].uid : 0;
	size_t added = 0;
	for (j = 0; j < nm.n; j++) {
		if (nm.msgs[j].base == NULL || nm.msgs[j].uid <= last)
			continue;
		res[rn++] = nm.msgs[j];
		memset(&nm.msgs[j], 0, sizeof(nm.msgs[j]));
		added++;
	}
	/* the files this session moved out of new/ are its \Recent ones */
	for (size_t k = 0; k < recent && k < added; k++)
		res[rn - 1 - k].flags |= IMAP_FL_RECENT;
	imap_mbox_msgs_free(nm.msgs, nm.n);
	xfree(&old);
	s->mb.msgs = res;
	s->mb.n = rn;
	s->mb.uidvalidity = nm.uidvalidity;
	s->mb.uidnext = nm.uidnext;
	if (added > 0 || allow_expunge == 2) {
		size_t r = 0;
		for (size_t k = 0; k < rn; k++)
			if (res[k].flags & IMAP_FL_RECENT)
				r++;
		evbuffer_add_printf(o, "* %zu EXISTS\r\n* %zu RECENT\r\n", rn, r);
	}
	return 0;
}

/* ---- helpers for commands ---- */

static const char *imapd_arg_cstr(const struct imap_cmd *c, size_t i)
{
	if (i >= c->n_args)
		return NULL;
	return imap_arg_str(&c->args[i]);
}

static int imapd_folder(struct imapd_sess *s, const char *name, char *path, size_t cap)
{
	return imap_folder_path(s->root, name, path, cap);
}

static int imapd_flag_parse(const struct imap_arg *a, unsigned *flags)
{
	static const struct { const char *n; unsigned f; } fl[] = {
		{ "\\Seen", IMAP_FL_SEEN }, { "\\Answered", IMAP_FL_ANSWERED }, { "\\Flagged", IMAP_FL_FLAGGED },
		{ "\\Deleted", IMAP_FL_DELETED }, { "\\Draft", IMAP_FL_DRAFT },
	};
	if (a->type != IMAP_ARG_ATOM)
		return -1;
	for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++)
		if (strcasecmp(a->s, fl[i].n) == 0) {
			*flags |= fl[i].f;
			return 0;
		}
	if (a->s[0] == '\\')
		return -1;  /* \Recent and unknown system flags cannot be stored */
	return 0;      /* keywords are accepted and not kept */
}

static int imapd_flags_arg(const struct imap_arg *a, unsigned *flags)
{
	*flags = 0;
	if (a->type == IMAP_ARG_LIST) {
		for (size_t i = 0; i < a->n; i++)
			if (imapd_flag_parse(&a->list[i], flags) < 0)
				return -1;
		return 0;
	}
	return imapd_flag_parse(a, flags);
}

/* Message set to index list: by sequence number or UID. */
static int imapd_set(struct imapd_sess *s, const char *spec, int uid, struct imap_seqset *set)
{
	uint32_t star = uid ? (s->mb.n > 0 ? s->mb.msgs[s->mb.n - 1].uid : 0) : (uint32_t)s->mb.n;
	if (uid && s->mb.n == 0)
		star = s->mb.uidnext > 0 ? s->mb.uidnext - 1 : 0;
	return imap_seqset_parse(spec, star, set);
}

static int imapd_in_set(struct imapd_sess *s, const struct imap_seqset *set, size_t i, int uid)
{
	return imap_seqset_has(set, uid ? s->mb.msgs[i].uid : (uint32_t)(i + 1));
}

/* ---- the commands ---- */

static void imapd_cmd_capability(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	evbuffer_add_printf(imapd_out(s), "* CAPABILITY ");
	imapd_capability(s, imapd_out(s));
	evbuffer_add(imapd_out(s), "\r\n", 2);
	imapd_printf(s, "%s OK CAPABILITY completed", c->tag);
}

static void imapd_cmd_noop(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (s->state == IMAPD_SELECTED)
		imapd_sync(s, 1);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

static void imapd_cmd_logout(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* BYE Logging out");
	imapd_printf(s, "%s OK LOGOUT completed", c->tag);
	imapd_close(s);
}

static void imapd_cmd_id(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* ID (\"name\" \"kale\")");
	imapd_printf(s, "%s OK ID completed", c->tag);
}

static void imapd_cmd_enable(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* ENABLED");
	imapd_printf(s, "%s OK ENABLE completed", c->tag);
}

static void imapd_cmd_namespace(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* NAMESPACE ((\"\" \".\")) NIL NIL");
	imapd_printf(s, "%s OK NAMESPACE completed", c->tag);
}

static void imapd_cmd_starttls(struct imapd_sess *s, struct imap_cmd *c, int uid)
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
	snprintf(s->user, sizeof(s->user), "%s", addr);
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
		snprintf(j->tag, sizeof(j->tag), "%s", tag);
		snprintf(j->addr, sizeof(j->addr), "%s", addr);
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
			snprintf(s->brake_tag, sizeof(s->brake_tag), "%s", tag);
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

static void imapd_cmd_login(struct imapd_sess *s, struct imap_cmd *c, int uid)
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

static void imapd_auth_plain(struct imapd_sess *s, const char *tag, const char *b64)
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

static void imapd_cmd_authenticate(struct imapd_sess *s, struct imap_cmd *c, int uid)
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

static void imapd_cmd_select(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0);
	char path[4096];
	imapd_unselect(s);
	if (name == NULL || c->n_args < 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	s->mb.path = xstrdup(path);
	s->readonly = strcmp(c->name, "EXAMINE") == 0;
	struct evbuffer *o = imapd_out(s);
	/* the sync writes EXISTS and RECENT (allow_expunge 2 forces them) */
	if (imapd_sync(s, 2) < 0) {
		imapd_unselect(s);
		imapd_printf(s, "%s NO [SERVERBUG] Cannot open the mailbox", c->tag);
		return;
	}
	if (strcasecmp(name, "INBOX") == 0)
		util_fmt(s->mbname, sizeof(s->mbname), "INBOX");
	else
		util_fmt(s->mbname, sizeof(s->mbname), "%s", name);
	s->state = IMAPD_SELECTED;
	evbuffer_add_printf(o, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n");
	evbuffer_add_printf(o, "* OK [PERMANENTFLAGS (%s)] Flags permitted\r\n",
	    s->readonly ? "" : "\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*");
	for (size_t i = 0; i < s->mb.n; i++)
		if (!(s->mb.msgs[i].flags & IMAP_FL_SEEN)) {
			evbuffer_add_printf(o, "* OK [UNSEEN %zu] First unseen\r\n", i + 1);
			break;
		}
	evbuffer_add_printf(o, "* OK [UIDVALIDITY %u] UIDs valid\r\n", s->mb.uidvalidity);
	evbuffer_add_printf(o, "* OK [UIDNEXT %u] Predicted next UID\r\n", s->mb.uidnext);
	imapd_printf(s, "%s OK [%s] %s completed", c->tag, s->readonly ? "READ-ONLY" : "READ-WRITE", c->name);
}

static void imapd_cmd_create(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	if (name == NULL || c->n_args != 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	char tmp[256];
	/* a trailing delimiter only says the client wants to make children */
	if (util_fmt(tmp, sizeof(tmp), "%s", name) < 0) {
		imapd_printf(s, "%s NO Mailbox name too long", c->tag);
		return;
	}
	size_t l = strlen(tmp);
	if (l > 1 && tmp[l - 1] == '.')
		tmp[l - 1] = '\0';
	if (imap_folder_create(s->root, tmp, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK CREATE completed", c->tag);
}

static void imapd_cmd_delete(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	if (name == NULL || c->n_args != 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(name, s->mbname) == 0)
		imapd_unselect(s);
	if (imap_folder_delete(s->root, name, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK DELETE completed", c->tag);
}

static void imapd_cmd_rename(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *a = imapd_arg_cstr(c, 0), *b = imapd_arg_cstr(c, 1), *err;
	if (a == NULL || b == NULL || c->n_args != 2) {
		imapd_bad(s, c->tag, "RENAME needs two mailbox names");
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(a, s->mbname) == 0)
		imapd_unselect(s);
	if (imap_folder_rename(s->root, a, b, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK RENAME completed", c->tag);
}

static void imapd_cmd_subscribe(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	if (name == NULL || c->n_args != 1 || (strcasecmp(name, "INBOX") != 0 && imap_mailbox_name_ok(name) < 0)) {
		imapd_bad(s, c->tag, "Invalid mailbox name");
		return;
	}
	int sub = strcmp(c->name, "SUBSCRIBE") == 0;
	if (sub && (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path))) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	if (imap_subs_set(s->root, strcasecmp(name, "INBOX") == 0 ? "INBOX" : name, sub, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

static void imapd_list_one(struct imapd_sess *s, const char *verb, const char *name, char **all, size_t n_all, int exists)
{
	struct evbuffer *o = imapd_out(s);
	size_t nl = strlen(name);
	int children = 0;
	for (size_t i = 0; i < n_all; i++)
		if (strncmp(all[i], name, nl) == 0 && all[i][nl] == '.')
			children = 1;
	evbuffer_add_printf(o, "* %s (%s%s", verb, exists ? "" : "\\NonExistent ",
	    children ? "\\HasChildren" : "\\HasNoChildren");
	const char *su = imap_folder_special_use(name);
	if (su != NULL)
		evbuffer_add_printf(o, " %s", su);
	evbuffer_add_printf(o, ") \".\" ");
	imap_write_cstring(o, name);
	evbuffer_add(o, "\r\n", 2);
}

static void imapd_cmd_list(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *ref = imapd_arg_cstr(c, 0), *pat = imapd_arg_cstr(c, 1);
	if (ref == NULL || pat == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "LIST needs a reference and a pattern");
		return;
	}
	int lsub = strcmp(c->name, "LSUB") == 0;
	if (pat[0] == '\0') {
		if (!lsub)
			imapd_printf(s, "* LIST (\\Noselect) \".\" \"\"");
		imapd_printf(s, "%s OK %s completed", c->tag, c->name);
		return;
	}
	char full[1024];
	if (util_fmt(full, sizeof(full), "%s%s", ref, pat) < 0) {
		imapd_bad(s, c->tag, "Pattern too long");
		return;
	}
	if (strncasecmp(full, "INBOX", 5) == 0)
		memcpy(full, "INBOX", 5);
	char **all, **subs = NULL;
	size_t n_all, n_subs = 0;
	imap_folder_list(s->root, &all, &n_all);
	if (lsub) {
		imap_subs_list(s->root, &subs, &n_subs);
		for (size_t i = 0; i < n_subs; i++) {
			if (!imap_list_match(full, subs[i]))
				continue;
			int exists = 0;
			for (size_t k = 0; k < n_all; k++)
				if (strcmp(all[k], subs[i]) == 0)
					exists = 1;
			imapd_list_one(s, "LSUB", subs[i], all, n_all, exists);
		}
	} else {
		for (size_t i = 0; i < n_all; i++)
			if (imap_list_match(full, all[i]))
				imapd_list_one(s, "LIST", all[i], all, n_all, 1);
	}
	imap_names_free(all, n_all);
	imap_names_free(subs, n_subs);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

static void imapd_cmd_status(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	if (name == NULL || c->n_args != 2 || c->args[1].type != IMAP_ARG_LIST) {
		imapd_bad(s, c->tag, "STATUS needs a mailbox and a list");
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	struct imap_mbox mb;
	size_t recent = 0;
	memset(&mb, 0, sizeof(mb));
	mb.path = path;
	if (imap_mbox_scan(&mb, &recent, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	size_t unseen = 0;
	for (size_t i = 0; i < mb.n; i++)
		if (!(mb.msgs[i].flags & IMAP_FL_SEEN))
			unseen++;
	struct evbuffer *o = imapd_out(s);
	evbuffer_add_printf(o, "* STATUS ");
	imap_write_cstring(o, strcasecmp(name, "INBOX") == 0 ? "INBOX" : name);
	evbuffer_add_printf(o, " (");
	const struct imap_arg *l = &c->args[1];
	int bad = 0;
	for (size_t i = 0; i < l->n; i++) {
		const struct imap_arg *a = &l->list[i];
		if (i > 0)
			evbuffer_add(o, " ", 1);
		if (imap_arg_is_atom(a, "MESSAGES"))
			evbuffer_add_printf(o, "MESSAGES %zu", mb.n);
		else if (imap_arg_is_atom(a, "RECENT"))
			evbuffer_add_printf(o, "RECENT %zu", recent);
		else if (imap_arg_is_atom(a, "UIDNEXT"))
			evbuffer_add_printf(o, "UIDNEXT %u", mb.uidnext);
		else if (imap_arg_is_atom(a, "UIDVALIDITY"))
			evbuffer_add_printf(o, "UIDVALIDITY %u", mb.uidvalidity);
		else if (imap_arg_is_atom(a, "UNSEEN"))
			evbuffer_add_printf(o, "UNSEEN %zu", unseen);
		else
			bad = 1;
	}
	evbuffer_add(o, ")\r\n", 3);
	imap_mbox_msgs_free(mb.msgs, mb.n);
	if (bad)
		imapd_printf(s, "%s OK STATUS completed (unknown items ignored)", c->tag);
	else
		imapd_printf(s, "%s OK STATUS completed", c->tag);
}

static void imapd_cmd_append(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	unsigned flags = 0;
	time_t idate = 0;
	size_t i = 1;
	if (name == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "APPEND needs a mailbox and a message");
		return;
	}
	if (i < c->n_args && c->args[i].type == IMAP_ARG_LIST) {
		if (imapd_flags_arg(&c->args[i], &flags) < 0) {
			imapd_bad(s, c->tag, "Invalid flags");
			return;
		}
		i++;
	}
	if (i + 1 < c->n_args && c->args[i].type == IMAP_ARG_STRING) {
		if (imap_datetime_parse(c->args[i].s, &idate) < 0) {
			imapd_bad(s, c->tag, "Invalid date-time");
			return;
		}
		i++;
	}
	if (i + 1 != c->n_args || c->args[i].type != IMAP_ARG_LITERAL) {
		imapd_bad(s, c->tag, "APPEND needs the message as a literal");
		return;
	}
	const struct imap_arg *m = &c->args[i];
	if (m->len == 0) {
		imapd_printf(s, "%s NO Empty message", c->tag);
		return;
	}
	if (m->len > s->d->ctx->cfg->message_size) {
		imapd_printf(s, "%s NO [TOOBIG] Message too large", c->tag);
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [TRYCREATE] Mailbox does not exist", c->tag);
		return;
	}
	uint32_t uv, nuid;
	if (imap_mbox_append(path, m->s, m->len, flags, idate, &uv, &nuid, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(path, s->mb.path) == 0)
		imapd_sync(s, 0);
	imapd_printf(s, "%s OK [APPENDUID %u %u] APPEND completed", c->tag, uv, nuid);
}

static void imapd_cmd_close(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (strcmp(c->name, "CLOSE") == 0 && !s->readonly)
		for (size_t i = 0; i < s->mb.n; i++)
			if (s->mb.msgs[i].flags & IMAP_FL_DELETED)
				imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
	imapd_unselect(s);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

static void imapd_cmd_expunge(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	struct imap_seqset set = { NULL, 0 };
	if (s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (uid) {
		const char *spec = imapd_arg_cstr(c, 0);
		if (spec == NULL || c->n_args != 1 || imapd_set(s, spec, 1, &set) < 0) {
			imapd_bad(s, c->tag, "Invalid UID set");
			return;
		}
	}
	for (size_t i = 0; i < s->mb.n; i++)
		if ((s->mb.msgs[i].flags & IMAP_FL_DELETED) && (!uid || imapd_in_set(s, &set, i, 1)))
			imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
	imap_seqset_free(&set);
	imapd_sync(s, 1);
	imapd_printf(s, "%s OK %sEXPUNGE completed", c->tag, uid ? "UID " : "");
}

/* ---- FETCH ---- */

struct imapd_msgdata {
	char *data;
	size_t len;
	struct mime_part *mime;
	int loaded;
};

static int imapd_load(struct imapd_sess *s, struct imap_msg *m, struct imapd_msgdata *md, int need_mime)
{
	const char *err;
	if (!md->loaded) {
		if (imap_mbox_read(&s->mb, m, &md->data, &md->len, &err) < 0)
			return -1;
		md->loaded = 1;
	}
	if (need_mime && md->mime == NULL)
		md->mime = mime_parse(md->data, md->len, NULL, NULL);
	return need_mime && md->mime == NULL ? -1 : 0;
}

static void imapd_msgdata_free(struct imapd_msgdata *md)
{
	xfree(&md->data);
	mime_free(&md->mime);
	md->loaded = 0;
	md->len = 0;
}

static int imapd_fetch_atts(const struct imap_arg *a, struct imap_fetch_att **atts_r, size_t *n_r, const char **err)
{
	struct imap_fetch_att *v = NULL;
	size_t n = 0;
	static const char *const fast[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE" };
	static const char *const all[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE" };
	static const char *const full[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY" };
	const char *const *macro = NULL;
	size_t mn = 0;
	const struct imap_arg *list = a;
	size_t ln = 1;
	if (a->type == IMAP_ARG_LIST) {
		list = a->list;
		ln = a->n;
	} else if (imap_arg_is_atom(a, "FAST")) {
		macro = fast;
		mn = 3;
	} else if (imap_arg_is_atom(a, "ALL")) {
		macro = all;
		mn = 4;
	} else if (imap_arg_is_atom(a, "FULL")) {
		macro = full;
		mn = 5;
	}
	size_t total = macro != NULL ? mn : ln;
	if (total == 0 || total > 100) {
		*err = "Invalid FETCH attribute list";
		return -1;
	}
	v = xcalloc(total, sizeof(*v));
	for (size_t i = 0; i < total; i++) {
		const char *atom = macro != NULL ? macro[i] : (list[i].type == IMAP_ARG_ATOM ? list[i].s : NULL);
		if (atom == NULL || imap_fetch_att_parse(atom, &v[n], err) < 0) {
			if (atom == NULL)
				*err = "Invalid FETCH attribute";
			for (size_t k = 0; k < n; k++)
				imap_fetch_att_free(&v[k]);
			xfree(&v);
			return -1;
		}
		n++;
	}
	*atts_r = v;
	*n_r = n;
	return 0;
}

/* A FETCH is written one message at a time as the client reads: literal
 * bodies are streamed from the file in IMAPD_STREAM_CHUNK pieces whenever
 * less than IMAPD_OUT_HIGH waits, so a session holds about that much output
 * whatever the message sizes. No other command is read until it is done, so
 * replies stay in order. */
struct imapd_fetch {
	char tag[IMAP_TAG_MAX + 1];
	int uid;
	struct imap_seqset set;
	struct imap_fetch_att *atts;
	size_t n_atts;
	size_t next;                 /* next message index to look at */
	/* the message being written */
	size_t idx;
	int in_msg;                  /* "* n FETCH (" written; attributes from att on */
	size_t att;
	int first, has_flags;
	int fd;                      /* its file, or -1 */
	struct stat sb;
	int conv;                    /* the file has bare LF: served as CRLF */
	struct imap_cache_ent *ent;  /* its parsed form, pinned while this message needs it */
	int streaming;
	struct imap_crlf_rd rd;      /* the literal being streamed */
};

static void imapd_fetch_msg_end(struct imapd_fetch *j)
{
	imap_cache_release(&j->ent);
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	j->in_msg = 0;
	j->streaming = 0;
}

static void imapd_fetch_free(struct imapd_fetch **jp)
{
	struct imapd_fetch *j = *jp;
	if (j == NULL)
		return;
	imapd_fetch_msg_end(j);
	for (size_t k = 0; k < j->n_atts; k++)
		imap_fetch_att_free(&j->atts[k]);
	xfree(&j->atts);
	imap_seqset_free(&j->set);
	xfree(jp);
}

/* The parsed structure of the open message, from the cache or parsed now
 * (once, then cached); pinned in j->ent. NULL if the file cannot be read. */
static struct imap_cache_ent *imapd_fetch_ent(struct imapd_fetch *j, struct imap_msg *m)
{
	if (j->ent != NULL)
		return j->ent;
	struct imap_cache_key k = { (uint64_t)j->sb.st_dev, (uint64_t)j->sb.st_ino, (uint64_t)j->sb.st_size,
	    (int64_t)j->sb.st_mtim.tv_sec * 1000000000 + (int64_t)j->sb.st_mtim.tv_nsec, m->base };
	j->ent = imap_cache_get(&k);
	if (j->ent != NULL)
		return j->ent;
	struct imap_mbox_buf b;
	if (imap_mbox_read_range(j->fd, j->conv, 0, (size_t)m->size, &b) < 0)
		return NULL;
	struct imap_cache_ent *e = imap_fetch_parse(b.data, b.len);
	imap_mbox_buf_free(&b);
	if (e == NULL)
		return NULL;
	e->dev = k.dev;
	e->ino = k.ino;
	e->fsize = k.fsize;
	e->mtime_ns = k.mtime_ns;
	e->base = xstrdup(m->base);
	j->ent = imap_cache_put(e);
	return j->ent;
}

/* Does the attribute need the parsed structure (everything but whole-message
 * literals and per-file facts)? */
static int imapd_att_needs_ent(const struct imap_fetch_att *a)
{
	return a->kind == IMAP_F_ENVELOPE || a->kind == IMAP_F_BODYSTRUCTURE || a->kind == IMAP_F_BODY ||
	    (a->kind == IMAP_F_SECTION && (a->n_part > 0 || a->sect != IMAP_S_ALL));
}

/* Something went wrong after part of the reply was written (the file
 * changed under us): the literal cannot be completed, so the session ends. */
static void imapd_fetch_fail(struct imapd_sess *s, const char *why)
{
	log_event(LOG_LVL_WARN, "imap.fetch_failed", "client", s->ip, "user", s->user, "reason", why, NULL);
	imapd_close(s);
}

/* Starts message idx: opens its file if an attribute needs it, sets \Seen,
 * writes "* n FETCH (". A message whose file is gone gets a short reply. */
static void imapd_fetch_begin(struct imapd_sess *s, struct imapd_fetch *j, size_t idx)
{
	struct imap_msg *m = &s->mb.msgs[idx];
	struct evbuffer *o = imapd_out(s);
	int need_file = 0, need_ent = 0, set_seen = 0, has_uid = 0;
	j->has_flags = 0;
	for (size_t i = 0; i < j->n_atts; i++) {
		const struct imap_fetch_att *a = &j->atts[i];
		if (a->kind == IMAP_F_SECTION || a->kind == IMAP_F_ENVELOPE || a->kind == IMAP_F_BODYSTRUCTURE ||
		    a->kind == IMAP_F_BODY || (a->kind == IMAP_F_SIZE && m->size < 0))
			need_file = 1;
		if (imapd_att_needs_ent(a))
			need_ent = 1;
		if (a->kind == IMAP_F_SECTION && !a->peek)
			set_seen = 1;
		if (a->kind == IMAP_F_UID)
			has_uid = 1;
		if (a->kind == IMAP_F_FLAGS)
			j->has_flags = 1;
	}
	j->idx = idx;
	if (need_file) {
		const char *err = NULL;
		int64_t size = m->size;
		j->fd = imap_mbox_open(&s->mb, m, &j->sb, &err);
		if (j->fd >= 0 && size < 0 && imap_mbox_crlf_size(j->fd, (uint64_t)j->sb.st_size, &size) < 0)
			size = -1;
		if (j->fd >= 0 && size >= 0) {
			m->size = size;
			j->conv = (uint64_t)size != (uint64_t)j->sb.st_size;
		}
		if (j->fd < 0 || size < 0 || (need_ent && imapd_fetch_ent(j, m) == NULL)) {
			/* the file vanished under us: report what we know */
			imapd_fetch_msg_end(j);
			evbuffer_add_printf(o, "* %zu FETCH (UID %u FLAGS ", idx + 1, m->uid);
			imapd_write_flags(o, m->flags);
			evbuffer_add(o, ")\r\n", 3);
			return;
		}
	}
	if (set_seen && !s->readonly && !(m->flags & IMAP_FL_SEEN)) {
		if (imap_mbox_set_flags(&s->mb, m, (m->flags | IMAP_FL_SEEN) & IMAP_FL_STORED) == 0 && !j->has_flags)
			j->has_flags = 2;  /* add FLAGS to the response */
	}
	evbuffer_add_printf(o, "* %zu FETCH (", idx + 1);
	j->first = 1;
	if (j->uid && !has_uid) {
		evbuffer_add_printf(o, "UID %u", m->uid);
		j->first = 0;
	}
	j->in_msg = 1;
	j->att = 0;
}

/* Writes the message's attributes from j->att on; returns early when one
 * starts a streamed literal, else ends the message. */
static void imapd_fetch_items(struct imapd_sess *s, struct imapd_fetch *j)
{
	struct imap_msg *m = &s->mb.msgs[j->idx];
	struct evbuffer *o = imapd_out(s);
	while (j->att < j->n_atts) {
		const struct imap_fetch_att *a = &j->atts[j->att++];
		if (!j->first)
			evbuffer_add(o, " ", 1);
		j->first = 0;
		struct imap_cache_ent *e = NULL;
		if (imapd_att_needs_ent(a)) {
			e = imapd_fetch_ent(j, m);
			if (e == NULL) {
				imapd_fetch_fail(s, "message file changed");
				return;
			}
		}
		switch (a->kind) {
		case IMAP_F_FLAGS:
			evbuffer_add(o, "FLAGS ", 6);
			imapd_write_flags(o, m->flags);
			break;
		case IMAP_F_UID:
			evbuffer_add_printf(o, "UID %u", m->uid);
			break;
		case IMAP_F_MODSEQ:
			evbuffer_add_printf(o, "MODSEQ (1)");
			break;
		case IMAP_F_INTERNALDATE: {
			char buf[32];
			imap_datetime_format(imap_mbox_idate(&s->mb, m), buf);
			evbuffer_add_printf(o, "INTERNALDATE \"%s\"", buf);
			break;
		}
		case IMAP_F_SIZE:
			evbuffer_add_printf(o, "RFC822.SIZE %lld", (long long)(m->size >= 0 ? m->size : 0));
			break;
		case IMAP_F_ENVELOPE:
			evbuffer_add(o, "ENVELOPE ", 9);
			evbuffer_add(o, e->envelope, e->envelope_len);
			break;
		case IMAP_F_BODYSTRUCTURE:
			evbuffer_add(o, "BODYSTRUCTURE ", 14);
			evbuffer_add(o, e->bodystructure, e->bodystructure_len);
			break;
		case IMAP_F_BODY:
			evbuffer_add(o, "BODY ", 5);
			evbuffer_add(o, e->body, e->body_len);
			break;
		case IMAP_F_SECTION: {
			size_t off = 0, len = (size_t)m->size;
			int r = e != NULL ? imap_section_range(e->mime, (size_t)m->size, a, &off, &len) : 0;
			char *owned = NULL;
			if (r == 2) {
				struct imap_mbox_buf b;
				if (imap_mbox_read_range(j->fd, j->conv, off, len, &b) < 0) {
					imapd_fetch_fail(s, "message file changed");
					return;
				}
				owned = imap_section_fields(b.data, b.len, a, &len);
				imap_mbox_buf_free(&b);
				off = 0;
			} else if (r != 0) {
				len = 0;
			}
			if (a->partial) {
				if (a->p_off >= len) {
					len = 0;
				} else {
					off += a->p_off;
					len -= a->p_off;
					if (len > a->p_len)
						len = a->p_len;
				}
			}
			evbuffer_add_printf(o, "%s {%zu}\r\n", a->name, len);
			if (owned != NULL) {
				evbuffer_add(o, owned + off, len);
				xfree(&owned);
			} else if (len > 0) {
				/* the bytes come from the file as the client reads */
				imap_crlf_rd_init(&j->rd, j->fd, j->conv, off, len);
				j->streaming = 1;
				/* the entry stays pinned across the stream only if a later
				 * item needs it (one parse per message per FETCH) */
				int later = 0;
				for (size_t k = j->att; k < j->n_atts; k++)
					later |= imapd_att_needs_ent(&j->atts[k]);
				if (!later)
					imap_cache_release(&j->ent);
				return;
			}
			break;
		}
		}
	}
	if (j->has_flags == 2) {
		if (!j->first)
			evbuffer_add(o, " ", 1);
		evbuffer_add(o, "FLAGS ", 6);
		imapd_write_flags(o, m->flags);
	}
	evbuffer_add(o, ")\r\n", 3);
	imapd_fetch_msg_end(j);
}

/* Writes the FETCH on while less than IMAPD_OUT_HIGH waits. 1 when it is
 * complete (the tagged reply is written and s->fetch freed). */
static int imapd_fetch_pump(struct imapd_sess *s)
{
	struct imapd_fetch *j = s->fetch;
	struct evbuffer *o = imapd_out(s);
	while (!s->closing && evbuffer_get_length(o) < IMAPD_OUT_HIGH) {
		if (j->streaming) {
			struct evbuffer_iovec v;
			if (evbuffer_reserve_space(o, IMAPD_STREAM_CHUNK, &v, 1) < 1) {
				imapd_fetch_fail(s, "out of memory");
				break;
			}
			size_t cap = v.iov_len < IMAPD_STREAM_CHUNK ? v.iov_len : IMAPD_STREAM_CHUNK;
			ssize_t r = imap_crlf_rd_next(&j->rd, v.iov_base, cap);
			if (r <= 0) {
				imapd_fetch_fail(s, "message file changed");
				break;
			}
			v.iov_len = (size_t)r;
			evbuffer_commit_space(o, &v, 1);
			if (j->rd.left == 0)
				j->streaming = 0;
			continue;
		}
		if (j->in_msg) {
			imapd_fetch_items(s, j);
			continue;
		}
		size_t i = j->next;
		while (i < s->mb.n && !imapd_in_set(s, &j->set, i, j->uid))
			i++;
		if (i >= s->mb.n) {
			imapd_printf(s, "%s OK %sFETCH completed", j->tag, j->uid ? "UID " : "");
			imapd_fetch_free(&s->fetch);
			return 1;
		}
		j->next = i + 1;
		imapd_fetch_begin(s, j, i);
	}
	return 0;
}

static void imapd_cmd_fetch(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0), *err = NULL;
	struct imap_seqset set;
	struct imap_fetch_att *atts = NULL;
	size_t n_atts = 0;
	if (spec == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "FETCH needs a set and attributes");
		return;
	}
	if (c->n_args > 2) {
		/* CHANGEDSINCE etc. need CONDSTORE, which kale does not offer */
		imapd_bad(s, c->tag, "FETCH modifiers are not supported");
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	if (!uid && set.n > 0 && set.r[set.n - 1].hi > s->mb.n) {
		imap_seqset_free(&set);
		imapd_bad(s, c->tag, "Message sequence number out of range");
		return;
	}
	if (imapd_fetch_atts(&c->args[1], &atts, &n_atts, &err) < 0) {
		imap_seqset_free(&set);
		imapd_bad(s, c->tag, err);
		return;
	}
	struct imapd_fetch *j = xcalloc(1, sizeof(*j));
	util_fmt(j->tag, sizeof(j->tag), "%s", c->tag);
	j->uid = uid;
	j->set = set;
	j->atts = atts;
	j->n_atts = n_atts;
	j->fd = -1;
	s->fetch = j;
	if (imapd_fetch_pump(s) || s->closing)
		return;
	/* more to write: no command is read until the FETCH is done; the write
	 * callback runs again when the output is down to IMAPD_OUT_LOW */
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setwatermark(s->bev, EV_WRITE, IMAPD_OUT_LOW, 0);
}

static void imapd_cmd_store(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0);
	const char *what = imapd_arg_cstr(c, 1);
	struct imap_seqset set;
	unsigned flags;
	if (spec == NULL || what == NULL || c->n_args != 3) {
		imapd_bad(s, c->tag, "STORE needs a set, an item and flags");
		return;
	}
	if (s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	int mode;  /* 0 set, 1 add, -1 remove */
	const char *w = what;
	if (*w == '+') {
		mode = 1;
		w++;
	} else if (*w == '-') {
		mode = -1;
		w++;
	} else {
		mode = 0;
	}
	int silent;
	if (strcasecmp(w, "FLAGS") == 0)
		silent = 0;
	else if (strcasecmp(w, "FLAGS.SILENT") == 0)
		silent = 1;
	else {
		imapd_bad(s, c->tag, "Invalid STORE item");
		return;
	}
	if (imapd_flags_arg(&c->args[2], &flags) < 0) {
		imapd_bad(s, c->tag, "Invalid flags");
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	int failed = 0;
	struct evbuffer *o = imapd_out(s);
	for (size_t i = 0; i < s->mb.n; i++) {
		if (!imapd_in_set(s, &set, i, uid))
			continue;
		struct imap_msg *m = &s->mb.msgs[i];
		unsigned nf = m->flags & IMAP_FL_STORED;
		if (mode == 0)
			nf = flags;
		else if (mode > 0)
			nf |= flags;
		else
			nf &= ~flags;
		if (imap_mbox_set_flags(&s->mb, m, nf) < 0)
			failed = 1;
		if (!silent || uid) {
			evbuffer_add_printf(o, "* %zu FETCH (", i + 1);
			if (uid)
				evbuffer_add_printf(o, "UID %u ", m->uid);
			evbuffer_add(o, "FLAGS ", 6);
			imapd_write_flags(o, m->flags);
			evbuffer_add(o, ")\r\n", 3);
		}
	}
	imap_seqset_free(&set);
	if (failed)
		imapd_printf(s, "%s NO Some messages could not be changed", c->tag);
	else
		imapd_printf(s, "%s OK %sSTORE completed", c->tag, uid ? "UID " : "");
}

/* Appends "a:b" runs of uids to buf. */
static void imapd_uidset_add(struct evbuffer *b, uint32_t *prev_lo, uint32_t *prev_hi, uint32_t v, int flush)
{
	if (!flush && *prev_hi != 0 && v == *prev_hi + 1) {
		*prev_hi = v;
		return;
	}
	if (*prev_lo != 0) {
		if (evbuffer_get_length(b) > 0)
			evbuffer_add(b, ",", 1);
		if (*prev_lo == *prev_hi)
			evbuffer_add_printf(b, "%u", *prev_lo);
		else
			evbuffer_add_printf(b, "%u:%u", *prev_lo, *prev_hi);
	}
	*prev_lo = *prev_hi = v;
}

static void imapd_cmd_copy(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0), *name = imapd_arg_cstr(c, 1), *err = NULL;
	char path[4096];
	struct imap_seqset set;
	int move = strcmp(c->name, "MOVE") == 0;
	if (spec == NULL || name == NULL || c->n_args != 2) {
		imapd_bad(s, c->tag, "Needs a set and a mailbox");
		return;
	}
	if (move && s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [TRYCREATE] Mailbox does not exist", c->tag);
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
	uint32_t sl = 0, sh = 0, dl = 0, dh = 0, uv = 0;
	int failed = 0, any = 0;
	if (strcmp(path, s->mb.path) == 0 && move) {
		/* moving into the same folder changes nothing */
		imap_seqset_free(&set);
		evbuffer_free(src);
		evbuffer_free(dst);
		imapd_printf(s, "%s OK MOVE completed", c->tag);
		return;
	}
	for (size_t i = 0; i < s->mb.n && !failed; i++) {
		if (!imapd_in_set(s, &set, i, uid))
			continue;
		uint32_t nuid;
		if (imap_mbox_copy(&s->mb, &s->mb.msgs[i], path, &uv, &nuid, &err) < 0) {
			failed = 1;
			break;
		}
		any = 1;
		imapd_uidset_add(src, &sl, &sh, s->mb.msgs[i].uid, 0);
		imapd_uidset_add(dst, &dl, &dh, nuid, 0);
	}
	imapd_uidset_add(src, &sl, &sh, 0, 1);
	imapd_uidset_add(dst, &dl, &dh, 0, 1);
	char code[1024] = "";
	if (any && evbuffer_get_length(src) < 400 && evbuffer_get_length(dst) < 400) {
		char a[512], b[512];
		size_t al = evbuffer_remove(src, a, sizeof(a) - 1), bl = evbuffer_remove(dst, b, sizeof(b) - 1);
		a[al] = '\0';
		b[bl] = '\0';
		if (util_fmt(code, sizeof(code), "[COPYUID %u %s %s] ", uv, a, b) < 0)
			code[0] = '\0';
	}
	evbuffer_free(src);
	evbuffer_free(dst);
	if (failed) {
		imap_seqset_free(&set);
		imapd_printf(s, "%s NO %s", c->tag, err != NULL ? err : "copy failed");
		return;
	}
	if (move) {
		if (code[0] != '\0')
			imapd_printf(s, "* OK %s", code);
		for (size_t i = 0; i < s->mb.n; i++)
			if (imapd_in_set(s, &set, i, uid))
				imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
		imapd_sync(s, 1);
		imapd_printf(s, "%s OK MOVE completed", c->tag);
	} else {
		imapd_printf(s, "%s OK %sCOPY completed", c->tag, code);
	}
	imap_seqset_free(&set);
}

/* ---- SEARCH ---- */

enum imapd_sk_kind {
	SK_ALL, SK_FLAG, SK_NOTFLAG, SK_NEW, SK_OLD, SK_NONE, SK_SET, SK_UIDSET, SK_NOT, SK_OR, SK_AND,
	SK_LARGER, SK_SMALLER, SK_BEFORE, SK_ON, SK_SINCE, SK_SENTBEFORE, SK_SENTON, SK_SENTSINCE,
	SK_HEADER, SK_BODY, SK_TEXT
};

struct imapd_sk {
	enum imapd_sk_kind kind;
	unsigned flag;
	uint64_t num;
	time_t t;
	char *hdr, *str;
	struct imap_seqset set;
	struct imapd_sk *a, *b;       /* NOT a; OR a b; AND: a list via next */
	struct imapd_sk *next;
};

static void imapd_sk_free(struct imapd_sk *k)
{
	while (k != NULL) {
		struct imapd_sk *n = k->next;
		xfree(&k->hdr);
		xfree(&k->str);
		imap_seqset_free(&k->set);
		imapd_sk_free(k->a);
		imapd_sk_free(k->b);
		xfree(&k);
		k = n;
	}
}

struct imapd_skp {
	struct imapd_sess *s;
	const struct imap_arg *v;
	size_t n, i;
	int depth;
};

static struct imapd_sk *imapd_sk_parse(struct imapd_skp *p);

static const char *imapd_sk_str(struct imapd_skp *p)
{
	if (p->i >= p->n)
		return NULL;
	return imap_arg_str(&p->v[p->i++]);
}

static struct imapd_sk *imapd_sk_parse(struct imapd_skp *p)
{
	if (p->i >= p->n || p->depth > 64)
		return NULL;
	const struct imap_arg *a = &p->v[p->i];
	struct imapd_sk *k = xcalloc(1, sizeof(*k));
	if (a->type == IMAP_ARG_LIST) {
		p->i++;
		struct imapd_skp sub = { p->s, a->list, a->n, 0, p->depth + 1 };
		struct imapd_sk **tail = &k->a;
		k->kind = SK_AND;
		while (sub.i < sub.n) {
			struct imapd_sk *c = imapd_sk_parse(&sub);
			if (c == NULL)
				goto fail;
			*tail = c;
			tail = &c->next;
		}
		return k;
	}
	const char *w = imap_arg_str(a);
	if (w == NULL || a->type != IMAP_ARG_ATOM)
		goto fail;
	p->i++;
	static const struct { const char *n; unsigned f; int neg; } flagkeys[] = {
		{ "ANSWERED", IMAP_FL_ANSWERED, 0 }, { "DELETED", IMAP_FL_DELETED, 0 },
		{ "FLAGGED", IMAP_FL_FLAGGED, 0 }, { "SEEN", IMAP_FL_SEEN, 0 }, { "DRAFT", IMAP_FL_DRAFT, 0 },
		{ "RECENT", IMAP_FL_RECENT, 0 }, { "UNANSWERED", IMAP_FL_ANSWERED, 1 },
		{ "UNDELETED", IMAP_FL_DELETED, 1 }, { "UNFLAGGED", IMAP_FL_FLAGGED, 1 },
		{ "UNSEEN", IMAP_FL_SEEN, 1 }, { "UNDRAFT", IMAP_FL_DRAFT, 1 },
	};
	for (size_t i = 0; i < sizeof(flagkeys) / sizeof(flagkeys[0]); i++)
		if (strcasecmp(w, flagkeys[i].n) == 0) {
			k->kind = flagkeys[i].neg ? SK_NOTFLAG : SK_FLAG;
			k->flag = flagkeys[i].f;
			return k;
		}
	static const struct { const char *n; enum imapd_sk_kind k; } datekeys[] = {
		{ "BEFORE", SK_BEFORE }, { "ON", SK_ON }, { "SINCE", SK_SINCE },
		{ "SENTBEFORE", SK_SENTBEFORE }, { "SENTON", SK_SENTON }, { "SENTSINCE", SK_SENTSINCE },
	};
	for (size_t i = 0; i < sizeof(datekeys) / sizeof(datekeys[0]); i++)
		if (strcasecmp(w, datekeys[i].n) == 0) {
			const char *d = imapd_sk_str(p);
			k->kind = datekeys[i].k;
			if (d == NULL || imap_date_parse(d, &k->t) < 0)
				goto fail;
			return k;
		}
	static const struct { const char *n; const char *h; enum imapd_sk_kind k; } strkeys[] = {
		{ "FROM", "From", SK_HEADER }, { "TO", "To", SK_HEADER }, { "CC", "Cc", SK_HEADER },
		{ "BCC", "Bcc", SK_HEADER }, { "SUBJECT", "Subject", SK_HEADER },
		{ "BODY", NULL, SK_BODY }, { "TEXT", NULL, SK_TEXT },
	};
	for (size_t i = 0; i < sizeof(strkeys) / sizeof(strkeys[0]); i++)
		if (strcasecmp(w, strkeys[i].n) == 0) {
			const char *v = imapd_sk_str(p);
			if (v == NULL)
				goto fail;
			k->kind = strkeys[i].k;
			k->hdr = strkeys[i].h != NULL ? xstrdup(strkeys[i].h) : NULL;
			k->str = xstrdup(v);
			return k;
		}
	if (strcasecmp(w, "ALL") == 0) {
		k->kind = SK_ALL;
	} else if (strcasecmp(w, "NEW") == 0) {
		k->kind = SK_NEW;
	} else if (strcasecmp(w, "OLD") == 0) {
		k->kind = SK_OLD;
	} else if (strcasecmp(w, "KEYWORD") == 0 || strcasecmp(w, "UNKEYWORD") == 0) {
		if (imapd_sk_str(p) == NULL)
			goto fail;
		k->kind = w[0] == 'K' || w[0] == 'k' ? SK_NONE : SK_ALL;
	} else if (strcasecmp(w, "HEADER") == 0) {
		const char *h = imapd_sk_str(p), *v = imapd_sk_str(p);
		if (h == NULL || v == NULL || h[0] == '\0' || strchr(h, ':') != NULL)
			goto fail;
		k->kind = SK_HEADER;
		k->hdr = xstrdup(h);
		k->str = xstrdup(v);
	} else if (strcasecmp(w, "LARGER") == 0 || strcasecmp(w, "SMALLER") == 0) {
		const char *v = imapd_sk_str(p);
		long long n;
		if (v == NULL || util_strtonum(v, 0, INT64_MAX, &n) < 0)
			goto fail;
		k->kind = (w[0] == 'L' || w[0] == 'l') ? SK_LARGER : SK_SMALLER;
		k->num = (uint64_t)n;
	} else if (strcasecmp(w, "UID") == 0) {
		const char *v = imapd_sk_str(p);
		if (v == NULL || imapd_set(p->s, v, 1, &k->set) < 0)
			goto fail;
		k->kind = SK_UIDSET;
	} else if (strcasecmp(w, "NOT") == 0) {
		k->kind = SK_NOT;
		p->depth++;
		k->a = imapd_sk_parse(p);
		p->depth--;
		if (k->a == NULL)
			goto fail;
	} else if (strcasecmp(w, "OR") == 0) {
		k->kind = SK_OR;
		p->depth++;
		k->a = imapd_sk_parse(p);
		k->b = k->a != NULL ? imapd_sk_parse(p) : NULL;
		p->depth--;
		if (k->b == NULL)
			goto fail;
	} else if ((w[0] >= '0' && w[0] <= '9') || w[0] == '*') {
		if (imapd_set(p->s, w, 0, &k->set) < 0)
			goto fail;
		k->kind = SK_SET;
	} else {
		goto fail;
	}
	return k;
fail:
	imapd_sk_free(k);
	return NULL;
}

static int imapd_ci_contains(const char *hay, size_t hl, const char *needle)
{
	size_t nl = strlen(needle);
	if (nl == 0)
		return 1;
	if (nl > hl)
		return 0;
	for (size_t i = 0; i + nl <= hl; i++)
		if (strncasecmp(hay + i, needle, nl) == 0)
			return 1;
	return 0;
}

/* Date header -> day (midnight UTC); -1 if unparsable. Loose RFC 5322. */
static time_t imapd_sent_day(const char *v)
{
	static const char *mon[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec" };
	const char *p = v;
	if (v == NULL)
		return -1;
	const char *comma = strchr(p, ',');
	if (comma != NULL)
		p = comma + 1;
	while (*p == ' ')
		p++;
	int d = 0, y = 0, m = -1, k = 0;
	while (*p >= '0' && *p <= '9' && k++ < 2)
		d = d * 10 + (*p++ - '0');
	while (*p == ' ')
		p++;
	for (int i = 0; i < 12; i++)
		if (strncasecmp(p, mon[i], 3) == 0)
			m = i;
	if (m < 0 || d < 1 || d > 31)
		return -1;
	p += 3;
	while (*p == ' ')
		p++;
	k = 0;
	while (*p >= '0' && *p <= '9' && k++ < 4)
		y = y * 10 + (*p++ - '0');
	if (k == 2)
		y += y < 50 ? 2000 : 1900;
	if (y < 1900)
		return -1;
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	tm.tm_mday = d;
	tm.tm_mon = m;
	tm.tm_year = y - 1900;
	return timegm(&tm);
}

static int imapd_sk_match(struct imapd_sess *s, size_t idx, const struct imapd_sk *k, struct imapd_msgdata *md)
{
	struct imap_msg *m = &s->mb.msgs[idx];
	switch (k->kind) {
	case SK_ALL: return 1;
	case SK_NONE: return 0;
	case SK_FLAG: return (m->flags & k->flag) != 0;
	case SK_NOTFLAG: return (m->flags & k->flag) == 0;
	case SK_NEW: return (m->flags & IMAP_FL_RECENT) && !(m->flags & IMAP_FL_SEEN);
	case SK_OLD: return !(m->flags & IMAP_FL_RECENT);
	case SK_SET: return imap_seqset_has(&k->set, (uint32_t)(idx + 1));
	case SK_UIDSET: return imap_seqset_has(&k->set, m->uid);
	case SK_NOT: return !imapd_sk_match(s, idx, k->a, md);
	case SK_OR: return imapd_sk_match(s, idx, k->a, md) || imapd_sk_match(s, idx, k->b, md);
	case SK_AND:
		for (const struct imapd_sk *c = k->a; c != NULL; c = c->next)
			if (!imapd_sk_match(s, idx, c, md))
				return 0;
		return 1;
	case SK_LARGER:
	case SK_SMALLER:
		if (m->size < 0 && imapd_load(s, m, md, 0) < 0)
			return 0;
		return k->kind == SK_LARGER ? (uint64_t)m->size > k->num : (uint64_t)m->size < k->num;
	case SK_BEFORE:
	case SK_ON:
	case SK_SINCE: {
		time_t t = imap_mbox_idate(&s->mb, m);
		time_t day = t - (t % 86400);
		return k->kind == SK_BEFORE ? day < k->t : k->kind == SK_ON ? day == k->t : day >= k->t;
	}
	case SK_SENTBEFORE:
	case SK_SENTON:
	case SK_SENTSINCE: {
		if (imapd_load(s, m, md, 1) < 0)
			return 0;
		char *v = mime_header_get(md->data, md->mime->body_off, "Date", 1024);
		time_t day = imapd_sent_day(v);
		xfree(&v);
		if (day < 0)
			return 0;
		return k->kind == SK_SENTBEFORE ? day < k->t : k->kind == SK_SENTON ? day == k->t : day >= k->t;
	}
	case SK_HEADER: {
		if (imapd_load(s, m, md, 1) < 0)
			return 0;
		char *v = mime_header_get(md->data, md->mime->body_off, k->hdr, 65536);
		int r = v != NULL && imapd_ci_contains(v, strlen(v), k->str);
		xfree(&v);
		return r;
	}
	case SK_BODY:
	case SK_TEXT:
		if (imapd_load(s, m, md, 1) < 0)
			return 0;
		if (k->kind == SK_BODY)
			return imapd_ci_contains(md->data + md->mime->body_off, md->len - md->mime->body_off, k->str);
		return imapd_ci_contains(md->data, md->len, k->str);
	}
	return 0;
}

static void imapd_cmd_search(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	struct imapd_skp p = { s, c->args, c->n_args, 0, 0 };
	if (c->n_args >= 2 && imap_arg_is_atom(&c->args[0], "CHARSET")) {
		const char *cs = imap_arg_str(&c->args[1]);
		if (cs == NULL || (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0)) {
			imapd_printf(s, "%s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset", c->tag);
			return;
		}
		p.i = 2;
	}
	if (c->n_args >= 1 && imap_arg_is_atom(&c->args[0], "RETURN")) {
		imapd_bad(s, c->tag, "ESEARCH is not supported");
		return;
	}
	struct imapd_sk *root = xcalloc(1, sizeof(*root)), **tail = &root->a;
	root->kind = SK_AND;
	if (p.i >= p.n) {
		imapd_sk_free(root);
		imapd_bad(s, c->tag, "Missing search keys");
		return;
	}
	while (p.i < p.n) {
		struct imapd_sk *k = imapd_sk_parse(&p);
		if (k == NULL) {
			imapd_sk_free(root);
			imapd_bad(s, c->tag, "Invalid search key");
			return;
		}
		*tail = k;
		tail = &k->next;
	}
	struct evbuffer *o = imapd_out(s);
	evbuffer_add_printf(o, "* SEARCH");
	for (size_t i = 0; i < s->mb.n; i++) {
		struct imapd_msgdata md = { NULL, 0, NULL, 0 };
		if (imapd_sk_match(s, i, root, &md))
			evbuffer_add_printf(o, " %u", uid ? s->mb.msgs[i].uid : (unsigned)(i + 1));
		imapd_msgdata_free(&md);
	}
	evbuffer_add(o, "\r\n", 2);
	imapd_sk_free(root);
	imapd_printf(s, "%s OK %sSEARCH completed", c->tag, uid ? "UID " : "");
}

/* ---- IDLE ---- */

static void imapd_idle_changed(struct imapd_sess *s)
{
	if (!s->idling)
		return;
	imapd_sync(s, 1);
}

static void imapd_ino_cb(evutil_socket_t fd, short what, void *arg)
{
	struct imapd_sess *s = arg;
	char buf[4096];
	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	imapd_idle_changed(s);
}

static void imapd_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	imapd_idle_changed(arg);
}

static void imapd_cmd_idle(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	s->idling = 1;
	memcpy(s->idle_tag, c->tag, sizeof(s->idle_tag));
	imapd_printf(s, "+ idling");
	if (s->state != IMAPD_SELECTED)
		return;
	imapd_sync(s, 1);
	s->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	char p[4200];
	int ok = s->ino_fd >= 0;
	uint32_t mask = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE;
	if (ok && (util_fmt(p, sizeof(p), "%s/new", s->mb.path) < 0 || inotify_add_watch(s->ino_fd, p, mask) < 0))
		ok = 0;
	if (ok && (util_fmt(p, sizeof(p), "%s/cur", s->mb.path) < 0 || inotify_add_watch(s->ino_fd, p, mask) < 0))
		ok = 0;
	if (ok) {
		s->ino_ev = event_new(s->d->base, s->ino_fd, EV_READ | EV_PERSIST, imapd_ino_cb, s);
		event_add(s->ino_ev, NULL);
	} else {
		/* no inotify (limit reached): poll every two seconds */
		if (s->ino_fd >= 0)
			close(s->ino_fd);
		s->ino_fd = -1;
		struct timeval tv = { 2, 0 };
		s->poll_ev = event_new(s->d->base, -1, EV_PERSIST, imapd_poll_cb, s);
		event_add(s->poll_ev, &tv);
	}
}

/* ---- dispatch ---- */

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

static void imapd_execute(struct imapd_sess *s, const char *buf, size_t len)
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

static void imapd_read_cb(struct bufferevent *bev, void *arg)
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

static void imapd_start_tls(struct imapd_sess *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	SSL *ssl = SSL_new(s->d->ctx->tls);
	if (ssl == NULL) {
		imapd_sess_free(s);
		return;
	}
	struct bufferevent *tb = bufferevent_openssl_filter_new(s->d->base, s->bev, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tb == NULL) {
		SSL_free(ssl);
		imapd_sess_free(s);
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
	/* the filter moves output into the socket bufferevent only up to this
	 * mark, so flow control (and FETCH streaming) still sees the backlog */
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, IMAPD_OUT_HIGH);
	s->bev = tb;
	s->tls = 1;
	s->starttls_pending = 0;
	imapd_cmd_reset(s);
	bufferevent_setcb(tb, imapd_read_cb, imapd_write_cb, imapd_event_cb, s);
	imapd_set_timeout(s);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
}

static void imapd_write_cb(struct bufferevent *bev, void *arg)
{
	struct imapd_sess *s = arg;
	(void)bev;
	if (s->closing)
		return;  /* imapd_close_cb frees the session */
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

static void imapd_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct imapd_sess *s = arg;
	(void)bev;
	if (what & BEV_EVENT_TIMEOUT) {
		log_event(LOG_LVL_INFO, "imap.timeout", "client", s->ip, "user", s->user[0] ? s->user : NULL, NULL);
		if (!s->closing) {
			if (s->fetch == NULL)   /* else it would land inside a literal */
				imapd_printf(s, "* BYE Autologout; idle for too long");
			s->closing = 1;
			bufferevent_disable(s->bev, EV_READ);
			bufferevent_set_timeouts(s->bev, NULL, NULL);
			struct timeval tv = { 5, 0 };
			bufferevent_set_timeouts(s->bev, NULL, &tv);
			bufferevent_enable(s->bev, EV_WRITE);
			return;
		}
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		imapd_sess_free(s);
}

/* A client that trickles bytes keeps resetting the idle timeout; before
 * login the whole session is bounded too, as in pop3d. */
static void imapd_on_login_deadline(evutil_socket_t fd, short what, void *arg)
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

/* ---- accepting ---- */

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

/* ---- shutdown ---- */

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
