/* filter_conf: what a filter policy says, read from the policy store's rows
 * (store_filter.c) and checked against the registry of checks this build
 * has: each check's default action and options, the options kalectl may
 * set on it and how they are written. One place knows the check names and
 * their settings: the pipeline (filter.c), the checks and kalectl ask it.
 * Pure over the rows it is given, apart from filter_conf_load. */
#ifndef KALE_FILTER_CONF_H
#define KALE_FILTER_CONF_H

#include <jansson.h>

#include "store/store.h"

enum filter_action {
	FILTER_ACT_OFF,
	FILTER_ACT_LOG,          /* decide nothing, write a mail-log row */
	FILTER_ACT_SCORE,        /* add the check's score to the spam score */
	FILTER_ACT_TAG,
	FILTER_ACT_QUARANTINE,   /* tag until quarantine exists (issue 14) */
	FILTER_ACT_TEMPFAIL,     /* 451 4.7.1 */
	FILTER_ACT_REJECT        /* 554 5.7.x */
};

/* One check's settings in one policy. */
struct filter_check_conf {
	const char *name;            /* the registry's string */
	enum filter_action action;
	double score;                /* for FILTER_ACT_SCORE */
	int on_error_pass;           /* an error passes instead of 451 */
	json_t *opts;                /* its options (an object, never NULL) */
};

#define FILTER_CONF_CHECKS 16

struct filter_policy_conf {
	char name[64];
	double tag, quarantine, reject;      /* score thresholds (>=) */
	struct filter_check_conf checks[FILTER_CONF_CHECKS];   /* registry order */
	int n_checks;
	struct store_filter_list *lists;
	int n_lists;
};

/* The checks that can be configured, in the order they run; NULL-ended. */
extern const char *const filter_conf_names[];

const char *filter_action_name(enum filter_action a);
/* 0 with *a_r, -1 for an unknown word. */
int filter_action_parse(const char *s, enum filter_action *a_r);

/* The policy NAME from the store. 0, or -1 with *error_r (also when the
 * policy does not exist: "no filter policy 'x'"). */
int filter_conf_load(store *st, const char *name, struct filter_policy_conf **conf_r,
    char **error_r);
void filter_conf_free(struct filter_policy_conf **conf);
/* The settings of check NAME (NULL if this build has no such check). */
const struct filter_check_conf *filter_conf_check(const struct filter_policy_conf *conf,
    const char *name);
const struct store_filter_list *filter_conf_lists(const struct filter_policy_conf *conf, int *n_r);
void filter_conf_scores(const struct filter_policy_conf *conf, double *tag, double *quarantine,
    double *reject);

/* kalectl filter set: option KEY (without "--") with VALUE for CHECK,
 * checked and written into opts (a JSON object). 0, or -1 with *error_r
 * naming the option and what it takes. */
int filter_conf_set_option(const char *check, const char *key, const char *value, json_t *opts,
    char **error_r);
/* --action A for a check whose results have actions of their own (spf's
 * fail, softfail, permerror, temperror): sets them all to A in opts. */
void filter_conf_set_action(const char *check, enum filter_action a, json_t *opts);
/* --action policy (dmarc only): its per-policy actions back to following
 * the published p=. 0, or -1 for a check that has no such action. */
int filter_conf_set_policy(const char *check, json_t *opts);
/* The option names CHECK takes, for the usage text: "--zones ZONE[=WEIGHT],..." */
const char *filter_conf_option_help(const char *check);
/* The policy as JSON: {"name", "scores": {...}, "checks": [{"name",
 * "action", "score", "on_error", "options"}...]} (a new reference). */
json_t *filter_conf_json(const struct filter_policy_conf *conf);

#endif
