/* imap_fetch: builds the structured parts of FETCH responses (ENVELOPE,
 * BODY, BODYSTRUCTURE) and extracts BODY[section] data from a message held
 * in memory and parsed by src/mail/mime.c. Run by imapd. */
#include "imap/imap_fetch.h"

#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "lib/util.h"
#include "mail/mime.h"

#define IMAP_MAX_ADDRS 1000
#define IMAP_HDR_MAX 65536

void imap_write_string(struct evbuffer *out, const char *s, size_t len)
{
	if (s == NULL) {
		evbuffer_add(out, "NIL", 3);
		return;
	}
	int quoted = len < 1024;
	for (size_t i = 0; quoted && i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < ' ' || c >= 127)
			quoted = 0;
	}
	if (quoted) {
		evbuffer_add(out, "\"", 1);
		size_t b = 0;
		for (size_t i = 0; i < len; i++)
			if (s[i] == '"' || s[i] == '\\') {
				evbuffer_add(out, s + b, i - b);
				evbuffer_add(out, "\\", 1);
				b = i;
			}
		evbuffer_add(out, s + b, len - b);
		evbuffer_add(out, "\"", 1);
		return;
	}
	evbuffer_add_printf(out, "{%zu}\r\n", len);
	evbuffer_add(out, s, len);
}

void imap_write_cstring(struct evbuffer *out, const char *s)
{
	imap_write_string(out, s, s != NULL ? strlen(s) : 0);
}

/* ---- addresses ---- */

struct imap_addr_st {
	struct evbuffer *out;
	int n;
	char *phrase, *raw;
	size_t pl, rl;
};

static void imap_addr_emit(struct imap_addr_st *st, const char *name, size_t nl, const char *spec, size_t sl)
{
	if (st->n >= IMAP_MAX_ADDRS)
		return;
	if (st->n++ == 0)
		evbuffer_add(st->out, "(", 1);
	const char *at = NULL;
	for (size_t i = 0; i < sl; i++)
		if (spec[i] == '@')
			at = spec + i;
	evbuffer_add(st->out, "(", 1);
	imap_write_string(st->out, nl > 0 ? name : NULL, nl);
	evbuffer_add(st->out, " NIL ", 5);
	if (at != NULL) {
		imap_write_string(st->out, spec, (size_t)(at - spec));
		evbuffer_add(st->out, " ", 1);
		imap_write_string(st->out, at + 1, sl - (size_t)(at - spec) - 1);
	} else {
		imap_write_string(st->out, spec, sl);
		evbuffer_add(st->out, " \"\"", 3);
	}
	evbuffer_add(st->out, ")", 1);
}

static void imap_addr_group(struct imap_addr_st *st, const char *name, size_t nl)
{
	if (st->n >= IMAP_MAX_ADDRS)
		return;
	if (st->n++ == 0)
		evbuffer_add(st->out, "(", 1);
	evbuffer_add(st->out, "(NIL NIL ", 9);
	if (name != NULL)
		imap_write_string(st->out, name, nl);
	else
		evbuffer_add(st->out, "NIL", 3);
	evbuffer_add(st->out, " NIL)", 5);
}

static void imap_addr_add(char *buf, size_t *l, const char *s, size_t n, int space)
{
	if (space && *l > 0)
		buf[(*l)++] = ' ';
	memcpy(buf + *l, s, n);
	*l += n;
}

void imap_write_addresses(struct evbuffer *out, const char *v)
{
	if (v == NULL) {
		evbuffer_add(out, "NIL", 3);
		return;
	}
	size_t vl = strlen(v);
	struct imap_addr_st st = { out, 0, xmalloc(2 * vl + 2), xmalloc(2 * vl + 2), 0, 0 };
	char *angle = xmalloc(vl + 1);
	size_t al = 0;
	int in_angle = 0, in_group = 0, done_angle = 0;
	const char *p = v;
	char *word = xmalloc(vl + 1);
	while (*p != '\0') {
		char c = *p;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '(') {
			mime_skip_cfws(&p);
			continue;
		}
		size_t wl = 0;
		int special = 0;
		if (c == '"') {
			p++;
			while (*p != '\0' && *p != '"') {
				if (*p == '\\' && p[1] != '\0')
					p++;
				word[wl++] = *p++;
			}
			if (*p == '"')
				p++;
		} else if (strchr("<>,:;", c) != NULL) {
			special = c;
			p++;
		} else {
			while (*p != '\0' && strchr("<>,:;\"( \t\r\n", *p) == NULL)
				word[wl++] = *p++;
		}
		if (in_angle) {
			if (special == '>') {
				in_angle = 0;
				done_angle = 1;
				/* drop a source route "@a,@b:" */
				const char *a = angle;
				size_t n = al;
				for (size_t i = 0; i < al; i++)
					if (angle[i] == ':') {
						a = angle + i + 1;
						n = al - i - 1;
					}
				imap_addr_emit(&st, st.phrase, st.pl, a, n);
			} else if (special) {
				angle[al++] = (char)special;
			} else {
				memcpy(angle + al, word, wl);
				al += wl;
			}
			continue;
		}
		switch (special) {
		case '<':
			in_angle = 1;
			al = 0;
			break;
		case '>':
			break;
		case ':':
			imap_addr_group(&st, st.phrase, st.pl);
			in_group = 1;
			st.pl = st.rl = 0;
			break;
		case ',':
		case ';':
			if (!done_angle && st.rl > 0)
				imap_addr_emit(&st, NULL, 0, st.raw, st.rl);
			st.pl = st.rl = 0;
			done_angle = 0;
			if (special == ';' && in_group) {
				imap_addr_group(&st, NULL, 0);
				in_group = 0;
			}
			break;
		default:
			if (!done_angle) {
				imap_addr_add(st.phrase, &st.pl, word, wl, 1);
				imap_addr_add(st.raw, &st.rl, word, wl, 0);
			}
			break;
		}
	}
	if (in_angle && al > 0)
		imap_addr_emit(&st, st.phrase, st.pl, angle, al);
	else if (!done_angle && st.rl > 0)
		imap_addr_emit(&st, NULL, 0, st.raw, st.rl);
	if (in_group)
		imap_addr_group(&st, NULL, 0);
	if (st.n > 0)
		evbuffer_add(out, ")", 1);
	else
		evbuffer_add(out, "NIL", 3);
	xfree(&word);
	xfree(&angle);
	xfree(&st.phrase);
	xfree(&st.raw);
}

/* ---- ENVELOPE ---- */

void imap_write_envelope(struct evbuffer *out, const char *msg, const struct mime_part *m)
{
	const char *h = msg + m->hdr_off;
	size_t hl = m->body_off - m->hdr_off;
	char *date = mime_header_get(h, hl, "Date", IMAP_HDR_MAX);
	char *subj = mime_header_get(h, hl, "Subject", IMAP_HDR_MAX);
	char *from = mime_header_get(h, hl, "From", IMAP_HDR_MAX);
	char *sender = mime_header_get(h, hl, "Sender", IMAP_HDR_MAX);
	char *reply = mime_header_get(h, hl, "Reply-To", IMAP_HDR_MAX);
	char *to = mime_header_get(h, hl, "To", IMAP_HDR_MAX);
	char *cc = mime_header_get(h, hl, "Cc", IMAP_HDR_MAX);
	char *bcc = mime_header_get(h, hl, "Bcc", IMAP_HDR_MAX);
	char *irt = mime_header_get(h, hl, "In-Reply-To", IMAP_HDR_MAX);
	char *mid = mime_header_get(h, hl, "Message-ID", IMAP_HDR_MAX);

	evbuffer_add(out, "(", 1);
	imap_write_cstring(out, date);
	evbuffer_add(out, " ", 1);
	imap_write_cstring(out, subj);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, from);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, sender != NULL ? sender : from);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, reply != NULL ? reply : from);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, to);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, cc);
	evbuffer_add(out, " ", 1);
	imap_write_addresses(out, bcc);
	evbuffer_add(out, " ", 1);
	imap_write_cstring(out, irt);
	evbuffer_add(out, " ", 1);
	imap_write_cstring(out, mid);
	evbuffer_add(out, ")", 1);
	char *all[] = { date, subj, from, sender, reply, to, cc, bcc, irt, mid };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		xfree(&all[i]);
}

/* ---- BODYSTRUCTURE ---- */

static void imap_write_params(struct evbuffer *out, const struct mime_param *p, size_t n)
{
	if (n == 0) {
		evbuffer_add(out, "NIL", 3);
		return;
	}
	evbuffer_add(out, "(", 1);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p[i].name);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p[i].value);
	}
	evbuffer_add(out, ")", 1);
}

static void imap_write_ext_tail(struct evbuffer *out, const struct mime_part *p)
{
	/* disposition, language, location */
	evbuffer_add(out, " ", 1);
	if (p->disposition != NULL) {
		evbuffer_add(out, "(", 1);
		imap_write_cstring(out, p->disposition);
		evbuffer_add(out, " ", 1);
		imap_write_params(out, p->disp_params, p->n_disp_params);
		evbuffer_add(out, ")", 1);
	} else {
		evbuffer_add(out, "NIL", 3);
	}
	evbuffer_add(out, " ", 1);
	imap_write_cstring(out, p->language);
	evbuffer_add(out, " ", 1);
	imap_write_cstring(out, p->location);
}

void imap_write_bodystructure(struct evbuffer *out, const char *msg, const struct mime_part *p, int ext)
{
	if (mime_is_multipart(p) && p->n_children > 0) {
		evbuffer_add(out, "(", 1);
		for (const struct mime_part *c = p->children; c != NULL; c = c->next)
			imap_write_bodystructure(out, msg, c, ext);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p->subtype);
		if (ext) {
			evbuffer_add(out, " ", 1);
			imap_write_params(out, p->params, p->n_params);
			imap_write_ext_tail(out, p);
		}
		evbuffer_add(out, ")", 1);
		return;
	}
	int broken_multi = mime_is_multipart(p);
	size_t size = p->end_off - p->body_off;
	evbuffer_add(out, "(", 1);
	if (broken_multi) {
		/* a multipart without any part: present it as plain text */
		evbuffer_add_printf(out, "\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" %zu %zu",
		    size, p->body_lines);
	} else {
		imap_write_cstring(out, p->type);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p->subtype);
		evbuffer_add(out, " ", 1);
		imap_write_params(out, p->params, p->n_params);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p->id);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p->description);
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, p->encoding != NULL ? p->encoding : "7bit");
		evbuffer_add_printf(out, " %zu", size);
		if (strcmp(p->type, "text") == 0) {
			evbuffer_add_printf(out, " %zu", p->body_lines);
		} else if (mime_is_message(p) && p->children != NULL) {
			evbuffer_add(out, " ", 1);
			imap_write_envelope(out, msg, p->children);
			evbuffer_add(out, " ", 1);
			imap_write_bodystructure(out, msg, p->children, ext);
			evbuffer_add_printf(out, " %zu", p->body_lines);
		}
	}
	if (ext) {
		evbuffer_add(out, " ", 1);
		imap_write_cstring(out, broken_multi ? NULL : p->md5);
		imap_write_ext_tail(out, p);
	}
	evbuffer_add(out, ")", 1);
}

/* ---- sections ---- */

static const struct mime_part *imap_nth_child(const struct mime_part *p, uint32_t k)
{
	const struct mime_part *c = p->children;
	for (uint32_t i = 1; c != NULL && i < k; i++)
		c = c->next;
	return c;
}

/* Filters header fields; the result ends with the blank line. */
static char *imap_header_filter(const char *h, size_t hl, const struct imap_fetch_att *a, size_t *len_r)
{
	char *out = xmalloc(hl + 3);
	size_t o = 0, p = 0;
	int keep = 0;
	while (p < hl) {
		const char *nl = memchr(h + p, '\n', hl - p);
		size_t next = nl != NULL ? (size_t)(nl - h) + 1 : hl;
		size_t le = next;
		while (le > p && (h[le - 1] == '\n' || h[le - 1] == '\r'))
			le--;
		if (le == p)
			break;  /* the blank line */
		if (h[p] != ' ' && h[p] != '\t') {
			const char *colon = memchr(h + p, ':', le - p);
			size_t nlen = colon != NULL ? (size_t)(colon - (h + p)) : 0;
			while (nlen > 0 && (h[p + nlen - 1] == ' ' || h[p + nlen - 1] == '\t'))
				nlen--;
			int match = 0;
			for (int i = 0; i < a->n_fields && nlen > 0; i++)
				if (strlen(a->fields[i]) == nlen && strncasecmp(a->fields[i], h + p, nlen) == 0)
					match = 1;
			keep = a->sect == IMAP_S_FIELDS ? match : !match;
			if (colon == NULL)
				keep = 0;
		}
		if (keep) {
			memcpy(out + o, h + p, le - p);
			o += le - p;
			out[o++] = '\r';
			out[o++] = '\n';
		}
		p = next;
	}
	out[o++] = '\r';
	out[o++] = '\n';
	*len_r = o;
	return out;
}

int imap_section_range(const struct mime_part *root, size_t len, const struct imap_fetch_att *a,
    size_t *off_r, size_t *len_r)
{
	const struct mime_part *node = root;
	int is_msg = 1;
	for (int i = 0; i < a->n_part; i++) {
		uint32_t k = a->part[i];
		if (is_msg) {
			is_msg = 0;
			if (mime_is_multipart(node) && node->n_children > 0)
				node = imap_nth_child(node, k);
			else if (k != 1)
				node = NULL;
		} else if (mime_is_multipart(node) && node->n_children > 0) {
			node = imap_nth_child(node, k);
		} else if (mime_is_message(node) && node->children != NULL) {
			const struct mime_part *m = node->children;
			if (mime_is_multipart(m) && m->n_children > 0)
				node = imap_nth_child(m, k);
			else if (k == 1)
				node = m;
			else
				node = NULL;
		} else {
			node = NULL;
		}
		if (node == NULL)
			return 1;
	}
	const struct mime_part *m = node;  /* the message for HEADER/TEXT */
	if (a->n_part > 0 && a->sect != IMAP_S_ALL && a->sect != IMAP_S_MIME) {
		if (!mime_is_message(node) || node->children == NULL)
			return 1;
		m = node->children;
	}
	switch (a->sect) {
	case IMAP_S_ALL:
		if (a->n_part == 0) {
			*off_r = 0;
			*len_r = len;
		} else {
			*off_r = node->body_off;
			*len_r = node->end_off - node->body_off;
		}
		return 0;
	case IMAP_S_MIME:
		*off_r = node->hdr_off;
		*len_r = node->body_off - node->hdr_off;
		return 0;
	case IMAP_S_HEADER:
		*off_r = m->hdr_off;
		*len_r = m->body_off - m->hdr_off;
		return 0;
	case IMAP_S_TEXT:
		*off_r = m->body_off;
		*len_r = m->end_off - m->body_off;
		return 0;
	case IMAP_S_FIELDS:
	case IMAP_S_FIELDS_NOT:
		*off_r = m->hdr_off;
		*len_r = m->body_off - m->hdr_off;
		return 2;
	}
	return 1;
}

char *imap_section_fields(const char *hdr, size_t len, const struct imap_fetch_att *a, size_t *len_r)
{
	return imap_header_filter(hdr, len, a, len_r);
}

int imap_section_get(const char *msg, size_t len, const struct mime_part *root,
    const struct imap_fetch_att *a, const char **data_r, size_t *len_r, char **owned_r)
{
	size_t off = 0, n = 0;
	*owned_r = NULL;
	int r = imap_section_range(root, len, a, &off, &n);
	if (r == 1)
		return 1;
	if (r == 2) {
		*owned_r = imap_header_filter(msg + off, n, a, len_r);
		*data_r = *owned_r;
		return 0;
	}
	*data_r = msg + off;
	*len_r = n;
	return 0;
}

/* ---- the parsed form kept in the cache ---- */

static char *imap_evbuffer_take(struct evbuffer *b, size_t *len_r)
{
	size_t n = evbuffer_get_length(b);
	char *s = xmalloc(n + 1);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	*len_r = n;
	return s;
}

static void imap_params_drop(struct mime_param **p, size_t *n)
{
	for (size_t i = 0; i < *n; i++) {
		xfree(&(*p)[i].name);
		xfree(&(*p)[i].value);
	}
	xfree(p);
	*n = 0;
}

/* Once BODY and BODYSTRUCTURE are rendered, sections need only the shape
 * of the tree (type, subtype, offsets): the rest goes, so a cache entry of
 * a message with thousands of parts stays small. */
static void imap_fetch_strip(struct mime_part *root)
{
	struct mime_part *p = root;
	while (p != NULL) {
		imap_params_drop(&p->params, &p->n_params);
		imap_params_drop(&p->disp_params, &p->n_disp_params);
		char **str[] = { &p->id, &p->description, &p->encoding, &p->md5, &p->language,
		    &p->location, &p->disposition };
		for (size_t i = 0; i < sizeof(str) / sizeof(str[0]); i++)
			xfree(str[i]);
		if (p->children != NULL) {
			p = p->children;
			continue;
		}
		while (p != root && p->next == NULL)
			p = p->parent;
		if (p == root)
			break;
		p = p->next;
	}
}

struct imap_cache_ent *imap_fetch_parse(const char *msg, size_t len)
{
	struct mime_part *mime = mime_parse(msg, len, NULL, NULL);
	if (mime == NULL)
		return NULL;
	struct evbuffer *b = evbuffer_new();
	if (b == NULL) {
		mime_free(&mime);
		return NULL;
	}
	struct imap_cache_ent *e = xcalloc(1, sizeof(*e));
	e->mime = mime;
	e->crlf_size = (int64_t)len;
	imap_write_envelope(b, msg, mime);
	e->envelope = imap_evbuffer_take(b, &e->envelope_len);
	imap_write_bodystructure(b, msg, mime, 0);
	e->body = imap_evbuffer_take(b, &e->body_len);
	imap_write_bodystructure(b, msg, mime, 1);
	e->bodystructure = imap_evbuffer_take(b, &e->bodystructure_len);
	evbuffer_free(b);
	imap_fetch_strip(mime);
	return e;
}
