/* filter.c: the pipeline. For each recipient it takes the policy of the
 * recipient's domain from a per-process cache (reloaded when the policy
 * store changed, looked at no more than once a second), runs the policy's
 * checks in table order and turns their answers into a verdict:
 *   fail + reject     -> 554 5.7.1 (the check's own enhanced code)
 *   fail + tempfail   -> 451 4.7.1
 *   error             -> 451 4.7.1, unless --on-error pass
 *   fail + score N    -> N added to the spam score; tag, quarantine remembered
 *   fail + log        -> a mail-log row only
 * and, after the last check, the score against the policy's thresholds.
 * Checks of the connect, HELO and MAIL phases are asked at RCPT too, so the
 * recipient's domain policy decides them (Postfix's smtpd_delay_reject). */
#include "filter/filter_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/util.h"

static const struct filter_check *const filter_checks[] = {
	&filter_check_lists, &filter_check_dnsbl, &filter_check_rdns, &filter_check_fcrdns,
	&filter_check_helo, &filter_check_spf, &filter_check_greylist, &filter_check_rate,
};
#define FILTER_N ((int)(sizeof(filter_checks) / sizeof(filter_checks[0])))

unsigned filter_skip_bit(const char *name)
{
	int i = filter_check_index(name);

	if (i >= 0)
		return 1u << i;
	if (strcmp(name, "dkim") == 0)
		return FILTER_SKIP_DKIM;
	if (strcmp(name, "dmarc") == 0)
		return FILTER_SKIP_DMARC;
	return 0;
}

int filter_check_index(const char *name)
{
	for (int i = 0; i < FILTER_N; i++)
		if (strcmp(filter_checks[i]->name, name) == 0)
			return i;
	return -1;
}

/* ---------- the policy cache ---------- */

#define FILTER_CACHE_MAX 32
#define FILTER_RECHECK_MS 1000

/* A cached policy; a session deciding a recipient holds a reference, so a
 * reload while a check waits on DNS frees it only when that is done. */
struct filter_pol {
	char name[64];
	struct filter_policy_conf *conf;
	int refs;
};

static struct filter_pol *filter_cache[FILTER_CACHE_MAX];
static int64_t filter_cache_version = -1;
static uint64_t filter_cache_checked_ms;

static void filter_pol_unref(struct filter_pol **pp)
{
	struct filter_pol *p = *pp;

	*pp = NULL;
	if (p != NULL && --p->refs == 0) {
		filter_conf_free(&p->conf);
		free(p);
	}
}

static void filter_cache_clear(void)
{
	for (int i = 0; i < FILTER_CACHE_MAX; i++)
		filter_pol_unref(&filter_cache[i]);
}

/* The policy by name, with a reference for the caller; NULL with *error_r
 * (malloc'd) if it cannot be read. A policy that does not exist (a domain
 * left pointing at a deleted one) is "default". */
static struct filter_pol *filter_policy(store *st, const char *name, char **error_r)
{
	uint64_t now = util_now_ms();
	struct filter_pol *p;
	int64_t v;
	int slot = -1;

	if (name == NULL || name[0] == '\0')
		name = "default";
	if (filter_cache_version < 0 || now - filter_cache_checked_ms >= FILTER_RECHECK_MS) {
		filter_cache_checked_ms = now;
		if (store_filter_version(st, &v) < 0 || v != filter_cache_version)
			filter_cache_clear();
		filter_cache_version = v;
	}
	for (int i = 0; i < FILTER_CACHE_MAX; i++) {
		if (filter_cache[i] != NULL && strcasecmp(filter_cache[i]->name, name) == 0) {
			filter_cache[i]->refs++;
			return filter_cache[i];
		}
		if (filter_cache[i] == NULL && slot < 0)
			slot = i;
	}
	p = xcalloc(1, sizeof(*p));
	if (filter_conf_load(st, name, &p->conf, error_r) < 0) {
		free(p);
		if (strcasecmp(name, "default") == 0)
			return NULL;
		free(*error_r);
		*error_r = NULL;
		return filter_policy(st, "default", error_r);
	}
	(void)util_fmt(p->name, sizeof(p->name), "%s", name);
	p->refs = 2;                /* the cache's and the caller's */
	if (slot < 0) {
		filter_cache_clear();
		slot = 0;
	}
	filter_cache[slot] = p;
	return p;
}

struct filter_pol *filter_policy_get(store *st, const char *name, char **error_r)
{
	return filter_policy(st, name, error_r);
}

const struct filter_policy_conf *filter_pol_conf(const struct filter_pol *p)
{
	return p->conf;
}

void filter_pol_release(struct filter_pol **p)
{
	filter_pol_unref(p);
}

/* ---------- sessions ---------- */

struct filter_sess *filter_sess_new(const struct filter_env *env, const struct sockaddr *sa,
    const char *ip, int outbound)
{
	struct filter_sess *fs = xcalloc(1, sizeof(*fs));

	fs->env = env;
	fs->refs = 1;
	if (sa != NULL)
		memcpy(&fs->sa, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		    : sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(sa->sa_family));
	(void)util_fmt(fs->ip, sizeof(fs->ip), "%s", ip ? ip : "");
	fs->outbound = outbound;
	return fs;
}

void filter_sess_id(struct filter_sess *fs, const char *sid)
{
	(void)util_fmt(fs->sid, sizeof(fs->sid), "%s", sid ? sid : "");
}

void filter_ref(struct filter_sess *fs)
{
	fs->refs++;
}

int filter_unref(struct filter_sess *fs)
{
	if (--fs->refs > 0)
		return 0;
	for (int i = 0; i < FILTER_N; i++)
		if (filter_checks[i]->sess_free != NULL)
			filter_checks[i]->sess_free(fs->data[i]);
	free(fs->steps);
	free(fs);
	return 1;
}

void filter_sess_free(struct filter_sess **fsp)
{
	struct filter_sess *fs = *fsp;

	if (fs == NULL)
		return;
	*fsp = NULL;
	fs->dead = 1;
	fs->cb = NULL;
	fs->dcb = NULL;
	filter_pol_unref(&fs->pol);
	filter_unref(fs);
}

void filter_auth(struct filter_sess *fs, const char *user)
{
	(void)util_fmt(fs->auth_user, sizeof(fs->auth_user), "%s", user ? user : "");
	fs->outbound = 1;
}

void filter_helo(struct filter_sess *fs, const char *helo)
{
	(void)util_fmt(fs->helo, sizeof(fs->helo), "%s", helo ? helo : "");
}

void filter_mail(struct filter_sess *fs, const char *sender)
{
	(void)util_fmt(fs->sender, sizeof(fs->sender), "%s", sender ? sender : "");
	fs->have_mail = 1;
	fs->spf[0] = fs->spf_from[0] = fs->dmarc[0] = '\0';
	fs->n_dpol = 0;
	fs->rcpt_tag = 0;
	fs->rcpt_score = 0;
	fs->scored = 0;
	for (int i = 0; i < FILTER_N; i++)
		if (filter_checks[i]->mail_reset != NULL)
			filter_checks[i]->mail_reset(fs, &fs->data[i]);
}

const char *filter_dmarc_result(const struct filter_sess *fs)
{
	return fs->dmarc;
}

const struct filter_step *filter_steps(const struct filter_sess *fs, int *n_r)
{
	*n_r = fs->n_steps;
	return fs->steps;
}

void filter_step_push(struct filter_sess *fs, enum filter_phase phase, const char *check,
    const char *result, const char *reason, const char *action)
{
	struct filter_step *st;

	if (fs->n_steps >= 256)
		return;     /* a session of many recipients: the first 256 are enough */
	if (fs->n_steps == fs->cap_steps) {
		fs->cap_steps = fs->cap_steps ? fs->cap_steps * 2 : 8;
		fs->steps = xrealloc(fs->steps, sizeof(*fs->steps) * (size_t)fs->cap_steps);
	}
	st = &fs->steps[fs->n_steps++];
	memset(st, 0, sizeof(*st));
	st->phase = phase;
	(void)util_fmt(st->check, sizeof(st->check), "%s", check);
	(void)util_fmt(st->result, sizeof(st->result), "%s", result);
	(void)util_fmt(st->reason, sizeof(st->reason), "%s", reason ? reason : "");
	(void)util_fmt(st->action, sizeof(st->action), "%s", action ? action : "");
}

static void filter_step_add(struct filter_sess *fs, const struct filter_check *c,
    const char *result, const char *reason, const char *action)
{
	filter_step_push(fs, c->phase, c->name, result, reason, action);
}

/* A mail-log row for a check that failed but did not decide the recipient. */
void filter_log_row(struct filter_sess *fs, const char *action, const char *reason)
{
	struct store_log_row row = { 0 };

	if (fs->env->dry_run || fs->env->st == NULL)
		return;
	row.session = fs->sid[0] ? fs->sid : NULL;
	row.client = fs->ip;
	row.helo = fs->helo[0] ? fs->helo : NULL;
	row.sender = fs->have_mail ? fs->sender : NULL;
	row.rcpt = fs->rcpt;
	row.action = action;
	row.reason = reason;
	store_log_add(fs->env->st, &row);
}

static void filter_finish(struct filter_sess *fs, enum filter_verdict v, const char *reply,
    const char *check, const char *reason)
{
	filter_done_cb *cb = fs->cb;
	void *arg = fs->cb_arg;

	fs->cb = NULL;
	if (fs->pol != NULL && !fs->at_connect && v != FILTER_REJECT && v != FILTER_TEMPFAIL) {
		/* the end of DATA asks every policy a recipient was accepted under */
		/* what an allow-list hit skipped is skipped for a policy only if
		 * every recipient under it skipped it */
		int seen = 0;
		for (int i = 0; i < fs->n_dpol && !seen; i++)
			if (strcasecmp(fs->dpol[i], fs->pol->name) == 0) {
				fs->dskip[i] &= fs->skip;
				seen = 1;
			}
		if (!seen && fs->n_dpol < 8) {
			fs->dskip[fs->n_dpol] = fs->skip;
			(void)util_fmt(fs->dpol[fs->n_dpol++], sizeof(fs->dpol[0]), "%s", fs->pol->name);
		}
		if ((v == FILTER_TAG || v == FILTER_QUARANTINE) && !fs->outbound)
			fs->rcpt_tag = 1;
		if (fs->score != 0 && !fs->outbound) {
			if (!fs->scored || fs->score > fs->rcpt_score)
				fs->rcpt_score = fs->score;
			fs->scored = 1;
		}
	}
	filter_pol_unref(&fs->pol);
	if (cb != NULL)
		cb(arg, v, reply, check, reason);
}

static void filter_run_next(struct filter_sess *fs);

void filter_answer(struct filter_sess *fs, enum filter_res res, const char *result,
    const char *reason)
{
	filter_answer_as(fs, res, result, reason, NULL, NULL);
}

void filter_answer_as(struct filter_sess *fs, enum filter_res res, const char *result,
    const char *reason, const enum filter_action *action, const char *ecode)
{
	const struct filter_check *c = filter_checks[fs->next];
	const struct filter_check_conf *cc = filter_conf_check(fs->pol->conf, c->name);
	enum filter_action a = action != NULL ? *action : cc->action;
	char why[300], reply[400];
	const char *act = "";

	if (fs->dead || fs->cb == NULL)
		return;
	(void)util_fmt(why, sizeof(why), "%s%s%s", c->name, reason && reason[0] ? ": " : "",
	    reason ? reason : "");
	fs->next++;
	if (res == FILTER_RES_ERROR) {
		act = cc->on_error_pass ? "pass" : "tempfail";
		filter_step_add(fs, c, "error", reason, act);
		if (!cc->on_error_pass) {
			(void)util_fmt(reply, sizeof(reply), "451 4.7.1 %s (temporary failure, try again later)", why);
			filter_finish(fs, FILTER_TEMPFAIL, reply, c->name, why);
			return;
		}
		filter_log_row(fs, "checked", why);
	} else if (res == FILTER_RES_FAIL) {
		act = filter_action_name(a);
		filter_step_add(fs, c, result, reason, act);
		switch (a) {
		case FILTER_ACT_REJECT:
			(void)util_fmt(reply, sizeof(reply), "554 %s %s", ecode ? ecode : c->ecode ? c->ecode
			    : "5.7.1", why);
			filter_finish(fs, FILTER_REJECT, reply, c->name, why);
			return;
		case FILTER_ACT_TEMPFAIL:
			(void)util_fmt(reply, sizeof(reply), "451 4.7.1 %s", why);
			filter_finish(fs, FILTER_TEMPFAIL, reply, c->name, why);
			return;
		case FILTER_ACT_QUARANTINE:
			fs->quarantine = 1;
			(void)util_fmt(fs->reason, sizeof(fs->reason), "%s", why);
			break;
		case FILTER_ACT_TAG:
			fs->tag = 1;
			(void)util_fmt(fs->reason, sizeof(fs->reason), "%s", why);
			break;
		case FILTER_ACT_SCORE:
			fs->score += cc->score;
			break;
		default:
			break;
		}
		filter_log_row(fs, "checked", why);
	} else {
		filter_step_add(fs, c, result, reason, NULL);
	}
	if (fs->in_run)
		fs->answered = 1;
	else
		filter_run_next(fs);
}

const struct filter_policy_conf *filter_sess_conf(const struct filter_sess *fs)
{
	return fs->pol->conf;
}

void filter_skip(struct filter_sess *fs, unsigned mask)
{
	fs->skip |= mask;
}

/* 1 if check c, set as cc, decides the connection: one set to (dnsbl --at
 * connect), or one that always does when the connection is decided (lists:
 * its client entries). */
static int filter_decides_at_connect(const struct filter_check *c,
    const struct filter_check_conf *cc)
{
	const char *at = json_string_value(json_object_get(cc->opts, "at"));

	return c->connect == 2 || (c->connect && at != NULL && strcmp(at, "connect") == 0);
}

static void filter_run_next(struct filter_sess *fs)
{
	const struct filter_policy_conf *p = fs->pol->conf;

	unsigned gen = fs->gen;

	while (fs->next < FILTER_N) {
		const struct filter_check *c = filter_checks[fs->next];
		const struct filter_check_conf *cc = filter_conf_check(p, c->name);

		if (cc == NULL || cc->action == FILTER_ACT_OFF || (fs->outbound && !c->outbound) ||
		    (fs->at_connect && !filter_decides_at_connect(c, cc))) {
			fs->next++;
			continue;
		}
		if (fs->skip & (1u << fs->next)) {
			filter_step_add(fs, c, "skipped", "allow list", NULL);
			fs->next++;
			continue;
		}
		fs->in_run = 1;
		fs->answered = 0;
		c->run(fs, cc);
		if (fs->gen != gen)
			return;         /* decided, and the owner asked about the next one */
		fs->in_run = 0;
		if (fs->cb == NULL)
			return;         /* decided */
		if (!fs->answered)
			return;         /* waiting: filter_answer goes on */
	}
	/* every check had its say: the score decides what is left */
	{
		char reply[200], why[120];
		double tag, quar, rej;

		filter_conf_scores(p, &tag, &quar, &rej);
		(void)util_fmt(why, sizeof(why), "score %.1f", fs->score);
		if (fs->score > 0 && fs->score >= rej) {
			(void)util_fmt(reply, sizeof(reply), "554 5.7.1 Message refused: spam %s", why);
			filter_finish(fs, FILTER_REJECT, reply, "score", why);
		} else if (fs->quarantine || (fs->score > 0 && fs->score >= quar)) {
			filter_finish(fs, FILTER_QUARANTINE, NULL, "score", fs->quarantine ? fs->reason : why);
		} else if (fs->tag || (fs->score > 0 && fs->score >= tag)) {
			filter_finish(fs, FILTER_TAG, NULL, "score", fs->tag ? fs->reason : why);
		} else {
			filter_finish(fs, FILTER_ACCEPT, NULL, NULL, NULL);
		}
	}
}

static void filter_start(struct filter_sess *fs, const char *rcpt, const char *policy,
    filter_done_cb *cb, void *arg, int at_connect)
{
	char *err = NULL;

	fs->gen++;
	fs->in_run = 0;
	fs->cb = cb;
	fs->cb_arg = arg;
	(void)util_fmt(fs->rcpt, sizeof(fs->rcpt), "%s", rcpt);
	fs->next = 0;
	fs->at_connect = at_connect;
	fs->skip = 0;
	fs->score = 0;
	fs->tag = fs->quarantine = 0;
	fs->reason[0] = '\0';
	fs->pol = filter_policy(fs->env->st, policy, &err);
	if (fs->pol == NULL) {
		log_event(LOG_LVL_ERROR, "filter.policy_error", "policy", policy ? policy : "default",
		    "error", err, NULL);
		free(err);
		filter_finish(fs, FILTER_TEMPFAIL, "451 4.3.0 Filter policy unavailable", "policy",
		    "policy unavailable");
		return;
	}
	filter_run_next(fs);
}

int filter_connect_wanted(struct filter_sess *fs)
{
	char *err = NULL;
	struct filter_pol *p;
	int want = 0;

	if (fs->outbound)
		return 0;
	if ((p = filter_policy(fs->env->st, "default", &err)) == NULL) {
		free(err);
		return 0;      /* RCPT will say 451 */
	}
	for (int i = 0; i < FILTER_N && !want; i++) {
		const struct filter_check_conf *cc = filter_conf_check(p->conf, filter_checks[i]->name);
		want = cc != NULL && cc->action != FILTER_ACT_OFF && filter_checks[i]->connect == 1 &&
		    filter_decides_at_connect(filter_checks[i], cc);
	}
	filter_pol_unref(&p);
	return want;
}

void filter_rcpt(struct filter_sess *fs, const char *rcpt, const char *policy,
    filter_done_cb *cb, void *arg)
{
	filter_start(fs, rcpt, policy, cb, arg, 0);
}

void filter_connect(struct filter_sess *fs, filter_done_cb *cb, void *arg)
{
	filter_start(fs, "", "default", cb, arg, 1);
}
