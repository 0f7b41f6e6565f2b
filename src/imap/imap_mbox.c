/* imap_mbox: Maildir++ folders as IMAP mailboxes: the kale-uidlist file
 * (see docs/imap.md), flag letters, message files, folder operations and
 * subscriptions. Run by imapd as run_as, relative to data_dir. */
#include "imap/imap_mbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "imap/imap_parse.h"
#include "lib/util.h"

#define IMAP_UIDLIST "kale-uidlist"
#define IMAP_UIDLIST_LOCK "kale-uidlist.lock"
#define IMAP_UIDLIST_MAX (256u * 1024 * 1024)

static const struct { char c; unsigned f; } imap_letters[] = {
	{ 'D', IMAP_FL_DRAFT }, { 'F', IMAP_FL_FLAGGED }, { 'R', IMAP_FL_ANSWERED },
	{ 'S', IMAP_FL_SEEN }, { 'T', IMAP_FL_DELETED },
};

unsigned imap_flags_from_info(const char *info, char extra[32])
{
	unsigned f = 0;
	size_t e = 0;
	for (const char *p = info; *p != '\0'; p++) {
		int known = 0;
		for (size_t i = 0; i < sizeof(imap_letters) / sizeof(imap_letters[0]); i++)
			if (*p == imap_letters[i].c) {
				f |= imap_letters[i].f;
				known = 1;
			}
		if (!known && e < 31 && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) &&
		    (e == 0 || memchr(extra, *p, e) == NULL))
			extra[e++] = *p;
	}
	extra[e] = '\0';
	return f;
}

void imap_flags_to_info(unsigned flags, const char *extra, char out[40])
{
	/* letters in ASCII order, as Maildir requires */
	size_t o = 0;
	for (char c = 'A'; c <= 'z'; c++) {
		int want = 0;
		for (size_t i = 0; i < sizeof(imap_letters) / sizeof(imap_letters[0]); i++)
			if (imap_letters[i].c == c && (flags & imap_letters[i].f))
				want = 1;
		if (!want && extra != NULL && strchr(extra, c) != NULL && c != '\0')
			want = 1;
		if (want && o < 39)
			out[o++] = c;
	}
	out[o] = '\0';
}

void imap_msg_free(struct imap_msg *m)
{
	xfree(&m->base);
	xfree(&m->fname);
}

void imap_mbox_msgs_free(struct imap_msg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		imap_msg_free(&msgs[i]);
	xfree(&msgs);
}

/* ---- uid list ---- */

struct imap_ul_ent {
	uint32_t uid;
	char *base;
	int seen;
};

static int imap_ent_cmp_base(const void *a, const void *b)
{
	const struct imap_ul_ent *x = a, *y = b;
	return strcmp(x->base, y->base);
}

static int imap_msg_cmp_uid(const void *a, const void *b)
{
	const struct imap_msg *x = a, *y = b;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static int imap_msg_cmp_base(const void *a, const void *b)
{
	const struct imap_msg *x = a, *y = b;
	return strcmp(x->base, y->base);
}

/* Reads the uid list; on a missing or broken file starts a new one. */
static void imap_ul_read(const char *path, uint32_t *uv, uint32_t *next, struct imap_ul_ent **ents_r, size_t *n_r)
{
	struct imap_ul_ent *ents = NULL;
	size_t n = 0, cap = 0;
	char *buf = NULL;
	struct stat sb;
	int ok = 0;

	*uv = 0;
	*next = 1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		goto done;
	if (fstat(fd, &sb) < 0 || sb.st_size < 0 || (uint64_t)sb.st_size > IMAP_UIDLIST_MAX) {
		close(fd);
		goto done;
	}
	size_t len = (size_t)sb.st_size, got = 0;
	buf = xmalloc(len + 1);
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	buf[got] = '\0';
	char *save = NULL;
	char *line = strtok_r(buf, "\n", &save);
	if (line == NULL)
		goto done;
	unsigned long a, b;
	char *e;
	errno = 0;
	a = strtoul(line, &e, 10);
	if (*e != ' ' || a == 0 || a > UINT32_MAX)
		goto done;
	b = strtoul(e + 1, &e, 10);
	if (*e != '\0' || b == 0 || b > UINT32_MAX)
		goto done;
	*uv = (uint32_t)a;
	*next = (uint32_t)b;
	uint32_t last = 0;
	while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
		unsigned long u = strtoul(line, &e, 10);
		if (*e != ' ' || u <= last || u >= *next || e[1] == '\0' || strchr(e + 1, '/') != NULL)
			goto done;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			ents = xrealloc(ents, cap * sizeof(*ents));
		}
		ents[n].uid = (uint32_t)u;
		ents[n].base = xstrdup(e + 1);
		ents[n].seen = 0;
		n++;
		last = (uint32_t)u;
	}
	ok = 1;
done:
	xfree(&buf);
	if (!ok) {
		for (size_t i = 0; i < n; i++)
			xfree(&ents[i].base);
		xfree(&ents);
		n = 0;
		struct timeval tv;
		gettimeofday(&tv, NULL);
		/* a new UIDVALIDITY, larger than any earlier one from this clock */
		uint32_t v = (uint32_t)tv.tv_sec;
		*uv = *uv >= v ? *uv + 1 : v;
		if (*uv == 0)
			*uv = 1;
		*next = 1;
	}
	*ents_r = ents;
	*n_r = n;
}

static int imap_ul_write(const char *dir, uint32_t uv, uint32_t next, const struct imap_msg *m, size_t n)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	if (util_fmt(tmp, sizeof(tmp), "%s/%s.tmp", dir, IMAP_UIDLIST) < 0 ||
	    util_fmt(path, sizeof(path), "%s/%s", dir, IMAP_UIDLIST) < 0)
		return -1;
	FILE *f = fopen(tmp, "we");
	if (f == NULL)
		return -1;
	fprintf(f, "%u %u\n", uv, next);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%u %s\n", m[i].uid, m[i].base);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		unlink(tmp);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) < 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int imap_lock(const char *dir)
{
	char p[PATH_MAX];
	if (util_fmt(p, sizeof(p), "%s/%s", dir, IMAP_UIDLIST_LOCK) < 0)
		return -1;
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			close(fd);
			return -1;
		}
	}
	return fd;
}

static void imap_unlock(int fd)
{
	if (fd >= 0) {
		flock(fd, LOCK_UN);
		close(fd);
	}
}

static int imap_name_ok(const char *n)
{
	if (n[0] == '.' || strlen(n) >= 256)
		return 0;
	for (const char *p = n; *p != '\0'; p++)
		if ((unsigned char)*p < ' ' || *p == '/' || *p == ' ')
			return 0;
	return 1;
}

/* Moves new/ entries into cur/. */
static size_t imap_move_new(const char *dir)
{
	char nd[PATH_MAX];
	size_t moved = 0;
	if (util_fmt(nd, sizeof(nd), "%s/new", dir) < 0)
		return 0;
	DIR *d = opendir(nd);
	if (d == NULL)
		return 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!imap_name_ok(de->d_name))
			continue;
		char from[PATH_MAX], to[PATH_MAX];
		int r1 = util_fmt(from, sizeof(from), "%s/new/%s", dir, de->d_name);
		int r2 = strchr(de->d_name, ':') != NULL ?
		    util_fmt(to, sizeof(to), "%s/cur/%s", dir, de->d_name) :
		    util_fmt(to, sizeof(to), "%s/cur/%s:2,", dir, de->d_name);
		if (r1 < 0 || r2 < 0)
			continue;
		if (rename(from, to) == 0)
			moved++;
	}
	closedir(d);
	return moved;
}

int imap_mbox_scan(struct imap_mbox *mb, size_t *recent_r, const char **error_r)
{
	struct imap_ul_ent *ents = NULL;
	size_t n_ents = 0;
	struct imap_msg *msgs = NULL;
	size_t n = 0, cap = 0;
	int ret = -1;
	int lk = imap_lock(mb->path);
	if (lk < 0) {
		*error_r = "cannot lock the mailbox";
		return -1;
	}
	size_t moved = imap_move_new(mb->path);
	if (recent_r != NULL)
		*recent_r = moved;

	char ulp[PATH_MAX], cd[PATH_MAX];
	if (util_fmt(ulp, sizeof(ulp), "%s/%s", mb->path, IMAP_UIDLIST) < 0 ||
	    util_fmt(cd, sizeof(cd), "%s/cur", mb->path) < 0) {
		*error_r = "path too long";
		goto out;
	}
	uint32_t uv, next;
	imap_ul_read(ulp, &uv, &next, &ents, &n_ents);
	int changed = access(ulp, F_OK) != 0;

	DIR *d = opendir(cd);
	if (d == NULL) {
		*error_r = "cannot read the mailbox";
		goto out;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!imap_name_ok(de->d_name))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			msgs = xrealloc(msgs, cap * sizeof(*msgs));
		}
		struct imap_msg *m = &msgs[n];
		memset(m, 0, sizeof(*m));
		m->fname = xstrdup(de->d_name);
		char *colon = strchr(de->d_name, ':');
		m->base = colon != NULL ? xstrndup(de->d_name, (size_t)(colon - de->d_name)) : xstrdup(de->d_name);
		if (colon != NULL && strncmp(colon, ":2,", 3) == 0)
			m->flags = imap_flags_from_info(colon + 3, m->extra);
		m->size = -1;
		n++;
	}
	closedir(d);

	/* match files to uid list entries by base name */
	if (n_ents > 1)
		qsort(ents, n_ents, sizeof(*ents), imap_ent_cmp_base);
	if (n > 1)
		qsort(msgs, n, sizeof(*msgs), imap_msg_cmp_base);
	size_t i = 0, j = 0, k = 0;
	size_t n_new = 0;
	while (i < n) {
		if (k > 0 && strcmp(msgs[i].base, msgs[k - 1].base) == 0) {
			/* the same message twice (a racing rename): keep one */
			imap_msg_free(&msgs[i]);
			i++;
			continue;
		}
		while (j < n_ents && strcmp(ents[j].base, msgs[i].base) < 0)
			j++;
		if (j < n_ents && strcmp(ents[j].base, msgs[i].base) == 0) {
			msgs[i].uid = ents[j].uid;
			ents[j].seen = 1;
		} else {
			msgs[i].uid = 0;
			n_new++;
		}
		if (k != i)
			msgs[k] = msgs[i];
		k++;
		i++;
	}
	n = k;
	for (j = 0; j < n_ents; j++)
		if (!ents[j].seen)
			changed = 1;
	if (n_new > 0) {
		/* new files get UIDs in name order (Maildir names start with the time) */
		changed = 1;
		for (i = 0; i < n; i++) {
			if (msgs[i].uid != 0)
				continue;
			if (next == UINT32_MAX) {
				*error_r = "UID space exhausted";
				goto out;
			}
			msgs[i].uid = next++;
		}
	}
	if (n > 1)
		qsort(msgs, n, sizeof(*msgs), imap_msg_cmp_uid);
	if (changed && imap_ul_write(mb->path, uv, next, msgs, n) < 0) {
		*error_r = "cannot write the uid list";
		goto out;
	}
	mb->uidvalidity = uv;
	mb->uidnext = next;
	mb->msgs = msgs;
	mb->n = n;
	msgs = NULL;
	n = 0;
	ret = 0;
out:
	imap_unlock(lk);
	for (j = 0; j < n_ents; j++)
		xfree(&ents[j].base);
	xfree(&ents);
	imap_mbox_msgs_free(msgs, n);
	return ret;
}

/* Finds the current file name of base in cur/ (after another session
 * renamed it); 0 found, -1 gone. */
static int imap_refind(struct imap_mbox *mb, struct imap_msg *m)
{
	char cd[PATH_MAX];
	if (util_fmt(cd, sizeof(cd), "%s/cur", mb->path) < 0)
		return -1;
	DIR *d = opendir(cd);
	if (d == NULL)
		return -1;
	size_t bl = strlen(m->base);
	struct dirent *de;
	int found = -1;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, m->base, bl) == 0 && (de->d_name[bl] == ':' || de->d_name[bl] == '\0')) {
			xfree(&m->fname);
			m->fname = xstrdup(de->d_name);
			char *colon = strchr(m->fname, ':');
			if (colon != NULL && strncmp(colon, ":2,", 3) == 0)
				m->flags = imap_flags_from_info(colon + 3, m->extra);
			found = 0;
			break;
		}
	}
	closedir(d);
	return found;
}

int imap_mbox_set_flags(struct imap_mbox *mb, struct imap_msg *m, unsigned flags)
{
	flags &= IMAP_FL_STORED;
	if ((m->flags & IMAP_FL_STORED) == flags)
		return 0;
	char info[40], from[PATH_MAX], to[PATH_MAX], nn[PATH_MAX];
	imap_flags_to_info(flags, m->extra, info);
	if (util_fmt(nn, sizeof(nn), "%s:2,%s", m->base, info) < 0)
		return -1;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (util_fmt(from, sizeof(from), "%s/cur/%s", mb->path, m->fname) < 0 ||
		    util_fmt(to, sizeof(to), "%s/cur/%s", mb->path, nn) < 0)
			return -1;
		if (rename(from, to) == 0) {
			xfree(&m->fname);
			m->fname = xstrdup(nn);
			m->flags = (m->flags & ~IMAP_FL_STORED) | flags;
			return 0;
		}
		if (errno != ENOENT || imap_refind(mb, m) < 0)
			return -1;
	}
	return -1;
}

int imap_mbox_unlink(struct imap_mbox *mb, struct imap_msg *m)
{
	char p[PATH_MAX];
	for (int attempt = 0; attempt < 2; attempt++) {
		if (util_fmt(p, sizeof(p), "%s/cur/%s", mb->path, m->fname) < 0)
			return -1;
		if (unlink(p) == 0)
			return 0;
		if (errno != ENOENT)
			return -1;
		if (imap_refind(mb, m) < 0)
			return 0;
	}
	return 0;
}

static int imap_open_msg(struct imap_mbox *mb, struct imap_msg *m)
{
	char p[PATH_MAX];
	for (int attempt = 0; attempt < 2; attempt++) {
		if (util_fmt(p, sizeof(p), "%s/cur/%s", mb->path, m->fname) < 0)
			return -1;
		int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0)
			return fd;
		if (errno != ENOENT || imap_refind(mb, m) < 0)
			return -1;
	}
	return -1;
}

time_t imap_mbox_idate(struct imap_mbox *mb, struct imap_msg *m)
{
	if (m->idate != 0)
		return m->idate;
	char p[PATH_MAX];
	struct stat sb;
	if (util_fmt(p, sizeof(p), "%s/cur/%s", mb->path, m->fname) == 0 && stat(p, &sb) == 0)
		m->idate = sb.st_mtime;
	else if (imap_refind(mb, m) == 0 && util_fmt(p, sizeof(p), "%s/cur/%s", mb->path, m->fname) == 0 &&
	    stat(p, &sb) == 0)
		m->idate = sb.st_mtime;
	else
		m->idate = 1;
	return m->idate;
}

int imap_mbox_read(struct imap_mbox *mb, struct imap_msg *m, char **data_r, size_t *len_r, const char **error_r)
{
	int fd = imap_open_msg(mb, m);
	struct stat sb;
	if (fd < 0) {
		*error_r = "message is gone";
		return -1;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0 ||
	    (uint64_t)sb.st_size > IMAP_MBOX_MAX_FILE) {
		close(fd);
		*error_r = "message file too large or unreadable";
		return -1;
	}
	if (m->idate == 0)
		m->idate = sb.st_mtime;
	size_t len = (size_t)sb.st_size, got = 0;
	char *raw = xmalloc(len + 1);
	while (got < len) {
		ssize_t r = read(fd, raw + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	size_t bare = 0;
	for (size_t i = 0; i < got; i++)
		if (raw[i] == '\n' && (i == 0 || raw[i - 1] != '\r'))
			bare++;
	char *out = raw;
	size_t olen = got;
	if (bare > 0) {
		olen = got + bare;
		out = xmalloc(olen + 1);
		size_t o = 0;
		for (size_t i = 0; i < got; i++) {
			if (raw[i] == '\n' && (i == 0 || raw[i - 1] != '\r'))
				out[o++] = '\r';
			out[o++] = raw[i];
		}
		xfree(&raw);
	}
	out[olen] = '\0';
	m->size = (int64_t)olen;
	*data_r = out;
	*len_r = olen;
	return 0;
}

/* ---- message files read in bounded pieces (FETCH streaming) ---- */

#define IMAP_CHUNK 65536

int imap_mbox_open(struct imap_mbox *mb, struct imap_msg *m, struct stat *sb_r, const char **error_r)
{
	int fd = imap_open_msg(mb, m);
	if (fd < 0) {
		*error_r = "message is gone";
		return -1;
	}
	if (fstat(fd, sb_r) < 0 || !S_ISREG(sb_r->st_mode) || sb_r->st_size < 0 ||
	    (uint64_t)sb_r->st_size > IMAP_MBOX_MAX_FILE) {
		close(fd);
		*error_r = "message file too large or unreadable";
		return -1;
	}
	if (m->idate == 0)
		m->idate = sb_r->st_mtime;
	return fd;
}

int imap_mbox_crlf_size(int fd, uint64_t fsize, int64_t *size_r)
{
	char *buf = xmalloc(IMAP_CHUNK);
	uint64_t off = 0, bare = 0;
	int prev_cr = 0, ret = 0;
	while (off < fsize) {
		size_t want = fsize - off < IMAP_CHUNK ? (size_t)(fsize - off) : IMAP_CHUNK;
		ssize_t r = pread(fd, buf, want, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			ret = -1;
			break;
		}
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] == '\n' && !prev_cr)
				bare++;
			prev_cr = buf[i] == '\r';
		}
		off += (uint64_t)r;
	}
	xfree(&buf);
	if (ret == 0)
		*size_r = (int64_t)(fsize + bare);
	return ret;
}

void imap_crlf_rd_init(struct imap_crlf_rd *rd, int fd, int conv, uint64_t off, uint64_t len)
{
	rd->fd = fd;
	rd->conv = conv;
	/* without bare LFs the CRLF form is the file: start at off; otherwise
	 * offsets shift at every bare LF, so read from the top and skip */
	rd->foff = conv ? 0 : off;
	rd->skip = conv ? off : 0;
	rd->left = len;
	rd->prev_cr = 0;
}

ssize_t imap_crlf_rd_next(struct imap_crlf_rd *rd, char *out, size_t cap)
{
	char raw[8192];
	while (rd->left > 0) {
		if (!rd->conv) {
			size_t want = rd->left < cap ? (size_t)rd->left : cap;
			ssize_t r = pread(rd->fd, out, want, (off_t)rd->foff);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return -1;   /* the file shrank under us */
			rd->foff += (uint64_t)r;
			rd->left -= (uint64_t)r;
			return r;
		}
		/* each raw byte gives at most two: read no more than fits */
		size_t want = cap / 2 < sizeof(raw) ? cap / 2 : sizeof(raw);
		ssize_t r = pread(rd->fd, raw, want, (off_t)rd->foff);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		rd->foff += (uint64_t)r;
		size_t o = 0;
		for (ssize_t i = 0; i < r && rd->left > 0; i++) {
			char two[2];
			int n = 0;
			if (raw[i] == '\n' && !rd->prev_cr)
				two[n++] = '\r';
			two[n++] = raw[i];
			rd->prev_cr = raw[i] == '\r';
			for (int k = 0; k < n && rd->left > 0; k++) {
				if (rd->skip > 0) {
					rd->skip--;
					continue;
				}
				out[o++] = two[k];
				rd->left--;
			}
		}
		if (o > 0)
			return (ssize_t)o;
	}
	return 0;
}

int imap_mbox_read_range(int fd, int conv, uint64_t off, size_t len, struct imap_mbox_buf *b)
{
	b->len = 0;
	b->map_len = 0;
	/* big buffers come straight from the kernel and go back at once, so a
	 * transient parse leaves nothing behind in the heap */
	if (len >= 1024 * 1024) {
		b->map_len = len + 1;
		b->data = mmap(NULL, b->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b->data == MAP_FAILED) {
			b->data = NULL;
			b->map_len = 0;
			return -1;
		}
	} else {
		b->data = xmalloc(len + 1);
	}
	struct imap_crlf_rd rd;
	imap_crlf_rd_init(&rd, fd, conv, off, len);
	size_t got = 0;
	while (got < len) {
		ssize_t r = imap_crlf_rd_next(&rd, b->data + got, len - got < 2 ? 2 : len - got);
		if (r <= 0 || (size_t)r > len - got) {
			imap_mbox_buf_free(b);
			return -1;
		}
		got += (size_t)r;
	}
	b->data[len] = '\0';
	b->len = len;
	return 0;
}

void imap_mbox_buf_free(struct imap_mbox_buf *b)
{
	if (b->data != NULL) {
		if (b->map_len > 0)
			munmap(b->data, b->map_len);
		else
			xfree(&b->data);
	}
	b->data = NULL;
	b->len = b->map_len = 0;
}

/* ---- adding messages ---- */

static void imap_unique(char *buf, size_t cap)
{
	static unsigned counter;
	struct timeval tv;
	char host[128];
	gettimeofday(&tv, NULL);
	if (gethostname(host, sizeof(host)) < 0)
		util_fmt(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	for (char *p = host; *p != '\0'; p++)
		if (*p == '/' || *p == ':')
			*p = '_';
	if (util_fmt(buf, cap, "%lld.M%ldP%ldQ%u.%s", (long long)tv.tv_sec, (long)tv.tv_usec,
	    (long)getpid(), ++counter, host) < 0)
		buf[0] = '\0';
}

/* Assigns UIDs to new files and returns the UID of base. */
static int imap_uid_of(const char *path, const char *base, uint32_t *uv_r, uint32_t *uid_r, const char **error_r)
{
	struct imap_mbox mb;
	memset(&mb, 0, sizeof(mb));
	mb.path = (char *)path;
	if (imap_mbox_scan(&mb, NULL, error_r) < 0)
		return -1;
	int ret = -1;
	*error_r = "message vanished";
	for (size_t i = 0; i < mb.n; i++)
		if (strcmp(mb.msgs[i].base, base) == 0) {
			*uid_r = mb.msgs[i].uid;
			*uv_r = mb.uidvalidity;
			ret = 0;
			break;
		}
	imap_mbox_msgs_free(mb.msgs, mb.n);
	return ret;
}

int imap_mbox_append(const char *path, const char *data, size_t len, unsigned flags,
    time_t idate, uint32_t *uidvalidity_r, uint32_t *uid_r, const char **error_r)
{
	char base[256], tmp[PATH_MAX], dst[PATH_MAX], info[40];
	imap_unique(base, sizeof(base));
	imap_flags_to_info(flags & IMAP_FL_STORED, NULL, info);
	if (base[0] == '\0' || util_fmt(tmp, sizeof(tmp), "%s/tmp/%s", path, base) < 0 ||
	    util_fmt(dst, sizeof(dst), "%s/cur/%s:2,%s", path, base, info) < 0) {
		*error_r = "path too long";
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		*error_r = "cannot create the message file";
		return -1;
	}
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			close(fd);
			unlink(tmp);
			*error_r = "cannot write the message file";
			return -1;
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0) {
		close(fd);
		unlink(tmp);
		*error_r = "cannot sync the message file";
		return -1;
	}
	if (idate > 0) {
		struct timespec ts[2] = { { idate, 0 }, { idate, 0 } };
		futimens(fd, ts);
	}
	close(fd);
	if (rename(tmp, dst) < 0) {
		unlink(tmp);
		*error_r = "cannot move the message into cur/";
		return -1;
	}
	char cd[PATH_MAX];
	if (util_fmt(cd, sizeof(cd), "%s/cur", path) == 0)
		fs_fsync_dir(cd);
	return imap_uid_of(path, base, uidvalidity_r, uid_r, error_r);
}

int imap_mbox_copy(struct imap_mbox *src, struct imap_msg *m, const char *dst,
    uint32_t *uidvalidity_r, uint32_t *uid_r, const char **error_r)
{
	char base[256], from[PATH_MAX], to[PATH_MAX], info[40];
	imap_unique(base, sizeof(base));
	imap_flags_to_info(m->flags & IMAP_FL_STORED, m->extra, info);
	if (base[0] == '\0' || util_fmt(to, sizeof(to), "%s/cur/%s:2,%s", dst, base, info) < 0) {
		*error_r = "path too long";
		return -1;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		if (util_fmt(from, sizeof(from), "%s/cur/%s", src->path, m->fname) < 0) {
			*error_r = "path too long";
			return -1;
		}
		if (link(from, to) == 0)
			break;
		if (errno == ENOENT && attempt == 0 && imap_refind(src, m) == 0)
			continue;
		if (errno == ENOENT) {
			*error_r = "message is gone";
			return -1;
		}
		/* another file system or no hard links: copy the bytes */
		char *data = NULL;
		size_t len = 0;
		if (imap_mbox_read(src, m, &data, &len, error_r) < 0)
			return -1;
		int r = imap_mbox_append(dst, data, len, m->flags, imap_mbox_idate(src, m),
		    uidvalidity_r, uid_r, error_r);
		xfree(&data);
		return r;
	}
	return imap_uid_of(dst, base, uidvalidity_r, uid_r, error_r);
}

/* ---- folders ---- */

int imap_folder_path(const char *root, const char *name, char *out, size_t cap)
{
	if (strcasecmp(name, "INBOX") == 0)
		return util_fmt(out, cap, "%s", root);
	if (imap_mailbox_name_ok(name) < 0 || strncasecmp(name, "INBOX.", 6) == 0)
		return -1;
	return util_fmt(out, cap, "%s/.%s", root, name);
}

int imap_folder_exists(const char *path)
{
	char p[PATH_MAX];
	struct stat sb;
	return util_fmt(p, sizeof(p), "%s/cur", path) == 0 && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int imap_maildir_make(const char *path)
{
	char p[PATH_MAX];
	static const char *const subs[] = { "tmp", "new", "cur" };
	if (fs_mkdirs(path, 0700) < 0)
		return -1;
	for (int i = 0; i < 3; i++)
		if (util_fmt(p, sizeof(p), "%s/%s", path, subs[i]) < 0 || fs_mkdirs(p, 0700) < 0)
			return -1;
	return 0;
}

int imap_folder_create(const char *root, const char *name, const char **error_r)
{
	char path[PATH_MAX], part[PATH_MAX];
	if (imap_folder_path(root, name, path, sizeof(path)) < 0 || strcasecmp(name, "INBOX") == 0) {
		*error_r = "invalid mailbox name";
		return -1;
	}
	if (imap_folder_exists(path)) {
		*error_r = "[ALREADYEXISTS] mailbox exists";
		return -1;
	}
	/* superiors first: a.b.c creates .a and .a.b */
	size_t nl = strlen(name);
	for (size_t i = 0; i <= nl; i++) {
		if (name[i] != '.' && name[i] != '\0')
			continue;
		char sub[256];
		if (i >= sizeof(sub))
			break;
		memcpy(sub, name, i);
		sub[i] = '\0';
		if (imap_folder_path(root, sub, part, sizeof(part)) < 0 || imap_maildir_make(part) < 0) {
			*error_r = "cannot create the mailbox";
			return -1;
		}
		char mf[PATH_MAX];
		if (util_fmt(mf, sizeof(mf), "%s/maildirfolder", part) == 0) {
			int fd = open(mf, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
			if (fd >= 0)
				close(fd);
		}
	}
	fs_fsync_dir(root);
	return 0;
}

static int imap_rm_tree1(const char *dir)
{
	/* removes a Maildir: files in tmp/new/cur, those dirs, known files */
	static const char *const subs[] = { "tmp", "new", "cur" };
	char p[PATH_MAX], f[PATH_MAX];
	for (int i = 0; i < 3; i++) {
		if (util_fmt(p, sizeof(p), "%s/%s", dir, subs[i]) < 0)
			return -1;
		DIR *d = opendir(p);
		if (d != NULL) {
			struct dirent *de;
			while ((de = readdir(d)) != NULL) {
				if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
					continue;
				if (util_fmt(f, sizeof(f), "%s/%s", p, de->d_name) == 0)
					unlink(f);
			}
			closedir(d);
		}
		rmdir(p);
	}
	DIR *d = opendir(dir);
	if (d != NULL) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			if (util_fmt(f, sizeof(f), "%s/%s", dir, de->d_name) == 0)
				unlink(f);
		}
		closedir(d);
	}
	return rmdir(dir);
}

int imap_folder_delete(const char *root, const char *name, const char **error_r)
{
	char path[PATH_MAX];
	if (strcasecmp(name, "INBOX") == 0) {
		*error_r = "cannot delete INBOX";
		return -1;
	}
	if (imap_folder_path(root, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		*error_r = "[NONEXISTENT] no such mailbox";
		return -1;
	}
	char **names = NULL;
	size_t n = 0;
	imap_folder_list(root, &names, &n);
	size_t nl = strlen(name);
	int children = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(names[i], name, nl) == 0 && names[i][nl] == '.')
			children = 1;
	imap_names_free(names, n);
	if (children) {
		*error_r = "[INUSE] mailbox has children";
		return -1;
	}
	if (imap_rm_tree1(path) < 0) {
		*error_r = "cannot delete the mailbox";
		return -1;
	}
	imap_subs_set(root, name, 0, error_r);
	return 0;
}

int imap_folder_rename(const char *root, const char *from, const char *to, const char **error_r)
{
	char a[PATH_MAX], b[PATH_MAX];
	if (strcasecmp(from, "INBOX") == 0) {
		*error_r = "renaming INBOX is not supported";
		return -1;
	}
	if (imap_folder_path(root, from, a, sizeof(a)) < 0 || !imap_folder_exists(a)) {
		*error_r = "[NONEXISTENT] no such mailbox";
		return -1;
	}
	if (imap_folder_path(root, to, b, sizeof(b)) < 0 || strcasecmp(to, "INBOX") == 0) {
		*error_r = "invalid mailbox name";
		return -1;
	}
	if (access(b, F_OK) == 0) {
		*error_r = "[ALREADYEXISTS] mailbox exists";
		return -1;
	}
	/* children first, then the folder itself */
	char **names = NULL;
	size_t n = 0;
	imap_folder_list(root, &names, &n);
	size_t fl = strlen(from);
	for (size_t i = 0; i < n; i++) {
		if (strncmp(names[i], from, fl) != 0 || names[i][fl] != '.')
			continue;
		char na[PATH_MAX], nb[PATH_MAX];
		if (util_fmt(na, sizeof(na), "%s/.%s", root, names[i]) == 0 &&
		    util_fmt(nb, sizeof(nb), "%s/.%s%s", root, to, names[i] + fl) == 0)
			rename(na, nb);
	}
	imap_names_free(names, n);
	if (rename(a, b) < 0) {
		*error_r = "cannot rename the mailbox";
		return -1;
	}
	fs_fsync_dir(root);
	return 0;
}

static int imap_name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int imap_folder_list(const char *root, char ***names_r, size_t *n_r)
{
	char **v = NULL;
	size_t n = 0, cap = 0;
	DIR *d = opendir(root);
	v = xmalloc(sizeof(*v));
	v[n++] = xstrdup("INBOX");
	cap = 1;
	if (d != NULL) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] != '.' || de->d_name[1] == '\0' || de->d_name[1] == '.')
				continue;
			char p[PATH_MAX];
			if (util_fmt(p, sizeof(p), "%s/%s", root, de->d_name) < 0 || !imap_folder_exists(p))
				continue;
			if (imap_mailbox_name_ok(de->d_name + 1) < 0)
				continue;
			if (n == cap) {
				cap *= 2;
				v = xrealloc(v, cap * sizeof(*v));
			}
			v[n++] = xstrdup(de->d_name + 1);
		}
		closedir(d);
	}
	if (n > 2)
		qsort(v + 1, n - 1, sizeof(*v), imap_name_cmp);
	*names_r = v;
	*n_r = n;
	return 0;
}

void imap_names_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		xfree(&names[i]);
	xfree(&names);
}

int imap_subs_list(const char *root, char ***names_r, size_t *n_r)
{
	char p[PATH_MAX];
	char **v = NULL;
	size_t n = 0;
	*names_r = NULL;
	*n_r = 0;
	if (util_fmt(p, sizeof(p), "%s/subscriptions", root) < 0)
		return -1;
	char *buf = fs_read_file(p, 1024 * 1024, NULL);
	if (buf == NULL)
		return 0;
	char *save = NULL;
	for (char *l = strtok_r(buf, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
		if (l[0] == '\0' || (strcasecmp(l, "INBOX") != 0 && imap_mailbox_name_ok(l) < 0))
			continue;
		v = xrealloc(v, (n + 1) * sizeof(*v));
		v[n++] = xstrdup(l);
	}
	xfree(&buf);
	*names_r = v;
	*n_r = n;
	return 0;
}

int imap_subs_set(const char *root, const char *name, int subscribe, const char **error_r)
{
	char **v;
	size_t n;
	char p[PATH_MAX], t[PATH_MAX];
	if (util_fmt(p, sizeof(p), "%s/subscriptions", root) < 0 ||
	    util_fmt(t, sizeof(t), "%s/subscriptions.tmp", root) < 0) {
		*error_r = "path too long";
		return -1;
	}
	int lk = imap_lock(root);
	imap_subs_list(root, &v, &n);
	FILE *f = fopen(t, "we");
	int ret = -1;
	if (f == NULL) {
		*error_r = "cannot write subscriptions";
		goto out;
	}
	int have = 0;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i], name) == 0) {
			have = 1;
			if (!subscribe)
				continue;
		}
		fprintf(f, "%s\n", v[i]);
	}
	if (subscribe && !have)
		fprintf(f, "%s\n", name);
	if (fclose(f) != 0 || rename(t, p) < 0) {
		unlink(t);
		*error_r = "cannot write subscriptions";
		goto out;
	}
	ret = 0;
out:
	imap_names_free(v, n);
	imap_unlock(lk);
	return ret;
}

const char *imap_folder_special_use(const char *name)
{
	static const struct { const char *n, *a; } su[] = {
		{ "Sent", "\\Sent" }, { "Drafts", "\\Drafts" }, { "Trash", "\\Trash" }, { "Junk", "\\Junk" },
	};
	for (size_t i = 0; i < sizeof(su) / sizeof(su[0]); i++)
		if (strcmp(name, su[i].n) == 0)
			return su[i].a;
	return NULL;
}

int imap_list_match(const char *pat, const char *name)
{
	/* dynamic programming over (pattern, name): O(|pat| * |name|) */
	size_t pl = strlen(pat), nl = strlen(name);
	if (pl > 1024 || nl > 1024)
		return 0;
	unsigned char *prev = xcalloc(nl + 1, 1), *cur = xcalloc(nl + 1, 1);
	prev[0] = 1;
	for (size_t i = 1; i <= pl; i++) {
		char c = pat[i - 1];
		cur[0] = prev[0] && (c == '*' || c == '%');
		for (size_t j = 1; j <= nl; j++) {
			char d = name[j - 1];
			if (c == '*')
				cur[j] = prev[j] || cur[j - 1];
			else if (c == '%')
				cur[j] = prev[j] || (cur[j - 1] && d != '.');
			else
				cur[j] = prev[j - 1] && c == d;
		}
		unsigned char *sw = prev;
		prev = cur;
		cur = sw;
	}
	int r = prev[nl];
	xfree(&prev);
	xfree(&cur);
	return r;
}

int imap_folder_init_user(const char *root, const char **error_r)
{
	char mark[PATH_MAX];
	if (imap_maildir_make(root) < 0) {
		*error_r = "cannot create the mailbox";
		return -1;
	}
	if (util_fmt(mark, sizeof(mark), "%s/kale-imap-init", root) < 0) {
		*error_r = "path too long";
		return -1;
	}
	if (access(mark, F_OK) == 0)
		return 0;
	static const char *const su[] = { "Sent", "Drafts", "Trash", "Junk" };
	const char *e;
	for (int i = 0; i < 4; i++) {
		char p[PATH_MAX];
		if (imap_folder_path(root, su[i], p, sizeof(p)) == 0 && !imap_folder_exists(p))
			imap_folder_create(root, su[i], &e);
		imap_subs_set(root, su[i], 1, &e);
	}
	imap_subs_set(root, "INBOX", 1, &e);
	int fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
	return 0;
}
