/* smtp_parse: pure parsers for SMTP command lines, MAIL/RCPT paths with their
 * ESMTP parameters, HELO arguments, and the DATA/BDAT byte state machines.
 * Runs inside the unprivileged smtpd workers on untrusted input; no I/O. */
#include "smtpd/smtp_parse.h"

#include <arpa/inet.h>
#include <string.h>

#define ERR_SENDER "501 5.1.7 Bad sender address syntax"
#define ERR_RCPT "501 5.1.3 Bad recipient address syntax"
#define ERR_PARAM_UNKNOWN "555 5.5.4 Unsupported parameter"
#define ERR_PARAM_DUP "555 5.5.4 Duplicate parameter"
#define ERR_PARAM_VALUE "501 5.5.4 Bad parameter value"
#define ERR_PARAM_SYNTAX "501 5.5.4 Bad parameter syntax"
#define ERR_NEED_UTF8 "553 5.6.7 Address needs the SMTPUTF8 parameter"

#define SMTP_NUM_MAX (UINT64_C(1) << 53)

/* ---- character classes (locale independent) ---- */

static int c_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int c_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int c_alnum(unsigned char c)
{
	return c_alpha(c) || c_digit(c);
}

static char c_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* RFC 5321 atext: | ` $ { } are legal here and are only ever data. */
static int c_atext(unsigned char c)
{
	return c_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int c_hex(unsigned char c)
{
	if (c_digit(c))
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Case-insensitive compare of s[0..n) with the NUL-terminated ASCII lit. */
static int ascii_eq(const char *s, size_t n, const char *lit)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (lit[i] == '\0' || c_lower(s[i]) != c_lower(lit[i]))
			return 0;
	}
	return lit[n] == '\0';
}

/* Length of the valid UTF-8 sequence at s (2..4), 0 if invalid: overlongs,
 * surrogates and code points past U+10FFFF are refused. Reads stop at the
 * first bad byte, so a NUL terminator is never passed. */
static size_t utf8_seq(const unsigned char *s)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t len, i;

	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c == 0xE0) {
		len = 3;
		lo = 0xA0;
	} else if (c == 0xED) {
		len = 3;
		hi = 0x9F;
	} else if (c >= 0xE1 && c <= 0xEF)
		len = 3;
	else if (c == 0xF0) {
		len = 4;
		lo = 0x90;
	} else if (c >= 0xF1 && c <= 0xF3)
		len = 4;
	else if (c == 0xF4) {
		len = 4;
		hi = 0x8F;
	} else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++) {
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	}
	return len;
}

/* Whole buffer s[0..n) is valid UTF-8 (s[n] must be readable: NUL). */
static int utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, l;

	while (i < n) {
		if (u[i] < 0x80) {
			i++;
			continue;
		}
		l = utf8_seq(u + i);
		if (l == 0 || i + l > n)
			return 0;
		i += l;
	}
	return 1;
}

/* ---- domains and address literals ---- */

#define DOM_UTF8 1       /* UTF-8 (U-label) bytes allowed */
#define DOM_UNDERSCORE 2 /* '_' allowed (HELO names in the wild) */

/* Validates s[0..n) as sub-domain *("." sub-domain). Sets *utf8_r when a
 * non-ASCII byte was seen. 0 ok, -1 bad. */
static int domain_check(const char *s, size_t n, int flags, int *utf8_r)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, label = 0, l;
	unsigned char prev = '.';

	if (n == 0 || n > SMTP_DOMAIN_MAX)
		return -1;
	while (i < n) {
		unsigned char c = u[i];

		if (c == '.') {
			if (label == 0 || prev == '-')
				return -1;
			label = 0;
			prev = c;
			i++;
			continue;
		}
		if (c >= 0x80) {
			if (!(flags & DOM_UTF8))
				return -1;
			l = utf8_seq(u + i);
			if (l == 0 || i + l > n)
				return -1;
			*utf8_r = 1;
		} else if (c_alnum(c) || (c == '_' && (flags & DOM_UNDERSCORE))) {
			l = 1;
		} else if (c == '-') {
			if (label == 0)
				return -1;
			l = 1;
		} else
			return -1;
		label += l;
		if (label > 63)
			return -1;
		prev = c;
		i += l;
	}
	if (label == 0 || prev == '-')
		return -1;
	return 0;
}

/* Validates "[IPv4]" or "[IPv6:addr]" (s[0]=='[', s[n-1]==']'); any other
 * General-address-literal is refused. 0 ok, -1 bad. */
static int literal_check(const char *s, size_t n)
{
	char tmp[64];
	unsigned char bin[16];
	const char *in;
	size_t inlen;
	int af = AF_INET;

	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return -1;
	in = s + 1;
	inlen = n - 2;
	if (inlen > 5 && ascii_eq(in, 5, "IPv6:")) {
		af = AF_INET6;
		in += 5;
		inlen -= 5;
	}
	if (inlen == 0 || inlen >= sizeof(tmp))
		return -1;
	memcpy(tmp, in, inlen);
	tmp[inlen] = '\0';
	if (strlen(tmp) != inlen)
		return -1;
	if (inet_pton(af, tmp, bin) != 1)
		return -1;
	return 0;
}

/* ---- command lines ---- */

struct verb_def {
	const char *name;
	enum smtp_verb verb;
	int argmode; /* 0 optional, 1 none allowed, 2 required */
};

static const struct verb_def verb_table[] = {
	{ "HELO", SMTP_HELO, 2 },     { "EHLO", SMTP_EHLO, 2 },
	{ "MAIL", SMTP_MAIL, 2 },     { "RCPT", SMTP_RCPT, 2 },
	{ "DATA", SMTP_DATA, 1 },     { "BDAT", SMTP_BDAT, 2 },
	{ "RSET", SMTP_RSET, 1 },     { "NOOP", SMTP_NOOP, 0 },
	{ "QUIT", SMTP_QUIT, 1 },     { "VRFY", SMTP_VRFY, 2 },
	{ "EXPN", SMTP_EXPN, 2 },     { "HELP", SMTP_HELP, 0 },
	{ "STARTTLS", SMTP_STARTTLS, 1 }, { "AUTH", SMTP_AUTH, 2 },
	{ "XUID", SMTP_XUID, 2 },
};

enum smtp_parse_result smtp_parse_command(char *buf, size_t len, struct smtp_cmd *cmd)
{
	const struct verb_def *def = NULL;
	size_t i, vlen;
	char *p;

	cmd->verb = SMTP_UNKNOWN;
	cmd->arg = "";
	buf[len] = '\0';
	if (len > SMTP_LINE_MAX - 2)
		return SMTP_PARSE_TOO_LONG;
	if (memchr(buf, '\0', len) != NULL)
		return SMTP_PARSE_NUL;
	if (memchr(buf, '\r', len) != NULL || memchr(buf, '\n', len) != NULL)
		return SMTP_PARSE_BARE_CRLF;
	while (len > 0 && buf[len - 1] == ' ')
		buf[--len] = '\0';

	for (vlen = 0; vlen < len && buf[vlen] != ' '; vlen++)
		;
	for (i = 0; i < sizeof(verb_table) / sizeof(verb_table[0]); i++) {
		if (ascii_eq(buf, vlen, verb_table[i].name)) {
			def = &verb_table[i];
			break;
		}
	}
	p = buf + vlen;
	while (*p == ' ')
		p++;
	cmd->arg = p;
	if (def == NULL)
		return SMTP_PARSE_OK;
	cmd->verb = def->verb;

	if (def->verb == SMTP_MAIL || def->verb == SMTP_RCPT) {
		const char *kw = def->verb == SMTP_MAIL ? "FROM:" : "TO:";
		size_t kwlen = strlen(kw);

		if (vlen == len || strlen(p) < kwlen || !ascii_eq(p, kwlen, kw)) {
			cmd->arg = "";
			return SMTP_PARSE_SYNTAX;
		}
		p += kwlen;
		while (*p == ' ')
			p++;
		cmd->arg = p;
	}
	if (def->argmode == 1 && *p != '\0')
		return SMTP_PARSE_SYNTAX;
	if (def->argmode == 2 && *p == '\0')
		return SMTP_PARSE_SYNTAX;
	return SMTP_PARSE_OK;
}

/* ---- paths ---- */

/* Parses a decimal number <= 2^53 from s[0..n). */
static int parse_num(const char *s, size_t n, uint64_t *r)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0)
		return -1;
	for (i = 0; i < n; i++) {
		if (!c_digit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > SMTP_NUM_MAX)
			return -1;
	}
	*r = v;
	return 0;
}

/* Decodes RFC 3461 xtext s[0..n) into out (NUL-terminated). Refuses bad
 * syntax, anything that decodes to a control character (CR, LF, NUL, ...),
 * 8-bit bytes when ascii_only, invalid UTF-8 otherwise, and overflow. */
static int xtext_decode(const char *s, size_t n, char *out, size_t cap, int ascii_only)
{
	size_t i, o = 0;

	if (n == 0 || cap == 0)
		return -1;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '+') {
			int h1, h2;

			if (n - i < 3)
				return -1;
			h1 = c_hex((unsigned char)s[i + 1]);
			h2 = c_hex((unsigned char)s[i + 2]);
			if (h1 < 0 || h2 < 0)
				return -1;
			c = (unsigned char)(h1 * 16 + h2);
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return -1;
		}
		if (c < 0x20 || c == 0x7f)
			return -1;
		if (ascii_only && c >= 0x80)
			return -1;
		if (o + 1 >= cap)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	if (!ascii_only && !utf8_valid(out, o))
		return -1;
	return 0;
}

/* Is s[0..n) a valid Dot-string (atoms of atext, UTF-8 allowed)? */
static int dot_string_check(const char *s, size_t n, int *utf8_r)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, l;
	int prev_dot = 1;

	if (n == 0)
		return -1;
	while (i < n) {
		if (u[i] == '.') {
			if (prev_dot)
				return -1;
			prev_dot = 1;
			i++;
			continue;
		}
		if (u[i] >= 0x80) {
			l = utf8_seq(u + i);
			if (l == 0 || i + l > n)
				return -1;
			*utf8_r = 1;
		} else if (c_atext(u[i])) {
			l = 1;
		} else
			return -1;
		prev_dot = 0;
		i += l;
	}
	return prev_dot ? -1 : 0;
}

/* Scans a Dot-string starting at s; returns its length (0 if none). */
static size_t dot_string_scan(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, l;

	for (;;) {
		if (u[i] == '.' || (u[i] < 0x80 && c_atext(u[i]))) {
			i++;
		} else if (u[i] >= 0x80 && (l = utf8_seq(u + i)) != 0) {
			i += l;
		} else
			return i;
	}
}

/* Scans a Quoted-string starting at s (s[0]=='"'); returns its length
 * including both quotes and writes the unescaped content to out (cap bytes,
 * NUL-terminated). 0 if malformed or the content does not fit. */
static size_t quoted_scan(const char *s, char *out, size_t cap, int *utf8_r)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 1, o = 0, l, k;

	for (;;) {
		unsigned char c = u[i];

		if (c == '"')
			break;
		if (c == '\\') {
			c = u[i + 1];
			if (c < 32 || c > 126)
				return 0;
			l = 2;
			k = i + 1;
		} else if (c >= 0x80) {
			l = utf8_seq(u + i);
			if (l == 0)
				return 0;
			*utf8_r = 1;
			k = i;
		} else if (c >= 32 && c <= 126) {
			l = 1;
			k = i;
		} else
			return 0;
		if (o + (i + l - k) >= cap)
			return 0;
		memcpy(out + o, s + k, i + l - k);
		o += i + l - k;
		i += l;
	}
	out[o] = '\0';
	return i + 1;
}

/* Parses one parameter token KEY[=VALUE] of MAIL (is_mail) or RCPT. */
static int path_param(const char *tok, size_t n, int is_mail, struct smtp_path *p,
    unsigned *seen, const char **error_r)
{
	static const char *const mail_keys[] = { "SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH" };
	static const char *const rcpt_keys[] = { "NOTIFY", "ORCPT" };
	const char *const *keys = is_mail ? mail_keys : rcpt_keys;
	size_t nkeys = is_mail ? 6 : 2;
	const char *eq = memchr(tok, '=', n);
	const char *val = NULL;
	size_t klen = eq != NULL ? (size_t)(eq - tok) : n, vlen = 0, i;
	char tmp[SMTP_LINE_MAX];
	int k = -1;

	if (klen == 0 || !c_alnum((unsigned char)tok[0]))
		goto syntax;
	for (i = 0; i < klen; i++) {
		if (!c_alnum((unsigned char)tok[i]) && tok[i] != '-')
			goto syntax;
	}
	if (eq != NULL) {
		val = eq + 1;
		vlen = n - klen - 1;
		if (vlen == 0)
			goto syntax;
		for (i = 0; i < vlen; i++) {
			unsigned char c = (unsigned char)val[i];
			if (c < 33 || c == 127 || c == '=')
				goto syntax;
		}
	}
	for (i = 0; i < nkeys; i++) {
		if (ascii_eq(tok, klen, keys[i])) {
			k = (int)i;
			break;
		}
	}
	if (k < 0) {
		*error_r = ERR_PARAM_UNKNOWN;
		return -1;
	}
	if (*seen & (1u << k)) {
		*error_r = ERR_PARAM_DUP;
		return -1;
	}
	*seen |= 1u << k;

	if (is_mail && k == 2) { /* SMTPUTF8 takes no value */
		if (val != NULL)
			goto badval;
		p->smtputf8 = 1;
		return 0;
	}
	if (val == NULL)
		goto badval;
	if (is_mail) {
		switch (k) {
		case 0:
			if (parse_num(val, vlen, &p->size) < 0)
				goto badval;
			break;
		case 1:
			if (ascii_eq(val, vlen, "7BIT"))
				p->body = 7;
			else if (ascii_eq(val, vlen, "8BITMIME"))
				p->body = 8;
			else
				goto badval;
			break;
		case 3:
			if (ascii_eq(val, vlen, "FULL"))
				p->ret = 1;
			else if (ascii_eq(val, vlen, "HDRS"))
				p->ret = 2;
			else
				goto badval;
			break;
		case 4:
			if (xtext_decode(val, vlen, p->envid, sizeof(p->envid), 1) < 0)
				goto badval;
			break;
		default: /* AUTH: checked, then ignored */
			if (xtext_decode(val, vlen, tmp, sizeof(tmp), 0) < 0)
				goto badval;
			break;
		}
		return 0;
	}
	if (k == 0) { /* NOTIFY */
		size_t s = 0, e;
		int bits = 0;

		while (s <= vlen) {
			for (e = s; e < vlen && val[e] != ','; e++)
				;
			if (ascii_eq(val + s, e - s, "NEVER"))
				bits |= 1;
			else if (ascii_eq(val + s, e - s, "SUCCESS"))
				bits |= 2;
			else if (ascii_eq(val + s, e - s, "FAILURE"))
				bits |= 4;
			else if (ascii_eq(val + s, e - s, "DELAY"))
				bits |= 8;
			else
				goto badval;
			s = e + 1;
		}
		if ((bits & 1) && bits != 1)
			goto badval;
		p->notify = bits;
		return 0;
	}
	{ /* ORCPT=addr-type;xtext */
		const char *semi = memchr(val, ';', vlen);
		size_t tlen;

		if (semi == NULL)
			goto badval;
		tlen = (size_t)(semi - val);
		if (tlen == 0 || tlen + 2 > sizeof(p->orcpt))
			goto badval;
		for (i = 0; i < tlen; i++) {
			if (!c_alnum((unsigned char)val[i]) && val[i] != '-')
				goto badval;
		}
		memcpy(p->orcpt, val, tlen + 1);
		if (xtext_decode(semi + 1, vlen - tlen - 1, p->orcpt + tlen + 1,
		        sizeof(p->orcpt) - tlen - 1, 0) < 0) {
			p->orcpt[0] = '\0';
			goto badval;
		}
	}
	return 0;

syntax:
	*error_r = ERR_PARAM_SYNTAX;
	return -1;
badval:
	*error_r = ERR_PARAM_VALUE;
	return -1;
}

static int path_parse(const char *arg, int is_mail, struct smtp_path *p, const char **error_r)
{
	const char *addr_err = is_mail ? ERR_SENDER : ERR_RCPT;
	const char *s = arg, *lt, *dom = NULL, *local;
	char content[SMTP_LOCAL_MAX + 1];
	size_t llen, dlen = 0, i;
	unsigned seen = 0;
	int quoted = 0;

	memset(p, 0, sizeof(*p));
	*error_r = addr_err;
	while (*s == ' ')
		s++;
	if (*s != '<')
		return -1;
	lt = s++;
	if (*s == '>') {
		if (!is_mail)
			return -1;
		p->is_null = 1;
		s++;
		goto params;
	}

	/* A-d-l ":" : the source route is checked, then dropped. */
	if (*s == '@') {
		for (;;) {
			const char *d;

			if (*s != '@')
				return -1;
			d = ++s;
			if (*s == '[') {
				while (*s != '\0' && *s != ']' && *s != '>')
					s++;
				if (*s == ']')
					s++;
			} else {
				while (*s != '\0' && *s != ',' && *s != ':' && *s != '>')
					s++;
			}
			if (*d == '[' ? literal_check(d, (size_t)(s - d)) < 0
			              : domain_check(d, (size_t)(s - d), DOM_UTF8, &p->utf8) < 0)
				return -1;
			if (*s == ':') {
				s++;
				break;
			}
			if (*s != ',')
				return -1;
			s++;
		}
	}

	/* Local-part */
	local = s;
	if (*s == '"') {
		llen = quoted_scan(s, content, sizeof(content), &p->utf8);
		if (llen == 0 || content[0] == '\0')
			return -1;
		quoted = 1;
	} else {
		llen = dot_string_scan(s);
		if (dot_string_check(s, llen, &p->utf8) < 0)
			return -1;
	}
	if (llen > SMTP_LOCAL_MAX)
		return -1;
	s += llen;

	/* "@" Domain / address-literal, or nothing (postmaster) */
	if (*s == '@') {
		dom = ++s;
		if (*s == '[') {
			while (*s != '\0' && *s != ']' && *s != '>')
				s++;
			if (*s != ']')
				return -1;
			s++;
			dlen = (size_t)(s - dom);
			if (literal_check(dom, dlen) < 0)
				return -1;
			p->domain_literal = 1;
		} else {
			while (*s != '\0' && *s != '>')
				s++;
			dlen = (size_t)(s - dom);
			if (domain_check(dom, dlen, DOM_UTF8, &p->utf8) < 0)
				return -1;
		}
	} else if (*s == '>') {
		if (is_mail || quoted || !ascii_eq(local, llen, "postmaster"))
			return -1;
	} else
		return -1;
	if (*s != '>')
		return -1;
	s++;
	if ((size_t)(s - lt) - 2 > SMTP_PATH_MAX || dlen > SMTP_DOMAIN_MAX)
		return -1;

	/* Store: a quoted local part whose content is a plain dot-atom is
	 * stored unquoted; otherwise it keeps its quotes as given. */
	{
		int dummy = 0;

		if (quoted && dot_string_check(content, strlen(content), &dummy) == 0)
			memcpy(p->local, content, strlen(content) + 1);
		else {
			memcpy(p->local, local, llen);
			p->local[llen] = '\0';
		}
	}
	for (i = 0; i < dlen; i++)
		p->domain[i] = c_lower(dom[i]);
	p->domain[dlen] = '\0';
	llen = strlen(p->local);
	if (llen + 1 + dlen > SMTP_PATH_MAX)
		return -1;
	memcpy(p->addr, p->local, llen);
	if (dlen > 0) {
		p->addr[llen] = '@';
		memcpy(p->addr + llen + 1, p->domain, dlen + 1);
	} else
		p->addr[llen] = '\0';

params:
	if (*s != '\0' && *s != ' ')
		return -1;
	for (;;) {
		const char *tok;

		while (*s == ' ')
			s++;
		if (*s == '\0')
			break;
		tok = s;
		while (*s != '\0' && *s != ' ')
			s++;
		if (path_param(tok, (size_t)(s - tok), is_mail, p, &seen, error_r) < 0)
			return -1;
	}
	if (is_mail && p->utf8 && !p->smtputf8) {
		*error_r = ERR_NEED_UTF8;
		return -1;
	}
	*error_r = NULL;
	return 0;
}

int smtp_parse_path(const char *arg, int is_mail, struct smtp_path *p, const char **error_r)
{
	if (path_parse(arg, is_mail, p, error_r) < 0) {
		/* nothing half-parsed (e.g. a partly decoded ENVID) survives */
		memset(p, 0, sizeof(*p));
		return -1;
	}
	return 0;
}

/* ---- HELO ---- */

int smtp_parse_helo(const char *arg)
{
	size_t n = strnlen(arg, SMTP_DOMAIN_MAX + 1);
	int utf8 = 0;

	if (n == 0 || n > SMTP_DOMAIN_MAX)
		return -1;
	if (arg[0] == '[')
		return literal_check(arg, n);
	if (n > 1 && arg[n - 1] == '.')
		n--;
	return domain_check(arg, n, DOM_UTF8 | DOM_UNDERSCORE, &utf8);
}

/* ---- BDAT command ---- */

int smtp_parse_bdat(const char *arg, uint64_t *size_r, int *last_r)
{
	const char *s = arg, *num;
	uint64_t v;

	while (*s == ' ')
		s++;
	num = s;
	while (c_digit((unsigned char)*s))
		s++;
	if (parse_num(num, (size_t)(s - num), &v) < 0)
		return -1;
	*last_r = 0;
	if (*s == ' ') {
		while (*s == ' ')
			s++;
		if (strnlen(s, 4) == 4 && ascii_eq(s, 4, "LAST")) {
			*last_r = 1;
			s += 4;
			while (*s == ' ')
				s++;
		}
	}
	if (*s != '\0')
		return -1;
	*size_r = v;
	return 0;
}

/* ---- DATA / BDAT state machine ---- */

enum {
	DS_BOL_CRLF = 0, /* start of a line begun after CRLF (or the DATA command) */
	DS_BOL_LF,       /* start of a line begun after a bare LF */
	DS_DOT_CRLF,     /* "." at the start of a CRLF line */
	DS_DOT_LF,       /* "." at the start of a bare-LF line */
	DS_DOTCR_CRLF,   /* ".\r" on a CRLF line */
	DS_DOTCR_LF,     /* ".\r" on a bare-LF line */
	DS_MID,          /* inside a line */
	DS_CR,           /* CR seen inside a line, LF may follow */
	DS_DONE
};

struct data_out {
	smtp_data_out_fn *out;
	void *ctx;
	size_t n;
	char buf[1024];
};

static void data_flush(struct data_out *o)
{
	if (o->n > 0 && o->out != NULL)
		o->out(o->ctx, o->buf, o->n);
	o->n = 0;
}

static void data_emit(struct smtp_data *d, struct data_out *o, char c)
{
	/* header tracking runs on the whole normalised stream */
	if (c == '\n') {
		if (d->line_start)
			d->in_header = 0;
		d->line_start = 1;
		d->hdrlen = 0;
	} else {
		if (d->in_header && d->hdrlen < 9) {
			d->hdrbuf[d->hdrlen++] = c;
			if (d->hdrlen == 9 && ascii_eq(d->hdrbuf, 9, "Received:"))
				d->hops++;
		}
		d->line_start = 0;
	}
	if (d->max != 0 && d->size >= d->max) {
		d->too_big = 1;
		return;
	}
	d->size++;
	o->buf[o->n++] = c;
	if (o->n == sizeof(o->buf))
		data_flush(o);
}

/* One input byte; returns 1 when it completed the end-of-data sequence. */
static int data_step(struct smtp_data *d, unsigned char c, int dots, struct data_out *o)
{
	for (;;) {
		switch (d->state) {
		case DS_BOL_CRLF:
		case DS_BOL_LF:
			if (dots && c == '.') {
				d->state = d->state == DS_BOL_CRLF ? DS_DOT_CRLF : DS_DOT_LF;
				return 0;
			}
			d->state = DS_MID;
			continue;
		case DS_DOT_CRLF:
		case DS_DOT_LF:
			if (c == '\r') {
				d->state = d->state == DS_DOT_CRLF ? DS_DOTCR_CRLF : DS_DOTCR_LF;
				return 0;
			}
			if (c == '\n') { /* lone "." ended by a bare LF: content */
				d->bare_lf = 1;
				data_emit(d, o, '.');
				data_emit(d, o, '\n');
				d->state = DS_BOL_LF;
				return 0;
			}
			d->state = DS_MID; /* un-stuff: the leading dot is dropped */
			continue;
		case DS_DOTCR_CRLF:
		case DS_DOTCR_LF:
			if (c == '\n') {
				if (d->state == DS_DOTCR_CRLF) {
					d->state = DS_DONE;
					return 1;
				}
				data_emit(d, o, '.'); /* "\n.\r\n": content */
				data_emit(d, o, '\n');
				d->state = DS_BOL_CRLF;
				return 0;
			}
			/* ".\r" + other: dot un-stuffed, bare CR becomes a space */
			d->bare_cr = 1;
			data_emit(d, o, ' ');
			d->state = DS_MID;
			continue;
		case DS_MID:
			if (c == '\r') {
				d->state = DS_CR;
			} else if (c == '\n') {
				d->bare_lf = 1;
				data_emit(d, o, '\n');
				d->state = DS_BOL_LF;
			} else if (c == '\0') {
				d->nul = 1;
			} else {
				data_emit(d, o, (char)c);
			}
			return 0;
		case DS_CR:
			if (c == '\n') {
				data_emit(d, o, '\n');
				d->state = DS_BOL_CRLF;
				return 0;
			}
			d->bare_cr = 1;
			data_emit(d, o, ' ');
			d->state = DS_MID;
			continue;
		default:
			d->state = DS_DONE;
			return 1;
		}
	}
}

void smtp_data_init(struct smtp_data *d, uint64_t max)
{
	memset(d, 0, sizeof(*d));
	d->state = DS_BOL_CRLF;
	d->max = max;
	d->in_header = 1;
	d->line_start = 1;
}

size_t smtp_data_feed(struct smtp_data *d, const char *buf, size_t len, int *done,
    smtp_data_out_fn *out, void *ctx)
{
	struct data_out o;
	size_t i;

	*done = 0;
	if (d->state == DS_DONE) {
		*done = 1;
		return 0;
	}
	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	for (i = 0; i < len; i++) {
		if (data_step(d, (unsigned char)buf[i], 1, &o)) {
			i++;
			*done = 1;
			break;
		}
	}
	data_flush(&o);
	return i;
}

void smtp_bdat_init(struct smtp_data *d, uint64_t max)
{
	smtp_data_init(d, max);
}

void smtp_bdat_feed(struct smtp_data *d, const char *buf, size_t len, smtp_data_out_fn *out, void *ctx)
{
	struct data_out o;
	size_t i;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	for (i = 0; i < len && d->state != DS_DONE; i++)
		data_step(d, (unsigned char)buf[i], 0, &o);
	data_flush(&o);
}

void smtp_bdat_last(struct smtp_data *d, smtp_data_out_fn *out, void *ctx)
{
	struct data_out o;

	o.out = out;
	o.ctx = ctx;
	o.n = 0;
	if (d->state == DS_CR) {
		d->bare_cr = 1;
		data_emit(d, &o, ' ');
	}
	/* The stored message ends with a line end even if the last chunk did
	 * not: a line end the server adds is not held against the size limit. */
	if (!d->line_start && !d->too_big) {
		d->size++;
		d->line_start = 1;
		o.buf[o.n++] = '\n';
	}
	d->state = DS_DONE;
	data_flush(&o);
}
