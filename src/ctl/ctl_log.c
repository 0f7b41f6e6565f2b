/* ctl_log: `kalectl log search`: filters the mail log through
 * store_log_search and prints an aligned table or a JSON array.
 * Runs only in kalectl. */
#include "ctl/ctl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

#define CTL_LOG_LIMIT_MAX 100000

struct ctl_log_out {
	int json;
	json_t *arr;
	struct ctl_table t;
};

static int ctl_log_row(void *ctx, const struct store_log_row *r)
{
	struct ctl_log_out *o = ctx;
	char when[32];
	const char *sender = r->sender && r->sender[0] == '\0' ? "<>" : r->sender;

	ctl_fmt_time(r->ts, when);
	if (o->json) {
		json_t *j = json_object();
		json_object_set_new(j, "ts", json_integer(r->ts));
		json_object_set_new(j, "time", ctl_json_str(when));
		json_object_set_new(j, "qid", ctl_json_str(r->qid));
		json_object_set_new(j, "session", ctl_json_str(r->session));
		json_object_set_new(j, "action", ctl_json_str(r->action));
		json_object_set_new(j, "from", ctl_json_str(r->sender));
		json_object_set_new(j, "to", ctl_json_str(r->rcpt));
		json_object_set_new(j, "client", ctl_json_str(r->client));
		json_object_set_new(j, "helo", ctl_json_str(r->helo));
		json_object_set_new(j, "code", ctl_json_str(r->code));
		json_object_set_new(j, "reason", ctl_json_str(r->reason));
		json_object_set_new(j, "profile", ctl_json_str(r->profile));
		json_object_set_new(j, "relay", ctl_json_str(r->relay));
		json_object_set_new(j, "size", json_integer(r->size));
		json_object_set_new(j, "delay_ms", json_integer(r->delay_ms));
		json_array_append_new(o->arr, j);
	} else {
		const char *cells[8] = { when, r->qid, r->action, sender, r->rcpt, r->client,
			r->code, r->reason };
		ctl_table_add(&o->t, cells);
	}
	return 0;
}

int ctl_log_cmd(struct ctl *c, int argc, char **argv)
{
	static const char *const hdr[8] = { "TIME", "QID", "ACTION", "FROM", "TO", "CLIENT",
		"CODE", "REASON" };
	const char *since = NULL, *limit = NULL;
	struct store_log_query q;
	struct ctl_log_out o;
	long long n = 0;
	int json = 0, npos = 0, rc;
	const char *pos[1];
	const char *sub = argc > 0 ? argv[0] : "";

	memset(&q, 0, sizeof(q));
	memset(&o, 0, sizeof(o));
	if (strcmp(sub, "search") != 0)
		return ctl_usage("unknown log command '%.50s'", sub);
	{
		const struct ctl_opt opts[] = {
			{ "from", 1, &q.from, NULL }, { "to", 1, &q.to, NULL },
			{ "ip", 1, &q.ip, NULL }, { "action", 1, &q.action, NULL },
			{ "since", 1, &since, NULL }, { "limit", 1, &limit, NULL },
			{ "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
	}
	if (since != NULL && (q.since = ctl_parse_time(since, (int64_t)time(NULL))) < 0)
		return ctl_usage("bad --since '%.50s': use YYYY-MM-DD[THH:MM[:SS]] (UTC) or 30m, 2h, 7d", since);
	if (limit != NULL) {
		if (util_strtonum(limit, 1, CTL_LOG_LIMIT_MAX, &n) < 0)
			return ctl_usage("bad --limit '%.50s': 1-%d", limit, CTL_LOG_LIMIT_MAX);
		q.limit = (int)n;
	}
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	o.json = json;
	if (json)
		o.arr = json_array();
	else
		ctl_table_init(&o.t, 8, hdr);
	rc = store_log_search(c->st, &q, ctl_log_row, &o);
	if (rc == 0) {
		if (json) {
			json_dumpf(o.arr, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
			putchar('\n');
		} else {
			ctl_table_print(&o.t, stdout);
		}
	}
	if (json)
		json_decref(o.arr);
	else
		ctl_table_free(&o.t);
	return rc == 0 ? CTL_EXIT_OK : ctl_fail("log search failed");
}
