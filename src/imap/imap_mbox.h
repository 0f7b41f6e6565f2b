/* imap_mbox: IMAP's view of a Maildir++ folder: persistent UIDs in
 * "kale-uidlist" (flock'd while changed), flags as ":2," info letters,
 * folders as ".Name" subdirectories, subscriptions. Run by imapd. */
#ifndef KALE_IMAP_MBOX_H
#define KALE_IMAP_MBOX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#define IMAP_FL_SEEN     0x01
#define IMAP_FL_ANSWERED 0x02
#define IMAP_FL_FLAGGED  0x04
#define IMAP_FL_DELETED  0x08
#define IMAP_FL_DRAFT    0x10
#define IMAP_FL_RECENT   0x20     /* session only, never stored */
#define IMAP_FL_STORED   0x1f

/* Largest message file imapd will read. */
#define IMAP_MBOX_MAX_FILE (256u * 1024 * 1024)

struct imap_msg {
	uint32_t uid;
	char *base;        /* unique name, without the ":2," info */
	char *fname;       /* current name in cur/ */
	unsigned flags;
	char extra[32];    /* info letters kale does not know, kept as they are */
	int64_t size;      /* CRLF size, -1 until known */
	time_t idate;      /* 0 until known */
};

struct imap_mbox {
	char *path;        /* the folder's Maildir */
	uint32_t uidvalidity, uidnext;
	struct imap_msg *msgs;    /* sorted by uid */
	size_t n;
};

/* Brings the folder's uid list up to date: moves new/ to cur/ (counting
 * those in *recent_r, may be NULL), assigns UIDs to unknown files, drops
 * vanished ones, all under an exclusive lock. Fills a fresh list in *mb
 * (mb->path must be set; previous msgs are NOT freed). 0 ok, -1 *error_r. */
int imap_mbox_scan(struct imap_mbox *mb, size_t *recent_r, const char **error_r);
/* Frees the message list (not the path). */
void imap_mbox_msgs_free(struct imap_msg *msgs, size_t n);
void imap_msg_free(struct imap_msg *m);

/* Renames the file so its info letters say flags; 0 ok, -1 gone/error. */
int imap_mbox_set_flags(struct imap_mbox *mb, struct imap_msg *m, unsigned flags);
/* Removes the message file; 0 ok (also if already gone), -1 error. */
int imap_mbox_unlink(struct imap_mbox *mb, struct imap_msg *m);
/* Reads the message, converting bare LF to CRLF; sets m->size. The buffer is
 * malloc'd. 0 ok, -1 *error_r. */
int imap_mbox_read(struct imap_mbox *mb, struct imap_msg *m, char **data_r, size_t *len_r, const char **error_r);
/* ---- message files in bounded pieces (FETCH streams bodies from them) ---- */
/* Opens the message file read-only (finding it again if another session
 * renamed it) and fills *sb_r; sets m->idate. An fd, or -1 with *error_r
 * (gone, not a regular file, larger than IMAP_MBOX_MAX_FILE). */
int imap_mbox_open(struct imap_mbox *mb, struct imap_msg *m, struct stat *sb_r, const char **error_r);
/* The size the file of fsize bytes has with bare LF served as CRLF, read in
 * 64 KiB pieces. 0 ok, -1 read error. */
int imap_mbox_crlf_size(int fd, uint64_t fsize, int64_t *size_r);

/* Reads bytes [off, off + len) of the CRLF form of a file. conv = 0 when the
 * file has no bare LF (its CRLF size is its size): then offsets are file
 * offsets; else bare LFs are expanded and the reader starts at the top. */
struct imap_crlf_rd {
	int fd, conv, prev_cr;
	uint64_t foff, skip, left;
};
void imap_crlf_rd_init(struct imap_crlf_rd *rd, int fd, int conv, uint64_t off, uint64_t len);
/* The next bytes into out (cap >= 2): a count > 0, 0 when all len bytes were
 * given, -1 on a read error or if the file ended early (it changed). */
ssize_t imap_crlf_rd_next(struct imap_crlf_rd *rd, char *out, size_t cap);

/* A range of the CRLF form in memory (NUL-terminated); buffers of 1 MiB or
 * more are anonymous mappings, returned to the kernel when freed. */
struct imap_mbox_buf {
	char *data;
	size_t len, map_len;
};
int imap_mbox_read_range(int fd, int conv, uint64_t off, size_t len, struct imap_mbox_buf *b);
void imap_mbox_buf_free(struct imap_mbox_buf *b);

/* INTERNALDATE (file mtime). */
time_t imap_mbox_idate(struct imap_mbox *mb, struct imap_msg *m);

/* Adds a message to the folder at path: writes tmp/, fsyncs, renames into
 * cur/ with flags, sets mtime to idate (if non-zero) and assigns its UID.
 * 0 ok with *uid_r and *uidvalidity_r; -1 *error_r. */
int imap_mbox_append(const char *path, const char *data, size_t len, unsigned flags,
    time_t idate, uint32_t *uidvalidity_r, uint32_t *uid_r, const char **error_r);
/* Copies a message file (hard link when possible) into the folder at dst. */
int imap_mbox_copy(struct imap_mbox *src, struct imap_msg *m, const char *dst,
    uint32_t *uidvalidity_r, uint32_t *uid_r, const char **error_r);

/* Info letters <-> flags */
unsigned imap_flags_from_info(const char *info, char extra[32]);
void imap_flags_to_info(unsigned flags, const char *extra, char out[40]);

/* ---- folders (Maildir++) ---- */
/* Path of folder NAME under the user's root: INBOX is the root itself,
 * "a.b" is "<root>/.a.b". 0 ok, -1 invalid name. */
int imap_folder_path(const char *root, const char *name, char *out, size_t cap);
int imap_folder_exists(const char *path);
/* Creates the Maildir dirs (and, for a subfolder, the parents). */
int imap_folder_create(const char *root, const char *name, const char **error_r);
int imap_folder_delete(const char *root, const char *name, const char **error_r);
int imap_folder_rename(const char *root, const char *from, const char *to, const char **error_r);
/* All folder names (INBOX first); malloc'd array of malloc'd strings. */
int imap_folder_list(const char *root, char ***names_r, size_t *n_r);
void imap_names_free(char **names, size_t n);
/* Subscriptions, in "<root>/subscriptions". */
int imap_subs_list(const char *root, char ***names_r, size_t *n_r);
int imap_subs_set(const char *root, const char *name, int subscribe, const char **error_r);
/* Special-use attribute for a folder name ("\\Sent" ...) or NULL. */
const char *imap_folder_special_use(const char *name);
/* LIST pattern match: '*' anything, '%' anything but '.'. */
int imap_list_match(const char *pattern, const char *name);
/* Creates the root Maildir and, the first time, Sent/Drafts/Trash/Junk
 * (subscribed). */
int imap_folder_init_user(const char *root, const char **error_r);

#endif
