/* store: the policy store (domains, users, aliases, trusted networks, mail
 * log). The only module that speaks SQL to it; kaled's processes and kalectl
 * all go through this API. SQLite (WAL) is the embedded engine. */
#ifndef KALE_STORE_H
#define KALE_STORE_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

struct kale_config;
typedef struct store store;

/* Opens the store named by cfg->db_url ("sqlite:PATH", PATH relative to
 * cfg->data_dir), creating it if needed, and runs pending migrations. A
 * store whose schema is current is only read (no write, no write lock); a
 * newer schema is refused. Returns 0, or -1 with a malloc'd *error_r. */
int store_open(const struct kale_config *cfg, store **st_r, char **error_r);
/* The schema version this build migrates to (the number of migrations). */
int store_schema_version(void);
/* Flushes buffered log rows and closes; accepts NULL; sets *st to NULL. */
void store_close(store **st);
/* A handle is used by one thread at a time (its network cache and log batch
 * are not locked); open one per thread or serialise calls. */

/* ---- domains ---- */
struct store_domain {
	char name[256];       /* lower case */
	int local;            /* 1 local Maildir delivery, 0 relay */
	char relay[300];      /* relay: "HOST[:PORT]", "[v6]:PORT", "mx", "ldap:PROFILE"; "" for local */
	char tls[16];         /* "opportunistic" (default) or "require" */
	char verify[64];      /* verification profile name, "" = none */
};
/* 1 found (fills *d_r), 0 missing, -1 error. Name is matched case-insensitively. */
int store_domain_get(store *st, const char *name, struct store_domain *d_r);
/* d->verify "" takes the default (a domain routed by ldap:PROFILE verifies
 * with PROFILE, any other none); "none" is no verification. */
int store_domain_add(store *st, const struct store_domain *d, char **error_r);
int store_domain_set_verify(store *st, const char *name, const char *verify, char **error_r);
int store_domain_del(store *st, const char *name, char **error_r);
/* Calls cb for each domain in name order; stops early if cb returns non-zero. 0 ok, -1 error. */
int store_domain_list(store *st, int (*cb)(void *ctx, const struct store_domain *d), void *ctx);
/* Checks the form of a relay route: "HOST[:PORT]" (host name or IPv4),
 * "[IPv6][:PORT]", "mx" or "ldap:PROFILE". 0 ok, -1 with a malloc'd *error_r.
 * store_domain_add calls it too. (added by the store engineer) */
int store_relay_check(const char *relay, char **error_r);

/* ---- recipients ---- */
/* Resolves ADDRESS (in a local domain) to final recipients: a user is itself;
 * an alias expands (recursively, at most 10 levels, duplicates removed) to its
 * targets, which may be local users or addresses elsewhere. A local part with
 * "+ext" that is not itself known is retried without the extension.
 * Returns the number of targets (>0) with a malloc'd array of malloc'd lower-case
 * strings in *targets_r, 0 if the address is unknown, -1 on error. */
int store_rcpt_resolve(store *st, const char *address, char ***targets_r, char **error_r);
void store_targets_free(char **targets, int n);
/* The postmaster: [server] postmaster if set, else postmaster@ the first
 * local domain (by name) where that address resolves, else [server]
 * root_alias. 1 with the address in out, 0 if there is none, -1 on error. */
int store_postmaster(store *st, const struct kale_config *cfg, char *out, size_t cap);
/* Where mail for LOCAL@hostname (root, cron users, unqualified names) goes:
 * [server] root_alias if set, else the postmaster. As store_postmaster. */
int store_root_alias(store *st, const struct kale_config *cfg, char *out, size_t cap);

/* ---- users ---- */
/* password may be NULL (no login; the mailbox still receives mail). The
 * password is hashed with yescrypt (libcrypt); never stored in clear. */
int store_user_add(store *st, const char *address, const char *password, char **error_r);
int store_user_passwd(store *st, const char *address, const char *password, char **error_r);
int store_user_del(store *st, const char *address, char **error_r);
/* 1 exists, 0 missing, -1 error */
int store_user_exists(store *st, const char *address);
/* 1 password right, 0 wrong or no such user, -1 error. Constant-time compare. */
int store_user_check_password(store *st, const char *address, const char *password);
/* From now on, store_user_check_password accepts only users of local
 * domains (they have a mailbox): pop3d and imapd. Users of relay domains
 * are LocalDB recipients and log in only for SMTP AUTH. */
void store_set_mailbox_only(store *st);
/* The same with a store handle of the calling thread's own: for worker
 * threads, which must not share a caller's handle. The handle is read-only
 * (no write lock, no migration), opened on the thread's first check, kept
 * and closed when the thread exits. It is mailbox-only (only pop3d and
 * imapd use it). */
int store_user_check_password_once(const struct kale_config *cfg, const char *address,
    const char *password);
/* domain may be NULL for all users. */
int store_user_list(store *st, const char *domain, int (*cb)(void *ctx, const char *address), void *ctx);
/* Bulk import (kalectl user import). Lines "address[,password]"; blank lines,
 * "#" comments and a header line "address,password" are skipped. Every good
 * line is added in ONE transaction; each bad line (syntax, unknown or non-local
 * domain, duplicate) is reported to line_error with its 1-based line number and
 * skipped. progress (may be NULL) is called now and then with the current line.
 * Passwords are hashed on all CPUs. Returns 0 (even with bad lines; see
 * *bad_r), -1 if the import as a whole failed (nothing imported; *error_r).
 * (added by the store engineer) */
int store_user_import(store *st, FILE *csv,
    void (*progress)(void *ctx, long line), void *ctx,
    void (*line_error)(void *ctx, long line, const char *msg), void *ctx2,
    long *ok_r, long *bad_r, char **error_r);

/* ---- aliases ---- */
/* targets: comma separated addresses. */
int store_alias_add(store *st, const char *address, const char *targets, char **error_r);
int store_alias_del(store *st, const char *address, char **error_r);
int store_alias_list(store *st, int (*cb)(void *ctx, const char *address, const char *targets), void *ctx);

/* ---- trusted networks ---- */
int store_network_add(store *st, const char *cidr, char **error_r);
int store_network_del(store *st, const char *cidr, char **error_r);
int store_network_list(store *st, int (*cb)(void *ctx, const char *cidr), void *ctx);
/* 1 if the address is inside a trusted network, 0 if not, -1 on error. Kept
 * in memory and reloaded when the store changed (cheap to call per session). */
int store_network_match(store *st, const struct sockaddr *sa);

/* ---- mail log ---- */
struct store_log_row {
	int64_t ts;            /* unix time, seconds; 0 = now */
	const char *qid;       /* any field may be NULL */
	const char *client;    /* client IP */
	const char *helo;
	const char *sender;
	const char *rcpt;
	const char *action;    /* accepted rejected deferred delivered bounced expired ... */
	const char *code;      /* e.g. "550 5.1.1" */
	const char *reason;
	const char *profile;
	const char *relay;     /* next hop / mailbox */
	int64_t size;
	int64_t delay_ms;
};
/* Copies the row into an in-memory batch; never blocks on SQL unless the
 * batch holds 500 rows, then flushes. */
void store_log_add(store *st, const struct store_log_row *row);
/* Writes the batch in one transaction. 0 ok, -1 error (rows kept for retry,
 * dropped past 10,000). */
int store_log_flush(store *st);

struct store_log_query {
	const char *from, *to, *ip, *action; /* NULL = any; from/to match substrings */
	int64_t since;                       /* unix seconds, 0 = any */
	int limit;                           /* 0 = 100 */
};
/* Newest first. The row's strings are valid only during the callback. */
int store_log_search(store *st, const struct store_log_query *q,
    int (*cb)(void *ctx, const struct store_log_row *row), void *ctx);

/* ---- recipient verification profiles and their cache (store_verify.c;
 * added by H11 for issue 5, schema version 2) ---- */
struct store_verify {
	char name[64];           /* [A-Za-z0-9._-], matched case-insensitively */
	char type[16];           /* localdb mysql pgsql ldap smtp */
	char url[512];           /* mysql://, postgresql://, ldap[s]:// */
	char query[1024];        /* SQL template with %m %u %d */
	char base[512];          /* LDAP base DN */
	char filter[1024];       /* LDAP filter template */
	char bind_dn[512];       /* "" = anonymous */
	char bind_password[256];
	char route_attr[64];     /* default "mailHost" */
	int starttls;            /* ldap:// + StartTLS (required) */
	char mode[16];           /* "realtime" or "cache" */
	int ttl_found, ttl_missing;   /* seconds */
	char fallback[64];       /* "" = none */
	int timeout;             /* connect and query, seconds (1-60; default 5) */
};
/* Adds a profile (checks the name, type, mode, TTLs and that the fallback
 * exists; backend-specific fields are checked by the caller). 0 or -1. */
int store_verify_add(store *st, const struct store_verify *v, char **error_r);
/* 1 found (fills *v_r), 0 missing, -1 error. */
int store_verify_get(store *st, const char *name, struct store_verify *v_r);
/* Refused while a domain or another profile's fallback uses the profile.
 * Also drops its cached answers. */
int store_verify_del(store *st, const char *name, char **error_r);
int store_verify_list(store *st, int (*cb)(void *ctx, const struct store_verify *v), void *ctx);
/* Cache: result 0 found, 1 missing (errors are never cached). get returns
 * 1 hit (fills *result_r and route[cap], "" if none), 0 miss or expired, -1 error. */
int store_verify_cache_get(store *st, const char *profile, const char *address, int64_t now,
    int *result_r, char *route, size_t cap);
int store_verify_cache_put(store *st, const char *profile, const char *address, int result,
    const char *route, int64_t expires);
/* Drops the cached answers of PROFILE (NULL: all). Returns the number of rows
 * dropped, or -1. */
long store_verify_cache_flush(store *st, const char *profile, char **error_r);

/* ---- SMTP AUTH (store_auth.c; added by H12) ---- */
/* Settings are key/value rows; src/auth/ validates and interprets them.
 * store_auth_get: 1 found (value copied), 0 never set, -1 error. */
int store_auth_get(store *st, const char *key, char *value, size_t cap);
int store_auth_set(store *st, const char *key, const char *value, char **error_r);

struct store_auth_server {
	int64_t id;
	int position;         /* 1-based order of trial */
	char proto[8];        /* "pop3" | "imap" */
	char tls[16];         /* "plain" | "ssl" | "starttls" */
	char host[256];       /* name, IPv4 or IPv6 literal (no brackets) */
	int port;
	int enabled;
};
/* Checks the fields (add calls it too). 0 ok, -1 with *error_r. */
int store_auth_server_check(const struct store_auth_server *srv, char **error_r);
/* Appends at the end; *id_r (may be NULL) gets the new id. At most 100 servers. */
int store_auth_server_add(store *st, const struct store_auth_server *srv, int64_t *id_r,
    char **error_r);
int store_auth_server_del(store *st, int64_t id, char **error_r);
/* Moves server ID to 1-based POSITION (past the end = last); others shift. */
int store_auth_server_move(store *st, int64_t id, int position, char **error_r);
/* In position order; stops early if cb returns non-zero. 0 ok, -1 error. */
int store_auth_server_list(store *st, int (*cb)(void *ctx, const struct store_auth_server *srv),
    void *ctx);

#endif
