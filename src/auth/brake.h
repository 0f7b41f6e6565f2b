/* brake: the brute-force brake for every login (SMTP AUTH, IMAP LOGIN and
 * AUTHENTICATE, POP3 PASS), shared by all smtpd workers, pop3d and imapd.
 * A shared anonymous mapping made by the master before it forks, guarded by
 * a robust process-shared mutex (a child that dies holding it does not wedge
 * the others). Failures are counted per client address (IPv4 /32, IPv6 /64)
 * and per login name; see docs/auth.md "Brute-force brake". */
#ifndef KALE_BRAKE_H
#define KALE_BRAKE_H

#include <stdint.h>

struct kale_config;
struct brake;

#define BRAKE_SLOTS       2048   /* addresses and accounts together */
#define BRAKE_NAME_MAX    128    /* account key (lower-cased login), with NUL */
#define BRAKE_TOP         10     /* entries shown by kalectl status */

struct brake_params {
	int limit;                /* failures per key in the window before refusing */
	int window_s;             /* a key is forgotten this long after its last failure */
	int max_delay_s;          /* cap of the delay; 0: no delay, only the limit */
};

enum brake_verdict {
	BRAKE_GO = 0,             /* check the password after ticket.delay_ms */
	BRAKE_REFUSE = 1,         /* over the limit (or the table is unusable): temp-fail */
};

enum brake_outcome {
	BRAKE_SUCCESS,            /* right password: clears this account's count */
	BRAKE_FAILURE,            /* wrong password or bad login: counts for both keys */
	BRAKE_NEUTRAL,            /* no answer (backend down, client gone): not counted */
};

/* One attempt between brake_begin() and brake_end(). */
struct brake_ticket {
	int active;
	int slot[2];              /* address, account; -1 none */
	uint32_t gen[2];          /* the slot's generation when taken (eviction check) */
	int failures;             /* larger count of the two keys before this attempt */
	int delay_ms;             /* wait before checking the password */
};

struct brake_entry {
	int is_account;
	char name[BRAKE_NAME_MAX];     /* "192.0.2.1", "2001:db8::/64" or the login */
	int failures, pending;
	int64_t idle_s;                /* seconds since the last failure */
	int blocked;                   /* failures + pending >= limit */
};

struct brake_stats {
	int ips, accounts;             /* keys with failures in the window */
	int ips_blocked, accounts_blocked;
	int n_top;
	struct brake_entry top[BRAKE_TOP];   /* most failures first */
};

/* Maps a table of nslots (BRAKE_SLOTS if <= 0); NULL on failure. */
struct brake *brake_create(int nslots);
void brake_free(struct brake **b);
/* Seconds on CLOCK_MONOTONIC: the clock of every call below. */
int64_t brake_now(void);
void brake_params_conf(const struct kale_config *cfg, struct brake_params *p_r);
/* The delay for an attempt made after FAILURES failures: 0, then 1, 2, 4,
 * 8 ... seconds, capped at max_delay_s. */
int brake_delay_ms(const struct brake_params *p, int failures);

/* Starts an attempt from IP for LOGIN (lower-cased here). BRAKE_GO: the
 * attempt is counted as pending and t gets the delay to wait before
 * checking the password; BRAKE_REFUSE: do not check it (t inactive).
 * A NULL table always says BRAKE_GO with no delay. */
enum brake_verdict brake_begin(struct brake *b, const struct brake_params *p, const char *ip,
    const char *login, int64_t now, struct brake_ticket *t);
/* Ends an attempt; returns the larger count of its two keys afterwards.
 * Does nothing (returns 0) for an inactive ticket; leaves it inactive. */
int brake_end(struct brake *b, struct brake_ticket *t, enum brake_outcome o, int64_t now);
/* Counts and the top entries for kalectl status; 0 ok, -1 lock failed. */
int brake_stats(struct brake *b, const struct brake_params *p, int64_t now, struct brake_stats *st_r);
/* Logs one brake event (event=auth.brake): action "delay" or "refuse". */
void brake_log(const char *proto, const char *ip, const char *login, const struct brake_ticket *t,
    const char *action);

#endif
