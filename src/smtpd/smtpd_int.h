/* smtpd_int.h: what the smtpd rooms share (src/smtpd/ only; outside it
 * there is just smtpd_main in master/kaled.h). The worker, the session and
 * its transaction, the command table, and the functions one room calls in
 * another. Everything here runs in an smtpd worker process. */
#ifndef KALE_SMTPD_INT_H
#define KALE_SMTPD_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <netinet/in.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "auth/auth.h"
#include "auth/brake.h"
#include "conf/conf.h"
#include "filter/filter.h"
#include "lookup/lookup.h"
#include "mail/header.h"
#include "lib/proc.h"
#include "lib/server.h"
#include "queue/queue_commit.h"
#include "smtpd/smtp_parse.h"
#include "store/store.h"

#define SMTPD_MIN_DATA_RATE 500       /* bytes/s a message must arrive at, past command_timeout */
#define SMTPD_MAX_ERRORS 10
#define SMTPD_MAX_HOPS 50
#define SMTPD_WBUF 65536
#define SMTPD_OUT_MAX (256 * 1024)
#define SMTPD_DISK_RESERVE (64 * 1024)

enum smtpd_state {
	SMTPD_GREETING,   /* greeting delay running */
	SMTPD_CMD,        /* reading commands */
	SMTPD_DATA,       /* reading DATA bytes */
	SMTPD_BDAT,       /* reading a BDAT chunk */
	SMTPD_COMMIT,     /* waiting for the group commit */
	SMTPD_AUTH,       /* reading an AUTH continuation line */
	SMTPD_WAIT,       /* waiting for a lookup (AUTH check) to answer */
	SMTPD_CLOSING     /* flushing the last reply */
};

struct smtpd_rcpt {
	char *orig;
	char *orcpt;               /* DSN ORCPT= or NULL */
	int notify;                /* DSN NOTIFY= bits */
	char **targets;
	int n_targets;
};

/* The mail transaction: reset by RSET, HELO/EHLO, STARTTLS and after each message. */
struct smtpd_tx {
	int active;                /* MAIL given */
	struct smtp_path mail;
	struct smtpd_rcpt *rcpt;
	int n_rcpt;
	int n_targets;
	/* message file */
	int fd;
	char qid[32];
	char *wbuf;
	size_t wlen;
	int werrno;                /* first write error */
	struct smtp_data data;
	int bdat;                  /* BDAT in use */
	uint64_t bdat_size;        /* size of the current chunk, as on the wire */
	uint64_t bdat_left;        /* bytes of the current chunk still to read */
	int bdat_last;
	const char *bdat_error;    /* reply for the chunk when it is being discarded */
	uint64_t body_len;
	uint64_t started_us;
	struct header_scan *hs;    /* header scanner: authenticated or local mail, else NULL */
};

struct smtpd_worker;

/* A RCPT waiting for the filter pipeline's verdict (smtpd_rcpt.c). */
struct smtpd_filterwait {
	struct smtp_path p;
	char addr[300];
	char **targets;
	int n;
	int sync;                  /* inside filter_rcpt: the caller goes on */
};

/* A RCPT waiting for its verification profile. */
struct smtpd_rcptwait {
	struct smtp_path p;
	char addr[300];
	struct store_domain dom;
	uint64_t req;
};

struct smtpd_session {
	struct smtpd_worker *w;
	struct server_conn *conn;  /* the skeleton's connection (lib/server.h) */
	struct bufferevent *bev;   /* conn->bev */
	struct event *greet_ev;
	struct event *deadline_ev; /* a command, or DATA at SMTPD_MIN_DATA_RATE, has a deadline */
	uint64_t phase_ms;         /* when the current command or message began */
	enum smtpd_state state;
	enum kale_listen_kind kind;
	char sid[24];              /* the session's id in the mail log (kalectl trace) */
	char refused[320];         /* the 554 the connection got instead of 220, or "" */
	char ip[INET6_ADDRSTRLEN];
	char helo[256];
	int esmtp;
	int helo_done;
	int tls;
	int tls_pending;           /* 220 to STARTTLS queued: switch once it is written */
	int trusted;
	long local_uid;            /* sendmail.sock: the peer's uid, -1 elsewhere */
	char local_user[64];       /* and its login name */
	int errors;
	/* SMTP AUTH */
	int auth_offer;            /* AUTH may be used on this connection */
	int auth_mech;             /* 1 PLAIN, 2 LOGIN (during the exchange) */
	char *auth_login;          /* LOGIN: the user name given */
	char *auth_address;        /* authenticated address, NULL if none */
	uint64_t auth_req;         /* pending pool request */
	struct smtpd_rcptwait *rw; /* pending recipient verification */
	struct filter_sess *fs;    /* the check pipeline's view of the session */
	struct smtpd_filterwait *fw;   /* pending filter verdict */
	struct event *auth_delay_ev;   /* the brake's delay before the check */
	struct smtpd_authjob *auth_delayed;   /* the check waiting for it */
	struct brake_ticket auth_brake;
	int auth_fails;
	int discard_line;          /* skipping the rest of an over-long line */
	int busy;                  /* inside smtpd_process */
	struct smtpd_tx tx;
	struct queue_commit_job commit;          /* in the commit batch */
};

struct smtpd_worker {
	struct kale_ctx *ctx;
	const struct kale_config *cfg;
	struct event_base *base;
	store *st;
	struct server *server;                  /* listeners, limits, TLS, drain (lib/server.h) */
	struct queue_commit *qc;                /* the group commit (queue/queue_commit.c) */
	struct event *flush_ev;
	struct lookup_pool *pool;
	struct dns *dns;                        /* c-ares on base, for the checks */
	char dns_servers[CONF_MAX_ADDRS * 300]; /* [dns] servers, for the pool's lookups */
	struct filter_env fenv;
	struct auth_settings auth;   /* cached, re-read at most once a second */
	uint64_t auth_read_ms;
};

/* ---------- the command table (smtpd_session.c) ---------- */

#define SMTPD_ST(st) (1u << (st))    /* a state as a bit of smtpd_command.states */

/* What a command needs of the session before its handler runs. */
enum smtpd_need {
	SMTPD_NEED_HELO = 1 << 0,    /* HELO/EHLO given */
	SMTPD_NEED_MAIL = 1 << 1,    /* a transaction open (MAIL given) */
	SMTPD_NEED_LOCAL = 1 << 2    /* on sendmail.sock */
};

struct smtpd_command {
	enum smtp_verb verb;
	const char *name;
	unsigned states;             /* SMTPD_ST() bits it is taken in */
	unsigned needs;              /* enum smtpd_need bits */
	const char *refuse;          /* the reply when a need is not met */
	void (*fn)(struct smtpd_session *s, char *arg);
};

/* The entry for a parsed verb, NULL if the verb has none (500). */
const struct smtpd_command *smtpd_command_find(enum smtp_verb verb);
/* NULL if c may run in state st for a session meeting the needs in have
 * (enum smtpd_need bits), else the reply that refuses it. */
const char *smtpd_command_refusal(const struct smtpd_command *c, enum smtpd_state st, unsigned have);

/* ---------- smtpd_session.c: I/O, replies, deadlines, dispatch ---------- */

void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void smtpd_log_row(struct smtpd_session *s, const char *action, const char *rcpt,
    const char *code, const char *reason);
void smtpd_reject(struct smtpd_session *s, const char *rcpt, const char *text);
void smtpd_local_identity(struct smtpd_session *s, uid_t uid);
void smtpd_session_start(struct smtpd_session *s);
void smtpd_process(struct smtpd_session *s);
void smtpd_close(struct smtpd_session *s);
/* Frees now (not a session in the commit batch: that one stays). */
void smtpd_free(struct smtpd_session *s);
/* The skeleton's callbacks (lib/server.h: struct server_ops). */
void smtpd_on_read(void *arg);
void smtpd_on_write(void *arg);
void smtpd_on_event(void *arg, short what);
void smtpd_session_release(void *arg);

/* ---------- smtpd_tx.c: the transaction ---------- */

void smtpd_tx_reset(struct smtpd_session *s);
void smtpd_cmd_mail(struct smtpd_session *s, char *arg);
void smtpd_cmd_data(struct smtpd_session *s, char *arg);
void smtpd_cmd_bdat(struct smtpd_session *s, char *arg);
void smtpd_cmd_rset(struct smtpd_session *s, char *arg);
int smtpd_read_data(struct smtpd_session *s, struct evbuffer *in);
void smtpd_read_bdat(struct smtpd_session *s, struct evbuffer *in);
void smtpd_message_done(struct smtpd_session *s);
void smtpd_committed(struct queue_commit_job *job, int sync_err, int dir_err);

/* ---------- smtpd_rcpt.c: recipients ---------- */

void smtpd_cmd_rcpt(struct smtpd_session *s, char *arg);

/* ---------- smtpd_auth.c: SMTP AUTH and fake sender control ---------- */

struct smtpd_authjob;
const struct auth_settings *smtpd_auth_settings(struct smtpd_worker *w);
int smtpd_is_submission(const struct smtpd_session *s);
int smtpd_auth_allowed(struct smtpd_session *s, int *need_tls_r);
void smtpd_cmd_auth(struct smtpd_session *s, char *arg);
void smtpd_auth_line(struct smtpd_session *s, const char *line);
void smtpd_auth_abort(struct smtpd_session *s);
void smtpd_authjob_free(struct smtpd_authjob *j);
int smtpd_sender_owned(struct smtpd_session *s, const char *sender);
int smtpd_header_senders(struct smtpd_session *s, const char **reply_r);

#endif
