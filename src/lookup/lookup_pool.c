/* lookup_pool: the small thread pool that runs verification lookups and
 * other blocking jobs off the event loop; each thread has its own worker
 * (store handle, backend connections); answers come back to the loop
 * through a pipe. Runs in smtpd (pool threads + the loop thread). */
#include "lookup/lookup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/util.h"

#define LOOKUP_THREADS_MAX 64

struct lookup_req {
	struct lookup_req *next;             /* todo or done queue */
	struct lookup_req *lprev, *lnext;    /* live list */
	uint64_t id;
	int cancelled;
	/* verify */
	char *profile, *address;
	lookup_cb *cb;
	void *ctx;
	struct lookup_reply reply;
	/* job */
	void (*work)(void *job);
	void (*done)(void *job, int cancelled);
	void *job;
};

struct lookup_pool {
	struct event_base *base;
	const struct kale_config *cfg;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct lookup_req *todo, *todo_tail, *done, *done_tail, *live;
	int stopping;
	pthread_t *threads;
	int nthreads;
	int pipefd[2];
	struct event *ev;
	uint64_t next_id;
};

static void *lookup_thread(void *arg)
{
	struct lookup_pool *p = arg;
	struct lookup_worker w;
	struct lookup_req *r;
	ssize_t n;

	lookup_thread_init();
	lookup_worker_init(&w, p->cfg);
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (p->todo == NULL && !p->stopping)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stopping) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		r = p->todo;
		p->todo = r->next;
		if (p->todo == NULL)
			p->todo_tail = NULL;
		r->next = NULL;
		int skip = r->cancelled;
		pthread_mutex_unlock(&p->mu);

		if (!skip) {
			if (r->work != NULL)
				r->work(r->job);
			else
				lookup_worker_ask(&w, r->profile, r->address, &r->reply);
		}

		pthread_mutex_lock(&p->mu);
		if (p->done_tail != NULL)
			p->done_tail->next = r;
		else
			p->done = r;
		p->done_tail = r;
		pthread_mutex_unlock(&p->mu);
		do
			n = write(p->pipefd[1], "x", 1);
		while (n < 0 && errno == EINTR);
		/* EAGAIN: the pipe is full, the loop will wake up anyway */
	}
	lookup_worker_free(&w);
	lookup_thread_end();
	return NULL;
}

static void lookup_live_unlink(struct lookup_pool *p, struct lookup_req *r)
{
	if (r->lprev != NULL)
		r->lprev->lnext = r->lnext;
	else
		p->live = r->lnext;
	if (r->lnext != NULL)
		r->lnext->lprev = r->lprev;
	r->lprev = r->lnext = NULL;
}

static void lookup_req_free(struct lookup_req *r)
{
	free(r->profile);
	free(r->address);
	lookup_reply_free(&r->reply);
	free(r);
}

/* Runs on the loop thread: hands finished requests to their callbacks. */
static void lookup_on_done(evutil_socket_t fd, short what, void *arg)
{
	struct lookup_pool *p = arg;
	struct lookup_req *r;
	char buf[256];
	int cancelled;

	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	/* One at a time: a callback may cancel a request that finished in the
	 * same batch (its session closed); that one must not be answered. */
	for (;;) {
		pthread_mutex_lock(&p->mu);
		r = p->done;
		if (r != NULL) {
			p->done = r->next;
			if (p->done == NULL)
				p->done_tail = NULL;
			r->next = NULL;
			lookup_live_unlink(p, r);
			cancelled = r->cancelled;
		}
		pthread_mutex_unlock(&p->mu);
		if (r == NULL)
			break;
		if (r->work != NULL) {
			r->done(r->job, cancelled);
		} else if (!cancelled) {
			struct lookup_answer a;
			memset(&a, 0, sizeof(a));
			a.result = r->reply.result;
			a.profile = r->reply.profile;
			a.detail = r->reply.detail;
			a.route = r->reply.route;
			a.cached = r->reply.cached;
			a.elapsed_us = r->reply.elapsed_us;
			r->cb(r->ctx, &a);
		}
		lookup_req_free(r);
	}
}

struct lookup_pool *lookup_pool_new(struct event_base *base, const struct kale_config *cfg,
    int nthreads, char **error_r)
{
	struct lookup_pool *p;
	char buf[256];
	int rc;

	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > LOOKUP_THREADS_MAX)
		nthreads = LOOKUP_THREADS_MAX;
	lookup_thread_init();   /* the global part, before any thread exists */
	p = xcalloc(1, sizeof(*p));
	p->base = base;
	p->cfg = cfg;
	p->next_id = 1;
	p->pipefd[0] = p->pipefd[1] = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	if (pipe2(p->pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
		rc = util_fmt(buf, sizeof(buf), "lookup pool: pipe: %s", strerror(errno));
		goto fail;
	}
	p->ev = event_new(base, p->pipefd[0], EV_READ | EV_PERSIST, lookup_on_done, p);
	if (p->ev == NULL || event_add(p->ev, NULL) < 0) {
		rc = util_fmt(buf, sizeof(buf), "lookup pool: cannot add the event");
		goto fail;
	}
	p->threads = xcalloc((size_t)nthreads, sizeof(*p->threads));
	for (int i = 0; i < nthreads; i++) {
		int e = pthread_create(&p->threads[i], NULL, lookup_thread, p);
		if (e != 0) {
			rc = util_fmt(buf, sizeof(buf), "lookup pool: thread: %s", strerror(e));
			goto fail;
		}
		p->nthreads++;
	}
	return p;
fail:
	(void)rc;
	if (error_r != NULL)
		*error_r = xstrdup(buf);
	lookup_pool_free(&p);
	return NULL;
}

void lookup_pool_free(struct lookup_pool **pp)
{
	struct lookup_pool *p = pp ? *pp : NULL;
	struct lookup_req *r;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	/* every request still here: jobs learn they were cancelled */
	while ((r = p->live) != NULL) {
		lookup_live_unlink(p, r);
		if (r->work != NULL)
			r->done(r->job, 1);
		lookup_req_free(r);
	}
	if (p->ev != NULL)
		event_free(p->ev);
	if (p->pipefd[0] >= 0)
		close(p->pipefd[0]);
	if (p->pipefd[1] >= 0)
		close(p->pipefd[1]);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
	*pp = NULL;
}

static uint64_t lookup_submit(struct lookup_pool *p, struct lookup_req *r)
{
	pthread_mutex_lock(&p->mu);
	r->id = p->next_id++;
	r->lnext = p->live;
	if (p->live != NULL)
		p->live->lprev = r;
	p->live = r;
	if (p->todo_tail != NULL)
		p->todo_tail->next = r;
	else
		p->todo = r;
	p->todo_tail = r;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return r->id;
}

uint64_t lookup_verify(struct lookup_pool *pool, const char *profile, const char *address,
    lookup_cb *cb, void *ctx)
{
	struct lookup_req *r = xcalloc(1, sizeof(*r));

	r->profile = xstrdup(profile);
	r->address = xstrdup(address);
	r->cb = cb;
	r->ctx = ctx;
	return lookup_submit(pool, r);
}

uint64_t lookup_pool_job(struct lookup_pool *pool, void (*work)(void *job),
    void (*done)(void *job, int cancelled), void *job)
{
	struct lookup_req *r = xcalloc(1, sizeof(*r));

	r->work = work;
	r->done = done;
	r->job = job;
	return lookup_submit(pool, r);
}

void lookup_cancel(struct lookup_pool *pool, uint64_t id)
{
	pthread_mutex_lock(&pool->mu);
	for (struct lookup_req *r = pool->live; r != NULL; r = r->lnext)
		if (r->id == id) {
			r->cancelled = 1;
			break;
		}
	pthread_mutex_unlock(&pool->mu);
}
