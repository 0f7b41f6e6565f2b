/* queue_commit: the group commit of queue/tmp files into queue/incoming.
 * Runs in each smtpd worker: the batching on its libevent loop, the disk
 * work (one syncfs, the renames, one directory fsync) on a thread of its
 * own. Knows nothing of SMTP sessions: a message is a queue_commit_job. */
#ifndef KALE_QUEUE_COMMIT_H
#define KALE_QUEUE_COMMIT_H

#include <event2/event.h>

/* One finished message waiting for its commit, embedded in the caller's
 * object. The caller fills qid, fd and arg; the rest is queue_commit's
 * until the job is handed back through the done callback. */
struct queue_commit_job {
	const char *qid;           /* queue/tmp/QID; must stay valid until done */
	int fd;                    /* its open file (the batch's syncfs handle) */
	void *arg;
	int err;                   /* at done: the rename's errno, 0 if renamed */
	struct queue_commit_job *next;
};

/* Called on the loop for each job of a batch, in batch order. sync_err and
 * dir_err: the batch's syncfs and directory fsync errors (0 if none); the
 * message is durable only when both and job->err are 0. The callback may
 * free the object the job is embedded in. */
typedef void queue_commit_done_fn(struct queue_commit_job *job, int sync_err, int dir_err);

struct queue_commit;

/* Takes over incoming_fd (queue/incoming, opened O_DIRECTORY; the caller
 * keeps it on failure). NULL on failure, with the failed step ("pipe",
 * "thread") in *op_r and errno set. */
struct queue_commit *queue_commit_new(struct event_base *base, int incoming_fd,
    queue_commit_done_fn *done, const char **op_r);
/* Adds a job to the batch being gathered; the commit runs after the loop's
 * pending I/O callbacks, or when the batch in flight is done. */
void queue_commit_add(struct queue_commit *qc, struct queue_commit_job *job);
/* At shutdown: waits for the batch in flight, then commits the pending
 * one inline, so every job is answered before this returns. */
void queue_commit_drain(struct queue_commit *qc);
/* Stops the thread and frees everything (drain first). Accepts NULL. */
void queue_commit_free(struct queue_commit **qcp);

#endif
