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

/* Connecting is apart from migrating. Every kaled child (smtpd, qmgr,
 * pop3d, imapd, the lookup and auth threads) connects: store_connect opens
 * the store named by cfg->db_url ("sqlite:PATH", PATH relative to
 * cfg->data_dir) and writes nothing; a missing file or a schema that is not
 * this build's is refused ("store schema version 3, this kaled expects 5:
 * start kaled (master) to migrate"). Only the master at start-up (in its
 * run_as child) and kalectl, which may run before kaled ever ran, migrate:
 * store_open_migrate creates the file if needed and runs pending
 * migrations, store_migrate does that and closes. A store whose schema is
 * current is only read by either (no write, no write lock); a newer schema
 * is refused by both. Each returns 0, or -1 with a malloc'd *error_r. */
int store_connect(const struct kale_config *cfg, store **st_r, char **error_r);
int store_open_migrate(const struct kale_config *cfg, store **st_r, char **error_r);
int store_migrate(const struct kale_config *cfg, char **error_r);
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
	char filter[64];      /* filter policy ("default"; "" in store_domain_add = default) */
};
/* 1 found (fills *d_r), 0 missing, -1 error. Name is matched case-insensitively. */
int store_domain_get(store *st, const char *name, struct store_domain *d_r);
/* d->verify "" takes the default (a domain routed by ldap:PROFILE verifies
 * with PROFILE, any other none); "none" is no verification. */
int store_domain_add(store *st, const struct store_domain *d, char **error_r);
int store_domain_set_verify(store *st, const char *name, const char *verify, char **error_r);
/* The policy must exist (kalectl filter add). */
int store_domain_set_filter(store *st, const char *name, const char *policy, char **error_r);
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
	const char *session;   /* the SMTP session (smtpd, filter rows) */
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
/* One message's rows, oldest first (kalectl trace): every row of qid, and
 * the rows without a queue id of the SMTP session that received it, from
 * its previous message on (connect, checks, RCPT), the connect row always.
 * At most limit rows (0 = 100000). The number of rows (0: qid unknown), or
 * -1. The row's strings are valid only during the callback. */
int store_log_trace(store *st, const char *qid, int limit,
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


/* ---- filter policies, lists and greylisting (store_filter.c; issue 13) ----
 * The store keeps the rows; src/filter/ says what they mean (check names,
 * actions, options). Names of policies are [A-Za-z0-9._-], 1-63, matched
 * case-insensitively. */
struct store_filter_policy {
	char name[64];
	double tag, quarantine, reject;   /* spam score thresholds */
};
struct store_filter_check {
	char name[32];          /* the check ("dnsbl") */
	char action[32];        /* "reject", "tempfail", "score", ... */
	double score;           /* for action score */
	char on_error[16];      /* "tempfail" or "pass" */
	char options[2048];     /* a JSON object */
};
struct store_filter_list {
	char policy[64];
	char list[8];           /* "allow" or "block" */
	char kind[16];          /* "sender" "client" "helo" "recipient" */
	char value[320];
	char skip[256];         /* allow: checks it skips, comma separated ("" = default) */
	char comment[256];
};
/* A number that moves whenever a policy, check or list changes (on any
 * node): filter caches compare it. 0 or -1. */
int store_filter_version(store *st, int64_t *v_r);
/* 0 if POLICY exists, else -1 with *error_r. */
int store_filter_policy_check(store *st, const char *policy, char **error_r);
/* 1 found, 0 missing, -1 error. */
int store_filter_policy_get(store *st, const char *name, struct store_filter_policy *p_r);
int store_filter_policy_list(store *st,
    int (*cb)(void *ctx, const struct store_filter_policy *p), void *ctx);
/* A new policy with the built-in settings, or (copy_of) a copy of another's
 * thresholds, checks and lists. */
int store_filter_policy_add(store *st, const char *name, const char *copy_of, char **error_r);
/* Refused for "default" and while a domain uses the policy. */
int store_filter_policy_del(store *st, const char *name, char **error_r);
int store_filter_policy_scores(store *st, const char *name, double tag, double quarantine,
    double reject, char **error_r);
/* The check rows of a policy (checks without a row are not listed). */
int store_filter_check_list(store *st, const char *policy,
    int (*cb)(void *ctx, const struct store_filter_check *c), void *ctx);
/* Adds or replaces the row of check c->name in POLICY. */
int store_filter_check_set(store *st, const char *policy, const struct store_filter_check *c,
    char **error_r);
/* l->policy "" = "default". */
int store_filter_list_add(store *st, const struct store_filter_list *l, char **error_r);
int store_filter_list_del(store *st, const struct store_filter_list *l, char **error_r);
/* policy NULL: every policy's entries. */
int store_filter_list_each(store *st, const char *policy,
    int (*cb)(void *ctx, const struct store_filter_list *l), void *ctx);

struct store_greylist {
	char net[64];           /* "192.0.2.0/24", "2001:db8::/64" */
	char sender[320];       /* "" for <> */
	char rcpt[320];
	int64_t first_seen, last_seen, expires;
	int passed;             /* retried after the delay */
};
/* 1 found, 0 missing, -1 error. */
int store_greylist_get(store *st, const char *net, const char *sender, const char *rcpt,
    struct store_greylist *g_r);
int store_greylist_put(store *st, const struct store_greylist *g);
/* 1 found (passes, expires), 0 missing, -1 error. */
int store_greylist_client_get(store *st, const char *net, int *passes_r, int64_t *expires_r);
int store_greylist_client_put(store *st, const char *net, int passes, int64_t expires);
/* Entries not yet expired at now, newest first, at most limit. */
int store_greylist_list(store *st, int64_t now, int limit,
    int (*cb)(void *ctx, const struct store_greylist *g), void *ctx);
/* Drops entries: all (what NULL), of a client network or of an address
 * (sender or recipient), and every expired one. Number dropped, or -1. */
long store_greylist_flush(store *st, const char *what, int64_t now, char **error_r);

/* Rate counters (the rate check): adds messages and rcpts to KEY's
 * window of `window` seconds (a window older than that starts again at
 * now) and reads the sums back. 0 or -1. */
int store_rate_hit(store *st, const char *key, int64_t now, int64_t window, int messages,
    int rcpts, int64_t *messages_r, int64_t *rcpts_r);
/* The sums of KEY's window as they are (0 if it has passed or none), writing
 * nothing (kalectl policy test). 0 or -1. */
int store_rate_get(store *st, const char *key, int64_t now, int64_t window,
    int64_t *messages_r, int64_t *rcpts_r);

/* ---- DKIM signing keys (store_dkim.c) ----
 * One row per (domain, selector); a domain signs with its newest key. The
 * private key is a PEM text: it is read only by store_dkim_get (signing,
 * kalectl dkim sign), never by store_dkim_list. */
struct store_dkim_key {
	char domain[256];       /* lower case */
	char selector[64];      /* lower case */
	char algorithm[32];     /* "rsa-sha256" or "ed25519-sha256" */
	char private_key[8192]; /* PEM; "" from store_dkim_list. Wipe after use. */
	char txt[1024];         /* the TXT record published at SELECTOR._domainkey.DOMAIN */
	int64_t created;        /* unix seconds */
};
/* Adds k (created 0 = now). The domain must exist (kalectl domain add);
 * selector [A-Za-z0-9_-] labels, algorithm as above. 0 or -1. */
int store_dkim_add(store *st, const struct store_dkim_key *k, char **error_r);
/* selector NULL: the domain's newest key. 1 found (fills *k_r), 0 none, -1 error. */
int store_dkim_get(store *st, const char *domain, const char *selector,
    struct store_dkim_key *k_r);
/* Every key, by domain and newest first, without the private keys. */
int store_dkim_list(store *st, int (*cb)(void *ctx, const struct store_dkim_key *k), void *ctx);
/* Deletes DOMAIN's key SELECTOR, or all its keys (selector NULL). The
 * number deleted (>= 1), or -1 with *error_r (none: "no DKIM key ..."). */
long store_dkim_del(store *st, const char *domain, const char *selector, char **error_r);

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
