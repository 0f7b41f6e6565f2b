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

void store_log_add(store *st, const struct store_log_row *row)
{
	struct store_log_item *it;
	const char *f[10] = { row->qid, row->client, row->helo, row->sender, row->rcpt,
		row->action, row->code, row->reason, row->profile, row->relay };

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
	for (int i = 0; i < 10; i++) {
		const char *v = f[i];
		it->s[i] = v ? xstrndup(v, strnlen(v, STORE_LOG_FIELD_MAX)) : NULL;
	}
}

static void store_log_item_free(struct store_log_item *it)
{
	for (int i = 0; i < 10; i++)
		free(it->s[i]);
	memset(it, 0, sizeof(*it));
}

int store_log_flush(store *st)
{
	sqlite3_stmt *s = NULL;
	int rc = -1;

	if (st->n_log == 0)
		return 0;
	if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	s = store_prepare(st, "INSERT INTO maillog(ts, qid, client, helo, sender, rcpt, action, "
	    "code, reason, profile, relay, size, delay_ms) "
	    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", NULL);
	if (s == NULL)
		goto out;
	for (int i = 0; i < st->n_log; i++) {
		struct store_log_item *it = &st->log[i];
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, it->ts);
		for (int j = 0; j < 10; j++)
			store_bind_text(s, j + 2, it->s[j]);
		sqlite3_bind_int64(s, 12, it->size);
		sqlite3_bind_int64(s, 13, it->delay_ms);
		if (sqlite3_step(s) != SQLITE_DONE)
			goto out;
	}
	if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		goto out;
	for (int i = 0; i < st->n_log; i++)
		store_log_item_free(&st->log[i]);
	st->n_log = 0;
	rc = 0;
out:
	sqlite3_finalize(s);
	if (rc < 0)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
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

int store_log_search(store *st, const struct store_log_query *q,
    int (*cb)(void *ctx, const struct store_log_row *row), void *ctx)
{
	char sql[1024];
	char *from = NULL, *to = NULL;
	sqlite3_stmt *s = NULL;
	struct store_log_row row;
	int limit = q->limit > 0 ? q->limit : 100, idx = 1, rc = -1;

	if (limit > STORE_LOG_LIMIT_MAX)
		limit = STORE_LOG_LIMIT_MAX;
	/* rows this process buffered are part of the answer */
	store_log_flush(st);
	/* only fixed fragments go into the SQL text; every value is bound */
	if (util_fmt(sql, sizeof(sql), "SELECT ts, qid, client, helo, sender, rcpt, action, code, "
	    "reason, profile, relay, size, delay_ms FROM maillog WHERE 1%s%s%s%s%s "
	    "ORDER BY ts DESC, id DESC LIMIT ?",
	    q->from ? " AND sender LIKE ? ESCAPE '\\'" : "",
	    q->to ? " AND rcpt LIKE ? ESCAPE '\\'" : "",
	    q->ip ? " AND client = ?" : "",
	    q->action ? " AND action = ?" : "",
	    q->since ? " AND ts >= ?" : "") < 0)
		return -1;
	if ((s = store_prepare(st, sql, NULL)) == NULL)
		return -1;
	if (q->from) {
		from = store_like_pattern(q->from);
		store_bind_text(s, idx++, from);
	}
	if (q->to) {
		to = store_like_pattern(q->to);
		store_bind_text(s, idx++, to);
	}
	if (q->ip)
		store_bind_text(s, idx++, q->ip);
	if (q->action)
		store_bind_text(s, idx++, q->action);
	if (q->since)
		sqlite3_bind_int64(s, idx++, q->since);
	sqlite3_bind_int(s, idx, limit);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char **f[10] = { &row.qid, &row.client, &row.helo, &row.sender, &row.rcpt,
			&row.action, &row.code, &row.reason, &row.profile, &row.relay };
		memset(&row, 0, sizeof(row));
		row.ts = sqlite3_column_int64(s, 0);
		for (int j = 0; j < 10; j++)
			*f[j] = (const char *)sqlite3_column_text(s, j + 1);
		row.size = sqlite3_column_int64(s, 11);
		row.delay_ms = sqlite3_column_int64(s, 12);
		if (cb(ctx, &row) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	rc = rc == SQLITE_DONE ? 0 : -1;
	sqlite3_finalize(s);
	free(from);
	free(to);
	return rc;
}
