/* store_verify: recipient verification profiles (verify_profiles) and the
 * shared answer cache (verify_cache) in the policy store. Runs in kalectl
 * and in the lookup pool's threads of smtpd (one handle per thread). */
#include "store/store_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

#define STORE_VERIFY_COLS "name, type, url, query, base, filter, bind_dn, bind_password, " \
	"route_attr, starttls, mode, ttl_found, ttl_missing, fallback, timeout"

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

static void store_verify_col(char *dst, size_t cap, sqlite3_stmt *s, int col)
{
	const unsigned char *v = sqlite3_column_text(s, col);

	if (util_fmt(dst, cap, "%s", v ? (const char *)v : "") < 0)
		dst[0] = '\0';
}

static void store_verify_row(sqlite3_stmt *s, struct store_verify *v)
{
	memset(v, 0, sizeof(*v));
	store_verify_col(v->name, sizeof(v->name), s, 0);
	store_verify_col(v->type, sizeof(v->type), s, 1);
	store_verify_col(v->url, sizeof(v->url), s, 2);
	store_verify_col(v->query, sizeof(v->query), s, 3);
	store_verify_col(v->base, sizeof(v->base), s, 4);
	store_verify_col(v->filter, sizeof(v->filter), s, 5);
	store_verify_col(v->bind_dn, sizeof(v->bind_dn), s, 6);
	store_verify_col(v->bind_password, sizeof(v->bind_password), s, 7);
	store_verify_col(v->route_attr, sizeof(v->route_attr), s, 8);
	v->starttls = sqlite3_column_int(s, 9);
	store_verify_col(v->mode, sizeof(v->mode), s, 10);
	v->ttl_found = sqlite3_column_int(s, 11);
	v->ttl_missing = sqlite3_column_int(s, 12);
	store_verify_col(v->fallback, sizeof(v->fallback), s, 13);
	v->timeout = sqlite3_column_int(s, 14);
}

int store_verify_get(store *st, const char *name, struct store_verify *v_r)
{
	sqlite3_stmt *s;
	int rc;

	if (!store_verify_name_ok(name))
		return 0;
	s = store_prepare(st, "SELECT " STORE_VERIFY_COLS " FROM verify_profiles WHERE name = ?", NULL);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, name);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		store_verify_row(s, v_r);
		rc = 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -1;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_verify_add(store *st, const struct store_verify *v, char **error_r)
{
	static const char *const types[] = { "localdb", "mysql", "pgsql", "ldap", "smtp", NULL };
	struct store_verify fb;
	sqlite3_stmt *s = NULL;
	const char *const *t;
	int rc = -1;

	if (!store_verify_name_ok(v->name))
		return store_err(error_r, "bad verification profile name '%.64s' "
		    "(1-63 of A-Z a-z 0-9 . _ -)", v->name);
	if (strcmp(v->name, "none") == 0)
		return store_err(error_r, "'none' is not a profile name");
	for (t = types; *t != NULL && strcmp(*t, v->type) != 0; t++)
		;
	if (*t == NULL)
		return store_err(error_r, "bad type '%.20s' (localdb, mysql, pgsql, ldap or smtp)", v->type);
	if (strcmp(v->mode, "realtime") != 0 && strcmp(v->mode, "cache") != 0)
		return store_err(error_r, "bad mode '%.20s' (realtime or cache)", v->mode);
	if (v->ttl_found < 1 || v->ttl_found > STORE_VERIFY_TTL_MAX ||
	    v->ttl_missing < 1 || v->ttl_missing > STORE_VERIFY_TTL_MAX)
		return store_err(error_r, "TTLs must be 1-%d seconds", STORE_VERIFY_TTL_MAX);
	if (v->timeout < 0 || v->timeout > 60)
		return store_err(error_r, "the timeout must be 1-60 seconds");
	if (!store_verify_text_ok(v->url) || !store_verify_text_ok(v->query) ||
	    !store_verify_text_ok(v->base) || !store_verify_text_ok(v->filter) ||
	    !store_verify_text_ok(v->bind_dn) || !store_verify_text_ok(v->bind_password) ||
	    !store_verify_text_ok(v->route_attr))
		return store_err(error_r, "control characters in a profile setting");
	if (v->fallback[0] != '\0') {
		if (strcasecmp(v->fallback, v->name) == 0)
			return store_err(error_r, "a profile cannot fall back to itself");
		rc = store_verify_get(st, v->fallback, &fb);
		if (rc < 0)
			return store_err_db(st, error_r, "store: verify fallback");
		if (rc == 0)
			return store_err(error_r, "fallback profile '%.64s' does not exist", v->fallback);
		rc = -1;
	}
	s = store_prepare(st, "INSERT INTO verify_profiles(" STORE_VERIFY_COLS ") "
	    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", error_r);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, v->name);
	store_bind_text(s, 2, v->type);
	store_bind_text(s, 3, v->url);
	store_bind_text(s, 4, v->query);
	store_bind_text(s, 5, v->base);
	store_bind_text(s, 6, v->filter);
	store_bind_text(s, 7, v->bind_dn);
	store_bind_text(s, 8, v->bind_password);
	store_bind_text(s, 9, v->route_attr[0] ? v->route_attr : "mailHost");
	sqlite3_bind_int(s, 10, v->starttls ? 1 : 0);
	store_bind_text(s, 11, v->mode);
	sqlite3_bind_int(s, 12, v->ttl_found);
	sqlite3_bind_int(s, 13, v->ttl_missing);
	store_bind_text(s, 14, v->fallback);
	sqlite3_bind_int(s, 15, v->timeout > 0 ? v->timeout : 5);
	switch (sqlite3_step(s)) {
	case SQLITE_DONE:
		rc = 0;
		break;
	case SQLITE_CONSTRAINT_PRIMARYKEY:
		store_err(error_r, "verification profile '%s' exists already", v->name);
		break;
	default:
		store_err_db(st, error_r, "store: add verification profile");
		break;
	}
	sqlite3_finalize(s);
	return rc;
}

/* 1 if a row matches "SELECT ... WHERE x = ?" with name bound, 0 no, -1 error. */
static int store_verify_used(store *st, const char *sql, const char *name, char *what, size_t cap)
{
	sqlite3_stmt *s = store_prepare(st, sql, NULL);
	int rc;

	if (s == NULL)
		return -1;
	store_bind_text(s, 1, name);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		store_verify_col(what, cap, s, 0);
		rc = 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -1;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_verify_del(store *st, const char *name, char **error_r)
{
	char what[256];
	sqlite3_stmt *s = NULL;
	int rc = -1, used;

	if (!store_verify_name_ok(name))
		return store_err(error_r, "no verification profile '%.64s'", name);
	if (store_exec(st, "BEGIN IMMEDIATE", error_r) < 0)
		return -1;
	used = store_verify_used(st, "SELECT name FROM domains WHERE verify = ? COLLATE NOCASE "
	    "ORDER BY name LIMIT 1", name, what, sizeof(what));
	if (used == 1) {
		store_err(error_r, "profile '%s' is used by domain %s", name, what);
		goto out;
	}
	if (used == 0)
		used = store_verify_used(st, "SELECT name FROM verify_profiles WHERE fallback = ? "
		    "ORDER BY name LIMIT 1", name, what, sizeof(what));
	if (used == 1) {
		store_err(error_r, "profile '%s' is the fallback of profile %s", name, what);
		goto out;
	}
	if (used < 0) {
		store_err_db(st, error_r, "store: verify del");
		goto out;
	}
	if ((s = store_prepare(st, "DELETE FROM verify_profiles WHERE name = ?", error_r)) == NULL)
		goto out;
	store_bind_text(s, 1, name);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: verify del");
		goto out;
	}
	if (sqlite3_changes(st->db) == 0) {
		store_err(error_r, "no verification profile '%s'", name);
		goto out;
	}
	sqlite3_finalize(s);
	if ((s = store_prepare(st, "DELETE FROM verify_cache WHERE profile = ?", error_r)) == NULL)
		goto out;
	store_bind_text(s, 1, name);
	if (sqlite3_step(s) != SQLITE_DONE) {
		store_err_db(st, error_r, "store: verify del");
		goto out;
	}
	rc = store_exec(st, "COMMIT", error_r);
out:
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int store_verify_list(store *st, int (*cb)(void *ctx, const struct store_verify *v), void *ctx)
{
	struct store_verify v;
	sqlite3_stmt *s;
	int rc;

	s = store_prepare(st, "SELECT " STORE_VERIFY_COLS " FROM verify_profiles ORDER BY name", NULL);
	if (s == NULL)
		return -1;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		store_verify_row(s, &v);
		if (cb(ctx, &v) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(s);
	explicit_bzero(&v, sizeof(v));
	return rc == SQLITE_DONE ? 0 : -1;
}

int store_verify_cache_get(store *st, const char *profile, const char *address, int64_t now,
    int *result_r, char *route, size_t cap)
{
	sqlite3_stmt *s;
	int rc;

	if (cap > 0)
		route[0] = '\0';
	s = store_prepare(st, "SELECT result, route FROM verify_cache "
	    "WHERE profile = ? AND address = ? AND expires > ?", NULL);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, profile);
	store_bind_text(s, 2, address);
	sqlite3_bind_int64(s, 3, now);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*result_r = sqlite3_column_int(s, 0) == 0 ? 0 : 1;
		if (cap > 0)
			store_verify_col(route, cap, s, 1);
		rc = 1;
	} else {
		rc = rc == SQLITE_DONE ? 0 : -1;
	}
	sqlite3_finalize(s);
	return rc;
}

int store_verify_cache_put(store *st, const char *profile, const char *address, int result,
    const char *route, int64_t expires)
{
	sqlite3_stmt *s;
	int rc;

	s = store_prepare(st, "INSERT OR REPLACE INTO verify_cache(profile, address, result, route, "
	    "expires) VALUES (?, ?, ?, ?, ?)", NULL);
	if (s == NULL)
		return -1;
	store_bind_text(s, 1, profile);
	store_bind_text(s, 2, address);
	sqlite3_bind_int(s, 3, result == 0 ? 0 : 1);
	store_bind_text(s, 4, route != NULL && *route != '\0' ? route : NULL);
	sqlite3_bind_int64(s, 5, expires);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
	sqlite3_finalize(s);
	/* now and then, drop what has expired so the table stays small */
	if (rc == 0 && (random() & 255) == 0) {
		s = store_prepare(st, "DELETE FROM verify_cache WHERE expires <= ?", NULL);
		if (s != NULL) {
			sqlite3_bind_int64(s, 1, (int64_t)time(NULL));
			(void)sqlite3_step(s);
			sqlite3_finalize(s);
		}
	}
	return rc;
}

long store_verify_cache_flush(store *st, const char *profile, char **error_r)
{
	sqlite3_stmt *s;
	long n = -1;

	s = store_prepare(st, profile != NULL ? "DELETE FROM verify_cache WHERE profile = ?" :
	    "DELETE FROM verify_cache", error_r);
	if (s == NULL)
		return -1;
	if (profile != NULL)
		store_bind_text(s, 1, profile);
	if (sqlite3_step(s) == SQLITE_DONE)
		n = (long)sqlite3_changes(st->db);
	else
		store_err_db(st, error_r, "store: verify flush");
	sqlite3_finalize(s);
	return n;
}
