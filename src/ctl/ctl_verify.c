/* ctl_verify: kalectl's verify commands (operator.md §4): add, list, del,
 * flush and test of recipient verification profiles. Runs only in kalectl
 * (as run_as when started by root). */
#include "ctl/ctl.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "lib/util.h"
#include "lookup/lookup.h"

static int ctl_verify_copy(char *dst, size_t cap, const char *v, const char *what)
{
	if (util_fmt(dst, cap, "%s", v ? v : "") < 0) {
		ctl_fail("%s too long (at most %zu bytes)", what, cap - 1);
		return -1;
	}
	return 0;
}

static int ctl_verify_ttl(const char *s, int def, int *out)
{
	long long v;

	if (s == NULL) {
		*out = def;
		return 0;
	}
	if (util_strtonum(s, 1, 30 * 86400, &v) < 0)
		return -1;
	*out = (int)v;
	return 0;
}

static int ctl_verify_add(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *type = NULL, *url = NULL, *query = NULL, *base = NULL, *filter = NULL,
	    *bind_dn = NULL, *route = NULL, *mode = NULL, *ttl_f = NULL, *ttl_m = NULL,
	    *fallback = NULL, *timeout = NULL;
	int pw_stdin = 0, starttls = 0, npos = 0, rc = CTL_EXIT_FAIL;
	const struct ctl_opt opts[] = {
		{ "type", 1, &type, NULL }, { "url", 1, &url, NULL }, { "query", 1, &query, NULL },
		{ "base", 1, &base, NULL }, { "filter", 1, &filter, NULL },
		{ "bind-dn", 1, &bind_dn, NULL }, { "bind-password-stdin", 0, NULL, &pw_stdin },
		{ "route-attribute", 1, &route, NULL }, { "starttls", 0, NULL, &starttls },
		{ "mode", 1, &mode, NULL }, { "ttl-found", 1, &ttl_f, NULL },
		{ "ttl-missing", 1, &ttl_m, NULL }, { "fallback", 1, &fallback, NULL },
		{ "timeout", 1, &timeout, NULL },
		{ NULL, 0, NULL, NULL } };
	struct store_verify *v;
	char *pw = NULL, *err = NULL;

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (type == NULL)
		return ctl_usage("verify add needs --type localdb|mysql|pgsql|ldap|smtp");
	if (mode != NULL && strcmp(mode, "realtime") != 0 && strcmp(mode, "cache") != 0)
		return ctl_usage("--mode must be realtime or cache");
	if (pw_stdin && bind_dn == NULL)
		return ctl_usage("--bind-password-stdin goes with --bind-dn");
	if (bind_dn != NULL && !pw_stdin)
		return ctl_usage("--bind-dn needs --bind-password-stdin");
	if ((base || filter || bind_dn || route || starttls) && strcmp(type, "ldap") != 0)
		return ctl_usage("--base, --filter, --bind-dn, --route-attribute and --starttls are for --type ldap");
	if (query != NULL && strcmp(type, "mysql") != 0 && strcmp(type, "pgsql") != 0)
		return ctl_usage("--query is for --type mysql or pgsql");
	if (url != NULL && (strcmp(type, "localdb") == 0 || strcmp(type, "smtp") == 0))
		return ctl_usage("--url is not used by --type %s", type);
	v = xcalloc(1, sizeof(*v));
	if (ctl_verify_ttl(ttl_f, 3600, &v->ttl_found) < 0 ||
	    ctl_verify_ttl(ttl_m, 600, &v->ttl_missing) < 0) {
		rc = ctl_usage("TTLs are 1-2592000 seconds");
		goto out;
	}
	if (timeout != NULL) {
		long long t;
		if (util_strtonum(timeout, 1, 60, &t) < 0) {
			rc = ctl_usage("--timeout is 1-60 seconds");
			goto out;
		}
		v->timeout = (int)t;
	} else {
		v->timeout = 5;
	}
	if (ctl_verify_copy(v->name, sizeof(v->name), pos[0], "name") < 0 ||
	    ctl_verify_copy(v->type, sizeof(v->type), type, "type") < 0 ||
	    ctl_verify_copy(v->url, sizeof(v->url), url, "url") < 0 ||
	    ctl_verify_copy(v->query, sizeof(v->query), query, "query") < 0 ||
	    ctl_verify_copy(v->base, sizeof(v->base), base, "base") < 0 ||
	    ctl_verify_copy(v->filter, sizeof(v->filter), filter, "filter") < 0 ||
	    ctl_verify_copy(v->bind_dn, sizeof(v->bind_dn), bind_dn, "bind DN") < 0 ||
	    ctl_verify_copy(v->route_attr, sizeof(v->route_attr), route ? route : "mailHost",
	    "route attribute") < 0 ||
	    ctl_verify_copy(v->mode, sizeof(v->mode), mode ? mode : "realtime", "mode") < 0 ||
	    ctl_verify_copy(v->fallback, sizeof(v->fallback), fallback, "fallback") < 0)
		goto out;
	v->starttls = starttls;
	if (pw_stdin) {
		if ((pw = ctl_read_password()) == NULL)
			goto out;
		if (*pw == '\0') {
			ctl_fail("empty bind password");
			goto out;
		}
		if (ctl_verify_copy(v->bind_password, sizeof(v->bind_password), pw,
		    "bind password") < 0)
			goto out;
	}
	if (lookup_profile_check(v, &err) < 0) {
		ctl_fail("%s", err ? err : "bad profile");
		goto out;
	}
	if (ctl_open_store(c) < 0)
		goto out;
	if (store_verify_add(c->st, v, &err) < 0) {
		ctl_fail("%s", err ? err : "cannot add the profile");
		goto out;
	}
	printf("added verification profile %s\n", v->name);
	rc = CTL_EXIT_OK;
out:
	if (pw != NULL) {
		explicit_bzero(pw, strlen(pw));
		free(pw);
	}
	explicit_bzero(v, sizeof(*v));
	free(v);
	free(err);
	return rc;
}

/* The URL without its password: "scheme://user:***@host..." */
static void ctl_verify_hide_pw(const char *url, char *out, size_t cap)
{
	const char *s = strstr(url, "://"), *at, *colon, *end;

	if (s == NULL || (end = strchr(s + 3, '/')) == NULL)
		end = url + strlen(url);
	at = s ? memrchr(s + 3, '@', (size_t)(end - s - 3)) : NULL;
	colon = at ? memchr(s + 3, ':', (size_t)(at - s - 3)) : NULL;
	if (colon == NULL || util_fmt(out, cap, "%.*s:***%s", (int)(colon - url), url, at) < 0)
		if (util_fmt(out, cap, "%s", url) < 0)
			out[0] = '\0';
}

static int ctl_verify_row(void *ctx, const struct store_verify *v)
{
	char ttl[48], url[600], where[2200];
	const char *cells[6];

	if (strcmp(v->mode, "cache") == 0) {
		if (util_fmt(ttl, sizeof(ttl), "cache %d/%d", v->ttl_found, v->ttl_missing) < 0)
			ttl[0] = '\0';
	} else if (util_fmt(ttl, sizeof(ttl), "realtime") < 0) {
		ttl[0] = '\0';
	}
	if (v->timeout != 5 && strcmp(v->type, "localdb") != 0) {
		size_t n = strlen(ttl);
		if (util_fmt(ttl + n, sizeof(ttl) - n, " timeout %ds", v->timeout) < 0)
			ttl[n] = '\0';
	}
	ctl_verify_hide_pw(v->url, url, sizeof(url));
	if (strcmp(v->type, "ldap") == 0) {
		if (util_fmt(where, sizeof(where), "%s%s base=%s filter=%s%s%s route=%s", url,
		    v->starttls ? " starttls" : "", v->base, v->filter,
		    v->bind_dn[0] ? " bind=" : "", v->bind_dn, v->route_attr) < 0)
			where[0] = '\0';
	} else if (v->query[0] != '\0') {
		if (util_fmt(where, sizeof(where), "%s %s", url, v->query) < 0)
			where[0] = '\0';
	} else if (util_fmt(where, sizeof(where), "-") < 0) {
		where[0] = '\0';
	}
	cells[0] = v->name;
	cells[1] = v->type;
	cells[2] = ttl;
	cells[3] = v->fallback[0] ? v->fallback : "-";
	cells[4] = where;
	ctl_table_add(ctx, cells);
	return 0;
}

static int ctl_verify_list(store *st, struct ctl_table *t)
{
	return store_verify_list(st, ctl_verify_row, t);
}

static const char *ctl_verify_word(enum lookup_result r)
{
	return r == LOOKUP_FOUND ? "found" : r == LOOKUP_MISSING ? "missing" : "error";
}

static void ctl_verify_print(const struct lookup_answer *a)
{
	printf("%s profile=%s time=%.1fms%s%s%s%s%s\n", ctl_verify_word(a->result), a->profile,
	    (double)a->elapsed_us / 1000.0, a->cached ? " cached" : "",
	    a->route ? " route=" : "", a->route ? a->route : "",
	    a->detail && a->detail[0] ? " detail=" : "", a->detail ? a->detail : "");
}

struct ctl_verify_wait {
	struct event_base *base;
	int done, worst;
};

static void ctl_verify_answer(void *ctx, const struct lookup_answer *a)
{
	struct ctl_verify_wait *w = ctx;
	int rc = a->result == LOOKUP_FOUND ? 0 : a->result == LOOKUP_MISSING ? 1 : 2;

	ctl_verify_print(a);
	fflush(stdout);
	if (rc > w->worst)
		w->worst = rc;
	w->done = 1;
	event_base_loopbreak(w->base);
}

/* "verify test NAME -": one address per line on stdin, each answered in
 * turn through a lookup pool (connections kept between lines, as in smtpd).
 * Exit code: the worst answer. */
static int ctl_verify_test_stdin(struct ctl *c, const char *profile)
{
	struct ctl_verify_wait w = { NULL, 0, 0 };
	struct lookup_pool *pool;
	char line[400], *err = NULL;
	int rc = CTL_EXIT_OK;

	if ((w.base = event_base_new()) == NULL)
		return ctl_fail("out of memory");
	if ((pool = lookup_pool_new(w.base, &c->cfg, 2, &err)) == NULL) {
		ctl_fail("%s", err ? err : "cannot start the lookup pool");
		free(err);
		event_base_free(w.base);
		return CTL_EXIT_FAIL;
	}
	while (fgets(line, sizeof(line), stdin) != NULL) {
		size_t n = strlen(line);
		if (n > 0 && line[n - 1] != '\n' && !feof(stdin)) {
			rc = ctl_fail("line too long");
			break;
		}
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			continue;
		w.done = 0;
		(void)lookup_verify(pool, profile, line, ctl_verify_answer, &w);
		while (!w.done)
			if (event_base_loop(w.base, EVLOOP_ONCE) < 0)
				break;
	}
	lookup_pool_free(&pool);
	event_base_free(w.base);
	return rc != CTL_EXIT_OK ? rc : w.worst;
}

int ctl_verify_cmd(struct ctl *c, int argc, char **argv)
{
	const char *pos[2], *sub = argc > 0 ? argv[0] : "";
	int npos = 0;
	char *err = NULL;

	if (strcmp(sub, "add") == 0)
		return ctl_verify_add(c, argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0) {
		static const char *const hdr[5] = { "NAME", "TYPE", "MODE", "FALLBACK", "SETTINGS" };
		return ctl_table_list(c, argc - 1, argv + 1, 5, hdr, ctl_verify_list,
		    "verification profiles");
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_verify_del(c->st, pos[0], &err) < 0) {
			ctl_fail("%s", err ? err : "cannot delete");
			free(err);
			return CTL_EXIT_FAIL;
		}
		printf("deleted verification profile %s\n", pos[0]);
		return CTL_EXIT_OK;
	}
	if (strcmp(sub, "flush") == 0) {
		struct store_verify v;
		long n;
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 0, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (npos == 1) {
			int g = store_verify_get(c->st, pos[0], &v);
			explicit_bzero(&v, sizeof(v));
			if (g <= 0)
				return ctl_fail(g < 0 ? "cannot read the policy store" :
				    "no verification profile '%.64s'", pos[0]);
		}
		n = store_verify_cache_flush(c->st, npos == 1 ? pos[0] : NULL, &err);
		if (n < 0) {
			ctl_fail("%s", err ? err : "cannot flush");
			free(err);
			return CTL_EXIT_FAIL;
		}
		printf("flushed %ld cached answer%s\n", n, n == 1 ? "" : "s");
		return CTL_EXIT_OK;
	}
	if (strcmp(sub, "test") == 0) {
		struct lookup_answer a;
		char *buf = NULL;
		int rc;
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 2, 2, &npos) < 0)
			return ctl_usage(NULL);
		if (strlen(pos[1]) > 320)
			return ctl_usage("address too long");
		/* enter data_dir as run_as; the lookup opens its own store handle */
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (strcmp(pos[1], "-") == 0)
			return ctl_verify_test_stdin(c, pos[0]);
		(void)lookup_verify_sync(&c->cfg, pos[0], pos[1], &a, &buf);
		ctl_verify_print(&a);
		rc = a.result == LOOKUP_FOUND ? 0 : a.result == LOOKUP_MISSING ? 1 : 2;
		free(buf);
		return rc;
	}
	return ctl_usage("unknown verify command '%.50s'", sub);
}
