/* lookup_int: private to src/lookup/: compiled query templates, the
 * per-thread connection cache and the backend interface (struct
 * lookup_backend, one per lookup_TYPE.c). */
#ifndef KALE_LOOKUP_INT_H
#define KALE_LOOKUP_INT_H

#include <stdint.h>

#include "lookup/lookup.h"
#include "lookup/lookup_ldap.h"
#include "store/store.h"

#define LOOKUP_TIMEOUT_S   5      /* connect and query, when the profile has none */
#define LOOKUP_TIMEOUT(c) ((c)->prof.timeout > 0 ? (c)->prof.timeout : LOOKUP_TIMEOUT_S)
#define LOOKUP_ADDR_MAX    320
#define LOOKUP_SQL_PARAMS  16
#define LOOKUP_FALLBACK_MAX 8

/* An SQL template made into a parameterised statement: every %m %u %d
 * outside a string literal, and every string literal holding one, becomes a
 * parameter ("?" for MySQL, "$N" for PostgreSQL) whose value is params[i]
 * expanded with lookup_expand(). */
struct lookup_sql {
	char *sql;
	int nparams;
	char *params[LOOKUP_SQL_PARAMS];
};
/* dollar: 0 MySQL markers, 1 PostgreSQL. 0, or -1 with a malloc'd *error_r. */
int lookup_sql_compile(const char *tmpl, int dollar, struct lookup_sql *q, char **error_r);
void lookup_sql_free(struct lookup_sql *q);

/* Expands %m (address), %u (local part), %d (domain) and %% in tmpl; any
 * other '%' stays. ldap: the values are escaped per RFC 4515. malloc'd. */
char *lookup_expand(const char *tmpl, const char *address, int ldap);

/* One backend connection of a worker, for one profile. */
struct lookup_conn {
	struct lookup_conn *next;
	const struct lookup_backend *be;
	struct store_verify prof;   /* the settings it was made with */
	const struct kale_config *cfg;  /* the worker's (smtp: remote_port, hostname) */
	store *st;                  /* the worker's policy store handle (localdb, smtp) */
	struct lookup_sql sql;
	int sql_ready;
	void *handle;               /* MYSQL *, PGconn *, LDAP * */
};

/* The lookup backend interface: one per src/lookup/lookup_TYPE.c, all in
 * one table (lookup.c); lookup.c and lookup_pool.c know no type by name.
 *   check: the profile's settings (kalectl verify add). 0, or -1 with a
 *          malloc'd *error_r. NULL: nothing to check.
 *   open:  connects c->handle. LOOKUP_FOUND (0) when connected, else
 *          LOOKUP_ERROR (temporary) or LOOKUP_CONFIG with *detail_r.
 *          NULL: the backend keeps no connection.
 *   ask:   one lookup: FOUND / MISSING / ERROR / CONFIG; *route_r the route
 *          attribute (ldap) or NULL; *detail_r malloc'd or NULL. Sets
 *          *conn_failed_r when the connection itself failed, so that the
 *          caller tries once more on a fresh one if this one was pooled.
 *   close: drops c->handle (NULL allowed when open is NULL).
 *   init, thread_init, thread_end (optional): the client library's set-up,
 *          once per process before any lookup thread / per thread. Only
 *          the built-in backends' are called.
 * After an answer other than FOUND or MISSING the caller closes the
 * connection: its state is unknown. */
struct lookup_backend {
	const char *name;
	int (*check)(const struct store_verify *v, char **error_r);
	enum lookup_result (*open)(struct lookup_conn *c, char **detail_r);
	enum lookup_result (*ask)(struct lookup_conn *c, const char *address, char **route_r,
	    char **detail_r, int *conn_failed_r);
	void (*close)(struct lookup_conn *c);
	void (*init)(void);
	void (*thread_init)(void);
	void (*thread_end)(void);
};

extern const struct lookup_backend lookup_backend_localdb;
extern const struct lookup_backend lookup_backend_mysql;
extern const struct lookup_backend lookup_backend_pgsql;
extern const struct lookup_backend lookup_backend_ldap;
extern const struct lookup_backend lookup_backend_smtp;

/* The backend of a profile type, or NULL. Backends added with
 * lookup_backend_register() are found before the built-in ones. */
const struct lookup_backend *lookup_backend_find(const char *type);
/* Adds a backend (unit tests stand one in for a server); at most 4, set
 * before any lookup thread runs. 0 or -1 when full. */
int lookup_backend_register(const struct lookup_backend *b);

/* The ldap filter syntax check of verify add (parentheses, a placeholder). */
int lookup_ldap_filter_check(const char *f, char **error_r);

/* A worker: its own store handle and connections; used by one thread. */
struct lookup_worker {
	const struct kale_config *cfg;
	store *st;
	struct lookup_conn *conns;
};
struct lookup_reply {
	enum lookup_result result;
	char profile[64];
	char *detail;
	char *route;
	int cached;
	int64_t elapsed_us;
};
void lookup_worker_init(struct lookup_worker *w, const struct kale_config *cfg);
void lookup_worker_free(struct lookup_worker *w);
void lookup_worker_ask(struct lookup_worker *w, const char *profile, const char *address,
    struct lookup_reply *r);
/* One profile's backend, no cache, no fallback: the registry dispatch
 * (connection pooling, one retry on a fresh connection, the timeout hold). */
enum lookup_result lookup_worker_backend(struct lookup_worker *w, const struct store_verify *v,
    const char *address, char **route_r, char **detail_r);
void lookup_reply_free(struct lookup_reply *r);
/* Called once per thread before any backend is used / after the last use. */
void lookup_thread_init(void);
void lookup_thread_end(void);

#endif
