/* store_filter: the rows of filtering (issue 13): filter policies with
 * their spam score thresholds, per-policy check settings, the allow and
 * block lists, and the greylist triplets and remembered clients. What the
 * rows mean (check names, actions, options) is src/filter/'s business; this
 * file only keeps names well-formed and the "default" policy in place.
 * Every change of a policy, check or list moves filter_version (triggers,
 * store_sql.c), which each process's filter cache watches. */
#include "store/store_int.h"

#include <string.h>
#include <strings.h>

#include "lib/util.h"

int store_filter_version(store *st, int64_t *v_r)
{
	return store_run_int(st, ST_FILTER_VERSION, v_r, "");
}

static void store_fpol_row(struct store_q *q, struct store_filter_policy *p)
{
	memset(p, 0, sizeof(*p));
	store_q_copy(q, 0, p->name, sizeof(p->name));
	p->tag = store_q_double(q, 1);
	p->quarantine = store_q_double(q, 2);
	p->reject = store_q_double(q, 3);
}

int store_filter_policy_get(store *st, const char *name, struct store_filter_policy *p_r)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_FPOL_GET, NULL, "t", name) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_fpol_row(&q, p_r);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_filter_policy_check(store *st, const char *policy, char **error_r)
{
	struct store_filter_policy p;
	int rc;

	if (!store_name_ok(policy, 63))
		return util_err(error_r, "bad filter policy name '%.64s'", policy);
	rc = store_filter_policy_get(st, policy, &p);
	if (rc < 0)
		return store_err_db(st, error_r, "store: read filter policy");
	if (rc == 0)
		return util_err(error_r, "no filter policy '%s' (kalectl filter add)", policy);
	return 0;
}

struct store_fpol_each {
	int (*cb)(void *ctx, const struct store_filter_policy *p);
	void *ctx;
};

static int store_fpol_each_row(struct store_q *q, void *arg)
{
	const struct store_fpol_each *e = arg;
	struct store_filter_policy p;

	store_fpol_row(q, &p);
	return e->cb(e->ctx, &p);
}

int store_filter_policy_list(store *st,
    int (*cb)(void *ctx, const struct store_filter_policy *p), void *ctx)
{
	struct store_fpol_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_FPOL_LIST, NULL, "") < 0)
		return -1;
	return store_q_each(&q, store_fpol_each_row, &e);
}

struct store_fpol_add {
	const char *name, *copy_of;
};

static int store_fpol_add_tx(store *st, void *ctx, char **error_r)
{
	const struct store_fpol_add *a = ctx;
	struct store_filter_policy from = { .tag = 5, .quarantine = 10, .reject = 15 };

	if (a->copy_of != NULL) {
		int rc = store_filter_policy_get(st, a->copy_of, &from);
		if (rc < 0)
			return store_err_db(st, error_r, "store: read filter policy");
		if (rc == 0)
			return util_err(error_r, "no filter policy '%.64s'", a->copy_of);
	}
	if (store_run_added(st, store_run(st, ST_FPOL_ADD, "tddd", a->name, from.tag,
	    from.quarantine, from.reject), "filter policy", a->name, error_r) < 0)
		return -1;
	if (a->copy_of != NULL &&
	    (store_run(st, ST_FPOL_COPY_CHECKS, "tt", a->name, from.name) != STORE_DONE ||
	    store_run(st, ST_FPOL_COPY_LISTS, "tt", a->name, from.name) != STORE_DONE))
		return store_err_db(st, error_r, "store: copy filter policy");
	return 0;
}

int store_filter_policy_add(store *st, const char *name, const char *copy_of, char **error_r)
{
	struct store_fpol_add a = { name, copy_of };

	if (!store_name_ok(name, 63))
		return util_err(error_r, "bad filter policy name '%.64s' ([A-Za-z0-9._-], 1-63)", name);
	return store_tx(st, store_fpol_add_tx, &a, error_r);
}

static int store_fpol_del_tx(store *st, void *ctx, char **error_r)
{
	const char *name = ctx;
	int64_t n;

	if (store_run_int(st, ST_FPOL_USED, &n, "t", name) < 0)
		return store_err_db(st, error_r, "store: count domains");
	if (n > 0)
		return util_err(error_r, "filter policy %s is used by %ld domain%s", name, (long)n,
		    n == 1 ? "" : "s");
	if (store_run(st, ST_FPOL_DEL, "t", name) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete filter policy");
	if (store_changes(st) == 0)
		return util_err(error_r, "no filter policy '%.64s'", name);
	if (store_run(st, ST_FPOL_DEL_CHECKS, "t", name) != STORE_DONE ||
	    store_run(st, ST_FPOL_DEL_LISTS, "t", name) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete filter policy");
	return 0;
}

int store_filter_policy_del(store *st, const char *name, char **error_r)
{
	if (strcasecmp(name, "default") == 0)
		return util_err(error_r, "the default filter policy cannot be deleted");
	return store_tx(st, store_fpol_del_tx, (void *)name, error_r);
}

int store_filter_policy_scores(store *st, const char *name, double tag, double quarantine,
    double reject, char **error_r)
{
	if (store_run(st, ST_FPOL_SCORES, "dddt", tag, quarantine, reject, name) != STORE_DONE)
		return store_err_db(st, error_r, "store: set scores");
	if (store_changes(st) == 0)
		return util_err(error_r, "no filter policy '%.64s'", name);
	return 0;
}

struct store_fcheck_each {
	int (*cb)(void *ctx, const struct store_filter_check *c);
	void *ctx;
};

static int store_fcheck_each_row(struct store_q *q, void *arg)
{
	const struct store_fcheck_each *e = arg;
	struct store_filter_check c;

	memset(&c, 0, sizeof(c));
	store_q_copy(q, 0, c.name, sizeof(c.name));
	store_q_copy(q, 1, c.action, sizeof(c.action));
	c.score = store_q_double(q, 2);
	store_q_copy(q, 3, c.on_error, sizeof(c.on_error));
	store_q_copy(q, 4, c.options, sizeof(c.options));
	return e->cb(e->ctx, &c);
}

int store_filter_check_list(store *st, const char *policy,
    int (*cb)(void *ctx, const struct store_filter_check *c), void *ctx)
{
	struct store_fcheck_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_FCHECK_LIST, NULL, "t", policy) < 0)
		return -1;
	return store_q_each(&q, store_fcheck_each_row, &e);
}

int store_filter_check_set(store *st, const char *policy, const struct store_filter_check *c,
    char **error_r)
{
	if (store_filter_policy_check(st, policy, error_r) < 0)
		return -1;
	if (store_run(st, ST_FCHECK_SET, "tttdtt", policy, c->name, c->action, c->score,
	    c->on_error[0] ? c->on_error : "tempfail", c->options[0] ? c->options : "{}") != STORE_DONE)
		return store_err_db(st, error_r, "store: set check");
	return 0;
}

int store_filter_list_add(store *st, const struct store_filter_list *l, char **error_r)
{
	const char *policy = l->policy[0] ? l->policy : "default";

	if (store_filter_policy_check(st, policy, error_r) < 0)
		return -1;
	return store_run_added(st, store_run(st, ST_FLIST_ADD, "tttttt", policy, l->list, l->kind,
	    l->value, l->skip, l->comment), "list entry", l->value, error_r);
}

int store_filter_list_del(store *st, const struct store_filter_list *l, char **error_r)
{
	const char *policy = l->policy[0] ? l->policy : "default";

	if (store_run(st, ST_FLIST_DEL, "tttt", policy, l->list, l->kind, l->value) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete list entry");
	if (store_changes(st) == 0)
		return util_err(error_r, "no %s %s entry '%.320s' in policy %s", l->list, l->kind,
		    l->value, policy);
	return 0;
}

struct store_flist_each {
	int (*cb)(void *ctx, const struct store_filter_list *l);
	void *ctx;
};

static int store_flist_each_row(struct store_q *q, void *arg)
{
	const struct store_flist_each *e = arg;
	struct store_filter_list l;

	memset(&l, 0, sizeof(l));
	store_q_copy(q, 0, l.policy, sizeof(l.policy));
	store_q_copy(q, 1, l.list, sizeof(l.list));
	store_q_copy(q, 2, l.kind, sizeof(l.kind));
	store_q_copy(q, 3, l.value, sizeof(l.value));
	store_q_copy(q, 4, l.skip, sizeof(l.skip));
	store_q_copy(q, 5, l.comment, sizeof(l.comment));
	return e->cb(e->ctx, &l);
}

int store_filter_list_each(store *st, const char *policy,
    int (*cb)(void *ctx, const struct store_filter_list *l), void *ctx)
{
	struct store_flist_each e = { cb, ctx };
	struct store_q q;
	int rc = policy == NULL ? store_q_start(st, &q, ST_FLIST_ALL, NULL, "")
	    : store_q_start(st, &q, ST_FLIST_POLICY, NULL, "t", policy);

	if (rc < 0)
		return -1;
	return store_q_each(&q, store_flist_each_row, &e);
}

/* ---- greylisting ---- */

static void store_grey_row(struct store_q *q, struct store_greylist *g)
{
	memset(g, 0, sizeof(*g));
	store_q_copy(q, 0, g->net, sizeof(g->net));
	store_q_copy(q, 1, g->sender, sizeof(g->sender));
	store_q_copy(q, 2, g->rcpt, sizeof(g->rcpt));
	g->first_seen = store_q_int(q, 3);
	g->last_seen = store_q_int(q, 4);
	g->expires = store_q_int(q, 5);
	g->passed = (int)store_q_int(q, 6);
}

int store_greylist_get(store *st, const char *net, const char *sender, const char *rcpt,
    struct store_greylist *g_r)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_GREY_GET, NULL, "ttt", net, sender, rcpt) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_grey_row(&q, g_r);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_greylist_put(store *st, const struct store_greylist *g)
{
	return store_run(st, ST_GREY_PUT, "tttIIIi", g->net, g->sender, g->rcpt, g->first_seen,
	    g->last_seen, g->expires, g->passed) == STORE_DONE ? 0 : -1;
}

int store_greylist_client_get(store *st, const char *net, int *passes_r, int64_t *expires_r)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_GREY_CLIENT_GET, NULL, "t", net) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		*passes_r = (int)store_q_int(&q, 0);
		*expires_r = store_q_int(&q, 1);
	}
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_greylist_client_put(store *st, const char *net, int passes, int64_t expires)
{
	return store_run(st, ST_GREY_CLIENT_PUT, "tiI", net, passes, expires) == STORE_DONE ? 0 : -1;
}

struct store_grey_each {
	int (*cb)(void *ctx, const struct store_greylist *g);
	void *ctx;
};

static int store_grey_each_row(struct store_q *q, void *arg)
{
	const struct store_grey_each *e = arg;
	struct store_greylist g;

	store_grey_row(q, &g);
	return e->cb(e->ctx, &g);
}

int store_greylist_list(store *st, int64_t now, int limit,
    int (*cb)(void *ctx, const struct store_greylist *g), void *ctx)
{
	struct store_grey_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_GREY_LIST, NULL, "Ii", now, limit > 0 ? limit : 1000) < 0)
		return -1;
	return store_q_each(&q, store_grey_each_row, &e);
}

long store_greylist_flush(store *st, const char *what, int64_t now, char **error_r)
{
	long n;

	if (store_run(st, ST_GREY_FLUSH, "tttt", what, what, what, what) != STORE_DONE)
		return store_err_db(st, error_r, "store: flush greylist");
	n = store_changes(st);
	if (store_run(st, ST_GREY_EXPIRE, "I", now) != STORE_DONE)
		return store_err_db(st, error_r, "store: expire greylist");
	n += store_changes(st);
	if (store_run(st, ST_GREY_CLIENT_FLUSH, "ttI", what, what, now) != STORE_DONE)
		return store_err_db(st, error_r, "store: flush greylist clients");
	return n;
}

/* ---- rate counters ---- */

int store_rate_hit(store *st, const char *key, int64_t now, int64_t window, int messages,
    int rcpts, int64_t *messages_r, int64_t *rcpts_r)
{
	struct store_q q;
	int rc;

	if (store_run(st, ST_RATE_HIT, "tIiiI", key, now, messages, rcpts, window) != STORE_DONE)
		return -1;
	if (store_q_start(st, &q, ST_RATE_GET, NULL, "t", key) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		*messages_r = store_q_int(&q, 1);
		*rcpts_r = store_q_int(&q, 2);
	}
	store_q_end(&q);
	return rc == STORE_ROW ? 0 : -1;
}

int store_rate_get(store *st, const char *key, int64_t now, int64_t window,
    int64_t *messages_r, int64_t *rcpts_r)
{
	struct store_q q;
	int rc;

	*messages_r = *rcpts_r = 0;
	if (store_q_start(st, &q, ST_RATE_GET, NULL, "t", key) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW && store_q_int(&q, 0) > now - window) {
		*messages_r = store_q_int(&q, 1);
		*rcpts_r = store_q_int(&q, 2);
	}
	store_q_end(&q);
	return rc == STORE_ROW || rc == STORE_DONE ? 0 : -1;
}
