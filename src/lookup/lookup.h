/* lookup: recipient verification profiles (localdb, mysql, pgsql, ldap,
 * smtp probe) behind one backend interface (lookup_int.h), a shared cache,
 * and a small thread pool so that a slow directory never stalls an event
 * loop. Used by smtpd
 * and qmgr's ldap:PROFILE routes (asynchronously) and by kalectl verify
 * test (both ways). */
#ifndef KALE_LOOKUP_H
#define KALE_LOOKUP_H

#include <stdint.h>

struct kale_config;
struct event_base;

enum lookup_result {
	LOOKUP_FOUND = 0,
	LOOKUP_MISSING = 1,
	LOOKUP_ERROR = 2,       /* temporary: backend down, timeout, server busy */
	LOOKUP_CONFIG = 3       /* the profile is wrong: bad credentials, query or base
	                         * DN the server refuses, no such profile; logged at
	                         * error level. Callers answer it as they do ERROR
	                         * (451 4.4.3): neither is ever "missing". */
};

/* "found", "missing", "error" or "config". */
const char *lookup_result_word(enum lookup_result r);

struct lookup_answer {
	enum lookup_result result;
	const char *profile;     /* the profile that answered (after fallbacks) */
	const char *detail;      /* human-readable: error text or "found in cache" */
	const char *route;       /* ldap route attribute value (HOST[:PORT]) or NULL */
	int cached;
	int64_t elapsed_us;
};

struct lookup_pool;

/* Creates the pool: nthreads worker threads that answer through an event on
 * base (callbacks run on the loop thread). Each thread opens its own policy
 * store handle and backend connections (pooled, reconnected on failure). */
struct lookup_pool *lookup_pool_new(struct event_base *base, const struct kale_config *cfg,
    int nthreads, char **error_r);
void lookup_pool_free(struct lookup_pool **pool);

typedef void lookup_cb(void *ctx, const struct lookup_answer *answer);

/* Asks verification profile PROFILE about ADDRESS. Returns a request id (>0)
 * that lookup_cancel() takes; cb is called exactly once unless cancelled. */
uint64_t lookup_verify(struct lookup_pool *pool, const char *profile, const char *address,
    lookup_cb *cb, void *ctx);
void lookup_cancel(struct lookup_pool *pool, uint64_t id);

/* Generic blocking job for other modules (SMTP AUTH backends): work() runs
 * on a pool thread, then done() on the loop thread. Returns a request id for
 * lookup_cancel() (after which done() is still called, with cancelled = 1,
 * so the job can be freed). */
uint64_t lookup_pool_job(struct lookup_pool *pool, void (*work)(void *job),
    void (*done)(void *job, int cancelled), void *job);

/* Synchronous form for kalectl verify test (opens its own connections). */
int lookup_verify_sync(const struct kale_config *cfg, const char *profile, const char *address,
    struct lookup_answer *answer_r, char **detail_r);

/* Added by H11: checks a profile's backend settings (type-specific fields
 * present, URL scheme, template syntax); kalectl verify add calls it.
 * 0, or -1 with a malloc'd *error_r. */
struct store_verify;
int lookup_profile_check(const struct store_verify *v, char **error_r);

#endif
