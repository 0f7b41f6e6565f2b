/* lookup_ldap.h: the LDAP code the ldap verification backend shares with
 * AUTH's ldap:PROFILE method (src/auth/auth_ldap.c): one connect / StartTLS
 * / service bind, one classification of libldap result codes, and the one
 * RFC 4515 escaper of filter values. */
#ifndef KALE_LOOKUP_LDAP_H
#define KALE_LOOKUP_LDAP_H

#include <stddef.h>

#include "lookup/lookup.h"

struct ldap;            /* libldap's LDAP */
struct store_verify;

/* RFC 4515 escaping of one value of len bytes: * ( ) \ and NUL become \2a
 * \28 \29 \5c \00; every other byte (non-ASCII too) is kept. malloc'd. */
char *lookup_ldap_escape(const char *v, size_t len);
/* The profile's filter template with %m %u %d escaped, %% a percent sign. */
char *lookup_ldap_filter(const char *tmpl, const char *address);

/* Connects with the profile's URL (ldap://, ldaps://, ldapi://), LDAPv3,
 * no referrals, network and operation timeouts of timeout_s, StartTLS when
 * the profile asks for it (required), then the service bind: the bind DN
 * with its password, or anonymous without a DN (a DN without a password
 * is refused: it would be an unauthenticated bind, RFC 4513 5.1.2).
 * LOOKUP_FOUND (0) with *ld_r, else LOOKUP_ERROR (temporary) or
 * LOOKUP_CONFIG (bad URL, bad credentials, ...) with a malloc'd *detail_r. */
enum lookup_result lookup_ldap_open(const struct store_verify *v, int timeout_s,
    struct ldap **ld_r, char **detail_r);

/* What a libldap result code (not LDAP_SUCCESS) means: LOOKUP_CONFIG when
 * the profile is wrong (invalid credentials, no such base DN, bad DN or
 * filter syntax, undefined attribute, insufficient access, TLS or strong
 * authentication required), LOOKUP_ERROR otherwise (down, timeout, busy). */
enum lookup_result lookup_ldap_kind(int rc);
/* 1 if rc says the connection failed (down, timeout, connect error, busy). */
int lookup_ldap_conn_error(int rc);

#endif
