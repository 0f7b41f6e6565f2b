/* smtpd_tx: the mail transaction of an smtpd session (in the worker process):
 * MAIL, DATA, BDAT and RSET, the message streamed into queue/tmp (Received:,
 * header fields added for local and authenticated mail), the end-of-message
 * checks, and the hand-over to the group commit (queue/queue_commit.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/statvfs.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "lib/log.h"
#include "lib/util.h"
#include "queue/queue_file.h"
#include "smtpd/smtpd_int.h"

/* ---------- the message file ---------- */

void smtpd_tx_reset(struct smtpd_session *s)
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
		(void)util_fmt(buf, cap, "%s", s->auth_address);
	else if (!s->tx.mail.is_null && s->tx.mail.addr[0])
		(void)util_fmt(buf, cap, "%s", s->tx.mail.addr);
	else
		(void)util_fmt(buf, cap, "%s@%s", s->local_user[0] ? s->local_user : "MAILER-DAEMON", host);
}

/* The end of the header section (header_scan): the missing Date:, Message-ID:
 * and From: are written here, before the empty line or the first body line. */
static void smtpd_hdr_end(void *ctx, const struct header_scan *h)
{
	struct smtpd_session *s = ctx;
	struct smtpd_tx *tx = &s->tx;
	char line[SMTP_PATH_MAX + 512], who[SMTP_PATH_MAX + 128];

	if (h->count[HEADER_DATE] == 0) {
		char date[64];
		time_t now = time(NULL);
		struct tm tm;

		localtime_r(&now, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
		if (util_fmt(line, sizeof(line), "Date: %s\n", date) == 0)
			smtpd_out(tx, line, strlen(line));
	}
	if (h->count[HEADER_MESSAGE_ID] == 0) {
		if (util_fmt(line, sizeof(line), "Message-ID: <%s@%s>\n", tx->qid, s->w->cfg->hostname) == 0)
			smtpd_out(tx, line, strlen(line));
	}
	if (h->count[HEADER_FROM] == 0) {
		smtpd_default_from(s, who, sizeof(who));
		if (util_fmt(line, sizeof(line), "From: %s\n", who) == 0)
			smtpd_out(tx, line, strlen(line));
	}
}

/* The message bytes from the DATA/BDAT parser (ctx is the session): through
 * the header scanner when header fields may be added, else straight on. */
static void smtpd_body_out(void *ctx, const char *p, size_t n)
{
	struct smtpd_session *s = ctx;

	if (s->tx.hs != NULL)
		header_scan_feed(s->tx.hs, p, n, smtpd_hs_out, smtpd_hdr_end, s);
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

		(void)util_fmt(tlsinfo, sizeof(tlsinfo), "\n\t(using %s with cipher %s (%d/%d bits))",
		    SSL_get_version(ssl), SSL_CIPHER_get_name(c), bits, alg_bits);
	}
	/* WITH protocol: ESMTP + S (TLS) + A (authenticated), RFC 3848; with
	 * SMTPUTF8 it is UTF8SMTP + S + A (RFC 6531 section 3.7.3). */
	if (s->local_uid >= 0)          /* local injection: the uid, as Postfix's pickup */
		(void)util_fmt(tlsinfo, sizeof(tlsinfo), "\n\t(uid %ld%s%s)", s->local_uid,
		    s->local_user[0] ? " " : "", s->local_user);
	if (util_fmt(hdr, sizeof(hdr),
	    "Received: from %s (%s [%s])%s\n\tby %s (kale) with %s%s%s id %s%s%s%s;\n\t%s\n",
	    s->helo[0] ? s->helo : "unknown", s->ip, s->ip, tlsinfo, s->w->cfg->hostname,
	    tx->mail.smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP", s->tls ? "S" : "",
	    s->auth_address ? "A" : "",
	    tx->qid, tx->n_rcpt == 1 ? "\n\tfor <" : "", tx->n_rcpt == 1 ? tx->rcpt[0].orig : "",
	    tx->n_rcpt == 1 ? ">" : "", date) == 0)
		smtpd_out(tx, hdr, strlen(hdr));
	if (smtpd_adds_headers(s)) {
		tx->hs = xmalloc(sizeof(*tx->hs));
		header_scan_init(tx->hs);
	}
	return 0;
}

/* ---------- group commit ---------- */

static void smtpd_commit_add(struct smtpd_session *s)
{
	struct smtpd_worker *w = s->w;

	s->state = SMTPD_COMMIT;
	bufferevent_disable(s->bev, EV_READ);
	s->commit.qid = s->tx.qid;
	s->commit.fd = s->tx.fd;
	s->commit.arg = s;
	queue_commit_add(w->qc, &s->commit);
}

static void smtpd_accepted(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	char delay[32];

	(void)util_fmt(delay, sizeof(delay), "%.3f", (double)(util_now_us() - tx->started_us) / 1e6);
	smtpd_reply(s, "250 2.0.0 Ok: queued as %s", tx->qid);
	for (int i = 0; i < tx->n_rcpt; i++)
		smtpd_log_row(s, "accepted", tx->rcpt[i].orig, "250 2.0.0", NULL);
	{
		char size[32], nr[16];
		(void)util_fmt(size, sizeof(size), "%llu", (unsigned long long)tx->body_len);
		(void)util_fmt(nr, sizeof(nr), "%d", tx->n_rcpt);
		log_event(LOG_LVL_INFO, "smtp.accept", "qid", tx->qid, "client", s->ip,
		    "from", tx->mail.addr, "to", tx->rcpt[0].orig, "nrcpt", nr, "size", size,
		    "delay", delay, NULL);
	}
	close(tx->fd);
	tx->fd = -1;       /* committed: smtpd_tx_reset must not unlink */
	smtpd_tx_reset(s);
}

/* The group commit is done for this session's message (queue_commit,
 * back on the loop): the answer, then the session reads again. */
void smtpd_committed(struct queue_commit_job *job, int sync_err, int dir_err)
{
	struct smtpd_session *s = job->arg;

	s->state = SMTPD_CMD;
	if (job->err)
		s->tx.werrno = job->err;
	if (sync_err || dir_err || s->tx.werrno) {
		/* Not durable, or not known to be: nothing was answered yet,
		 * so a 4xx makes the client retry. After a failed directory
		 * fsync the file is in incoming/ and may still be delivered:
		 * a duplicate at worst, never a loss. */
		smtpd_reject(s, NULL, (sync_err == ENOSPC || sync_err == EDQUOT)
		    ? "452 4.3.1 Insufficient system storage" : "451 4.3.0 Queue write error");
		if (!sync_err && !job->err) {
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

/* ---------- end of message ---------- */

static void smtpd_message_queue(struct smtpd_session *s);

/* The filter's end-of-DATA verdict (maybe inside filter_data). */
static void smtpd_data_done(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason, uint64_t len)
{
	struct smtpd_session *s = arg;
	struct smtpd_tx *tx = &s->tx;

	if (s->state == SMTPD_CLOSING)
		return;             /* the session goes; smtpd_free resets the transaction */
	s->state = SMTPD_CMD;
	if (v == FILTER_REJECT || v == FILTER_TEMPFAIL) {
		log_event(LOG_LVL_INFO, "filter.verdict", "client", s->ip, "qid", tx->qid, "verdict",
		    v == FILTER_REJECT ? "reject" : "tempfail", "check", check, "reason", reason, NULL);
		smtpd_reject(s, NULL, reply);
		smtpd_tx_reset(s);
	} else {
		if (v != FILTER_ACCEPT)
			log_event(LOG_LVL_INFO, "filter.verdict", "client", s->ip, "qid", tx->qid,
			    "verdict", v == FILTER_TAG ? "tag" : "quarantine", "check", check,
			    "reason", reason, NULL);
		tx->body_len = len;
		smtpd_message_queue(s);
	}
	if (s->state != SMTPD_CMD || s->busy)
		return;             /* committing, or smtpd_process's loop goes on */
	bufferevent_enable(s->bev, EV_READ);
	smtpd_process(s);
}

/* Starts the end-of-DATA phase if the message has one: inbound mail whose
 * recipients' policies verify DKIM or DMARC, outbound mail (authenticated,
 * trusted, local) whose sender domain has a DKIM key. 1 if it was started. */
static int smtpd_data_phase(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	struct store_dkim_key key;
	const char *at;
	int r, out = s->trusted || s->auth_address || s->kind == LISTEN_LOCAL;

	if (s->fs == NULL)
		return 0;
	if (out) {
		at = tx->mail.is_null ? NULL : strrchr(tx->mail.addr, '@');
		if (at == NULL || s->w->st == NULL)
			return 0;
		r = store_dkim_get(s->w->st, at + 1, NULL, &key);
		if (r <= 0)
			return 0;       /* no key (or the store cannot say): sent unsigned */
	} else if (!filter_data_wanted(s->fs)) {
		return 0;
	}
	s->state = SMTPD_WAIT;
	bufferevent_disable(s->bev, EV_READ);
	s->busy++;
	filter_data(s->fs, tx->fd, tx->body_len, out ? &key : NULL, smtpd_data_done, s);
	s->busy--;
	if (out)
		OPENSSL_cleanse(&key, sizeof(key));
	return 1;
}

void smtpd_message_done(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;

	if (tx->hs != NULL && !tx->data.too_big)
		header_scan_finish(tx->hs, smtpd_hs_out, smtpd_hdr_end, s);
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
	if (tx->werrno == 0 && smtpd_data_phase(s))
		return;             /* smtpd_data_done goes on */
	smtpd_message_queue(s);
}

/* The message as it is now goes into the queue. */
static void smtpd_message_queue(struct smtpd_session *s)
{
	struct smtpd_tx *tx = &s->tx;
	struct queue_env env = { 0 };

	if (tx->werrno == 0) {
		env.version = QUEUE_FORMAT_VERSION;
		env.auth_user = s->auth_address;
		(void)util_fmt(env.qid, sizeof(env.qid), "%s", tx->qid);
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

/* HELO/EHLO given: the table checks it (smtpd_commands). */
void smtpd_cmd_mail(struct smtpd_session *s, char *arg)
{
	struct smtpd_tx *tx = &s->tx;
	const char *err;

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
	filter_mail(s->fs, tx->mail.addr);
	smtpd_reply(s, "250 2.1.0 Ok");
}

/* MAIL given: the table checks it (smtpd_commands). */
void smtpd_cmd_data(struct smtpd_session *s, char *arg)
{
	struct smtpd_tx *tx = &s->tx;

	(void)arg;
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

void smtpd_cmd_bdat(struct smtpd_session *s, char *arg)
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

/* RSET: the explicit reset. */
void smtpd_cmd_rset(struct smtpd_session *s, char *arg)
{
	(void)arg;
	smtpd_tx_reset(s);
	smtpd_reply(s, "250 2.0.0 Ok");
}

/* ---------- message bytes ---------- */

/* Reads DATA bytes from input; returns 1 when the message ended. */
int smtpd_read_data(struct smtpd_session *s, struct evbuffer *in)
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

void smtpd_read_bdat(struct smtpd_session *s, struct evbuffer *in)
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
