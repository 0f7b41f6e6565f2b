/* smtpd: the SMTP receive engine. Runs in each smtpd worker process (one
 * per core, unprivileged, cwd = data_dir): one libevent loop, sessions as a
 * state enum plus a command table, the transaction kept apart from the
 * connection, messages streamed into queue/tmp and committed in groups (one
 * syncfs + one directory fsync for every session that finished together). */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <pwd.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/util.h"
#include "master/kaled.h"
#include "queue/queue_file.h"
#include "smtpd/conntable.h"
#include "smtpd/smtp_parse.h"
#include "store/store.h"
#include "auth/auth.h"
#include "auth/brake.h"
#include "lookup/lookup.h"
#include "mail/addr.h"
#include "mail/hdrscan.h"
#include <openssl/evp.h>

#define SMTPD_MIN_DATA_RATE 500       /* bytes/s a message must arrive at, past command_timeout */
#define SMTPD_MAX_ERRORS 10
#define SMTPD_MAX_HOPS 50
#define SMTPD_WBUF 65536
#define SMTPD_OUT_MAX (256 * 1024)
#define SMTPD_DISK_RESERVE (64 * 1024)

enum smtpd_state {
	SMTPD_GREETING,   /* greeting delay running */
	SMTPD_CMD,        /* reading commands */
	SMTPD_DATA,       /* reading DATA bytes */
	SMTPD_BDAT,       /* reading a BDAT chunk */
	SMTPD_COMMIT,     /* waiting for the group commit */
	SMTPD_AUTH,       /* reading an AUTH continuation line */
	SMTPD_WAIT,       /* waiting for a lookup (AUTH check) to answer */
	SMTPD_CLOSING     /* flushing the last reply */
};

struct smtpd_rcpt {
	char *orig;
	char *orcpt;               /* DSN ORCPT= or NULL */
	int notify;                /* DSN NOTIFY= bits */
	char **targets;
	int n_targets;
};

/* The mail transaction: reset by RSET, HELO/EHLO, STARTTLS and after each message. */
struct smtpd_tx {
	int active;                /* MAIL given */
	struct smtp_path mail;
	struct smtpd_rcpt *rcpt;
	int n_rcpt;
	int n_targets;
	/* message file */
	int fd;
	char qid[32];
	char *wbuf;
	size_t wlen;
	int werrno;                /* first write error */
	struct smtp_data data;
	int bdat;                  /* BDAT in use */
	uint64_t bdat_size;        /* size of the current chunk, as on the wire */
	uint64_t bdat_left;        /* bytes of the current chunk still to read */
	int bdat_last;
	const char *bdat_error;    /* reply for the chunk when it is being discarded */
	uint64_t body_len;
	uint64_t started_us;
	struct hdrscan *hs;        /* header scanner: authenticated or local mail, else NULL */
};

struct smtpd_worker;

/* A RCPT waiting for its verification profile. */
struct smtpd_rcptwait {
	struct smtp_path p;
	char addr[300];
	struct store_domain dom;
	uint64_t req;
};

struct smtpd_session {
	struct smtpd_worker *w;
	struct bufferevent *bev;
	struct event *greet_ev;
	struct event *close_ev;    /* waits for TLS output to reach the socket */
	struct event *deadline_ev; /* a command, or DATA at SMTPD_MIN_DATA_RATE, has a deadline */
	uint64_t phase_ms;         /* when the current command or message began */
	int close_tries;
	enum smtpd_state state;
	enum kale_listen_kind kind;
	int conn_slot;
	char ip[INET6_ADDRSTRLEN];
	char helo[256];
	int esmtp;
	int helo_done;
	int tls;
	int trusted;
	long local_uid;            /* sendmail.sock: the peer's uid, -1 elsewhere */
	char local_user[64];       /* and its login name */
	int errors;
	/* SMTP AUTH */
	int auth_offer;            /* AUTH may be used on this connection */
	int auth_mech;             /* 1 PLAIN, 2 LOGIN (during the exchange) */
	char *auth_login;          /* LOGIN: the user name given */
	char *auth_address;        /* authenticated address, NULL if none */
	uint64_t auth_req;         /* pending pool request */
	struct smtpd_rcptwait *rw; /* pending recipient verification */
	struct event *auth_delay_ev;   /* the brake's delay before the check */
	struct smtpd_authjob *auth_delayed;   /* the check waiting for it */
	struct brake_ticket auth_brake;
	int auth_fails;
	int discard_line;          /* skipping the rest of an over-long line */
	int busy;                  /* inside smtpd_process */
	struct smtpd_tx tx;
	struct smtpd_session *next, *prev;       /* all sessions */
	struct smtpd_session *commit_next;       /* in the commit batch */
};

struct smtpd_worker {
	struct kale_ctx *ctx;
	const struct kale_config *cfg;
	struct event_base *base;
	store *st;
	struct evconnlistener *lev[16];
	struct smtpd_lctx { struct smtpd_worker *w; struct kale_listener *l; } lctx[16];
	int n_lev;
	struct smtpd_session *sessions;
	int n_sessions;
	struct smtpd_session *commit_head;      /* finished DATA, waiting for a commit */
	struct smtpd_session *commit_inflight;  /* being synced by the commit thread */
	struct smtpd_commit *commit_inflight_job;
	struct smtpd_commit *commit_job;        /* handed to the thread (under commit_mu) */
	pthread_t commit_thr;
	pthread_mutex_t commit_mu;
	pthread_cond_t commit_cv;
	int commit_stop;
	int commit_pipe[2];
	struct event *commit_ev, *commit_done_ev;
	struct event *flush_ev;
	struct event *sig_term, *sig_usr2, *stop_ev;
	int incoming_fd;
	int stopping;
	struct lookup_pool *pool;
	struct auth_settings auth;   /* cached, re-read at most once a second */
	uint64_t auth_read_ms;
};

static void smtpd_read_cb(struct bufferevent *bev, void *arg);
static void smtpd_write_cb(struct bufferevent *bev, void *arg);
static void smtpd_event_cb(struct bufferevent *bev, short what, void *arg);
static void smtpd_process(struct smtpd_session *s);
static void smtpd_free(struct smtpd_session *s);
static const struct auth_settings *smtpd_auth_settings(struct smtpd_worker *w);
static int smtpd_is_submission(const struct smtpd_session *s);
static int smtpd_auth_allowed(struct smtpd_session *s, int *need_tls_r);
static int smtpd_sender_owned(struct smtpd_session *s, const char *sender);
static int smtpd_header_senders(struct smtpd_session *s, const char **reply_r);
static void smtpd_verify_cb(void *ctx, const struct lookup_answer *a);
static void smtpd_rcpt_decide(struct smtpd_session *s, const struct smtp_path *pp, const char *addr,
    int found, const struct store_domain *dom, int special);
static void smtpd_close(struct smtpd_session *s);

/* ---------- replies and logging ---------- */

static void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(s->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void smtpd_log_row(struct smtpd_session *s, const char *action, const char *rcpt,
    const char *code, const char *reason)
{
	struct store_log_row row = { 0 };

	row.qid = s->tx.qid[0] ? s->tx.qid : NULL;
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
static void smtpd_reject(struct smtpd_session *s, const char *rcpt, const char *text)
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

/* ---------- transaction ---------- */

static void smtpd_tx_reset(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;

	for (int i = 0; i < tx->n_rcpt; i++) {
		free(tx->rcpt[i].orig);
		free(tx->rcpt[i].orcpt);
		store_targets_free(tx->rcpt[i].targets, tx->rcpt[i].n_targets);
	}
	free(tx->rcpt);
	if (tx->fd >= 0) {
		char path[128];
		close(tx->fd);
		if (util_fmt(path, sizeof(path), QUEUE_DIR_TMP "/%s", tx->qid) == 0)
			unlink(path);
	}
	free(tx->wbuf);
	free(tx->hs);
	memset(tx, 0, sizeof(*tx));
	tx->fd = -1;
}

static void smtpd_wflush(struct smtpd_tx *tx)
{
	size_t off = 0;

	while (off < tx->wlen && tx->werrno == 0) {
		ssize_t n = write(tx->fd, tx->wbuf + off, tx->wlen - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			tx->werrno = errno;
			break;
		}
		off += (size_t)n;
	}
	tx->body_len += off;
	tx->wlen = 0;
}

static void smtpd_out(void *ctx, const char *p, size_t n)
{
	struct smtpd_tx *tx = ctx;

	if (tx->werrno)
		return;
	while (n > 0) {
		size_t room = SMTPD_WBUF - tx->wlen, k = n < room ? n : room;
		memcpy(tx->wbuf + tx->wlen, p, k);
		tx->wlen += k;
		p += k;
		n -= k;
		if (tx->wlen == SMTPD_WBUF)
			smtpd_wflush(tx);
	}
}

/* Mail from an authenticated client or injected locally gets the header
 * fields it lacks (as Postfix's cleanup does for local and authenticated
 * clients); mail from the open MX port is stored as it came. */
static int smtpd_adds_headers(const struct smtpd_session *s)
{
	return s->auth_address != NULL || s->kind == LISTEN_LOCAL;
}

static void smtpd_hs_out(void *ctx, const char *p, size_t n)
{
	struct smtpd_session *s = ctx;

	smtpd_out(&s->tx, p, n);
}

/* The author for an added From: the authenticated address; for local
 * injection the envelope sender, or LOGIN@hostname for the null sender. */
static void smtpd_default_from(const struct smtpd_session *s, char *buf, size_t cap)
{
	const char *host = s->w->cfg->hostname;

	if (s->auth_address != NULL)
		snprintf(buf, cap, "%s", s->auth_address);
	else if (!s->tx.mail.is_null && s->tx.mail.addr[0])
		snprintf(buf, cap, "%s", s->tx.mail.addr);
	else
		snprintf(buf, cap, "%s@%s", s->local_user[0] ? s->local_user : "MAILER-DAEMON", host);
}

/* The end of the header section (hdrscan): the missing Date:, Message-ID:
 * and From: are written here, before the empty line or the first body line. */
static void smtpd_hdr_end(void *ctx, const struct hdrscan *h)
{
	struct smtpd_session *s = ctx;
	struct smtpd_tx *tx = &s->tx;
	char line[SMTP_PATH_MAX + 512], who[SMTP_PATH_MAX + 128];
	int n;

	if (h->count[HDRSCAN_DATE] == 0) {
		char date[64];
		time_t now = time(NULL);
		struct tm tm;

		localtime_r(&now, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
		n = snprintf(line, sizeof(line), "Date: %s\n", date);
		if (n > 0 && (size_t)n < sizeof(line))
			smtpd_out(tx, line, (size_t)n);
	}
	if (h->count[HDRSCAN_MESSAGE_ID] == 0) {
		n = snprintf(line, sizeof(line), "Message-ID: <%s@%s>\n", tx->qid, s->w->cfg->hostname);
		if (n > 0 && (size_t)n < sizeof(line))
			smtpd_out(tx, line, (size_t)n);
	}
	if (h->count[HDRSCAN_FROM] == 0) {
		smtpd_default_from(s, who, sizeof(who));
		n = snprintf(line, sizeof(line), "From: %s\n", who);
		if (n > 0 && (size_t)n < sizeof(line))
			smtpd_out(tx, line, (size_t)n);
	}
}

/* The message bytes from the DATA/BDAT parser (ctx is the session): through
 * the header scanner when header fields may be added, else straight on. */
static void smtpd_body_out(void *ctx, const char *p, size_t n)
{
	struct smtpd_session *s = ctx;

	if (s->tx.hs != NULL)
		hdrscan_feed(s->tx.hs, p, n, smtpd_hs_out, smtpd_hdr_end, s);
	else
		smtpd_out(&s->tx, p, n);
}

/* Free space on the queue file system, in bytes; UINT64_MAX if unknown. */
static uint64_t smtpd_disk_free(void)
{
	struct statvfs sv;

	if (statvfs(QUEUE_DIR_TMP, &sv) < 0)
		return UINT64_MAX;
	return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* Opens queue/tmp/QID and writes the Received: header. 0 ok, -1 (reply sent). */
static int smtpd_tx_open(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	char path[128], date[64], tlsinfo[160] = "", hdr[2048];
	time_t now = time(NULL);
	struct tm tm;
	SSL *ssl;
	int n;

	if (smtpd_disk_free() < SMTPD_DISK_RESERVE + tx->mail.size) {
		smtpd_reject(s, NULL, "452 4.3.1 Insufficient system storage");
		return -1;
	}
	queue_qid_new(tx->qid);
	if (util_fmt(path, sizeof(path), QUEUE_DIR_TMP "/%s", tx->qid) < 0)
		return -1;
	tx->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (tx->fd < 0) {
		log_event(LOG_LVL_ERROR, "queue.error", "op", "open", "path", path, "error", strerror(errno), NULL);
		tx->qid[0] = '\0';
		smtpd_reply(s, "451 4.3.0 Queue file cannot be created");
		return -1;
	}
	tx->wbuf = xmalloc(SMTPD_WBUF);
	tx->started_us = util_now_us();
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	/* The TLS version and cipher, as Postfix writes them. */
	ssl = s->tls ? bufferevent_openssl_get_ssl(s->bev) : NULL;
	if (ssl != NULL && SSL_get_current_cipher(ssl) != NULL) {
		const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
		int alg_bits = 0, bits = SSL_CIPHER_get_bits(c, &alg_bits);

		snprintf(tlsinfo, sizeof(tlsinfo), "\n\t(using %s with cipher %s (%d/%d bits))",
		    SSL_get_version(ssl), SSL_CIPHER_get_name(c), bits, alg_bits);
	}
	/* WITH protocol: ESMTP + S (TLS) + A (authenticated), RFC 3848; with
	 * SMTPUTF8 it is UTF8SMTP + S + A (RFC 6531 section 3.7.3). */
	if (s->local_uid >= 0)          /* local injection: the uid, as Postfix's pickup */
		snprintf(tlsinfo, sizeof(tlsinfo), "\n\t(uid %ld%s%s)", s->local_uid,
		    s->local_user[0] ? " " : "", s->local_user);
	n = snprintf(hdr, sizeof(hdr),
	    "Received: from %s (%s [%s])%s\n\tby %s (kale) with %s%s%s id %s%s%s%s;\n\t%s\n",
	    s->helo[0] ? s->helo : "unknown", s->ip, s->ip, tlsinfo, s->w->cfg->hostname,
	    tx->mail.smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP", s->tls ? "S" : "",
	    s->auth_address ? "A" : "",
	    tx->qid, tx->n_rcpt == 1 ? "\n\tfor <" : "", tx->n_rcpt == 1 ? tx->rcpt[0].orig : "",
	    tx->n_rcpt == 1 ? ">" : "", date);
	if (n < 0 || (size_t)n >= sizeof(hdr))
		n = 0;
	smtpd_out(tx, hdr, (size_t)n);
	if (smtpd_adds_headers(s)) {
		tx->hs = xmalloc(sizeof(*tx->hs));
		hdrscan_init(tx->hs);
	}
	return 0;
}

/* ---------- group commit ---------- */

static void smtpd_commit_add(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;

	s->state = SMTPD_COMMIT;
	bufferevent_disable(s->bev, EV_READ);
	s->commit_next = w->commit_head;
	w->commit_head = s;
	event_active(w->commit_ev, 0, 0);
}

static void smtpd_accepted(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	char delay[32];

	snprintf(delay, sizeof(delay), "%.3f", (double)(util_now_us() - tx->started_us) / 1e6);
	smtpd_reply(s, "250 2.0.0 Ok: queued as %s", tx->qid);
	for (int i = 0; i < tx->n_rcpt; i++)
		smtpd_log_row(s, "accepted", tx->rcpt[i].orig, "250 2.0.0", NULL);
	{
		char size[32], nr[16];
		snprintf(size, sizeof(size), "%llu", (unsigned long long)tx->body_len);
		snprintf(nr, sizeof(nr), "%d", tx->n_rcpt);
		log_event(LOG_LVL_INFO, "smtp.accept", "qid", tx->qid, "client", s->ip,
		    "from", tx->mail.addr, "to", tx->rcpt[0].orig, "nrcpt", nr, "size", size,
		    "delay", delay, NULL);
	}
	close(tx->fd);
	tx->fd = -1;       /* committed: smtpd_tx_reset must not unlink */
	smtpd_tx_reset(s);
}

/* A group commit handed to the commit thread: the sessions' queue ids, one
 * fd on the queue file system for syncfs, and the results. */
struct smtpd_commit {
	int n;
	char (*qid)[32];
	int *err;                  /* per message: rename error */
	int sync_fd;
	int sync_err, dir_err;
};

/* The disk work of one group commit: one syncfs for every file of the
 * batch, the renames into incoming/ (the commit point), one fsync of the
 * directory. Runs on the commit thread, or inline at shutdown. */
static void smtpd_commit_work(struct smtpd_commit *c, int incoming_fd)
{
	if (syncfs(c->sync_fd) < 0) {
		c->sync_err = errno;
		return;
	}
	for (int i = 0; i < c->n; i++) {
		char from[128], to[128];
		snprintf(from, sizeof(from), QUEUE_DIR_TMP "/%s", c->qid[i]);
		snprintf(to, sizeof(to), QUEUE_DIR_INCOMING "/%s", c->qid[i]);
		if (rename(from, to) < 0)
			c->err[i] = errno ? errno : EIO;
	}
	if (fsync(incoming_fd) < 0)
		c->dir_err = errno;
}

static struct smtpd_commit *smtpd_commit_prepare(struct smtpd_session *batch)
{
	struct smtpd_commit *c = xcalloc(1, sizeof(*c));
	int n = 0;

	for (struct smtpd_session *s = batch; s; s = s->commit_next)
		n++;
	c->qid = xcalloc((size_t)n, sizeof(*c->qid));
	c->err = xcalloc((size_t)n, sizeof(int));
	c->sync_fd = batch->tx.fd;
	for (struct smtpd_session *s = batch; s; s = s->commit_next)
		memcpy(c->qid[c->n++], s->tx.qid, sizeof(c->qid[0]));
	return c;
}

/* Back on the loop: answer every session of the batch. */
static void smtpd_commit_finish(struct smtpd_worker *w, struct smtpd_session *batch, struct smtpd_commit *c)
{
	struct smtpd_session *s, *next;
	int i = 0;

	(void)w;
	if (c->sync_err || c->dir_err)
		log_event(LOG_LVL_ERROR, "queue.error", "op", c->sync_err ? "syncfs" : "fsync-dir",
		    "error", strerror(c->sync_err ? c->sync_err : c->dir_err), NULL);
	for (s = batch; s; s = next, i++) {
		next = s->commit_next;
		s->commit_next = NULL;
		s->state = SMTPD_CMD;
		if (c->err[i]) {
			log_event(LOG_LVL_ERROR, "queue.error", "op", "rename", "qid", s->tx.qid,
			    "error", strerror(c->err[i]), NULL);
			s->tx.werrno = c->err[i];
		}
		if (c->sync_err || c->dir_err || s->tx.werrno) {
			/* Not durable, or not known to be: nothing was answered yet,
			 * so a 4xx makes the client retry. After a failed directory
			 * fsync the file is in incoming/ and may still be delivered:
			 * a duplicate at worst, never a loss. */
			smtpd_reject(s, NULL, (c->sync_err == ENOSPC || c->sync_err == EDQUOT)
			    ? "452 4.3.1 Insufficient system storage" : "451 4.3.0 Queue write error");
			if (!c->sync_err && !c->err[i]) {
				close(s->tx.fd);   /* renamed: must not be unlinked from tmp/ */
				s->tx.fd = -1;
			}
			smtpd_tx_reset(s);
		} else {
			smtpd_accepted(s);
		}
		bufferevent_enable(s->bev, EV_READ);
		smtpd_process(s);
	}
	free(c->qid);
	free(c->err);
	free(c);
}

static void *smtpd_commit_thread(void *arg)
{
	struct smtpd_worker *w = arg;

	for (;;) {
		struct smtpd_commit *c;
		char one = 1;

		pthread_mutex_lock(&w->commit_mu);
		while (w->commit_job == NULL && !w->commit_stop)
			pthread_cond_wait(&w->commit_cv, &w->commit_mu);
		c = w->commit_job;
		w->commit_job = NULL;
		pthread_mutex_unlock(&w->commit_mu);
		if (c == NULL)
			break;
		smtpd_commit_work(c, w->incoming_fd);
		while (write(w->commit_pipe[1], &one, 1) < 0 && errno == EINTR)
			;
	}
	return NULL;
}

/* Runs after the loop's pending I/O callbacks. The sessions that finished
 * in this round form a batch; while one batch syncs on the commit thread,
 * the loop goes on serving everyone else and the next batch gathers, so the
 * disk is kept busy with ever larger groups. */
static void smtpd_commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_worker *w = arg;
	struct smtpd_commit *c;

	(void)fd;
	(void)what;
	if (w->commit_inflight || w->commit_head == NULL)
		return;
	w->commit_inflight = w->commit_head;
	w->commit_head = NULL;
	c = smtpd_commit_prepare(w->commit_inflight);
	w->commit_inflight_job = c;
	pthread_mutex_lock(&w->commit_mu);
	w->commit_job = c;
	pthread_cond_signal(&w->commit_cv);
	pthread_mutex_unlock(&w->commit_mu);
}

static void smtpd_commit_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_worker *w = arg;
	struct smtpd_session *batch = w->commit_inflight;
	char buf[16];

	(void)what;
	if (read(fd, buf, sizeof(buf)) <= 0 || batch == NULL)
		return;
	w->commit_inflight = NULL;
	smtpd_commit_finish(w, batch, w->commit_inflight_job);
	w->commit_inflight_job = NULL;
	if (w->commit_head)
		event_active(w->commit_ev, 0, 0);
}

/* At shutdown: wait for the batch in flight, then commit what is pending
 * inline, so every session that finished its DATA gets its answer. */
static void smtpd_commit_drain(struct smtpd_worker *w)
{
	if (w->commit_inflight) {
		char b;
		int fl = fcntl(w->commit_pipe[0], F_GETFL);
		fcntl(w->commit_pipe[0], F_SETFL, fl & ~O_NONBLOCK);
		while (read(w->commit_pipe[0], &b, 1) < 0 && errno == EINTR)
			;
		fcntl(w->commit_pipe[0], F_SETFL, fl);
		{
			struct smtpd_session *batch = w->commit_inflight;
			w->commit_inflight = NULL;
			smtpd_commit_finish(w, batch, w->commit_inflight_job);
			w->commit_inflight_job = NULL;
		}
	}
	if (w->commit_head) {
		struct smtpd_session *batch = w->commit_head;
		struct smtpd_commit *c;
		w->commit_head = NULL;
		c = smtpd_commit_prepare(batch);
		smtpd_commit_work(c, w->incoming_fd);
		smtpd_commit_finish(w, batch, c);
	}
}

/* ---------- end of message ---------- */

static void smtpd_message_done(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	struct queue_env env = { 0 };

	if (tx->hs != NULL && !tx->data.too_big)
		hdrscan_finish(tx->hs, smtpd_hs_out, smtpd_hdr_end, s);
	smtpd_wflush(tx);
	if (tx->data.too_big) {
		smtpd_reject(s, NULL, "552 5.3.4 Message size exceeds fixed limit");
		smtpd_tx_reset(s);
		return;
	}
	if (tx->data.hops > SMTPD_MAX_HOPS) {
		smtpd_reject(s, NULL, "554 5.4.6 Too many hops (mail loop?)");
		smtpd_tx_reset(s);
		return;
	}
	if (tx->werrno == 0 && s->auth_address && smtpd_auth_settings(s->w)->fake_sender_control) {
		const char *reply = NULL;
		int r = smtpd_header_senders(s, &reply);
		if (r <= 0) {
			smtpd_reject(s, NULL, r < 0 ? "451 4.3.0 Temporary lookup failure" : reply);
			smtpd_tx_reset(s);
			return;
		}
	}
	if (tx->werrno == 0) {
		env.version = QUEUE_FORMAT_VERSION;
		env.auth_user = s->auth_address;
		snprintf(env.qid, sizeof(env.qid), "%s", tx->qid);
		env.arrival = time(NULL);
		env.client_ip = s->ip;
		env.helo = s->helo;
		env.sender = tx->mail.addr;
		env.envid = tx->mail.envid[0] ? tx->mail.envid : NULL;
		env.ret = tx->mail.ret;
		env.smtputf8 = tx->mail.smtputf8;
		env.body8bit = tx->mail.body == 8;
		env.body_len = tx->body_len;
		for (int i = 0; i < tx->n_rcpt; i++)
			for (int j = 0; j < tx->rcpt[i].n_targets; j++)
				queue_env_add_rcpt(&env, tx->rcpt[i].targets[j], tx->rcpt[i].orig,
				    tx->rcpt[i].orcpt, tx->rcpt[i].notify);
		if (queue_file_finish(tx->fd, &env) < 0)
			tx->werrno = errno ? errno : EIO;
		/* the strings belong to the session; free only what the env allocated */
		env.client_ip = env.helo = env.sender = env.envid = env.auth_user = NULL;
		queue_env_free(&env);
	}
	if (tx->werrno) {
		log_event(LOG_LVL_ERROR, "queue.error", "op", "write", "qid", tx->qid,
		    "error", strerror(tx->werrno), NULL);
		smtpd_reject(s, NULL, (tx->werrno == ENOSPC || tx->werrno == EDQUOT)
		    ? "452 4.3.1 Insufficient system storage" : "451 4.3.0 Queue write error");
		smtpd_tx_reset(s);
		return;
	}
	smtpd_commit_add(s);
}

/* ---------- commands ---------- */

static int smtpd_need_helo(struct smtpd_session *s)
{
	if (s->helo_done)
		return 0;
	smtpd_reply(s, "503 5.5.1 Send HELO/EHLO first");
	return 1;
}

static void smtpd_cmd_helo(struct smtpd_session *s, const char *arg, int esmtp)
{
	const struct kale_config *cfg = s->w->cfg;

	if (smtp_parse_helo(arg) < 0) {
		smtpd_reply(s, "501 5.5.4 Invalid domain name");
		s->errors++;
		return;
	}
	smtpd_tx_reset(s);
	snprintf(s->helo, sizeof(s->helo), "%s", arg);
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

/* Local injection: root and the run_as user may give any sender (-f), as
 * Postfix's trusted users; any other user only USER@hostname or USER@ a
 * local domain, so a shell account cannot forge mail through sendmail. */
static int smtpd_local_sender(struct smtpd_session *s, const struct smtp_path *p)
{
	const char *at;
	size_t ul;
	struct store_domain d;

	if (s->kind != LISTEN_LOCAL || s->local_uid < 0 || s->local_uid == 0 ||
	    s->local_uid == (long)geteuid())
		return 1;
	if (p->is_null || s->local_user[0] == '\0')
		return 0;
	at = strrchr(p->addr, '@');
	ul = strlen(s->local_user);
	if (at == NULL || (size_t)(at - p->addr) != ul || strncasecmp(p->addr, s->local_user, ul) != 0)
		return 0;
	if (strcasecmp(at + 1, s->w->cfg->hostname) == 0)
		return 1;
	return store_domain_get(s->w->st, at + 1, &d) == 1 && d.local;
}

static void smtpd_cmd_mail(struct smtpd_session *s, const char *arg)
{
	struct smtpd_tx *tx = &s->tx;
	const char *err;

	if (smtpd_need_helo(s))
		return;
	if (tx->active) {
		smtpd_reply(s, "503 5.5.1 Nested MAIL command");
		return;
	}
	if (smtp_parse_path(arg, 1, &tx->mail, &err) < 0) {
		smtpd_reject(s, NULL, err);
		s->errors++;
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	if (smtpd_is_submission(s) && s->auth_address == NULL) {
		smtpd_reject(s, NULL, "530 5.7.0 Authentication required");
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	if (s->auth_address && smtpd_auth_settings(s->w)->fake_sender_control) {
		int own = tx->mail.is_null ? 0 : smtpd_sender_owned(s, tx->mail.addr);
		if (own <= 0) {
			smtpd_reject(s, NULL, own < 0 ? "451 4.3.0 Temporary lookup failure"
			    : "553 5.7.1 Sender address not owned by the authenticated user");
			memset(&tx->mail, 0, sizeof(tx->mail));
			return;
		}
	}
	if (!smtpd_local_sender(s, &tx->mail)) {
		smtpd_reject(s, NULL, "553 5.7.1 A local user sends only as itself");
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	if (tx->mail.size > s->w->cfg->message_size) {
		smtpd_reject(s, NULL, "552 5.3.4 Message size exceeds fixed limit");
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	if (smtpd_disk_free() < SMTPD_DISK_RESERVE + tx->mail.size) {
		smtpd_reject(s, NULL, "452 4.3.1 Insufficient system storage");
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	if (tx->mail.utf8 && !tx->mail.smtputf8) {
		smtpd_reject(s, NULL, "553 5.6.7 Non-ASCII address needs SMTPUTF8");
		memset(&tx->mail, 0, sizeof(tx->mail));
		return;
	}
	tx->active = 1;
	smtpd_reply(s, "250 2.1.0 Ok");
}

/* The first local domain, the postmaster's fallback when none is set and no
 * local domain has a postmaster user or alias. */
static int smtpd_first_local_cb(void *ctx, const struct store_domain *d)
{
	if (!d->local)
		return 0;
	snprintf(ctx, 256, "%s", d->name);
	return 1;
}

static int smtpd_is_postmaster(const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t n = at ? (size_t)(at - addr) : strlen(addr);
	return n == 10 && strncasecmp(addr, "postmaster", 10) == 0;
}

/* Rewrites RCPT for names of this host that no domain record covers:
 * unqualified "postmaster" and postmaster@hostname go to the postmaster
 * (RFC 5321 4.5.1: always accepted), any other LOCAL@hostname (root,
 * cron's users) to the root alias, for local, trusted and authenticated
 * clients. 1 rewritten (p and addr), 0 not ours, -1 error (replied). */
static int smtpd_rcpt_host(struct smtpd_session *s, struct smtp_path *p, char *addr, size_t cap)
{
	const struct kale_config *cfg = s->w->cfg;
	struct store_domain d;
	char to[300], first[256] = "";
	int pm = smtpd_is_postmaster(p->addr), r;

	if (p->domain[0] != '\0') {
		if (p->domain_literal || strcasecmp(p->domain, cfg->hostname) != 0)
			return 0;
		if ((r = store_domain_get(s->w->st, p->domain, &d)) != 0) {
			if (r > 0)
				return 0;       /* the host name is a domain of its own */
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return -1;
		}
		if (!pm && s->kind != LISTEN_LOCAL && !s->trusted && s->auth_address == NULL)
			return 0;
	}
	r = pm ? store_postmaster(s->w->st, cfg, to, sizeof(to))
	       : store_root_alias(s->w->st, cfg, to, sizeof(to));
	if (r < 0) {
		smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
		return -1;
	}
	if (r == 0) {
		/* Nobody configured: queued for postmaster of the first local
		 * domain (or of this host) all the same, with a warning. */
		if (store_domain_list(s->w->st, smtpd_first_local_cb, first) < 0) {
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return -1;
		}
		snprintf(to, sizeof(to), "postmaster@%s", first[0] ? first : cfg->hostname);
		log_event(LOG_LVL_WARN, "smtp.postmaster", "client", s->ip, "rcpt", addr, "to", to,
		    "reason", "no [server] postmaster, and no postmaster user or alias in a local domain",
		    NULL);
	}
	snprintf(addr, cap, "%s", to);
	snprintf(p->domain, sizeof(p->domain), "%s", strrchr(to, '@') + 1);
	return 1;
}

static void smtpd_cmd_rcpt(struct smtpd_session *s, const char *arg)
{
	struct smtpd_tx *tx = &s->tx;
	struct smtp_path p;
	struct store_domain dom;
	const char *err;
	char addr[300];
	int found, special;

	if (!tx->active) {
		smtpd_reply(s, "503 5.5.1 Need MAIL before RCPT");
		return;
	}
	if (smtp_parse_path(arg, 0, &p, &err) < 0) {
		smtpd_reject(s, NULL, err);
		s->errors++;
		return;
	}
	if (p.utf8 && !tx->mail.smtputf8) {
		smtpd_reject(s, p.addr, "553 5.6.7 Non-ASCII address needs SMTPUTF8");
		return;
	}
	if (tx->n_targets >= s->w->cfg->max_recipients) {
		smtpd_reject(s, p.addr, "452 4.5.3 Too many recipients");
		return;
	}
	snprintf(addr, sizeof(addr), "%s", p.addr);
	if ((special = smtpd_rcpt_host(s, &p, addr, sizeof(addr))) < 0)
		return;
	found = p.domain_literal ? 0 : store_domain_get(s->w->st, p.domain, &dom);
	if (found < 0) {
		smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
		return;
	}
	/* postmaster@ any domain we accept is never refused by a profile */
	special |= found && smtpd_is_postmaster(addr);
	if (!special && found && dom.verify[0] && strcmp(dom.verify, "none") != 0 && s->w->pool) {
		/* The domain's verification profile decides first, off the loop. */
		struct smtpd_rcptwait *rw = xcalloc(1, sizeof(*rw));
		rw->p = p;
		snprintf(rw->addr, sizeof(rw->addr), "%s", addr);
		rw->dom = dom;
		s->rw = rw;
		s->state = SMTPD_WAIT;
		bufferevent_disable(s->bev, EV_READ);
		{
			/* the answer may come at once (a cache hit): rw is gone then */
			uint64_t id = lookup_verify(s->w->pool, dom.verify, addr, smtpd_verify_cb, s);
			if (s->rw == rw)
				rw->req = id;
		}
		return;
	}
	smtpd_rcpt_decide(s, &p, addr, found, &dom, special);
}

/* The verification profile answered: go on with RCPT where it stopped. */
static void smtpd_verify_cb(void *ctx, const struct lookup_answer *a)
{
	struct smtpd_session *s = ctx;
	struct smtpd_rcptwait *rw = s->rw;
	struct store_log_row row = { 0 };
	char usec[32];

	s->rw = NULL;
	if (s->state == SMTPD_CLOSING) {
		free(rw);                  /* shutting down: the 421 is on its way */
		return;
	}
	s->state = SMTPD_CMD;
	snprintf(usec, sizeof(usec), "%lld", (long long)a->elapsed_us);
	log_event(LOG_LVL_DEBUG, "verify.answer", "profile", a->profile, "to", rw->addr,
	    "result", a->result == LOOKUP_FOUND ? "found" : a->result == LOOKUP_MISSING ? "missing" : "error",
	    "detail", a->detail, "usec", usec, NULL);
	if (a->result == LOOKUP_FOUND) {
		smtpd_rcpt_decide(s, &rw->p, rw->addr, 1, &rw->dom, 0);
	} else {
		const char *text = a->result == LOOKUP_MISSING
		    ? "550 5.1.1 Recipient address rejected: User unknown"
		    : "451 4.4.3 Recipient verification temporarily unavailable";
		smtpd_reply(s, "%s", text);
		row.client = s->ip;
		row.helo = s->helo[0] ? s->helo : NULL;
		row.sender = s->tx.active ? s->tx.mail.addr : NULL;
		row.rcpt = rw->addr;
		row.action = "rejected";
		row.code = a->result == LOOKUP_MISSING ? "550 5.1.1" : "451 4.4.3";
		row.reason = a->detail ? a->detail : (a->result == LOOKUP_MISSING ? "user unknown" : "verification failed");
		row.profile = a->profile;
		store_log_add(s->w->st, &row);
		log_event(LOG_LVL_INFO, "smtp.reject", "client", s->ip, "to", rw->addr, "reply", text,
		    "profile", a->profile, NULL);
	}
	free(rw);
	if (s->busy)
		return;          /* answered inside smtpd_process: its loop goes on */
	bufferevent_enable(s->bev, EV_READ);
	smtpd_process(s);
}

/* Decides RCPT once the domain (and any verification profile) is known.
 * special: postmaster or a name of this host (never refused; 2 once
 * rewritten to the postmaster, which is not rewritten again). */
static void smtpd_rcpt_decide(struct smtpd_session *s, const struct smtp_path *pp, const char *addr,
    int found, const struct store_domain *dom, int special)
{
	struct smtpd_tx *tx = &s->tx;
	char **targets = NULL;
	char *error = NULL;
	int n = 0;

	if (found && dom->local) {
		n = store_rcpt_resolve(s->w->st, addr, &targets, &error);
		if (n < 0) {
			log_event(LOG_LVL_ERROR, "store.error", "op", "rcpt", "error", error, NULL);
			free(error);
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return;
		}
		if (n == 0 && special == 1 && smtpd_is_postmaster(addr)) {
			/* postmaster@ a local domain without one: the postmaster */
			struct store_domain d2;
			char to[300];
			int f2 = -1;
			if (store_postmaster(s->w->st, s->w->cfg, to, sizeof(to)) == 1 &&
			    strcasecmp(to, addr) != 0 &&
			    (f2 = store_domain_get(s->w->st, strrchr(to, '@') + 1, &d2)) >= 0) {
				store_targets_free(targets, 0);
				smtpd_rcpt_decide(s, pp, to, f2, &d2, 2);
				return;
			}
		}
		if (n == 0 && special) {
			store_targets_free(targets, 0);
			targets = xmalloc(sizeof(char *));
			targets[0] = xstrdup(addr);
			n = 1;
		}
		if (n == 0) {
			smtpd_reject(s, addr, "550 5.1.1 Recipient address rejected: User unknown");
			return;
		}
	} else if (found || s->trusted || s->auth_address || special) {
		/* Relay domain, or a trusted or authenticated client relaying
		 * anywhere, or the postmaster / root alias elsewhere: queued
		 * for the remote delivery agent. */
		targets = xmalloc(sizeof(char *));
		targets[0] = xstrdup(addr);
		n = 1;
	} else {
		smtpd_reject(s, addr, "554 5.7.1 Relay access denied");
		return;
	}
	/* An address reached twice (directly and through an alias) gets one copy. */
	for (int i = 0; i < n; i++) {
		int dup = 0;
		for (int r = 0; r < tx->n_rcpt && !dup; r++)
			for (int t = 0; t < tx->rcpt[r].n_targets && !dup; t++)
				dup = strcasecmp(tx->rcpt[r].targets[t], targets[i]) == 0;
		for (int j = 0; j < i && !dup; j++)
			dup = strcasecmp(targets[j], targets[i]) == 0;
		if (dup) {
			free(targets[i]);
			targets[i--] = targets[--n];
		}
	}
	if (tx->n_targets + n > s->w->cfg->max_recipients) {
		store_targets_free(targets, n);
		smtpd_reject(s, addr, "452 4.5.3 Too many recipients");
		return;
	}
	tx->rcpt = xrealloc(tx->rcpt, sizeof(*tx->rcpt) * (size_t)(tx->n_rcpt + 1));
	tx->rcpt[tx->n_rcpt].orig = xstrdup(pp->addr);
	tx->rcpt[tx->n_rcpt].orcpt = pp->orcpt[0] ? xstrdup(pp->orcpt) : NULL;
	tx->rcpt[tx->n_rcpt].notify = pp->notify;
	tx->rcpt[tx->n_rcpt].targets = targets;
	tx->rcpt[tx->n_rcpt].n_targets = n;
	tx->n_rcpt++;
	tx->n_targets += n;
	smtpd_reply(s, "250 2.1.5 Ok");
}

static void smtpd_cmd_data(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;

	if (!tx->active) {
		smtpd_reply(s, "503 5.5.1 Need MAIL command");
		return;
	}
	if (tx->n_rcpt == 0) {
		smtpd_reply(s, "554 5.5.1 No valid recipients");
		return;
	}
	if (tx->bdat) {
		smtpd_reply(s, "503 5.5.1 DATA after BDAT");
		return;
	}
	if (smtpd_tx_open(s) < 0) {
		smtpd_tx_reset(s);
		return;
	}
	smtp_data_init(&tx->data, s->w->cfg->message_size);
	smtpd_reply(s, "354 End data with <CR><LF>.<CR><LF>");
	s->state = SMTPD_DATA;
}

static void smtpd_cmd_bdat(struct smtpd_session *s, const char *arg)
{
	struct smtpd_tx *tx = &s->tx;
	uint64_t size;
	int last;

	if (smtp_parse_bdat(arg, &size, &last) < 0) {
		/* The chunk size is unknown, so the stream cannot be resynchronised. */
		smtpd_reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		smtpd_reply(s, "421 4.7.0 Closing connection");
		s->state = SMTPD_CLOSING;
		return;
	}
	s->state = SMTPD_BDAT;
	tx->bdat_size = size;
	tx->bdat_left = size;
	tx->bdat_last = last;
	tx->bdat_error = NULL;
	if (!tx->active) {
		tx->bdat_error = "503 5.5.1 Need MAIL command";
		return;
	}
	if (tx->n_rcpt == 0) {
		tx->bdat_error = "554 5.5.1 No valid recipients";
		return;
	}
	if (!tx->bdat) {
		if (smtpd_tx_open(s) < 0) {
			/* reply already sent; swallow the chunk silently */
			tx->bdat_error = "";
			return;
		}
		smtp_bdat_init(&tx->data, s->w->cfg->message_size);
		tx->bdat = 1;
	}
	if (tx->data.size + size > s->w->cfg->message_size)
		tx->data.too_big = 1;
}

/* Called when the current BDAT chunk has been read completely. */
static void smtpd_bdat_chunk_done(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;

	s->state = SMTPD_CMD;
	if (tx->bdat_error) {
		if (tx->bdat_error[0])
			smtpd_reject(s, NULL, tx->bdat_error);
		if (tx->bdat)
			smtpd_tx_reset(s);
		return;
	}
	if (tx->data.too_big) {
		/* Every further chunk of this message is read and refused the same
		 * way until LAST (a pipelining client has sent them already). */
		smtpd_reject(s, NULL, "552 5.3.4 Message size exceeds fixed limit");
		if (tx->bdat_last)
			smtpd_tx_reset(s);
		return;
	}
	if (!tx->bdat_last) {
		/* the chunk as sent, not what is left after CRLF -> LF */
		smtpd_reply(s, "250 2.0.0 %llu octets received",
		    (unsigned long long)tx->bdat_size);
		return;
	}
	smtp_bdat_last(&tx->data, smtpd_body_out, s);
	smtpd_message_done(s);
}

static void smtpd_starttls(struct smtpd_session *s, const char *arg)
{
	struct smtpd_worker *w = s->w;
	struct bufferevent *tbev;
	SSL *ssl;

	if (s->tls) {
		smtpd_reply(s, "503 5.5.1 TLS already active");
		return;
	}
	if (*arg) {
		smtpd_reply(s, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (w->ctx->tls == NULL || (ssl = SSL_new(w->ctx->tls)) == NULL) {
		smtpd_reply(s, "454 4.7.0 TLS not available");
		return;
	}
	smtpd_reply(s, "220 2.0.0 Ready to start TLS");
	/* Anything the client pipelined behind STARTTLS is plaintext that must
	 * not be taken as coming through TLS (CVE-2011-0411): drop it. */
	evbuffer_drain(bufferevent_get_input(s->bev), evbuffer_get_length(bufferevent_get_input(s->bev)));
	tbev = bufferevent_openssl_filter_new(w->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tbev == NULL) {
		SSL_free(ssl);
		s->state = SMTPD_CLOSING;
		return;
	}
	s->bev = tbev;
	bufferevent_setcb(s->bev, smtpd_read_cb, smtpd_write_cb, smtpd_event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, 1024 * 1024);
	{
		struct timeval tv = { w->cfg->command_timeout, 0 };
		bufferevent_set_timeouts(s->bev, &tv, &tv);
	}
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->tls = 1;
	s->helo_done = 0;
	s->esmtp = 0;
	s->helo[0] = '\0';
	xfree(&s->auth_address);
	smtpd_tx_reset(s);
}


/* ---------- SMTP AUTH (submission) ---------- */

static const struct auth_settings *smtpd_auth_settings(struct smtpd_worker *w)
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

static int smtpd_is_submission(const struct smtpd_session *s)
{
	return s->kind == LISTEN_SUBMISSION || s->kind == LISTEN_SUBMISSIONS;
}

/* AUTH is offered on the submission ports (and the MX port with
 * auth_on_mx), and only inside TLS unless the admin turned tls-only off. */
static int smtpd_auth_allowed(struct smtpd_session *s, int *need_tls_r)
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

static void smtpd_authjob_free(struct smtpd_authjob *j)
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
			smtpd_reply(s, "235 2.7.0 Authentication successful");
			log_event(LOG_LVL_INFO, "auth.ok", "client", s->ip, "user", s->auth_address,
			    "detail", j->detail, NULL);
			s->state = SMTPD_CMD;
			break;
		case AUTH_FAIL: {
			struct store_log_row row = { 0 };
			s->auth_fails++;
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
static void smtpd_auth_line(struct smtpd_session *s, const char *line)
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

static void smtpd_cmd_auth(struct smtpd_session *s, char *arg)
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

/* Fake sender control: the envelope sender must be the user's own address or
 * an alias that delivers to the user. 1 allowed, 0 not, -1 lookup error. */
static int smtpd_sender_owned(struct smtpd_session *s, const char *sender)
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
static int smtpd_header_senders(struct smtpd_session *s, const char **reply_r)
{
	static const struct {
		int kind;
		const char *many, *too_long, *syntax, *count, *owner;
	} f[2] = {
		{ HDRSCAN_FROM, "550 5.7.1 More than one From: header field",
		  "550 5.7.1 From: header field too long",
		  "550 5.7.1 From: header field cannot be parsed",
		  "550 5.7.1 From: header field without an address",
		  "550 5.7.1 From: header address not owned by the authenticated user" },
		{ HDRSCAN_SENDER, "550 5.7.1 More than one Sender: header field",
		  "550 5.7.1 Sender: header field too long",
		  "550 5.7.1 Sender: header field cannot be parsed",
		  "550 5.7.1 Sender: header field must hold exactly one address",
		  "550 5.7.1 Sender: header address not owned by the authenticated user" },
	};
	const struct hdrscan *h = s->tx.hs;

	if (h == NULL)
		return -1;         /* cannot check: never let it pass */
	for (int i = 0; i < 2; i++) {
		const struct hdrscan_body *b = f[i].kind == HDRSCAN_FROM ? &h->from : &h->sender;
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
			    f[i].kind == HDRSCAN_FROM ? "From" : "Sender", "error", err, NULL);
			*reply_r = f[i].syntax;
			return 0;
		}
		if (l.n == 0 || (f[i].kind == HDRSCAN_SENDER && l.n != 1)) {
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

/* The local peer's uid and login (sendmail.sock). */
static void smtpd_local_identity(struct smtpd_session *s, uid_t uid)
{
	struct passwd pw, *pwr = NULL;
	char pwbuf[1024];

	s->local_uid = (long)uid;
	s->local_user[0] = '\0';
	if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwr) == 0 && pwr != NULL)
		snprintf(s->local_user, sizeof(s->local_user), "%s", pwr->pw_name);
}

/* "XUID uid" on sendmail.sock, from root or run_as only (the maildrop
 * pickup): the session then speaks for that uid, as if the user had
 * connected (sender rules, added headers, Received). Once per session,
 * before MAIL; the new identity is not trusted to change it again. */
static void smtpd_cmd_xuid(struct smtpd_session *s, const char *arg, size_t len)
{
	char *end;
	unsigned long uid;
	char num[24];

	if (s->local_uid != 0 && s->local_uid != (long)geteuid()) {
		smtpd_reply(s, "550 5.7.0 XUID is for the maildrop pickup only");
		return;
	}
	if (s->tx.active) {
		smtpd_reply(s, "503 5.5.1 XUID inside a transaction");
		return;
	}
	while (len > 0 && (arg[len - 1] == '\r' || arg[len - 1] == '\n'))
		len--;
	if (len == 0 || len >= sizeof(num) || strspn(arg, "0123456789") < len) {
		smtpd_reply(s, "501 5.5.4 Syntax: XUID uid");
		return;
	}
	memcpy(num, arg, len);
	num[len] = '\0';
	errno = 0;
	uid = strtoul(num, &end, 10);
	if (errno != 0 || uid > 0xfffffffeUL) {
		smtpd_reply(s, "501 5.5.4 Syntax: XUID uid");
		return;
	}
	smtpd_local_identity(s, (uid_t)uid);
	smtpd_reply(s, "250 2.0.0 Ok");
}

static void smtpd_command(struct smtpd_session *s, char *line, size_t len)
{
	if (s->kind == LISTEN_LOCAL && len > 5 && strncasecmp(line, "XUID ", 5) == 0) {
		smtpd_cmd_xuid(s, line + 5, len - 5);
		return;
	}
	struct smtp_cmd cmd;
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
	switch (cmd.verb) {
	case SMTP_HELO:
		smtpd_cmd_helo(s, cmd.arg, 0);
		break;
	case SMTP_EHLO:
		smtpd_cmd_helo(s, cmd.arg, 1);
		break;
	case SMTP_MAIL:
		smtpd_cmd_mail(s, cmd.arg);
		break;
	case SMTP_RCPT:
		smtpd_cmd_rcpt(s, cmd.arg);
		break;
	case SMTP_DATA:
		smtpd_cmd_data(s);
		break;
	case SMTP_BDAT:
		smtpd_cmd_bdat(s, cmd.arg);
		break;
	case SMTP_RSET:
		smtpd_tx_reset(s);
		smtpd_reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_NOOP:
		smtpd_reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_QUIT:
		smtpd_reply(s, "221 2.0.0 Bye");
		s->state = SMTPD_CLOSING;
		break;
	case SMTP_VRFY:
		smtpd_reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_EXPN:
		smtpd_reply(s, "502 5.5.1 EXPN not supported");
		break;
	case SMTP_HELP:
		smtpd_reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS");
		break;
	case SMTP_STARTTLS:
		smtpd_starttls(s, cmd.arg);
		break;
	case SMTP_AUTH:
		smtpd_cmd_auth(s, (char *)cmd.arg);
		break;
	default:
		smtpd_reply(s, "500 5.5.1 Command unrecognized");
		s->errors++;
		break;
	}
	if (s->errors >= SMTPD_MAX_ERRORS && s->state != SMTPD_CLOSING) {
		smtpd_reply(s, "421 4.7.0 Too many errors, closing connection");
		s->state = SMTPD_CLOSING;
	}
}

/* ---------- input ---------- */

/* Reads DATA bytes from input; returns 1 when the message ended. */
static int smtpd_read_data(struct smtpd_session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[8];
	int n = evbuffer_peek(in, -1, NULL, v, 8);
	size_t used_total = 0;
	int done = 0;

	for (int i = 0; i < n && i < 8 && !done; i++) {
		size_t used = smtp_data_feed(&s->tx.data, v[i].iov_base, v[i].iov_len, &done,
		    smtpd_body_out, s);
		used_total += used;
	}
	evbuffer_drain(in, used_total);
	return done;
}

static void smtpd_read_bdat(struct smtpd_session *s, struct evbuffer *in)
{
	struct smtpd_tx *tx = &s->tx;

	while (tx->bdat_left > 0 && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		size_t k;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		k = v.iov_len < tx->bdat_left ? v.iov_len : (size_t)tx->bdat_left;
		if (!tx->bdat_error && !tx->data.too_big)
			smtp_bdat_feed(&tx->data, v.iov_base, k, smtpd_body_out, s);
		evbuffer_drain(in, k);
		tx->bdat_left -= k;
	}
	if (tx->bdat_left == 0)
		smtpd_bdat_chunk_done(s);
}

static void smtpd_process_loop(struct smtpd_session *s);

/* An over-long line in the middle of AUTH ends the exchange: the next line
 * is a command again, not more AUTH data. */
static void smtpd_auth_abort(struct smtpd_session *s)
{
	if (s->state != SMTPD_AUTH)
		return;
	s->state = SMTPD_CMD;
	s->auth_mech = 0;
	xfree(&s->auth_login);
}

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

static void smtpd_timeout(struct smtpd_session *s);

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

static void smtpd_process(struct smtpd_session *s)
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
		    s->state == SMTPD_WAIT)
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
	if (s->state != SMTPD_COMMIT && s->state != SMTPD_WAIT) {
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > SMTPD_OUT_MAX)
			bufferevent_disable(s->bev, EV_READ);
		else
			bufferevent_enable(s->bev, EV_READ);
	}
}

/* Bytes not yet handed to the kernel: with TLS, the filter's output moves
 * into the underlying socket bufferevent before it is sent. */
static size_t smtpd_out_pending(struct smtpd_session *s)
{
	struct bufferevent *under = bufferevent_get_underlying(s->bev);
	size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));

	if (under)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

static void smtpd_close_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtpd_session *s = arg;
	struct timeval tv = { 0, 20000 };

	(void)fd;
	(void)what;
	if (smtpd_out_pending(s) == 0 || ++s->close_tries > 250) {
		smtpd_free(s);
		return;
	}
	evtimer_add(s->close_ev, &tv);
}

/* Frees the session once its last reply has left. */
static void smtpd_close(struct smtpd_session *s)
{
	if (smtpd_out_pending(s) == 0) {
		smtpd_free(s);
		return;
	}
	if (s->close_ev == NULL) {
		s->close_ev = evtimer_new(s->w->base, smtpd_close_cb, s);
		smtpd_close_cb(-1, 0, s);
	}
}

static void smtpd_read_cb(struct bufferevent *bev, void *arg)
{
	struct smtpd_session *s = arg;

	(void)bev;
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

static void smtpd_write_cb(struct bufferevent *bev, void *arg)
{
	struct smtpd_session *s = arg;

	(void)bev;
	if (s->state == SMTPD_CLOSING) {
		smtpd_close(s);
		return;
	}
	if (s->state != SMTPD_COMMIT && s->state != SMTPD_GREETING && s->state != SMTPD_WAIT) {
		bufferevent_enable(s->bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
			smtpd_process(s);
	}
}

static void smtpd_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtpd_session *s = arg;

	(void)bev;
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

static void smtpd_free(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;

	if (s->state == SMTPD_COMMIT) {
		/* never free a session inside the commit batch */
		return;
	}
	smtpd_tx_reset(s);
	if (s->auth_req)
		lookup_cancel(w->pool, s->auth_req);
	if (s->rw) {
		lookup_cancel(w->pool, s->rw->req);
		xfree(&s->rw);
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
	if (s->close_ev)
		event_free(s->close_ev);
	if (s->deadline_ev)
		event_free(s->deadline_ev);
	if (s->bev)
		bufferevent_free(s->bev);
	conntable_del(w->ctx->conn_table, w->ctx->worker_id, s->conn_slot);
	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	w->n_sessions--;
	free(s);
	if (w->stopping && w->n_sessions == 0)
		event_base_loopexit(w->base, NULL);
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
	bufferevent_setcb(s->bev, smtpd_read_cb, smtpd_write_cb, smtpd_event_cb, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, 1024 * 1024);
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
	smtpd_commit_drain(w);
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
	char name[32];
	int rc = 0;

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
	w.incoming_fd = open(QUEUE_DIR_INCOMING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (w.incoming_fd < 0) {
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
	w.commit_ev = event_new(w.base, -1, 0, smtpd_commit_cb, &w);
	event_priority_set(w.commit_ev, 1);
	if (pipe2(w.commit_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
		log_event(LOG_LVL_ERROR, "smtpd.error", "op", "pipe", "error", strerror(errno), NULL);
		return 1;
	}
	pthread_mutex_init(&w.commit_mu, NULL);
	pthread_cond_init(&w.commit_cv, NULL);
	if (pthread_create(&w.commit_thr, NULL, smtpd_commit_thread, &w) != 0) {
		log_event(LOG_LVL_ERROR, "smtpd.error", "op", "thread", NULL);
		return 1;
	}
	w.commit_done_ev = event_new(w.base, w.commit_pipe[0], EV_READ | EV_PERSIST, smtpd_commit_done_cb, &w);
	event_add(w.commit_done_ev, NULL);
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
	smtpd_commit_drain(&w);
	smtpd_stop_listening(&w);
	while (w.sessions) {
		w.sessions->state = SMTPD_CMD;
		smtpd_free(w.sessions);
	}
	lookup_pool_free(&w.pool);
	store_log_flush(w.st);
	store_close(&w.st);
	pthread_mutex_lock(&w.commit_mu);
	w.commit_stop = 1;
	pthread_cond_signal(&w.commit_cv);
	pthread_mutex_unlock(&w.commit_mu);
	pthread_join(w.commit_thr, NULL);
	close(w.commit_pipe[0]);
	close(w.commit_pipe[1]);
	event_free(w.commit_done_ev);
	event_free(w.commit_ev);
	event_free(w.flush_ev);
	event_free(w.stop_ev);
	event_free(w.sig_term);
	event_free(w.sig_usr2);
	event_base_free(w.base);
	close(w.incoming_fd);
	log_event(LOG_LVL_INFO, "smtpd.stop", NULL);
	return rc;
}
