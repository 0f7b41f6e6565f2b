/* test_filter_conf: filter policies in the policy store (store_filter.c)
 * and what filter_conf makes of them: the default policy, built-in check
 * settings, stored rows merged over them, copies, deletion rules, lists,
 * the version that moves on every change, greylist rows, and the check
 * options kalectl may set (durations, zones with weights, bad values). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "filter/filter.h"
#include "filter/filter_conf.h"
#include "lib/util.h"
#include "store/store.h"
#include "unit_store.h"

static int setup(void **state)
{
	*state = unit_store_new("filter");
	return 0;
}

static int64_t version(store *st)
{
	int64_t v = -1;

	assert_int_equal(store_filter_version(st, &v), 0);
	return v;
}

static void expect_err(int rc, char **err, const char *part)
{
	assert_int_equal(rc, -1);
	assert_non_null(*err);
	if (strstr(*err, part) == NULL)
		fail_msg("error '%s' lacks '%s'", *err, part);
	free(*err);
	*err = NULL;
}

static void test_default_policy(void **state)
{
	struct fix *f = *state;
	struct filter_policy_conf *c = NULL;
	const struct filter_check_conf *cc;
	char *err = NULL;

	assert_int_equal(filter_conf_load(f->st, "DEFAULT", &c, &err), 0);
	assert_string_equal(c->name, "default");
	assert_true(c->tag == 5 && c->quarantine == 10 && c->reject == 15);
	/* built-in: dnsbl on without zones, greylist off with its defaults */
	cc = filter_conf_check(c, "dnsbl");
	assert_int_equal(cc->action, FILTER_ACT_REJECT);
	assert_int_equal(json_array_size(json_object_get(cc->opts, "zones")), 0);
	cc = filter_conf_check(c, "greylist");
	assert_int_equal(cc->action, FILTER_ACT_OFF);
	assert_int_equal(json_integer_value(json_object_get(cc->opts, "delay")), 300);
	assert_null(filter_conf_check(c, "nosuch"));
	filter_conf_free(&c);
	assert_null(c);
	expect_err(filter_conf_load(f->st, "missing", &c, &err), &err, "no filter policy 'missing'");
	/* the default policy stays */
	expect_err(store_filter_policy_del(f->st, "Default", &err), &err, "cannot be deleted");
}

static void test_check_rows_merge_and_copy(void **state)
{
	struct fix *f = *state;
	struct store_filter_check row = { .name = "greylist", .action = "tempfail",
		.on_error = "pass", .options = "{\"delay\": 60}" };
	struct filter_policy_conf *c = NULL;
	const struct filter_check_conf *cc;
	char *err = NULL;
	int64_t v0 = version(f->st);

	assert_int_equal(store_filter_check_set(f->st, "default", &row, &err), 0);
	assert_true(version(f->st) > v0);
	assert_int_equal(filter_conf_load(f->st, "default", &c, &err), 0);
	cc = filter_conf_check(c, "greylist");
	assert_int_equal(cc->action, FILTER_ACT_TEMPFAIL);
	assert_int_equal(cc->on_error_pass, 1);
	/* the stored option over the default; the others kept */
	assert_int_equal(json_integer_value(json_object_get(cc->opts, "delay")), 60);
	assert_int_equal(json_integer_value(json_object_get(cc->opts, "auto-allow")), 5);
	filter_conf_free(&c);

	/* a copy has the rows; a new policy the built-in settings */
	assert_int_equal(store_filter_policy_add(f->st, "strict", "default", &err), 0);
	assert_int_equal(store_filter_policy_add(f->st, "plain", NULL, &err), 0);
	expect_err(store_filter_policy_add(f->st, "STRICT", NULL, &err), &err, "already exists");
	expect_err(store_filter_policy_add(f->st, "bad name", NULL, &err), &err, "bad filter policy name");
	expect_err(store_filter_policy_add(f->st, "x", "nope", &err), &err, "no filter policy 'nope'");
	assert_int_equal(filter_conf_load(f->st, "strict", &c, &err), 0);
	assert_int_equal(filter_conf_check(c, "greylist")->action, FILTER_ACT_TEMPFAIL);
	filter_conf_free(&c);
	assert_int_equal(filter_conf_load(f->st, "plain", &c, &err), 0);
	assert_int_equal(filter_conf_check(c, "greylist")->action, FILTER_ACT_OFF);
	filter_conf_free(&c);

	/* a row this build cannot read is an error, not a silent default */
	snprintf(row.action, sizeof(row.action), "explode");
	assert_int_equal(store_filter_check_set(f->st, "plain", &row, &err), 0);
	expect_err(filter_conf_load(f->st, "plain", &c, &err), &err, "unknown action 'explode'");
	/* a check this build does not have is ignored (a newer node wrote it) */
	snprintf(row.name, sizeof(row.name), "future");
	snprintf(row.action, sizeof(row.action), "reject");
	assert_int_equal(store_filter_check_set(f->st, "strict", &row, &err), 0);
	assert_int_equal(filter_conf_load(f->st, "strict", &c, &err), 0);
	filter_conf_free(&c);

	/* scores */
	assert_int_equal(store_filter_policy_scores(f->st, "strict", 1, 2, 3, &err), 0);
	assert_int_equal(filter_conf_load(f->st, "strict", &c, &err), 0);
	assert_true(c->tag == 1 && c->quarantine == 2 && c->reject == 3);
	filter_conf_free(&c);
	expect_err(store_filter_policy_scores(f->st, "nope", 1, 2, 3, &err), &err, "no filter policy");
}

static void test_domains_and_delete(void **state)
{
	struct fix *f = *state;
	struct store_domain d = { .name = "example.test", .local = 1 };
	char *err = NULL;

	assert_int_equal(store_domain_add(f->st, &d, &err), 0);
	assert_int_equal(store_domain_get(f->st, "example.test", &d), 1);
	assert_string_equal(d.filter, "default");
	assert_int_equal(store_filter_policy_add(f->st, "strict", NULL, &err), 0);
	expect_err(store_domain_set_filter(f->st, "example.test", "nope", &err), &err,
	    "no filter policy 'nope'");
	expect_err(store_domain_set_filter(f->st, "nope.test", "strict", &err), &err, "does not exist");
	assert_int_equal(store_domain_set_filter(f->st, "example.test", "strict", &err), 0);
	assert_int_equal(store_domain_get(f->st, "example.test", &d), 1);
	assert_string_equal(d.filter, "strict");
	expect_err(store_filter_policy_del(f->st, "strict", &err), &err, "used by 1 domain");
	assert_int_equal(store_domain_set_filter(f->st, "example.test", "default", &err), 0);
	assert_int_equal(store_filter_policy_del(f->st, "strict", &err), 0);
	expect_err(store_filter_policy_del(f->st, "strict", &err), &err, "no filter policy");
}

static int count_lists(void *ctx, const struct store_filter_list *l)
{
	(void)l;
	(*(int *)ctx)++;
	return 0;
}

static void test_lists(void **state)
{
	struct fix *f = *state;
	struct store_filter_list l = { .list = "block", .kind = "sender", .value = "@spam.test" };
	struct filter_policy_conf *c = NULL;
	char *err = NULL;
	int64_t v0 = version(f->st);
	int n = 0;

	assert_int_equal(store_filter_list_add(f->st, &l, &err), 0);
	assert_true(version(f->st) > v0);
	expect_err(store_filter_list_add(f->st, &l, &err), &err, "already exists");
	snprintf(l.policy, sizeof(l.policy), "nope");
	expect_err(store_filter_list_add(f->st, &l, &err), &err, "no filter policy");
	l.policy[0] = '\0';
	assert_int_equal(filter_conf_load(f->st, "default", &c, &err), 0);
	assert_int_equal(c->n_lists, 1);
	assert_string_equal(filter_conf_lists(c, &n)[0].value, "@spam.test");
	filter_conf_free(&c);
	n = 0;
	assert_int_equal(store_filter_list_each(f->st, NULL, count_lists, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(store_filter_list_del(f->st, &l, &err), 0);
	expect_err(store_filter_list_del(f->st, &l, &err), &err, "no block sender entry");

	/* what kalectl checks before it writes */
	assert_int_equal(filter_list_check("allow", "client", "192.0.2.0/24", "dnsbl,greylist", &err), 0);
	assert_int_equal(filter_list_check("block", "recipient", "a@b.test", "", &err), 0);
	expect_err(filter_list_check("deny", "client", "192.0.2.1", "", &err), &err, "allow or block");
	expect_err(filter_list_check("block", "client", "192.0.2.300", "", &err), &err, "IP address or CIDR");
	expect_err(filter_list_check("block", "client", "2001:db8::/129", "", &err), &err, "CIDR");
	expect_err(filter_list_check("block", "sender", "nodomain", "", &err), &err, "ADDRESS or @DOMAIN");
	expect_err(filter_list_check("block", "sender", "a b@c.test", "", &err), &err, "no spaces");
	expect_err(filter_list_check("block", "ip", "1.2.3.4", "", &err), &err, "list kind");
	expect_err(filter_list_check("allow", "helo", "x.test", "dnsbl,nosuch", &err), &err,
	    "unknown check 'nosuch'");
	expect_err(filter_list_check("block", "helo", "x.test", "dnsbl", &err), &err, "for allow");
}

static void test_greylist_rows(void **state)
{
	struct fix *f = *state;
	struct store_greylist g = { .net = "192.0.2.0/24", .sender = "a@x.test", .rcpt = "b@y.test",
		.first_seen = 100, .last_seen = 100, .expires = 1000 };
	struct store_greylist r;
	int64_t v0 = version(f->st), exp;
	int passes;
	char *err = NULL;

	assert_int_equal(store_greylist_get(f->st, g.net, g.sender, g.rcpt, &r), 0);
	assert_int_equal(store_greylist_put(f->st, &g), 0);
	assert_int_equal(store_greylist_get(f->st, g.net, "A@X.TEST", g.rcpt, &r), 1);
	assert_int_equal(r.first_seen, 100);
	g.passed = 1;
	assert_int_equal(store_greylist_put(f->st, &g), 0);
	assert_int_equal(store_greylist_get(f->st, g.net, g.sender, g.rcpt, &r), 1);
	assert_int_equal(r.passed, 1);
	/* greylist state is not policy: the filter caches stay */
	assert_int_equal(version(f->st), v0);
	assert_int_equal(store_greylist_client_put(f->st, g.net, 3, 2000), 0);
	assert_int_equal(store_greylist_client_get(f->st, g.net, &passes, &exp), 1);
	assert_int_equal(passes, 3);
	/* flush by address; any flush also drops what has expired */
	assert_int_equal(store_greylist_flush(f->st, "nobody@x.test", 50, &err), 0);
	assert_int_equal(store_greylist_flush(f->st, "b@y.test", 50, &err), 1);
	assert_int_equal(store_greylist_put(f->st, &g), 0);
	assert_int_equal(store_greylist_flush(f->st, "nobody@x.test", 1500, &err), 1);
	assert_int_equal(store_greylist_client_get(f->st, g.net, &passes, &exp), 1);
	/* everything, remembered clients too */
	assert_int_equal(store_greylist_put(f->st, &g), 0);
	assert_int_equal(store_greylist_flush(f->st, NULL, 50, &err), 1);
	assert_int_equal(store_greylist_client_get(f->st, g.net, &passes, &exp), 0);
}

static void test_options(void **state)
{
	json_t *o = json_object();
	char *err = NULL;

	(void)state;
	assert_int_equal(filter_conf_set_option("greylist", "delay", "5m", o, &err), 0);
	assert_int_equal(json_integer_value(json_object_get(o, "delay")), 300);
	expect_err(filter_conf_set_option("greylist", "delay", "2d", o, &err), &err, "duration");
	expect_err(filter_conf_set_option("greylist", "delay", "soon", o, &err), &err, "duration");
	expect_err(filter_conf_set_option("greylist", "zones", "x.test", o, &err), &err,
	    "no option --zones");
	assert_int_equal(filter_conf_set_option("dnsbl", "zones", "zen.example=2, bl.example", o, &err), 0);
	{
		json_t *z = json_object_get(o, "zones");
		assert_int_equal(json_array_size(z), 2);
		assert_string_equal(json_string_value(json_object_get(json_array_get(z, 0), "zone")),
		    "zen.example");
		assert_true(json_number_value(json_object_get(json_array_get(z, 0), "weight")) == 2);
		assert_true(json_number_value(json_object_get(json_array_get(z, 1), "weight")) == 1);
	}
	expect_err(filter_conf_set_option("dnsbl", "zones", "bad..zone", o, &err), &err, "bad zone");
	expect_err(filter_conf_set_option("dnsbl", "zones", "x.test=heavy", o, &err), &err, "bad weight");
	expect_err(filter_conf_set_option("dnsbl", "threshold", "-1", o, &err), &err, "number");
	expect_err(filter_conf_set_option("nosuch", "x", "1", o, &err), &err, "unknown check");
	json_decref(o);
	{
		enum filter_action a;
		assert_int_equal(filter_action_parse("quarantine", &a), 0);
		assert_int_equal(a, FILTER_ACT_QUARANTINE);
		assert_string_equal(filter_action_name(a), "quarantine");
		assert_int_equal(filter_action_parse("Reject", &a), -1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_default_policy, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_check_rows_merge_and_copy, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_domains_and_delete, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_lists, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_greylist_rows, setup, unit_store_free),
		cmocka_unit_test(test_options),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
