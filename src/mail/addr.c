/* addr: RFC 5322 address-list parser (obsolete forms, RFC 6532 UTF-8): the
 * addr-spec of every mailbox of a From:/Sender:-style field body. Pure
 * module, no recursion (comments nest through a bounded counter), one pass
 * over the input. Runs inside the smtpd workers on untrusted input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/util.h"
#include "mail/addr.h"

/* ---------- characters ---------- */

static int addr_atext(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Length of the valid UTF-8 sequence (2-4 bytes, RFC 3629: no overlong
 * form, no surrogate, at most U+10FFFF) at s, n bytes available; 0 if none. */
static size_t addr_utf8(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	uint32_t cp;
	size_t k;

	if (c >= 0xc2 && c <= 0xdf) {
		k = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		k = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		k = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

/* ---------- lexer: CFWS skipped, tokens with one lookahead ---------- */

enum addr_tok_type { AT_EOF, AT_ATOM, AT_QSTR, AT_DLIT, AT_SPECIAL, AT_ERR };

struct addr_tok {
	enum addr_tok_type type;
	char c;                  /* AT_SPECIAL: one of < > @ , ; : . */
	const char *p;           /* AT_ATOM: the atom; AT_QSTR/AT_DLIT: between the delimiters */
	size_t n;
};

struct addr_lex {
	const unsigned char *s;
	size_t len, i;
	const char *err;
	struct addr_tok cur;     /* the lookahead token */
};

static int addr_fail(struct addr_lex *l, const char *err)
{
	if (l->err == NULL)
		l->err = err;
	return -1;
}

/* One piece of folding white space at l->i: WSP, or CRLF / LF followed by
 * WSP (or ending the input). 1 consumed, 0 none, -1 a bare line break. */
static int addr_lex_ws(struct addr_lex *l)
{
	size_t i = l->i;

	if (i >= l->len)
		return 0;
	if (l->s[i] == ' ' || l->s[i] == '\t') {
		l->i++;
		return 1;
	}
	if (l->s[i] == '\r') {
		if (i + 1 >= l->len || l->s[i + 1] != '\n')
			return addr_fail(l, "bare CR in address field");
		i++;
	}
	if (l->s[i] != '\n')
		return 0;
	if (i + 1 == l->len) {          /* a line end closing the field */
		l->i = i + 1;
		return 1;
	}
	if (l->s[i + 1] != ' ' && l->s[i + 1] != '\t')
		return addr_fail(l, "line break not followed by white space in address field");
	l->i = i + 2;
	return 1;
}

/* One printable character (33-126) or valid UTF-8 sequence; the caller has
 * dealt with the delimiters. */
static int addr_lex_text(struct addr_lex *l)
{
	unsigned char c = l->s[l->i];
	size_t k;

	if (c >= 33 && c <= 126) {
		l->i++;
		return 0;
	}
	if (c < 0x80)
		return addr_fail(l, "control character in address field");
	k = addr_utf8(l->s + l->i, l->len - l->i);
	if (k == 0)
		return addr_fail(l, "invalid UTF-8 in address field");
	l->i += k;
	return 0;
}

/* A quoted-pair at l->i (the backslash): \ + VCHAR, WSP or a UTF-8 character. */
static int addr_lex_qp(struct addr_lex *l)
{
	unsigned char c;

	l->i++;
	if (l->i >= l->len)
		return addr_fail(l, "backslash at end of address field");
	c = l->s[l->i];
	if (c == ' ' || c == '\t') {
		l->i++;
		return 0;
	}
	return addr_lex_text(l);
}

/* A comment at l->i (the '('), nested comments included, without recursion. */
static int addr_lex_comment(struct addr_lex *l)
{
	int depth = 0;

	while (l->i < l->len) {
		unsigned char c = l->s[l->i];
		int r;

		if (c == '(') {
			if (++depth > ADDR_COMMENT_DEPTH_MAX)
				return addr_fail(l, "comments nested too deeply in address field");
			l->i++;
		} else if (c == ')') {
			l->i++;
			if (--depth == 0)
				return 0;
		} else if (c == '\\') {
			if (addr_lex_qp(l) < 0)
				return -1;
		} else if ((r = addr_lex_ws(l)) != 0) {
			if (r < 0)
				return -1;
		} else if (addr_lex_text(l) < 0) {
			return -1;
		}
	}
	return addr_fail(l, "unterminated comment in address field");
}

static int addr_lex_cfws(struct addr_lex *l)
{
	for (;;) {
		int r = addr_lex_ws(l);
		if (r < 0)
			return -1;
		if (r > 0)
			continue;
		if (l->i < l->len && l->s[l->i] == '(') {
			if (addr_lex_comment(l) < 0)
				return -1;
			continue;
		}
		return 0;
	}
}

/* The content of a quoted string or domain literal up to the closing
 * delimiter `end` (l->i just past the opening one). */
static int addr_lex_delimited(struct addr_lex *l, unsigned char end, int dlit)
{
	while (l->i < l->len) {
		unsigned char c = l->s[l->i];
		int r;

		if (c == end)
			return 0;
		if (c == '\\') {
			if (addr_lex_qp(l) < 0)
				return -1;
		} else if ((r = addr_lex_ws(l)) != 0) {
			if (r < 0)
				return -1;
		} else if (dlit && c == '[') {
			return addr_fail(l, "'[' in domain literal");
		} else if (addr_lex_text(l) < 0) {
			return -1;
		}
	}
	return addr_fail(l, dlit ? "unterminated domain literal" : "unterminated quoted string");
}

/* Reads the next token into l->cur. */
static void addr_next(struct addr_lex *l)
{
	struct addr_tok *t = &l->cur;
	unsigned char c;

	memset(t, 0, sizeof(*t));
	if (l->err != NULL || addr_lex_cfws(l) < 0) {
		t->type = AT_ERR;
		return;
	}
	if (l->i >= l->len) {
		t->type = AT_EOF;
		return;
	}
	c = l->s[l->i];
	if (c == '"' || c == '[') {
		size_t start = ++l->i;
		if (addr_lex_delimited(l, c == '"' ? '"' : ']', c == '[') < 0) {
			t->type = AT_ERR;
			return;
		}
		t->type = c == '"' ? AT_QSTR : AT_DLIT;
		t->p = (const char *)l->s + start;
		t->n = l->i - start;
		l->i++;                         /* the closing delimiter */
		return;
	}
	if (addr_atext(c) || c >= 0x80) {
		size_t start = l->i;
		while (l->i < l->len) {
			c = l->s[l->i];
			if (addr_atext(c)) {
				l->i++;
			} else if (c >= 0x80) {
				size_t k = addr_utf8(l->s + l->i, l->len - l->i);
				if (k == 0) {
					addr_fail(l, "invalid UTF-8 in address field");
					t->type = AT_ERR;
					return;
				}
				l->i += k;
			} else {
				break;
			}
		}
		t->type = AT_ATOM;
		t->p = (const char *)l->s + start;
		t->n = l->i - start;
		return;
	}
	if (strchr("<>@,;:.", c) != NULL) {
		t->type = AT_SPECIAL;
		t->c = (char)c;
		l->i++;
		return;
	}
	addr_fail(l, c < 33 || c == 127 ? "control character in address field"
	    : "unexpected character in address field");
	t->type = AT_ERR;
}

static int addr_is(const struct addr_lex *l, char c)
{
	return l->cur.type == AT_SPECIAL && l->cur.c == c;
}

/* ---------- words: a local part or a display name ---------- */

struct addr_words {
	char buf[ADDR_SPEC_MAX + 1];
	size_t n;
	int too_long;
	int quoted;              /* a quoted-string word was seen */
	int expect_word;         /* at the start or after a '.' */
	int bad;                 /* not word *("." word) */
	int first_dot;           /* the first token was a '.' */
	int tokens;
};

static void addr_words_put(struct addr_words *w, char c)
{
	if (w->n >= ADDR_SPEC_MAX) {
		w->too_long = 1;
		return;
	}
	w->buf[w->n++] = c;
}

static void addr_words_add(struct addr_words *w, const struct addr_tok *t)
{
	if (w->tokens++ == 0 && t->type == AT_SPECIAL)
		w->first_dot = 1;
	if (t->type == AT_SPECIAL) {           /* '.' */
		if (w->expect_word)
			w->bad = 1;
		w->expect_word = 1;
		addr_words_put(w, '.');
		return;
	}
	if (!w->expect_word)
		w->bad = 1;                        /* two words without a dot */
	w->expect_word = 0;
	if (t->type == AT_ATOM) {
		for (size_t i = 0; i < t->n; i++)
			addr_words_put(w, t->p[i]);
		return;
	}
	/* quoted string: quoted-pairs undone, the line breaks of folds dropped */
	w->quoted = 1;
	for (size_t i = 0; i < t->n; i++) {
		char c = t->p[i];
		if (c == '\\' && i + 1 < t->n)
			c = t->p[++i];
		else if (c == '\r' || c == '\n')
			continue;
		addr_words_put(w, c);
	}
}

/* Is buf[0..n) a dot-atom (atext and UTF-8, single dots inside)? */
static int addr_dot_atom(const char *buf, size_t n)
{
	int need = 1;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)buf[i];
		if (c == '.') {
			if (need)
				return 0;
			need = 1;
		} else if (addr_atext(c) || c >= 0x80) {
			need = 0;              /* UTF-8 was validated by the lexer */
		} else {
			return 0;
		}
	}
	return !need;
}

/* ---------- the parser ---------- */

struct addr_out {
	char buf[ADDR_SPEC_MAX + 1];
	size_t n;
	int too_long;
};

static void addr_out_put(struct addr_out *o, char c)
{
	if (o->n >= ADDR_SPEC_MAX) {
		o->too_long = 1;
		return;
	}
	o->buf[o->n++] = c;
}

/* domain = dot-atom / domain-literal / obs-domain, at l->cur; appended to o
 * (o may be NULL: an obs-route domain, parsed and dropped). */
static int addr_domain(struct addr_lex *l, struct addr_out *o)
{
	if (l->cur.type == AT_DLIT) {
		if (o != NULL) {
			addr_out_put(o, '[');
			for (size_t i = 0; i < l->cur.n; i++) {
				char c = l->cur.p[i];
				if (c == '\\' && i + 1 < l->cur.n) {   /* obs-dtext quoted-pair: kept */
					addr_out_put(o, c);
					addr_out_put(o, l->cur.p[++i]);
				} else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
					addr_out_put(o, c);
				}
			}
			addr_out_put(o, ']');
		}
		addr_next(l);
		return 0;
	}
	for (;;) {
		if (l->cur.type != AT_ATOM)
			return addr_fail(l, "bad domain in address");
		if (o != NULL)
			for (size_t i = 0; i < l->cur.n; i++)
				addr_out_put(o, l->cur.p[i]);
		addr_next(l);
		if (!addr_is(l, '.'))
			return 0;
		if (o != NULL)
			addr_out_put(o, '.');
		addr_next(l);
	}
}

/* The rest of an addr-spec: w holds the local part, l->cur is the '@'. */
static int addr_spec_finish(struct addr_lex *l, const struct addr_words *w, struct addr_list *out)
{
	struct addr_out o;

	if (w->tokens == 0 || w->bad || w->expect_word)
		return addr_fail(l, "bad local part in address");
	if (w->too_long)
		return addr_fail(l, "address too long");
	o.n = 0;
	o.too_long = 0;
	if (!w->quoted || addr_dot_atom(w->buf, w->n)) {
		for (size_t i = 0; i < w->n; i++)
			addr_out_put(&o, w->buf[i]);
	} else {
		addr_out_put(&o, '"');
		for (size_t i = 0; i < w->n; i++) {
			if (w->buf[i] == '"' || w->buf[i] == '\\')
				addr_out_put(&o, '\\');
			addr_out_put(&o, w->buf[i]);
		}
		addr_out_put(&o, '"');
	}
	addr_out_put(&o, '@');
	addr_next(l);                           /* the '@' */
	if (addr_domain(l, &o) < 0)
		return -1;
	if (o.too_long)
		return addr_fail(l, "address too long");
	if (out->n >= ADDR_LIST_MAX)
		return addr_fail(l, "too many addresses");
	if (out->addr == NULL)
		out->addr = xcalloc(ADDR_LIST_MAX, sizeof(*out->addr));
	out->addr[out->n++] = xstrndup(o.buf, o.n);
	return 0;
}

static void addr_words_init(struct addr_words *w)
{
	w->n = 0;
	w->too_long = w->quoted = w->bad = w->first_dot = w->tokens = 0;
	w->expect_word = 1;
}

/* Collects words and dots at l->cur into w. */
static void addr_words_read(struct addr_lex *l, struct addr_words *w)
{
	addr_words_init(w);
	while (l->cur.type == AT_ATOM || l->cur.type == AT_QSTR || addr_is(l, '.')) {
		addr_words_add(w, &l->cur);
		addr_next(l);
	}
}

/* angle-addr after the '<': [obs-route] addr-spec ">". */
static int addr_angle(struct addr_lex *l, struct addr_words *w, struct addr_list *out)
{
	if (addr_is(l, '@') || addr_is(l, ',')) {
		/* obs-route: *(CFWS / ",") "@" domain *("," [CFWS] ["@" domain]) ":" */
		while (addr_is(l, ','))
			addr_next(l);
		if (!addr_is(l, '@'))
			return addr_fail(l, "bad route in address");
		addr_next(l);
		if (addr_domain(l, NULL) < 0)
			return -1;
		while (addr_is(l, ',')) {
			addr_next(l);
			if (addr_is(l, '@')) {
				addr_next(l);
				if (addr_domain(l, NULL) < 0)
					return -1;
			}
		}
		if (!addr_is(l, ':'))
			return addr_fail(l, "bad route in address");
		addr_next(l);
	}
	addr_words_read(l, w);
	if (!addr_is(l, '@'))
		return addr_fail(l, "syntax error in address");
	if (addr_spec_finish(l, w, out) < 0)
		return -1;
	if (!addr_is(l, '>'))
		return addr_fail(l, "missing '>' in address");
	addr_next(l);
	return 0;
}

int addr_parse_list(const char *s, size_t len, struct addr_list *out, const char **error_r)
{
	struct addr_lex l;
	struct addr_words *w;
	int in_group = 0, rc = -1;

	memset(out, 0, sizeof(*out));
	if (len > ADDR_INPUT_MAX) {
		*error_r = "address field too long";
		return -1;
	}
	memset(&l, 0, sizeof(l));
	l.s = (const unsigned char *)s;
	l.len = len;
	w = xmalloc(sizeof(*w));
	addr_next(&l);
	for (;;) {
		if (l.cur.type == AT_ERR)
			goto out;
		if (l.cur.type == AT_EOF)
			break;
		if (addr_is(&l, ',')) {               /* empty element (obs-addr-list) */
			addr_next(&l);
			continue;
		}
		if (addr_is(&l, ';')) {
			if (!in_group) {
				addr_fail(&l, "';' outside a group in address field");
				goto out;
			}
			in_group = 0;
			addr_next(&l);
			if (!addr_is(&l, ',') && l.cur.type != AT_EOF) {
				addr_fail(&l, "syntax error after group in address field");
				goto out;
			}
			continue;
		}
		addr_words_read(&l, w);
		if (addr_is(&l, '@')) {
			if (addr_spec_finish(&l, w, out) < 0)
				goto out;
		} else if (addr_is(&l, '<')) {
			if (w->first_dot) {
				addr_fail(&l, "bad display name in address");
				goto out;
			}
			addr_next(&l);
			if (addr_angle(&l, w, out) < 0)
				goto out;
		} else if (addr_is(&l, ':')) {
			if (in_group) {
				addr_fail(&l, "nested group in address field");
				goto out;
			}
			if (w->tokens == 0 || w->first_dot) {
				addr_fail(&l, "group without a name in address field");
				goto out;
			}
			in_group = 1;
			addr_next(&l);
			continue;
		} else {
			addr_fail(&l, "syntax error in address");
			goto out;
		}
		if (addr_is(&l, ',')) {
			addr_next(&l);
		} else if (!(in_group && addr_is(&l, ';')) && l.cur.type != AT_EOF) {
			addr_fail(&l, l.cur.type == AT_ERR ? NULL : "syntax error in address");
			goto out;
		}
	}
	if (in_group) {
		addr_fail(&l, "group without ';' in address field");
		goto out;
	}
	rc = 0;
out:
	free(w);
	if (rc < 0) {
		*error_r = l.err != NULL ? l.err : "syntax error in address";
		addr_list_free(out);
	}
	return rc;
}

void addr_list_free(struct addr_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->addr[i]);
	free(l->addr);
	l->addr = NULL;
	l->n = 0;
}
