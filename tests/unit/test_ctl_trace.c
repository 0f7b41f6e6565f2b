/* Unit tests for src/ctl/ctl_trace.c: a mail-log row as a trace step
 * (phase, check, result, reason), and the verdict, reply and outcome of a
 * whole trace. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ctl/ctl_trace.h"

#define QID "0123456789ABCDEF01234567"

static void step(struct ctl_trace_step *st, const char *action, const char *qid,
    const char *rcpt, const char *code, const char *reason, const char *relay)
{
	struct store_log_row r = { .ts = 7, .qid = qid, .client = "192.0.2.1", .action = action,
		.rcpt = rcpt, .code = code, .reason = reason, .relay = relay, .sender = "a@b.test" };
	ctl_trace_step_of(&r, st);
}

static void expect(const struct ctl_trace_step *st, const char *phase, const char *check,
    const char *result, const char *reason)
{
	assert_string_equal(st->phase, phase);
	assert_string_equal(st->check, check);
	assert_string_equal(st->result, result);
	assert_string_equal(st->reason, reason);
}

static void test_steps(void **state)
{
	struct ctl_trace_step st;

	(void)state;
	step(&st, "connect", NULL, NULL, NULL, "smtp", NULL);
	expect(&st, "connect", "connect", "pass", "client 192.0.2.1, smtp");
	assert_int_equal(st.ts, 7);
	assert_string_equal(st.action, "connect");
	/* a check that failed without deciding: its name and phase from the reason */
	step(&st, "checked", NULL, "x@y.test", NULL, "dnsbl: bl.test lists 192.0.2.1", NULL);
	expect(&st, "connect", "dnsbl", "fail", "bl.test lists 192.0.2.1");
	assert_string_equal(st.rcpt, "x@y.test");
	step(&st, "checked", NULL, "x@y.test", NULL, "spf: fail", NULL);
	expect(&st, "mail", "spf", "fail", "fail");
	step(&st, "checked", NULL, NULL, NULL, "lists: block helo x", NULL);
	expect(&st, "rcpt", "lists", "fail", "block helo x");
	step(&st, "checked", NULL, NULL, NULL, "Not a check: x", NULL);
	expect(&st, "rcpt", "check", "fail", "Not a check: x");
	/* refused RCPTs: by a check, by the verification profile, by smtpd */
	step(&st, "rejected", NULL, "x@y.test", "554 5.7.1", "lists: block sender @b.test", NULL);
	expect(&st, "rcpt", "lists", "fail", "block sender @b.test");
	assert_string_equal(st.code, "554 5.7.1");
	step(&st, "greylisted", NULL, "x@y.test", "451 4.7.1", "greylist: try later", NULL);
	expect(&st, "rcpt", "greylist", "temperror", "try later");
	{
		struct store_log_row r = { .action = "rejected", .rcpt = "n@y.test", .code = "550 5.1.1",
			.reason = "user unknown", .profile = "ldap1" };
		ctl_trace_step_of(&r, &st);
		expect(&st, "rcpt", "verify", "fail", "user unknown");
	}
	step(&st, "rejected", NULL, "n@y.test", "550 5.1.1", "Recipient address rejected: User unknown",
	    NULL);
	expect(&st, "rcpt", "rcpt", "fail", "Recipient address rejected: User unknown");
	step(&st, "rejected", NULL, NULL, "553 5.7.1", "not yours", NULL);
	expect(&st, "mail", "smtp", "fail", "not yours");
	step(&st, "rejected", QID, NULL, "552 5.3.4", "Message too big", NULL);
	expect(&st, "data", "data", "fail", "Message too big");
	step(&st, "rejected", QID, NULL, "550 5.7.1", "dmarc: p=reject for b.test", NULL);
	expect(&st, "data", "dmarc", "fail", "p=reject for b.test");
	step(&st, "rcpt", NULL, "x@y.test", "250 2.1.5", NULL, NULL);
	expect(&st, "rcpt", "rcpt", "pass", "");
	step(&st, "accepted", QID, "x@y.test", "250 2.0.0", NULL, NULL);
	expect(&st, "queue", "queued", "pass", "queued as " QID);
	/* delivery attempts */
	step(&st, "delivered", QID, "x@y.test", "250 2.0.0", NULL, "mail/y.test/x/new");
	expect(&st, "delivery", "delivery", "pass", "to mail/y.test/x/new");
	step(&st, "deferred", QID, "x@y.test", "451 4.4.1", "connection refused", "mx.y.test");
	expect(&st, "delivery", "delivery", "temperror", "connection refused (mx.y.test)");
	step(&st, "bounced", QID, "x@y.test", "550 5.1.1", "no such user", NULL);
	expect(&st, "delivery", "delivery", "fail", "no such user");
	step(&st, "held", QID, "x@y.test", NULL, "held by the administrator", NULL);
	expect(&st, "queue", "admin", "held", "held by the administrator");
	step(&st, "something-new", QID, NULL, NULL, NULL, NULL);
	expect(&st, "queue", "something-new", "none", "");
	{
		struct store_log_row r = { 0 };
		ctl_trace_step_of(&r, &st);
		expect(&st, "connect", "log", "none", "");
	}
}

static void test_end(void **state)
{
	struct ctl_trace_step s[8];
	struct ctl_trace_end e;

	(void)state;
	/* accepted, one recipient delivered, one deferred then bounced */
	step(&s[0], "connect", NULL, NULL, NULL, "smtp", NULL);
	step(&s[1], "accepted", QID, "x@y.test", "250 2.0.0", NULL, NULL);
	step(&s[2], "deferred", QID, "x@y.test", "451 4.4.1", "refused", NULL);
	step(&s[3], "delivered", QID, "z@y.test", "250 2.0.0", NULL, "box");
	ctl_trace_end_of(QID, s, 4, &e);
	assert_string_equal(e.verdict, "accept");
	assert_string_equal(e.reply, "250 2.0.0 Ok: queued as " QID);
	expect(&e.outcome, "outcome", "queue", "pending", "1 delivered, 1 pending");
	step(&s[4], "delivered", QID, "X@y.test", "250 2.0.0", NULL, "box");
	ctl_trace_end_of(QID, s, 5, &e);
	expect(&e.outcome, "outcome", "queue", "delivered", "2 delivered");
	step(&s[4], "bounced", QID, "x@y.test", "550 5.1.1", "gone", NULL);
	ctl_trace_end_of(QID, s, 5, &e);
	expect(&e.outcome, "outcome", "queue", "mixed", "1 delivered, 1 bounced");
	assert_int_equal(e.outcome.ts, 7);
	/* queued, not tried yet; held */
	ctl_trace_end_of(QID, s, 2, &e);
	expect(&e.outcome, "outcome", "queue", "pending", "no delivery attempt yet");
	step(&s[2], "held", QID, "x@y.test", NULL, "held by the administrator", NULL);
	ctl_trace_end_of(QID, s, 3, &e);
	assert_string_equal(e.outcome.result, "held");
	step(&s[3], "released", QID, "x@y.test", NULL, "released", NULL);
	ctl_trace_end_of(QID, s, 4, &e);
	assert_string_equal(e.outcome.result, "pending");
	/* refused at the end of DATA */
	step(&s[1], "rejected", QID, NULL, "552 5.3.4", "Message too big", NULL);
	ctl_trace_end_of(QID, s, 2, &e);
	assert_string_equal(e.verdict, "reject");
	assert_string_equal(e.reply, "552 5.3.4 Message too big");
	expect(&e.outcome, "outcome", "queue", "rejected", "not queued");
	step(&s[1], "rejected", QID, NULL, "451 4.3.0", "try later", NULL);
	ctl_trace_end_of(QID, s, 2, &e);
	assert_string_equal(e.verdict, "tempfail");
	step(&s[1], "rejected", QID, NULL, "550 5.7.1", "dmarc: p=reject", NULL);
	ctl_trace_end_of(QID, s, 2, &e);
	assert_string_equal(e.reply, "550 5.7.1 dmarc: p=reject");
	ctl_trace_end_of(QID, s, 0, &e);
	assert_string_equal(e.verdict, "reject");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_steps),
		cmocka_unit_test(test_end),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
