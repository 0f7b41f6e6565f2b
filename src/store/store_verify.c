/* store_verify: recipient verification profiles (verify_profiles) and the
 * shared answer cache (verify_cache) in the policy store. Runs in kalectl
 * and in the lookup pool's threads of smtpd (one handle per thread). */
#include "store/store_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

#define STORE_VERIFY_TTL_MAX (30 * 86400)

static int store_verify_name_ok(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > 63)
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
			return 0;
	return 1;
}

static int store_verify_text_ok(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

static void store_verify_row(struct store_q *q, struct store_verify *v)
{
	memset(v, 0, sizeof(*v));
	store_q_copy(q, 0, v->name, sizeof(v->name));
	store_q_copy(q, 1, v->type, sizeof(v->type));
	store_q_copy(q, 2, v->url, sizeof(v->url));
	store_q_copy(q, 3, v->query, sizeof(v->query));
	store_q_copy(q, 4, v->base, sizeof(v->base));
	store_q_copy(q, 5, v->filter, sizeof(v->filter));
	store_q_copy(q, 6, v->bind_dn, sizeof(v->bind_dn));
	store_q_copy(q, 7, v->bind_password, sizeof(v->bind_password));
	store_q_copy(q, 8, v->route_attr, sizeof(v->route_attr));
	v->starttls = (int)store_q_int(q, 9);
	store_q_copy(q, 10, v->mode, sizeof(v->mode));
	v->ttl_found = (int)store_q_int(q, 11);
	v->ttl_missing = (int)store_q_int(q, 12);
	store_q_copy(q, 13, v->fallback, sizeof(v->fallback));
	v->timeout = (int)store_q_int(q, 14);
}

int store_verify_get(store *st, const char *name, struct store_verify *v_r)
{
	struct store_q q;
	int rc;

	if (!store_verify_name_ok(name))
		return 0;
	if (store_q_start(st, &q, ST_VERIFY_GET, NULL, "t", name) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_verify_row(&q, v_r);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_verify_add(store *st, const struct store_verify *v, char **error_r)
{
	static const char *const types[] = { "localdb", "mysql", "pgsql", "ldap", "smtp", NULL };
	struct store_verify fb;
	const char *const *t;
	int rc;

	if (!store_verify_name_ok(v->name))
		return util_err(error_r, "bad verification profile name '%.64s' "
		    "(1-63 of A-Z a-z 0-9 . _ -)", v->name);
	if (strcmp(v->name, "none") == 0)
		return util_err(error_r, "'none' is not a profile name");
	for (t = types; *t != NULL && strcmp(*t, v->type) != 0; t++)
		;
	if (*t == NULL)
		return util_err(error_r, "bad type '%.20s' (localdb, mysql, pgsql, ldap or smtp)", v->type);
	if (strcmp(v->mode, "realtime") != 0 && strcmp(v->mode, "cache") != 0)
		return util_err(error_r, "bad mode '%.20s' (realtime or cache)", v->mode);
	if (v->ttl_found < 1 || v->ttl_found > STORE_VERIFY_TTL_MAX ||
	    v->ttl_missing < 1 || v->ttl_missing > STORE_VERIFY_TTL_MAX)
		return util_err(error_r, "TTLs must be 1-%d seconds", STORE_VERIFY_TTL_MAX);
	if (v->timeout < 0 || v->timeout > 60)
		return util_err(error_r, "the timeout must be 1-60 seconds");
	if (!store_verify_text_ok(v->url) || !store_verify_text_ok(v->query) ||
	    !store_verify_text_ok(v->base) || !store_verify_text_ok(v->filter) ||
	    !store_verify_text_ok(v->bind_dn) || !store_verify_text_ok(v->bind_password) ||
	    !store_verify_text_ok(v->route_attr))
		return util_err(error_r, "control characters in a profile setting");
	if (v->fallback[0] != '\0') {
		if (strcasecmp(v->fallback, v->name) == 0)
			return util_err(error_r, "a profile cannot fall back to itself");
		rc = store_verify_get(st, v->fallback, &fb);
		if (rc < 0)
			return store_err_db(st, error_r, "store: verify fallback");
		if (rc == 0)
			return util_err(error_r, "fallback profile '%.64s' does not exist", v->fallback);
	}
	switch (store_run(st, ST_VERIFY_ADD, "tttttttttitiiti", v->name, v->type, v->url, v->query,
	    v->base, v->filter, v->bind_dn, v->bind_password,
	    v->route_attr[0] ? v->route_attr : "mailHost", v->starttls ? 1 : 0, v->mode,
	    v->ttl_found, v->ttl_missing, v->fallback, v->timeout > 0 ? v->timeout : 5)) {
	case STORE_DONE:
		return 0;
	case STORE_DUP:
		return util_err(error_r, "verification profile '%s' exists already", v->name);
	default:
		return store_err_db(st, error_r, "store: add verification profile");
	}
}

/* 1 if statement ID (one text parameter) has a row, its column 0 in
 * what[cap]; 0 no, -1 error. */
static int store_verify_used(store *st, enum store_stmt id, const char *name, char *what, size_t cap)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, id, NULL, "t", name) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_q_copy(&q, 0, what, cap);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

static int store_verify_del_tx(store *st, void *ctx, char **error_r)
{
	const char *name = ctx;
	char what[256];
	int used;

	used = store_verify_used(st, ST_VERIFY_USED_BY_DOMAIN, name, what, sizeof(what));
	if (used == 1)
		return util_err(error_r, "profile '%s' is used by domain %s", name, what);
	if (used == 0)
		used = store_verify_used(st, ST_VERIFY_USED_AS_FALLBACK, name, what, sizeof(what));
	if (used == 1)
		return util_err(error_r, "profile '%s' is the fallback of profile %s", name, what);
	if (used < 0)
		return store_err_db(st, error_r, "store: verify del");
	if (store_run(st, ST_VERIFY_DEL, "t", name) != STORE_DONE)
		return store_err_db(st, error_r, "store: verify del");
	if (store_changes(st) == 0)
		return util_err(error_r, "no verification profile '%s'", name);
	if (store_run(st, ST_VERIFY_CACHE_FLUSH, "t", name) != STORE_DONE)
		return store_err_db(st, error_r, "store: verify del");
	return 0;
}

int store_verify_del(store *st, const char *name, char **error_r)
{
	if (!store_verify_name_ok(name))
		return util_err(error_r, "no verification profile '%.64s'", name);
	return store_tx(st, store_verify_del_tx, (void *)name, error_r);
}

struct store_verify_each {
	int (*cb)(void *ctx, const struct store_verify *v);
	void *ctx;
};

/* each row's copy (it holds the bind password) is wiped after its call */
static int store_verify_each_row(struct store_q *q, void *arg)
{
	const struct store_verify_each *e = arg;
	struct store_verify v;
	int rc;

	store_verify_row(q, &v);
	rc = e->cb(e->ctx, &v);
	explicit_bzero(&v, sizeof(v));
	return rc;
}

int store_verify_list(store *st, int (*cb)(void *ctx, const struct store_verify *v), void *ctx)
{
	struct store_verify_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_VERIFY_LIST, NULL, "") < 0)
		return -1;
	return store_q_each(&q, store_verify_each_row, &e);
}

int store_verify_cache_get(store *st, const char *profile, const char *address, int64_t now,
    int *result_r, char *route, size_t cap)
{
	struct store_q q;
	int rc;

	if (cap > 0)
		route[0] = '\0';
	if (store_q_start(st, &q, ST_VERIFY_CACHE_GET, NULL, "ttI", profile, address, now) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		*result_r = store_q_int(&q, 0) == 0 ? 0 : 1;
		if (cap > 0)
			store_q_copy(&q, 1, route, cap);
	}
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_verify_cache_put(store *st, const char *profile, const char *address, int result,
    const char *route, int64_t expires)
{
	int rc;

	rc = store_run(st, ST_VERIFY_CACHE_PUT, "ttitI", profile, address, result == 0 ? 0 : 1,
	    route != NULL && *route != '\0' ? route : NULL, expires) == STORE_DONE ? 0 : -1;
	/* now and then, drop what has expired so the table stays small */
	if (rc == 0 && (random() & 255) == 0)
		(void)store_run(st, ST_VERIFY_CACHE_EXPIRE, "I", (int64_t)time(NULL));
	return rc;
}

long store_verify_cache_flush(store *st, const char *profile, char **error_r)
{
	int rc = profile != NULL ? store_run(st, ST_VERIFY_CACHE_FLUSH, "t", profile) :
	    store_run(st, ST_VERIFY_CACHE_FLUSH_ALL, "");

	if (rc != STORE_DONE)
		return store_err_db(st, error_r, "store: verify flush");
	return store_changes(st);
}
