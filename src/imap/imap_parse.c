/* imap_parse: tokenizer and small parsers for IMAP4rev1 commands (RFC 3501
 * section 9). Everything here works on bytes received from an unauthenticated
 * peer: sizes are checked before use and nothing grows without a bound.
 * Run by imapd. */
#include "imap/imap_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"

#define IMAP_ARG_STR_MAX 65536

int imap_literal_header(const char *line, size_t len, uint64_t max, uint64_t *size_r, int *nonsync_r)
{
	if (len < 3 || line[len - 1] != '}')
		return 0;
	size_t e = len - 1;
	int nonsync = 0;
	if (line[e - 1] == '+') {
		nonsync = 1;
		e--;
	}
	size_t b = e;
	while (b > 0 && line[b - 1] >= '0' && line[b - 1] <= '9')
		b--;
	if (b == 0 || line[b - 1] != '{' || b == e)
		return 0;
	/* bound the digits before converting: 2^64 has 20 digits */
	uint64_t v = 0;
	for (size_t i = b; i < e; i++) {
		unsigned d = (unsigned)(line[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
		if (v > max)
			return -1;
	}
	*size_r = v;
	*nonsync_r = nonsync;
	return 1;
}

/* ---- tokenizer ---- */

struct imap_tok {
	const char *b;
	size_t len, pos;
	size_t n_tokens;
	const char *err;
};

static int imap_atom_char(unsigned char c)
{
	return c > ' ' && c < 127 && c != '(' && c != ')' && c != '{' && c != '"';
}

static void imap_list_push(struct imap_arg **v, size_t *n, size_t *cap, const struct imap_arg *a)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 8;
		*v = xrealloc(*v, *cap * sizeof(**v));
	}
	(*v)[(*n)++] = *a;
}

static void imap_args_free(struct imap_arg *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		xfree(&v[i].own);
		if (v[i].type == IMAP_ARG_LIST)
			imap_args_free(v[i].list, v[i].n);
	}
	xfree(&v);
}

static int imap_tok_atom(struct imap_tok *t, struct imap_arg *a)
{
	size_t s = t->pos;
	while (t->pos < t->len) {
		unsigned char c = (unsigned char)t->b[t->pos];
		if (c == '[') {
			/* section spec: anything printable up to ']' */
			t->pos++;
			while (t->pos < t->len && t->b[t->pos] != ']') {
				unsigned char d = (unsigned char)t->b[t->pos];
				if (d < ' ' || d >= 127) {
					t->err = "unterminated [ in atom";
					return -1;
				}
				t->pos++;
			}
			if (t->pos >= t->len) {
				t->err = "unterminated [ in atom";
				return -1;
			}
			t->pos++;
			continue;
		}
		if (!imap_atom_char(c))
			break;
		t->pos++;
	}
	if (t->pos == s) {
		t->err = "invalid character";
		return -1;
	}
	a->type = IMAP_ARG_ATOM;
	a->own = xstrndup(t->b + s, t->pos - s);
	a->s = a->own;
	a->len = t->pos - s;
	return 0;
}

static int imap_tok_quoted(struct imap_tok *t, struct imap_arg *a)
{
	t->pos++;  /* opening quote */
	size_t s = t->pos;
	size_t n = 0;
	/* first pass: find the end and check characters */
	while (t->pos < t->len && t->b[t->pos] != '"') {
		unsigned char c = (unsigned char)t->b[t->pos];
		if (c == '\\') {
			if (t->pos + 1 >= t->len || (t->b[t->pos + 1] != '\\' && t->b[t->pos + 1] != '"')) {
				t->err = "bad escape in quoted string";
				return -1;
			}
			t->pos++;
		} else if (c == '\0' || c == '\r' || c == '\n') {
			t->err = "invalid character in quoted string";
			return -1;
		}
		t->pos++;
		n++;
	}
	if (t->pos >= t->len) {
		t->err = "unterminated quoted string";
		return -1;
	}
	char *o = xmalloc(n + 1);
	size_t k = 0;
	for (size_t i = s; i < t->pos; i++) {
		if (t->b[i] == '\\')
			i++;
		o[k++] = t->b[i];
	}
	o[k] = '\0';
	t->pos++;  /* closing quote */
	a->type = IMAP_ARG_STRING;
	a->own = o;
	a->s = o;
	a->len = k;
	return 0;
}

static int imap_tok_literal(struct imap_tok *t, struct imap_arg *a)
{
	size_t s = t->pos + 1;
	size_t e = s;
	uint64_t v = 0;
	while (e < t->len && t->b[e] >= '0' && t->b[e] <= '9') {
		unsigned d = (unsigned)(t->b[e] - '0');
		if (v > (UINT64_MAX - d) / 10 || e - s > 20) {
			t->err = "literal too large";
			return -1;
		}
		v = v * 10 + d;
		e++;
	}
	if (e == s) {
		t->err = "bad literal";
		return -1;
	}
	if (e < t->len && t->b[e] == '+')
		e++;
	if (e + 3 > t->len || t->b[e] != '}' || t->b[e + 1] != '\r' || t->b[e + 2] != '\n') {
		t->err = "bad literal";
		return -1;
	}
	e += 3;
	if (v > t->len - e) {
		t->err = "literal longer than the command";
		return -1;
	}
	a->type = IMAP_ARG_LITERAL;
	a->s = t->b + e;
	a->len = (size_t)v;
	a->has_nul = memchr(a->s, '\0', a->len) != NULL;
	if (!a->has_nul && a->len <= IMAP_ARG_STR_MAX) {
		a->own = xstrndup(a->s, a->len);
		a->s = a->own;
	}
	t->pos = e + (size_t)v;
	return 0;
}

/* Parses arguments until ')' (depth > 0) or CRLF (depth 0). */
static int imap_tok_list(struct imap_tok *t, int depth, struct imap_arg **vr, size_t *nr)
{
	struct imap_arg *v = NULL;
	size_t n = 0, cap = 0;
	int first = 1;
	for (;;) {
		if (t->pos >= t->len) {
			t->err = "missing CRLF";
			goto fail;
		}
		char c = t->b[t->pos];
		if (c == '\r') {
			if (t->pos + 2 != t->len || t->b[t->pos + 1] != '\n') {
				t->err = "stray CR";
				goto fail;
			}
			if (depth > 0) {
				t->err = "unbalanced parentheses";
				goto fail;
			}
			break;
		}
		if (c == ')') {
			if (depth == 0) {
				t->err = "unbalanced parentheses";
				goto fail;
			}
			t->pos++;
			break;
		}
		if (!first) {
			if (c != ' ') {
				t->err = "expected space";
				goto fail;
			}
			t->pos++;
			if (t->pos >= t->len) {
				t->err = "missing CRLF";
				goto fail;
			}
			c = t->b[t->pos];
		} else if (depth == 0) {
			/* top level: arguments come after the command name's space */
			if (c != ' ') {
				t->err = "expected space";
				goto fail;
			}
			t->pos++;
			if (t->pos >= t->len) {
				t->err = "missing CRLF";
				goto fail;
			}
			c = t->b[t->pos];
		}
		first = 0;
		if (++t->n_tokens > IMAP_MAX_ARGS) {
			t->err = "too many arguments";
			goto fail;
		}
		struct imap_arg a;
		memset(&a, 0, sizeof(a));
		int r;
		if (c == '(') {
			if (depth + 1 > IMAP_MAX_DEPTH) {
				t->err = "too deeply nested";
				goto fail;
			}
			t->pos++;
			a.type = IMAP_ARG_LIST;
			r = imap_tok_list(t, depth + 1, &a.list, &a.n);
		} else if (c == '"') {
			r = imap_tok_quoted(t, &a);
		} else if (c == '{') {
			r = imap_tok_literal(t, &a);
		} else if (c == ')' && depth > 0) {
			t->err = "unexpected )";
			goto fail;
		} else {
			r = imap_tok_atom(t, &a);
		}
		if (r < 0)
			goto fail;
		imap_list_push(&v, &n, &cap, &a);
		/* an empty list "()" : the recursive call consumed ')' */
	}
	*vr = v;
	*nr = n;
	return 0;
fail:
	imap_args_free(v, n);
	return -1;
}

int imap_cmd_parse(const char *buf, size_t len, struct imap_cmd *cmd, const char **error_r)
{
	memset(cmd, 0, sizeof(*cmd));
	struct imap_tok t = { buf, len, 0, 0, NULL };
	size_t s = 0;
	while (t.pos < len && imap_atom_char((unsigned char)buf[t.pos]) && buf[t.pos] != '+' &&
	    buf[t.pos] != '[' && buf[t.pos] != '%' && buf[t.pos] != '*')
		t.pos++;
	if (t.pos == s || t.pos - s > IMAP_TAG_MAX) {
		*error_r = "bad tag";
		return -1;
	}
	memcpy(cmd->tag, buf, t.pos);
	cmd->tag[t.pos] = '\0';
	if (t.pos >= len || buf[t.pos] != ' ') {
		*error_r = "missing command";
		return -1;
	}
	t.pos++;
	s = t.pos;
	while (t.pos < len && isalnum((unsigned char)buf[t.pos]))
		t.pos++;
	if (t.pos == s || t.pos - s >= sizeof(cmd->name)) {
		*error_r = "bad command";
		return -1;
	}
	for (size_t i = s; i < t.pos; i++)
		cmd->name[i - s] = (char)toupper((unsigned char)buf[i]);
	cmd->name[t.pos - s] = '\0';
	/* no arguments: must end here */
	if (t.pos + 2 == len && buf[t.pos] == '\r' && buf[t.pos + 1] == '\n')
		return 0;
	if (imap_tok_list(&t, 0, &cmd->args, &cmd->n_args) < 0) {
		*error_r = t.err;
		return -1;
	}
	return 0;
}

void imap_cmd_free(struct imap_cmd *cmd)
{
	imap_args_free(cmd->args, cmd->n_args);
	cmd->args = NULL;
	cmd->n_args = 0;
}

const char *imap_arg_str(const struct imap_arg *a)
{
	if (a->type == IMAP_ARG_LIST)
		return NULL;
	if (a->type == IMAP_ARG_LITERAL && a->own == NULL)
		return NULL;
	return a->s;
}

int imap_arg_is_string(const struct imap_arg *a)
{
	return a->type != IMAP_ARG_LIST;
}

int imap_arg_is_atom(const struct imap_arg *a, const char *word)
{
	return a->type == IMAP_ARG_ATOM && strcasecmp(a->s, word) == 0;
}

/* ---- sequence sets ---- */

static int imap_seq_num(const char **sp, uint32_t star, uint32_t *v)
{
	const char *s = *sp;
	if (*s == '*') {
		*v = star;
		*sp = s + 1;
		return 0;
	}
	if (*s < '1' || *s > '9')
		return -1;
	uint64_t n = 0;
	while (*s >= '0' && *s <= '9') {
		n = n * 10 + (uint64_t)(*s - '0');
		if (n > UINT32_MAX)
			return -1;
		s++;
	}
	*v = (uint32_t)n;
	*sp = s;
	return 0;
}

static int imap_range_cmp(const void *a, const void *b)
{
	const struct imap_range *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

int imap_seqset_parse(const char *s, uint32_t star, struct imap_seqset *set)
{
	set->r = NULL;
	set->n = 0;
	size_t cap = 0;
	if (*s == '\0')
		return -1;
	for (;;) {
		uint32_t a, b;
		if (imap_seq_num(&s, star, &a) < 0)
			goto fail;
		b = a;
		if (*s == ':') {
			s++;
			if (imap_seq_num(&s, star, &b) < 0)
				goto fail;
		}
		if (set->n == cap) {
			cap = cap ? cap * 2 : 4;
			set->r = xrealloc(set->r, cap * sizeof(*set->r));
		}
		set->r[set->n].lo = a < b ? a : b;
		set->r[set->n].hi = a < b ? b : a;
		set->n++;
		if (*s == '\0')
			break;
		if (*s != ',')
			goto fail;
		s++;
	}
	qsort(set->r, set->n, sizeof(*set->r), imap_range_cmp);
	size_t k = 0;
	for (size_t i = 1; i < set->n; i++) {
		if (set->r[i].lo <= set->r[k].hi || set->r[i].lo - 1 == set->r[k].hi) {
			if (set->r[i].hi > set->r[k].hi)
				set->r[k].hi = set->r[i].hi;
		} else {
			set->r[++k] = set->r[i];
		}
	}
	set->n = k + 1;
	return 0;
fail:
	imap_seqset_free(set);
	return -1;
}

int imap_seqset_has(const struct imap_seqset *set, uint32_t v)
{
	size_t lo = 0, hi = set->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v < set->r[mid].lo)
			hi = mid;
		else if (v > set->r[mid].hi)
			lo = mid + 1;
		else
			return 1;
	}
	return 0;
}

void imap_seqset_free(struct imap_seqset *set)
{
	xfree(&set->r);
	set->n = 0;
}

/* ---- dates ---- */

static const char *const imap_months[12] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};

static int imap_digits(const char **sp, int min, int max, int *v)
{
	const char *s = *sp;
	int n = 0, k = 0;
	while (*s >= '0' && *s <= '9' && k < max) {
		n = n * 10 + (*s - '0');
		s++;
		k++;
	}
	if (k < min)
		return -1;
	*v = n;
	*sp = s;
	return 0;
}

static int imap_date_part(const char **sp, struct tm *tm)
{
	const char *s = *sp;
	int d, y;
	if (imap_digits(&s, 1, 2, &d) < 0 || *s != '-')
		return -1;
	s++;
	int m = -1;
	for (int i = 0; i < 12; i++)
		if (strncasecmp(s, imap_months[i], 3) == 0)
			m = i;
	if (m < 0 || s[3] != '-')
		return -1;
	s += 4;
	if (imap_digits(&s, 4, 4, &y) < 0 || d < 1 || d > 31 || y < 1900)
		return -1;
	memset(tm, 0, sizeof(*tm));
	tm->tm_mday = d;
	tm->tm_mon = m;
	tm->tm_year = y - 1900;
	*sp = s;
	return 0;
}

int imap_date_parse(const char *s, time_t *t_r)
{
	struct tm tm;
	if (imap_date_part(&s, &tm) < 0 || *s != '\0')
		return -1;
	*t_r = timegm(&tm);
	return 0;
}

int imap_datetime_parse(const char *s, time_t *t_r)
{
	struct tm tm;
	int h, mi, se, z;
	if (*s == ' ')
		s++;
	if (imap_date_part(&s, &tm) < 0 || *s++ != ' ')
		return -1;
	if (imap_digits(&s, 2, 2, &h) < 0 || *s++ != ':' || imap_digits(&s, 2, 2, &mi) < 0 ||
	    *s++ != ':' || imap_digits(&s, 2, 2, &se) < 0 || *s++ != ' ')
		return -1;
	char sign = *s++;
	if ((sign != '+' && sign != '-') || imap_digits(&s, 4, 4, &z) < 0 || *s != '\0')
		return -1;
	if (h > 23 || mi > 59 || se > 60)
		return -1;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = se;
	time_t t = timegm(&tm);
	long off = (z / 100) * 3600L + (z % 100) * 60L;
	*t_r = sign == '+' ? t - off : t + off;
	return 0;
}

void imap_datetime_format(time_t t, char buf[32])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	if (util_fmt(buf, 32, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday,
	    imap_months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec) < 0)
		buf[0] = '\0';
}

/* ---- FETCH attributes ---- */

static int imap_append_name(struct imap_fetch_att *a, const char *s, size_t n)
{
	size_t l = strlen(a->name);
	if (l + n >= sizeof(a->name))
		return -1;
	memcpy(a->name + l, s, n);
	a->name[l + n] = '\0';
	return 0;
}

static int imap_parse_section(const char *s, const char *e, struct imap_fetch_att *a, const char **error_r)
{
	/* s..e is the text between [ and ] */
	const char *p = s;
	a->sect = IMAP_S_ALL;
	while (p < e && *p >= '0' && *p <= '9') {
		uint64_t n = 0;
		while (p < e && *p >= '0' && *p <= '9') {
			n = n * 10 + (uint64_t)(*p - '0');
			if (n > UINT32_MAX) {
				*error_r = "bad section number";
				return -1;
			}
			p++;
		}
		if (n == 0 || a->n_part >= IMAP_MAX_PART_DEPTH) {
			*error_r = "bad section number";
			return -1;
		}
		a->part[a->n_part++] = (uint32_t)n;
		if (p < e && *p == '.')
			p++;
		else
			break;
	}
	size_t rest = (size_t)(e - p);
	if (rest == 0) {
		if (a->n_part > 0 && p[-1] == '.') {
			*error_r = "bad section";
			return -1;
		}
		return 0;
	}
	if (rest == 6 && strncasecmp(p, "HEADER", 6) == 0) {
		a->sect = IMAP_S_HEADER;
		return 0;
	}
	if (rest == 4 && strncasecmp(p, "TEXT", 4) == 0) {
		a->sect = IMAP_S_TEXT;
		return 0;
	}
	if (rest == 4 && strncasecmp(p, "MIME", 4) == 0 && a->n_part > 0) {
		a->sect = IMAP_S_MIME;
		return 0;
	}
	const char *q;
	if (rest > 18 && strncasecmp(p, "HEADER.FIELDS.NOT ", 18) == 0) {
		a->sect = IMAP_S_FIELDS_NOT;
		q = p + 18;
	} else if (rest > 14 && strncasecmp(p, "HEADER.FIELDS ", 14) == 0) {
		a->sect = IMAP_S_FIELDS;
		q = p + 14;
	} else {
		*error_r = "bad section";
		return -1;
	}
	if (*q != '(' || e[-1] != ')') {
		*error_r = "bad header field list";
		return -1;
	}
	q++;
	const char *qe = e - 1;
	while (q < qe) {
		const char *f = q;
		if (*f == '"') {
			/* quoted field name: no escapes allowed here */
			f++;
			q = f;
			while (q < qe && *q != '"')
				q++;
			if (q >= qe) {
				*error_r = "bad header field list";
				return -1;
			}
		} else {
			while (q < qe && *q != ' ')
				q++;
		}
		size_t fl = (size_t)(q - f);
		if (*q == '"')
			q++;
		if (fl == 0 || fl > 128 || a->n_fields >= IMAP_MAX_FIELDS) {
			*error_r = "bad header field list";
			return -1;
		}
		for (size_t i = 0; i < fl; i++)
			if (f[i] <= ' ' || f[i] >= 127 || f[i] == ':' || f[i] == '(' || f[i] == ')') {
				*error_r = "bad header field name";
				return -1;
			}
		a->fields[a->n_fields++] = xstrndup(f, fl);
		if (q < qe && *q == ' ')
			q++;
	}
	if (a->n_fields == 0) {
		*error_r = "empty header field list";
		return -1;
	}
	return 0;
}

int imap_fetch_att_parse(const char *atom, struct imap_fetch_att *a, const char **error_r)
{
	static const struct { const char *n; enum imap_fetch_kind k; } simple[] = {
		{ "FLAGS", IMAP_F_FLAGS }, { "UID", IMAP_F_UID }, { "INTERNALDATE", IMAP_F_INTERNALDATE },
		{ "RFC822.SIZE", IMAP_F_SIZE }, { "ENVELOPE", IMAP_F_ENVELOPE },
		{ "BODYSTRUCTURE", IMAP_F_BODYSTRUCTURE }, { "BODY", IMAP_F_BODY },
		{ "MODSEQ", IMAP_F_MODSEQ },
	};
	memset(a, 0, sizeof(*a));
	for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
		if (strcasecmp(atom, simple[i].n) == 0) {
			a->kind = simple[i].k;
			imap_append_name(a, simple[i].n, strlen(simple[i].n));
			return 0;
		}
	a->kind = IMAP_F_SECTION;
	if (strcasecmp(atom, "RFC822") == 0) {
		a->rfc822 = 1;
		imap_append_name(a, "RFC822", 6);
		return 0;
	}
	if (strcasecmp(atom, "RFC822.HEADER") == 0) {
		a->rfc822 = 2;
		a->peek = 1;
		a->sect = IMAP_S_HEADER;
		imap_append_name(a, "RFC822.HEADER", 13);
		return 0;
	}
	if (strcasecmp(atom, "RFC822.TEXT") == 0) {
		a->rfc822 = 3;
		a->sect = IMAP_S_TEXT;
		imap_append_name(a, "RFC822.TEXT", 11);
		return 0;
	}
	const char *p;
	if (strncasecmp(atom, "BODY.PEEK[", 10) == 0) {
		a->peek = 1;
		p = atom + 10;
	} else if (strncasecmp(atom, "BODY[", 5) == 0) {
		p = atom + 5;
	} else {
		*error_r = "unknown FETCH attribute";
		return -1;
	}
	const char *e = strchr(p, ']');
	if (e == NULL) {
		*error_r = "unterminated section";
		return -1;
	}
	if (imap_parse_section(p, e, a, error_r) < 0)
		goto fail;
	/* name: BODY[<section as given, upper-cased>] */
	imap_append_name(a, "BODY[", 5);
	for (const char *c = p; c < e; c++) {
		char u = (char)toupper((unsigned char)*c);
		if (imap_append_name(a, &u, 1) < 0) {
			*error_r = "section too long";
			goto fail;
		}
	}
	if (imap_append_name(a, "]", 1) < 0) {
		*error_r = "section too long";
		goto fail;
	}
	p = e + 1;
	if (*p == '<') {
		p++;
		uint64_t off = 0, len = 0;
		const char *d = p;
		while (*p >= '0' && *p <= '9') {
			off = off * 10 + (uint64_t)(*p - '0');
			if (off > UINT32_MAX)
				break;
			p++;
		}
		if (p == d || *p != '.' || off > UINT32_MAX) {
			*error_r = "bad partial";
			goto fail;
		}
		p++;
		d = p;
		while (*p >= '0' && *p <= '9') {
			len = len * 10 + (uint64_t)(*p - '0');
			if (len > UINT32_MAX)
				break;
			p++;
		}
		if (p == d || *p != '>' || len > UINT32_MAX || len == 0) {
			*error_r = "bad partial";
			goto fail;
		}
		p++;
		a->partial = 1;
		a->p_off = (uint32_t)off;
		a->p_len = (uint32_t)len;
		char num[16];
		if (util_fmt(num, sizeof(num), "<%u>", a->p_off) < 0 || imap_append_name(a, num, strlen(num)) < 0) {
			*error_r = "section too long";
			goto fail;
		}
	}
	if (*p != '\0') {
		*error_r = "junk after section";
		goto fail;
	}
	return 0;
fail:
	imap_fetch_att_free(a);
	return -1;
}

void imap_fetch_att_free(struct imap_fetch_att *a)
{
	for (int i = 0; i < a->n_fields; i++)
		xfree(&a->fields[i]);
	a->n_fields = 0;
}

int imap_mailbox_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 200 || name[0] == '.' || name[n - 1] == '.')
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < ' ' || c >= 127 || c == '/' || c == '\\' || c == '*' || c == '%')
			return -1;
		if (c == '.' && name[i + 1] == '.')
			return -1;
	}
	return 0;
}
