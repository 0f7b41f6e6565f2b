/* util: small helpers with no mail knowledge: checked allocation, number
 * parsing, file-system durability helpers, privilege drop. */
#ifndef KALE_UTIL_H
#define KALE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Frees *p and sets it to NULL; accepts NULL. */
void xfree(void *pp);

/* Parses a whole decimal string into [min,max]; 0 on success, -1 otherwise. */
int util_strtonum(const char *s, long long min, long long max, long long *out);
/* snprintf that reports truncation: 0 ok, -1 truncated (buf holds the cut
 * text) or an encoding error (buf is ""). cap must be > 0. */
int util_fmt(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The same with a va_list. */
int util_vfmt(char *buf, size_t cap, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
/* Sets *error_r (when error_r is not NULL) to a malloc'd formatted message
 * (at most 511 bytes, longer is cut); returns -1, for "return util_err(...)". */
int util_err(char **error_r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void util_lower(char *s);

/* fsync a directory by path, or a directory fd; 0 or -1 with errno. */
int fs_fsync_dir(const char *path);
/* mkdir -p with mode; existing directories are fine. */
int fs_mkdirs(const char *path, mode_t mode);
/* Reads a whole small file (up to max bytes) into a NUL-terminated buffer. */
char *fs_read_file(const char *path, size_t max, size_t *len_r);

/* Looks up a user for privilege dropping; 0 on success. */
int util_user_ids(const char *name, uid_t *uid_r, gid_t *gid_r);
/* setgroups/setgid/setuid to the user; 0 on success, -1 with error text. */
int util_drop_privs(uid_t uid, gid_t gid, const char **error_r);

/* Monotonic clock in milliseconds / microseconds. */
uint64_t util_now_ms(void);
uint64_t util_now_us(void);

/* pwrite of all n bytes at off (EINTR retried; a zero write is EIO); 0 or -1
 * with errno. The fd's file position does not move. */
int fs_pwrite_all(int fd, const void *buf, size_t n, off_t off);
/* Writes all n bytes at the fd's position (EINTR retried; a zero write is
 * EIO); 0 or -1 with errno. A socket is written with send(MSG_NOSIGNAL), so
 * a peer that went away is EPIPE, never a SIGPIPE. */
int fs_write_all(int fd, const void *buf, size_t n);
/* pread n bytes at off; a short file is -1 with errno EIO. 0 or -1. */
int fs_pread_all(int fd, void *buf, size_t n, off_t off);
/* Reads fd to its end into *buf_r (malloc'd, NUL-terminated; *len_r bytes),
 * at most max bytes. 0, or -1 with errno (E2BIG past max) and *buf_r NULL. */
int fs_read_to_end(int fd, size_t max, char **buf_r, size_t *len_r);

#endif
