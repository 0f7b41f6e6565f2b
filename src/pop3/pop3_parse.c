/* pop3_parse: parses POP3 command lines and converts stored messages to
 * their dot-stuffed CRLF wire form. Runs in pop3d (unprivileged) on
 * untrusted input; no I/O, no allocation. */
#include "pop3/pop3_parse.h"

#include <string.h>
#include <strings.h>

enum pop3_args {
	ARGS_NONE,      /* no argument */
	ARGS_OPT_MSG,   /* [msg] */
	ARGS_MSG,       /* msg */
	ARGS_MSG_N,     /* msg n */
	ARGS_WORD,      /* one word */
	ARGS_REST       /* the rest of the line, verbatim */
};

static const struct {
	const char *name;
	enum pop3_verb verb;
	enum pop3_args args;
} pop3_cmds[] = {
	{ "USER", POP3_CMD_USER, ARGS_WORD },
	{ "PASS", POP3_CMD_PASS, ARGS_REST },
	{ "CAPA", POP3_CMD_CAPA, ARGS_NONE },
	{ "STLS", POP3_CMD_STLS, ARGS_NONE },
	{ "STAT", POP3_CMD_STAT, ARGS_NONE },
	{ "LIST", POP3_CMD_LIST, ARGS_OPT_MSG },
	{ "UIDL", POP3_CMD_UIDL, ARGS_OPT_MSG },
	{ "RETR", POP3_CMD_RETR, ARGS_MSG },
	{ "TOP",  POP3_CMD_TOP,  ARGS_MSG_N },
	{ "DELE", POP3_CMD_DELE, ARGS_MSG },
	{ "RSET", POP3_CMD_RSET, ARGS_NONE },
	{ "NOOP", POP3_CMD_NOOP, ARGS_NONE },
	{ "QUIT", POP3_CMD_QUIT, ARGS_NONE },
};

const char *pop3_verb_name(enum pop3_verb v)
{
	for (size_t i = 0; i < sizeof(pop3_cmds) / sizeof(pop3_cmds[0]); i++)
		if (pop3_cmds[i].verb == v)
			return pop3_cmds[i].name;
	return "?";
}

/* Parses a decimal number of 1..10 digits into [min, UINT32_MAX]; digits
 * only (no sign, no spaces). 0 ok, -1 bad. */
static int pop3_parse_num(const char *s, size_t len, uint32_t min, uint32_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v < min || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* Splits the argument text into at most max space-separated words. Returns
 * the word count, or -1 if there are more than max. */
static int pop3_split(const char *s, size_t len, const char **w, size_t *wl, int max)
{
	int n = 0;
	size_t i = 0;

	for (;;) {
		while (i < len && s[i] == ' ')
			i++;
		if (i == len)
			return n;
		if (n == max)
			return -1;
		w[n] = s + i;
		while (i < len && s[i] != ' ')
			i++;
		wl[n] = (size_t)(s + i - w[n]);
		n++;
	}
}

enum pop3_parse_result pop3_parse(const char *line, size_t len, struct pop3_cmd *cmd,
    const char **error_r)
{
	const char *w[3];
	size_t wl[3], vlen = 0, alen;
	const char *args;
	int n, found = -1;

	memset(cmd, 0, sizeof(*cmd));
	if (len > POP3_LINE_MAX - 2) {
		*error_r = "line too long";
		return POP3_PARSE_SYNTAX;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c == '\0') {
			*error_r = "NUL byte in command";
			return POP3_PARSE_SYNTAX;
		}
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			*error_r = "control character in command";
			return POP3_PARSE_SYNTAX;
		}
	}
	while (vlen < len && line[vlen] != ' ')
		vlen++;
	for (size_t i = 0; i < sizeof(pop3_cmds) / sizeof(pop3_cmds[0]); i++) {
		if (strlen(pop3_cmds[i].name) == vlen &&
		    strncasecmp(pop3_cmds[i].name, line, vlen) == 0) {
			found = (int)i;
			break;
		}
	}
	if (found < 0) {
		*error_r = "unknown command";
		return POP3_PARSE_UNKNOWN;
	}
	cmd->verb = pop3_cmds[found].verb;
	args = line + vlen;
	alen = len - vlen;
	if (pop3_cmds[found].args == ARGS_REST) {
		/* "PASS" SP password: exactly one space, the rest is verbatim. */
		if (alen < 2 || args[0] != ' ') {
			*error_r = "syntax: PASS password";
			return POP3_PARSE_SYNTAX;
		}
		if (alen - 1 > POP3_ARG_MAX) {
			*error_r = "argument too long";
			return POP3_PARSE_SYNTAX;
		}
		memcpy(cmd->arg, args + 1, alen - 1);
		cmd->arg[alen - 1] = '\0';
		return POP3_PARSE_OK;
	}
	for (size_t i = 0; i < alen; i++) {
		if (args[i] == '\t') {
			*error_r = "control character in command";
			return POP3_PARSE_SYNTAX;
		}
	}
	n = pop3_split(args, alen, w, wl, 2);
	switch (pop3_cmds[found].args) {
	case ARGS_NONE:
		if (n != 0) {
			*error_r = "no arguments allowed";
			return POP3_PARSE_SYNTAX;
		}
		break;
	case ARGS_OPT_MSG:
		if (n < 0 || n > 1 || (n == 1 && pop3_parse_num(w[0], wl[0], 1, &cmd->msg) < 0)) {
			*error_r = "syntax: optional message number";
			return POP3_PARSE_SYNTAX;
		}
		cmd->has_msg = (n == 1);
		break;
	case ARGS_MSG:
		if (n != 1 || pop3_parse_num(w[0], wl[0], 1, &cmd->msg) < 0) {
			*error_r = "syntax: message number required";
			return POP3_PARSE_SYNTAX;
		}
		cmd->has_msg = 1;
		break;
	case ARGS_MSG_N:
		if (n != 2 || pop3_parse_num(w[0], wl[0], 1, &cmd->msg) < 0 ||
		    pop3_parse_num(w[1], wl[1], 0, &cmd->lines) < 0) {
			*error_r = "syntax: TOP message lines";
			return POP3_PARSE_SYNTAX;
		}
		cmd->has_msg = 1;
		break;
	case ARGS_WORD:
		if (n != 1) {
			*error_r = "syntax: one argument required";
			return POP3_PARSE_SYNTAX;
		}
		if (wl[0] > POP3_ARG_MAX) {
			*error_r = "argument too long";
			return POP3_PARSE_SYNTAX;
		}
		memcpy(cmd->arg, w[0], wl[0]);
		cmd->arg[wl[0]] = '\0';
		break;
	case ARGS_REST:
		break;
	}
	return POP3_PARSE_OK;
}

void pop3_xfer_init(struct pop3_xfer *x, int64_t top_lines)
{
	memset(x, 0, sizeof(*x));
	x->at_bol = 1;
	x->lines_left = top_lines;
}

size_t pop3_xfer_feed(struct pop3_xfer *x, const char *in, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n && !x->done; i++) {
		char c = in[i];
		if (x->at_bol) {
			if (x->in_body && x->lines_left == 0) {
				x->done = 1;
				break;
			}
			if (c == '.')
				out[o++] = '.';
			x->at_bol = 0;
			x->line_len = 0;
		}
		if (c == '\n') {
			if (!x->prev_cr)
				out[o++] = '\r';
			out[o++] = '\n';
			if (!x->in_body) {
				/* An empty line (maybe "\r\n") ends the header. */
				if (x->line_len == 0 || (x->line_len == 1 && x->prev_cr))
					x->in_body = 1;
			} else if (x->lines_left > 0) {
				x->lines_left--;
			}
			x->at_bol = 1;
			x->prev_cr = 0;
			continue;
		}
		out[o++] = c;
		x->line_len++;
		x->prev_cr = (c == '\r');
	}
	return o;
}

size_t pop3_xfer_finish(struct pop3_xfer *x, char *out)
{
	size_t o = 0;

	if (!x->at_bol && !x->done) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	memcpy(out + o, ".\r\n", 3);
	x->done = 1;
	return o + 3;
}

void pop3_size_init(struct pop3_size *s)
{
	memset(s, 0, sizeof(*s));
	s->last_lf = 1;
}

void pop3_size_feed(struct pop3_size *s, const char *in, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '\n' && !s->prev_cr)
			s->size++;
		s->prev_cr = (in[i] == '\r');
	}
	s->size += n;
	if (n > 0)
		s->last_lf = (in[n - 1] == '\n');
}

uint64_t pop3_size_total(const struct pop3_size *s)
{
	return s->size + (s->last_lf ? 0 : 2);
}

int pop3_uid_valid(const char *s, size_t len)
{
	if (len == 0 || len > 70)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return 0;
	return 1;
}
