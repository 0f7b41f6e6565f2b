/* filter: the check pipeline (operator.md §6). smtpd (and kalectl policy
 * test) tell it what they learn of a session (client, HELO, MAIL) and ask it
 * for a verdict on each recipient under that recipient's domain policy; it
 * runs the policy's checks in order, each in its own filter_*.c, and never
 * blocks its caller's event loop: DNS goes through c-ares on that loop, the
 * policy store is read through a snapshot reloaded when the store changes.
 * The caller never knows a check by name. */
#ifndef KALE_FILTER_H
#define KALE_FILTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "store/store.h"

struct event_base;
struct dns;
struct filter_sess;
struct lookup_pool;

enum filter_phase { FILTER_PH_CONNECT, FILTER_PH_HELO, FILTER_PH_MAIL, FILTER_PH_RCPT,
	FILTER_PH_DATA };

enum filter_verdict { FILTER_ACCEPT, FILTER_TAG, FILTER_QUARANTINE, FILTER_TEMPFAIL,
	FILTER_REJECT };

/* One check's answer, in the order the checks ran (for the mail log,
 * kalectl policy test and trace). */
struct filter_step {
	enum filter_phase phase;
	char check[16];
	char result[24];     /* pass fail none softfail ... error, or skipped */
	char reason[256];    /* "" for a pass */
	char action[16];     /* what the policy did with it: "" for a pass */
};

/* What the pipeline runs with; owned by the caller, outlives every session. */
struct filter_env {
	struct event_base *base;
	struct dns *dns;          /* c-ares on base ([dns] servers) */
	store *st;                /* the caller's handle (same thread) */
	const char *hostname;     /* our name ([server] hostname) */
	struct lookup_pool *pool; /* blocking work (SPF, DKIM), on the caller's base */
	const char *dns_servers;  /* [dns] servers as c-ares wants them ("" = resolv.conf) */
	int dry_run;              /* kalectl policy test: no state is written */
};

/* Called when a recipient's verdict is known (maybe before filter_rcpt
 * returns). reply: the SMTP reply for a refusal ("554 5.7.1 ..."), NULL for
 * accept/tag/quarantine. check: the deciding check's name ("score" when the
 * spam score decided), NULL for accept. reason: "check: why", or NULL. */
typedef void filter_done_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason);

/* A session from client sa (ip as text). outbound: authenticated or trusted
 * (only the checks made for outbound mail run for it: rate). */
struct filter_sess *filter_sess_new(const struct filter_env *env, const struct sockaddr *sa,
    const char *ip, int outbound);
/* The SMTP session's id (smtpd's), written into the mail-log rows. */
void filter_sess_id(struct filter_sess *fs, const char *sid);
/* Cancels a pending verdict (its callback is not called) and frees. */
void filter_sess_free(struct filter_sess **fs);
void filter_helo(struct filter_sess *fs, const char *helo);
/* 1 if the connection itself is to be decided before the greeting: an
 * inbound session and the default policy has a check set to decide at
 * connect (dnsbl --at connect). */
int filter_connect_wanted(struct filter_sess *fs);
/* That verdict, under the default policy, with only those checks (cb as
 * for filter_rcpt; maybe before filter_connect returns). */
void filter_connect(struct filter_sess *fs, filter_done_cb *cb, void *arg);
/* The client authenticated as user: the session is outbound from now on. */
void filter_auth(struct filter_sess *fs, const char *user);
/* A new transaction from sender ("" for <>); resets per-transaction data. */
void filter_mail(struct filter_sess *fs, const char *sender);
/* The verdict for rcpt under policy (its domain's; NULL or "" = default). At
 * most one pending per session. */
void filter_rcpt(struct filter_sess *fs, const char *rcpt, const char *policy,
    filter_done_cb *cb, void *arg);
/* The steps so far (valid until the next call into fs). */
const struct filter_step *filter_steps(const struct filter_sess *fs, int *n_r);

/* The end of DATA. len: the message's length after what was added and
 * removed. v, reply, check and reason as for filter_done_cb (a refusal is a
 * 550 or 451 for the whole message). */
typedef void filter_data_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason, uint64_t len);
/* 1 if inbound mail of the current transaction has an end-of-DATA phase:
 * a policy under which a recipient was accepted runs dkim or dmarc. */
int filter_data_wanted(struct filter_sess *fs);
/* The end-of-DATA phase on the message in fd, bytes [0, len) (LF line
 * ends), rewritten in place through a descriptor of its own (the caller
 * may close fd at any time): key NULL, inbound mail (DKIM, DMARC,
 * Authentication-Results on top, forged ones in our name removed, the
 * accepted recipients' policies decide); else outbound mail signed with key
 * (copied, and wiped after use). cb is called once, later (at once when the
 * environment has no pool), unless the session is freed first. */
void filter_data(struct filter_sess *fs, int fd, uint64_t len, const struct store_dkim_key *key,
    filter_data_cb *cb, void *arg);
/* The DMARC result of the last message ("" if none was evaluated). */
const char *filter_dmarc_result(const struct filter_sess *fs);

/* Helpers kalectl shares with the checks (filter_util.c). */
/* The greylist network of a client: "a.b.c.0/24" or "x:x:x:x::/64"; 0 or -1. */
int filter_grey_net(const struct sockaddr *sa, char *out, size_t cap);
/* Checks a list entry (kalectl list add): list allow|block, kind
 * sender|recipient (ADDRESS or @DOMAIN), client (IP or CIDR), helo (a
 * name); skip: "" or check names, comma separated (allow only). 0 or -1
 * with *error_r. */
int filter_list_check(const char *list, const char *kind, const char *value, const char *skip,
    char **error_r);

#endif
