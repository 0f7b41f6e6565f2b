/* queue_file: writes and reads the envelope of a queue file (format v1, see
 * docs/queue.md), the per-message recipient-done log and queue ids.
 * Run by smtpd (writer), qmgr and kalectl (readers); no fsync here. */
#include "queue/queue_file.h"

#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#define QUEUE_TRAILER_MAGIC "KALEQ001 "
#define QUEUE_TRAILER_MAGIC_LEN 9
#define QUEUE_LEN_DIGITS_MAX 7          /* enough for every bounded length */
#define QUEUE_R_VALUE_MAX (3 * QUEUE_VALUE_MAX + 64)
#define QUEUE_DONE_REC_LEN 10           /* "D" + 8 hex + "\n" */

/* ---- growing output buffer with a ceiling ---- */

struct queue_buf {
	char *data;
	size_t len, cap, max;
	int toobig;
};

static void queue_buf_add(struct queue_buf *b, const void *p, size_t n)
{
	if (b->toobig)
		return;
	if (n > b->max - b->len) {
		b->toobig = 1;
		return;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n)
			cap *= 2;
		if (cap > b->max)
			cap = b->max;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

/* Appends "<prefix><len>:" + value; prefix is a type or sub-field letter. */
static void queue_buf_field(struct queue_buf *b, char type, const char *v, size_t vlen)
{
	char head[32];

	if (util_fmt(head, sizeof(head), "%c%zu:", type, vlen) < 0) {
		b->toobig = 1;
		return;
	}
	queue_buf_add(b, head, strlen(head));
	queue_buf_add(b, v, vlen);
}

static void queue_buf_record(struct queue_buf *b, char type, const char *v, size_t vlen)
{
	queue_buf_field(b, type, v, vlen);
	queue_buf_add(b, "\n", 1);
}

/* ---- writer ---- */

static const char *queue_str(const char *s)
{
	return s != NULL ? s : "";
}

static int queue_value_ok(const char *s)
{
	return s == NULL || strlen(s) <= QUEUE_VALUE_MAX;
}

int queue_file_finish(int fd, const struct queue_env *env)
{
	struct queue_buf b = { .max = QUEUE_ENV_MAX + QUEUE_TRAILER_LEN };
	struct queue_buf r = { .max = QUEUE_R_VALUE_MAX };
	char tmp[64], trailer[QUEUE_TRAILER_LEN + 1];
	struct stat st;
	int flags, rc = -1, saved;

	if (env->n_rcpt < 0 || env->n_rcpt > QUEUE_RCPT_MAX || !queue_qid_valid(env->qid) ||
	    env->body_len > (uint64_t)INT64_MAX || env->arrival < 0 ||
	    env->ret < 0 || env->ret > 2) {
		errno = EINVAL;
		return -1;
	}
	if (!queue_value_ok(env->client_ip) || !queue_value_ok(env->helo) ||
	    !queue_value_ok(env->sender) || !queue_value_ok(env->auth_user) ||
	    !queue_value_ok(env->envid)) {
		errno = E2BIG;
		return -1;
	}
	/* With O_APPEND, pwrite() ignores the offset: the file must end at the body. */
	if (fstat(fd, &st) < 0 || (flags = fcntl(fd, F_GETFL)) < 0)
		return -1;
	if ((flags & O_APPEND) && (uint64_t)st.st_size != env->body_len) {
		errno = EINVAL;
		return -1;
	}

	queue_buf_record(&b, 'V', "1", 1);
	queue_buf_record(&b, 'Q', env->qid, strlen(env->qid));
	if (util_fmt(tmp, sizeof(tmp), "%lld", (long long)env->arrival) < 0)
		goto out_inval;
	queue_buf_record(&b, 'T', tmp, strlen(tmp));
	queue_buf_record(&b, 'C', queue_str(env->client_ip), strlen(queue_str(env->client_ip)));
	queue_buf_record(&b, 'H', queue_str(env->helo), strlen(queue_str(env->helo)));
	queue_buf_record(&b, 'S', queue_str(env->sender), strlen(queue_str(env->sender)));
	if (env->auth_user != NULL)
		queue_buf_record(&b, 'A', env->auth_user, strlen(env->auth_user));
	if (env->envid != NULL)
		queue_buf_record(&b, 'E', env->envid, strlen(env->envid));
	if (util_fmt(tmp, sizeof(tmp), "%s%s%s", env->ret == 1 ? "R1" : env->ret == 2 ? "R2" : "",
	    env->smtputf8 ? "U" : "", env->body8bit ? "8" : "") < 0)
		goto out_inval;
	queue_buf_record(&b, 'F', tmp, strlen(tmp));
	for (int i = 0; i < env->n_rcpt; i++) {
		const struct queue_rcpt *q = &env->rcpt[i];

		if (q->addr == NULL || !queue_value_ok(q->addr) || !queue_value_ok(q->orig) ||
		    !queue_value_ok(q->orcpt)) {
			errno = E2BIG;
			goto out;
		}
		if (q->notify < 0 || q->notify > 15)
			goto out_inval;
		r.len = 0;
		queue_buf_field(&r, 'a', q->addr, strlen(q->addr));
		queue_buf_field(&r, 'o', queue_str(q->orig), strlen(queue_str(q->orig)));
		if (q->orcpt != NULL)
			queue_buf_field(&r, 'p', q->orcpt, strlen(q->orcpt));
		if (util_fmt(tmp, sizeof(tmp), "%d", q->notify) < 0)
			goto out_inval;
		queue_buf_field(&r, 'n', tmp, strlen(tmp));
		if (r.toobig) {
			errno = E2BIG;
			goto out;
		}
		queue_buf_record(&b, 'R', r.data, r.len);
	}
	queue_buf_record(&b, 'Z', "", 0);
	if (b.toobig || b.len > QUEUE_ENV_MAX) {
		errno = E2BIG;
		goto out;
	}
	if (util_fmt(trailer, sizeof(trailer), "%s%016llx %016llx     \n", QUEUE_TRAILER_MAGIC,
	    (unsigned long long)env->body_len, (unsigned long long)b.len) < 0 ||
	    strlen(trailer) != QUEUE_TRAILER_LEN)
		goto out_inval;
	queue_buf_add(&b, trailer, QUEUE_TRAILER_LEN);
	if (b.toobig) {
		errno = E2BIG;
		goto out;
	}
	if (fs_pwrite_all(fd, b.data, b.len, (off_t)env->body_len) < 0)
		goto out_undo;
	/* A retry after a failed attempt may leave bytes past the new end. */
	if ((uint64_t)st.st_size > env->body_len + b.len &&
	    ftruncate(fd, (off_t)(env->body_len + b.len)) < 0)
		goto out_undo;
	rc = 0;
	goto out;
out_undo:
	saved = errno;
	if (ftruncate(fd, (off_t)env->body_len) < 0) {
		/* the caller discards the file anyway */
	}
	errno = saved;
	goto out;
out_inval:
	errno = EINVAL;
out:
	saved = errno;
	free(b.data);
	free(r.data);
	errno = saved;
	return rc;
}

/* ---- reader ---- */

/* Parses "<digits>:" at buf[*pos..end): no sign, no leading zero, at most
 * QUEUE_LEN_DIGITS_MAX digits, value <= max. */
static int queue_parse_len(const char *buf, size_t end, size_t *pos, size_t max, size_t *len_r)
{
	size_t p = *pos, v = 0, ndig = 0;

	while (p < end && buf[p] >= '0' && buf[p] <= '9') {
		if (ndig == QUEUE_LEN_DIGITS_MAX)
			return -1;
		if (ndig == 1 && v == 0)
			return -1;          /* leading zero */
		v = v * 10 + (size_t)(buf[p] - '0');
		ndig++;
		p++;
	}
	if (ndig == 0 || p >= end || buf[p] != ':' || v > max)
		return -1;
	p++;
	if (v > end - p)
		return -1;
	*pos = p;
	*len_r = v;
	return 0;
}

/* Copies a value into a C string; NULL if it holds a NUL byte. */
static char *queue_value_dup(const char *v, size_t len)
{
	if (len > QUEUE_VALUE_MAX || memchr(v, '\0', len) != NULL)
		return NULL;
	return xstrndup(v, len);
}

static int queue_parse_num(const char *v, size_t len, long long min, long long max, long long *out)
{
	char tmp[32];

	if (len == 0 || len >= sizeof(tmp) || memchr(v, '\0', len) != NULL)
		return -1;
	memcpy(tmp, v, len);
	tmp[len] = '\0';
	if (tmp[0] == '+' || (tmp[0] == '0' && len > 1) || (tmp[0] == '-' && tmp[1] == '0'))
		return -1;
	return util_strtonum(tmp, min, max, out);
}

static int queue_parse_flags(struct queue_env *env, const char *v, size_t len)
{
	int seen_r = 0, seen_u = 0, seen_8 = 0;

	for (size_t i = 0; i < len; i++) {
		if (v[i] == 'R' && !seen_r && i + 1 < len && (v[i + 1] == '1' || v[i + 1] == '2')) {
			env->ret = v[i + 1] - '0';
			seen_r = 1;
			i++;
		} else if (v[i] == 'U' && !seen_u) {
			env->smtputf8 = 1;
			seen_u = 1;
		} else if (v[i] == '8' && !seen_8) {
			env->body8bit = 1;
			seen_8 = 1;
		} else {
			return -1;
		}
	}
	return 0;
}

/* Adds a recipient taking ownership of the strings. */
static void queue_env_push_rcpt(struct queue_env *env, char *addr, char *orig, char *orcpt,
    int notify)
{
	int n = env->n_rcpt;

	/* Capacity is the next power of two >= n (at least 8); see the header. */
	if (n == 0 || (n >= 8 && (n & (n - 1)) == 0))
		env->rcpt = xrealloc(env->rcpt, sizeof(*env->rcpt) * (size_t)(n == 0 ? 8 : 2 * n));
	env->rcpt[n].addr = addr;
	env->rcpt[n].orig = orig;
	env->rcpt[n].orcpt = orcpt;
	env->rcpt[n].notify = notify;
	env->n_rcpt = n + 1;
}

static int queue_parse_rcpt(struct queue_env *env, const char *v, size_t len)
{
	char *val[3] = { NULL, NULL, NULL };   /* a, o, p */
	static const char tags[] = "aop";
	size_t pos = 0, flen;
	long long notify;
	int t = 0;

	for (;;) {
		if (pos >= len)
			goto bad;
		while (t < 3 && v[pos] != tags[t]) {
			if (tags[t] != 'p')   /* only orcpt is optional */
				goto bad;
			t++;
		}
		if (t == 3)
			break;
		pos++;
		if (queue_parse_len(v, len, &pos, QUEUE_VALUE_MAX, &flen) < 0 ||
		    (val[t] = queue_value_dup(v + pos, flen)) == NULL)
			goto bad;
		pos += flen;
		t++;
	}
	if (v[pos] != 'n')
		goto bad;
	pos++;
	if (queue_parse_len(v, len, &pos, 2, &flen) < 0 || pos + flen != len ||
	    queue_parse_num(v + pos, flen, 0, 15, &notify) < 0)
		goto bad;
	if (env->n_rcpt >= QUEUE_RCPT_MAX)
		goto bad;
	queue_env_push_rcpt(env, val[0], val[1], val[2], (int)notify);
	return 0;
bad:
	for (int i = 0; i < 3; i++)
		free(val[i]);
	return -1;
}

static int queue_parse_env(struct queue_env *env, const char *buf, size_t len)
{
	static const char singular[] = "VQTCHSAEF";
	unsigned char seen[sizeof(singular)] = { 0 };
	size_t pos = 0, vlen;
	long long num;
	const char *v;

	for (;;) {
		char type;
		const char *which;

		if (pos >= len)
			return -1;
		type = buf[pos++];
		if (type == 'Z') {
			if (queue_parse_len(buf, len, &pos, 0, &vlen) < 0 || pos >= len ||
			    buf[pos] != '\n' || pos + 1 != len)
				return -1;
			break;
		}
		if (queue_parse_len(buf, len, &pos, type == 'R' ? QUEUE_R_VALUE_MAX : QUEUE_VALUE_MAX,
		    &vlen) < 0)
			return -1;
		v = buf + pos;
		pos += vlen;
		if (pos >= len || buf[pos] != '\n')
			return -1;
		pos++;
		which = type != '\0' ? strchr(singular, type) : NULL;
		if (which != NULL) {
			size_t i = (size_t)(which - singular);
			if (seen[i]++)
				return -1;
		}
		if (type != 'V' && !seen[0])
			return -1;          /* V comes first */
		switch (type) {
		case 'V':
			if (queue_parse_num(v, vlen, 1, 1000000, &num) < 0 || num != QUEUE_FORMAT_VERSION)
				return -1;
			env->version = (int)num;
			break;
		case 'Q':
			if (vlen >= sizeof(env->qid) || memchr(v, '\0', vlen) != NULL)
				return -1;
			memcpy(env->qid, v, vlen);
			env->qid[vlen] = '\0';
			if (!queue_qid_valid(env->qid))
				return -1;
			break;
		case 'T':
			if (queue_parse_num(v, vlen, 0, INT64_MAX, &num) < 0)
				return -1;
			env->arrival = num;
			break;
		case 'C':
			if ((env->client_ip = queue_value_dup(v, vlen)) == NULL)
				return -1;
			break;
		case 'H':
			if ((env->helo = queue_value_dup(v, vlen)) == NULL)
				return -1;
			break;
		case 'S':
			if ((env->sender = queue_value_dup(v, vlen)) == NULL)
				return -1;
			break;
		case 'A':
			if ((env->auth_user = queue_value_dup(v, vlen)) == NULL)
				return -1;
			break;
		case 'E':
			if ((env->envid = queue_value_dup(v, vlen)) == NULL)
				return -1;
			break;
		case 'F':
			if (queue_parse_flags(env, v, vlen) < 0)
				return -1;
			break;
		case 'R':
			if (queue_parse_rcpt(env, v, vlen) < 0)
				return -1;
			break;
		default:
			return -1;
		}
	}
	/* Q T C H S are required. */
	for (int i = 1; i <= 5; i++)
		if (!seen[i])
			return -1;
	return 0;
}

static int queue_hex16(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	for (int i = 0; i < 16; i++) {
		int c = s[i], d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = (v << 4) | (uint64_t)d;
	}
	*out = v;
	return 0;
}

int queue_file_read_env(int fd, struct queue_env *env, const char **error_r)
{
	char trailer[QUEUE_TRAILER_LEN];
	char *buf = NULL;
	uint64_t size, env_off, env_len;
	struct stat st;
	int rc = -1;

	memset(env, 0, sizeof(*env));
	if (fstat(fd, &st) < 0) {
		*error_r = "fstat failed";
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		*error_r = "not a regular file";
		return -1;
	}
	size = (uint64_t)st.st_size;
	if (size < QUEUE_TRAILER_LEN) {
		*error_r = "truncated";
		return -1;
	}
	if (fs_pread_all(fd, trailer, sizeof(trailer), (off_t)(size - QUEUE_TRAILER_LEN)) < 0) {
		*error_r = "read error";
		return -1;
	}
	if (memcmp(trailer, QUEUE_TRAILER_MAGIC, QUEUE_TRAILER_MAGIC_LEN) != 0 ||
	    queue_hex16(trailer + 9, &env_off) < 0 || trailer[25] != ' ' ||
	    queue_hex16(trailer + 26, &env_len) < 0 ||
	    memcmp(trailer + 42, "     \n", 6) != 0) {
		*error_r = "bad trailer";
		return -1;
	}
	if (env_off > size - QUEUE_TRAILER_LEN || env_len != size - QUEUE_TRAILER_LEN - env_off ||
	    env_len > QUEUE_ENV_MAX || env_len == 0) {
		*error_r = "bad trailer";
		return -1;
	}
	buf = xmalloc((size_t)env_len);
	if (fs_pread_all(fd, buf, (size_t)env_len, (off_t)env_off) < 0) {
		*error_r = "read error";
		goto out;
	}
	if (queue_parse_env(env, buf, (size_t)env_len) < 0) {
		*error_r = "bad record";
		goto out;
	}
	env->body_len = env_off;
	rc = 0;
out:
	free(buf);
	if (rc < 0)
		queue_env_free(env);
	return rc;
}

void queue_env_free(struct queue_env *env)
{
	if (env == NULL)
		return;
	for (int i = 0; i < env->n_rcpt && env->rcpt != NULL; i++) {
		free(env->rcpt[i].addr);
		free(env->rcpt[i].orig);
		free(env->rcpt[i].orcpt);
	}
	free(env->rcpt);
	free(env->client_ip);
	free(env->helo);
	free(env->sender);
	free(env->auth_user);
	free(env->envid);
	memset(env, 0, sizeof(*env));
}

void queue_env_add_rcpt(struct queue_env *env, const char *addr, const char *orig,
    const char *orcpt, int notify)
{
	queue_env_push_rcpt(env, xstrdup(addr), xstrdup(orig != NULL ? orig : addr),
	    orcpt != NULL ? xstrdup(orcpt) : NULL, notify);
}

/* ---- recipient-done log ---- */

int queue_done_append(int dirfd_done, const char *qid, const int *idx, int n)
{
	char *buf;
	size_t len = 0;
	struct stat st;
	int fd, rc = -1, saved;

	if (!queue_qid_valid(qid) || n < 0 || n > QUEUE_RCPT_MAX) {
		errno = EINVAL;
		return -1;
	}
	fd = openat(dirfd_done, qid, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	buf = xmalloc((size_t)n * QUEUE_DONE_REC_LEN + 2);   /* '\n' + records + NUL */
	if (fstat(fd, &st) < 0)
		goto out;
	/* A torn record from an earlier failed append gets its own line, so
	 * the records after it stay aligned for the reader. */
	if (st.st_size % QUEUE_DONE_REC_LEN != 0)
		buf[len++] = '\n';
	for (int i = 0; i < n; i++) {
		if (idx[i] < 0 || idx[i] >= QUEUE_RCPT_MAX) {
			errno = EINVAL;
			goto out;
		}
		if (util_fmt(buf + len, QUEUE_DONE_REC_LEN + 1, "D%08x\n", (unsigned)idx[i]) < 0) {
			errno = EINVAL;
			goto out;
		}
		len += QUEUE_DONE_REC_LEN;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, buf + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			goto out;
		}
		off += (size_t)w;
	}
	rc = 0;
out:
	saved = errno;
	free(buf);
	close(fd);
	errno = saved;
	return rc;
}

int queue_done_read(int dirfd_done, const char *qid, unsigned char *done, int n_rcpt)
{
	char buf[8192], line[QUEUE_DONE_REC_LEN];
	size_t llen = 0;
	int fd, bad = 0;
	off_t off = 0;

	if (n_rcpt > 0)
		memset(done, 0, (size_t)n_rcpt);
	if (!queue_qid_valid(qid)) {
		errno = EINVAL;
		return -1;
	}
	fd = openat(dirfd_done, qid, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	for (;;) {
		ssize_t r = pread(fd, buf, sizeof(buf), off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int saved = errno;
			close(fd);
			errno = saved;
			return -1;
		}
		if (r == 0)
			break;
		off += r;
		for (ssize_t i = 0; i < r; i++) {
			char c = buf[i];
			uint64_t v = 0;
			int ok = 1;

			if (c != '\n') {
				if (llen < sizeof(line))
					line[llen++] = c;
				else
					bad = 1;
				continue;
			}
			/* A record is exactly "D" + 8 hex digits. */
			if (bad || llen != 9 || line[0] != 'D')
				ok = 0;
			for (size_t k = 1; ok && k < 9; k++) {
				char h = line[k];
				int d = (h >= '0' && h <= '9') ? h - '0' :
				    (h >= 'a' && h <= 'f') ? h - 'a' + 10 : -1;
				if (d < 0)
					ok = 0;
				else
					v = (v << 4) | (uint64_t)d;
			}
			if (ok && v < (uint64_t)(n_rcpt > 0 ? n_rcpt : 0))
				done[v] = 1;
			llen = 0;
			bad = 0;
		}
	}
	/* Whatever follows the last '\n' is a torn record: ignored. */
	close(fd);
	return 0;
}

/* ---- queue ids ---- */

static atomic_uint_fast64_t queue_qid_last_us;

static uint32_t queue_qid_node(void)
{
	static atomic_uint node_hash;   /* 0 = not computed yet */
	unsigned h = atomic_load(&node_hash);
	char host[256];

	if (h != 0)
		return h & 0xffffffu;
	if (gethostname(host, sizeof(host)) < 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	/* FNV-1a, folded to 24 bits; bit 24 marks "computed". */
	uint32_t f = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)host; *p; p++) {
		f ^= *p;
		f *= 16777619u;
	}
	h = ((f >> 24) ^ (f & 0xffffffu)) | 0x1000000u;
	atomic_store(&node_hash, h);
	return h & 0xffffffu;
}

void queue_qid_new(char qid[32])
{
	struct timespec ts;
	uint_fast64_t now, prev, next;
	unsigned long pid = (unsigned long)getpid();
	uint32_t node;

	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint_fast64_t)ts.tv_sec * 1000000u + (uint_fast64_t)ts.tv_nsec / 1000u;
	/* Per process the time part strictly increases: when the clock has not
	 * moved (or went back), the counter is the last value plus one. */
	prev = atomic_load(&queue_qid_last_us);
	do {
		next = now > prev ? now : prev + 1;
	} while (!atomic_compare_exchange_weak(&queue_qid_last_us, &prev, next));
	node = queue_qid_node() ^ (uint32_t)((pid >> 20) & 0xfffu);
	if (util_fmt(qid, 32, "%013llX%05lX%06lX",
	    (unsigned long long)(next & 0xfffffffffffffull), pid & 0xfffffUL,
	    (unsigned long)(node & 0xffffffu)) < 0)
		abort();   /* cannot happen: 24 characters */
}

int queue_qid_valid(const char *s)
{
	size_t i;

	if (s == NULL)
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		if (i >= 24)
			return 0;
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F')))
			return 0;
	}
	return i == 24;
}
