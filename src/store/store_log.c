/* store_log: the mail log. Rows are batched in memory and written in one
 * transaction per flush (never one per event); searches are bound queries.
 * Runs in kaled's smtpd and qmgr (add/flush) and in kalectl (search). */
#include "store/store_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

#define STORE_LOG_FIELD_MAX 1000  /* longer strings are cut */
#define STORE_LOG_LIMIT_MAX 100000
#define STORE_LOG_NSTR 11         /* the string fields of a row, as struct store_log_item */
#define STORE_LOG_COLS "ts, qid, client, helo, sender, rcpt, action, code, reason, profile, " \
	"relay, size, delay_ms, session"

void store_log_add(store *st, const struct store_log_row *row)
{
	struct store_log_item *it;
	const char *f[STORE_LOG_NSTR] = { row->qid, row->client, row->helo, row->sender,
		row->rcpt, row->action, row->code, row->reason, row->profile, row->relay,
		row->session };

	if (st->n_log >= STORE_LOG_BATCH)
		store_log_flush(st);
	if (st->n_log >= STORE_LOG_MAX) {
		st->log_dropped++;
		return;
	}
	if (st->n_log == st->cap_log) {
		st->cap_log = st->cap_log ? st->cap_log * 2 : 64;
		if (st->cap_log > STORE_LOG_MAX)
			st->cap_log = STORE_LOG_MAX;
		st->log = xrealloc(st->log, sizeof(*st->log) * (size_t)st->cap_log);
	}
	it = &st->log[st->n_log++];
	it->ts = row->ts != 0 ? row->ts : (int64_t)time(NULL);
	it->size = row->size;
	it->delay_ms = row->delay_ms;
	for (int i = 0; i < STORE_LOG_NSTR; i++) {
		const char *v = f[i];
		it->s[i] = v ? xstrndup(v, strnlen(v, STORE_LOG_FIELD_MAX)) : NULL;
	}
}

static void store_log_item_free(struct store_log_item *it)
{
	for (int i = 0; i < STORE_LOG_NSTR; i++)
		free(it->s[i]);
	memset(it, 0, sizeof(*it));
}

int store_log_flush(store *st)
{
	if (st->n_log == 0)
		return 0;
	if (store_tx_begin(st, NULL) < 0)
		return -1;
	for (int i = 0; i < st->n_log; i++) {
		struct store_log_item *it = &st->log[i];
		if (store_run(st, ST_LOG_INSERT, "IttttttttttIIt", it->ts, it->s[0], it->s[1], it->s[2],
		    it->s[3], it->s[4], it->s[5], it->s[6], it->s[7], it->s[8], it->s[9], it->size,
		    it->delay_ms, it->s[10]) != STORE_DONE) {
			store_tx_rollback(st);
			return -1;
		}
	}
	if (store_tx_commit(st, NULL) < 0)
		return -1;
	for (int i = 0; i < st->n_log; i++)
		store_log_item_free(&st->log[i]);
	st->n_log = 0;
	return 0;
}

void store_log_free(store *st)
{
	for (int i = 0; i < st->n_log; i++)
		store_log_item_free(&st->log[i]);
	free(st->log);
	st->log = NULL;
	st->n_log = st->cap_log = 0;
}

/* "%" + s with LIKE wildcards escaped by '\' + "%" */
static char *store_like_pattern(const char *s)
{
	size_t len = strlen(s);
	char *p = xmalloc(len * 2 + 3), *o = p;

	*o++ = '%';
	for (; *s; s++) {
		if (*s == '%' || *s == '_' || *s == '\\')
			*o++ = '\\';
		*o++ = *s;
	}
	*o++ = '%';
	*o = '\0';
	return p;
}

/* A row of STORE_LOG_COLS; its strings are the statement's (valid until the next step). */
static void store_log_read(struct store_q *sq, struct store_log_row *row)
{
	const char **f[10] = { &row->qid, &row->client, &row->helo, &row->sender, &row->rcpt,
		&row->action, &row->code, &row->reason, &row->profile, &row->relay };

	memset(row, 0, sizeof(*row));
	row->ts = store_q_int(sq, 0);
	for (int j = 0; j < 10; j++)
		*f[j] = store_q_text(sq, j + 1);
	row->size = store_q_int(sq, 11);
	row->delay_ms = store_q_int(sq, 12);
	row->session = store_q_text(sq, 13);
}

int store_log_search(store *st, const struct store_log_query *q,
    int (*cb)(void *ctx, const struct store_log_row *row), void *ctx)
{
	char sql[1024];
	char *from = NULL, *to = NULL;
	struct store_q sq;
	struct store_log_row row;
	int limit = q->limit > 0 ? q->limit : 100, idx = 1, rc = -1;

	if (limit > STORE_LOG_LIMIT_MAX)
		limit = STORE_LOG_LIMIT_MAX;
	/* rows this process buffered are part of the answer */
	store_log_flush(st);
	/* only fixed fragments go into the SQL text; every value is bound */
	if (util_fmt(sql, sizeof(sql), "SELECT " STORE_LOG_COLS " FROM maillog WHERE 1%s%s%s%s%s "
	    "ORDER BY ts DESC, id DESC LIMIT ?",
	    q->from ? " AND sender LIKE ? ESCAPE '\\'" : "",
	    q->to ? " AND rcpt LIKE ? ESCAPE '\\'" : "",
	    q->ip ? " AND client = ?" : "",
	    q->action ? " AND action = ?" : "",
	    q->since ? " AND ts >= ?" : "") < 0)
		return -1;
	if (store_q_start_sql(st, &sq, sql, NULL, "") < 0)
		return -1;
	rc = 0;
	if (q->from) {
		from = store_like_pattern(q->from);
		rc |= store_q_bind(&sq, idx++, "t", from);
	}
	if (q->to) {
		to = store_like_pattern(q->to);
		rc |= store_q_bind(&sq, idx++, "t", to);
	}
	if (q->ip)
		rc |= store_q_bind(&sq, idx++, "t", q->ip);
	if (q->action)
		rc |= store_q_bind(&sq, idx++, "t", q->action);
	if (q->since)
		rc |= store_q_bind(&sq, idx++, "I", q->since);
	rc |= store_q_bind(&sq, idx, "i", limit);
	if (rc < 0)
		goto out;
	while ((rc = store_q_step(&sq)) == STORE_ROW) {
		store_log_read(&sq, &row);
		if (cb(ctx, &row) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	rc = rc == STORE_DONE ? 0 : -1;
out:
	store_q_end(&sq);
	free(from);
	free(to);
	return rc;
}

/* The rows of qid, and of each SMTP session that wrote one of them the rows
 * without a queue id (connect, checks, RCPTs) from the session's previous
 * message (its last row with another queue id) to this one's last row; the
 * connect row always. Oldest first: by the second a row was added, then the
 * session's rows before the queue manager's (they are flushed by different
 * processes, so the ids of one second need not be in event order), then id.
 * Four values, each bound: qid, qid, qid and the limit. */
static const char store_log_trace_sql[] =
	"WITH m AS (SELECT session, min(id) AS first, max(id) AS last FROM maillog"
	"  WHERE qid = ? AND session IS NOT NULL GROUP BY session),"
	" w AS (SELECT m.session, m.last, coalesce((SELECT max(p.id) FROM maillog p"
	"  WHERE p.session = m.session AND p.id < m.first AND p.qid IS NOT NULL"
	"  AND p.qid <> ?), 0) AS after FROM m)"
	" SELECT " STORE_LOG_COLS " FROM (SELECT *, id AS n FROM maillog WHERE qid = ?"
	"  UNION ALL"
	"  SELECT l.*, l.id AS n FROM maillog l JOIN w ON l.session = w.session"
	"  WHERE l.qid IS NULL AND l.id < w.last AND (l.id > w.after OR l.action = 'connect'))"
	" ORDER BY ts, session IS NULL, n LIMIT ?";

int store_log_trace(store *st, const char *qid, int limit,
    int (*cb)(void *ctx, const struct store_log_row *row), void *ctx)
{
	struct store_q sq;
	struct store_log_row row;
	int rc, n = 0;

	if (limit <= 0 || limit > STORE_LOG_LIMIT_MAX)
		limit = STORE_LOG_LIMIT_MAX;
	store_log_flush(st);
	if (store_q_start_sql(st, &sq, store_log_trace_sql, NULL, "tttI", qid, qid, qid,
	    (int64_t)limit) < 0)
		return -1;
	while ((rc = store_q_step(&sq)) == STORE_ROW) {
		store_log_read(&sq, &row);
		n++;
		if (cb(ctx, &row) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	store_q_end(&sq);
	return rc == STORE_DONE ? n : -1;
}
