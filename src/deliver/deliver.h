/* deliver: local delivery into Maildir (default) or mbox. Run by qmgr as
 * run_as. Maildir writes are grouped: maildir_write() creates the file in
 * tmp/ without syncing, maildir_commit() makes a whole batch durable with one
 * sync and then renames each into new/ and syncs the directories. */
#ifndef KALE_DELIVER_H
#define KALE_DELIVER_H

#include <limits.h>
#include <stdint.h>
#include <stddef.h>

struct deliver_pending {
	char tmp_path[PATH_MAX];
	char new_path[PATH_MAX];
	char new_dir[PATH_MAX];
};

/* Returns "<mail_root>/<domain>/<local>" for a local user's address, with
 * the domain and local part lower-cased and any '/' or leading '.' in them
 * encoded so the path can never leave mail_root. -1 if too long/invalid. */
int deliver_mailbox_path(const char *mail_root, const char *address, char *out, size_t cap);

/* Creates the Maildir (tmp, new, cur) if needed, then writes prefix followed
 * by bytes [0, body_len) of src_fd into tmp/<unique name>. No fsync.
 * 0 ok, -1 with *error_r (static text) and errno (ENOSPC, EDQUOT, ...). */
int maildir_write(const char *mailbox, const char *prefix, size_t prefix_len,
    int src_fd, uint64_t body_len, struct deliver_pending *p, const char **error_r);

/* Makes n pending files durable: one syncfs(2) on sync_fd (any fd on the mail
 * file system), then rename tmp -> new for each, then fsync of each distinct
 * new/ directory. ok[i] is set to 1 for each committed one. Returns the count
 * committed; on a sync failure none is renamed (and the tmp files removed). */
int maildir_commit(struct deliver_pending *p, int n, int sync_fd, int *ok);
/* Removes an uncommitted tmp file. */
void maildir_abort(struct deliver_pending *p);

/* Appends to an mbox file <mailbox> (fcntl lock, "From " line with sender and
 * date, ">From " quoting, blank line at end, fsync). On failure the file is
 * truncated back to its old size. 0 ok, -1 with *error_r. */
int mbox_deliver(const char *mbox_path, const char *sender, const char *prefix,
    size_t prefix_len, int src_fd, uint64_t body_len, const char **error_r);

#endif
