/* filter_greylist.c: the "greylist" check. The triplet (client network /24
 * or /64, sender, recipient) must have been seen at least `delay` seconds
 * before; the first try is a fail (the policy's action, tempfail by default:
 * 451 4.7.1) and records the triplet. A retry after the delay passes and
 * keeps the triplet for `expire` seconds; a client network that passed
 * `auto_allow` times is let through without triplets for `expire` too. The
 * state is in the policy store, so every node shares it. A dry run (kalectl
 * policy test) reads it and writes nothing. */
#include "filter/filter_int.h"

#include <jansson.h>
#include <stdio.h>
#include <time.h>

#include "lib/log.h"
#include "lib/util.h"

#define GREY_RETRY_WINDOW (2 * 86400)   /* a triplet not retried in time is forgotten */

static long long grey_opt(const struct filter_check_conf *cc, const char *key, long long def)
{
	json_t *v = json_object_get(cc->opts, key);
	return json_is_integer(v) ? (long long)json_integer_value(v) : def;
}

static void greylist_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	store *st = fs->env->st;
	long long delay = grey_opt(cc, "delay", 300), expire = grey_opt(cc, "expire", 35 * 86400);
	long long auto_allow = grey_opt(cc, "auto-allow", 5);
	int64_t now = (int64_t)time(NULL), cexp;
	struct store_greylist g = { 0 };
	char net[64], why[120];
	int r, passes = 0;

	if (filter_grey_net((const struct sockaddr *)&fs->sa, net, sizeof(net)) < 0) {
		filter_answer(fs, FILTER_RES_ERROR, "error", "no client network");
		return;
	}
	r = store_greylist_client_get(st, net, &passes, &cexp);
	if (r < 0) {
		filter_answer(fs, FILTER_RES_ERROR, "error", "greylist store unavailable");
		return;
	}
	if (r == 1 && cexp > now && auto_allow > 0 && passes >= auto_allow) {
		filter_answer(fs, FILTER_RES_PASS, "pass", "client auto-allowed");
		return;
	}
	if (r == 0 || cexp <= now)
		passes = 0;
	r = store_greylist_get(st, net, fs->sender, fs->rcpt, &g);
	if (r < 0) {
		filter_answer(fs, FILTER_RES_ERROR, "error", "greylist store unavailable");
		return;
	}
	if (r == 1 && g.expires > now && (g.passed || now - g.first_seen >= delay)) {
		int first = !g.passed;
		if (!fs->env->dry_run) {
			g.passed = 1;
			g.last_seen = now;
			g.expires = now + expire;
			if (store_greylist_put(st, &g) < 0 ||
			    (first && store_greylist_client_put(st, net, passes + 1, now + expire) < 0))
				log_event(LOG_LVL_WARN, "filter.greylist_write_failed", "net", net, NULL);
		}
		filter_answer(fs, FILTER_RES_PASS, "pass", first ? "retried after the delay" : NULL);
		return;
	}
	if (r == 0 || g.expires <= now) {
		(void)util_fmt(g.net, sizeof(g.net), "%s", net);
		(void)util_fmt(g.sender, sizeof(g.sender), "%s", fs->sender);
		(void)util_fmt(g.rcpt, sizeof(g.rcpt), "%s", fs->rcpt);
		g.first_seen = now;
		g.passed = 0;
		g.expires = now + (delay + GREY_RETRY_WINDOW);
	}
	g.last_seen = now;
	if (!fs->env->dry_run && store_greylist_put(st, &g) < 0) {
		filter_answer(fs, FILTER_RES_ERROR, "error", "greylist store unavailable");
		return;
	}
	(void)util_fmt(why, sizeof(why), "greylisted, try again in %lld s",
	    (long long)(g.first_seen + delay - now) > 0 ? (long long)(g.first_seen + delay - now) : 1LL);
	filter_answer(fs, FILTER_RES_FAIL, "greylisted", why);
}

const struct filter_check filter_check_greylist = {
	.name = "greylist", .phase = FILTER_PH_RCPT, .run = greylist_run,
};
