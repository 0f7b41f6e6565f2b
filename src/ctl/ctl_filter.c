/* ctl_filter: kalectl's filtering commands (operator.md §6): filter
 * list|show|add|del|set (policies and their checks), list add|del|show
 * (allow and block lists) and greylist list|flush. What a check is and which
 * options it takes is src/filter/filter_conf.c's; this file parses the
 * command line and writes rows. Runs only in kalectl. */
#include "ctl/ctl.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filter/filter.h"
#include "filter/filter_conf.h"
#include "lib/util.h"

/* ---- filter list|show|add|del|set ---- */

static int ctl_fpol_row(void *ctx, const struct store_filter_policy *p)
{
	char tag[32], quar[32], rej[32];
	const char *cells[4] = { p->name, tag, quar, rej };

	(void)util_fmt(tag, sizeof(tag), "%g", p->tag);
	(void)util_fmt(quar, sizeof(quar), "%g", p->quarantine);
	(void)util_fmt(rej, sizeof(rej), "%g", p->reject);
	ctl_table_add(ctx, cells);
	return 0;
}

static int ctl_fpol_list(store *st, struct ctl_table *t)
{
	return store_filter_policy_list(st, ctl_fpol_row, t);
}

static int ctl_filter_show(struct ctl *c, int argc, char **argv)
{
	const char *pos[1] = { "default" };
	int npos = 0, json = 0;
	const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
	struct filter_policy_conf *conf;
	struct ctl_table t;
	char *err = NULL;
	static const char *const hdr[5] = { "CHECK", "ACTION", "SCORE", "ON-ERROR", "OPTIONS" };

	if (ctl_getopt(argc, argv, opts, pos, 0, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	if (filter_conf_load(c->st, pos[0], &conf, &err) < 0)
		return ctl_result(-1, &err, NULL, NULL);
	if (json) {
		int rc = ctl_print_json(filter_conf_json(conf));
		filter_conf_free(&conf);
		return rc;
	}
	printf("policy %s: tag at score %g, quarantine at %g, reject at %g\n", conf->name, conf->tag,
	    conf->quarantine, conf->reject);
	ctl_table_init(&t, 5, hdr);
	for (int i = 0; i < conf->n_checks; i++) {
		const struct filter_check_conf *cc = &conf->checks[i];
		char score[32], *o = json_dumps(cc->opts, JSON_COMPACT | JSON_SORT_KEYS);
		const char *cells[5] = { cc->name, filter_action_name(cc->action), score,
			cc->on_error_pass ? "pass" : "tempfail", o ? o : "" };
		(void)util_fmt(score, sizeof(score), "%g", cc->score);
		ctl_table_add(&t, cells);
		free(o);
	}
	ctl_table_print(&t, stdout);
	ctl_table_free(&t);
	filter_conf_free(&conf);
	return CTL_EXIT_OK;
}

static int ctl_parse_number(const char *s, double lo, double hi, double *out)
{
	char *end;
	double d;

	if (s == NULL)
		return -1;
	d = strtod(s, &end);
	if (end == s || *end != '\0' || !(d >= lo && d <= hi))
		return -1;
	*out = d;
	return 0;
}

/* filter set [--policy P] score --tag N --quarantine N --reject N */
static int ctl_filter_set_scores(struct ctl *c, const char *policy, const char *tag_s,
    const char *quar_s, const char *rej_s)
{
	struct filter_policy_conf *conf;
	double tag, quar, rej;
	char *err = NULL;
	int rc;

	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	if (filter_conf_load(c->st, policy, &conf, &err) < 0)
		return ctl_result(-1, &err, NULL, NULL);
	tag = conf->tag;
	quar = conf->quarantine;
	rej = conf->reject;
	filter_conf_free(&conf);
	if ((tag_s && ctl_parse_number(tag_s, 0, 10000, &tag) < 0) ||
	    (quar_s && ctl_parse_number(quar_s, 0, 10000, &quar) < 0) ||
	    (rej_s && ctl_parse_number(rej_s, 0, 10000, &rej) < 0))
		return ctl_usage("--tag, --quarantine and --reject take a score from 0 to 10000");
	rc = store_filter_policy_scores(c->st, policy, tag, quar, rej, &err);
	return ctl_result(rc, &err, "updated filter policy", policy);
}

/* filter set [--policy P] CHECK [--action A] [--score N] [--on-error tempfail|pass]
 * [check options]: the options are the check's own, so they are parsed here
 * by name and handed to filter_conf_set_option. */
static int ctl_filter_set(struct ctl *c, int argc, char **argv)
{
	const char *policy = "default", *check = NULL, *action = NULL, *score = NULL,
	    *on_error = NULL, *tag = NULL, *quar = NULL, *rej = NULL;
	const char **keys = xcalloc((size_t)argc + 1, sizeof(char *));
	const char **vals = xcalloc((size_t)argc + 1, sizeof(char *));
	struct filter_policy_conf *conf = NULL;
	const struct filter_check_conf *cc;
	struct store_filter_check row;
	json_t *opts = NULL;
	char *err = NULL, *o;
	int nopt = 0, rc = CTL_EXIT_USAGE;
	enum filter_action act;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *eq, *v;
		char key[64];
		if (strncmp(a, "--", 2) != 0) {
			if (check != NULL) {
				rc = ctl_usage("filter set takes one CHECK (got '%.32s' and '%.32s')", check, a);
				goto out;
			}
			check = a;
			continue;
		}
		eq = strchr(a, '=');
		if (util_fmt(key, sizeof(key), "%.*s", (int)(eq ? (size_t)(eq - a - 2) : strlen(a + 2)),
		    a + 2) < 0 || key[0] == '\0') {
			rc = ctl_usage("bad option '%.64s'", a);
			goto out;
		}
		if (eq != NULL) {
			v = eq + 1;
		} else if (i + 1 < argc) {
			v = argv[++i];
		} else {
			rc = ctl_usage("--%s needs a value", key);
			goto out;
		}
		if (strcmp(key, "policy") == 0)
			policy = v;
		else if (strcmp(key, "action") == 0)
			action = v;
		else if (strcmp(key, "score") == 0)
			score = v;
		else if (strcmp(key, "on-error") == 0)
			on_error = v;
		else if (strcmp(key, "tag") == 0)
			tag = v;
		else if (strcmp(key, "quarantine") == 0)
			quar = v;
		else if (strcmp(key, "reject") == 0)
			rej = v;
		else {
			keys[nopt] = a + 2;
			vals[nopt++] = v;
		}
	}
	if (check == NULL) {
		rc = ctl_usage("filter set needs a CHECK (or score)");
		goto out;
	}
	if (strcmp(check, "score") == 0) {
		if (action || score || on_error || nopt > 0 || !(tag || quar || rej))
			rc = ctl_usage("filter set score takes --tag N --quarantine N --reject N");
		else
			rc = ctl_filter_set_scores(c, policy, tag, quar, rej);
		goto out;
	}
	if (tag || quar || rej) {
		rc = ctl_usage("--tag, --quarantine and --reject are for 'filter set score'");
		goto out;
	}
	if (action != NULL && strcmp(action, "policy") == 0) {
		if (strcmp(check, "dmarc") != 0) {
			rc = ctl_usage("--action policy is for dmarc only");
			goto out;
		}
		act = FILTER_ACT_REJECT;   /* on; the published p= decides */
	} else if (action != NULL && filter_action_parse(action, &act) < 0) {
		rc = ctl_usage("unknown action '%.32s' (reject, tempfail, quarantine, tag, score, log, off)",
		    action);
		goto out;
	}
	if (on_error != NULL && strcmp(on_error, "tempfail") != 0 && strcmp(on_error, "pass") != 0) {
		rc = ctl_usage("--on-error takes tempfail or pass");
		goto out;
	}
	memset(&row, 0, sizeof(row));
	if (score != NULL && ctl_parse_number(score, -1000, 1000, &row.score) < 0) {
		rc = ctl_usage("--score takes a number from -1000 to 1000");
		goto out;
	}
	if (ctl_open_store(c) < 0) {
		rc = CTL_EXIT_FAIL;
		goto out;
	}
	if (filter_conf_load(c->st, policy, &conf, &err) < 0) {
		rc = ctl_result(-1, &err, NULL, NULL);
		goto out;
	}
	if ((cc = filter_conf_check(conf, check)) == NULL) {
		rc = ctl_usage("unknown check '%.32s'", check);
		goto out;
	}
	opts = json_deep_copy(cc->opts);
	if (action != NULL && strcmp(action, "policy") == 0)
		(void)filter_conf_set_policy(check, opts);
	else if (action != NULL)
		filter_conf_set_action(check, act, opts);
	for (int i = 0; i < nopt; i++) {
		char key[64];
		(void)util_fmt(key, sizeof(key), "%.*s", (int)strcspn(keys[i], "="), keys[i]);
		if (filter_conf_set_option(check, key, vals[i], opts, &err) < 0) {
			fprintf(stderr, "kalectl: %s\n", err);
			free(err);
			rc = ctl_usage(NULL);
			goto out;
		}
	}
	(void)util_fmt(row.name, sizeof(row.name), "%s", check);
	(void)util_fmt(row.action, sizeof(row.action), "%s",
	    filter_action_name(action ? act : cc->action));
	if (score == NULL)
		row.score = cc->score;
	(void)util_fmt(row.on_error, sizeof(row.on_error), "%s",
	    on_error ? on_error : cc->on_error_pass ? "pass" : "tempfail");
	if (strcmp(row.action, "score") == 0 && row.score == 0) {
		rc = ctl_usage("action score needs --score N");
		goto out;
	}
	o = json_dumps(opts, JSON_COMPACT | JSON_SORT_KEYS);
	if (o == NULL || util_fmt(row.options, sizeof(row.options), "%s", o) < 0) {
		free(o);
		rc = ctl_fail("the options of %s are too long", check);
		goto out;
	}
	free(o);
	rc = ctl_result(store_filter_check_set(c->st, conf->name, &row, &err), &err,
	    "updated check", check);
out:
	json_decref(opts);
	filter_conf_free(&conf);
	free(keys);
	free(vals);
	return rc;
}

int ctl_filter_cmd(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "", *pos[1], *copy_of = NULL;
	int npos = 0;
	char *err = NULL;

	if (strcmp(sub, "list") == 0) {
		static const char *const hdr[4] = { "POLICY", "TAG", "QUARANTINE", "REJECT" };
		return ctl_table_list(c, argc - 1, argv + 1, 4, hdr, ctl_fpol_list, "filter policies");
	}
	if (strcmp(sub, "show") == 0)
		return ctl_filter_show(c, argc - 1, argv + 1);
	if (strcmp(sub, "set") == 0)
		return ctl_filter_set(c, argc - 1, argv + 1);
	if (strcmp(sub, "add") == 0) {
		const struct ctl_opt opts[] = { { "copy-of", 1, &copy_of, NULL }, { NULL, 0, NULL, NULL } };
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_filter_policy_add(c->st, pos[0], copy_of, &err), &err,
		    "added filter policy", pos[0]);
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_filter_policy_del(c->st, pos[0], &err), &err,
		    "deleted filter policy", pos[0]);
	}
	return ctl_usage("unknown filter command '%.50s'", sub);
}

/* ---- list add|del|show ---- */

static int ctl_list_row(void *ctx, const struct store_filter_list *l)
{
	struct ctl_rows *o = ctx;

	if (o->arr != NULL) {
		json_array_append_new(o->arr, json_pack("{s:s, s:s, s:s, s:o, s:s, s:o}", "policy",
		    l->policy, "list", l->list, "kind", l->kind, "value", ctl_json_str(l->value), "skip",
		    l->skip, "comment", ctl_json_str(l->comment)));
	} else {
		const char *cells[6] = { l->policy, l->list, l->kind, l->value,
			l->skip[0] ? l->skip : "-", l->comment };
		ctl_table_add(&o->t, cells);
	}
	return 0;
}

int ctl_list_cmd(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "", *pos[3], *policy = NULL, *comment = NULL,
	    *skip = NULL;
	int npos = 0, json = 0, add = strcmp(sub, "add") == 0;
	struct store_filter_list l;
	char *err = NULL;

	if (add || strcmp(sub, "del") == 0) {
		const struct ctl_opt add_opts[] = {
			{ "policy", 1, &policy, NULL }, { "comment", 1, &comment, NULL },
			{ "skip", 1, &skip, NULL }, { NULL, 0, NULL, NULL } };
		const struct ctl_opt del_opts[] = { { "policy", 1, &policy, NULL }, { NULL, 0, NULL, NULL } };
		if (ctl_getopt(argc - 1, argv + 1, add ? add_opts : del_opts, pos, 3, 3, &npos) < 0)
			return ctl_usage(NULL);
		if (filter_list_check(pos[0], pos[1], pos[2], skip ? skip : "", &err) < 0) {
			fprintf(stderr, "kalectl: %s\n", err);
			free(err);
			return ctl_usage(NULL);
		}
		memset(&l, 0, sizeof(l));
		if (util_fmt(l.policy, sizeof(l.policy), "%s", policy ? policy : "default") < 0 ||
		    util_fmt(l.comment, sizeof(l.comment), "%s", comment ? comment : "") < 0 ||
		    util_fmt(l.skip, sizeof(l.skip), "%s", skip ? skip : "") < 0)
			return ctl_usage("--policy, --comment or --skip too long");
		(void)util_fmt(l.list, sizeof(l.list), "%s", pos[0]);
		(void)util_fmt(l.kind, sizeof(l.kind), "%s", pos[1]);
		(void)util_fmt(l.value, sizeof(l.value), "%s", pos[2]);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (add)
			return ctl_result(store_filter_list_add(c->st, &l, &err), &err, "added", l.value);
		return ctl_result(store_filter_list_del(c->st, &l, &err), &err, "deleted", l.value);
	}
	if (strcmp(sub, "show") == 0) {
		const struct ctl_opt opts[] = { { "policy", 1, &policy, NULL },
			{ "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
		static const char *const hdr[6] = { "POLICY", "LIST", "KIND", "VALUE", "SKIP", "COMMENT" };
		struct ctl_rows o;
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		ctl_rows_init(&o, json, 6, hdr);
		return ctl_rows_end(&o, store_filter_list_each(c->st, policy, ctl_list_row, &o),
		    "the lists");
	}
	return ctl_usage("unknown list command '%.50s'", sub);
}

/* ---- greylist list|flush ---- */

static int ctl_grey_row(void *ctx, const struct store_greylist *g)
{
	struct ctl_rows *o = ctx;
	char first[32], last[32], exp[32];

	if (o->arr != NULL) {
		json_array_append_new(o->arr, json_pack("{s:s, s:o, s:o, s:I, s:I, s:I, s:b}", "net",
		    g->net, "sender", ctl_json_str(g->sender), "rcpt", ctl_json_str(g->rcpt),
		    "first_seen", (json_int_t)g->first_seen, "last_seen", (json_int_t)g->last_seen,
		    "expires", (json_int_t)g->expires, "passed", g->passed));
		return 0;
	}
	ctl_fmt_time(g->first_seen, first);
	ctl_fmt_time(g->last_seen, last);
	ctl_fmt_time(g->expires, exp);
	{
		const char *cells[7] = { g->net, g->sender[0] ? g->sender : "<>", g->rcpt,
			g->passed ? "passed" : "waiting", first, last, exp };
		ctl_table_add(&o->t, cells);
	}
	return 0;
}

int ctl_greylist_cmd(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "", *pos[1] = { NULL };
	int npos = 0, json = 0;
	char *err = NULL;

	if (strcmp(sub, "list") == 0) {
		const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
		static const char *const hdr[7] = { "NETWORK", "SENDER", "RECIPIENT", "STATE", "FIRST",
			"LAST", "EXPIRES" };
		struct ctl_rows o;
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		ctl_rows_init(&o, json, 7, hdr);
		return ctl_rows_end(&o, store_greylist_list(c->st, (int64_t)time(NULL), 10000,
		    ctl_grey_row, &o), "the greylist");
	}
	if (strcmp(sub, "flush") == 0) {
		char net[64];
		const char *what;
		long n;
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 0, 1, &npos) < 0)
			return ctl_usage(NULL);
		what = pos[0];
		if (what != NULL && strchr(what, '@') == NULL) {
			/* an IP address: its greylist network */
			struct sockaddr_storage ss = { 0 };
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			if (inet_pton(AF_INET, what, &s4->sin_addr) == 1)
				s4->sin_family = AF_INET;
			else if (inet_pton(AF_INET6, what, &s6->sin6_addr) == 1)
				s6->sin6_family = AF_INET6;
			else
				return ctl_usage("greylist flush takes an ADDRESS or an IP, not '%.64s'", what);
			if (filter_grey_net((struct sockaddr *)&ss, net, sizeof(net)) < 0)
				return ctl_fail("no greylist network for %s", what);
			what = net;
		}
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		n = store_greylist_flush(c->st, what, (int64_t)time(NULL), &err);
		if (n < 0)
			return ctl_result(-1, &err, NULL, NULL);
		printf("flushed %ld greylist entr%s\n", n, n == 1 ? "y" : "ies");
		return CTL_EXIT_OK;
	}
	return ctl_usage("unknown greylist command '%.50s'", sub);
}
