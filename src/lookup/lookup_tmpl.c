/* lookup_tmpl: turns the admin's query templates into safe queries: SQL
 * templates into parameterised statements (%m %u %d bound, never pasted),
 * LDAP filter templates into filters with RFC 4515 escaped values. Runs in
 * smtpd's lookup threads and in kalectl. */
#include "lookup/lookup_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/util.h"

struct lookup_buf {
	char *s;
	size_t len, cap;
};

static void lookup_buf_add(struct lookup_buf *b, const char *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (b->len + n + 1 > cap)
			cap *= 2;
		b->s = xrealloc(b->s, cap);
		b->cap = cap;
	}
	memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void lookup_buf_ch(struct lookup_buf *b, char c)
{
	lookup_buf_add(b, &c, 1);
}

static char *lookup_buf_take(struct lookup_buf *b)
{
	char *s = b->s ? b->s : xstrdup("");

	b->s = NULL;
	b->len = b->cap = 0;
	return s;
}

static int lookup_is_ph(const char *p)
{
	return p[0] == '%' && (p[1] == 'm' || p[1] == 'u' || p[1] == 'd');
}

static void lookup_sql_marker(struct lookup_buf *b, int dollar, int n)
{
	char m[16];

	if (!dollar) {
		lookup_buf_ch(b, '?');
		return;
	}
	if (util_fmt(m, sizeof(m), "$%d", n) == 0)
		lookup_buf_add(b, m, strlen(m));
}

int lookup_sql_compile(const char *tmpl, int dollar, struct lookup_sql *q, char **error_r)
{
	struct lookup_buf out = { 0 }, lit = { 0 };
	const char *p = tmpl;

	memset(q, 0, sizeof(*q));
	if (strlen(tmpl) > 1000)
		return util_err(error_r, "query template longer than 1000 bytes");
	while (*p != '\0') {
		if (*p == '\'') {
			/* a string literal: its contents unescaped into lit */
			const char *start = p;
			int has_ph = 0;
			p++;
			for (;;) {
				if (*p == '\0') {
					util_err(error_r, "unterminated string literal in the query");
					goto fail;
				}
				if (*p == '\'' && p[1] == '\'') {
					lookup_buf_ch(&lit, '\'');
					p += 2;
				} else if (*p == '\'') {
					p++;
					break;
				} else if (!dollar && *p == '\\' && p[1] != '\0') {
					if (p[1] == '\'' || p[1] == '\\' || p[1] == '"')
						lookup_buf_ch(&lit, p[1]);
					else
						lookup_buf_add(&lit, p, 2);
					p += 2;
				} else if (*p == '%' && p[1] == '%') {
					lookup_buf_add(&lit, p, 2);
					p += 2;
				} else {
					if (lookup_is_ph(p))
						has_ph = 1;
					lookup_buf_ch(&lit, *p);
					p++;
				}
			}
			if (has_ph) {
				if (q->nparams >= LOOKUP_SQL_PARAMS) {
					util_err(error_r, "more than %d placeholders", LOOKUP_SQL_PARAMS);
					goto fail;
				}
				q->params[q->nparams++] = lookup_buf_take(&lit);
				lookup_sql_marker(&out, dollar, q->nparams);
			} else {
				/* no placeholder: copied as written ("%%" stays "%%") */
				lookup_buf_add(&out, start, (size_t)(p - start));
				free(lit.s);
				lit.s = NULL;
				lit.len = lit.cap = 0;
			}
			continue;
		}
		if (lookup_is_ph(p)) {
			if (q->nparams >= LOOKUP_SQL_PARAMS) {
				util_err(error_r, "more than %d placeholders", LOOKUP_SQL_PARAMS);
				goto fail;
			}
			q->params[q->nparams++] = xstrndup(p, 2);
			lookup_sql_marker(&out, dollar, q->nparams);
			p += 2;
			continue;
		}
		if (*p == '%' && p[1] == '%') {
			lookup_buf_ch(&out, '%');
			p += 2;
			continue;
		}
		if (*p == '"' || *p == '`') {
			/* a quoted identifier: copied, no placeholders inside */
			const char *end = strchr(p + 1, *p);
			if (end == NULL) {
				util_err(error_r, "unterminated quoted identifier in the query");
				goto fail;
			}
			for (const char *r = p; r < end; r++)
				if (lookup_is_ph(r)) {
					util_err(error_r, "placeholder inside a quoted identifier");
					goto fail;
				}
			lookup_buf_add(&out, p, (size_t)(end + 1 - p));
			p = end + 1;
			continue;
		}
		if (*p == ';' || *p == '#' || (*p == '-' && p[1] == '-') || (*p == '/' && p[1] == '*')) {
			util_err(error_r, "the query must be one statement without comments or ';'");
			goto fail;
		}
		if ((!dollar && *p == '?') || (dollar && *p == '$')) {
			util_err(error_r, "'%c' is reserved: write %%m, %%u or %%d", *p);
			goto fail;
		}
		if ((unsigned char)*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r') {
			util_err(error_r, "control character in the query");
			goto fail;
		}
		lookup_buf_ch(&out, *p);
		p++;
	}
	if (q->nparams == 0) {
		util_err(error_r, "the query has no %%m, %%u or %%d");
		goto fail;
	}
	q->sql = lookup_buf_take(&out);
	return 0;
fail:
	free(out.s);
	free(lit.s);
	lookup_sql_free(q);
	return -1;
}

void lookup_sql_free(struct lookup_sql *q)
{
	free(q->sql);
	q->sql = NULL;
	for (int i = 0; i < q->nparams; i++)
		xfree(&q->params[i]);
	q->nparams = 0;
}

char *lookup_ldap_escape(const char *v, size_t len)
{
	struct lookup_buf b = { 0 };
	char hex[4];

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '*' || c == '(' || c == ')' || c == '\\' || c == '\0') {
			if (util_fmt(hex, sizeof(hex), "\\%02x", c) == 0)
				lookup_buf_add(&b, hex, 3);
		} else {
			lookup_buf_ch(&b, (char)c);
		}
	}
	return lookup_buf_take(&b);
}

char *lookup_expand(const char *tmpl, const char *address, int ldap)
{
	struct lookup_buf b = { 0 };
	const char *at = strrchr(address, '@');
	size_t alen = strlen(address);
	size_t ulen = at ? (size_t)(at - address) : alen;
	const char *dom = at ? at + 1 : "";

	for (const char *p = tmpl; *p != '\0'; p++) {
		const char *v = NULL;
		size_t vlen = 0;
		if (*p == '%' && p[1] == '%') {
			lookup_buf_ch(&b, '%');
			p++;
			continue;
		}
		if (*p != '%' || (p[1] != 'm' && p[1] != 'u' && p[1] != 'd')) {
			lookup_buf_ch(&b, *p);
			continue;
		}
		switch (p[1]) {
		case 'm': v = address; vlen = alen; break;
		case 'u': v = address; vlen = ulen; break;
		default: v = dom; vlen = strlen(dom); break;
		}
		p++;
		if (ldap) {
			char *e = lookup_ldap_escape(v, vlen);
			lookup_buf_add(&b, e, strlen(e));
			free(e);
		} else {
			lookup_buf_add(&b, v, vlen);
		}
	}
	return lookup_buf_take(&b);
}
