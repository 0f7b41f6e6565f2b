/* addr: an RFC 5322 address-list parser (with the obsolete forms of section
 * 4.4 and the UTF-8 of RFC 6532) that returns the addr-spec of every mailbox
 * in a header field body, group members included. Pure: no I/O; linear time,
 * bounded input, output and count. Runs inside the smtpd workers on the
 * From:/Sender: fields of messages from authenticated clients. */
#ifndef KALE_ADDR_H
#define KALE_ADDR_H

#include <stddef.h>

#define ADDR_INPUT_MAX 65536     /* longest field body accepted */
#define ADDR_LIST_MAX 100        /* most mailboxes in one field */
#define ADDR_SPEC_MAX 512        /* longest addr-spec returned (local@domain) */
#define ADDR_COMMENT_DEPTH_MAX 64 /* deepest nesting of comments */

struct addr_list {
	size_t n;
	char **addr;             /* n addr-specs "local@domain", each NUL-terminated */
};

/* Parses the field body s (len bytes, need not be NUL-terminated; folded
 * with CRLF or LF + WSP, or unfolded) as an address-list:
 *
 *   - mailboxes: "Name" <a@b>, Name <a@b>, a@b, a@b (Name), <a@b>;
 *   - groups: "Team: a@b, c@d;" (every member is returned; groups do not nest);
 *   - comments, nested and with quoted-pairs, wherever CFWS is allowed, are
 *     removed;
 *   - obsolete forms: CFWS around the dots of a local part or domain
 *     ("a . b @ c . d"), "." in display names, routes "<@x,@y:a@b>" (the route
 *     is dropped), empty list elements ("a@b,,c@d", a leading or trailing ",");
 *   - domain literals "[192.0.2.1]" (FWS inside removed);
 *   - UTF-8 (RFC 6532) in atoms, quoted strings and comments; invalid UTF-8
 *     is a syntax error, and so is any control character other than HTAB
 *     (CR and LF only as part of a fold).
 *
 * The local part is returned in its canonical form: the words joined by ".",
 * quotes removed when what is left is a dot-atom ("me"@x -> me@x,
 * "a"."b"@x -> a.b@x), else one quoted string with only '"' and '\' escaped
 * ("a b"@x). The domain is returned as written (case kept), a domain literal
 * with its brackets. An empty list (only CFWS and commas, or "Team:;") is
 * not an error: out->n is 0.
 *
 * Returns 0 and fills *out (free with addr_list_free), or -1 with a static
 * reason in *error_r ("syntax error in address", "too many addresses", ...)
 * and *out empty. */
int addr_parse_list(const char *s, size_t len, struct addr_list *out, const char **error_r);

/* Frees the addresses and zeroes the list; accepts a zeroed list. */
void addr_list_free(struct addr_list *l);

#endif
