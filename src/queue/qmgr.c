/* qmgr: the queue manager, the only process that moves or removes committed
 * queue files. Runs unprivileged with cwd = data_dir. Learns of new messages
 * through inotify on queue/incoming (and a full scan at start and every
 * minute), delivers in batches (one sync for a whole batch of Maildir files),
 * marks recipients done only after their delivery is durable, retries on the
 * [queue] retry schedule and gives up after max_age. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include <event2/event.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "lib/log.h"
#include "lib/util.h"
#include "master/kaled.h"
#include "queue/queue_file.h"
#include "store/store.h"

#define QMGR_BATCH 256
#define QMGR_BUCKETS 4096
#define QMGR_RESCAN_SECS 60

struct qmgr_msg {
	char qid[32];
	int64_t next_try;          /* unix seconds; 0 = ready */
	int attempts;
	int ready;                 /* on the ready list */
	struct qmgr_msg *hnext;    /* hash chain */
	struct qmgr_msg *rnext;    /* ready list */
};

struct qmgr {
	const struct kale_config *cfg;
	struct event_base *base;
	store *st;
	int incoming_fd, done_fd, mail_fd, ino_fd;
	struct event *ino_ev, *tick_ev, *work_ev, *sig_term, *sig_usr1;
	struct qmgr_msg *hash[QMGR_BUCKETS];
	struct qmgr_msg *ready_head, *ready_tail;
	int n_msgs;
	int64_t last_scan;
	int stopping;
};

/* One recipient delivery waiting for the batch's Maildir commit. */
struct qmgr_pending {
	struct qmgr_msg *m;
	int idx;
	int slot;                  /* index of the message in the batch */
	struct deliver_pending p;
};

struct qmgr_item {
	struct qmgr_msg *m;
	struct queue_env env;
	unsigned char *done;
	int *newly;                /* recipient indexes finished in this batch */
	int n_newly;
	int deferred;              /* some recipient must be tried again */
	const char *defer_reason;
	int ok;                    /* env read */
};

static unsigned qmgr_hash(const char *qid)
{
	unsigned h = 5381;

	for (; *qid; qid++)
		h = h * 33 + (unsigned char)*qid;
	return h % QMGR_BUCKETS;
}

static struct qmgr_msg *qmgr_find(struct qmgr *q, const char *qid)
{
	for (struct qmgr_msg *m = q->hash[qmgr_hash(qid)]; m; m = m->hnext)
		if (strcmp(m->qid, qid) == 0)
			return m;
	return NULL;
}

static void qmgr_ready(struct qmgr *q, struct qmgr_msg *m)
{
	if (m->ready)
		return;
	m->ready = 1;
	m->rnext = NULL;
	if (q->ready_tail)
		q->ready_tail->rnext = m;
	else
		q->ready_head = m;
	q->ready_tail = m;
	event_active(q->work_ev, 0, 0);
}

static void qmgr_add(struct qmgr *q, const char *qid)
{
	struct qmgr_msg *m;
	unsigned h;

	if (!queue_qid_valid(qid) || qmgr_find(q, qid))
		return;
	m = xcalloc(1, sizeof(*m));
	snprintf(m->qid, sizeof(m->qid), "%s", qid);
	h = qmgr_hash(qid);
	m->hnext = q->hash[h];
	q->hash[h] = m;
	q->n_msgs++;
	qmgr_ready(q, m);
}

static void qmgr_forget(struct qmgr *q, struct qmgr_msg *m)
{
	struct qmgr_msg **pp = &q->hash[qmgr_hash(m->qid)];

	while (*pp && *pp != m)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = m->hnext;
	q->n_msgs--;
	free(m);
}

static void qmgr_scan(struct qmgr *q)
{
	DIR *d = opendir(QUEUE_DIR_INCOMING);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			qmgr_add(q, de->d_name);
	closedir(d);
	q->last_scan = time(NULL);
}

/* Removes done-logs whose message is gone (a crash between the two unlinks). */
static void qmgr_clean_done(struct qmgr *q)
{
	DIR *d = opendir(QUEUE_DIR_DONE);
	struct dirent *de;
	struct stat sb;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !queue_qid_valid(de->d_name))
			continue;
		if (fstatat(q->incoming_fd, de->d_name, &sb, 0) == 0)
			continue;
		{
			char held[512];
			snprintf(held, sizeof(held), QUEUE_DIR_HOLD "/%s", de->d_name);
			if (stat(held, &sb) == 0)
				continue;
		}
		unlinkat(q->done_fd, de->d_name, 0);
	}
	closedir(d);
}

static void qmgr_log(struct qmgr *q, const struct queue_env *env, const char *rcpt,
    const char *action, const char *code, const char *reason, const char *relay)
{
	struct store_log_row row = { 0 };
	int64_t now = time(NULL);

	row.qid = env->qid;
	row.client = env->client_ip;
	row.helo = env->helo;
	row.sender = env->sender;
	row.rcpt = rcpt;
	row.action = action;
	row.code = code;
	row.reason = reason;
	row.relay = relay;
	row.size = (int64_t)env->body_len;
	row.delay_ms = (now - env->arrival) * 1000;
	store_log_add(q->st, &row);
	log_event(strcmp(action, "delivered") == 0 ? LOG_LVL_INFO : LOG_LVL_WARN,
	    strcmp(action, "delivered") == 0 ? "deliver.ok" : "deliver.fail",
	    "qid", env->qid, "from", env->sender, "to", rcpt, "action", action,
	    "code", code, "reason", reason, "relay", relay, NULL);
}

static void qmgr_finish(struct qmgr_item *it, int idx)
{
	it->done[idx] = 1;
	it->newly[it->n_newly++] = idx;
}

/* Decides what to do with one recipient; local Maildir deliveries are
 * written (not yet synced) and added to pend. */
static void qmgr_rcpt(struct qmgr *q, struct qmgr_item *it, int slot, int idx, int fd,
    struct qmgr_pending *pend, int *n_pend)
{
	const struct queue_rcpt *r = &it->env.rcpt[idx];
	const char *at = strrchr(r->addr, '@');
	struct store_domain dom;
	char box[PATH_MAX], prefix[1024];
	const char *err = NULL;
	int found, n;

	found = at ? store_domain_get(q->st, at + 1, &dom) : 0;
	if (found < 0) {
		it->deferred = 1;
		it->defer_reason = "policy store unavailable";
		qmgr_log(q, &it->env, r->addr, "deferred", "451 4.3.0", it->defer_reason, NULL);
		return;
	}
	if (!found || !dom.local) {
		/* Remote delivery belongs to the relay agent, which this build
		 * does not have yet: keep the recipient queued. */
		it->deferred = 1;
		it->defer_reason = "remote delivery not available";
		qmgr_log(q, &it->env, r->addr, "deferred", "451 4.4.0", it->defer_reason, NULL);
		return;
	}
	n = store_user_exists(q->st, r->addr);
	if (n < 0) {
		it->deferred = 1;
		it->defer_reason = "policy store unavailable";
		qmgr_log(q, &it->env, r->addr, "deferred", "451 4.3.0", it->defer_reason, NULL);
		return;
	}
	if (n == 0) {
		qmgr_log(q, &it->env, r->addr, "bounced", "550 5.1.1", "mailbox no longer exists", NULL);
		qmgr_finish(it, idx);
		return;
	}
	if (deliver_mailbox_path("mail", r->addr, box, sizeof(box)) < 0) {
		qmgr_log(q, &it->env, r->addr, "bounced", "550 5.1.3", "bad mailbox name", NULL);
		qmgr_finish(it, idx);
		return;
	}
	n = snprintf(prefix, sizeof(prefix), "Return-Path: <%s>\nDelivered-To: %s\n",
	    it->env.sender, r->addr);
	if (n < 0 || (size_t)n >= sizeof(prefix))
		n = 0;
	if (q->cfg->mailbox_mbox) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s", box);
		*strrchr(dir, '/') = '\0';
		fs_mkdirs(dir, 0700);
		if (mbox_deliver(box, it->env.sender, prefix, (size_t)n, fd, it->env.body_len, &err) < 0) {
			it->deferred = 1;
			it->defer_reason = err ? err : "mbox write failed";
			qmgr_log(q, &it->env, r->addr, "deferred", "451 4.3.0", it->defer_reason, box);
			return;
		}
		qmgr_log(q, &it->env, r->addr, "delivered", "250 2.0.0", NULL, box);
		qmgr_finish(it, idx);
		return;
	}
	pend[*n_pend].m = it->m;
	pend[*n_pend].idx = idx;
	pend[*n_pend].slot = slot;
	if (maildir_write(box, prefix, (size_t)n, fd, it->env.body_len, &pend[*n_pend].p, &err) < 0) {
		it->deferred = 1;
		it->defer_reason = err ? err : "maildir write failed";
		qmgr_log(q, &it->env, r->addr, "deferred",
		    (errno == ENOSPC || errno == EDQUOT) ? "452 4.3.1" : "451 4.3.0", it->defer_reason, box);
		return;
	}
	(*n_pend)++;
}

static int64_t qmgr_retry_delay(struct qmgr *q, int attempts)
{
	const struct kale_config *cfg = q->cfg;

	if (cfg->n_retry == 0)
		return 300;
	if (attempts < 1)
		attempts = 1;
	return cfg->retry[attempts - 1 < cfg->n_retry ? attempts - 1 : cfg->n_retry - 1];
}

static void qmgr_work_cb(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	struct qmgr_item *items;
	struct qmgr_pending *pend = NULL;
	int n_items = 0, n_pend = 0, cap_pend = 0, changed = 0;
	int64_t now = time(NULL);

	(void)fd;
	(void)what;
	items = xcalloc(QMGR_BATCH, sizeof(*items));
	while (q->ready_head && n_items < QMGR_BATCH) {
		struct qmgr_msg *m = q->ready_head;
		struct qmgr_item *it = &items[n_items];
		const char *err = NULL;
		int mfd;

		q->ready_head = m->rnext;
		if (q->ready_head == NULL)
			q->ready_tail = NULL;
		m->ready = 0;
		mfd = openat(q->incoming_fd, m->qid, O_RDONLY | O_CLOEXEC);
		if (mfd < 0) {
			/* deleted, held or finished meanwhile */
			qmgr_forget(q, m);
			continue;
		}
		it->m = m;
		if (queue_file_read_env(mfd, &it->env, &err) < 0) {
			log_event(LOG_LVL_ERROR, "queue.corrupt", "qid", m->qid, "error", err, NULL);
			close(mfd);
			m->next_try = now + 3600;   /* leave it for the admin; look again later */
			n_items++;
			continue;
		}
		it->ok = 1;
		it->done = xcalloc((size_t)it->env.n_rcpt + 1, 1);
		it->newly = xcalloc((size_t)it->env.n_rcpt + 1, sizeof(int));
		queue_done_read(q->done_fd, m->qid, it->done, it->env.n_rcpt);
		if (n_pend + it->env.n_rcpt > cap_pend) {
			cap_pend = (n_pend + it->env.n_rcpt) * 2;
			pend = xrealloc(pend, sizeof(*pend) * (size_t)cap_pend);
		}
		for (int i = 0; i < it->env.n_rcpt; i++)
			if (!it->done[i])
				qmgr_rcpt(q, it, n_items, i, mfd, pend, &n_pend);
		close(mfd);
		n_items++;
	}
	if (n_pend > 0) {
		int *ok = xcalloc((size_t)n_pend, sizeof(int));
		{
			/* maildir_commit takes a contiguous array of deliver_pending */
			struct deliver_pending *dp = xcalloc((size_t)n_pend, sizeof(*dp));
			for (int i = 0; i < n_pend; i++)
				dp[i] = pend[i].p;
			maildir_commit(dp, n_pend, q->mail_fd, ok);
			free(dp);
		}
		for (int i = 0; i < n_pend; i++) {
			struct qmgr_item *it = &items[pend[i].slot];
			const char *rcpt = it->env.rcpt[pend[i].idx].addr;
			if (ok[i]) {
				qmgr_log(q, &it->env, rcpt, "delivered", "250 2.0.0", NULL, pend[i].p.new_dir);
				qmgr_finish(it, pend[i].idx);
			} else {
				it->deferred = 1;
				it->defer_reason = "maildir sync failed";
				qmgr_log(q, &it->env, rcpt, "deferred", "451 4.3.0", it->defer_reason, NULL);
			}
		}
		free(ok);
	}
	/* Record progress: a finished message goes away, a partial one gets
	 * its done-log appended; then one sync makes all of it durable. */
	for (int i = 0; i < n_items; i++) {
		struct qmgr_item *it = &items[i];
		struct qmgr_msg *m = it->m;
		int all = 1;

		if (!it->ok)
			continue;
		if (it->deferred && now - it->env.arrival >= q->cfg->max_age) {
			for (int r = 0; r < it->env.n_rcpt; r++)
				if (!it->done[r]) {
					qmgr_log(q, &it->env, it->env.rcpt[r].addr, "expired", "450 4.4.7",
					    it->defer_reason, NULL);
					qmgr_finish(it, r);
				}
			it->deferred = 0;
		}
		for (int r = 0; r < it->env.n_rcpt; r++)
			all &= it->done[r];
		if (all) {
			unlinkat(q->incoming_fd, m->qid, 0);
			unlinkat(q->done_fd, m->qid, 0);
			changed = 1;
			queue_env_free(&it->env);
			free(it->done);
			free(it->newly);
			it->m = NULL;
			qmgr_forget(q, m);
			continue;
		}
		if (it->n_newly > 0) {
			queue_done_append(q->done_fd, m->qid, it->newly, it->n_newly);
			changed = 1;
		}
		m->attempts++;
		m->next_try = now + qmgr_retry_delay(q, m->attempts);
		queue_env_free(&it->env);
		free(it->done);
		free(it->newly);
	}
	if (changed && syncfs(q->incoming_fd) < 0)
		log_event(LOG_LVL_ERROR, "queue.error", "op", "syncfs", "error", strerror(errno), NULL);
	free(items);
	free(pend);
	if (q->ready_head)
		event_active(q->work_ev, 0, 0);
}

static void qmgr_ino_cb(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));

	(void)what;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			if (ev->mask & IN_Q_OVERFLOW)
				qmgr_scan(q);
			else if (ev->len > 0)
				qmgr_add(q, ev->name);
			p += sizeof(*ev) + ev->len;
		}
	}
}

static void qmgr_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	int64_t now = time(NULL);

	(void)fd;
	(void)what;
	for (int b = 0; b < QMGR_BUCKETS; b++)
		for (struct qmgr_msg *m = q->hash[b]; m; m = m->hnext)
			if (!m->ready && m->next_try <= now)
				qmgr_ready(q, m);
	if (now - q->last_scan >= QMGR_RESCAN_SECS)
		qmgr_scan(q);
	store_log_flush(q->st);
}

/* SIGUSR1: flush, try every message now. */
static void qmgr_usr1_cb(evutil_socket_t sig, short what, void *arg)
{
	struct qmgr *q = arg;

	(void)sig;
	(void)what;
	for (int b = 0; b < QMGR_BUCKETS; b++)
		for (struct qmgr_msg *m = q->hash[b]; m; m = m->hnext) {
			m->next_try = 0;
			qmgr_ready(q, m);
		}
	qmgr_scan(q);
}

static void qmgr_term_cb(evutil_socket_t sig, short what, void *arg)
{
	struct qmgr *q = arg;

	(void)sig;
	(void)what;
	q->stopping = 1;
	event_base_loopexit(q->base, NULL);
}

int qmgr_main(struct kale_ctx *ctx)
{
	struct qmgr q;
	struct timeval tick = { 1, 0 };
	char *error = NULL;

	memset(&q, 0, sizeof(q));
	q.cfg = ctx->cfg;
	log_set_proc("qmgr");
	if (store_open(ctx->cfg, &q.st, &error) < 0) {
		log_event(LOG_LVL_ERROR, "store.error", "error", error, NULL);
		free(error);
		return 1;
	}
	q.incoming_fd = open(QUEUE_DIR_INCOMING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.done_fd = open(QUEUE_DIR_DONE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.mail_fd = open("mail", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (q.incoming_fd < 0 || q.done_fd < 0 || q.mail_fd < 0 || q.ino_fd < 0 ||
	    inotify_add_watch(q.ino_fd, QUEUE_DIR_INCOMING, IN_MOVED_TO) < 0) {
		log_event(LOG_LVL_ERROR, "qmgr.error", "op", "open", "error", strerror(errno), NULL);
		store_close(&q.st);
		return 1;
	}
	q.base = event_base_new();
	event_base_priority_init(q.base, 2);
	q.work_ev = event_new(q.base, -1, 0, qmgr_work_cb, &q);
	event_priority_set(q.work_ev, 1);
	q.ino_ev = event_new(q.base, q.ino_fd, EV_READ | EV_PERSIST, qmgr_ino_cb, &q);
	event_add(q.ino_ev, NULL);
	q.tick_ev = event_new(q.base, -1, EV_PERSIST, qmgr_tick_cb, &q);
	event_add(q.tick_ev, &tick);
	q.sig_term = evsignal_new(q.base, SIGTERM, qmgr_term_cb, &q);
	q.sig_usr1 = evsignal_new(q.base, SIGUSR1, qmgr_usr1_cb, &q);
	event_add(q.sig_term, NULL);
	event_add(q.sig_usr1, NULL);
	/* Recovery: everything committed before a crash or stop is in incoming/. */
	qmgr_clean_done(&q);
	qmgr_scan(&q);
	{
		char n[16];
		snprintf(n, sizeof(n), "%d", q.n_msgs);
		log_event(LOG_LVL_INFO, "qmgr.start", "recovered", n, NULL);
	}
	event_base_dispatch(q.base);
	signal(SIGTERM, SIG_IGN);    /* a second TERM must not cut the clean-up short */
	store_log_flush(q.st);
	for (int b = 0; b < QMGR_BUCKETS; b++)
		while (q.hash[b])
			qmgr_forget(&q, q.hash[b]);
	event_free(q.work_ev);
	event_free(q.ino_ev);
	event_free(q.tick_ev);
	event_free(q.sig_term);
	event_free(q.sig_usr1);
	event_base_free(q.base);
	close(q.ino_fd);
	close(q.incoming_fd);
	close(q.done_fd);
	close(q.mail_fd);
	store_close(&q.st);
	log_event(LOG_LVL_INFO, "qmgr.stop", NULL);
	return 0;
}
