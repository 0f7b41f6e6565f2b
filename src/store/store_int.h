/* store_int: private to src/store/: the store handle and the small helpers
 * the store_*.c files share (statement preparation, validation, errors).
 * Nothing outside src/store/ includes this. */
#ifndef KALE_STORE_INT_H
#define KALE_STORE_INT_H

#include <sqlite3.h>
#include <stdint.h>

#include "store/store.h"

#define STORE_LOG_BATCH 500      /* flush when the batch holds this many rows */
#define STORE_LOG_MAX   10000    /* rows kept across failed flushes */

struct store_net {
	int family;                  /* AF_INET or AF_INET6 */
	int prefix;
	unsigned char addr[16];      /* network address, host bits zero */
};

struct store_log_item {
	int64_t ts, size, delay_ms;
	char *s[11];                 /* qid client helo sender rcpt action code reason profile relay */
};

struct store {
	sqlite3 *db;

	/* trusted networks, cached; reloaded when data_version changes */
	struct store_net *nets;
	int n_nets;
	int nets_loaded;
	int64_t nets_version;

	/* mail log batch */
	struct store_log_item *log;
	int n_log, cap_log;
	long log_dropped;

	int mailbox_only;     /* password checks only for users with a mailbox */
};

/* Sets *error_r to a malloc'd formatted message; returns -1. */
int store_err(char **error_r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, appending sqlite's message for st->db. */
int store_err_db(store *st, char **error_r, const char *what);
/* Prepares sql; NULL with *error_r set on failure. */
sqlite3_stmt *store_prepare(store *st, const char *sql, char **error_r);
/* Runs a statement without results (BEGIN/COMMIT...). 0 or -1. */
int store_exec(store *st, const char *sql, char **error_r);
/* Binds a C string or NULL. */
int store_bind_text(sqlite3_stmt *s, int idx, const char *v);

/* Validation (store.c). Each fills a lower-cased copy into out[cap]. */
int store_domain_name_norm(const char *in, char *out, size_t cap, char **error_r);
/* local part of a local user/alias: [a-z0-9._+-], <=64, no edge/double dot */
int store_localpart_norm(const char *in, char *out, size_t cap, char **error_r);
/* any syntactically valid address (alias targets): dot-atom@domain */
int store_address_norm(const char *in, char *out, size_t cap, char **error_r);
/* ADDRESS in an existing local domain (or, with relay_ok, in any existing
 * domain: users of a relay domain are LocalDB recipients without a mailbox);
 * fills the normalised address and its domain. */
int store_local_address(store *st, const char *in, int relay_ok, char *addr, size_t acap,
    char *domain, size_t dcap, char **error_r);

/* store_net.c: marks the in-memory list stale after a local change. */
void store_net_invalidate(store *st);
void store_net_free(store *st);

/* store_log.c */
void store_log_free(store *st);

#endif
