/* pop3_mbox: a POP3 session's snapshot of a Maildir, taken at login:
 * sizes, UIDs, DELE marks, and the UPDATE commit (unlink, new -> cur).
 * Runs in pop3d as run_as; other sessions may change the Maildir meanwhile. */
#include "pop3/pop3_mbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "lib/util.h"
#include "pop3/pop3_parse.h"

/* Length of the base name: the part before ":2," (the whole name if none). */
static size_t pop3_mbox_base_len(const char *name)
{
	const char *p = strstr(name, ":2,");
	return p != NULL ? (size_t)(p - name) : strlen(name);
}

/* The UIDL of a file name: its base name when that is a valid unique-id,
 * else the hex SHA-256 of the base (64 characters), which is just as stable. */
static char *pop3_mbox_uid(const char *name)
{
	size_t blen = pop3_mbox_base_len(name);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *uid;

	if (pop3_uid_valid(name, blen))
		return xstrndup(name, blen);
	if (EVP_Digest(name, blen, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 32)
		abort(); /* broken invariant: SHA-256 always exists */
	uid = xmalloc(65);
	for (unsigned int i = 0; i < 32; i++) {
		static const char hex[] = "0123456789abcdef";
		uid[2 * i] = hex[md[i] >> 4];
		uid[2 * i + 1] = hex[md[i] & 15];
	}
	uid[64] = '\0';
	return uid;
}

/* Reads the open file fd to its end and returns its CRLF size, or -1. */
static int pop3_mbox_size_fd(int fd, uint64_t *size_r)
{
	struct pop3_size sz;
	char buf[65536];
	ssize_t r;

	pop3_size_init(&sz);
	for (;;) {
		r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		pop3_size_feed(&sz, buf, (size_t)r);
	}
	*size_r = pop3_size_total(&sz);
	return 0;
}

/* Compares names with digit runs taken as numbers, so that Maildir names
 * ("<sec>.M<usec>P<pid>Q<n>.<host>", unpadded) sort in delivery order. */
int pop3_mbox_name_cmp(const char *a, const char *b)
{
	while (*a != '\0' && *b != '\0') {
		if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
			const char *ea, *eb;
			size_t la, lb;
			int c;

			while (*a == '0' && a[1] >= '0' && a[1] <= '9')
				a++;
			while (*b == '0' && b[1] >= '0' && b[1] <= '9')
				b++;
			for (ea = a; *ea >= '0' && *ea <= '9'; ea++)
				;
			for (eb = b; *eb >= '0' && *eb <= '9'; eb++)
				;
			la = (size_t)(ea - a);
			lb = (size_t)(eb - b);
			if (la != lb)
				return la < lb ? -1 : 1;
			if ((c = memcmp(a, b, la)) != 0)
				return c;
			a = ea;
			b = eb;
			continue;
		}
		if (*a != *b)
			return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
		a++;
		b++;
	}
	if (*a == *b)
		return 0;
	return *a == '\0' ? -1 : 1;
}

static int pop3_mbox_cmp(const void *a, const void *b)
{
	const struct pop3_msg *x = a, *y = b;
	int c = pop3_mbox_name_cmp(x->uid, y->uid);
	if (c == 0)
		c = strcmp(x->uid, y->uid);
	if (c != 0)
		return c;
	return x->in_new - y->in_new; /* cur/ first: it is the newer state */
}

static void pop3_mbox_msg_free(struct pop3_msg *m)
{
	xfree(&m->name);
	xfree(&m->uid);
}

/* Adds every regular file of dir/sub to mb. 0 ok (a missing sub is fine),
 * -1 on a read error. */
static int pop3_mbox_scan(struct pop3_mbox *mb, const char *sub, int in_new, uint32_t *cap)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	int dfd, ret = -1;

	if (util_fmt(path, sizeof(path), "%s/%s", mb->dir, sub) < 0)
		return -1;
	d = opendir(path);
	if (d == NULL)
		return errno == ENOENT ? 0 : -1;
	dfd = dirfd(d);
	for (;;) {
		struct stat stb;
		uint64_t size;
		int fd;

		errno = 0;
		de = readdir(d);
		if (de == NULL) {
			if (errno != 0)
				goto cleanup;
			break;
		}
		if (de->d_name[0] == '.')
			continue;
		if (mb->n >= POP3_MBOX_MAX_MSGS)
			break;
		fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue; /* vanished (another session) or not ours to read */
		if (fstat(fd, &stb) < 0 || !S_ISREG(stb.st_mode) ||
		    pop3_mbox_size_fd(fd, &size) < 0) {
			close(fd);
			continue;
		}
		close(fd);
		if (mb->n == *cap) {
			*cap = *cap ? *cap * 2 : 64;
			mb->msgs = xrealloc(mb->msgs, (size_t)*cap * sizeof(*mb->msgs));
		}
		mb->msgs[mb->n].name = xstrdup(de->d_name);
		mb->msgs[mb->n].uid = pop3_mbox_uid(de->d_name);
		mb->msgs[mb->n].size = size;
		mb->msgs[mb->n].in_new = in_new;
		mb->msgs[mb->n].deleted = 0;
		mb->n++;
	}
	ret = 0;
cleanup:
	closedir(d);
	return ret;
}

int pop3_mbox_open(const char *dir, struct pop3_mbox **mb_r, const char **error_r)
{
	struct pop3_mbox *mb = xcalloc(1, sizeof(*mb));
	uint32_t cap = 0, out = 0;

	mb->dir = xstrdup(dir);
	if (pop3_mbox_scan(mb, "new", 1, &cap) < 0 || pop3_mbox_scan(mb, "cur", 0, &cap) < 0) {
		*error_r = "cannot read mailbox";
		pop3_mbox_free(&mb);
		return -1;
	}
	if (mb->n > 0)
		qsort(mb->msgs, mb->n, sizeof(*mb->msgs), pop3_mbox_cmp);
	/* A message moved new -> cur between the two scans shows up twice. */
	for (uint32_t i = 0; i < mb->n; i++) {
		if (out > 0 && strcmp(mb->msgs[out - 1].uid, mb->msgs[i].uid) == 0) {
			pop3_mbox_msg_free(&mb->msgs[i]);
			continue;
		}
		mb->msgs[out++] = mb->msgs[i];
	}
	mb->n = out;
	*mb_r = mb;
	return 0;
}

void pop3_mbox_free(struct pop3_mbox **mbp)
{
	struct pop3_mbox *mb = *mbp;

	if (mb == NULL)
		return;
	for (uint32_t i = 0; i < mb->n; i++)
		pop3_mbox_msg_free(&mb->msgs[i]);
	xfree(&mb->msgs);
	xfree(&mb->dir);
	xfree(mbp);
}

void pop3_mbox_stat(const struct pop3_mbox *mb, uint32_t *count_r, uint64_t *size_r)
{
	uint32_t n = 0;
	uint64_t size = 0;

	for (uint32_t i = 0; i < mb->n; i++) {
		if (mb->msgs[i].deleted)
			continue;
		n++;
		size += mb->msgs[i].size;
	}
	*count_r = n;
	*size_r = size;
}

static int pop3_mbox_path(const struct pop3_mbox *mb, const struct pop3_msg *m,
    char *out, size_t cap)
{
	return util_fmt(out, cap, "%s/%s/%s", mb->dir, m->in_new ? "new" : "cur", m->name);
}

/* Looks for message m under another name (another session moved it or
 * changed its flags): cur/ first, then new/. 1 found (m updated), 0 gone. */
static int pop3_mbox_relocate(struct pop3_mbox *mb, struct pop3_msg *m)
{
	static const char *subs[] = { "cur", "new" };
	size_t blen = pop3_mbox_base_len(m->name);

	for (int s = 0; s < 2; s++) {
		char path[PATH_MAX];
		struct dirent *de;
		DIR *d;

		if (util_fmt(path, sizeof(path), "%s/%s", mb->dir, subs[s]) < 0)
			return 0;
		d = opendir(path);
		if (d == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.' || pop3_mbox_base_len(de->d_name) != blen ||
			    strncmp(de->d_name, m->name, blen) != 0)
				continue;
			xfree(&m->name);
			m->name = xstrdup(de->d_name);
			m->in_new = (s == 1);
			closedir(d);
			return 1;
		}
		closedir(d);
	}
	return 0;
}

int pop3_mbox_open_msg(struct pop3_mbox *mb, uint32_t i, const char **error_r)
{
	struct pop3_msg *m = &mb->msgs[i];
	char path[PATH_MAX];
	int fd;

	for (int attempt = 0; attempt < 2; attempt++) {
		if (pop3_mbox_path(mb, m, path, sizeof(path)) < 0)
			break;
		fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno != ENOENT) {
			*error_r = "[SYS/TEMP] cannot read message";
			return -1;
		}
		if (!pop3_mbox_relocate(mb, m))
			break;
	}
	*error_r = "message vanished";
	return -1;
}

int pop3_mbox_seen_name(const char *name, char *out, size_t cap)
{
	const char *info = strstr(name, ":2,");
	size_t blen, flen, o = 0;
	const char *flags;
	int added = 0;

	if (info == NULL)
		return util_fmt(out, cap, "cur/%s:2,S", name);
	blen = (size_t)(info - name);
	flags = info + 3;
	flen = strlen(flags);
	if (memchr(flags, 'S', flen) != NULL)
		return util_fmt(out, cap, "cur/%s", name);
	if (4 + blen + 3 + flen + 2 > cap)
		return -1;
	memcpy(out, "cur/", 4);
	o = 4;
	memcpy(out + o, name, blen + 3);
	o += blen + 3;
	for (size_t k = 0; k < flen; k++) {
		if (!added && flags[k] > 'S') {
			out[o++] = 'S';
			added = 1;
		}
		out[o++] = flags[k];
	}
	if (!added)
		out[o++] = 'S';
	out[o] = '\0';
	return 0;
}

/* Renames message m to cur/<newname> where newname is built by the caller
 * (relative "cur/..." in rel). 0 ok, -1 failed. */
static int pop3_mbox_move(struct pop3_mbox *mb, struct pop3_msg *m, const char *rel)
{
	char from[PATH_MAX], to[PATH_MAX];

	if (pop3_mbox_path(mb, m, from, sizeof(from)) < 0 ||
	    util_fmt(to, sizeof(to), "%s/%s", mb->dir, rel) < 0)
		return -1;
	if (strcmp(from, to) == 0)
		return 0;
	if (rename(from, to) < 0)
		return -1;
	xfree(&m->name);
	m->name = xstrdup(rel + 4);
	m->in_new = 0;
	return 0;
}

int pop3_mbox_mark_seen(struct pop3_mbox *mb, uint32_t i)
{
	struct pop3_msg *m = &mb->msgs[i];
	char rel[PATH_MAX];

	for (int attempt = 0; attempt < 2; attempt++) {
		if (pop3_mbox_seen_name(m->name, rel, sizeof(rel)) < 0)
			return -1;
		if (pop3_mbox_move(mb, m, rel) == 0)
			return 0;
		if (errno != ENOENT || !pop3_mbox_relocate(mb, m))
			return -1;
	}
	return -1;
}

uint32_t pop3_mbox_commit(struct pop3_mbox *mb, uint32_t *failed_r)
{
	char path[PATH_MAX], rel[PATH_MAX];
	uint32_t deleted = 0, failed = 0;
	int touched = 0;

	for (uint32_t i = 0; i < mb->n; i++) {
		struct pop3_msg *m = &mb->msgs[i];
		int done = 0;

		if (!m->deleted)
			continue;
		for (int attempt = 0; attempt < 2 && !done; attempt++) {
			if (pop3_mbox_path(mb, m, path, sizeof(path)) < 0)
				break;
			if (unlink(path) == 0) {
				done = 1;
			} else if (errno != ENOENT) {
				break;
			} else if (!pop3_mbox_relocate(mb, m)) {
				done = 1; /* already gone: someone else deleted it */
			}
		}
		if (done) {
			deleted++;
			touched = 1;
		} else {
			failed++;
		}
	}
	for (uint32_t i = 0; i < mb->n; i++) {
		struct pop3_msg *m = &mb->msgs[i];

		if (m->deleted || !m->in_new)
			continue;
		if (strstr(m->name, ":2,") != NULL) {
			if (util_fmt(rel, sizeof(rel), "cur/%s", m->name) < 0)
				continue;
		} else if (util_fmt(rel, sizeof(rel), "cur/%s:2,", m->name) < 0) {
			continue;
		}
		if (pop3_mbox_move(mb, m, rel) == 0)
			touched = 1;
	}
	if (touched) {
		if (util_fmt(path, sizeof(path), "%s/cur", mb->dir) == 0)
			(void)fs_fsync_dir(path);
		if (util_fmt(path, sizeof(path), "%s/new", mb->dir) == 0)
			(void)fs_fsync_dir(path);
	}
	*failed_r = failed;
	return deleted;
}
