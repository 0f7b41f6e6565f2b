/* lookup: the backend registry and one verification question answered by
 * a worker: loads the profile from the policy store, consults the shared
 * cache, asks the profile's backend through the registry (struct
 * lookup_backend, lookup_int.h), follows fallbacks; also the synchronous
 * form for kalectl and the profile checks. Runs in the lookup threads of
 * smtpd and qmgr and in kalectl. */
#include "lookup/lookup_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/util.h"

/* ---- the registry ---- */

/* Every backend, one per lookup_TYPE.c. */
static const struct lookup_backend *const lookup_backends[] = {
	&lookup_backend_localdb,
	&lookup_backend_mysql,
	&lookup_backend_pgsql,
	&lookup_backend_ldap,
	&lookup_backend_smtp,
};

#define LOOKUP_EXTRA_MAX 4
static const struct lookup_backend *lookup_extra[LOOKUP_EXTRA_MAX];

int lookup_backend_register(const struct lookup_backend *b)
{
	for (int i = 0; i < LOOKUP_EXTRA_MAX; i++)
		if (lookup_extra[i] == NULL || lookup_extra[i] == b) {
			lookup_extra[i] = b;
			return 0;
		}
	return -1;
}

const struct lookup_backend *lookup_backend_find(const char *type)
{
	for (int i = 0; i < LOOKUP_EXTRA_MAX && lookup_extra[i] != NULL; i++)
		if (strcmp(lookup_extra[i]->name, type) == 0)
			return lookup_extra[i];
	for (size_t i = 0; i < sizeof(lookup_backends) / sizeof(lookup_backends[0]); i++)
		if (strcmp(lookup_backends[i]->name, type) == 0)
			return lookup_backends[i];
	return NULL;
}

static pthread_once_t lookup_once = PTHREAD_ONCE_INIT;

/* Client libraries that are not safe to initialise from several threads
 * at once are initialised here, once, before any lookup thread asks. */
static void lookup_global_init(void)
{
	for (size_t i = 0; i < sizeof(lookup_backends) / sizeof(lookup_backends[0]); i++)
		if (lookup_backends[i]->init != NULL)
			lookup_backends[i]->init();
}

void lookup_thread_init(void)
{
	(void)pthread_once(&lookup_once, lookup_global_init);
	for (size_t i = 0; i < sizeof(lookup_backends) / sizeof(lookup_backends[0]); i++)
		if (lookup_backends[i]->thread_init != NULL)
			lookup_backends[i]->thread_init();
}

void lookup_thread_end(void)
{
	for (size_t i = 0; i < sizeof(lookup_backends) / sizeof(lookup_backends[0]); i++)
		if (lookup_backends[i]->thread_end != NULL)
			lookup_backends[i]->thread_end();
}

const char *lookup_result_word(enum lookup_result r)
{
	switch (r) {
	case LOOKUP_FOUND: return "found";
	case LOOKUP_MISSING: return "missing";
	case LOOKUP_CONFIG: return "config";
	default: return "error";
	}
}

/* ---- profile checks (kalectl verify add) ---- */

static int lookup_err(char **error_r, const char *msg)
{
	if (error_r != NULL)
		*error_r = xstrdup(msg);
	return -1;
}

/* 1 if s holds %m, %u or %d. */
static int lookup_has_placeholder(const char *s)
{
	for (; *s; s++) {
		if (s[0] == '%' && s[1] == '%')
			s++;
		else if (s[0] == '%' && (s[1] == 'm' || s[1] == 'u' || s[1] == 'd'))
			return 1;
	}
	return 0;
}

int lookup_ldap_filter_check(const char *f, char **error_r)
{
	int depth = 0;
	size_t n = strlen(f);

	if (n < 3 || f[0] != '(' || f[n - 1] != ')')
		return lookup_err(error_r, "the filter must be in parentheses, e.g. (mail=%m)");
	for (const char *p = f; *p; p++) {
		if (*p == '(')
			depth++;
		else if (*p == ')')
			depth--;
		if (depth <= 0 && p[1] != '\0') {
			depth = -1;    /* one filter: closed only at its end */
			break;
		}
	}
	if (depth != 0)
		return lookup_err(error_r, "unbalanced parentheses in the filter");
	if (!lookup_has_placeholder(f))
		return lookup_err(error_r, "the filter has no %m, %u or %d");
	return 0;
}

int lookup_profile_check(const struct store_verify *v, char **error_r)
{
	const struct lookup_backend *b = lookup_backend_find(v->type);
	char *err = NULL;
	int rc;

	if (b == NULL)
		return lookup_err(error_r, "unknown type");
	if (b->check == NULL)
		return 0;
	rc = b->check(v, &err);
	if (rc < 0 && err == NULL)
		err = xstrdup("bad profile settings");
	if (error_r != NULL)
		*error_r = err;
	else
		free(err);
	return rc < 0 ? -1 : 0;
}

/* ---- the worker ---- */

void lookup_worker_init(struct lookup_worker *w, const struct kale_config *cfg)
{
	memset(w, 0, sizeof(*w));
	w->cfg = cfg;
}

static void lookup_conn_free(struct lookup_conn *c)
{
	if (c->be != NULL && c->be->close != NULL && c->handle != NULL)
		c->be->close(c);
	lookup_sql_free(&c->sql);
	explicit_bzero(c, sizeof(*c));      /* the profile holds the bind password */
	free(c);
}

void lookup_worker_free(struct lookup_worker *w)
{
	while (w->conns != NULL) {
		struct lookup_conn *c = w->conns;
		w->conns = c->next;
		lookup_conn_free(c);
	}
	store_close(&w->st);
}

void lookup_reply_free(struct lookup_reply *r)
{
	xfree(&r->detail);
	xfree(&r->route);
}

/* The worker's connection for profile v; a new one if the settings changed. */
static struct lookup_conn *lookup_conn_get(struct lookup_worker *w, const struct store_verify *v,
    const struct lookup_backend *be)
{
	struct lookup_conn **pp, *c;

	for (pp = &w->conns; (c = *pp) != NULL; pp = &c->next) {
		if (strcasecmp(c->prof.name, v->name) != 0)
			continue;
		if (memcmp(&c->prof, v, sizeof(*v)) == 0 && c->be == be)
			return c;
		*pp = c->next;
		lookup_conn_free(c);
		break;
	}
	c = xcalloc(1, sizeof(*c));
	c->prof = *v;
	c->be = be;
	c->next = w->conns;
	w->conns = c;
	return c;
}

/* Profiles whose backend just timed out, shared by every thread of the
 * process: until hold_until they answer "error" without waiting again. */
#define LOOKUP_HOLD_MAX 32
static struct {
	char name[64];
	uint64_t until;
} lookup_holds[LOOKUP_HOLD_MAX];
static pthread_mutex_t lookup_hold_mu = PTHREAD_MUTEX_INITIALIZER;

static int lookup_hold_get(const char *name, uint64_t now)
{
	int held = 0;

	pthread_mutex_lock(&lookup_hold_mu);
	for (int i = 0; i < LOOKUP_HOLD_MAX; i++)
		if (lookup_holds[i].until > now && strcasecmp(lookup_holds[i].name, name) == 0) {
			held = 1;
			break;
		}
	pthread_mutex_unlock(&lookup_hold_mu);
	return held;
}

static void lookup_hold_set(const char *name, uint64_t until)
{
	int slot = 0;

	pthread_mutex_lock(&lookup_hold_mu);
	for (int i = 0; i < LOOKUP_HOLD_MAX; i++) {
		if (strcasecmp(lookup_holds[i].name, name) == 0) {
			slot = i;
			break;
		}
		if (lookup_holds[i].until < lookup_holds[slot].until)
			slot = i;     /* else the entry that expires first */
	}
	if (util_fmt(lookup_holds[slot].name, sizeof(lookup_holds[slot].name), "%s", name) == 0)
		lookup_holds[slot].until = until;
	pthread_mutex_unlock(&lookup_hold_mu);
}

/* Asks the backend on connection c: connects first if needed, and once
 * more on a fresh connection if a pooled one failed. */
static enum lookup_result lookup_conn_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r)
{
	const struct lookup_backend *be = c->be;
	int pooled = c->handle != NULL;
	enum lookup_result res = LOOKUP_ERROR;

	for (int attempt = 0; attempt < 2; attempt++) {
		int conn_failed = 0;

		xfree(detail_r);
		xfree(route_r);
		if (be->open != NULL && c->handle == NULL) {
			res = be->open(c, detail_r);
			if (res != LOOKUP_FOUND) {
				if (be->close != NULL && c->handle != NULL)
					be->close(c);
				return res == LOOKUP_CONFIG ? LOOKUP_CONFIG : LOOKUP_ERROR;
			}
		}
		res = be->ask(c, address, route_r, detail_r, &conn_failed);
		if (res == LOOKUP_FOUND || res == LOOKUP_MISSING)
			return res;
		xfree(route_r);
		/* a failed lookup leaves the connection in an unknown state */
		if (be->close != NULL && c->handle != NULL)
			be->close(c);
		if (res != LOOKUP_CONFIG)
			res = LOOKUP_ERROR;
		if (!conn_failed || !pooled || be->open == NULL)
			return res;
		pooled = 0;      /* the pooled connection had gone away: once on a new one */
	}
	return res;
}

enum lookup_result lookup_worker_backend(struct lookup_worker *w, const struct store_verify *v,
    const char *address, char **route_r, char **detail_r)
{
	const struct lookup_backend *be = lookup_backend_find(v->type);
	struct lookup_conn *c;
	enum lookup_result res;
	uint64_t start;

	*route_r = NULL;
	*detail_r = NULL;
	if (be == NULL) {
		*detail_r = xstrdup("this backend type is not available");
		return LOOKUP_CONFIG;
	}
	c = lookup_conn_get(w, v, be);
	c->cfg = w->cfg;
	c->st = w->st;
	start = util_now_ms();
	if (lookup_hold_get(v->name, start)) {
		/* a backend that just timed out is not waited for again at once:
		 * that would hold this thread (and the requests queued behind it) */
		*detail_r = xstrdup("the backend timed out moments ago; not asked again yet");
		return LOOKUP_ERROR;
	}
	res = lookup_conn_ask(c, address, route_r, detail_r);
	if (res == LOOKUP_ERROR && util_now_ms() - start >= (uint64_t)LOOKUP_TIMEOUT(c) * 900)
		lookup_hold_set(v->name, util_now_ms() + (uint64_t)LOOKUP_TIMEOUT(c) * 1000);
	return res;
}

/* One profile, with its cache. */
static enum lookup_result lookup_profile(struct lookup_worker *w, const struct store_verify *v,
    const char *address, struct lookup_reply *r)
{
	int cache = strcmp(v->mode, "cache") == 0, hit, cres = 0;
	int64_t now = (int64_t)time(NULL);
	char route[320];
	enum lookup_result res;

	if (cache) {
		hit = store_verify_cache_get(w->st, v->name, address, now, &cres, route, sizeof(route));
		if (hit == 1) {
			r->cached = 1;
			r->detail = xstrdup(cres == 0 ? "found in cache" : "missing in cache");
			if (route[0] != '\0')
				r->route = xstrdup(route);
			return cres == 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
		}
		if (hit < 0)
			log_event(LOG_LVL_WARN, "verify.cache_error", "profile", v->name, NULL);
	}
	r->cached = 0;
	res = lookup_worker_backend(w, v, address, &r->route, &r->detail);
	if (res == LOOKUP_CONFIG)
		log_event(LOG_LVL_ERROR, "verify.config_error", "profile", v->name, "type", v->type,
		    "error", r->detail ? r->detail : "configuration error", NULL);
	if (cache && (res == LOOKUP_FOUND || res == LOOKUP_MISSING) &&
	    store_verify_cache_put(w->st, v->name, address, res == LOOKUP_FOUND ? 0 : 1, r->route,
	    now + (res == LOOKUP_FOUND ? v->ttl_found : v->ttl_missing)) < 0)
		log_event(LOG_LVL_WARN, "verify.cache_error", "profile", v->name, NULL);
	return res;
}

void lookup_worker_ask(struct lookup_worker *w, const char *profile, const char *address,
    struct lookup_reply *r)
{
	uint64_t start = util_now_us();
	struct store_verify v;
	char name[64], key[LOOKUP_ADDR_MAX + 1], *err = NULL;
	int rc;

	memset(r, 0, sizeof(*r));
	r->result = LOOKUP_ERROR;
	if (util_fmt(r->profile, sizeof(r->profile), "%s", profile) < 0 ||
	    util_fmt(name, sizeof(name), "%s", profile) < 0) {
		r->result = LOOKUP_CONFIG;
		r->detail = xstrdup("profile name too long");
		goto out;
	}
	if (util_fmt(key, sizeof(key), "%s", address) < 0) {
		r->result = LOOKUP_MISSING;
		r->detail = xstrdup("address too long");
		goto out;
	}
	util_lower(key);
	if (w->st == NULL && store_connect(w->cfg, &w->st, &err) < 0) {
		r->detail = err ? err : xstrdup("cannot open the policy store");
		goto out;
	}
	for (int hop = 0; hop <= LOOKUP_FALLBACK_MAX; hop++) {
		rc = store_verify_get(w->st, name, &v);
		if (rc <= 0) {
			lookup_reply_free(r);
			r->result = rc < 0 ? LOOKUP_ERROR : LOOKUP_CONFIG;
			r->detail = xstrdup(rc < 0 ? "cannot read the policy store" :
			    "no such verification profile");
			if (util_fmt(r->profile, sizeof(r->profile), "%s", name) < 0)
				r->profile[0] = '\0';
			if (rc == 0)
				log_event(LOG_LVL_ERROR, "verify.config_error", "profile", name,
				    "error", r->detail, NULL);
			goto out;
		}
		lookup_reply_free(r);
		memcpy(r->profile, v.name, sizeof(r->profile));
		r->result = lookup_profile(w, &v, key, r);
		if (r->result != LOOKUP_MISSING || v.fallback[0] == '\0')
			goto out;
		memcpy(name, v.fallback, sizeof(name));
	}
	lookup_reply_free(r);
	r->result = LOOKUP_CONFIG;
	r->detail = xstrdup("fallback chain too long");
	log_event(LOG_LVL_ERROR, "verify.config_error", "profile", profile, "error", r->detail, NULL);
out:
	explicit_bzero(&v, sizeof(v));
	r->elapsed_us = (int64_t)(util_now_us() - start);
}

int lookup_verify_sync(const struct kale_config *cfg, const char *profile, const char *address,
    struct lookup_answer *answer_r, char **detail_r)
{
	struct lookup_worker w;
	struct lookup_reply r;
	size_t dl, pl, rl;
	char *buf;

	lookup_thread_init();
	lookup_worker_init(&w, cfg);
	lookup_worker_ask(&w, profile, address, &r);
	lookup_worker_free(&w);
	lookup_thread_end();
	/* one block: detail \0 profile \0 route \0 */
	dl = r.detail ? strlen(r.detail) : 0;
	pl = strlen(r.profile);
	rl = r.route ? strlen(r.route) : 0;
	buf = xmalloc(dl + pl + rl + 3);
	memcpy(buf, r.detail ? r.detail : "", dl + 1);
	memcpy(buf + dl + 1, r.profile, pl + 1);
	memcpy(buf + dl + pl + 2, r.route ? r.route : "", rl + 1);
	memset(answer_r, 0, sizeof(*answer_r));
	answer_r->result = r.result;
	answer_r->detail = buf;
	answer_r->profile = buf + dl + 1;
	answer_r->route = r.route ? buf + dl + pl + 2 : NULL;
	answer_r->cached = r.cached;
	answer_r->elapsed_us = r.elapsed_us;
	*detail_r = buf;
	lookup_reply_free(&r);
	return (int)answer_r->result;
}
