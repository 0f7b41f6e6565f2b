/* test_queue_file: queue file format v1 (round trip, hostile values,
 * corrupted and truncated files), the recipient-done log and queue ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "lib/util.h"
#include "queue/queue_file.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/stat.h>

static const char test_body[] = "Subject: hi\n\nhello\nZ0:\n.\n";

struct qf_fixture {
	char dir[64];
	char path[128];
};

static int qf_setup(void **state)
{
	struct qf_fixture *f = xcalloc(1, sizeof(*f));

	memcpy(f->dir, "/tmp/kale-qf-XXXXXX", sizeof("/tmp/kale-qf-XXXXXX"));
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(util_fmt(f->path, sizeof(f->path), "%s/msg", f->dir), 0);
	*state = f;
	return 0;
}

static int qf_teardown(void **state)
{
	struct qf_fixture *f = *state;
	char done[160];

	unlink(f->path);
	if (util_fmt(done, sizeof(done), "%s/000000000000000000000001", f->dir) == 0)
		unlink(done);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* Creates path with body and returns an fd opened read/write. */
static int qf_new_file(const char *path, const char *body, size_t len)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, body, len), (ssize_t)len);
	return fd;
}

static void qf_base_env(struct queue_env *env)
{
	memset(env, 0, sizeof(*env));
	env->version = QUEUE_FORMAT_VERSION;
	queue_qid_new(env->qid);
	env->arrival = 1700000000;
	env->client_ip = xstrdup("192.0.2.1");
	env->helo = xstrdup("client.example");
	env->sender = xstrdup("alice@example.org");
	env->body_len = sizeof(test_body) - 1;
}

static void qf_assert_str(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void qf_assert_env_equal(const struct queue_env *a, const struct queue_env *b)
{
	assert_int_equal(b->version, QUEUE_FORMAT_VERSION);
	assert_string_equal(a->qid, b->qid);
	assert_int_equal(a->arrival, b->arrival);
	qf_assert_str(a->client_ip, b->client_ip);
	qf_assert_str(a->helo, b->helo);
	qf_assert_str(a->sender, b->sender);
	qf_assert_str(a->auth_user, b->auth_user);
	qf_assert_str(a->envid, b->envid);
	assert_int_equal(a->ret, b->ret);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_int_equal(a->body8bit, b->body8bit);
	assert_int_equal(a->body_len, b->body_len);
	assert_int_equal(a->n_rcpt, b->n_rcpt);
	for (int i = 0; i < a->n_rcpt; i++) {
		qf_assert_str(a->rcpt[i].addr, b->rcpt[i].addr);
		qf_assert_str(a->rcpt[i].orig, b->rcpt[i].orig);
		qf_assert_str(a->rcpt[i].orcpt, b->rcpt[i].orcpt);
		assert_int_equal(a->rcpt[i].notify, b->rcpt[i].notify);
	}
}

/* Writes env after the test body, reads it back and compares. */
static void qf_round_trip(const char *path, const struct queue_env *env)
{
	struct queue_env back;
	const char *error = NULL;
	int fd = qf_new_file(path, test_body, sizeof(test_body) - 1);

	/* The writer uses explicit offsets: the position does not matter. */
	assert_int_equal(lseek(fd, 3, SEEK_SET), 3);
	assert_int_equal(queue_file_finish(fd, env), 0);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 3);
	assert_int_equal(queue_file_read_env(fd, &back, &error), 0);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 3);
	qf_assert_env_equal(env, &back);
	queue_env_free(&back);
	close(fd);
}

static void test_round_trip_many(void **state)
{
	struct qf_fixture *f = *state;
	struct queue_env env;
	char addr[64], orig[64];

	qf_base_env(&env);
	env.auth_user = xstrdup("alice");
	env.envid = xstrdup("QQ314159");
	env.ret = 2;
	env.smtputf8 = 1;
	env.body8bit = 1;
	for (int i = 0; i < QUEUE_RCPT_MAX; i++) {
		assert_int_equal(util_fmt(addr, sizeof(addr), "user%d@example.com", i), 0);
		assert_int_equal(util_fmt(orig, sizeof(orig), "User%d@Example.COM", i), 0);
		queue_env_add_rcpt(&env, addr, orig, i % 3 == 0 ? "rfc822;x@y" : NULL, i % 16);
	}
	qf_round_trip(f->path, &env);

	/* One more recipient is refused by the writer. */
	queue_env_add_rcpt(&env, "over@example.com", NULL, NULL, 0);
	int fd = qf_new_file(f->path, test_body, sizeof(test_body) - 1);
	errno = 0;
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, EINVAL);
	close(fd);
	queue_env_free(&env);
	queue_env_free(&env);   /* safe on an emptied env */
}

static void test_round_trip_minimal(void **state)
{
	struct qf_fixture *f = *state;
	struct queue_env env;

	/* Null sender, local injection, no optional records, no recipients. */
	qf_base_env(&env);
	free(env.client_ip);
	free(env.sender);
	env.client_ip = xstrdup("");
	env.sender = xstrdup("");
	env.ret = 1;
	qf_round_trip(f->path, &env);
	queue_env_add_rcpt(&env, "bob@example.com", NULL, NULL, 0);
	assert_string_equal(env.rcpt[0].orig, "bob@example.com");
	qf_round_trip(f->path, &env);
	queue_env_free(&env);
}

static void test_hostile_values(void **state)
{
	struct qf_fixture *f = *state;
	struct queue_env env;
	char *big;
	int fd;

	qf_base_env(&env);
	free(env.helo);
	free(env.sender);
	env.helo = xstrdup("x\r\nZ0:\nKALEQ001 0000000000000000 0000000000000000     \n");
	env.sender = xstrdup("a\nR5:abcde\nZ0:\n@x");
	env.envid = xstrdup("\n\n\r\r");
	env.auth_user = xstrdup("n0:a1:b");
	queue_env_add_rcpt(&env, "a3:foon1:0\n@x", "o0:\r\n", "p1:Z\nZ0:\n", 15);
	queue_env_add_rcpt(&env, "", "", "", 1);   /* empty values round-trip too */
	big = xmalloc(QUEUE_VALUE_MAX + 2);
	memset(big, '\n', QUEUE_VALUE_MAX + 1);
	big[QUEUE_VALUE_MAX] = '\0';               /* exactly the maximum */
	queue_env_add_rcpt(&env, big, big, big, 8);
	qf_round_trip(f->path, &env);

	/* One byte more is refused, for envelope and recipient values. */
	big[QUEUE_VALUE_MAX] = 'x';
	big[QUEUE_VALUE_MAX + 1] = '\0';
	fd = qf_new_file(f->path, test_body, sizeof(test_body) - 1);
	queue_env_add_rcpt(&env, "ok@x", big, NULL, 0);
	errno = 0;
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, E2BIG);
	close(fd);
	queue_env_free(&env);

	qf_base_env(&env);
	free(env.sender);
	env.sender = big;
	fd = qf_new_file(f->path, test_body, sizeof(test_body) - 1);
	errno = 0;
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, E2BIG);
	close(fd);
	queue_env_free(&env);

	/* Bad qid / notify are refused by the writer. */
	qf_base_env(&env);
	memcpy(env.qid, "../../etc/passwd", sizeof("../../etc/passwd"));
	fd = qf_new_file(f->path, test_body, sizeof(test_body) - 1);
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, EINVAL);
	queue_qid_new(env.qid);
	queue_env_add_rcpt(&env, "a@b", NULL, NULL, 16);
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, EINVAL);
	close(fd);
	queue_env_free(&env);
}

static void test_truncated_every_length(void **state)
{
	struct qf_fixture *f = *state;
	struct queue_env env, back;
	const char *error;
	struct stat st;
	int fd;

	qf_base_env(&env);
	env.envid = xstrdup("E1");
	queue_env_add_rcpt(&env, "a@example.com", NULL, "rfc822;a@example.com", 6);
	queue_env_add_rcpt(&env, "b@example.com", NULL, NULL, 0);
	fd = qf_new_file(f->path, test_body, sizeof(test_body) - 1);
	assert_int_equal(queue_file_finish(fd, &env), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(st.st_size > QUEUE_TRAILER_LEN + (off_t)sizeof(test_body));

	/* Every shorter prefix of the file is refused. */
	for (off_t len = st.st_size - 1; len >= 0; len--) {
		assert_int_equal(ftruncate(fd, len), 0);
		error = NULL;
		assert_int_equal(queue_file_read_env(fd, &back, &error), -1);
		assert_non_null(error);
		assert_int_equal(back.n_rcpt, 0);
		assert_null(back.rcpt);
	}
	/* Finishing again after a truncation works (a retry after ENOSPC). */
	assert_int_equal(ftruncate(fd, (off_t)env.body_len), 0);
	assert_int_equal(queue_file_finish(fd, &env), 0);
	assert_int_equal(queue_file_read_env(fd, &back, &error), 0);
	queue_env_free(&back);
	/* Bytes appended after the trailer make the file invalid. */
	assert_int_equal(pwrite(fd, "x", 1, st.st_size), 1);
	assert_int_equal(queue_file_read_env(fd, &back, &error), -1);
	assert_string_equal(error, "bad trailer");
	/* ... and finish with a longer file truncates the stale tail. */
	assert_int_equal(queue_file_finish(fd, &env), 0);
	assert_int_equal(queue_file_read_env(fd, &back, &error), 0);
	queue_env_free(&back);
	close(fd);
	queue_env_free(&env);
}

/* Writes body + raw envelope + a trailer computed for it; returns the
 * reader's result, freeing what it read. */
static int qf_try_raw(const char *path, const char *envbuf, size_t envlen, const char **error)
{
	struct queue_env back;
	char trailer[QUEUE_TRAILER_LEN + 1];
	size_t blen = sizeof(test_body) - 1;
	int fd = qf_new_file(path, test_body, blen);
	int rc;

	assert_int_equal(util_fmt(trailer, sizeof(trailer), "KALEQ001 %016zx %016zx     \n", blen,
	    envlen), 0);
	assert_int_equal(write(fd, envbuf, envlen), (ssize_t)envlen);
	assert_int_equal(write(fd, trailer, QUEUE_TRAILER_LEN), QUEUE_TRAILER_LEN);
	*error = NULL;
	rc = queue_file_read_env(fd, &back, error);
	if (rc == 0)
		queue_env_free(&back);
	else
		assert_null(back.rcpt);
	close(fd);
	return rc;
}

#define QF_HEAD "V1:1\nQ24:0123456789ABCDEF01234567\nT10:1700000000\nC9:192.0.2.1\nH1:h\n"

static int qf_try(const char *path, const char *s)
{
	const char *error;
	int rc = qf_try_raw(path, s, strlen(s), &error);

	if (rc < 0)
		assert_string_equal(error, "bad record");
	return rc;
}

static void test_corrupted_records(void **state)
{
	struct qf_fixture *f = *state;
	const char *error;

	/* The baseline is valid, so each failure below is the change. */
	assert_int_equal(qf_try(f->path, QF_HEAD "S3:a@b\nF0:\nR17:a3:x@yo0:p1:zn1:6\nZ0:\n"), 0);
	assert_int_equal(qf_try(f->path, QF_HEAD "S3:a@b\nZ0:\n"), 0);
	assert_int_equal(qf_try(f->path, QF_HEAD "S3:a@b\nF4:R1U8\nZ0:\n"), 0);

	static const char *const bad[] = {
		QF_HEAD "S99999999999:a@b\nZ0:\n",          /* huge length */
		QF_HEAD "S4294967299:a@b\nZ0:\n",
		QF_HEAD "S65537:a@b\nZ0:\n",                /* over the value bound */
		QF_HEAD "S30:a@b\nZ0:\n",                   /* past the end */
		QF_HEAD "S03:a@b\nZ0:\n",                   /* leading zero */
		QF_HEAD "S-3:a@b\nZ0:\n",
		QF_HEAD "S:a@b\nZ0:\n",
		QF_HEAD "S3a@b\nZ0:\n",
		QF_HEAD "S3:a@bXZ0:\n",                     /* no newline after value */
		QF_HEAD "S3:a@b\n",                         /* no Z */
		QF_HEAD "S3:a@b\nZ0:\nS3:a@b\n",            /* data after Z */
		QF_HEAD "S3:a@b\nZ1:x\n",
		QF_HEAD "S3:a@b\nZ0:",
		QF_HEAD "S3:a@b\nX1:a\nZ0:\n",              /* unknown type */
		QF_HEAD "S3:a@b\nS3:a@b\nZ0:\n",            /* duplicate */
		QF_HEAD "Z0:\n",                            /* no sender */
		"Q24:0123456789ABCDEF01234567\nV1:1\nT1:1\nC0:\nH0:\nS0:\nZ0:\n", /* V not first */
		"V1:2\nQ24:0123456789ABCDEF01234567\nT1:1\nC0:\nH0:\nS0:\nZ0:\n", /* version 2 */
		"V1:1\nQ24:0123456789abcdef01234567\nT1:1\nC0:\nH0:\nS0:\nZ0:\n", /* bad qid */
		"V1:1\nQ5:../..\nT1:1\nC0:\nH0:\nS0:\nZ0:\n",
		"V1:1\nQ24:0123456789ABCDEF01234567\nT2:-1\nC0:\nH0:\nS0:\nZ0:\n",
		"V1:1\nQ24:0123456789ABCDEF01234567\nT2:1x\nC0:\nH0:\nS0:\nZ0:\n",
		QF_HEAD "S3:a@b\nF2:R3\nZ0:\n",             /* bad flags */
		QF_HEAD "S3:a@b\nF2:UU\nZ0:\n",
		QF_HEAD "S3:a@b\nF1:R\nZ0:\n",
		QF_HEAD "S3:a@b\nR12:a3:x@yo0:p0:\nZ0:\n",  /* no notify */
		QF_HEAD "S3:a@b\nR14:a3:x@yo0:n2:16\nZ0:\n", /* notify out of range */
		QF_HEAD "S3:a@b\nR14:a3:x@yo0:n2:01\nZ0:\n",
		QF_HEAD "S3:a@b\nR14:a3:x@yo0:n1:1X\nZ0:\n", /* trailing bytes */
		QF_HEAD "S3:a@b\nR13:o0:a3:x@yn1:1\nZ0:\n",  /* order */
		QF_HEAD "S3:a@b\nR10:a3:x@yn1:1\nZ0:\n",      /* no orig */
		QF_HEAD "S3:a@b\nR14:a20:x@yo0:n1:1\nZ0:\n",  /* sub-field past the record */
		QF_HEAD "S3:a@b\nR21:a3:x@yo0:p1:zp1:zn1:1\nZ0:\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (qf_try(f->path, bad[i]) != -1)
			fail_msg("accepted bad envelope %zu: %s", i, bad[i]);
	}

	/* NUL inside a value: top-level and inside a recipient. */
	static const char nul1[] = QF_HEAD "S3:a\0b\nZ0:\n";
	assert_int_equal(qf_try_raw(f->path, nul1, sizeof(nul1) - 1, &error), -1);
	assert_string_equal(error, "bad record");
	static const char nul2[] = QF_HEAD "S0:\nR13:a3:x\0yo0:n1:1\nZ0:\n";
	assert_int_equal(qf_try_raw(f->path, nul2, sizeof(nul2) - 1, &error), -1);
	static const char nul3[] = QF_HEAD "S0:\nR13:a3:xyzo0:n1:\0\nZ0:\n";
	assert_int_equal(qf_try_raw(f->path, nul3, sizeof(nul3) - 1, &error), -1);
	static const char nul4[] = QF_HEAD "S0:\n\0" "1:x\nZ0:\n";
	assert_int_equal(qf_try_raw(f->path, nul4, sizeof(nul4) - 1, &error), -1);
}

static void qf_write_trailer(const char *path, const char *env, const char *trailer,
    size_t tlen)
{
	int fd = qf_new_file(path, test_body, sizeof(test_body) - 1);

	assert_int_equal(write(fd, env, strlen(env)), (ssize_t)strlen(env));
	assert_int_equal(write(fd, trailer, tlen), (ssize_t)tlen);
	close(fd);
}

static int qf_read_path(const char *path, const char **error)
{
	struct queue_env back;
	int fd = open(path, O_RDONLY), rc;

	assert_true(fd >= 0);
	*error = NULL;
	rc = queue_file_read_env(fd, &back, error);
	queue_env_free(&back);
	close(fd);
	return rc;
}

static void test_bad_trailer(void **state)
{
	struct qf_fixture *f = *state;
	static const char env[] = QF_HEAD "S0:\nZ0:\n";
	const unsigned long long blen = sizeof(test_body) - 1, elen = sizeof(env) - 1;
	/* off/len pairs around the right ones (blen, elen) */
	const unsigned long long pairs[][2] = {
		{ blen - 1, elen }, { blen + 1, elen }, { blen, elen - 1 }, { blen, elen + 1 },
		{ blen - 1, elen + 1 }, { 0, blen + elen }, { ~0ull, elen }, { blen, ~0ull },
		{ ~0ull - blen, blen + elen }, { blen, 0 }, { 0x7fffffffffffffffull, 1 },
	};
	static const char *const literal[] = {
		"KALEQ002 %016llx %016llx     \n", "kaleq001 %016llx %016llx     \n",
		"KALEQ001 %016llx-%016llx     \n", "KALEQ001 %016llx %016llx    x\n",
		"KALEQ001 %016llx %016llx      ", "KALEQ001 %016llx %016llx\n     ",
		"KALEQ001 +%015llx %016llx     \n",
	};
	char trailer[QUEUE_TRAILER_LEN + 1];
	const char *error;
	int fd;
	struct queue_env back;

	assert_int_equal(util_fmt(trailer, sizeof(trailer), "KALEQ001 %016llx %016llx     \n",
	    blen, elen), 0);
	qf_write_trailer(f->path, env, trailer, QUEUE_TRAILER_LEN);
	assert_int_equal(qf_read_path(f->path, &error), 0);
	/* Upper-case hex is accepted too. */
	assert_int_equal(util_fmt(trailer, sizeof(trailer), "KALEQ001 %016llX %016llX     \n",
	    blen, elen), 0);
	qf_write_trailer(f->path, env, trailer, QUEUE_TRAILER_LEN);
	assert_int_equal(qf_read_path(f->path, &error), 0);

	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		assert_int_equal(util_fmt(trailer, sizeof(trailer), "KALEQ001 %016llx %016llx     \n",
		    pairs[i][0], pairs[i][1]), 0);
		qf_write_trailer(f->path, env, trailer, QUEUE_TRAILER_LEN);
		if (qf_read_path(f->path, &error) != -1)
			fail_msg("accepted trailer pair %zu", i);
		assert_non_null(error);   /* "bad trailer", or "bad record" when consistent */
	}
	for (size_t i = 0; i < sizeof(literal) / sizeof(literal[0]); i++) {
		memset(trailer, 0, sizeof(trailer));
		if (snprintf(trailer, sizeof(trailer), literal[i], blen, elen) < 0)
			fail();
		qf_write_trailer(f->path, env, trailer, QUEUE_TRAILER_LEN);
		if (qf_read_path(f->path, &error) != -1)
			fail_msg("accepted trailer %zu", i);
		assert_string_equal(error, "bad trailer");
	}
	/* A short file is "truncated"; a directory is refused. */
	qf_write_trailer(f->path, "", "", 0);
	assert_int_equal(truncate(f->path, 10), 0);
	assert_int_equal(qf_read_path(f->path, &error), -1);
	assert_string_equal(error, "truncated");
	fd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_int_equal(queue_file_read_env(fd, &back, &error), -1);
	close(fd);
}

static void test_finish_write_error(void **state)
{
	struct qf_fixture *f = *state;
	struct queue_env env;
	struct rlimit old, lim;
	struct stat st;
	void (*oldsig)(int);
	char *body = xmalloc(4000);
	int fd, rc, saved;

	qf_base_env(&env);
	env.body_len = 4000;
	for (int i = 0; i < 200; i++)
		queue_env_add_rcpt(&env, "someone.with.a.long.name@example.com", NULL, NULL, 0);
	memset(body, 'x', 4000);
	fd = qf_new_file(f->path, body, 4000);
	/* RLIMIT_FSIZE turns the write into EFBIG: the same path as ENOSPC. */
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	oldsig = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 4100;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	rc = queue_file_finish(fd, &env);
	saved = errno;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_int_equal(rc, -1);
	assert_int_equal(saved, EFBIG);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 4000);   /* truncated back to the body */
	/* O_APPEND fd not at body_len is refused. */
	close(fd);
	fd = open(f->path, O_WRONLY | O_APPEND);
	env.body_len = 10;
	assert_int_equal(queue_file_finish(fd, &env), -1);
	assert_int_equal(errno, EINVAL);
	env.body_len = 4000;
	assert_int_equal(queue_file_finish(fd, &env), 0);
	close(fd);
	free(body);
	queue_env_free(&env);
}

static void test_done_log(void **state)
{
	struct qf_fixture *f = *state;
	const char *qid = "000000000000000000000001";
	unsigned char done[8];
	int dfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	int idx[3];
	char path[160];
	struct stat st;
	int fd;

	assert_true(dfd >= 0);
	/* Missing file: nothing done. */
	memset(done, 7, sizeof(done));
	assert_int_equal(queue_done_read(dfd, qid, done, 6), 0);
	for (int i = 0; i < 6; i++)
		assert_int_equal(done[i], 0);

	idx[0] = 0;
	idx[1] = 2;
	assert_int_equal(queue_done_append(dfd, qid, idx, 2), 0);
	idx[0] = 5;
	assert_int_equal(queue_done_append(dfd, qid, idx, 1), 0);
	assert_int_equal(util_fmt(path, sizeof(path), "%s/%s", f->dir, qid), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 30);
	assert_int_equal(queue_done_read(dfd, qid, done, 6), 0);
	assert_memory_equal(done, "\1\0\1\0\0\1", 6);

	/* Out-of-range indexes (in the file or vs. n_rcpt) are ignored. */
	assert_int_equal(queue_done_read(dfd, qid, done, 3), 0);
	assert_memory_equal(done, "\1\0\1", 3);
	fd = open(path, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "D000000ff\nDzzzzzzzz\nD0000000100\nX00000001\n", 42), 42);
	/* A torn record in the middle (a failed append) ... */
	assert_int_equal(write(fd, "D000", 4), 4);
	close(fd);
	/* ... does not hide the records appended after it. */
	idx[0] = 3;
	assert_int_equal(queue_done_append(dfd, qid, idx, 1), 0);
	assert_int_equal(queue_done_read(dfd, qid, done, 6), 0);
	assert_memory_equal(done, "\1\0\1\1\0\1", 6);
	/* A torn last record is ignored. */
	fd = open(path, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "D00000004", 9), 9);
	close(fd);
	assert_int_equal(queue_done_read(dfd, qid, done, 6), 0);
	assert_memory_equal(done, "\1\0\1\1\0\1", 6);

	/* Bad arguments. */
	idx[0] = -1;
	assert_int_equal(queue_done_append(dfd, qid, idx, 1), -1);
	assert_int_equal(queue_done_append(dfd, "../x", idx, 0), -1);
	assert_int_equal(queue_done_read(dfd, "../x", done, 6), -1);
	assert_int_equal(queue_done_append(dfd, qid, idx, 0), 0);
	close(dfd);
}

static void test_qid(void **state)
{
	enum { N = 10000 };
	char (*ids)[32] = xmalloc(sizeof(*ids) * N);

	(void)state;
	for (int i = 0; i < N; i++) {
		queue_qid_new(ids[i]);
		assert_int_equal(strlen(ids[i]), 24);
		assert_true(queue_qid_valid(ids[i]));
		/* strictly ascending implies all distinct */
		if (i > 0 && strcmp(ids[i - 1], ids[i]) >= 0)
			fail_msg("qid %d not ascending: %s then %s", i, ids[i - 1], ids[i]);
	}
	/* Same node, same process: the last 11 digits are the same. */
	assert_memory_equal(ids[0] + 13, ids[N - 1] + 13, 11);
	free(ids);

	assert_true(queue_qid_valid("0123456789ABCDEF01234567"));
	assert_false(queue_qid_valid("0123456789abcdef01234567"));
	assert_false(queue_qid_valid("0123456789ABCDEF0123456"));
	assert_false(queue_qid_valid("0123456789ABCDEF012345678"));
	assert_false(queue_qid_valid("0123456789ABCDEF0123456G"));
	assert_false(queue_qid_valid("../../../../etc/passwd00"));
	assert_false(queue_qid_valid(""));
	assert_false(queue_qid_valid(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip_many, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_round_trip_minimal, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_hostile_values, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_truncated_every_length, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_corrupted_records, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_bad_trailer, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_finish_write_error, qf_setup, qf_teardown),
		cmocka_unit_test_setup_teardown(test_done_log, qf_setup, qf_teardown),
		cmocka_unit_test(test_qid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
