/* store_alias: aliases of local domains and recipient resolution (users,
 * recursive aliases, "+ext"). Runs in kalectl (changes) and in kaled's smtpd
 * and qmgr (store_rcpt_resolve). */
#include "store/store_int.h"

#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "lib/util.h"

#define STORE_ALIAS_DEPTH   10    /* levels of aliases below the address asked for */
#define STORE_ALIAS_TARGETS 1000  /* most final targets one address may have */
#define STORE_TARGETS_MAX   8192  /* bytes of an alias's target list */

/* Normalises "a@x, b@y" into "a@x,b@y" (lower case, duplicates removed). */
static char *store_targets_norm(const char *targets, char **error_r)
{
	size_t cap = strlen(targets) + 2, len = 0;
	char *out, *copy, *tok, *save = NULL;
	char addr[320];
	int n = 0;

	if (cap > STORE_TARGETS_MAX)
		return util_err(error_r, "target list too long (max %d bytes)", STORE_TARGETS_MAX), NULL;
	out = xmalloc(cap + 1);
	out[0] = '\0';
	copy = xstrdup(targets);
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		char *e;
		while (*tok == ' ' || *tok == '\t')
			tok++;
		e = tok + strlen(tok);
		while (e > tok && (e[-1] == ' ' || e[-1] == '\t'))
			*--e = '\0';
		if (*tok == '\0')
			continue;
		if (store_address_norm(tok, addr, sizeof(addr), error_r) < 0)
			goto fail;
		/* skip duplicates: compare against ",list," */
		{
			int dup = 0;
			const char *p = out;
			size_t al = strlen(addr);
			while (*p) {
				const char *c = strchr(p, ',');
				size_t l = c ? (size_t)(c - p) : strlen(p);
				if (l == al && memcmp(p, addr, al) == 0)
					dup = 1;
				p += l + (c ? 1 : 0);
			}
			if (dup)
				continue;
		}
		if (len + strlen(addr) + 2 > cap) {   /* cannot happen: out only shrinks */
			util_err(error_r, "target list too long");
			goto fail;
		}
		if (len > 0)
			out[len++] = ',';
		memcpy(out + len, addr, strlen(addr) + 1);
		len += strlen(addr);
		n++;
	}
	if (n == 0) {
		util_err(error_r, "no targets");
		goto fail;
	}
	free(copy);
	return out;
fail:
	free(copy);
	free(out);
	return NULL;
}

int store_alias_add(store *st, const char *address, const char *targets, char **error_r)
{
	char addr[320], domain[256];
	char *norm = NULL;
	int rc;

	if (store_local_address(st, address, 0, addr, sizeof(addr), domain, sizeof(domain), error_r) < 0)
		return -1;
	if (targets == NULL || (norm = store_targets_norm(targets, error_r)) == NULL)
		return targets == NULL ? util_err(error_r, "no targets") : -1;
	rc = store_user_exists(st, addr);
	if (rc != 0) {
		if (rc > 0)
			util_err(error_r, "%s is a user; an alias cannot have the same address", addr);
		else
			store_err_db(st, error_r, "store: user lookup");
		free(norm);
		return -1;
	}
	rc = store_run_added(st, store_run(st, ST_ALIAS_ADD, "ttt", addr, domain, norm), "alias",
	    addr, error_r);
	free(norm);
	return rc;
}

int store_alias_del(store *st, const char *address, char **error_r)
{
	if (store_run(st, ST_ALIAS_DEL, "t", address) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete alias");
	if (store_changes(st) == 0)
		return util_err(error_r, "no such alias %.320s", address);
	return 0;
}

int store_alias_list(store *st, int (*cb)(void *ctx, const char *address, const char *targets), void *ctx)
{
	struct store_q q;
	int rc;

	if (store_q_start(st, &q, ST_ALIAS_LIST, NULL, "") < 0)
		return -1;
	while ((rc = store_q_step(&q)) == STORE_ROW) {
		if (cb(ctx, store_q_text(&q, 0), store_q_text(&q, 1)) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	store_q_end(&q);
	return rc == STORE_DONE ? 0 : -1;
}

/* ---- recipient resolution ---- */

struct store_resolve {
	store *st;
	char **out;           /* final targets */
	int n_out;
	char **seen;          /* aliases already expanded */
	int n_seen;
	char **error_r;
};

static int store_list_has(char **list, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return 1;
	return 0;
}

/* 1 user, 0 not, -1 error */
static int store_resolve_user(struct store_resolve *r, const char *addr)
{
	int rc = store_run(r->st, ST_USER_EXISTS, "t", addr);

	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

/* 1 alias (malloc'd *targets_r), 0 not, -1 error */
static int store_resolve_alias(struct store_resolve *r, const char *addr, char **targets_r)
{
	struct store_q q;
	int rc;

	if (store_q_start(r->st, &q, ST_ALIAS_TARGETS, NULL, "t", addr) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		const char *t = store_q_text(&q, 0);
		*targets_r = xstrdup(t ? t : "");
	}
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

static int store_resolve_add(struct store_resolve *r, const char *addr)
{
	if (store_list_has(r->out, r->n_out, addr))
		return 0;
	if (r->n_out >= STORE_ALIAS_TARGETS)
		return util_err(r->error_r, "alias expands to more than %d recipients", STORE_ALIAS_TARGETS);
	r->out = xrealloc(r->out, sizeof(char *) * (size_t)(r->n_out + 1));
	r->out[r->n_out++] = xstrdup(addr);
	return 0;
}

/* Resolves one lower-case address at the given alias depth. Returns 1 if it
 * was known (user or alias), 0 if unknown, -1 on error. */
static int store_resolve_one(struct store_resolve *r, const char *addr, int depth, int top)
{
	char *targets = NULL, *tok, *save = NULL;
	int rc;

	if ((rc = store_resolve_user(r, addr)) != 0) {
		if (rc > 0 && store_resolve_add(r, addr) < 0)
			return -1;
		return rc < 0 ? store_err_db(r->st, r->error_r, "store: user lookup") : 1;
	}
	if (store_list_has(r->seen, r->n_seen, addr))
		return 1;              /* a loop or a diamond: already expanded */
	rc = store_resolve_alias(r, addr, &targets);
	if (rc < 0)
		return store_err_db(r->st, r->error_r, "store: alias lookup");
	if (rc == 0) {
		/* "+ext": retry without the extension */
		const char *plus = strchr(addr, '+'), *at = strrchr(addr, '@');
		if (plus != NULL && at != NULL && plus < at && plus > addr) {
			char base[320];
			if (util_fmt(base, sizeof(base), "%.*s%s", (int)(plus - addr), addr, at) < 0)
				return 0;
			rc = store_resolve_one(r, base, depth, top);
			if (rc != 0 || top)
				return rc;
		}
		if (top)
			return 0;
		/* a target that is no local user or alias: pass it on as is
		 * (another domain, or a local address that will bounce) */
		return store_resolve_add(r, addr) < 0 ? -1 : 1;
	}
	if (depth >= STORE_ALIAS_DEPTH) {
		free(targets);
		return util_err(r->error_r, "alias nesting deeper than %d levels at %.320s",
		    STORE_ALIAS_DEPTH, addr);
	}
	r->seen = xrealloc(r->seen, sizeof(char *) * (size_t)(r->n_seen + 1));
	r->seen[r->n_seen++] = xstrdup(addr);
	rc = 1;
	for (tok = strtok_r(targets, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (store_resolve_one(r, tok, depth + 1, 0) < 0) {
			rc = -1;
			break;
		}
	}
	free(targets);
	return rc;
}

int store_rcpt_resolve(store *st, const char *address, char ***targets_r, char **error_r)
{
	struct store_resolve r = { .st = st, .error_r = error_r };
	char addr[320];
	int rc = -1;

	*targets_r = NULL;
	if (address == NULL || util_fmt(addr, sizeof(addr), "%s", address) < 0)
		return 0;
	util_lower(addr);
	rc = store_resolve_one(&r, addr, 0, 1);
	if (rc > 0 && r.n_out == 0)
		rc = 0;                /* an alias loop with no final recipient */
	for (int i = 0; i < r.n_seen; i++)
		free(r.seen[i]);
	free(r.seen);
	if (rc > 0) {
		*targets_r = r.out;
		return r.n_out;
	}
	store_targets_free(r.out, r.n_out);
	return rc;
}

void store_targets_free(char **targets, int n)
{
	if (targets == NULL)
		return;
	for (int i = 0; i < n; i++)
		free(targets[i]);
	free(targets);
}

struct store_pm {
	store *st;
	char *out;
	size_t cap;
	int found, err;
};

static int store_pm_cb(void *ctx, const struct store_domain *d)
{
	struct store_pm *pm = ctx;
	char addr[300], **t = NULL;
	int n;

	if (!d->local || util_fmt(addr, sizeof(addr), "postmaster@%s", d->name) < 0)
		return 0;
	n = store_rcpt_resolve(pm->st, addr, &t, NULL);
	store_targets_free(t, n > 0 ? n : 0);
	if (n < 0)
		pm->err = 1;
	if (n <= 0)
		return n < 0;
	pm->found = util_fmt(pm->out, pm->cap, "%s", addr) == 0;
	return 1;
}

int store_postmaster(store *st, const struct kale_config *cfg, char *out, size_t cap)
{
	struct store_pm pm = { st, out, cap, 0, 0 };

	if (cfg->postmaster != NULL)
		return util_fmt(out, cap, "%s", cfg->postmaster) == 0 ? 1 : -1;
	if (store_domain_list(st, store_pm_cb, &pm) < 0 || pm.err)
		return -1;
	if (pm.found)
		return 1;
	if (cfg->root_alias != NULL)
		return util_fmt(out, cap, "%s", cfg->root_alias) == 0 ? 1 : -1;
	return 0;
}

int store_root_alias(store *st, const struct kale_config *cfg, char *out, size_t cap)
{
	if (cfg->root_alias != NULL)
		return util_fmt(out, cap, "%s", cfg->root_alias) == 0 ? 1 : -1;
	return store_postmaster(st, cfg, out, cap);
}
