/* pop3_parse: the POP3 command-line parser (RFC 1939, 2449) and the message
 * transfer filter (LF -> CRLF, dot-stuffing, TOP cut-off). Pure functions
 * with no I/O; run inside pop3d on untrusted client input. */
#ifndef KALE_POP3_PARSE_H
#define KALE_POP3_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* RFC 2449: a command line is at most 255 octets including the CRLF. */
#define POP3_LINE_MAX 255
/* Longest argument we keep (USER name, PASS password). */
#define POP3_ARG_MAX 254

enum pop3_verb {
	POP3_CMD_USER, POP3_CMD_PASS, POP3_CMD_CAPA, POP3_CMD_STLS,
	POP3_CMD_STAT, POP3_CMD_LIST, POP3_CMD_UIDL, POP3_CMD_RETR,
	POP3_CMD_TOP, POP3_CMD_DELE, POP3_CMD_RSET, POP3_CMD_NOOP,
	POP3_CMD_QUIT,
	POP3_CMD_COUNT
};

enum pop3_parse_result {
	POP3_PARSE_OK = 0,
	POP3_PARSE_UNKNOWN,  /* not a command we know */
	POP3_PARSE_SYNTAX    /* known verb, bad arguments, or bad bytes */
};

struct pop3_cmd {
	enum pop3_verb verb;
	int has_msg;           /* LIST/UIDL with an argument; always for RETR/TOP/DELE */
	uint32_t msg;          /* message number, 1-based */
	uint32_t lines;        /* TOP's line count */
	char arg[POP3_ARG_MAX + 1]; /* USER name or PASS password */
};

/* Parses one command line without its line ending (a trailing CR, if the
 * caller left one, is not allowed here). Verbs are case-insensitive. PASS
 * takes the rest of the line verbatim (passwords may hold spaces); every
 * other argument is space separated. NUL and other control bytes anywhere
 * are a syntax error. On failure *error_r is a static reply text without
 * the "-ERR " prefix. */
enum pop3_parse_result pop3_parse(const char *line, size_t len, struct pop3_cmd *cmd,
    const char **error_r);

/* Name of a verb in upper case, e.g. for logging. */
const char *pop3_verb_name(enum pop3_verb v);

/* ---- message transfer filter ----
 * Turns a stored message (LF line ends, possibly some CRLF) into the POP3
 * wire form: every line ends in CRLF, a line starting with '.' gets one more
 * '.', and the whole ends with ".\r\n". For TOP it stops after the header,
 * the blank line and N body lines. */
struct pop3_xfer {
	int at_bol;           /* next byte starts a line */
	int prev_cr;          /* last byte seen was CR */
	int in_body;          /* the blank line after the header was seen */
	size_t line_len;      /* bytes on the current line so far */
	int64_t lines_left;   /* body lines still to send; -1 = all */
	int done;             /* TOP limit reached: ignore the rest */
};

void pop3_xfer_init(struct pop3_xfer *x, int64_t top_lines);
/* Converts in[0..n) into out, which must hold at least 2*n bytes. Returns
 * the bytes written; once x->done is set the rest of the input is ignored. */
size_t pop3_xfer_feed(struct pop3_xfer *x, const char *in, size_t n, char *out);
/* Writes the end: a CRLF if the last line was unterminated, then ".\r\n".
 * out must hold at least 5 bytes. Returns the bytes written. */
size_t pop3_xfer_finish(struct pop3_xfer *x, char *out);

/* Size accounting for STAT/LIST: the size of the CRLF form (no stuffing,
 * no terminator). Feed the file in pieces, then read the total. */
struct pop3_size {
	uint64_t size;
	int prev_cr;
	int last_lf;          /* the last byte seen was LF (or nothing seen) */
};
void pop3_size_init(struct pop3_size *s);
void pop3_size_feed(struct pop3_size *s, const char *in, size_t n);
uint64_t pop3_size_total(const struct pop3_size *s);

/* 1 if s (len bytes) is a valid UIDL unique-id: 1..70 octets 0x21..0x7e. */
int pop3_uid_valid(const char *s, size_t len);

#endif
