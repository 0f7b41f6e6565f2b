/* ctl_trace: kalectl trace QID [--json] (operator.md §9): every decision
 * about one message, in order, from the mail log: the SMTP session's
 * connect row, the checks that failed without deciding, each RCPT (refused
 * or taken), the queueing, each delivery attempt and the outcome. The rows
 * come from store_log_trace; ctl_trace_step_of and ctl_trace_end_of
 * (ctl_trace.h) make steps, verdict and reply of them. Reads the store
 * only. Runs only in kalectl. */
#include "ctl/ctl.h"
#include "ctl/ctl_trace.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"
#include "queue/queue_file.h"

#define CTL_TRACE_ROWS 10000     /* rows of one message read at most */
#define CTL_TRACE_ADDRS 1000     /* recipients counted in the outcome */

static const char *ctl_str(const char *s)
{
	return s != NULL ? s : "";
}

/* "dnsbl" of "dnsbl: bl.test ...": the check a filter reason names, if
 * the reason starts with a lower-case word and ": ". 1 (word in out), 0. */
static int ctl_trace_reason_check(const char *reason, char *out, size_t cap, const char **rest_r)
{
	size_t n = 0;

	if (reason == NULL)
		return 0;
	while (n < cap - 1 && reason[n] >= 'a' && reason[n] <= 'z')
		n++;
	if (n == 0 || n >= cap - 1 || reason[n] != ':' || (reason[n + 1] != ' ' &&
	    reason[n + 1] != '\0'))
		return 0;
	memcpy(out, reason, n);
	out[n] = '\0';
	*rest_r = reason + n + 1 + (reason[n + 1] == ' ');
	return 1;
}

/* The phase a check runs in (src/filter/: each check's .phase, dkim and
 * dmarc at the end of DATA); the pipeline decides the others at RCPT, so an
 * unknown one is "rcpt". */
static const char *ctl_trace_check_phase(const char *check)
{
	static const char *const names[][2] = { { "dnsbl", "connect" }, { "rdns", "connect" },
		{ "fcrdns", "connect" }, { "helo", "helo" }, { "spf", "mail" }, { "dkim", "data" },
		{ "dmarc", "data" } };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(check, names[i][0]) == 0)
			return names[i][1];
	return "rcpt";
}

static void ctl_set(char *dst, size_t cap, const char *s)
{
	(void)util_fmt(dst, cap, "%s", s != NULL ? s : "");
}

void ctl_trace_step_of(const struct store_log_row *r, struct ctl_trace_step *st)
{
	const char *act = ctl_str(r->action), *rest = NULL;
	char word[24];

	memset(st, 0, sizeof(*st));
	st->ts = r->ts;
	ctl_set(st->action, sizeof(st->action), act);
	ctl_set(st->rcpt, sizeof(st->rcpt), r->rcpt);
	ctl_set(st->code, sizeof(st->code), r->code);
	if (strcmp(act, "connect") == 0) {
		ctl_set(st->phase, sizeof(st->phase), "connect");
		ctl_set(st->check, sizeof(st->check), "connect");
		ctl_set(st->result, sizeof(st->result), "pass");
		(void)util_fmt(st->reason, sizeof(st->reason), "client %s%s%s", ctl_str(r->client),
		    r->reason != NULL && r->reason[0] ? ", " : "", ctl_str(r->reason));
	} else if (strcmp(act, "checked") == 0) {
		/* a check that failed (or erred) without deciding the recipient */
		if (!ctl_trace_reason_check(r->reason, word, sizeof(word), &rest)) {
			ctl_set(word, sizeof(word), "check");
			rest = r->reason;
		}
		ctl_set(st->phase, sizeof(st->phase), ctl_trace_check_phase(word));
		ctl_set(st->check, sizeof(st->check), word);
		ctl_set(st->result, sizeof(st->result), "fail");
		ctl_set(st->reason, sizeof(st->reason), rest);
	} else if (strcmp(act, "rcpt") == 0) {
		ctl_set(st->phase, sizeof(st->phase), "rcpt");
		ctl_set(st->check, sizeof(st->check), "rcpt");
		ctl_set(st->result, sizeof(st->result), "pass");
		ctl_set(st->reason, sizeof(st->reason), r->reason);
	} else if (strcmp(act, "rejected") == 0 || strcmp(act, "greylisted") == 0) {
		/* a check's refusal ("check: why") names the check; the rest is smtpd's */
		int temp = r->code != NULL && r->code[0] == '4';
		int by_check = ctl_trace_reason_check(r->reason, word, sizeof(word), &rest);
		if (r->qid != NULL && r->qid[0]) {
			ctl_set(st->phase, sizeof(st->phase), "data");
			ctl_set(st->check, sizeof(st->check), by_check ? word : "data");
		} else if (r->rcpt != NULL && r->rcpt[0]) {
			ctl_set(st->phase, sizeof(st->phase), "rcpt");
			ctl_set(st->check, sizeof(st->check), by_check ? word : r->profile != NULL &&
			    r->profile[0] ? "verify" : "rcpt");
		} else {
			ctl_set(st->phase, sizeof(st->phase), r->sender != NULL ? "mail" : r->helo != NULL
			    ? "helo" : "connect");
			ctl_set(st->check, sizeof(st->check), by_check ? word : "smtp");
		}
		ctl_set(st->result, sizeof(st->result), temp ? "temperror" : "fail");
		ctl_set(st->reason, sizeof(st->reason), by_check ? rest : r->reason);
	} else if (strcmp(act, "accepted") == 0) {
		ctl_set(st->phase, sizeof(st->phase), "queue");
		ctl_set(st->check, sizeof(st->check), "queued");
		ctl_set(st->result, sizeof(st->result), "pass");
		(void)util_fmt(st->reason, sizeof(st->reason), "queued as %s", ctl_str(r->qid));
	} else if (strcmp(act, "delivered") == 0 || strcmp(act, "deferred") == 0 ||
	    strcmp(act, "bounced") == 0 || strcmp(act, "expired") == 0) {
		ctl_set(st->phase, sizeof(st->phase), "delivery");
		ctl_set(st->check, sizeof(st->check), "delivery");
		ctl_set(st->result, sizeof(st->result), strcmp(act, "delivered") == 0 ? "pass"
		    : strcmp(act, "deferred") == 0 ? "temperror" : "fail");
		(void)util_fmt(st->reason, sizeof(st->reason), "%s%s%s%s", ctl_str(r->reason),
		    r->relay != NULL && r->relay[0] ? (r->reason != NULL && r->reason[0] ? " (" : "to ")
		    : "", ctl_str(r->relay), r->relay != NULL && r->relay[0] && r->reason != NULL &&
		    r->reason[0] ? ")" : "");
	} else if (strcmp(act, "held") == 0 || strcmp(act, "released") == 0 ||
	    strcmp(act, "deleted") == 0) {
		ctl_set(st->phase, sizeof(st->phase), "queue");
		ctl_set(st->check, sizeof(st->check), "admin");
		ctl_set(st->result, sizeof(st->result), act);
		ctl_set(st->reason, sizeof(st->reason), r->reason);
	} else {
		ctl_set(st->phase, sizeof(st->phase), r->qid != NULL ? "queue" : "connect");
		ctl_set(st->check, sizeof(st->check), act[0] ? act : "log");
		ctl_set(st->result, sizeof(st->result), "none");
		ctl_set(st->reason, sizeof(st->reason), r->reason);
	}
}

/* The last state of each recipient the queue manager named. */
struct ctl_trace_addr {
	const char *addr;
	const char *state;   /* delivered bounced expired deleted pending */
};

static void ctl_trace_addr_set(struct ctl_trace_addr *a, int *n, const char *addr,
    const char *state)
{
	for (int i = 0; i < *n; i++)
		if (strcasecmp(a[i].addr, addr) == 0) {
			a[i].state = state;
			return;
		}
	if (*n < CTL_TRACE_ADDRS) {
		a[*n].addr = addr;
		a[*n].state = state;
		(*n)++;
	}
}

void ctl_trace_end_of(const char *qid, const struct ctl_trace_step *steps, int n,
    struct ctl_trace_end *e)
{
	static const char *const states[] = { "delivered", "bounced", "expired", "deleted",
		"pending" };
	struct ctl_trace_addr *a = xcalloc(CTL_TRACE_ADDRS, sizeof(*a));
	const struct ctl_trace_step *refused = NULL;
	int queued = 0, held = 0, na = 0, count[5] = { 0 }, kinds = 0, last = -1;
	char *o;
	size_t left;

	memset(e, 0, sizeof(*e));
	for (int i = 0; i < n; i++) {
		const struct ctl_trace_step *s = &steps[i];
		if (strcmp(s->action, "accepted") == 0)
			queued = 1;
		else if (strcmp(s->phase, "data") == 0 && strcmp(s->action, "rejected") == 0)
			refused = s;
		else if (strcmp(s->action, "held") == 0)
			held = 1;
		else if (strcmp(s->action, "released") == 0)
			held = 0;
		if (strcmp(s->phase, "delivery") != 0 && strcmp(s->check, "admin") != 0)
			continue;
		queued = 1;
		if (s->rcpt[0] == '\0')
			continue;
		ctl_trace_addr_set(a, &na, s->rcpt, strcmp(s->action, "delivered") == 0 ? states[0]
		    : strcmp(s->action, "bounced") == 0 ? states[1] : strcmp(s->action, "expired") == 0
		    ? states[2] : strcmp(s->action, "deleted") == 0 ? states[3] : states[4]);
	}
	if (n > 0)
		e->outcome.ts = steps[n - 1].ts;
	ctl_set(e->outcome.phase, sizeof(e->outcome.phase), "outcome");
	ctl_set(e->outcome.check, sizeof(e->outcome.check), "queue");
	ctl_set(e->outcome.action, sizeof(e->outcome.action), "outcome");
	if (!queued) {
		const char *code = refused != NULL && refused->code[0] ? refused->code : "554 5.7.1";
		e->verdict = code[0] == '4' ? "tempfail" : "reject";
		int named = refused != NULL && strcmp(refused->check, "data") != 0;
		(void)util_fmt(e->reply, sizeof(e->reply), "%s %s%s%s", code, named ? refused->check
		    : "", named ? ": " : "", refused != NULL ? refused->reason : "not queued");
		ctl_set(e->outcome.result, sizeof(e->outcome.result), "rejected");
		ctl_set(e->outcome.reason, sizeof(e->outcome.reason), "not queued");
		free(a);
		return;
	}
	e->verdict = "accept";
	(void)util_fmt(e->reply, sizeof(e->reply), "250 2.0.0 Ok: queued as %s", qid);
	for (int i = 0; i < na; i++)
		for (int k = 0; k < 5; k++)
			if (a[i].state == states[k])
				count[k]++;
	for (int k = 0; k < 5; k++)
		if (count[k] > 0) {
			kinds++;
			last = k;
		}
	if (na == 0 || count[4] > 0)
		ctl_set(e->outcome.result, sizeof(e->outcome.result), held ? "held" : "pending");
	else
		ctl_set(e->outcome.result, sizeof(e->outcome.result), kinds == 1 ? states[last] : "mixed");
	o = e->outcome.reason;
	left = sizeof(e->outcome.reason);
	if (na == 0)
		(void)util_fmt(o, left, "no delivery attempt yet");
	for (int k = 0; k < 5 && na > 0; k++) {
		size_t len;
		if (count[k] == 0)
			continue;
		(void)util_fmt(o, left, "%s%d %s", o == e->outcome.reason ? "" : ", ", count[k],
		    states[k]);
		len = strlen(o);
		o += len;
		left -= len;
	}
	free(a);
}

/* ---------- the command ---------- */

struct ctl_trace_rows {
	struct ctl_trace_step *steps;
	int n, cap;
};

static int ctl_trace_row(void *ctx, const struct store_log_row *r)
{
	struct ctl_trace_rows *t = ctx;

	if (t->n >= CTL_TRACE_ROWS)
		return 1;
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 32;
		t->steps = xrealloc(t->steps, sizeof(*t->steps) * (size_t)t->cap);
	}
	ctl_trace_step_of(r, &t->steps[t->n++]);
	return 0;
}

static json_t *ctl_trace_json_step(const struct ctl_trace_step *s, const char *node)
{
	char when[32];

	ctl_fmt_time(s->ts, when);
	return json_pack("{s:s, s:s, s:s, s:o, s:s, s:I, s:s, s:s, s:o, s:o}", "phase", s->phase,
	    "check", s->check, "result", s->result, "reason", ctl_json_str(s->reason), "time", when,
	    "ts", (json_int_t)s->ts, "node", node, "action", s->action,
	    "rcpt", s->rcpt[0] ? ctl_json_str(s->rcpt) : json_null(),
	    "code", s->code[0] ? ctl_json_str(s->code) : json_null());
}

static void ctl_trace_table_add(struct ctl_table *tb, const struct ctl_trace_step *s,
    const char *node)
{
	char when[32], why[1600];
	const char *cells[6];

	ctl_fmt_time(s->ts, when);
	(void)util_fmt(why, sizeof(why), "%s%s%s%s%s%s%s", s->rcpt[0] ? "<" : "", s->rcpt,
	    s->rcpt[0] ? ">" : "", s->rcpt[0] && s->code[0] ? " " : "", s->code,
	    (s->rcpt[0] || s->code[0]) && s->reason[0] ? " " : "", s->reason);
	cells[0] = when;
	cells[1] = node;
	cells[2] = s->phase;
	cells[3] = s->check;
	cells[4] = s->result;
	cells[5] = why;
	ctl_table_add(tb, cells);
}

static int ctl_trace_print(const char *qid, const char *node, const struct ctl_trace_rows *t,
    int json)
{
	static const char *const hdr[6] = { "TIME", "NODE", "PHASE", "CHECK", "RESULT", "REASON" };
	struct ctl_trace_end e;
	struct ctl_table tb;
	json_t *steps;

	ctl_trace_end_of(qid, t->steps, t->n, &e);
	if (json) {
		steps = json_array();
		for (int i = 0; i < t->n; i++)
			json_array_append_new(steps, ctl_trace_json_step(&t->steps[i], node));
		json_array_append_new(steps, ctl_trace_json_step(&e.outcome, node));
		return ctl_print_json(json_pack("{s:s, s:s, s:s, s:o}", "qid", qid, "verdict",
		    e.verdict, "reply", e.reply, "steps", steps));
	}
	ctl_table_init(&tb, 6, hdr);
	for (int i = 0; i < t->n; i++)
		ctl_trace_table_add(&tb, &t->steps[i], node);
	ctl_trace_table_add(&tb, &e.outcome, node);
	printf("qid: %s\n", qid);
	ctl_table_print(&tb, stdout);
	ctl_table_free(&tb);
	printf("verdict: %s\nreply: %s\n", e.verdict, e.reply);
	return CTL_EXIT_OK;
}

int ctl_trace_cmd(struct ctl *c, int argc, char **argv)
{
	int json = 0, npos = 0, rc;
	const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
	struct ctl_trace_rows t = { 0 };
	const char *pos[1];

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage("trace takes: QID [--json]");
	if (!queue_qid_valid(pos[0]))
		return ctl_usage("bad queue id '%.50s'", pos[0]);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	rc = store_log_trace(c->st, pos[0], CTL_TRACE_ROWS, ctl_trace_row, &t);
	if (rc < 0)
		rc = ctl_fail("cannot read the mail log");
	else if (t.n == 0)
		rc = ctl_fail("no message %s in the mail log", pos[0]);
	else
		rc = ctl_trace_print(pos[0], c->cfg.hostname, &t, json);
	free(t.steps);
	return rc;
}
