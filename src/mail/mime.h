/* mime: a bounded, single-pass MIME structure parser (RFC 2045/2046) over a
 * message held in memory. Used by imapd for BODYSTRUCTURE, ENVELOPE and
 * section fetches. Limits: MIME_MAX_DEPTH nesting levels, MIME_MAX_PARTS
 * parts; past a limit the rest is kept as opaque body data. Linear time. */
#ifndef KALE_MIME_H
#define KALE_MIME_H

#include <stddef.h>

#define MIME_MAX_DEPTH 100
#define MIME_MAX_PARTS 10000
#define MIME_MAX_PARAMS 64

struct mime_param {
	char *name;           /* lower case */
	char *value;          /* unquoted */
};

struct mime_part {
	struct mime_part *parent;
	struct mime_part *children;   /* first child */
	struct mime_part *next;       /* next sibling */
	size_t n_children;
	int depth;                    /* 0 for the message itself */

	/* Offsets into the message: headers are [hdr_off, body_off), the body
	 * is [body_off, end_off). The line break before a boundary belongs to
	 * the boundary, not to the body. */
	size_t hdr_off, body_off, end_off;
	size_t body_lines;

	char *type, *subtype;         /* lower case; default text/plain */
	struct mime_param *params;
	size_t n_params;
	char *id, *description, *encoding, *md5, *language, *location; /* NULL if absent */
	char *disposition;            /* lower case, NULL if absent */
	struct mime_param *disp_params;
	size_t n_disp_params;
};

/* Parses msg[0, len). Never fails on malformed input (a message with broken
 * boundaries is still a message); returns the tree root, or NULL only when
 * len is absurd. n_parts_r (may be NULL) gets the part count, and
 * *truncated_r (may be NULL) 1 if a limit was hit. */
struct mime_part *mime_parse(const char *msg, size_t len, size_t *n_parts_r, int *truncated_r);
/* Frees a tree; accepts NULL and sets *root to NULL. */
void mime_free(struct mime_part **root);

/* Returns a malloc'd, unfolded copy of the first header field NAME
 * (case-insensitive) in hdr[0, len), without leading/trailing white space,
 * or NULL if absent. At most max_len bytes of value are kept. */
char *mime_header_get(const char *hdr, size_t len, const char *name, size_t max_len);

/* Looks up a parameter (case-insensitive); NULL if absent. */
const char *mime_param_get(const struct mime_param *p, size_t n, const char *name);

/* Multipart? message/rfc822 (or message/global)? */
int mime_is_multipart(const struct mime_part *p);
int mime_is_message(const struct mime_part *p);
/* Moves *sp past folding white space (SP, HT, CR, LF) and RFC 5322 comments
 * "( ... )" (nested, with \-quoted characters); an open comment ends at NUL. */
void mime_skip_cfws(const char **sp);

#endif
