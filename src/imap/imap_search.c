/* imap_search: the IMAP SEARCH program (RFC 3501 6.4.4): parses the keys
 * from the tokenized arguments into a tree and evaluates it on one message
 * through accessors. Pure (no I/O, no session); used by imapd. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imap_search.h"
#include "lib/util.h"
#include "mail/mime.h"

enum imap_search_kind {
	SK_ALL, SK_FLAG, SK_NOTFLAG, SK_NEW, SK_OLD, SK_NONE, SK_SET, SK_UIDSET, SK_NOT, SK_OR, SK_AND,
	SK_LARGER, SK_SMALLER, SK_BEFORE, SK_ON, SK_SINCE, SK_SENTBEFORE, SK_SENTON, SK_SENTSINCE,
	SK_HEADER, SK_BODY, SK_TEXT
};

struct imap_search_key {
	enum imap_search_kind kind;
	unsigned flag;
	uint64_t num;
	time_t t;
	char *hdr, *str;
	struct imap_seqset set;
	struct imap_search_key *a, *b;       /* NOT a; OR a b; AND: a list via next */
	struct imap_search_key *next;
};

static void imap_search_key_free(struct imap_search_key *k)
{
	while (k != NULL) {
		struct imap_search_key *n = k->next;
		xfree(&k->hdr);
		xfree(&k->str);
		imap_seqset_free(&k->set);
		imap_search_key_free(k->a);
		imap_search_key_free(k->b);
		xfree(&k);
		k = n;
	}
}

struct imap_search_parser {
	uint32_t star_seq, star_uid;   /* the values of '*' */
	const struct imap_arg *v;
	size_t n, i;
	int depth;
};

static struct imap_search_key *imap_search_key_parse(struct imap_search_parser *p);

static const char *imap_search_arg(struct imap_search_parser *p)
{
	if (p->i >= p->n)
		return NULL;
	return imap_arg_str(&p->v[p->i++]);
}

static struct imap_search_key *imap_search_key_parse(struct imap_search_parser *p)
{
	if (p->i >= p->n || p->depth > 64)
		return NULL;
	const struct imap_arg *a = &p->v[p->i];
	struct imap_search_key *k = xcalloc(1, sizeof(*k));
	if (a->type == IMAP_ARG_LIST) {
		p->i++;
		struct imap_search_parser sub = { p->star_seq, p->star_uid, a->list, a->n, 0, p->depth + 1 };
		struct imap_search_key **tail = &k->a;
		k->kind = SK_AND;
		while (sub.i < sub.n) {
			struct imap_search_key *c = imap_search_key_parse(&sub);
			if (c == NULL)
				goto fail;
			*tail = c;
			tail = &c->next;
		}
		return k;
	}
	const char *w = imap_arg_str(a);
	if (w == NULL || a->type != IMAP_ARG_ATOM)
		goto fail;
	p->i++;
	static const struct { const char *n; unsigned f; int neg; } flagkeys[] = {
		{ "ANSWERED", IMAP_FL_ANSWERED, 0 }, { "DELETED", IMAP_FL_DELETED, 0 },
		{ "FLAGGED", IMAP_FL_FLAGGED, 0 }, { "SEEN", IMAP_FL_SEEN, 0 }, { "DRAFT", IMAP_FL_DRAFT, 0 },
		{ "RECENT", IMAP_FL_RECENT, 0 }, { "UNANSWERED", IMAP_FL_ANSWERED, 1 },
		{ "UNDELETED", IMAP_FL_DELETED, 1 }, { "UNFLAGGED", IMAP_FL_FLAGGED, 1 },
		{ "UNSEEN", IMAP_FL_SEEN, 1 }, { "UNDRAFT", IMAP_FL_DRAFT, 1 },
	};
	for (size_t i = 0; i < sizeof(flagkeys) / sizeof(flagkeys[0]); i++)
		if (strcasecmp(w, flagkeys[i].n) == 0) {
			k->kind = flagkeys[i].neg ? SK_NOTFLAG : SK_FLAG;
			k->flag = flagkeys[i].f;
			return k;
		}
	static const struct { const char *n; enum imap_search_kind k; } datekeys[] = {
		{ "BEFORE", SK_BEFORE }, { "ON", SK_ON }, { "SINCE", SK_SINCE },
		{ "SENTBEFORE", SK_SENTBEFORE }, { "SENTON", SK_SENTON }, { "SENTSINCE", SK_SENTSINCE },
	};
	for (size_t i = 0; i < sizeof(datekeys) / sizeof(datekeys[0]); i++)
		if (strcasecmp(w, datekeys[i].n) == 0) {
			const char *d = imap_search_arg(p);
			k->kind = datekeys[i].k;
			if (d == NULL || imap_date_parse(d, &k->t) < 0)
				goto fail;
			return k;
		}
	static const struct { const char *n; const char *h; enum imap_search_kind k; } strkeys[] = {
		{ "FROM", "From", SK_HEADER }, { "TO", "To", SK_HEADER }, { "CC", "Cc", SK_HEADER },
		{ "BCC", "Bcc", SK_HEADER }, { "SUBJECT", "Subject", SK_HEADER },
		{ "BODY", NULL, SK_BODY }, { "TEXT", NULL, SK_TEXT },
	};
	for (size_t i = 0; i < sizeof(strkeys) / sizeof(strkeys[0]); i++)
		if (strcasecmp(w, strkeys[i].n) == 0) {
			const char *v = imap_search_arg(p);
			if (v == NULL)
				goto fail;
			k->kind = strkeys[i].k;
			k->hdr = strkeys[i].h != NULL ? xstrdup(strkeys[i].h) : NULL;
			k->str = xstrdup(v);
			return k;
		}
	if (strcasecmp(w, "ALL") == 0) {
		k->kind = SK_ALL;
	} else if (strcasecmp(w, "NEW") == 0) {
		k->kind = SK_NEW;
	} else if (strcasecmp(w, "OLD") == 0) {
		k->kind = SK_OLD;
	} else if (strcasecmp(w, "KEYWORD") == 0 || strcasecmp(w, "UNKEYWORD") == 0) {
		if (imap_search_arg(p) == NULL)
			goto fail;
		k->kind = w[0] == 'K' || w[0] == 'k' ? SK_NONE : SK_ALL;
	} else if (strcasecmp(w, "HEADER") == 0) {
		const char *h = imap_search_arg(p), *v = imap_search_arg(p);
		if (h == NULL || v == NULL || h[0] == '\0' || strchr(h, ':') != NULL)
			goto fail;
		k->kind = SK_HEADER;
		k->hdr = xstrdup(h);
		k->str = xstrdup(v);
	} else if (strcasecmp(w, "LARGER") == 0 || strcasecmp(w, "SMALLER") == 0) {
		const char *v = imap_search_arg(p);
		long long n;
		if (v == NULL || util_strtonum(v, 0, INT64_MAX, &n) < 0)
			goto fail;
		k->kind = (w[0] == 'L' || w[0] == 'l') ? SK_LARGER : SK_SMALLER;
		k->num = (uint64_t)n;
	} else if (strcasecmp(w, "UID") == 0) {
		const char *v = imap_search_arg(p);
		if (v == NULL || imap_seqset_parse(v, p->star_uid, &k->set) < 0)
			goto fail;
		k->kind = SK_UIDSET;
	} else if (strcasecmp(w, "NOT") == 0) {
		k->kind = SK_NOT;
		p->depth++;
		k->a = imap_search_key_parse(p);
		p->depth--;
		if (k->a == NULL)
			goto fail;
	} else if (strcasecmp(w, "OR") == 0) {
		k->kind = SK_OR;
		p->depth++;
		k->a = imap_search_key_parse(p);
		k->b = k->a != NULL ? imap_search_key_parse(p) : NULL;
		p->depth--;
		if (k->b == NULL)
			goto fail;
	} else if ((w[0] >= '0' && w[0] <= '9') || w[0] == '*') {
		if (imap_seqset_parse(w, p->star_seq, &k->set) < 0)
			goto fail;
		k->kind = SK_SET;
	} else {
		goto fail;
	}
	return k;
fail:
	imap_search_key_free(k);
	return NULL;
}

static int imap_search_contains(const char *hay, size_t hl, const char *needle)
{
	size_t nl = strlen(needle);
	if (nl == 0)
		return 1;
	if (nl > hl)
		return 0;
	for (size_t i = 0; i + nl <= hl; i++)
		if (strncasecmp(hay + i, needle, nl) == 0)
			return 1;
	return 0;
}

/* Date header -> day (midnight UTC); -1 if unparsable. Loose RFC 5322. */
static time_t imap_search_sent_day(const char *v)
{
	static const char *mon[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec" };
	const char *p = v;
	if (v == NULL)
		return -1;
	const char *comma = strchr(p, ',');
	if (comma != NULL)
		p = comma + 1;
	while (*p == ' ')
		p++;
	int d = 0, y = 0, m = -1, k = 0;
	while (*p >= '0' && *p <= '9' && k++ < 2)
		d = d * 10 + (*p++ - '0');
	while (*p == ' ')
		p++;
	for (int i = 0; i < 12; i++)
		if (strncasecmp(p, mon[i], 3) == 0)
			m = i;
	if (m < 0 || d < 1 || d > 31)
		return -1;
	p += 3;
	while (*p == ' ')
		p++;
	k = 0;
	while (*p >= '0' && *p <= '9' && k++ < 4)
		y = y * 10 + (*p++ - '0');
	if (k == 2)
		y += y < 50 ? 2000 : 1900;
	if (y < 1900)
		return -1;
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	tm.tm_mday = d;
	tm.tm_mon = m;
	tm.tm_year = y - 1900;
	return timegm(&tm);
}

static int imap_search_key_match(const struct imap_search_key *k, const struct imap_search_msg *m)
{
	switch (k->kind) {
	case SK_ALL: return 1;
	case SK_NONE: return 0;
	case SK_FLAG: return (m->flags & k->flag) != 0;
	case SK_NOTFLAG: return (m->flags & k->flag) == 0;
	case SK_NEW: return (m->flags & IMAP_FL_RECENT) && !(m->flags & IMAP_FL_SEEN);
	case SK_OLD: return !(m->flags & IMAP_FL_RECENT);
	case SK_SET: return imap_seqset_has(&k->set, m->seq);
	case SK_UIDSET: return imap_seqset_has(&k->set, m->uid);
	case SK_NOT: return !imap_search_key_match(k->a, m);
	case SK_OR: return imap_search_key_match(k->a, m) || imap_search_key_match(k->b, m);
	case SK_AND:
		for (const struct imap_search_key *c = k->a; c != NULL; c = c->next)
			if (!imap_search_key_match(c, m))
				return 0;
		return 1;
	case SK_LARGER:
	case SK_SMALLER: {
		uint64_t size;
		if (m->size(m->arg, &size) < 0)
			return 0;
		return k->kind == SK_LARGER ? size > k->num : size < k->num;
	}
	case SK_BEFORE:
	case SK_ON:
	case SK_SINCE: {
		time_t t = m->idate(m->arg);
		time_t day = t - (t % 86400);
		return k->kind == SK_BEFORE ? day < k->t : k->kind == SK_ON ? day == k->t : day >= k->t;
	}
	case SK_SENTBEFORE:
	case SK_SENTON:
	case SK_SENTSINCE: {
		const char *data;
		size_t len, body_off;
		if (m->text(m->arg, &data, &len, &body_off) < 0)
			return 0;
		char *v = mime_header_get(data, body_off, "Date", 1024);
		time_t day = imap_search_sent_day(v);
		xfree(&v);
		if (day < 0)
			return 0;
		return k->kind == SK_SENTBEFORE ? day < k->t : k->kind == SK_SENTON ? day == k->t : day >= k->t;
	}
	case SK_HEADER: {
		const char *data;
		size_t len, body_off;
		if (m->text(m->arg, &data, &len, &body_off) < 0)
			return 0;
		char *v = mime_header_get(data, body_off, k->hdr, 65536);
		int r = v != NULL && imap_search_contains(v, strlen(v), k->str);
		xfree(&v);
		return r;
	}
	case SK_BODY:
	case SK_TEXT: {
		const char *data;
		size_t len, body_off;
		if (m->text(m->arg, &data, &len, &body_off) < 0)
			return 0;
		if (k->kind == SK_BODY)
			return imap_search_contains(data + body_off, len - body_off, k->str);
		return imap_search_contains(data, len, k->str);
	}
	}
	return 0;
}

int imap_search_parse(const struct imap_arg *args, size_t n_args, uint32_t star_seq, uint32_t star_uid,
    struct imap_search_key **prog_r, const char **error_r)
{
	struct imap_search_parser p = { star_seq, star_uid, args, n_args, 0, 0 };
	*prog_r = NULL;
	if (n_args >= 2 && imap_arg_is_atom(&args[0], "CHARSET")) {
		const char *cs = imap_arg_str(&args[1]);
		if (cs == NULL || (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0)) {
			*error_r = "Unsupported charset";
			return IMAP_SEARCH_BADCHARSET;
		}
		p.i = 2;
	}
	if (n_args >= 1 && imap_arg_is_atom(&args[0], "RETURN")) {
		*error_r = "ESEARCH is not supported";
		return IMAP_SEARCH_BAD;
	}
	struct imap_search_key *root = xcalloc(1, sizeof(*root)), **tail = &root->a;
	root->kind = SK_AND;
	if (p.i >= p.n) {
		imap_search_key_free(root);
		*error_r = "Missing search keys";
		return IMAP_SEARCH_BAD;
	}
	while (p.i < p.n) {
		struct imap_search_key *k = imap_search_key_parse(&p);
		if (k == NULL) {
			imap_search_key_free(root);
			*error_r = "Invalid search key";
			return IMAP_SEARCH_BAD;
		}
		*tail = k;
		tail = &k->next;
	}
	*prog_r = root;
	return IMAP_SEARCH_OK;
}

void imap_search_free(struct imap_search_key **prog)
{
	imap_search_key_free(*prog);
	*prog = NULL;
}

int imap_search_match(const struct imap_search_key *prog, const struct imap_search_msg *m)
{
	return imap_search_key_match(prog, m);
}
