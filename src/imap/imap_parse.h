/* imap_parse: IMAP4rev1 command syntax: literal headers, the argument
 * tokenizer, sequence sets, dates and FETCH attributes. Pure functions over
 * untrusted bytes; every result is bounded. Used by imapd. */
#ifndef KALE_IMAP_PARSE_H
#define KALE_IMAP_PARSE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define IMAP_MAX_DEPTH 32          /* parenthesis nesting in one command */
#define IMAP_MAX_ARGS 100000       /* tokens in one command */
#define IMAP_TAG_MAX 64

/* Looks at a command line (without CRLF) for a trailing "{N}" / "{N+}".
 * Returns 0 if there is none, 1 with *size_r and *nonsync_r if there is
 * one no larger than max, -1 if there is one but it is larger than max
 * (or malformed: too many digits); nothing is allocated. */
int imap_literal_header(const char *line, size_t len, uint64_t max, uint64_t *size_r, int *nonsync_r);

enum imap_arg_type { IMAP_ARG_ATOM, IMAP_ARG_STRING, IMAP_ARG_LITERAL, IMAP_ARG_LIST };

struct imap_arg {
	enum imap_arg_type type;
	/* ATOM and STRING: a malloc'd NUL-terminated copy (never contains NUL).
	 * LITERAL: points into the command buffer, NOT terminated; has_nul says
	 * whether it holds a NUL. Use imap_arg_str() to get a C string. */
	const char *s;
	size_t len;
	int has_nul;
	char *own;                 /* what to free */
	struct imap_arg *list;     /* LIST */
	size_t n;
};

struct imap_cmd {
	char tag[IMAP_TAG_MAX + 1];
	char name[32];             /* upper case */
	struct imap_arg *args;     /* top level */
	size_t n_args;
};

/* Parses one whole command: the wire bytes of the command line(s), with
 * literals inline exactly as received ("{N}\r\n" + N bytes), ending in CRLF.
 * 0 ok; -1 with *error_r (static text) for a syntax error. On error the
 * tag (if it could be read) is still set so a tagged BAD can be sent. */
int imap_cmd_parse(const char *buf, size_t len, struct imap_cmd *cmd, const char **error_r);
void imap_cmd_free(struct imap_cmd *cmd);

/* A C string for an ATOM/STRING/LITERAL argument (NULL for lists, for
 * literals that hold a NUL, or larger than 64 KiB). */
const char *imap_arg_str(const struct imap_arg *a);
/* ATOM or STRING or LITERAL */
int imap_arg_is_string(const struct imap_arg *a);
int imap_arg_is_atom(const struct imap_arg *a, const char *word); /* case-insensitive */

/* Sequence sets: "1:3,7,9:*". star is the value of '*'. */
struct imap_range { uint32_t lo, hi; };
struct imap_seqset {
	struct imap_range *r;      /* sorted, merged */
	size_t n;
};
int imap_seqset_parse(const char *s, uint32_t star, struct imap_seqset *set);
int imap_seqset_has(const struct imap_seqset *set, uint32_t v);
void imap_seqset_free(struct imap_seqset *set);
/* '$' (saved result) is not supported: returns -1. */

/* "1-Feb-1994" -> midnight UTC of that day; -1 on error. */
int imap_date_parse(const char *s, time_t *t_r);
/* "17-Jul-1996 02:44:25 -0700" -> time_t; -1 on error. */
int imap_datetime_parse(const char *s, time_t *t_r);
/* Formats INTERNALDATE: "17-Jul-1996 02:44:25 +0000" (UTC). */
void imap_datetime_format(time_t t, char buf[32]);

/* One FETCH attribute. */
enum imap_fetch_kind {
	IMAP_F_FLAGS, IMAP_F_UID, IMAP_F_INTERNALDATE, IMAP_F_SIZE, IMAP_F_ENVELOPE,
	IMAP_F_BODYSTRUCTURE, IMAP_F_BODY /* non-extensible structure */,
	IMAP_F_SECTION /* BODY[...] / BODY.PEEK[...] / RFC822* */,
	IMAP_F_MODSEQ
};
enum imap_section_kind {
	IMAP_S_ALL, IMAP_S_HEADER, IMAP_S_FIELDS, IMAP_S_FIELDS_NOT, IMAP_S_TEXT, IMAP_S_MIME
};
#define IMAP_MAX_PART_DEPTH 100
#define IMAP_MAX_FIELDS 64
struct imap_fetch_att {
	enum imap_fetch_kind kind;
	int peek;
	int rfc822;                /* 0, or 1 RFC822, 2 RFC822.HEADER, 3 RFC822.TEXT */
	uint32_t part[IMAP_MAX_PART_DEPTH];
	int n_part;
	enum imap_section_kind sect;
	char *fields[IMAP_MAX_FIELDS];
	int n_fields;
	int partial;
	uint32_t p_off, p_len;
	char name[512];            /* the response item name, e.g. BODY[1.TEXT]<0> */
};
/* Parses one attribute atom; 0 ok, -1 with *error_r. */
int imap_fetch_att_parse(const char *atom, struct imap_fetch_att *a, const char **error_r);
void imap_fetch_att_free(struct imap_fetch_att *a);

/* Mailbox name checks: 0 valid, -1 not (empty, too long, control chars,
 * '/', a leading '.', "..", a trailing or doubled '.'). */
int imap_mailbox_name_ok(const char *name);

#endif
