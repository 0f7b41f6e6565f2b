/* filter_conf.c: the registry of configurable checks (defaults and
 * options) and the policy as read from the store. A stored row overrides
 * the built-in settings of its check; its options are merged over the
 * defaults, so a row written by an older build keeps working when a newer
 * one adds an option. A stored row for a check this build does not know is
 * ignored (a newer node may have written it). */
#include "filter/filter_conf.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/conf.h"
#include "lib/util.h"

enum filter_opt_type { OPT_DURATION, OPT_INT, OPT_NUMBER, OPT_ZONES, OPT_WORD };

struct filter_opt {
	const char *key;
	enum filter_opt_type type;
	long long min, max;
	const char *words;           /* OPT_WORD: the allowed values, "|"-separated */
};

struct filter_reg {
	const char *name;
	enum filter_action action;   /* built-in action */
	const char *opts;            /* built-in options, JSON */
	const struct filter_opt *opt;
	const char *help;
};

static const struct filter_opt filter_opt_dnsbl[] = {
	{ "zones", OPT_ZONES, 0, 0, NULL },
	{ "threshold", OPT_NUMBER, 0, 1000, NULL },
	{ "at", OPT_WORD, 0, 0, "rcpt|connect" },
	{ NULL, 0, 0, 0, NULL }
};
static const struct filter_opt filter_opt_greylist[] = {
	{ "delay", OPT_DURATION, 0, 86400, NULL },
	{ "expire", OPT_DURATION, 3600, 366LL * 86400, NULL },
	{ "auto-allow", OPT_INT, 0, 1000, NULL },
	{ NULL, 0, 0, 0, NULL }
};
#define FILTER_ACTION_WORDS "reject|tempfail|quarantine|tag|score|log|off"
static const struct filter_opt filter_opt_spf[] = {
	{ "fail", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ "softfail", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ "permerror", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ "temperror", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ NULL, 0, 0, 0, NULL }
};
/* the action for each published policy a failing message is under */
static const struct filter_opt filter_opt_dmarc[] = {
	{ "p-reject", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ "p-quarantine", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ "p-none", OPT_WORD, 0, 0, FILTER_ACTION_WORDS },
	{ NULL, 0, 0, 0, NULL }
};
#define FILTER_DMARC_POLICY "{\"p-reject\": \"reject\", \"p-quarantine\": \"quarantine\", \"p-none\": \"log\"}"
static const struct filter_opt filter_opt_rate[] = {
	{ "messages", OPT_INT, 0, 100000000, NULL },
	{ "recipients", OPT_INT, 0, 100000000, NULL },
	{ "per", OPT_DURATION, 1, 7 * 86400, NULL },
	{ NULL, 0, 0, 0, NULL }
};
static const struct filter_opt filter_opt_none[] = { { NULL, 0, 0, 0, NULL } };

/* The order is the order the checks run in (filter.c keeps the same). */
static const struct filter_reg filter_regs[] = {
	{ "lists", FILTER_ACT_REJECT, "{}", filter_opt_none, "" },
	{ "dnsbl", FILTER_ACT_REJECT, "{\"zones\": [], \"threshold\": 1, \"at\": \"rcpt\"}",
	  filter_opt_dnsbl, "--zones ZONE[=WEIGHT],... --threshold N --at rcpt|connect" },
	{ "rdns", FILTER_ACT_OFF, "{}", filter_opt_none, "" },
	{ "fcrdns", FILTER_ACT_OFF, "{}", filter_opt_none, "" },
	{ "helo", FILTER_ACT_OFF, "{}", filter_opt_none, "" },
	/* on, and obeying the published policy: -all (fail) refused, ~all
	 * (softfail) and broken records only logged, DNS trouble a 451 */
	{ "spf", FILTER_ACT_REJECT, "{\"fail\": \"reject\", \"softfail\": \"log\","
	  " \"permerror\": \"log\", \"temperror\": \"tempfail\"}", filter_opt_spf,
	  "--fail ACTION --softfail ACTION --permerror ACTION --temperror ACTION" },
	/* end of DATA: every signature verified and reported; a failed one
	 * alone refuses nothing (RFC 6376 6.3), DMARC decides */
	{ "dkim", FILTER_ACT_LOG, "{}", filter_opt_none, "" },
	/* on, obeying the published p= and pct= */
	{ "dmarc", FILTER_ACT_REJECT, FILTER_DMARC_POLICY, filter_opt_dmarc,
	  "--p-reject ACTION --p-quarantine ACTION --p-none ACTION (--action policy: as published)" },
	{ "greylist", FILTER_ACT_OFF, "{\"delay\": 300, \"expire\": 3024000, \"auto-allow\": 5}",
	  filter_opt_greylist, "--delay DURATION --expire DURATION --auto-allow N" },
	/* on, but without limits until they are given; runs for outbound too */
	{ "rate", FILTER_ACT_TEMPFAIL, "{\"messages\": 0, \"recipients\": 0, \"per\": 3600}",
	  filter_opt_rate, "--messages N --recipients N --per DURATION" },
};
#define FILTER_NREG ((int)(sizeof(filter_regs) / sizeof(filter_regs[0])))

const char *const filter_conf_names[] = { "lists", "dnsbl", "rdns", "fcrdns", "helo", "spf",
	"dkim", "dmarc", "greylist", "rate", NULL };

static const char *const filter_action_names[] = {
	[FILTER_ACT_OFF] = "off", [FILTER_ACT_LOG] = "log", [FILTER_ACT_SCORE] = "score",
	[FILTER_ACT_TAG] = "tag", [FILTER_ACT_QUARANTINE] = "quarantine",
	[FILTER_ACT_TEMPFAIL] = "tempfail", [FILTER_ACT_REJECT] = "reject",
};

const char *filter_action_name(enum filter_action a)
{
	return (unsigned)a < sizeof(filter_action_names) / sizeof(filter_action_names[0])
	    ? filter_action_names[a] : "?";
}

int filter_action_parse(const char *s, enum filter_action *a_r)
{
	for (unsigned i = 0; i < sizeof(filter_action_names) / sizeof(filter_action_names[0]); i++)
		if (strcmp(s, filter_action_names[i]) == 0) {
			*a_r = (enum filter_action)i;
			return 0;
		}
	return -1;
}

static const struct filter_reg *filter_reg_get(const char *name)
{
	for (int i = 0; i < FILTER_NREG; i++)
		if (strcmp(filter_regs[i].name, name) == 0)
			return &filter_regs[i];
	return NULL;
}

const char *filter_conf_option_help(const char *check)
{
	const struct filter_reg *r = filter_reg_get(check);

	return r ? r->help : "";
}

/* ---- loading ---- */

struct filter_load {
	struct filter_policy_conf *c;
	char *error;
};

static int filter_load_check(void *ctx, const struct store_filter_check *row)
{
	struct filter_load *l = ctx;
	struct filter_check_conf *cc = NULL;
	json_t *o;

	for (int i = 0; i < l->c->n_checks; i++)
		if (strcmp(l->c->checks[i].name, row->name) == 0)
			cc = &l->c->checks[i];
	if (cc == NULL)
		return 0;          /* a check this build does not have */
	if (filter_action_parse(row->action, &cc->action) < 0) {
		(void)util_err(&l->error, "filter policy %s: check %s: unknown action '%.32s'",
		    l->c->name, row->name, row->action);
		return 1;
	}
	cc->score = row->score;
	cc->on_error_pass = strcmp(row->on_error, "pass") == 0;
	o = json_loads(row->options, 0, NULL);
	if (!json_is_object(o)) {
		json_decref(o);
		(void)util_err(&l->error, "filter policy %s: check %s: options are not a JSON object",
		    l->c->name, row->name);
		return 1;
	}
	json_object_update(cc->opts, o);
	json_decref(o);
	return 0;
}

static int filter_load_list(void *ctx, const struct store_filter_list *row)
{
	struct filter_policy_conf *c = ((struct filter_load *)ctx)->c;

	if (c->n_lists >= 100000)
		return 1;          /* bounded: more is not a list but a database */
	c->lists = xrealloc(c->lists, sizeof(*c->lists) * (size_t)(c->n_lists + 1));
	c->lists[c->n_lists++] = *row;
	return 0;
}

int filter_conf_load(store *st, const char *name, struct filter_policy_conf **conf_r,
    char **error_r)
{
	struct store_filter_policy p;
	struct filter_load l = { NULL, NULL };
	int rc;

	*conf_r = NULL;
	rc = store_filter_policy_get(st, name, &p);
	if (rc < 0)
		return util_err(error_r, "cannot read filter policy '%.64s'", name);
	if (rc == 0)
		return util_err(error_r, "no filter policy '%.64s'", name);
	l.c = xcalloc(1, sizeof(*l.c));
	(void)util_fmt(l.c->name, sizeof(l.c->name), "%s", p.name);
	l.c->tag = p.tag;
	l.c->quarantine = p.quarantine;
	l.c->reject = p.reject;
	for (int i = 0; i < FILTER_NREG; i++) {
		struct filter_check_conf *cc = &l.c->checks[l.c->n_checks++];
		cc->name = filter_regs[i].name;
		cc->action = filter_regs[i].action;
		cc->opts = json_loads(filter_regs[i].opts, 0, NULL);
	}
	if (store_filter_check_list(st, p.name, filter_load_check, &l) < 0 && l.error == NULL)
		(void)util_err(&l.error, "cannot read the checks of filter policy '%s'", p.name);
	if (l.error == NULL && store_filter_list_each(st, p.name, filter_load_list, &l) < 0)
		(void)util_err(&l.error, "cannot read the lists of filter policy '%s'", p.name);
	if (l.error != NULL) {
		filter_conf_free(&l.c);
		*error_r = l.error;
		return -1;
	}
	*conf_r = l.c;
	return 0;
}

void filter_conf_free(struct filter_policy_conf **conf)
{
	struct filter_policy_conf *c = *conf;

	if (c == NULL)
		return;
	*conf = NULL;
	for (int i = 0; i < c->n_checks; i++)
		json_decref(c->checks[i].opts);
	free(c->lists);
	free(c);
}

const struct filter_check_conf *filter_conf_check(const struct filter_policy_conf *conf,
    const char *name)
{
	for (int i = 0; i < conf->n_checks; i++)
		if (strcmp(conf->checks[i].name, name) == 0)
			return &conf->checks[i];
	return NULL;
}

const struct store_filter_list *filter_conf_lists(const struct filter_policy_conf *conf, int *n_r)
{
	*n_r = conf->n_lists;
	return conf->lists;
}

void filter_conf_scores(const struct filter_policy_conf *conf, double *tag, double *quarantine,
    double *reject)
{
	*tag = conf->tag;
	*quarantine = conf->quarantine;
	*reject = conf->reject;
}

/* ---- options ---- */

/* 1 if s is a domain name: LDH labels of 1..63, 1..253 in all. */
static int filter_zone_ok(const char *s)
{
	size_t len = strlen(s), label = 0;

	if (len == 0 || len > 253 || s[0] == '.' || s[len - 1] == '.')
		return 0;
	for (; *s; s++) {
		if (*s == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (isalnum((unsigned char)*s) || *s == '-' || *s == '_') {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return 1;
}

/* "zen.example=2,bl.example" -> [{"zone": "zen.example", "weight": 2}, ...] */
static json_t *filter_zones_parse(const char *value, char **error_r)
{
	json_t *a = json_array();
	char *copy = xstrdup(value), *save = NULL;

	for (char *w = strtok_r(copy, ", ", &save); w != NULL; w = strtok_r(NULL, ", ", &save)) {
		char *eq = strchr(w, '=');
		double weight = 1;

		if (eq != NULL) {
			char *end;
			*eq = '\0';
			weight = strtod(eq + 1, &end);
			if (end == eq + 1 || *end != '\0' || !(weight >= -100 && weight <= 100)) {
				(void)util_err(error_r, "--zones: bad weight '%.32s' (a number from -100 to 100)", eq + 1);
				goto fail;
			}
		}
		if (!filter_zone_ok(w)) {
			(void)util_err(error_r, "--zones: bad zone '%.64s'", w);
			goto fail;
		}
		if (json_array_size(a) >= 32) {
			(void)util_err(error_r, "--zones: at most 32 zones");
			goto fail;
		}
		json_array_append_new(a, json_pack("{s:s, s:f}", "zone", w, "weight", weight));
	}
	free(copy);
	return a;
fail:
	free(copy);
	json_decref(a);
	return NULL;
}

int filter_conf_set_option(const char *check, const char *key, const char *value, json_t *opts,
    char **error_r)
{
	const struct filter_reg *r = filter_reg_get(check);
	const struct filter_opt *o = NULL;
	long long n;
	json_t *v = NULL;

	if (r == NULL)
		return util_err(error_r, "unknown check '%.32s'", check);
	for (int i = 0; r->opt[i].key != NULL; i++)
		if (strcmp(r->opt[i].key, key) == 0)
			o = &r->opt[i];
	if (o == NULL)
		return util_err(error_r, "check %s has no option --%.32s%s%s", check, key,
		    r->help[0] ? "; it takes " : "", r->help);
	switch (o->type) {
	case OPT_DURATION: {
		int64_t d = conf_parse_duration(value);
		if (d < o->min || d > o->max)
			return util_err(error_r, "--%s: '%.32s' is not a duration from %llds to %llds",
			    key, value, o->min, o->max);
		v = json_integer(d);
		break;
	}
	case OPT_INT:
		if (util_strtonum(value, o->min, o->max, &n) < 0)
			return util_err(error_r, "--%s: '%.32s' is not a number from %lld to %lld", key,
			    value, o->min, o->max);
		v = json_integer(n);
		break;
	case OPT_NUMBER: {
		char *end;
		double d = strtod(value, &end);
		if (end == value || *end != '\0' || !(d >= (double)o->min && d <= (double)o->max))
			return util_err(error_r, "--%s: '%.32s' is not a number from %lld to %lld", key,
			    value, o->min, o->max);
		v = json_real(d);
		break;
	}
	case OPT_ZONES:
		if ((v = filter_zones_parse(value, error_r)) == NULL)
			return -1;
		break;
	case OPT_WORD: {
		size_t len = strlen(value);
		const char *p = strstr(o->words, value);
		if (len == 0 || p == NULL || (p != o->words && p[-1] != '|') ||
		    (p[len] != '\0' && p[len] != '|'))
			return util_err(error_r, "--%s takes %s", key, o->words);
		v = json_string(value);
		break;
	}
	}
	json_object_set_new(opts, key, v);
	return 0;
}

int filter_conf_set_policy(const char *check, json_t *opts)
{
	json_t *d;

	if (strcmp(check, "dmarc") != 0)
		return -1;
	d = json_loads(FILTER_DMARC_POLICY, 0, NULL);
	json_object_update(opts, d);
	json_decref(d);
	return 0;
}

void filter_conf_set_action(const char *check, enum filter_action a, json_t *opts)
{
	const struct filter_reg *r = filter_reg_get(check);

	if (r == NULL || a == FILTER_ACT_OFF)
		return;
	for (int i = 0; r->opt[i].key != NULL; i++)
		if (r->opt[i].type == OPT_WORD && strcmp(r->opt[i].words, FILTER_ACTION_WORDS) == 0)
			json_object_set_new(opts, r->opt[i].key, json_string(filter_action_name(a)));
}

json_t *filter_conf_json(const struct filter_policy_conf *conf)
{
	json_t *checks = json_array();

	for (int i = 0; i < conf->n_checks; i++) {
		const struct filter_check_conf *cc = &conf->checks[i];
		json_array_append_new(checks, json_pack("{s:s, s:s, s:f, s:s, s:O}", "name", cc->name,
		    "action", filter_action_name(cc->action), "score", cc->score, "on_error",
		    cc->on_error_pass ? "pass" : "tempfail", "options", cc->opts));
	}
	return json_pack("{s:s, s:{s:f, s:f, s:f}, s:o}", "name", conf->name, "scores", "tag",
	    conf->tag, "quarantine", conf->quarantine, "reject", conf->reject, "checks", checks);
}
