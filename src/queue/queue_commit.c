/* queue_commit: the group commit (docs/architecture.md, "The queue and group
 * commit"). Runs in each smtpd worker: jobs gather on the loop, a batch is
 * synced on the commit thread (one syncfs + one directory fsync for every
 * message that finished together), and the answers come back on the loop. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/log.h"
#include "lib/util.h"
#include "queue/queue_commit.h"
#include "queue/queue_file.h"

/* A group commit handed to the commit thread: the jobs' queue ids, one
 * fd on the queue file system for syncfs, and the results. */
struct queue_commit_batch {
	int n;
	char (*qid)[32];
	int *err;                  /* per message: rename error */
	int sync_fd;
	int sync_err, dir_err;
};

struct queue_commit {
	queue_commit_done_fn *done;
	struct queue_commit_job *head;          /* finished, waiting for a commit */
	struct queue_commit_job *inflight;      /* being synced by the commit thread */
	struct queue_commit_batch *inflight_batch;
	struct queue_commit_batch *job;         /* handed to the thread (under mu) */
	pthread_t thr;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
	int pipe[2];
	struct event *ev, *done_ev;
	int incoming_fd;
};

/* The disk work of one group commit: one syncfs for every file of the
 * batch, the renames into incoming/ (the commit point), one fsync of the
 * directory. Runs on the commit thread, or inline at shutdown. */
static void queue_commit_work(struct queue_commit_batch *c, int incoming_fd)
{
	if (syncfs(c->sync_fd) < 0) {
		c->sync_err = errno;
		return;
	}
	for (int i = 0; i < c->n; i++) {
		char from[128], to[128];
		if (util_fmt(from, sizeof(from), QUEUE_DIR_TMP "/%s", c->qid[i]) < 0 ||
		    util_fmt(to, sizeof(to), QUEUE_DIR_INCOMING "/%s", c->qid[i]) < 0)
			c->err[i] = ENAMETOOLONG;
		else if (rename(from, to) < 0)
			c->err[i] = errno ? errno : EIO;
	}
	if (fsync(incoming_fd) < 0)
		c->dir_err = errno;
}

static struct queue_commit_batch *queue_commit_prepare(struct queue_commit_job *batch)
{
	struct queue_commit_batch *c = xcalloc(1, sizeof(*c));
	int n = 0;

	for (struct queue_commit_job *j = batch; j; j = j->next)
		n++;
	c->qid = xcalloc((size_t)n, sizeof(*c->qid));
	c->err = xcalloc((size_t)n, sizeof(int));
	c->sync_fd = batch->fd;
	for (struct queue_commit_job *j = batch; j; j = j->next)
		(void)util_fmt(c->qid[c->n++], sizeof(c->qid[0]), "%s", j->qid);
	return c;
}

/* Back on the loop: answer every job of the batch. */
static void queue_commit_finish(struct queue_commit *qc, struct queue_commit_job *batch,
    struct queue_commit_batch *c)
{
	struct queue_commit_job *j, *next;
	int i = 0;

	if (c->sync_err || c->dir_err)
		log_event(LOG_LVL_ERROR, "queue.error", "op", c->sync_err ? "syncfs" : "fsync-dir",
		    "error", strerror(c->sync_err ? c->sync_err : c->dir_err), NULL);
	for (j = batch; j; j = next, i++) {
		next = j->next;        /* done may free the job's owner */
		j->next = NULL;
		j->err = c->err[i];
		if (c->err[i])
			log_event(LOG_LVL_ERROR, "queue.error", "op", "rename", "qid", c->qid[i],
			    "error", strerror(c->err[i]), NULL);
		qc->done(j, c->sync_err, c->dir_err);
	}
	free(c->qid);
	free(c->err);
	free(c);
}

static void *queue_commit_thread(void *arg)
{
	struct queue_commit *qc = arg;

	for (;;) {
		struct queue_commit_batch *c;
		char one = 1;

		pthread_mutex_lock(&qc->mu);
		while (qc->job == NULL && !qc->stop)
			pthread_cond_wait(&qc->cv, &qc->mu);
		c = qc->job;
		qc->job = NULL;
		pthread_mutex_unlock(&qc->mu);
		if (c == NULL)
			break;
		queue_commit_work(c, qc->incoming_fd);
		while (write(qc->pipe[1], &one, 1) < 0 && errno == EINTR)
			;
	}
	return NULL;
}

/* Runs after the loop's pending I/O callbacks. The jobs that finished in
 * this round form a batch; while one batch syncs on the commit thread, the
 * loop goes on serving everyone else and the next batch gathers, so the
 * disk is kept busy with ever larger groups. */
static void queue_commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue_commit *qc = arg;
	struct queue_commit_batch *c;

	(void)fd;
	(void)what;
	if (qc->inflight || qc->head == NULL)
		return;
	qc->inflight = qc->head;
	qc->head = NULL;
	c = queue_commit_prepare(qc->inflight);
	qc->inflight_batch = c;
	pthread_mutex_lock(&qc->mu);
	qc->job = c;
	pthread_cond_signal(&qc->cv);
	pthread_mutex_unlock(&qc->mu);
}

static void queue_commit_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue_commit *qc = arg;
	struct queue_commit_job *batch = qc->inflight;
	char buf[16];

	(void)what;
	if (read(fd, buf, sizeof(buf)) <= 0 || batch == NULL)
		return;
	qc->inflight = NULL;
	queue_commit_finish(qc, batch, qc->inflight_batch);
	qc->inflight_batch = NULL;
	if (qc->head)
		event_active(qc->ev, 0, 0);
}

void queue_commit_add(struct queue_commit *qc, struct queue_commit_job *job)
{
	job->err = 0;
	job->next = qc->head;
	qc->head = job;
	event_active(qc->ev, 0, 0);
}

void queue_commit_drain(struct queue_commit *qc)
{
	if (qc->inflight) {
		char b;
		int fl = fcntl(qc->pipe[0], F_GETFL);
		fcntl(qc->pipe[0], F_SETFL, fl & ~O_NONBLOCK);
		while (read(qc->pipe[0], &b, 1) < 0 && errno == EINTR)
			;
		fcntl(qc->pipe[0], F_SETFL, fl);
		{
			struct queue_commit_job *batch = qc->inflight;
			qc->inflight = NULL;
			queue_commit_finish(qc, batch, qc->inflight_batch);
			qc->inflight_batch = NULL;
		}
	}
	if (qc->head) {
		struct queue_commit_job *batch = qc->head;
		struct queue_commit_batch *c;
		qc->head = NULL;
		c = queue_commit_prepare(batch);
		queue_commit_work(c, qc->incoming_fd);
		queue_commit_finish(qc, batch, c);
	}
}

struct queue_commit *queue_commit_new(struct event_base *base, int incoming_fd,
    queue_commit_done_fn *done, const char **op_r)
{
	struct queue_commit *qc = xcalloc(1, sizeof(*qc));

	qc->done = done;
	qc->incoming_fd = incoming_fd;
	/* priority 1: after the round's I/O callbacks (the base has 2 levels) */
	qc->ev = event_new(base, -1, 0, queue_commit_cb, qc);
	event_priority_set(qc->ev, 1);
	if (pipe2(qc->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
		int e = errno;
		event_free(qc->ev);
		free(qc);
		errno = e;
		*op_r = "pipe";
		return NULL;
	}
	pthread_mutex_init(&qc->mu, NULL);
	pthread_cond_init(&qc->cv, NULL);
	if (pthread_create(&qc->thr, NULL, queue_commit_thread, qc) != 0) {
		close(qc->pipe[0]);
		close(qc->pipe[1]);
		event_free(qc->ev);
		free(qc);
		*op_r = "thread";
		return NULL;
	}
	qc->done_ev = event_new(base, qc->pipe[0], EV_READ | EV_PERSIST, queue_commit_done_cb, qc);
	event_add(qc->done_ev, NULL);
	return qc;
}

void queue_commit_free(struct queue_commit **qcp)
{
	struct queue_commit *qc = *qcp;

	if (qc == NULL)
		return;
	pthread_mutex_lock(&qc->mu);
	qc->stop = 1;
	pthread_cond_signal(&qc->cv);
	pthread_mutex_unlock(&qc->mu);
	pthread_join(qc->thr, NULL);
	close(qc->pipe[0]);
	close(qc->pipe[1]);
	event_free(qc->done_ev);
	event_free(qc->ev);
	close(qc->incoming_fd);
	free(qc);
	*qcp = NULL;
}
