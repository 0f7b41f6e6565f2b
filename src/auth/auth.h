/* auth: SMTP AUTH credential checks (localdb, an ordered list of POP3/IMAP
 * servers, LDAP bind) and the AUTH settings kept in the policy store.
 * Blocking: smtpd runs auth_check() on the lookup thread pool; kalectl auth
 * test calls it directly. */
#ifndef KALE_AUTH_H
#define KALE_AUTH_H

#include <stddef.h>

#include "store/store.h"

struct kale_config;

enum auth_result { AUTH_OK = 0, AUTH_FAIL = 1, AUTH_TEMPFAIL = 2 };

struct auth_settings {
	int enable;               /* default 1 */
	int tls_only;             /* default 1 */
	int fake_sender_control;  /* default 1 */
	int timeout;              /* seconds for the whole check, default 15 */
	int username_address;     /* 1: login must be a full address (default); 0: "username" + default_domain */
	char default_domain[256];
	char method[80];          /* "localdb" (default), "servers", "ldap:PROFILE" */
};

/* Reads the settings from the policy store (defaults if never set). 0 ok, -1 error. */
int auth_settings_get(const struct kale_config *cfg, struct auth_settings *s_r, char **error_r);

/* The same from an open store handle (kalectl auth show). */
int auth_settings_load(store *st, struct auth_settings *s_r, char **error_r);

/* Checks and normalises one setting before it is stored (kalectl auth set):
 * key is one of enable tls_only fake_sender_control (yes|no) timeout
 * (1..300) username_format (username|address) default_domain (a domain or
 * "") method (localdb|servers|ldap:PROFILE). norm gets the value to store.
 * 0 ok, -1 with a malloc'd *error_r. */
int auth_setting_check(const char *key, const char *value, char *norm, size_t cap, char **error_r);

/* Checks USER/PASSWORD with the configured method. On AUTH_OK, *address_r
 * gets the malloc'd canonical address of the user (login "bob" with
 * default domain d -> "bob@d"). *detail_r (malloc'd, may be NULL) says which
 * method/server answered or what failed. An empty password is AUTH_FAIL
 * without asking any backend. Thread-safe: opens its own store handle. */
enum auth_result auth_check(const struct kale_config *cfg, const char *user, const char *password,
    char **address_r, char **detail_r);

/* 1 if the authenticated ADDRESS may use SENDER (itself, or an alias whose
 * targets include ADDRESS), 0 if not, -1 on error. */
int auth_sender_allowed(const struct kale_config *cfg, const char *address, const char *sender);

#endif
