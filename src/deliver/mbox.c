/* mbox: local delivery appended to an mbox file (mboxrd quoting, fcntl
 * lock, fsync; truncated back on failure). Run by qmgr (as run_as) when
 * [delivery] mailbox_format = mbox. */
#include "deliver/deliver.h"

#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#define MBOX_BUF 65536

struct mbox_out {
	int fd;
	int err;             /* a write failed; errno saved in err_no */
	int err_no;
	int bol;             /* still matching ">*From " at the start of a line */
	size_t gt;           /* '>' seen in that prefix */
	size_t k;            /* bytes of "From " matched */
	char last;           /* last byte written */
	size_t len;
	char buf[MBOX_BUF];
};

static void mbox_flush(struct mbox_out *o)
{
	size_t off = 0;

	while (!o->err && off < o->len) {
		ssize_t w = write(o->fd, o->buf + off, o->len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			o->err = 1;
			o->err_no = w < 0 ? errno : EIO;
			break;
		}
		off += (size_t)w;
	}
	o->len = 0;
}

static void mbox_put(struct mbox_out *o, char c)
{
	if (o->len == sizeof(o->buf))
		mbox_flush(o);
	o->buf[o->len++] = c;
	o->last = c;
}

static void mbox_put_pending(struct mbox_out *o)
{
	for (size_t i = 0; i < o->gt; i++)
		mbox_put(o, '>');
	for (size_t i = 0; i < o->k; i++)
		mbox_put(o, "From "[i]);
	o->bol = 0;
}

/* Writes one message byte with mboxrd quoting: a line matching ">*From "
 * gets one more '>'. */
static void mbox_filter(struct mbox_out *o, char c)
{
	if (o->bol) {
		if (o->k == 0 && c == '>') {
			o->gt++;
			return;
		}
		if (c == "From "[o->k]) {
			if (++o->k == 5) {
				mbox_put(o, '>');
				mbox_put_pending(o);
			}
			return;
		}
		mbox_put_pending(o);
	}
	mbox_put(o, c);
	if (c == '\n') {
		o->bol = 1;
		o->gt = 0;
		o->k = 0;
	}
}

static void mbox_from_line(struct mbox_out *o, const char *sender)
{
	char date[64];
	struct tm tm;
	time_t now = time(NULL);

	if (localtime_r(&now, &tm) == NULL ||
	    strftime(date, sizeof(date), "%a %b %e %H:%M:%S %Y", &tm) == 0)
		memcpy(date, "Thu Jan  1 00:00:00 1970", sizeof("Thu Jan  1 00:00:00 1970"));
	for (const char *s = "From "; *s; s++)
		mbox_put(o, *s);
	if (sender == NULL || sender[0] == '\0')
		sender = "MAILER-DAEMON";
	/* The sender is one word: blanks and control bytes become '_'. */
	for (const char *s = sender; *s; s++)
		mbox_put(o, (unsigned char)*s <= 0x20 || *s == 0x7f ? '_' : *s);
	mbox_put(o, ' ');
	for (const char *s = date; *s; s++)
		mbox_put(o, *s);
	mbox_put(o, '\n');
}

static int mbox_open(const char *mbox_path, const char **error_r)
{
	char dir[PATH_MAX];
	char *slash;
	int fd;

	if (util_fmt(dir, sizeof(dir), "%s", mbox_path) < 0) {
		errno = ENAMETOOLONG;
		*error_r = "mailbox path too long";
		return -1;
	}
	fd = open(mbox_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 && errno == ENOENT && (slash = strrchr(dir, '/')) != NULL && slash != dir) {
		*slash = '\0';
		if (fs_mkdirs(dir, 0700) < 0) {
			*error_r = "cannot create mailbox directory";
			return -1;
		}
		fd = open(mbox_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	}
	if (fd < 0)
		*error_r = "cannot open mbox";
	return fd;
}

int mbox_deliver(const char *mbox_path, const char *sender, const char *prefix,
    size_t prefix_len, int src_fd, uint64_t body_len, const char **error_r)
{
	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	struct mbox_out *o = NULL;
	struct stat st;
	off_t old_size = -1;
	char *in = NULL;
	uint64_t off = 0;
	int fd, rc = -1, saved;

	fd = mbox_open(mbox_path, error_r);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		*error_r = "cannot stat mbox";
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		*error_r = "mbox is not a regular file";
		goto out;
	}
	while (fcntl(fd, F_SETLKW, &lk) < 0) {
		if (errno != EINTR) {
			*error_r = "cannot lock mbox";
			goto out;
		}
	}
	if (fstat(fd, &st) < 0) {
		*error_r = "cannot stat mbox";
		goto out;
	}
	old_size = st.st_size;

	o = xcalloc(1, sizeof(*o));
	o->fd = fd;
	o->bol = 1;
	mbox_from_line(o, sender);
	for (size_t i = 0; i < prefix_len; i++)
		mbox_filter(o, prefix[i]);
	in = xmalloc(MBOX_BUF);
	while (off < body_len && !o->err) {
		size_t want = body_len - off > MBOX_BUF ? MBOX_BUF : (size_t)(body_len - off);
		ssize_t n = pread(src_fd, in, want, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			*error_r = n == 0 ? "queue file shorter than its body" : "read of queue file failed";
			goto undo;
		}
		for (ssize_t i = 0; i < n; i++)
			mbox_filter(o, in[i]);
		off += (uint64_t)n;
	}
	if (o->bol)
		mbox_put_pending(o);
	if (o->last != '\n')
		mbox_put(o, '\n');
	mbox_put(o, '\n');
	mbox_flush(o);
	if (o->err) {
		errno = o->err_no;
		*error_r = "write failed";
		goto undo;
	}
	if (fsync(fd) < 0) {
		*error_r = "fsync failed";
		goto undo;
	}
	rc = 0;
	goto out;
undo:
	saved = errno;
	if (ftruncate(fd, old_size) < 0) {
		/* nothing better to do: the error is reported already */
	}
	errno = saved;
out:
	saved = errno;
	free(in);
	free(o);
	close(fd);   /* releases the lock */
	errno = saved;
	return rc;
}
