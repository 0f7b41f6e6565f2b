/* auth_int: private to src/auth/ (and its unit tests): the settings keys,
 * login canonicalisation, and the POP3/IMAP login client of the "servers"
 * method. */
#ifndef KALE_AUTH_INT_H
#define KALE_AUTH_INT_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "auth/auth.h"
#include "store/store.h"

#define AUTH_USER_MAX     320
#define AUTH_PASSWORD_MAX 1024
#define AUTH_TIMEOUT_MAX  300

/* The address LOGIN is checked as: a full address is lower-cased; a bare
 * user name gets "@default_domain" in "username" mode, and is refused in
 * "address" mode. Control characters and spaces are refused.
 * 0 ok, -1 with a static *error_r. */
int auth_login_canon(const struct auth_settings *s, const char *login, char *out, size_t cap,
    const char **error_r);

/* IMAP: 1 if s must be sent as a literal (quote, backslash, control or
 * non-ASCII byte), 0 if a quoted string "s" is fine. */
int auth_imap_needs_literal(const char *s);

/* Logs in to one POP3/IMAP server with user/password before deadline_ms
 * (util_now_ms clock). *ctx is a TLS client context made on first need
 * (the caller frees it). *detail_r gets a malloc'd description. Returns
 * AUTH_OK / AUTH_FAIL for a definite answer, AUTH_TEMPFAIL if the server
 * could not give one (down, timeout, protocol error, temporary refusal). */
enum auth_result auth_server_login(const struct store_auth_server *srv, const char *user,
    const char *password, SSL_CTX **ctx, uint64_t deadline_ms, char **detail_r);

/* auth_ldap.c: expands %m %u %d %% of an LDAP filter template with RFC 4515
 * escaped values. 0, or -1 if it does not fit. */
int auth_ldap_filter(const char *tmpl, const char *address, char *out, size_t cap);
/* Search with the profile's service bind, then bind as the entry found
 * with PASSWORD. AUTH_OK / AUTH_FAIL (wrong password, no or several
 * entries) / AUTH_TEMPFAIL (directory down, service bind failed). */
enum auth_result auth_ldap_check(const struct store_verify *p, const char *address,
    const char *password, int timeout, char **detail_r);

#endif
