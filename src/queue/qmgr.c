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
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "deliver/deliver.h"
#include "deliver/relay.h"
#include "lib/log.h"
#include "mail/dsn.h"
#include "lib/util.h"
#include "lib/proc.h"
#include "queue/qmgr.h"
#include "queue/queue_file.h"
#include "store/store.h"
#include "lookup/lookup.h"

#define QMGR_BATCH 256
#define QMGR_BUCKETS 4096
#define QMGR_RESCAN_SECS 60
#define QMGR_LOOKUP_THREADS 2      /* ldap:PROFILE route lookups off the loop */

struct qmgr_run;

struct qmgr_msg {
	char qid[32];
	int64_t next_try;          /* unix seconds; 0 = ready */
	int attempts;
	int ready;                 /* on the ready list */
	int held;                  /* moved to queue/hold (never attempted) */
	int deleted;               /* removed by the admin while in flight */
	int bounce_req;            /* the admin asked to bounce it */
	struct qmgr_run *run;      /* in flight: relay jobs not finished */
	struct qmgr_msg *hnext;    /* hash chain */
	struct qmgr_msg *rnext;    /* ready list */
};

struct qmgr {
	const struct kale_config *cfg;
	struct event_base *base;
	store *st;
	struct relay *relay;
	int incoming_fd, done_fd, mail_fd, ino_fd, hold_fd, ctl_fd;
	struct event *ino_ev, *tick_ev, *work_ev, *sync_ev, *sig_term, *sig_usr1, *ctl_ev;
	struct qmgr_msg *hash[QMGR_BUCKETS];
	struct qmgr_msg *ready_head, *ready_tail;
	int n_msgs;
	int64_t last_scan;
	int stopping;
	int need_sync;
	struct lookup_pool *pool;  /* made at the first ldap:PROFILE route */
};

/* One recipient delivery waiting for the batch's Maildir commit. */
struct qmgr_pending {
	struct qmgr_run *run;
	int idx;
	struct deliver_pending p;
};

/* A recipient that failed for good; reported in one DSN per message pass. */
struct qmgr_failed {
	int idx;
	char status[16];
	char *diag;
	char *remote;
	const char *action;        /* "bounced" or "expired" (log action) */
};

/* One ldap:PROFILE route lookup of a recipient, answered by the pool. */
struct qmgr_lookup {
	struct qmgr_run *run;
	int idx;
	int tls_require;
};

/* Recipients of one message that share a next hop. */
struct qmgr_group {
	char route[320];
	int tls_require;
	int *idx;
	int n;
};

/* One pass over one message: from reading its envelope until every local
 * delivery and relay job of the pass is finished. */
struct qmgr_run {
	struct qmgr *q;
	struct qmgr_msg *m;
	struct queue_env env;
	int fd;
	unsigned char *done;
	int *newly;                /* recipient indexes finished, not yet logged to done/ */
	int n_newly;
	int deferred;              /* some recipient must be tried again */
	char defer_reason[256];
	struct qmgr_failed *failed;
	int n_failed;
	struct qmgr_group *groups;
	int n_groups;
	struct relay_job *jobs;
	int n_jobs, jobs_left;
	struct qmgr_lookup *lookups;   /* route lookups of the pass (one per recipient at most) */
	int n_lookups, lookups_left;   /* lookups_left > 0: waiting for the directory */
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
	if (m->ready || m->run || m->held)
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

static void qmgr_unready(struct qmgr *q, struct qmgr_msg *m)
{
	struct qmgr_msg **pp = &q->ready_head, *prev = NULL;

	if (!m->ready)
		return;
	while (*pp && *pp != m) {
		prev = *pp;
		pp = &(*pp)->rnext;
	}
	if (*pp) {
		*pp = m->rnext;
		if (q->ready_tail == m)
			q->ready_tail = prev;
	}
	m->ready = 0;
}

static struct qmgr_msg *qmgr_add(struct qmgr *q, const char *qid)
{
	struct qmgr_msg *m;
	unsigned h;

	if (!queue_qid_valid(qid))
		return NULL;
	if ((m = qmgr_find(q, qid)) != NULL)
		return m;
	m = xcalloc(1, sizeof(*m));
	(void)util_fmt(m->qid, sizeof(m->qid), "%s", qid);   /* valid: at most 24 characters */
	h = qmgr_hash(qid);
	m->hnext = q->hash[h];
	q->hash[h] = m;
	q->n_msgs++;
	qmgr_ready(q, m);
	return m;
}

static void qmgr_run_free(struct qmgr_run *run);

static void qmgr_forget(struct qmgr *q, struct qmgr_msg *m)
{
	struct qmgr_msg **pp = &q->hash[qmgr_hash(m->qid)];

	qmgr_unready(q, m);
	while (*pp && *pp != m)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = m->hnext;
	q->n_msgs--;
	free(m);
}

static int qmgr_qid_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds every message in incoming/, oldest first: queue ids sort by arrival,
 * and readdir's order is the directory hash's, not time. */
static void qmgr_scan(struct qmgr *q)
{
	DIR *d = opendir(QUEUE_DIR_INCOMING);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, cap = 0;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (!queue_qid_valid(de->d_name) || qmgr_find(q, de->d_name))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), qmgr_qid_cmp);
	for (size_t i = 0; i < n; i++) {
		qmgr_add(q, names[i]);
		free(names[i]);
	}
	free(names);
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
		if (fstatat(q->hold_fd, de->d_name, &sb, 0) == 0)
			continue;
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

static void qmgr_finish(struct qmgr_run *run, int idx)
{
	if (run->done[idx])
		return;
	run->done[idx] = 1;
	run->newly[run->n_newly++] = idx;
}

static void qmgr_defer(struct qmgr_run *run, const char *reason)
{
	run->deferred = 1;
	util_fmt(run->defer_reason, sizeof(run->defer_reason), "%s", reason ? reason : "deferred");
}

/* Records a permanent failure (logged now; the DSN and the done mark come
 * when the pass ends). */
static void qmgr_fail(struct qmgr *q, struct qmgr_run *run, int idx, const char *action,
    int code, const char *status, const char *text, const char *remote)
{
	struct qmgr_failed *f;
	char codebuf[32], diag[600];

	if (run->done[idx])
		return;
	for (int i = 0; i < run->n_failed; i++)
		if (run->failed[i].idx == idx)
			return;
	util_fmt(codebuf, sizeof(codebuf), "%d %s", code, status);
	qmgr_log(q, &run->env, run->env.rcpt[idx].addr, action, codebuf, text, remote);
	run->failed = xrealloc(run->failed, sizeof(*run->failed) * (size_t)(run->n_failed + 1));
	f = &run->failed[run->n_failed++];
	f->idx = idx;
	util_fmt(f->status, sizeof(f->status), "%s", status);
	if (strncmp(text, codebuf, strlen(codebuf)) == 0 ||
	    (text[0] >= '2' && text[0] <= '5' && text[1] >= '0' && text[1] <= '9' &&
	    text[2] >= '0' && text[2] <= '9' && text[3] == ' '))
		util_fmt(diag, sizeof(diag), "%s", text);     /* already a reply */
	else
		util_fmt(diag, sizeof(diag), "%s %s", codebuf, text);
	f->diag = xstrdup(diag);
	f->remote = remote ? xstrdup(remote) : NULL;
	f->action = action;
}

/* Adds recipient idx to the relay group of its next hop. */
static void qmgr_group_add(struct qmgr_run *run, const char *route, int tls_require, int idx)
{
	struct qmgr_group *g = NULL;

	for (int i = 0; i < run->n_groups; i++)
		if (run->groups[i].tls_require == tls_require && strcmp(run->groups[i].route, route) == 0)
			g = &run->groups[i];
	if (g == NULL) {
		run->groups = xrealloc(run->groups, sizeof(*run->groups) * (size_t)(run->n_groups + 1));
		g = &run->groups[run->n_groups++];
		memset(g, 0, sizeof(*g));
		util_fmt(g->route, sizeof(g->route), "%s", route);
		g->tls_require = tls_require;
		g->idx = xcalloc((size_t)run->env.n_rcpt, sizeof(int));
	}
	g->idx[g->n++] = idx;
}

/* The directory's answer for one ldap:PROFILE recipient (docs/relay.md):
 * not there, bounce 5.1.1; no answer, defer 4.4.3; no usable route in the
 * entry, defer 4.4.4; else the recipient joins the group of its next hop. */
static void qmgr_route_answer(struct qmgr *q, struct qmgr_run *run, int idx, int tls_require,
    const struct lookup_answer *a)
{
	const char *addr = run->env.rcpt[idx].addr;
	char route[320], *rerr = NULL;

	if (a->result == LOOKUP_MISSING) {
		qmgr_fail(q, run, idx, "bounced", 550, "5.1.1", "not in the routing directory", NULL);
	} else if (a->result != LOOKUP_FOUND) {
		/* temporary or a profile's fault (logged by the lookup): never a bounce */
		qmgr_defer(run, "routing directory unavailable");
		qmgr_log(q, &run->env, addr, "deferred", "451 4.4.3", a->detail, NULL);
	} else if (a->route == NULL || a->route[0] == '\0' ||
	    strcmp(a->route, "mx") == 0 || strncmp(a->route, "ldap:", 5) == 0 ||
	    store_relay_check(a->route, &rerr) < 0 ||
	    util_fmt(route, sizeof(route), "%s", a->route) < 0) {
		qmgr_defer(run, "no usable route in the directory entry");
		qmgr_log(q, &run->env, addr, "deferred", "451 4.4.4", run->defer_reason, a->route);
	} else {
		qmgr_group_add(run, route, tls_require, idx);
	}
	free(rerr);
}

static void qmgr_run_submit(struct qmgr *q, struct qmgr_run *run);
static void qmgr_run_end(struct qmgr *q, struct qmgr_run *run);

/* Every route lookup of the pass has been answered: the message's relay
 * groups go out now (unless the admin deleted, held or bounced it while
 * the directory was being asked), else its pass ends. */
static void qmgr_run_routed(struct qmgr *q, struct qmgr_run *run)
{
	struct qmgr_msg *m = run->m;

	if (run->n_groups > 0 && !m->deleted && !m->held && !m->bounce_req) {
		if (run->n_newly > 0) {
			queue_done_append(q->done_fd, m->qid, run->newly, run->n_newly);
			run->n_newly = 0;
			q->need_sync = 1;
		}
		qmgr_run_submit(q, run);
	} else {
		qmgr_run_end(q, run);
	}
	event_active(q->sync_ev, 0, 0);
}

/* On the loop: the pool's answer to one route lookup. */
static void qmgr_route_cb(void *ctx, const struct lookup_answer *a)
{
	struct qmgr_lookup *l = ctx;
	struct qmgr_run *run = l->run;

	qmgr_route_answer(run->q, run, l->idx, l->tls_require, a);
	if (--run->lookups_left == 0)
		qmgr_run_routed(run->q, run);
}

/* Asks PROFILE for the route of recipient idx through the lookup pool (made
 * at the first need). Without a pool the recipient is deferred at once. */
static void qmgr_route_ask(struct qmgr *q, struct qmgr_run *run, int idx, const char *profile,
    int tls_require)
{
	struct qmgr_lookup *l;
	char *err = NULL;

	if (q->pool == NULL && q->base != NULL &&
	    (q->pool = lookup_pool_new(q->base, q->cfg, QMGR_LOOKUP_THREADS, &err)) == NULL) {
		log_event(LOG_LVL_ERROR, "qmgr.error", "op", "lookup pool", "error", err, NULL);
		free(err);
	}
	if (q->pool == NULL) {
		qmgr_defer(run, "routing directory unavailable");
		qmgr_log(q, &run->env, run->env.rcpt[idx].addr, "deferred", "451 4.4.3",
		    "no lookup threads", NULL);
		return;
	}
	if (run->lookups == NULL)
		run->lookups = xcalloc((size_t)run->env.n_rcpt + 1, sizeof(*run->lookups));
	l = &run->lookups[run->n_lookups++];
	l->run = run;
	l->idx = idx;
	l->tls_require = tls_require;
	run->lookups_left++;
	/* answered on the loop, never from inside lookup_verify() */
	(void)lookup_verify(q->pool, profile, run->env.rcpt[idx].addr, qmgr_route_cb, l);
}

/* Decides what to do with one recipient; local Maildir deliveries are
 * written (not yet synced) and added to pend, relay recipients grouped;
 * ldap:PROFILE recipients wait for the directory (qmgr_route_ask). */
static void qmgr_rcpt(struct qmgr *q, struct qmgr_run *run, int idx,
    struct qmgr_pending *pend, int *n_pend)
{
	const struct queue_rcpt *r = &run->env.rcpt[idx];
	const char *at = strrchr(r->addr, '@');
	struct store_domain dom;
	char box[PATH_MAX], prefix[1024];
	const char *err = NULL;
	int found, n;

	if (at == NULL || at[1] == '\0') {
		qmgr_fail(q, run, idx, "bounced", 550, "5.1.3", "bad recipient address", NULL);
		return;
	}
	found = store_domain_get(q->st, at + 1, &dom);
	if (found < 0) {
		qmgr_defer(run, "policy store unavailable");
		qmgr_log(q, &run->env, r->addr, "deferred", "451 4.3.0", run->defer_reason, NULL);
		return;
	}
	if (!found || !dom.local) {
		char route[320];
		if (found && strncmp(dom.relay, "ldap:", 5) == 0) {
			/* The next hop of this recipient is an attribute of its
			 * directory entry (the profile's --route-attribute), asked
			 * off the loop: the decision waits for the answer. */
			qmgr_route_ask(q, run, idx, dom.relay + 5, strcmp(dom.tls, "require") == 0);
			return;
		}
		if (!found || strcmp(dom.relay, "mx") == 0) {
			if (util_fmt(route, sizeof(route), "mx:%s", at + 1) < 0) {
				qmgr_fail(q, run, idx, "bounced", 550, "5.1.3", "bad recipient domain", NULL);
				return;
			}
			util_lower(route);
		} else {
			util_fmt(route, sizeof(route), "%s", dom.relay);
		}
		qmgr_group_add(run, route, found && strcmp(dom.tls, "require") == 0, idx);
		return;
	}
	n = store_user_exists(q->st, r->addr);
	if (n < 0) {
		qmgr_defer(run, "policy store unavailable");
		qmgr_log(q, &run->env, r->addr, "deferred", "451 4.3.0", run->defer_reason, NULL);
		return;
	}
	if (n == 0) {
		qmgr_fail(q, run, idx, "bounced", 550, "5.1.1", "mailbox no longer exists", NULL);
		return;
	}
	if (deliver_mailbox_path("mail", r->addr, box, sizeof(box)) < 0) {
		qmgr_fail(q, run, idx, "bounced", 550, "5.1.3", "bad mailbox name", NULL);
		return;
	}
	/* a prefix that does not fit is left out; the message still goes in */
	n = util_fmt(prefix, sizeof(prefix), "Return-Path: <%s>\nDelivered-To: %s\n",
	    run->env.sender, r->addr) < 0 ? 0 : (int)strlen(prefix);
	if (q->cfg->mailbox_mbox) {
		char dir[PATH_MAX];
		(void)util_fmt(dir, sizeof(dir), "%s", box);   /* both PATH_MAX */
		*strrchr(dir, '/') = '\0';
		fs_mkdirs(dir, 0700);
		if (mbox_deliver(box, run->env.sender, prefix, (size_t)n, run->fd, run->env.body_len, &err) < 0) {
			qmgr_defer(run, err ? err : "mbox write failed");
			qmgr_log(q, &run->env, r->addr, "deferred", "451 4.3.0", run->defer_reason, box);
			return;
		}
		qmgr_log(q, &run->env, r->addr, "delivered", "250 2.0.0", NULL, box);
		qmgr_finish(run, idx);
		return;
	}
	pend[*n_pend].run = run;
	pend[*n_pend].idx = idx;
	if (maildir_write(box, prefix, (size_t)n, run->fd, run->env.body_len, &pend[*n_pend].p, &err) < 0) {
		qmgr_defer(run, err ? err : "maildir write failed");
		qmgr_log(q, &run->env, r->addr, "deferred",
		    (errno == ENOSPC || errno == EDQUOT) ? "452 4.3.1" : "451 4.3.0", run->defer_reason, box);
		return;
	}
	(*n_pend)++;
}

int64_t qmgr_retry_delay(const struct kale_config *cfg, int attempts)
{
	if (cfg->n_retry == 0)
		return 300;
	if (attempts < 1)
		attempts = 1;
	return cfg->retry[attempts - 1 < cfg->n_retry ? attempts - 1 : cfg->n_retry - 1];
}

static void qmgr_run_free(struct qmgr_run *run)
{
	if (run == NULL)
		return;
	for (int i = 0; i < run->n_jobs; i++) {
		for (int k = 0; k < run->jobs[i].n_rcpt; k++)
			free(run->jobs[i].rcpt[k].text);
		free(run->jobs[i].rcpt);
	}
	free(run->jobs);
	for (int i = 0; i < run->n_groups; i++)
		free(run->groups[i].idx);
	free(run->groups);
	for (int i = 0; i < run->n_failed; i++) {
		free(run->failed[i].diag);
		free(run->failed[i].remote);
	}
	free(run->failed);
	free(run->lookups);
	if (run->fd >= 0)
		close(run->fd);
	queue_env_free(&run->env);
	free(run->done);
	free(run->newly);
	free(run);
}

/* Writes a new message (a DSN) into the queue: tmp, fsync, rename into
 * incoming, fsync the directory. 0 ok, -1 error (logged). */
static int qmgr_enqueue(struct qmgr *q, const char *body, size_t len, const char *sender,
    char *const *rcpt, int n_rcpt, char qid[32])
{
	struct queue_env env;
	char tmp[128], dst[128];
	int fd, rc = -1;

	memset(&env, 0, sizeof(env));
	queue_qid_new(qid);
	(void)util_fmt(env.qid, sizeof(env.qid), "%s", qid);   /* both 32 bytes */
	env.version = QUEUE_FORMAT_VERSION;
	env.arrival = time(NULL);
	env.client_ip = (char *)"";
	env.helo = q->cfg->hostname;
	env.sender = (char *)sender;
	env.body_len = len;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)body[i] >= 0x80) {
			env.body8bit = 1;
			break;
		}
	for (int i = 0; i < n_rcpt; i++)
		queue_env_add_rcpt(&env, rcpt[i], rcpt[i], NULL, 0);
	util_fmt(tmp, sizeof(tmp), QUEUE_DIR_TMP "/%s", qid);
	util_fmt(dst, sizeof(dst), QUEUE_DIR_INCOMING "/%s", qid);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		goto out;
	{
		size_t off = 0;
		while (off < len) {
			ssize_t n = write(fd, body + off, len - off);
			if (n <= 0)
				goto out_unlink;
			off += (size_t)n;
		}
	}
	if (queue_file_finish(fd, &env) < 0 || fsync(fd) < 0)
		goto out_unlink;
	close(fd);
	fd = -1;
	if (rename(tmp, dst) < 0)
		goto out_unlink;
	if (fsync(q->incoming_fd) < 0)
		log_event(LOG_LVL_ERROR, "queue.error", "op", "fsync", "error", strerror(errno), NULL);
	rc = 0;
	goto out;
out_unlink:
	log_event(LOG_LVL_ERROR, "dsn.error", "qid", qid, "error", strerror(errno), NULL);
	unlink(tmp);
out:
	if (fd >= 0)
		close(fd);
	env.client_ip = NULL;
	env.helo = NULL;
	env.sender = NULL;
	queue_env_free(&env);
	return rc;
}

/* Sends one DSN for the failed recipients of the pass (those that want
 * one), then marks them done. A DSN that cannot be queued leaves them
 * pending, so they are tried again (and fail again) later. */
static void qmgr_bounce(struct qmgr *q, struct qmgr_run *run)
{
	struct dsn_rcpt *dr;
	struct dsn_info info;
	char to[320] = "", from[300] = "";
	int n = 0, ok = 1;

	if (run->n_failed == 0)
		return;
	dr = xcalloc((size_t)run->n_failed, sizeof(*dr));
	for (int i = 0; i < run->n_failed; i++) {
		const struct qmgr_failed *f = &run->failed[i];
		const struct queue_rcpt *r = &run->env.rcpt[f->idx];
		if (r->notify != 0 && (r->notify & 1 || !(r->notify & 4)))
			continue;       /* NOTIFY=NEVER, or FAILURE not asked for */
		dr[n].addr = r->addr;
		dr[n].orcpt = r->orcpt;
		dr[n].action = "failed";
		dr[n].status = f->status;
		dr[n].remote_mta = f->remote;
		dr[n].diag = f->diag;
		n++;
	}
	/* A bounce that bounces (a double bounce) goes to the postmaster, from
	 * double-bounce@hostname as Postfix sends it; a notice of that kind
	 * that fails in turn goes nowhere, so nothing loops. */
	if (n > 0 && run->env.sender[0] == '\0') {
		int r = store_postmaster(q->st, q->cfg, to, sizeof(to));
		if (r < 0) {
			free(dr);
			qmgr_defer(run, "policy store unavailable");
			return;
		}
		if (r == 0) {
			log_event(LOG_LVL_WARN, "dsn.dropped", "qid", run->env.qid,
			    "reason", "a double bounce, and no postmaster is set", NULL);
			n = 0;
		} else if (util_fmt(from, sizeof(from), "double-bounce@%s", q->cfg->hostname) < 0) {
			n = 0;
		}
	} else if (n > 0 && strncasecmp(run->env.sender, "double-bounce@", 14) == 0 &&
	    strcasecmp(run->env.sender + 14, q->cfg->hostname) == 0) {
		log_event(LOG_LVL_WARN, "dsn.dropped", "qid", run->env.qid,
		    "reason", "a failed double-bounce notice gets no DSN", NULL);
		n = 0;
	} else if (n > 0) {
		util_fmt(to, sizeof(to), "%s", run->env.sender);
	}
	if (n > 0) {
		char dsn_qid[32], *text, *orig;
		size_t len, olen;
		int full = run->env.ret == 1 && run->env.body_len <= DSN_ORIG_MAX;
		ssize_t got;

		olen = full ? (size_t)run->env.body_len :
		    (size_t)(run->env.body_len < 65536 ? run->env.body_len : 65536);
		orig = xmalloc(olen + 1);
		got = pread(run->fd, orig, olen, 0);
		olen = got > 0 ? (size_t)got : 0;
		queue_qid_new(dsn_qid);
		memset(&info, 0, sizeof(info));
		info.reporting_mta = q->cfg->hostname;
		info.qid = run->env.qid;
		info.envid = run->env.envid;
		info.sender = to;
		info.arrival = run->env.arrival;
		info.now = time(NULL);
		info.boundary_seed = dsn_qid;
		text = dsn_build(&info, dr, n, orig, olen, full, &len);
		/* the postmaster may be an alias: queued for its final targets */
		char **t = NULL, *one[1] = { to };
		int nt = from[0] ? store_rcpt_resolve(q->st, to, &t, NULL) : 0;
		if (nt < 0 || qmgr_enqueue(q, text, len, from, nt > 0 ? t : one, nt > 0 ? nt : 1,
		    dsn_qid) < 0)
			ok = 0;
		else
			log_event(LOG_LVL_INFO, "dsn.queued", "qid", dsn_qid, "orig", run->env.qid,
			    "to", to, from[0] ? "from" : NULL, from, NULL);
		store_targets_free(t, nt > 0 ? nt : 0);
		free(text);
		free(orig);
	}
	free(dr);
	if (!ok) {
		qmgr_defer(run, "cannot queue the DSN");
		return;
	}
	for (int i = 0; i < run->n_failed; i++)
		qmgr_finish(run, run->failed[i].idx);
}

/* The pass over a message is over: DSN, done-log, retry or removal. */
static void qmgr_run_end(struct qmgr *q, struct qmgr_run *run)
{
	struct qmgr_msg *m = run->m;
	int64_t now = time(NULL);
	int all = 1;

	m->run = NULL;
	if (m->deleted) {
		qmgr_run_free(run);
		qmgr_forget(q, m);
		return;
	}
	if (m->bounce_req || (run->deferred && now - run->env.arrival >= q->cfg->max_age)) {
		int admin = m->bounce_req;
		for (int r = 0; r < run->env.n_rcpt; r++)
			if (!run->done[r])
				qmgr_fail(q, run, r, admin ? "bounced" : "expired", admin ? 550 : 450,
				    admin ? "5.0.0" : "4.4.7",
				    admin ? "message bounced by the administrator" :
				    run->defer_reason[0] ? run->defer_reason : "message expired", NULL);
		m->bounce_req = 0;
		run->deferred = 0;
	}
	qmgr_bounce(q, run);
	for (int r = 0; r < run->env.n_rcpt; r++)
		all &= run->done[r];
	if (all) {
		unlinkat(m->held ? q->hold_fd : q->incoming_fd, m->qid, 0);
		unlinkat(q->done_fd, m->qid, 0);
		q->need_sync = 1;
		qmgr_run_free(run);
		qmgr_forget(q, m);
		return;
	}
	if (run->n_newly > 0) {
		queue_done_append(q->done_fd, m->qid, run->newly, run->n_newly);
		run->n_newly = 0;
		q->need_sync = 1;
	}
	qmgr_run_free(run);
	if (m->held) {
		qmgr_forget(q, m);          /* hold/ is not watched; release re-adds it */
		return;
	}
	m->attempts++;
	m->next_try = now + qmgr_retry_delay(q->cfg, m->attempts);
}

static void qmgr_sync(struct qmgr *q)
{
	if (q->need_sync && syncfs(q->incoming_fd) < 0)
		log_event(LOG_LVL_ERROR, "queue.error", "op", "syncfs", "error", strerror(errno), NULL);
	q->need_sync = 0;
}

static void qmgr_sync_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	qmgr_sync(arg);
}

/* A relay job is over: record each recipient's outcome; 2xx are marked
 * done at once (durable with the next sync, which runs right after). */
static void qmgr_job_done(struct relay_job *job, void *arg)
{
	struct qmgr_run *run = arg;
	struct qmgr *q = run->q;

	for (int i = 0; i < job->n_rcpt; i++) {
		struct relay_rcpt *rc = &job->rcpt[i];
		const char *text = rc->text ? rc->text : "";
		char code[32];

		util_fmt(code, sizeof(code), "%d %s", rc->code, rc->status);
		if (rc->code / 100 == 2) {
			qmgr_log(q, &run->env, rc->addr, "delivered", code, text, job->relay_host);
			qmgr_finish(run, rc->idx);
		} else if (rc->code / 100 == 5) {
			qmgr_fail(q, run, rc->idx, "bounced", rc->code, rc->status, text, job->relay_host);
		} else {
			qmgr_defer(run, text);
			qmgr_log(q, &run->env, rc->addr, "deferred", code, text, job->relay_host);
		}
	}
	/* The last job's marks are written by qmgr_run_end (or made moot by the
	 * removal of a finished message, which the same sync makes durable). */
	if (run->n_newly > 0 && !run->m->deleted && run->jobs_left > 1) {
		queue_done_append(q->done_fd, run->m->qid, run->newly, run->n_newly);
		run->n_newly = 0;
		q->need_sync = 1;
		event_active(q->sync_ev, 0, 0);
	}
	if (--run->jobs_left == 0) {
		qmgr_run_end(q, run);
		event_active(q->sync_ev, 0, 0);
	}
}

/* Turns the run's relay groups into jobs and submits them. */
static void qmgr_run_submit(struct qmgr *q, struct qmgr_run *run)
{
	int n = 0;

	if (q->relay == NULL) {
		for (int g = 0; g < run->n_groups; g++)
			for (int k = 0; k < run->groups[g].n; k++) {
				qmgr_defer(run, "relay client not available (resolver set-up failed)");
				qmgr_log(q, &run->env, run->env.rcpt[run->groups[g].idx[k]].addr, "deferred",
				    "451 4.3.0", run->defer_reason, NULL);
			}
		qmgr_run_end(q, run);
		return;
	}
	for (int g = 0; g < run->n_groups; g++)
		n += (run->groups[g].n + RELAY_JOB_RCPT_MAX - 1) / RELAY_JOB_RCPT_MAX;
	run->jobs = xcalloc((size_t)n, sizeof(*run->jobs));
	for (int g = 0; g < run->n_groups; g++) {
		const struct qmgr_group *gr = &run->groups[g];
		for (int off = 0; off < gr->n; off += RELAY_JOB_RCPT_MAX) {
			struct relay_job *job = &run->jobs[run->n_jobs++];
			int cnt = gr->n - off < RELAY_JOB_RCPT_MAX ? gr->n - off : RELAY_JOB_RCPT_MAX;
			(void)util_fmt(job->qid, sizeof(job->qid), "%s", run->env.qid);   /* both 32 */
			job->fd = run->fd;
			job->body_len = run->env.body_len;
			job->sender = run->env.sender;
			job->body8bit = run->env.body8bit;
			job->smtputf8 = run->env.smtputf8;
			job->ret = run->env.ret;
			job->envid = run->env.envid;
			util_fmt(job->route, sizeof(job->route), "%s", gr->route);
			job->tls_require = gr->tls_require;
			job->rcpt = xcalloc((size_t)cnt, sizeof(*job->rcpt));
			job->n_rcpt = cnt;
			for (int k = 0; k < cnt; k++) {
				job->rcpt[k].idx = gr->idx[off + k];
				job->rcpt[k].addr = run->env.rcpt[gr->idx[off + k]].addr;
				job->rcpt[k].notify = run->env.rcpt[gr->idx[off + k]].notify;
				job->rcpt[k].orcpt = run->env.rcpt[gr->idx[off + k]].orcpt;
			}
			job->done = qmgr_job_done;
			job->arg = run;
		}
	}
	run->jobs_left = run->n_jobs;
	run->m->run = run;
	for (int i = 0; i < run->n_jobs; i++)
		relay_submit(q->relay, &run->jobs[i]);
}

static void qmgr_work_cb(evutil_socket_t fd, short what, void *arg)
{
	struct qmgr *q = arg;
	struct qmgr_run **runs;
	struct qmgr_pending *pend = NULL;
	int n_runs = 0, n_pend = 0, cap_pend = 0;
	int64_t now = time(NULL);

	(void)fd;
	(void)what;
	runs = xcalloc(QMGR_BATCH, sizeof(*runs));
	while (q->ready_head && n_runs < QMGR_BATCH) {
		struct qmgr_msg *m = q->ready_head;
		struct qmgr_run *run;
		const char *err = NULL;
		int mfd;

		q->ready_head = m->rnext;
		if (q->ready_head == NULL)
			q->ready_tail = NULL;
		m->ready = 0;
		if (m->run || m->held)
			continue;
		mfd = openat(q->incoming_fd, m->qid, O_RDONLY | O_CLOEXEC);
		if (mfd < 0) {
			/* deleted, held or finished meanwhile */
			qmgr_forget(q, m);
			continue;
		}
		run = xcalloc(1, sizeof(*run));
		run->q = q;
		run->m = m;
		run->fd = mfd;
		if (queue_file_read_env(mfd, &run->env, &err) < 0) {
			log_event(LOG_LVL_ERROR, "queue.corrupt", "qid", m->qid, "error", err, NULL);
			m->next_try = now + 3600;   /* leave it for the admin; look again later */
			qmgr_run_free(run);
			continue;
		}
		run->done = xcalloc((size_t)run->env.n_rcpt + 1, 1);
		run->newly = xcalloc((size_t)run->env.n_rcpt + 1, sizeof(int));
		queue_done_read(q->done_fd, m->qid, run->done, run->env.n_rcpt);
		if (n_pend + run->env.n_rcpt > cap_pend) {
			cap_pend = (n_pend + run->env.n_rcpt) * 2;
			pend = xrealloc(pend, sizeof(*pend) * (size_t)cap_pend);
		}
		for (int i = 0; i < run->env.n_rcpt && !m->bounce_req; i++)
			if (!run->done[i])
				qmgr_rcpt(q, run, i, pend, &n_pend);
		runs[n_runs++] = run;
	}
	if (n_pend > 0) {
		int *ok = xcalloc((size_t)n_pend, sizeof(int));
		struct deliver_pending *dp = xcalloc((size_t)n_pend, sizeof(*dp));

		/* maildir_commit takes a contiguous array of deliver_pending */
		for (int i = 0; i < n_pend; i++)
			dp[i] = pend[i].p;
		maildir_commit(dp, n_pend, q->mail_fd, ok);
		free(dp);
		for (int i = 0; i < n_pend; i++) {
			struct qmgr_run *run = pend[i].run;
			const char *rcpt = run->env.rcpt[pend[i].idx].addr;
			if (ok[i]) {
				qmgr_log(q, &run->env, rcpt, "delivered", "250 2.0.0", NULL, pend[i].p.new_dir);
				qmgr_finish(run, pend[i].idx);
			} else {
				qmgr_defer(run, "maildir sync failed");
				qmgr_log(q, &run->env, rcpt, "deferred", "451 4.3.0", run->defer_reason, NULL);
			}
		}
		free(ok);
	}
	/* Record progress: a finished message goes away, a partial one gets
	 * its done-log appended, one with relay recipients goes in flight; then
	 * one sync makes all of it durable. */
	for (int i = 0; i < n_runs; i++) {
		struct qmgr_run *run = runs[i];
		if (run->lookups_left > 0) {
			/* in flight until the directory has answered for every
			 * ldap:PROFILE recipient (qmgr_run_routed) */
			if (run->n_newly > 0) {
				queue_done_append(q->done_fd, run->m->qid, run->newly, run->n_newly);
				run->n_newly = 0;
				q->need_sync = 1;
			}
			run->m->run = run;
			continue;
		}
		if (run->n_groups == 0) {
			qmgr_run_end(q, run);
			continue;
		}
		if (run->n_newly > 0) {
			queue_done_append(q->done_fd, run->m->qid, run->newly, run->n_newly);
			run->n_newly = 0;
			q->need_sync = 1;
		}
		qmgr_run_submit(q, run);
	}
	qmgr_sync(q);
	free(runs);
	free(pend);
	if (q->ready_head)
		event_active(q->work_ev, 0, 0);
}

/* ---------- queue control (kalectl queue ...; docs/relay.md) ---------- */

/* Logs one mail-log row per pending recipient of the message in dir_fd. */
static void qmgr_log_msg(struct qmgr *q, int dir_fd, const char *qid, const char *action,
    const char *reason)
{
	struct queue_env env;
	const char *err = NULL;
	unsigned char *done;
	int fd = openat(dir_fd, qid, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (queue_file_read_env(fd, &env, &err) == 0) {
		done = xcalloc((size_t)env.n_rcpt + 1, 1);
		queue_done_read(q->done_fd, qid, done, env.n_rcpt);
		for (int i = 0; i < env.n_rcpt; i++)
			if (!done[i])
				qmgr_log(q, &env, env.rcpt[i].addr, action, NULL, reason, NULL);
		free(done);
		queue_env_free(&env);
	}
	close(fd);
}

static int qmgr_exists(int dir_fd, const char *qid)
{
	struct stat sb;

	return fstatat(dir_fd, qid, &sb, 0) == 0;
}

/* Moves qid between queue directories durably. 0 ok, -1 errno. */
static int qmgr_move(int from_fd, int to_fd, const char *qid)
{
	if (renameat(from_fd, qid, to_fd, qid) < 0)
		return -1;
	if (fsync(to_fd) < 0 || fsync(from_fd) < 0)
		return -1;
	return 0;
}

/* Bounces every pending recipient of a message that is not in flight:
 * one DSN, then the message is removed. 0 ok, -1 (reply says why). */
static int qmgr_bounce_now(struct qmgr *q, int dir_fd, const char *qid, char *reply, size_t cap)
{
	struct qmgr_run *run = xcalloc(1, sizeof(*run));
	const char *err = NULL;
	int all = 1, rc = -1;

	run->q = q;
	run->fd = openat(dir_fd, qid, O_RDONLY | O_CLOEXEC);
	if (run->fd < 0 || queue_file_read_env(run->fd, &run->env, &err) < 0) {
		util_fmt(reply, cap, "cannot read %s: %s", qid, err ? err : strerror(errno));
		goto out;
	}
	run->done = xcalloc((size_t)run->env.n_rcpt + 1, 1);
	run->newly = xcalloc((size_t)run->env.n_rcpt + 1, sizeof(int));
	queue_done_read(q->done_fd, qid, run->done, run->env.n_rcpt);
	for (int r = 0; r < run->env.n_rcpt; r++)
		if (!run->done[r])
			qmgr_fail(q, run, r, "bounced", 550, "5.0.0", "message bounced by the administrator", NULL);
	qmgr_bounce(q, run);
	if (run->deferred) {
		util_fmt(reply, cap, "%s: %s", qid, run->defer_reason);
		goto out;
	}
	for (int r = 0; r < run->env.n_rcpt; r++)
		all &= run->done[r];
	if (all) {
		unlinkat(dir_fd, qid, 0);
		unlinkat(q->done_fd, qid, 0);
	} else if (run->n_newly > 0) {
		queue_done_append(q->done_fd, qid, run->newly, run->n_newly);
	}
	if (syncfs(q->incoming_fd) < 0)
		log_event(LOG_LVL_ERROR, "queue.error", "op", "syncfs", "error", strerror(errno), NULL);
	util_fmt(reply, cap, "%s bounced", qid);
	rc = 0;
out:
	qmgr_run_free(run);
	return rc;
}

/* Runs one control command ("hold QID", "release QID", "delete QID",
 * "bounce QID", "flush [QID]"). With q->base NULL (kalectl, daemon
 * stopped) only the spool is changed. Returns 0 with a reply text, or -1
 * with an error text. */
static int qmgr_cmd(struct qmgr *q, const char *line, char *reply, size_t cap)
{
	char verb[16] = "", qid[64] = "";
	struct qmgr_msg *m = NULL;
	int n = sscanf(line, "%15s %63s", verb, qid);
	int in_inc, in_hold;

	if (n < 1) {
		util_fmt(reply, cap, "empty command");
		return -1;
	}
	if (n == 2 && !queue_qid_valid(qid)) {
		util_fmt(reply, cap, "bad queue id");
		return -1;
	}
	if (strcmp(verb, "flush") == 0) {
		if (q->base == NULL) {
			util_fmt(reply, cap, "daemon not running; the queue is tried when it starts");
			return 0;
		}
		if (n == 1) {
			for (int b = 0; b < QMGR_BUCKETS; b++)
				for (struct qmgr_msg *x = q->hash[b]; x; x = x->hnext) {
					x->next_try = 0;
					qmgr_ready(q, x);
				}
			qmgr_scan(q);
			log_event(LOG_LVL_INFO, "queue.flush", NULL);
			util_fmt(reply, cap, "queue flush started");
			return 0;
		}
		if (!qmgr_exists(q->incoming_fd, qid)) {
			util_fmt(reply, cap, "%s", qmgr_exists(q->hold_fd, qid) ? "message is held" : "no such message");
			return -1;
		}
		m = qmgr_add(q, qid);
		m->next_try = 0;
		qmgr_ready(q, m);
		log_event(LOG_LVL_INFO, "queue.flush", "qid", qid, NULL);
		util_fmt(reply, cap, "%s scheduled", qid);
		return 0;
	}
	if (n != 2) {
		util_fmt(reply, cap, "usage: %s QID", verb);
		return -1;
	}
	in_inc = qmgr_exists(q->incoming_fd, qid);
	in_hold = qmgr_exists(q->hold_fd, qid);
	if (!in_inc && !in_hold) {
		util_fmt(reply, cap, "no such message");
		return -1;
	}
	if (q->base != NULL)
		m = qmgr_find(q, qid);
	if (strcmp(verb, "hold") == 0) {
		if (in_hold) {
			util_fmt(reply, cap, "%s is already held", qid);
			return -1;
		}
		if (qmgr_move(q->incoming_fd, q->hold_fd, qid) < 0) {
			util_fmt(reply, cap, "hold %s: %s", qid, strerror(errno));
			return -1;
		}
		qmgr_log_msg(q, q->hold_fd, qid, "held", "held by the administrator");
		util_fmt(reply, cap, "%s held%s", qid, m && m->run ? " (a delivery in progress ends first)" : "");
		if (m != NULL) {
			m->held = 1;
			qmgr_unready(q, m);
			if (m->run == NULL)
				qmgr_forget(q, m);
		}
		return 0;
	}
	if (strcmp(verb, "release") == 0) {
		if (!in_hold) {
			util_fmt(reply, cap, "%s is not held", qid);
			return -1;
		}
		if (qmgr_move(q->hold_fd, q->incoming_fd, qid) < 0) {
			util_fmt(reply, cap, "release %s: %s", qid, strerror(errno));
			return -1;
		}
		qmgr_log_msg(q, q->incoming_fd, qid, "released", "released by the administrator");
		if (q->base != NULL) {
			m = qmgr_add(q, qid);
			m->held = 0;
			m->next_try = 0;
			qmgr_ready(q, m);
		}
		util_fmt(reply, cap, "%s released", qid);
		return 0;
	}
	if (strcmp(verb, "delete") == 0) {
		int dfd = in_inc ? q->incoming_fd : q->hold_fd;
		qmgr_log_msg(q, dfd, qid, "deleted", "deleted by the administrator");
		if (unlinkat(dfd, qid, 0) < 0) {
			util_fmt(reply, cap, "delete %s: %s", qid, strerror(errno));
			return -1;
		}
		unlinkat(q->done_fd, qid, 0);
		if (fsync(dfd) < 0)
			log_event(LOG_LVL_ERROR, "queue.error", "op", "fsync", "error", strerror(errno), NULL);
		if (m != NULL) {
			if (m->run)
				m->deleted = 1;
			else
				qmgr_forget(q, m);
		}
		util_fmt(reply, cap, "%s deleted", qid);
		return 0;
	}
	if (strcmp(verb, "bounce") == 0) {
		if (m != NULL && m->run) {
			m->bounce_req = 1;
			util_fmt(reply, cap, "%s will be bounced when the delivery in progress ends", qid);
			return 0;
		}
		if (qmgr_bounce_now(q, in_inc ? q->incoming_fd : q->hold_fd, qid, reply, cap) < 0)
			return -1;
		if (m != NULL && !qmgr_exists(q->incoming_fd, qid))
			qmgr_forget(q, m);
		return 0;
	}
	util_fmt(reply, cap, "unknown queue command");
	return -1;
}

static void qmgr_ctl_write_cb(struct bufferevent *bev, void *arg)
{
	(void)arg;
	bufferevent_free(bev);
}

static void qmgr_ctl_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	(void)arg;
	bufferevent_free(bev);
}

static void qmgr_ctl_read_cb(struct bufferevent *bev, void *arg)
{
	struct qmgr *q = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char reply[512];
	size_t len;
	char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);

	if (line == NULL) {
		if (evbuffer_get_length(in) > 512)
			bufferevent_free(bev);
		return;
	}
	if (len > 200 || qmgr_cmd(q, line, reply, sizeof(reply)) < 0)
		evbuffer_add_printf(bufferevent_get_output(bev), "error %s\n", len > 200 ? "command too long" : reply);
	else
		evbuffer_add_printf(bufferevent_get_output(bev), "ok\n%s\n", reply);
	free(line);
	store_log_flush(q->st);
	bufferevent_disable(bev, EV_READ);
	bufferevent_setcb(bev, NULL, qmgr_ctl_write_cb, qmgr_ctl_event_cb, q);
}

static void qmgr_ctl_accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct qmgr *q = arg;
	struct timeval tv = { 10, 0 };
	int fd;

	(void)what;
	while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct bufferevent *bev = bufferevent_socket_new(q->base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (bev == NULL) {
			close(fd);
			continue;
		}
		bufferevent_setcb(bev, qmgr_ctl_read_cb, NULL, qmgr_ctl_event_cb, q);
		bufferevent_set_timeouts(bev, &tv, &tv);
		bufferevent_enable(bev, EV_READ | EV_WRITE);
	}
}

static int qmgr_ctl_open(struct qmgr *q)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	_Static_assert(sizeof(QMGR_SOCK) <= sizeof(sun.sun_path), "QMGR_SOCK fits sun_path");
	(void)util_fmt(sun.sun_path, sizeof(sun.sun_path), "%s", QMGR_SOCK);
	unlink(QMGR_SOCK);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || chmod(QMGR_SOCK, 0600) < 0 ||
	    listen(fd, 16) < 0) {
		log_event(LOG_LVL_ERROR, "qmgr.error", "op", "control socket", "error", strerror(errno), NULL);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	q->ctl_fd = fd;
	q->ctl_ev = event_new(q->base, fd, EV_READ | EV_PERSIST, qmgr_ctl_accept_cb, q);
	event_add(q->ctl_ev, NULL);
	return 0;
}

int qmgr_offline(const struct kale_config *cfg, store *st, const char *cmd, char **reply_r)
{
	struct qmgr q;
	char reply[512];
	int rc = -1;

	memset(&q, 0, sizeof(q));
	q.cfg = cfg;
	q.st = st;
	q.incoming_fd = open(QUEUE_DIR_INCOMING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.done_fd = open(QUEUE_DIR_DONE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	mkdir(QUEUE_DIR_HOLD, 0700);
	q.hold_fd = open(QUEUE_DIR_HOLD, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q.incoming_fd < 0 || q.done_fd < 0 || q.hold_fd < 0)
		util_fmt(reply, sizeof(reply), "cannot open the queue: %s", strerror(errno));
	else
		rc = qmgr_cmd(&q, cmd, reply, sizeof(reply));
	store_log_flush(st);
	if (q.incoming_fd >= 0)
		close(q.incoming_fd);
	if (q.done_fd >= 0)
		close(q.done_fd);
	if (q.hold_fd >= 0)
		close(q.hold_fd);
	*reply_r = xstrdup(reply);
	return rc;
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
	if (store_connect(ctx->cfg, &q.st, &error) < 0) {
		log_event(LOG_LVL_ERROR, "store.error", "error", error, NULL);
		free(error);
		return 1;
	}
	q.incoming_fd = open(QUEUE_DIR_INCOMING, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.done_fd = open(QUEUE_DIR_DONE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.mail_fd = open("mail", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	mkdir(QUEUE_DIR_HOLD, 0700);
	q.hold_fd = open(QUEUE_DIR_HOLD, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	q.ctl_fd = -1;
	q.ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (q.incoming_fd < 0 || q.done_fd < 0 || q.mail_fd < 0 || q.ino_fd < 0 || q.hold_fd < 0 ||
	    inotify_add_watch(q.ino_fd, QUEUE_DIR_INCOMING, IN_MOVED_TO) < 0) {
		log_event(LOG_LVL_ERROR, "qmgr.error", "op", "open", "error", strerror(errno), NULL);
		store_close(&q.st);
		return 1;
	}
	q.base = event_base_new();
	event_base_priority_init(q.base, 2);
	q.work_ev = event_new(q.base, -1, 0, qmgr_work_cb, &q);
	event_priority_set(q.work_ev, 1);
	q.sync_ev = event_new(q.base, -1, 0, qmgr_sync_cb, &q);
	event_priority_set(q.sync_ev, 1);
	q.relay = relay_new(q.base, q.cfg, &error);
	if (q.relay == NULL) {
		/* no resolver: relay jobs cannot run; say so and keep local delivery */
		log_event(LOG_LVL_ERROR, "relay.error", "error", error, NULL);
		free(error);
		error = NULL;
	}
	q.ino_ev = event_new(q.base, q.ino_fd, EV_READ | EV_PERSIST, qmgr_ino_cb, &q);
	event_add(q.ino_ev, NULL);
	q.tick_ev = event_new(q.base, -1, EV_PERSIST, qmgr_tick_cb, &q);
	event_add(q.tick_ev, &tick);
	q.sig_term = evsignal_new(q.base, SIGTERM, qmgr_term_cb, &q);
	q.sig_usr1 = evsignal_new(q.base, SIGUSR1, qmgr_usr1_cb, &q);
	event_add(q.sig_term, NULL);
	event_add(q.sig_usr1, NULL);
	qmgr_ctl_open(&q);
	/* Recovery: everything committed before a crash or stop is in incoming/. */
	qmgr_clean_done(&q);
	qmgr_scan(&q);
	{
		char n[16];
		(void)util_fmt(n, sizeof(n), "%d", q.n_msgs);   /* an int in 16 */
		log_event(LOG_LVL_INFO, "qmgr.start", "recovered", n, NULL);
	}
	event_base_dispatch(q.base);
	signal(SIGTERM, SIG_IGN);    /* a second TERM must not cut the clean-up short */
	relay_free(&q.relay);       /* drops jobs in flight: they are retried after restart */
	lookup_pool_free(&q.pool);  /* route lookups in flight are dropped (not answered) too */
	qmgr_sync(&q);
	store_log_flush(q.st);
	for (int b = 0; b < QMGR_BUCKETS; b++)
		while (q.hash[b]) {
			qmgr_run_free(q.hash[b]->run);
			qmgr_forget(&q, q.hash[b]);
		}
	event_free(q.work_ev);
	event_free(q.sync_ev);
	if (q.ctl_ev) {
		event_free(q.ctl_ev);
		close(q.ctl_fd);
		unlink(QMGR_SOCK);
	}
	event_free(q.ino_ev);
	event_free(q.tick_ev);
	event_free(q.sig_term);
	event_free(q.sig_usr1);
	event_base_free(q.base);
	close(q.ino_fd);
	close(q.incoming_fd);
	close(q.done_fd);
	close(q.mail_fd);
	close(q.hold_fd);
	store_close(&q.st);
	log_event(LOG_LVL_INFO, "qmgr.stop", NULL);
	return 0;
}
