/* maildrop: where kale-sendmail leaves a message when kaled is not running,
 * as Postfix's postdrop does; kaled's pickup process hands each file to
 * smtpd later. <data_dir>/maildrop/ is run_as's, mode 1733: any local user
 * may add a file, none may list the folder or touch another's file. The
 * file's owner is the sender's identity (never its content).
 *
 * A file: "KALE-MAILDROP 1\n", "S <sender>\n", one "R <rcpt>\n" per
 * recipient, "\n", then the message as read (LF or CRLF lines). Written as
 * ".NAME", fsynced, renamed to NAME, and the rename synced (syncfs: the
 * writer may not open the folder), so a 0 from kale-sendmail is durable. */
#ifndef KALE_MAILDROP_H
#define KALE_MAILDROP_H

#include <stddef.h>

#define MAILDROP_DIR     "maildrop"
#define MAILDROP_MAGIC   "KALE-MAILDROP 1\n"
#define MAILDROP_RCPT_MAX 1000

/* Writes one message into data_dir/maildrop. 0, or -1 with err set. */
int maildrop_write(const char *data_dir, const char *sender, char *const *rcpt, int n_rcpt,
    const char *msg, size_t len, char *err, size_t cap);

struct maildrop_env {
	const char *sender;          /* point into the parsed buffer */
	const char *rcpt[MAILDROP_RCPT_MAX];
	int n_rcpt;
	const char *msg;
	size_t msg_len;
};

/* Parses a file's content (buf is changed: lines are NUL-terminated).
 * 0, or -1 when it is not a well-formed maildrop file. */
int maildrop_parse(char *buf, size_t len, struct maildrop_env *e);

#endif
