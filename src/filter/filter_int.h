/* filter_int.h: what the pipeline (filter.c) and its checks (filter_*.c)
 * share; nothing outside src/filter/ includes it. A check is a struct
 * filter_check: run() is asked for one recipient and answers exactly once
 * through filter_answer(), at once or later from a DNS callback. Data a
 * check gathers once per session (a PTR, a DNSBL answer) it keeps in
 * fs->data[its index]. A callback that may come after the session is gone
 * holds a reference (filter_ref/filter_unref) and checks fs->dead. */
#ifndef KALE_FILTER_INT_H
#define KALE_FILTER_INT_H

#include <stdint.h>
#include <netinet/in.h>

#include "filter/filter.h"
#include "filter/filter_conf.h"
#include "lib/dns.h"
#include "mail/dkim.h"

enum filter_res {
	FILTER_RES_PASS,      /* nothing against it */
	FILTER_RES_FAIL,      /* the check's action applies */
	FILTER_RES_ERROR      /* could not answer: 4xx unless --on-error pass */
};

struct filter_check {
	const char *name;
	enum filter_phase phase;  /* where its data comes from (for the steps) */
	const char *ecode;        /* enhanced code of a rejection: "5.7.1" if NULL */
	int outbound;             /* runs for outbound sessions too (else inbound only) */
	int connect;              /* decides at connect: 1 when set so (option at=connect),
	                           * 2 whenever the connection is decided (lists) */
	/* Asks about fs->rcpt under settings cc; answers with filter_answer. */
	void (*run)(struct filter_sess *fs, const struct filter_check_conf *cc);
	/* Frees fs->data[i] (may be NULL): the session ends. */
	void (*sess_free)(void *data);
	/* A new MAIL: drops what depended on the sender (may be NULL). */
	void (*mail_reset)(struct filter_sess *fs, void **data);
};

#define FILTER_MAX_CHECKS 16

struct filter_sess {
	const struct filter_env *env;
	int refs;                 /* 1 for the owner + each callback in flight */
	int dead;                 /* the owner freed it: callbacks only unref */
	struct sockaddr_storage sa;
	char ip[INET6_ADDRSTRLEN];
	int outbound;
	char helo[256];
	char auth_user[320];      /* the authenticated user, "" if none */
	char sender[320];         /* "" for <> */
	int have_mail;
	char rcpt[320];           /* the recipient being decided */
	void *data[FILTER_MAX_CHECKS];
	struct filter_step *steps;
	int n_steps, cap_steps;

	/* the recipient being decided */
	struct filter_pol *pol;   /* the policy, a reference into filter.c's cache */
	filter_done_cb *cb;
	void *cb_arg;
	unsigned gen;             /* counts filter_rcpt calls */
	int at_connect;           /* deciding the connection (filter_connect), not a recipient */
	int next;                 /* index of the check to run next */
	int in_run;               /* inside a check's run() */
	int answered;             /* the check answered inside run() */
	unsigned skip;            /* checks an allow-list hit skips (bits) */
	double score;
	int tag;
	int quarantine;
	char reason[300];         /* why tagged/quarantined */

	/* sender authentication, for Authentication-Results */
	char spf[16];             /* RFC 8601 spf= result, "" if not checked */
	char spf_from[320];       /* the identity checked (smtp.mailfrom / smtp.helo) */
	char sid[24];             /* the SMTP session's id, for the mail log */
	char dmarc[16];           /* the DMARC result of the last message, "" if none */

	/* the end of DATA (filter_data.c) */
	char dpol[8][64];         /* policies under which recipients were accepted */
	unsigned dskip[8];        /* the skip bits every such recipient of dpol[i] had */
	int n_dpol;
	int rcpt_tag;             /* a recipient was tagged or quarantined at RCPT */
	double rcpt_score;        /* the highest spam score of an accepted recipient */
	int scored;               /* a score action added to it */
	filter_data_cb *dcb;
	void *dcb_arg;
};

/* The check's answer. result: its own word ("pass", "fail", "none",
 * "softfail" ...), reason: "" or why (shown after "CHECK: "). */
void filter_answer(struct filter_sess *fs, enum filter_res res, const char *result,
    const char *reason);
/* The same with the action (instead of the policy's for the check) and
 * the enhanced code of a rejection (instead of the check's); either NULL. */
void filter_answer_as(struct filter_sess *fs, enum filter_res res, const char *result,
    const char *reason, const enum filter_action *action, const char *ecode);
/* Index of a check by name (fs->data[i], skip bits), -1 if unknown. */
int filter_check_index(const char *name);
/* The skip bit of a check by name: 1 << its index for the pipeline's, these
 * two for the end of DATA's; 0 if there is no such check. */
#define FILTER_SKIP_DKIM (1u << 30)
#define FILTER_SKIP_DMARC (1u << 31)
unsigned filter_skip_bit(const char *name);
/* The policy of the recipient being decided. */
const struct filter_policy_conf *filter_sess_conf(const struct filter_sess *fs);
/* Makes the current check skip checks by mask (allow-list hit). */
void filter_skip(struct filter_sess *fs, unsigned mask);
void filter_ref(struct filter_sess *fs);
/* Drops a reference; 1 if the session is gone (do not touch it). */
int filter_unref(struct filter_sess *fs);

/* A step of the trace (filter_steps); action NULL for a pass. */
void filter_step_push(struct filter_sess *fs, enum filter_phase phase, const char *check,
    const char *result, const char *reason, const char *action);
/* A mail-log row for a check that failed without deciding (not in a dry run). */
void filter_log_row(struct filter_sess *fs, const char *action, const char *reason);
/* A policy from the per-process cache, with a reference (NULL with *error_r). */
struct filter_pol *filter_policy_get(store *st, const char *name, char **error_r);
const struct filter_policy_conf *filter_pol_conf(const struct filter_pol *p);
void filter_pol_release(struct filter_pol **p);

/* The checks, in the order they run (filter.c's table). */
extern const struct filter_check filter_check_lists, filter_check_dnsbl, filter_check_rdns,
    filter_check_fcrdns, filter_check_helo, filter_check_greylist, filter_check_spf,
    filter_check_rate;

/* The SPF result ("pass" ... "permerror") and a comment for the client
 * sa, HELO name and sender ("" for <>), resolving through servers, with
 * our hostname in the comment;
 * blocking (a pool thread, or kalectl). */
void filter_spf_eval(const char *servers, const char *hostname, const struct sockaddr *sa,
    const char *helo, const char *sender, char *result, size_t rcap, char *reason, size_t xcap);

/* DMARC (filter_dmarc.c), blocking. */
struct filter_dmarc_in {
	const char *ip;
	const char *from_domain;     /* "" : from_why says why there is none */
	const char *from_why;
	const char *spf;             /* the SPF result word */
	const char *spf_domain;      /* the identity SPF checked: MAIL FROM's domain or the HELO */
	int spf_helo;
	const struct kdkim_result *dkim;
	int n_dkim;
};
struct filter_dmarc_res {
	char result[16];             /* pass fail none temperror permerror */
	char policy[12];             /* fail: the policy that applies, after pct= */
	char domain[256];            /* header.from */
	char reason[160];
};
/* The domain of the one author address in msg's From: (lower case): 1, or 0
 * with *why_r (no From:, several, unparsable, no domain). */
int filter_from_domain(const char *msg, size_t len, char *dom, size_t cap, const char **why_r);
void filter_dmarc_eval(struct dns_sync *ds, const struct filter_dmarc_in *in,
    struct filter_dmarc_res *r);

/* This pool thread's resolver on servers (kept for the thread's life, shared
 * with its SPF evaluations; filter_spf.c): NULL with *error_r. */
struct dns_sync *filter_thread_dns(const char *servers, char **error_r);

/* Pure helpers (filter_util.c), unit-tested. */
/* The DNSBL query name of an address under zone (RFC 5782: reversed IPv4
 * octets, reversed IPv6 nibbles). 0, or -1 if it does not fit. */
int filter_dnsbl_name(const struct sockaddr *sa, const char *zone, char *out, size_t cap);
/* 1 if name is a syntactically valid host name for HELO (RFC 5321: a
 * domain with at least one dot, LDH labels of 1..63, or an address literal). */
int filter_helo_syntax(const char *name);
/* 1 if addr matches a list value: "user@domain" exactly, "@domain" for that
 * domain and its subdomains (case-insensitive). */
int filter_addr_match(const char *value, const char *addr);
/* 1 if a and b are the same address (IPv4-mapped IPv6 equals IPv4). */
int filter_sa_equal(const struct sockaddr *a, const struct sockaddr *b);
/* 1 if the client address is inside value (an IP or CIDR), 0 if not, -1 bad value. */
int filter_ip_match(const char *value, const struct sockaddr *sa);

#endif
