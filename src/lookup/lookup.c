/* lookup: one verification question answered by a worker: loads the
 * profile from the policy store, consults the shared cache, asks the backend
 * (localdb, mysql, pgsql, ldap), follows fallbacks; also the synchronous
 * form for kalectl and the profile checks. Runs in smtpd's lookup threads
 * and in kalectl. */
#include "lookup/lookup_int.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mysql.h>
#include <ldap.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/util.h"

static pthread_once_t lookup_once = PTHREAD_ONCE_INIT;

static void lookup_global_init(void)
{
	int v = 0;

	/* neither is safe to initialise from several threads at once */
	(void)mysql_library_init(0, NULL, NULL);
	(void)ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
}

void lookup_thread_init(void)
{
	(void)pthread_once(&lookup_once, lookup_global_init);
	(void)mysql_thread_init();
}

void lookup_thread_end(void)
{
	mysql_thread_end();
}

/* ---- profile checks (kalectl verify add) ---- */

static int lookup_err(char **error_r, const char *msg)
{
	if (error_r != NULL)
		*error_r = xstrdup(msg);
	return -1;
}

static int lookup_has_ph(const char *s)
{
	for (; *s; s++) {
		if (s[0] == '%' && s[1] == '%')
			s++;
		else if (s[0] == '%' && (s[1] == 'm' || s[1] == 'u' || s[1] == 'd'))
			return 1;
	}
	return 0;
}

static int lookup_filter_check(const char *f, char **error_r)
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
	if (!lookup_has_ph(f))
		return lookup_err(error_r, "the filter has no %m, %u or %d");
	return 0;
}

int lookup_profile_check(const struct store_verify *v, char **error_r)
{
	struct lookup_sql q;

	if (strcmp(v->type, "localdb") == 0)
		return 0;
	if (strcmp(v->type, "mysql") == 0 || strcmp(v->type, "pgsql") == 0) {
		int pg = v->type[0] == 'p';
		if (!pg && lookup_mysql_url_ok(v->url) < 0)
			return lookup_err(error_r, "mysql needs --url mysql://USER:PASSWORD@HOST[:PORT]/DATABASE");
		if (pg && strncmp(v->url, "postgresql://", 13) != 0 && strncmp(v->url, "postgres://", 11) != 0)
			return lookup_err(error_r, "pgsql needs --url postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE");
		if (v->query[0] == '\0')
			return lookup_err(error_r, "--query is needed");
		if (lookup_sql_compile(v->query, pg, &q, error_r) < 0)
			return -1;
		lookup_sql_free(&q);
		return 0;
	}
	if (strcmp(v->type, "ldap") == 0) {
		if (strncmp(v->url, "ldap://", 7) != 0 && strncmp(v->url, "ldaps://", 8) != 0 &&
		    strncmp(v->url, "ldapi://", 8) != 0)
			return lookup_err(error_r, "ldap needs --url ldap://HOST[:PORT] or ldaps://HOST[:PORT]");
		if (!ldap_is_ldap_url(v->url) && strncmp(v->url, "ldapi://", 8) != 0)
			return lookup_err(error_r, "bad ldap url");
		if (v->starttls && strncmp(v->url, "ldap://", 7) != 0)
			return lookup_err(error_r, "--starttls goes with ldap:// only");
		if (v->base[0] == '\0')
			return lookup_err(error_r, "ldap needs --base DN");
		if (v->filter[0] == '\0')
			return lookup_err(error_r, "ldap needs --filter, e.g. (mail=%m)");
		if (lookup_filter_check(v->filter, error_r) < 0)
			return -1;
		for (const char *p = v->route_attr; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != ';' && *p != '.')
				return lookup_err(error_r, "bad --route-attribute");
		return 0;
	}
	if (strcmp(v->type, "smtp") == 0)
		return 0;
	return lookup_err(error_r, "unknown type");
}

/* ---- the worker ---- */

void lookup_worker_init(struct lookup_worker *w, const struct kale_config *cfg)
{
	memset(w, 0, sizeof(*w));
	w->cfg = cfg;
}

static void lookup_conn_free(struct lookup_conn *c)
{
	if (strcmp(c->prof.type, "mysql") == 0)
		lookup_mysql_close(c);
	else if (strcmp(c->prof.type, "pgsql") == 0)
		lookup_pgsql_close(c);
	else if (strcmp(c->prof.type, "ldap") == 0)
		lookup_ldap_close(c);
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
static struct lookup_conn *lookup_conn_get(struct lookup_worker *w, const struct store_verify *v)
{
	struct lookup_conn **pp, *c;

	for (pp = &w->conns; (c = *pp) != NULL; pp = &c->next) {
		if (strcasecmp(c->prof.name, v->name) != 0)
			continue;
		if (memcmp(&c->prof, v, sizeof(*v)) == 0)
			return c;
		*pp = c->next;
		lookup_conn_free(c);
		break;
	}
	c = xcalloc(1, sizeof(*c));
	c->prof = *v;
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

static enum lookup_result lookup_backend(struct lookup_worker *w, const struct store_verify *v,
    const char *address, char **route_r, char **detail_r)
{
	struct lookup_conn *c;
	char **targets = NULL, *err = NULL;
	enum lookup_result res;
	uint64_t start;
	int n;

	if (strcmp(v->type, "localdb") == 0) {
		n = store_rcpt_resolve(w->st, address, &targets, &err);
		if (n < 0) {
			*detail_r = err ? err : xstrdup("localdb: policy store error");
			return LOOKUP_ERROR;
		}
		if (n > 0)
			store_targets_free(targets, n);
		return n > 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
	}
	if (strcmp(v->type, "mysql") != 0 && strcmp(v->type, "pgsql") != 0 &&
	    strcmp(v->type, "ldap") != 0 && strcmp(v->type, "smtp") != 0) {
		*detail_r = xstrdup("this backend type is not available");
		return LOOKUP_ERROR;
	}
	c = lookup_conn_get(w, v);
	start = util_now_ms();
	if (lookup_hold_get(v->name, start)) {
		/* a backend that just timed out is not waited for again at once:
		 * that would hold this thread (and the requests queued behind it) */
		*detail_r = xstrdup("the backend timed out moments ago; not asked again yet");
		return LOOKUP_ERROR;
	}
	if (strcmp(v->type, "smtp") == 0)
		res = lookup_smtp_ask(w->cfg, w->st, v, address, detail_r);
	else if (strcmp(v->type, "mysql") == 0)
		res = lookup_mysql_ask(c, address, detail_r);
	else if (strcmp(v->type, "pgsql") == 0)
		res = lookup_pgsql_ask(c, address, detail_r);
	else
		res = lookup_ldap_ask(c, address, route_r, detail_r);
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
	res = lookup_backend(w, v, address, &r->route, &r->detail);
	if (cache && res != LOOKUP_ERROR &&
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
		r->detail = xstrdup("profile name too long");
		goto out;
	}
	if (util_fmt(key, sizeof(key), "%s", address) < 0) {
		r->result = LOOKUP_MISSING;
		r->detail = xstrdup("address too long");
		goto out;
	}
	util_lower(key);
	if (w->st == NULL && store_open(w->cfg, &w->st, &err) < 0) {
		r->detail = err ? err : xstrdup("cannot open the policy store");
		goto out;
	}
	for (int hop = 0; hop <= LOOKUP_FALLBACK_MAX; hop++) {
		rc = store_verify_get(w->st, name, &v);
		if (rc <= 0) {
			lookup_reply_free(r);
			r->result = LOOKUP_ERROR;
			r->detail = xstrdup(rc < 0 ? "cannot read the policy store" :
			    "no such verification profile");
			if (util_fmt(r->profile, sizeof(r->profile), "%s", name) < 0)
				r->profile[0] = '\0';
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
	r->result = LOOKUP_ERROR;
	r->detail = xstrdup("fallback chain too long");
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
