/* mime: single-pass MIME structure parser. Walks the message line by line
 * once, keeping a stack of open multipart boundaries; each part records its
 * header/body offsets and parsed Content-* fields. Run by imapd (unprivileged). */
#include "mail/mime.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"

#define MIME_MAX_BOUNDARY 200
#define MIME_HDR_VALUE_MAX 65536

struct mime_level {
	struct mime_part *mp;      /* the multipart */
	const char *b;             /* its boundary */
	size_t blen;
	uint64_t hash;             /* FNV-1a of b */
};

struct mime_state {
	const char *msg;
	size_t len;
	struct mime_level stack[MIME_MAX_DEPTH + 1];
	int depth;                 /* stack entries used */
	size_t n_parts;
	int truncated;
	size_t lineno;             /* line terminators before the current line */
};

/* body_line is kept in a side field during the parse: we reuse body_lines. */

static struct mime_part *mime_new_part(struct mime_state *s, struct mime_part *parent, size_t off)
{
	struct mime_part *p = xcalloc(1, sizeof(*p));
	p->parent = parent;
	p->hdr_off = p->body_off = off;
	p->end_off = SIZE_MAX;
	p->depth = parent != NULL ? parent->depth + 1 : 0;
	if (parent != NULL) {
		struct mime_part **pp = &parent->children;
		/* append: keep a tail pointer cheaply via the last child walk is
		 * O(n^2); instead children are prepended and reversed at the end. */
		p->next = *pp;
		*pp = p;
		parent->n_children++;
	}
	s->n_parts++;
	return p;
}

static uint64_t mime_fnv(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* ---- header field helpers ---- */

static int mime_is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* Next line in [p, end): returns the end of the line content and sets *next
 * to the start of the next line. */
static size_t mime_line_end(const char *m, size_t p, size_t end, size_t *next)
{
	const char *nl = memchr(m + p, '\n', end - p);
	if (nl == NULL) {
		*next = end;
		return end;
	}
	size_t e = (size_t)(nl - m);
	*next = e + 1;
	if (e > p && m[e - 1] == '\r')
		e--;
	return e;
}

char *mime_header_get(const char *hdr, size_t len, const char *name, size_t max_len)
{
	size_t nlen = strlen(name);
	size_t p = 0, next;
	while (p < len) {
		size_t e = mime_line_end(hdr, p, len, &next);
		if (e == p)
			break;  /* blank line: end of header */
		if (!mime_is_wsp(hdr[p]) && e - p > nlen && strncasecmp(hdr + p, name, nlen) == 0) {
			size_t q = p + nlen;
			while (q < e && mime_is_wsp(hdr[q]))
				q++;
			if (q < e && hdr[q] == ':') {
				/* collect value and continuation lines */
				char *out = xmalloc(max_len + 1);
				size_t o = 0;
				q++;
				for (;;) {
					for (size_t i = q; i < e && o < max_len; i++)
						out[o++] = hdr[i];
					p = next;
					if (p >= len || !mime_is_wsp(hdr[p]))
						break;
					e = mime_line_end(hdr, p, len, &next);
					q = p;
				}
				size_t a = 0;
				while (a < o && (mime_is_wsp(out[a]) || out[a] == '\r' || out[a] == '\n'))
					a++;
				while (o > a && (mime_is_wsp(out[o - 1]) || out[o - 1] == '\r' || out[o - 1] == '\n'))
					o--;
				memmove(out, out + a, o - a);
				out[o - a] = '\0';
				return out;
			}
		}
		p = next;
	}
	return NULL;
}

const char *mime_param_get(const struct mime_param *p, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(p[i].name, name) == 0)
			return p[i].value;
	return NULL;
}

int mime_is_multipart(const struct mime_part *p)
{
	return strcmp(p->type, "multipart") == 0;
}

int mime_is_message(const struct mime_part *p)
{
	return strcmp(p->type, "message") == 0 &&
	    (strcmp(p->subtype, "rfc822") == 0 || strcmp(p->subtype, "global") == 0);
}

/* ---- Content-Type style values: token/token; a=b; c="d" ---- */

void mime_skip_cfws(const char **sp)
{
	const char *s = *sp;
	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
			s++;
		if (*s != '(')
			break;
		int depth = 0;
		while (*s != '\0') {
			if (*s == '\\' && s[1] != '\0') {
				s += 2;
				continue;
			}
			if (*s == '(')
				depth++;
			else if (*s == ')' && --depth == 0) {
				s++;
				break;
			}
			s++;
		}
	}
	*sp = s;
}

static int mime_tchar(char c)
{
	return (unsigned char)c > ' ' && (unsigned char)c < 127 && strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* Reads a token or quoted string into a malloc'd string; NULL if none. */
static char *mime_read_value(const char **sp, int allow_quoted)
{
	const char *s = *sp;
	char *out;
	mime_skip_cfws(&s);
	if (allow_quoted && *s == '"') {
		s++;
		/* sized by the quoted string itself, not the rest of the header:
		 * many quoted parameters in one long header stay linear */
		size_t cap = 1, o = 0;
		for (const char *q = s; *q != '\0' && *q != '"'; q++, cap++)
			if (*q == '\\' && q[1] != '\0')
				q++;
		out = xmalloc(cap);
		while (*s != '\0' && *s != '"') {
			if (*s == '\\' && s[1] != '\0')
				s++;
			out[o++] = *s++;
		}
		if (*s == '"')
			s++;
		out[o] = '\0';
	} else {
		const char *b = s;
		while (mime_tchar(*s) || (allow_quoted && (unsigned char)*s >= 128))
			s++;
		if (s == b) {
			*sp = s;
			return NULL;
		}
		out = xstrndup(b, (size_t)(s - b));
	}
	*sp = s;
	return out;
}

static void mime_parse_params(const char *s, struct mime_param **pr, size_t *nr)
{
	struct mime_param *ps = NULL;
	size_t n = 0;
	for (;;) {
		mime_skip_cfws(&s);
		if (*s == '\0')
			break;
		if (*s != ';') {
			/* garbage: skip to the next ';' */
			while (*s != '\0' && *s != ';')
				s++;
			continue;
		}
		s++;
		char *name = mime_read_value(&s, 0);
		if (name == NULL)
			continue;
		mime_skip_cfws(&s);
		if (*s != '=') {
			xfree(&name);
			continue;
		}
		s++;
		if (n >= MIME_MAX_PARAMS) {
			xfree(&name);
			break;          /* a hard stop: the rest of the header is not parsed */
		}
		char *value = mime_read_value(&s, 1);
		if (value == NULL)
			value = xstrdup("");
		util_lower(name);
		ps = xrealloc(ps, (n + 1) * sizeof(*ps));
		ps[n].name = name;
		ps[n].value = value;
		n++;
	}
	*pr = ps;
	*nr = n;
}

static void mime_set_default_type(struct mime_part *p)
{
	int digest = p->parent != NULL && mime_is_multipart(p->parent) &&
	    strcmp(p->parent->subtype, "digest") == 0;
	p->type = xstrdup(digest ? "message" : "text");
	p->subtype = xstrdup(digest ? "rfc822" : "plain");
	if (!digest) {
		p->params = xmalloc(sizeof(*p->params));
		p->params[0].name = xstrdup("charset");
		p->params[0].value = xstrdup("us-ascii");
		p->n_params = 1;
	}
}

/* Parses the Content-* fields of p from its header. */
static void mime_part_headers(struct mime_state *s, struct mime_part *p)
{
	const char *h = s->msg + p->hdr_off;
	size_t hl = p->body_off - p->hdr_off;
	char *ct = mime_header_get(h, hl, "Content-Type", MIME_HDR_VALUE_MAX);
	if (ct != NULL) {
		const char *c = ct;
		char *type = mime_read_value(&c, 0);
		char *sub = NULL;
		mime_skip_cfws(&c);
		if (type != NULL && *c == '/') {
			c++;
			sub = mime_read_value(&c, 0);
		}
		if (type != NULL && sub != NULL) {
			util_lower(type);
			util_lower(sub);
			p->type = type;
			p->subtype = sub;
			mime_parse_params(c, &p->params, &p->n_params);
		} else {
			xfree(&type);
			xfree(&sub);
		}
		xfree(&ct);
	}
	if (p->type == NULL)
		mime_set_default_type(p);

	char *v = mime_header_get(h, hl, "Content-Transfer-Encoding", 256);
	if (v != NULL) {
		const char *c = v;
		p->encoding = mime_read_value(&c, 0);
		xfree(&v);
	}
	p->id = mime_header_get(h, hl, "Content-ID", 1024);
	p->description = mime_header_get(h, hl, "Content-Description", 4096);
	p->md5 = mime_header_get(h, hl, "Content-MD5", 256);
	p->language = mime_header_get(h, hl, "Content-Language", 1024);
	p->location = mime_header_get(h, hl, "Content-Location", 4096);
	v = mime_header_get(h, hl, "Content-Disposition", MIME_HDR_VALUE_MAX);
	if (v != NULL) {
		const char *c = v;
		p->disposition = mime_read_value(&c, 0);
		if (p->disposition != NULL) {
			util_lower(p->disposition);
			mime_parse_params(c, &p->disp_params, &p->n_disp_params);
		}
		xfree(&v);
	}
}

/* ---- the single pass ---- */

enum mime_pstate { MIME_IN_HEADER, MIME_IN_BODY };

/* Checks the line [ls, le) against open boundaries, innermost first.
 * Returns the stack index matched, or -1; *close_r set for "--b--". */
static int mime_match_boundary(struct mime_state *s, size_t ls, size_t le, int *close_r)
{
	if (s->depth == 0 || le - ls < 3 || s->msg[ls] != '-' || s->msg[ls + 1] != '-')
		return -1;
	const char *b = s->msg + ls + 2;
	size_t avail = le - ls - 2;
	size_t maxl = avail < MIME_MAX_BOUNDARY ? avail : MIME_MAX_BOUNDARY;
	uint64_t hashes[MIME_MAX_BOUNDARY + 1];
	uint64_t h = 1469598103934665603ULL;
	hashes[0] = h;
	for (size_t i = 0; i < maxl; i++) {
		h ^= (unsigned char)b[i];
		h *= 1099511628211ULL;
		hashes[i + 1] = h;
	}
	for (int k = s->depth - 1; k >= 0; k--) {
		const struct mime_level *lv = &s->stack[k];
		if (lv->blen > maxl || hashes[lv->blen] != lv->hash || memcmp(b, lv->b, lv->blen) != 0)
			continue;
		const char *r = b + lv->blen;
		const char *re = s->msg + le;
		int close = 0;
		if (re - r >= 2 && r[0] == '-' && r[1] == '-') {
			close = 1;
			r += 2;
		}
		while (r < re && mime_is_wsp(*r))
			r++;
		if (r != re)
			continue;
		*close_r = close;
		return k;
	}
	return -1;
}

/* Ends every open part from cur up to (not including) stop at offset end. */
static void mime_close_chain(struct mime_part *cur, struct mime_part *stop, size_t end, size_t lineno, int partial)
{
	for (struct mime_part *p = cur; p != NULL && p != stop; p = p->parent) {
		if (p->end_off != SIZE_MAX)
			continue;
		if (end < p->body_off)
			end = p->body_off;
		p->end_off = end;
		/* body_lines holds the line number of body_off during the parse */
		size_t lines = lineno - p->body_lines + (partial ? 1 : 0);
		p->body_lines = end == p->body_off ? 0 : lines;
	}
}

static void mime_reverse_children(struct mime_part *p)
{
	/* iterative over the tree using an explicit walk: depth <= MAX_DEPTH+1 */
	struct mime_part *prev = NULL, *c = p->children;
	while (c != NULL) {
		struct mime_part *n = c->next;
		c->next = prev;
		prev = c;
		c = n;
	}
	p->children = prev;
	for (c = p->children; c != NULL; c = c->next)
		mime_reverse_children(c);
}

/* Called when part p's header is complete: sets its type and opens what
 * its body contains. Returns the new current part. */
static struct mime_part *mime_header_done(struct mime_state *s, struct mime_part *p, enum mime_pstate *st)
{
	mime_part_headers(s, p);
	p->body_lines = s->lineno;
	*st = MIME_IN_BODY;
	if (mime_is_multipart(p)) {
		const char *b = mime_param_get(p->params, p->n_params, "boundary");
		size_t bl = b != NULL ? strlen(b) : 0;
		if (bl == 0 || bl > MIME_MAX_BOUNDARY)
			return p;
		if (s->depth >= MIME_MAX_DEPTH || p->depth >= MIME_MAX_DEPTH) {
			s->truncated = 1;
			return p;
		}
		struct mime_level *lv = &s->stack[s->depth++];
		lv->mp = p;
		lv->b = b;
		lv->blen = bl;
		lv->hash = mime_fnv(b, bl);
		return p;
	}
	if (mime_is_message(p)) {
		if (p->depth >= MIME_MAX_DEPTH || s->n_parts >= MIME_MAX_PARTS) {
			s->truncated = 1;
			return p;
		}
		struct mime_part *c = mime_new_part(s, p, p->body_off);
		*st = MIME_IN_HEADER;
		return c;
	}
	return p;
}

struct mime_part *mime_parse(const char *msg, size_t len, size_t *n_parts_r, int *truncated_r)
{
	if (len > (SIZE_MAX >> 2))
		return NULL;
	struct mime_state s;
	memset(&s, 0, sizeof(s));
	s.msg = msg;
	s.len = len;
	struct mime_part *root = mime_new_part(&s, NULL, 0);
	struct mime_part *cur = root;
	enum mime_pstate st = MIME_IN_HEADER;
	size_t p = 0, next;

	while (p < len) {
		size_t le = mime_line_end(msg, p, len, &next);
		int close = 0;
		int k = mime_match_boundary(&s, p, le, &close);
		if (k >= 0) {
			struct mime_level *lv = &s.stack[k];
			size_t end = p;
			if (end >= 1 && msg[end - 1] == '\n') {
				end--;
				if (end >= 1 && msg[end - 1] == '\r')
					end--;
			}
			if (st == MIME_IN_HEADER && cur != lv->mp) {
				/* header cut by a boundary: no body */
				cur->body_off = p;
				mime_part_headers(&s, cur);
				cur->body_lines = s.lineno;
			}
			mime_close_chain(cur, lv->mp, end, s.lineno, 0);
			s.depth = k + 1;
			if (close) {
				s.depth = k;
				cur = lv->mp;
				st = MIME_IN_BODY;
			} else if (s.n_parts >= MIME_MAX_PARTS) {
				s.truncated = 1;
				s.depth = k;  /* stop splitting: the rest is epilogue */
				cur = lv->mp;
				st = MIME_IN_BODY;
			} else {
				cur = mime_new_part(&s, lv->mp, next);
				st = MIME_IN_HEADER;
			}
		} else if (st == MIME_IN_HEADER && le == p) {
			cur->body_off = next;
			s.lineno++;
			p = next;
			cur = mime_header_done(&s, cur, &st);
			continue;
		}
		if (next > le && next <= len && msg[next - 1] == '\n')
			s.lineno++;
		p = next;
	}
	/* EOF */
	if (st == MIME_IN_HEADER) {
		cur->body_off = len;
		mime_part_headers(&s, cur);
		cur->body_lines = s.lineno;
		/* a message/rfc822 child whose header runs to EOF is just itself */
	}
	int partial = len > 0 && msg[len - 1] != '\n';
	mime_close_chain(cur, NULL, len, s.lineno, partial);
	mime_reverse_children(root);
	if (n_parts_r != NULL)
		*n_parts_r = s.n_parts;
	if (truncated_r != NULL)
		*truncated_r = s.truncated;
	return root;
}

static void mime_free_params(struct mime_param *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		xfree(&p[i].name);
		xfree(&p[i].value);
	}
	xfree(&p);
}

static void mime_free_part(struct mime_part *p)
{
	xfree(&p->type);
	xfree(&p->subtype);
	mime_free_params(p->params, p->n_params);
	mime_free_params(p->disp_params, p->n_disp_params);
	xfree(&p->id);
	xfree(&p->description);
	xfree(&p->encoding);
	xfree(&p->md5);
	xfree(&p->language);
	xfree(&p->location);
	xfree(&p->disposition);
	xfree(&p);
}

void mime_free(struct mime_part **rootp)
{
	struct mime_part *root = *rootp;
	if (root == NULL)
		return;
	/* iterative post-order: detach children as we go */
	struct mime_part *p = root;
	while (p != NULL) {
		if (p->children != NULL) {
			struct mime_part *c = p->children;
			p->children = c->next;
			c->next = NULL;
			p = c;
			continue;
		}
		struct mime_part *parent = p->parent;
		int is_root = p == root;
		mime_free_part(p);
		if (is_root)
			break;
		p = parent;
	}
	*rootp = NULL;
}
