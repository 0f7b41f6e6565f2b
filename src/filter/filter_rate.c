/* filter_rate.c: the "rate" check. Messages and recipients per window of
 * `per` seconds, counted per authenticated user for authenticated clients
 * and per client address for every other one (trusted networks included):
 * the first recipient of a transaction counts the message, every recipient
 * counts one. Past `messages` or `recipients` (0: no limit) the check
 * fails, by default a 451 4.7.1, so a well-behaved client comes back later.
 * The counters are in the policy store (table rate), shared by every node;
 * a dry run reads them and counts nothing. It is the one check that also
 * runs for outbound sessions (filter.c). */
#include "filter/filter_int.h"

#include <jansson.h>
#include <time.h>

#include "lib/util.h"

struct rate_data {
	int counted;                 /* this transaction's message was counted */
};

static long long rate_opt(const struct filter_check_conf *cc, const char *key, long long def)
{
	json_t *v = json_object_get(cc->opts, key);
	return json_is_integer(v) ? (long long)json_integer_value(v) : def;
}

static void rate_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	int i = filter_check_index("rate");
	struct rate_data *d = fs->data[i];
	long long lim_m = rate_opt(cc, "messages", 0), lim_r = rate_opt(cc, "recipients", 0);
	long long per = rate_opt(cc, "per", 3600);
	int64_t m = 0, r = 0, now = (int64_t)time(NULL);
	char key[400], why[300];
	int rc;

	if (lim_m <= 0 && lim_r <= 0) {
		filter_answer(fs, FILTER_RES_PASS, "pass", "no limit set");
		return;
	}
	if (d == NULL)
		d = fs->data[i] = xcalloc(1, sizeof(*d));
	if (fs->auth_user[0] != '\0')
		(void)util_fmt(key, sizeof(key), "user:%s", fs->auth_user);
	else
		(void)util_fmt(key, sizeof(key), "ip:%s", fs->ip);
	if (fs->env->dry_run)
		rc = store_rate_get(fs->env->st, key, now, per, &m, &r);
	else
		rc = store_rate_hit(fs->env->st, key, now, per, d->counted ? 0 : 1, 1, &m, &r);
	if (rc < 0) {
		filter_answer(fs, FILTER_RES_ERROR, "error", "rate store unavailable");
		return;
	}
	if (fs->env->dry_run) {
		m += d->counted ? 0 : 1;     /* what this one would add */
		r += 1;
	}
	d->counted = 1;
	if (lim_m > 0 && m > lim_m) {
		(void)util_fmt(why, sizeof(why), "%lld messages in %llds from %s (limit %lld)",
		    (long long)m, per, key, lim_m);
		filter_answer(fs, FILTER_RES_FAIL, "fail", why);
	} else if (lim_r > 0 && r > lim_r) {
		(void)util_fmt(why, sizeof(why), "%lld recipients in %llds from %s (limit %lld)",
		    (long long)r, per, key, lim_r);
		filter_answer(fs, FILTER_RES_FAIL, "fail", why);
	} else {
		filter_answer(fs, FILTER_RES_PASS, "pass", "");
	}
}

static void rate_mail_reset(struct filter_sess *fs, void **data)
{
	(void)fs;
	if (*data != NULL)
		((struct rate_data *)*data)->counted = 0;
}

const struct filter_check filter_check_rate = {
	.name = "rate", .phase = FILTER_PH_RCPT, .ecode = "5.7.1", .outbound = 1, .run = rate_run,
	.sess_free = free, .mail_reset = rate_mail_reset,
};
