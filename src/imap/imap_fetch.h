/* imap_fetch: FETCH response pieces: IMAP strings, ENVELOPE, BODY and
 * BODYSTRUCTURE from a parsed MIME tree, and BODY[section] extraction.
 * Run by imapd. */
#ifndef KALE_IMAP_FETCH_H
#define KALE_IMAP_FETCH_H

#include <stddef.h>

#include "imap/imap_cache.h"
#include "imap/imap_parse.h"
#include "mail/mime.h"

struct evbuffer;

/* NIL for s == NULL; a quoted string when safe, otherwise a literal. */
void imap_write_string(struct evbuffer *out, const char *s, size_t len);
void imap_write_cstring(struct evbuffer *out, const char *s);

/* ENVELOPE of the message whose header is msg[hdr_off, body_off). */
void imap_write_envelope(struct evbuffer *out, const char *msg, const struct mime_part *m);
/* BODYSTRUCTURE (ext = 1) or BODY (ext = 0) of a message part. */
void imap_write_bodystructure(struct evbuffer *out, const char *msg, const struct mime_part *p, int ext);

/* The bytes a BODY[section] names, before any <partial>. Returns 0 with
 * *data_r and *len_r (pointing into msg, or into a malloc'd *owned_r for
 * HEADER.FIELDS); 1 if the section does not exist (an empty string is sent). */
int imap_section_get(const char *msg, size_t len, const struct mime_part *root,
    const struct imap_fetch_att *a, const char **data_r, size_t *len_r, char **owned_r);

/* Where a BODY[section] lies in a message of len bytes (CRLF form), before
 * any <partial>: 0 with *off_r and *len_r; 1 if the section does not exist; 2
 * for HEADER.FIELDS (NOT): *off_r and *len_r give the header to filter with
 * imap_section_fields(). Needs only the tree, not the message bytes. */
int imap_section_range(const struct mime_part *root, size_t len, const struct imap_fetch_att *a,
    size_t *off_r, size_t *len_r);
/* The fields of a header that a HEADER.FIELDS (NOT) attribute keeps, ending
 * with the blank line; malloc'd. */
char *imap_section_fields(const char *hdr, size_t len, const struct imap_fetch_att *a, size_t *len_r);

/* Parses a message (CRLF form) into a new cache entry with the MIME tree
 * and the rendered ENVELOPE, BODY and BODYSTRUCTURE; the key fields are
 * left for the caller. The tree keeps only what sections need (types,
 * offsets): parameters and other field values are dropped once rendered.
 * NULL only if the parser refuses the length. */
struct imap_cache_ent *imap_fetch_parse(const char *msg, size_t len);

/* One address list header value parsed into (name adl mailbox host) and
 * written as an IMAP address list, or NIL. */
void imap_write_addresses(struct evbuffer *out, const char *value);

#endif
