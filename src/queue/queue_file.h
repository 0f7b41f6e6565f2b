/* queue_file: the on-disk format of one queued message (docs/queue.md,
 * version 1). The body comes first (streamed while DATA arrives), then typed,
 * length-prefixed envelope records, an end record and a fixed-size trailer
 * that says where the envelope starts. Written by smtpd, read by qmgr and
 * kalectl. Pure file I/O: no fsync here (the committer decides when). */
#ifndef KALE_QUEUE_FILE_H
#define KALE_QUEUE_FILE_H

#include <stdint.h>
#include <stddef.h>

#define QUEUE_FORMAT_VERSION 1
#define QUEUE_TRAILER_LEN 48

/* Bounds enforced by writer and reader alike. */
#define QUEUE_RCPT_MAX  100000              /* recipients per message */
#define QUEUE_VALUE_MAX 65536               /* bytes in one value (sender, addr...) */
#define QUEUE_ENV_MAX   (64u * 1024 * 1024) /* envelope records, trailer excluded */

/* Queue sub-directories, relative to data_dir. */
#define QUEUE_DIR_TMP      "queue/tmp"       /* being received (smtpd) */
#define QUEUE_DIR_INCOMING "queue/incoming"  /* committed; owned by qmgr */
#define QUEUE_DIR_HOLD     "queue/hold"      /* held by the admin */
#define QUEUE_DIR_DONE     "queue/done"      /* per-message recipient-done logs */

struct queue_rcpt {
	char *addr;     /* final recipient (after alias expansion), lower case */
	char *orig;     /* address as given at RCPT TO (for DSN / logging) */
	char *orcpt;    /* ORCPT= or NULL */
	int notify;     /* DSN NOTIFY bits as in smtp_parse.h, 0 none */
};

struct queue_env {
	int version;
	char qid[32];
	int64_t arrival;      /* unix seconds */
	char *client_ip;      /* "" for local injection */
	char *helo;
	char *sender;         /* "" for the null sender <> */
	char *auth_user;      /* NULL if none */
	char *envid;          /* NULL if none */
	int ret;              /* 0 none, 1 FULL, 2 HDRS */
	int smtputf8;
	int body8bit;
	uint64_t body_len;    /* the body is bytes [0, body_len) of the file */
	struct queue_rcpt *rcpt;   /* grown only by queue_env_add_rcpt() or
	                            * queue_file_read_env(): its capacity is
	                            * max(8, next power of two >= n_rcpt) */
	int n_rcpt;
};

/* Appends the envelope records, end record and trailer to fd (positioned
 * at body_len, i.e. right after the body). 0 ok, -1 with errno (ENOSPC...).
 * Writes with pwrite() at offset body_len (the file position is not used or
 * moved); an O_APPEND fd must end exactly at body_len. NULL client_ip, helo,
 * sender are written as ""; NULL auth_user/envid/orcpt are left out.
 * EINVAL for a bad qid/ret/notify/n_rcpt, E2BIG past the bounds above.
 * On a write error the file is truncated back to body_len (best effort). */
int queue_file_finish(int fd, const struct queue_env *env);

/* Reads and validates the envelope of a complete queue file. Returns 0, or
 * -1 with a static *error_r ("truncated", "bad trailer", "bad record" ...).
 * *env is overwritten (zeroed first); on error it is left empty. Uses
 * pread() only: fd's file position is not moved. */
int queue_file_read_env(int fd, struct queue_env *env, const char **error_r);
void queue_env_free(struct queue_env *env);

/* Adds a recipient to env (copies strings; orig NULL means orig = addr). */
void queue_env_add_rcpt(struct queue_env *env, const char *addr, const char *orig,
    const char *orcpt, int notify);

/* ---- recipient-done log: QUEUE_DIR_DONE/QID, append-only, written only by
 * qmgr. Each record marks one recipient index as finished (delivered or
 * bounced). Format in docs/queue.md. */
/* dirfd_done is an open fd of the directory <data_dir>/QUEUE_DIR_DONE; the log
 * is the file named QID in it (0600). Append does not fsync: the caller syncs
 * the file (and, when it was created, the directory) in batches. */
int queue_done_append(int dirfd_done, const char *qid, const int *idx, int n);
/* Fills done[0..n_rcpt) with 1 for finished recipients; a missing file means
 * none. A torn last record is ignored. 0 ok, -1 error. */
int queue_done_read(int dirfd_done, const char *qid, unsigned char *done, int n_rcpt);

/* Queue ids: 24 upper-case hex digits, unique across nodes and sorting by
 * time: 13 digits of microseconds since the epoch, 5 of process id, 6 of
 * counter mixed with a node hash. Precisely: the 13 time digits strictly
 * increase within a process (an atomic counter takes the last value + 1 when
 * the clock has not advanced), so ids of one process are distinct and sort in
 * creation order; the 5 digits are pid & 0xFFFFF; the 6 digits are a 24-bit
 * FNV-1a hash of the hostname xor (pid >> 20). Thread-safe. */
void queue_qid_new(char qid[32]);
/* 1 if s looks like a queue id (so it is safe as a file name). */
int queue_qid_valid(const char *s);

#endif
