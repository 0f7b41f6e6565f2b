/* maildir: local delivery into Maildirs (write to tmp/, batch-commit with one
 * syncfs and a rename into new/) and the safe mailbox path of an address.
 * Run by qmgr (as run_as) for local recipients. */
#include "deliver/deliver.h"

#include "lib/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#define MAILDIR_COPY_CHUNK (1024 * 1024)
#define MAILDIR_HOST_MAX 128           /* encoded hostname bytes in a name */
#define MAILDIR_NAME_TRIES 5

static atomic_uint maildir_counter;

/* ---- mailbox path ---- */

/* Appends the encoded, lower-cased component s[0..n) to out at *len.
 * '/', '%', bytes < 0x20 and 0x7f, and a leading '.' become %XX. */
static int deliver_path_component(const char *s, size_t n, char *out, size_t cap, size_t *len)
{
	size_t start = *len;

	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)tolower((unsigned char)s[i]);

		if (c == '/' || c == '%' || c < 0x20 || c == 0x7f || (i == 0 && c == '.')) {
			if (cap - *len < 4)
				return -1;
			static const char hex[] = "0123456789ABCDEF";
			out[(*len)++] = '%';
			out[(*len)++] = hex[c >> 4];
			out[(*len)++] = hex[c & 15];
		} else {
			if (cap - *len < 2)
				return -1;
			out[(*len)++] = (char)c;
		}
	}
	out[*len] = '\0';
	if (*len - start > NAME_MAX)
		return -1;
	return 0;
}

int deliver_mailbox_path(const char *mail_root, const char *address, char *out, size_t cap)
{
	const char *at;
	size_t len;

	if (mail_root == NULL || address == NULL || cap == 0)
		return -1;
	at = strrchr(address, '@');
	if (at == NULL || at == address || at[1] == '\0')
		return -1;
	if (util_fmt(out, cap, "%s/", mail_root) < 0)
		goto fail;
	len = strlen(out);
	if (deliver_path_component(at + 1, strlen(at + 1), out, cap, &len) < 0)
		goto fail;
	if (cap - len < 2)
		goto fail;
	out[len++] = '/';
	if (deliver_path_component(address, (size_t)(at - address), out, cap, &len) < 0)
		goto fail;
	return 0;
fail:
	out[0] = '\0';
	return -1;
}

/* ---- Maildir ---- */

/* "<sec>.M<usec>P<pid>Q<counter>.<host>" with '/' and ':' in the host
 * written as \057 and \072 (the Maildir convention). */
static int maildir_unique_name(char *out, size_t cap)
{
	char host[256], enc[MAILDIR_HOST_MAX + 1];
	size_t n = 0;
	struct timespec ts;

	if (gethostname(host, sizeof(host)) < 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	if (host[0] == '\0')
		memcpy(host, "localhost", sizeof("localhost"));
	for (const char *h = host; *h != '\0'; h++) {
		const char *rep = *h == '/' ? "\\057" : *h == ':' ? "\\072" : NULL;
		size_t rl = rep != NULL ? 4 : 1;

		if (n + rl > MAILDIR_HOST_MAX)
			break;
		if (rep != NULL)
			memcpy(enc + n, rep, 4);
		else
			enc[n] = (unsigned char)*h < 0x20 || *h == 0x7f ? '_' : *h;
		n += rl;
	}
	enc[n] = '\0';
	clock_gettime(CLOCK_REALTIME, &ts);
	return util_fmt(out, cap, "%lld.M%06ldP%ldQ%u.%s", (long long)ts.tv_sec,
	    (long)(ts.tv_nsec / 1000), (long)getpid(),
	    atomic_fetch_add(&maildir_counter, 1u) + 1u, enc);
}

/* Copies [0, len) of src to dst at dst_off with explicit offsets (src's file
 * position never moves): copy_file_range, else pread/pwrite. */
static int maildir_copy(int src, int dst, off_t dst_off, uint64_t len, const char **error_r)
{
	off_t in = 0, out = dst_off;
	uint64_t left = len;
	int use_cfr = 1;
	char *buf = NULL;
	int rc = -1;

	while (left > 0) {
		size_t want = left > MAILDIR_COPY_CHUNK ? MAILDIR_COPY_CHUNK : (size_t)left;
		ssize_t n;

		if (use_cfr) {
			n = copy_file_range(src, &in, dst, &out, want, 0);
			if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
			    errno == EOPNOTSUPP)) {
				use_cfr = 0;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				*error_r = "write failed";
				goto out;
			}
		} else {
			if (buf == NULL)
				buf = xmalloc(MAILDIR_COPY_CHUNK);
			n = pread(src, buf, want, in);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				*error_r = "read of queue file failed";
				goto out;
			}
			if (n > 0 && fs_pwrite_all(dst, buf, (size_t)n, out) < 0) {
				*error_r = "write failed";
				goto out;
			}
			in += n;
			out += n;
		}
		if (n == 0) {
			*error_r = "queue file shorter than its body";
			errno = EIO;
			goto out;
		}
		left -= (uint64_t)n;
	}
	rc = 0;
out:
	if (buf != NULL) {
		int saved = errno;
		free(buf);
		errno = saved;
	}
	return rc;
}

static int maildir_make(const char *mailbox, const char **error_r)
{
	static const char *const sub[] = { "tmp", "new", "cur" };
	char path[PATH_MAX];

	for (size_t i = 0; i < 3; i++) {
		if (util_fmt(path, sizeof(path), "%s/%s", mailbox, sub[i]) < 0) {
			errno = ENAMETOOLONG;
			*error_r = "mailbox path too long";
			return -1;
		}
		if (fs_mkdirs(path, 0700) < 0) {
			*error_r = "cannot create maildir";
			return -1;
		}
	}
	return 0;
}

int maildir_write(const char *mailbox, const char *prefix, size_t prefix_len,
    int src_fd, uint64_t body_len, struct deliver_pending *p, const char **error_r)
{
	char name[NAME_MAX + 1];
	int fd = -1, saved, made = 0;

	memset(p, 0, sizeof(*p));
	if (body_len > (uint64_t)INT64_MAX - prefix_len) {
		errno = EFBIG;
		*error_r = "message too large";
		return -1;
	}
	for (int tries = 0; fd < 0; tries++) {
		if (maildir_unique_name(name, sizeof(name)) < 0 ||
		    util_fmt(p->tmp_path, sizeof(p->tmp_path), "%s/tmp/%s", mailbox, name) < 0 ||
		    util_fmt(p->new_path, sizeof(p->new_path), "%s/new/%s", mailbox, name) < 0 ||
		    util_fmt(p->new_dir, sizeof(p->new_dir), "%s/new", mailbox) < 0) {
			errno = ENAMETOOLONG;
			*error_r = "mailbox path too long";
			goto fail_noname;
		}
		fd = open(p->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd >= 0)
			break;
		if (errno == ENOENT && !made) {
			made = 1;
			if (maildir_make(mailbox, error_r) < 0)
				goto fail_noname;
		} else if (errno != EEXIST || tries >= MAILDIR_NAME_TRIES) {
			*error_r = "cannot create file in maildir tmp";
			goto fail_noname;
		}
	}
	if (prefix_len > 0 && fs_pwrite_all(fd, prefix, prefix_len, 0) < 0) {
		*error_r = "write failed";
		goto fail;
	}
	if (maildir_copy(src_fd, fd, (off_t)prefix_len, body_len, error_r) < 0)
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		*error_r = "write failed";
		goto fail;
	}
	return 0;
fail:
	saved = errno;
	if (fd >= 0)
		close(fd);
	unlink(p->tmp_path);
	memset(p, 0, sizeof(*p));
	errno = saved;
	return -1;
fail_noname:
	saved = errno;
	memset(p, 0, sizeof(*p));
	errno = saved;
	return -1;
}

int maildir_commit(struct deliver_pending *p, int n, int sync_fd, int *ok)
{
	int count = 0;

	for (int i = 0; i < n; i++)
		ok[i] = 0;
	if (n <= 0)
		return 0;
	if (syncfs(sync_fd) < 0) {
		for (int i = 0; i < n; i++)
			maildir_abort(&p[i]);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (p[i].tmp_path[0] == '\0')
			continue;
		if (rename(p[i].tmp_path, p[i].new_path) < 0 &&
		    !(errno == ENOENT && mkdir(p[i].new_dir, 0700) == 0 &&
		    rename(p[i].tmp_path, p[i].new_path) == 0)) {
			maildir_abort(&p[i]);
			continue;
		}
		ok[i] = 1;
	}
	/* One fsync per distinct new/ directory; a failed one un-confirms every
	 * file renamed into it (the caller retries: at-least-once). */
	for (int i = 0; i < n; i++) {
		int seen = 0, fail;

		if (!ok[i])
			continue;
		for (int j = 0; j < i && !seen; j++)
			seen = ok[j] && strcmp(p[j].new_dir, p[i].new_dir) == 0;
		if (seen)
			continue;
		fail = fs_fsync_dir(p[i].new_dir) < 0;
		for (int j = i; j < n; j++) {
			if (ok[j] && strcmp(p[j].new_dir, p[i].new_dir) == 0 && fail)
				ok[j] = 0;
		}
	}
	for (int i = 0; i < n; i++)
		count += ok[i];
	return count;
}

void maildir_abort(struct deliver_pending *p)
{
	if (p->tmp_path[0] != '\0') {
		int saved = errno;
		unlink(p->tmp_path);
		errno = saved;
	}
	p->tmp_path[0] = '\0';
}
