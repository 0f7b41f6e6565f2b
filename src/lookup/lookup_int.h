/* lookup_int: private to src/lookup/: compiled query templates, the
 * per-thread connection cache and the backend entry points
 * (lookup_mysql.c, lookup_pgsql.c, lookup_ldap.c). */
#ifndef KALE_LOOKUP_INT_H
#define KALE_LOOKUP_INT_H

#include <stdint.h>

#include "lookup/lookup.h"
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
/* RFC 4515 escaping of one value (* ( ) \ and NUL, given len bytes). malloc'd. */
char *lookup_ldap_escape(const char *v, size_t len);

/* One backend connection of a worker, for one profile. */
struct lookup_conn {
	struct lookup_conn *next;
	struct store_verify prof;   /* the settings it was made with */
	struct lookup_sql sql;
	int sql_ready;
	void *handle;               /* MYSQL *, PGconn *, LDAP * */
};

/* Each asks the backend (connecting first if needed, and once more on a
 * fresh connection if a pooled one failed). route_r, detail_r: malloc'd or NULL. */
enum lookup_result lookup_mysql_ask(struct lookup_conn *c, const char *address,
    char **detail_r);
void lookup_mysql_close(struct lookup_conn *c);
/* 0 if url is mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, else -1. */
int lookup_mysql_url_ok(const char *url);
enum lookup_result lookup_pgsql_ask(struct lookup_conn *c, const char *address,
    char **detail_r);
void lookup_pgsql_close(struct lookup_conn *c);
enum lookup_result lookup_ldap_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r);
void lookup_ldap_close(struct lookup_conn *c);
/* A probe session to the next hop of the address's domain (its relay route). */
enum lookup_result lookup_smtp_ask(const struct kale_config *cfg, store *st,
    const struct store_verify *v, const char *address, char **detail_r);

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
void lookup_reply_free(struct lookup_reply *r);
/* Called once per thread before any backend is used / after the last use. */
void lookup_thread_init(void);
void lookup_thread_end(void);

#endif
