/* util: checked allocation, strict number parsing and durability helpers
 * shared by every process. */
#include "lib/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

static void util_oom(void)
{
	static const char msg[] = "kale: out of memory\n";
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
	}
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		util_oom();
	return p;
}

void *xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);
	if (p == NULL)
		util_oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		util_oom();
	return p;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

void xfree(void *pp)
{
	void **p = pp;
	free(*p);
	*p = NULL;
}

int util_strtonum(const char *s, long long min, long long max, long long *out)
{
	char *end;
	long long v;

	if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int util_vfmt(char *buf, size_t cap, const char *fmt, va_list ap)
{
	int n = vsnprintf(buf, cap, fmt, ap);

	if (n < 0) {
		buf[0] = '\0';
		return -1;
	}
	return (size_t)n >= cap ? -1 : 0;
}

int util_fmt(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = util_vfmt(buf, cap, fmt, ap);
	va_end(ap);
	return rc;
}

int util_err(char **error_r, const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	va_start(ap, fmt);
	(void)util_vfmt(buf, sizeof(buf), fmt, ap);   /* a message: cut if longer */
	va_end(ap);
	if (error_r != NULL)
		*error_r = xstrdup(buf);
	return -1;
}

void util_lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

int fs_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

int fs_mkdirs(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];

	if (util_fmt(tmp, sizeof(tmp), "%s", path) < 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

char *fs_read_file(const char *path, size_t max, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf;
	size_t len = 0;

	if (fd < 0)
		return NULL;
	buf = xmalloc(max + 1);
	for (;;) {
		ssize_t n = read(fd, buf + len, max - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			close(fd);
			return NULL;
		}
		if (n == 0 || (len += (size_t)n) == max)
			break;
	}
	close(fd);
	buf[len] = '\0';
	if (len_r)
		*len_r = len;
	return buf;
}

int util_user_ids(const char *name, uid_t *uid_r, gid_t *gid_r)
{
	struct passwd *pw = getpwnam(name);

	if (pw == NULL)
		return -1;
	*uid_r = pw->pw_uid;
	*gid_r = pw->pw_gid;
	return 0;
}

int util_drop_privs(uid_t uid, gid_t gid, const char **error_r)
{
	if (setgroups(1, &gid) < 0) {
		*error_r = "setgroups failed";
		return -1;
	}
	if (setresgid(gid, gid, gid) < 0) {
		*error_r = "setresgid failed";
		return -1;
	}
	if (setresuid(uid, uid, uid) < 0) {
		*error_r = "setresuid failed";
		return -1;
	}
	if (uid != 0 && setuid(0) == 0) {
		*error_r = "privileges could be regained";
		return -1;
	}
	return 0;
}

uint64_t util_now_ms(void)
{
	return util_now_us() / 1000;
}

uint64_t util_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Writes all n bytes: at offset off with pwrite, or (off < 0) at the
 * file position, with send(MSG_NOSIGNAL) where fd is a socket. */
static int fs_out_all(int fd, const void *buf, size_t n, off_t off)
{
	const char *p = buf;
	int sock = off < 0;

	while (n > 0) {
		ssize_t w = off >= 0 ? pwrite(fd, p, n, off) : sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
		if (w < 0 && sock && errno == ENOTSOCK) {
			sock = 0;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		p += w;
		n -= (size_t)w;
		if (off >= 0)
			off += w;
	}
	return 0;
}

int fs_write_all(int fd, const void *buf, size_t n)
{
	return fs_out_all(fd, buf, n, -1);
}

int fs_pwrite_all(int fd, const void *buf, size_t n, off_t off)
{
	return fs_out_all(fd, buf, n, off);
}

int fs_pread_all(int fd, void *buf, size_t n, off_t off)
{
	char *p = buf;

	while (n > 0) {
		ssize_t r = pread(fd, p, n, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = EIO;        /* the file is shorter than it should be */
			return -1;
		}
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

int fs_read_to_end(int fd, size_t max, char **buf_r, size_t *len_r)
{
	size_t len = 0, cap = 65536;
	char *buf = xmalloc(cap + 1);

	*buf_r = NULL;
	for (;;) {
		ssize_t n;
		if (len == cap) {
			if (cap > max) {
				free(buf);
				errno = E2BIG;
				return -1;
			}
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			free(buf);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > max) {
		free(buf);
		errno = E2BIG;
		return -1;
	}
	buf[len] = '\0';
	*buf_r = buf;
	*len_r = len;
	return 0;
}
