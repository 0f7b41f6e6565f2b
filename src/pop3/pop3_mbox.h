/* pop3_mbox: one POP3 session's view of a Maildir (RFC 1939 maildrop):
 * the message list fixed at login, deletion marks, and the UPDATE commit.
 * Used by pop3d, running as run_as inside data_dir. */
#ifndef KALE_POP3_MBOX_H
#define KALE_POP3_MBOX_H

#include <stddef.h>
#include <stdint.h>

/* At most this many messages are offered in one session (the rest wait). */
#define POP3_MBOX_MAX_MSGS 100000

struct pop3_msg {
	char *name;      /* file name inside new/ or cur/ */
	char *uid;       /* UIDL: the base name (before ":2,"), or a hash of it */
	uint64_t size;   /* size of the CRLF form */
	int in_new;      /* lives in new/ (not yet seen by any client) */
	int deleted;     /* marked by DELE */
};

struct pop3_mbox {
	char *dir;       /* the Maildir, e.g. "mail/example.test/alice" */
	struct pop3_msg *msgs;
	uint32_t n;
};

/* Scans dir/new and dir/cur, sizing every message (the CRLF size is
 * computed by reading each file). A missing Maildir is an empty mailbox.
 * Messages are ordered by name with numbers compared as numbers, which is
 * delivery order for Maildir names. 0 ok, -1 with a static *error_r. */
int pop3_mbox_open(const char *dir, struct pop3_mbox **mb_r, const char **error_r);
void pop3_mbox_free(struct pop3_mbox **mb);

/* Counts and total size of the messages not marked deleted. */
void pop3_mbox_stat(const struct pop3_mbox *mb, uint32_t *count_r, uint64_t *size_r);

/* Opens message i (0-based) for reading. If another session moved it
 * (new -> cur, flags changed) it is found again by its UID. Returns an fd,
 * or -1 with *error_r ("message vanished" when it is gone). */
int pop3_mbox_open_msg(struct pop3_mbox *mb, uint32_t i, const char **error_r);

/* Marks message i seen: moves it from new/ to cur/ with ":2,S", or adds the
 * S flag in cur/. Best effort; 0 ok, -1 if the rename failed. */
int pop3_mbox_mark_seen(struct pop3_mbox *mb, uint32_t i);

/* The UPDATE state: unlinks every message marked deleted (already gone is
 * fine), then moves the remaining ones still in new/ to cur/ (":2,").
 * Returns the number deleted; *failed_r counts deletions that failed. */
uint32_t pop3_mbox_commit(struct pop3_mbox *mb, uint32_t *failed_r);

/* Name order for messages: digit runs compare as numbers ("a9" < "a10");
 * equal only for equal strings, apart from leading zeros. */
int pop3_mbox_name_cmp(const char *a, const char *b);

/* Returns "cur/" or "new/" + the name with S added to the ":2," flags
 * (kept sorted, as Maildir wants), into out. -1 if it does not fit. */
int pop3_mbox_seen_name(const char *name, char *out, size_t cap);

#endif
