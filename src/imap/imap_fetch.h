/* imap_fetch: FETCH response pieces: IMAP strings, ENVELOPE, BODY and
 * BODYSTRUCTURE from a parsed MIME tree, and BODY[section] extraction.
 * Run by imapd. */
#ifndef KALE_IMAP_FETCH_H
#define KALE_IMAP_FETCH_H

#include <stddef.h>

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

/* One address list header value parsed into (name adl mailbox host) and
 * written as an IMAP address list, or NIL. */
void imap_write_addresses(struct evbuffer *out, const char *value);

#endif
