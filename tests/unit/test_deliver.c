/* test_deliver: Maildir write/commit/abort, mailbox path encoding of hostile
 * addresses, mbox append with mboxrd quoting and locking, write errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "deliver/deliver.h"
#include "lib/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char dl_prefix[] = "Return-Path: <a@example.org>\nDelivered-To: u@example.com\n";
static const char dl_body[] = "Subject: t\n\nFrom me\nline\n";
static const char dl_trailing[] = "V1:1\nQ0:\nZ0:\n";   /* stands in for the envelope */

struct dl_fixture {
	char dir[64];
};

static int dl_rm_rf_cb(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[PATH_MAX];

	if (d == NULL)
		return unlink(path);
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (util_fmt(sub, sizeof(sub), "%s/%s", path, e->d_name) == 0)
			dl_rm_rf_cb(sub);
	}
	closedir(d);
	return rmdir(path);
}

static int dl_setup(void **state)
{
	struct dl_fixture *f = xcalloc(1, sizeof(*f));

	memcpy(f->dir, "/tmp/kale-dl-XXXXXX", sizeof("/tmp/kale-dl-XXXXXX"));
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

static int dl_teardown(void **state)
{
	struct dl_fixture *f = *state;

	dl_rm_rf_cb(f->dir);
	free(f);
	return 0;
}

/* A "queue file": body followed by other bytes, position moved to 7. */
static int dl_src(const char *dir, const char *body, size_t len)
{
	char path[PATH_MAX];
	int fd;

	assert_int_equal(util_fmt(path, sizeof(path), "%s/queuefile", dir), 0);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, body, len), (ssize_t)len);
	assert_int_equal(write(fd, dl_trailing, sizeof(dl_trailing) - 1),
	    (ssize_t)sizeof(dl_trailing) - 1);
	assert_int_equal(lseek(fd, 7, SEEK_SET), 7);
	unlink(path);
	return fd;
}

static int dl_count(const char *dir, char *name_r, size_t cap)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (name_r != NULL)
			assert_int_equal(util_fmt(name_r, cap, "%s", e->d_name), 0);
		n++;
	}
	closedir(d);
	return n;
}

static char *dl_read(const char *path, size_t *len)
{
	char *s = fs_read_file(path, 64 * 1024 * 1024, len);

	assert_non_null(s);
	return s;
}

static void test_mailbox_path(void **state)
{
	char out[PATH_MAX];
	struct {
		const char *addr, *want;
	} cases[] = {
		{ "User@Example.COM", "/m/example.com/user" },
		{ "../x@example.com", "/m/example.com/%2E.%2Fx" },
		{ "a/b@example.com", "/m/example.com/a%2Fb" },
		{ ".hidden@example.com", "/m/example.com/%2Ehidden" },
		{ "..@example.com", "/m/example.com/%2E." },
		{ ".@example.com", "/m/example.com/%2E" },
		{ "x@..", "/m/%2E./x" },
		{ "x@../../etc", "/m/%2E.%2F..%2Fetc/x" },
		{ "a%2Fb@d", "/m/d/a%252fb" },
		{ "a\nb\r\x7f@d", "/m/d/a%0Ab%0D%7F" },
		{ "\"a@b\"@d", "/m/d/\"a@b\"" },
		{ "j\xc3\xbcrgen@d", "/m/d/j\xc3\xbcrgen" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(deliver_mailbox_path("/m", cases[i].addr, out, sizeof(out)), 0);
		assert_string_equal(out, cases[i].want);
		/* never a ".." or "." component, never more than two levels */
		assert_null(strstr(out, "/../"));
		assert_null(strstr(out, "/./"));
		assert_null(strchr(strchr(out + 3, '/') + 1, '/'));
	}
	assert_int_equal(deliver_mailbox_path("/m", "nodomain", out, sizeof(out)), -1);
	assert_int_equal(deliver_mailbox_path("/m", "@d", out, sizeof(out)), -1);
	assert_int_equal(deliver_mailbox_path("/m", "a@", out, sizeof(out)), -1);
	assert_int_equal(deliver_mailbox_path("/m", "", out, sizeof(out)), -1);
	assert_int_equal(deliver_mailbox_path("/m", "user@example.com", out, 12), -1);
	assert_int_equal(deliver_mailbox_path("/m", "user@example.com", out, 19), -1);
	assert_int_equal(deliver_mailbox_path("/m", "user@example.com", out, 20), 0);
	/* a component longer than NAME_MAX */
	char big[400];
	memset(big, 'a', 300);
	memcpy(big + 300, "@d", 3);
	assert_int_equal(deliver_mailbox_path("/m", big, out, sizeof(out)), -1);
	memset(big, '/', 100);
	memcpy(big + 100, "@d", 3);
	assert_int_equal(deliver_mailbox_path("/m", big, out, sizeof(out)), -1);
}

static void dl_check_maildir(const char *mbox, const char *body, size_t blen)
{
	char sub[PATH_MAX], name[NAME_MAX + 1], path[PATH_MAX];
	struct stat st;
	size_t len;
	char *got;

	assert_int_equal(util_fmt(sub, sizeof(sub), "%s/tmp", mbox), 0);
	assert_int_equal(dl_count(sub, NULL, 0), 0);
	assert_int_equal(stat(sub, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(util_fmt(sub, sizeof(sub), "%s/cur", mbox), 0);
	assert_int_equal(dl_count(sub, NULL, 0), 0);
	assert_int_equal(util_fmt(sub, sizeof(sub), "%s/new", mbox), 0);
	assert_int_equal(dl_count(sub, name, sizeof(name)), 1);
	/* "<sec>.M<usec>P<pid>Q<n>.<host>": no ':' (the info separator), no '/' */
	assert_non_null(strstr(name, ".M"));
	assert_non_null(strchr(name, 'P'));
	assert_null(strchr(name, ':'));
	assert_int_equal(util_fmt(path, sizeof(path), "%s/%s", sub, name), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	got = dl_read(path, &len);
	assert_int_equal(len, sizeof(dl_prefix) - 1 + blen);
	assert_memory_equal(got, dl_prefix, sizeof(dl_prefix) - 1);
	assert_memory_equal(got + sizeof(dl_prefix) - 1, body, blen);
	free(got);
}

static void test_maildir_write_commit(void **state)
{
	struct dl_fixture *f = *state;
	struct deliver_pending p[3];
	char mbox[3][PATH_MAX];
	const char *error = NULL;
	int ok[3] = { -1, -1, -1 };
	int src = dl_src(f->dir, dl_body, sizeof(dl_body) - 1);
	int syncfd = open(f->dir, O_RDONLY | O_DIRECTORY);

	assert_int_equal(deliver_mailbox_path(f->dir, "u@example.com", mbox[0], PATH_MAX), 0);
	assert_int_equal(deliver_mailbox_path(f->dir, "v@example.com", mbox[1], PATH_MAX), 0);
	memcpy(mbox[2], mbox[0], PATH_MAX);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(maildir_write(mbox[i], dl_prefix, sizeof(dl_prefix) - 1, src,
		    sizeof(dl_body) - 1, &p[i], &error), 0);
		assert_int_equal(access(p[i].tmp_path, F_OK), 0);
		assert_int_equal(access(p[i].new_path, F_OK), -1);
	}
	assert_string_not_equal(p[0].tmp_path, p[2].tmp_path);
	assert_int_equal(lseek(src, 0, SEEK_CUR), 7);   /* position untouched */
	assert_int_equal(maildir_commit(p, 3, syncfd, ok), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(ok[i], 1);
		assert_int_equal(access(p[i].tmp_path, F_OK), -1);
		assert_int_equal(access(p[i].new_path, F_OK), 0);
	}
	dl_check_maildir(mbox[1], dl_body, sizeof(dl_body) - 1);
	assert_int_equal(maildir_commit(p, 0, syncfd, ok), 0);
	close(syncfd);
	close(src);
}

static void test_maildir_big_and_cross_fs(void **state)
{
	struct dl_fixture *f = *state;
	const size_t blen = 3 * 1024 * 1024 + 17;   /* several copy chunks */
	char *body = xmalloc(blen);
	char mbox[PATH_MAX], shm[] = "/dev/shm/kale-dl-XXXXXX";
	struct deliver_pending p;
	const char *error;
	int ok, src, syncfd = open(f->dir, O_RDONLY | O_DIRECTORY);

	for (size_t i = 0; i < blen; i++)
		body[i] = (char)("abc\n"[i % 4] + (i / 4096) % 7);
	src = dl_src(f->dir, body, blen);
	assert_int_equal(util_fmt(mbox, sizeof(mbox), "%s/big", f->dir), 0);
	assert_int_equal(maildir_write(mbox, dl_prefix, sizeof(dl_prefix) - 1, src, blen, &p,
	    &error), 0);
	assert_int_equal(maildir_commit(&p, 1, syncfd, &ok), 1);
	dl_check_maildir(mbox, body, blen);
	close(src);

	/* Source on another file system (tmpfs): copy_file_range may say
	 * EXDEV and the pread/pwrite fallback takes over. */
	if (mkdtemp(shm) != NULL) {
		src = dl_src(shm, body, blen);
		rmdir(shm);
		assert_int_equal(util_fmt(mbox, sizeof(mbox), "%s/xfs", f->dir), 0);
		assert_int_equal(maildir_write(mbox, dl_prefix, sizeof(dl_prefix) - 1, src, blen,
		    &p, &error), 0);
		assert_int_equal(maildir_commit(&p, 1, syncfd, &ok), 1);
		dl_check_maildir(mbox, body, blen);
		close(src);
	}
	/* Empty prefix and empty body. */
	src = dl_src(f->dir, "", 0);
	assert_int_equal(util_fmt(mbox, sizeof(mbox), "%s/empty", f->dir), 0);
	assert_int_equal(maildir_write(mbox, "", 0, src, 0, &p, &error), 0);
	assert_int_equal(maildir_commit(&p, 1, syncfd, &ok), 1);
	close(src);
	free(body);
	close(syncfd);
}

static void test_maildir_abort_and_errors(void **state)
{
	struct dl_fixture *f = *state;
	struct deliver_pending p[2];
	char mbox[PATH_MAX], tmpdir[PATH_MAX], newdir[PATH_MAX];
	const char *error = NULL;
	struct rlimit old, lim;
	void (*oldsig)(int);
	int src = dl_src(f->dir, dl_body, sizeof(dl_body) - 1);
	int syncfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	int ok[2], rc, saved;
	char *body;

	assert_int_equal(util_fmt(mbox, sizeof(mbox), "%s/ab", f->dir), 0);
	assert_int_equal(util_fmt(tmpdir, sizeof(tmpdir), "%s/tmp", mbox), 0);
	assert_int_equal(util_fmt(newdir, sizeof(newdir), "%s/new", mbox), 0);

	/* abort removes the tmp file; nothing reaches new/ */
	assert_int_equal(maildir_write(mbox, dl_prefix, sizeof(dl_prefix) - 1, src,
	    sizeof(dl_body) - 1, &p[0], &error), 0);
	assert_int_equal(dl_count(tmpdir, NULL, 0), 1);
	maildir_abort(&p[0]);
	maildir_abort(&p[0]);   /* twice is harmless */
	assert_int_equal(dl_count(tmpdir, NULL, 0), 0);
	assert_int_equal(dl_count(newdir, NULL, 0), 0);

	/* a source shorter than body_len: EIO, no partial file */
	error = NULL;
	assert_int_equal(maildir_write(mbox, dl_prefix, sizeof(dl_prefix) - 1, src, 100000, &p[0],
	    &error), -1);
	assert_int_equal(errno, EIO);
	assert_non_null(error);
	assert_int_equal(dl_count(tmpdir, NULL, 0), 0);

	/* a failing sync renames nothing and removes the tmp files */
	assert_int_equal(maildir_write(mbox, "", 0, src, 4, &p[0], &error), 0);
	assert_int_equal(maildir_write(mbox, "", 0, src, 4, &p[1], &error), 0);
	assert_int_equal(maildir_commit(p, 2, -1, ok), 0);
	assert_int_equal(ok[0] + ok[1], 0);
	assert_int_equal(dl_count(tmpdir, NULL, 0), 0);
	assert_int_equal(dl_count(newdir, NULL, 0), 0);

	/* new/ removed behind our back is re-created at commit */
	assert_int_equal(maildir_write(mbox, "", 0, src, 4, &p[0], &error), 0);
	assert_int_equal(rmdir(newdir), 0);
	assert_int_equal(maildir_commit(p, 1, syncfd, ok), 1);
	assert_int_equal(dl_count(newdir, NULL, 0), 1);

	/* A write error (EFBIG via RLIMIT_FSIZE, the same path as ENOSPC):
	 * -1, errno kept, the partial tmp file removed. */
	close(src);
	body = xcalloc(1, 200000);
	src = dl_src(f->dir, body, 200000);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	oldsig = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 100000;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	rc = maildir_write(mbox, dl_prefix, sizeof(dl_prefix) - 1, src, 200000, &p[0], &error);
	saved = errno;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_int_equal(rc, -1);
	assert_int_equal(saved, EFBIG);
	assert_int_equal(dl_count(tmpdir, NULL, 0), 0);
	assert_string_equal(p[0].tmp_path, "");

	/* A mailbox that cannot be created. */
	assert_int_equal(maildir_write("/proc/kale-no/x", "", 0, src, 1, &p[0], &error), -1);
	free(body);
	close(src);
	close(syncfd);
}

/* ---- mbox ---- */

static const char mb_body[] =
	"From: a@example.org\n"
	"Subject: quoting\n"
	"\n"
	"From me\n"
	">From x\n"
	">>From y\n"
	"From\n"
	"Fromage\n"
	" From z\n"
	">>>>\n"
	">Fro\n"
	"From \n"
	"no newline at end";
static const char mb_want[] =
	"Delivered-To: u@example.com\n"
	">From prefix\n"
	"From: a@example.org\n"
	"Subject: quoting\n"
	"\n"
	">From me\n"
	">>From x\n"
	">>>From y\n"
	"From\n"
	"Fromage\n"
	" From z\n"
	">>>>\n"
	">Fro\n"
	">From \n"
	"no newline at end\n"
	"\n";
static const char mb_prefix[] = "Delivered-To: u@example.com\nFrom prefix\n";

/* Checks one message at s: returns the position after it. */
static const char *mb_check_msg(const char *s, const char *sender)
{
	const char *nl = strchr(s, '\n');
	char want[128];

	assert_non_null(nl);
	assert_int_equal(util_fmt(want, sizeof(want), "From %s ", sender), 0);
	assert_memory_equal(s, want, strlen(want));
	/* asctime style: "Www Mmm dd hh:mm:ss yyyy" */
	assert_int_equal(nl - (s + strlen(want)), 24);
	assert_int_equal(s[strlen(want) + 13], ':');
	assert_memory_equal(nl + 1, mb_want, sizeof(mb_want) - 1);
	return nl + 1 + sizeof(mb_want) - 1;
}

struct mb_thread {
	const char *path;
	int src, rc;
};

static void *mb_thread_main(void *arg)
{
	struct mb_thread *t = arg;
	const char *error;

	t->rc = mbox_deliver(t->path, "late@example.org", mb_prefix, sizeof(mb_prefix) - 1, t->src,
	    sizeof(mb_body) - 1, &error);
	return NULL;
}

/* 1 once /proc/locks shows a blocked waiter on inode ino. */
static int mb_has_waiter(ino_t ino)
{
	char want[64], *s;
	size_t len;
	int found;

	s = fs_read_file("/proc/locks", 1024 * 1024, &len);
	if (s == NULL)
		return -1;
	if (util_fmt(want, sizeof(want), ":%llu ", (unsigned long long)ino) < 0)
		abort();
	found = 0;
	for (char *line = strtok(s, "\n"); line != NULL; line = strtok(NULL, "\n"))
		if (strstr(line, "->") != NULL && strstr(line, want) != NULL)
			found = 1;
	free(s);
	return found;
}

static void test_mbox(void **state)
{
	struct dl_fixture *f = *state;
	char path[PATH_MAX];
	const char *error = NULL, *s;
	int src = dl_src(f->dir, mb_body, sizeof(mb_body) - 1);
	struct stat st;
	size_t len;
	char *got;

	assert_int_equal(util_fmt(path, sizeof(path), "%s/mbox/example.com/u", f->dir), 0);
	assert_int_equal(mbox_deliver(path, "a@example.org", mb_prefix, sizeof(mb_prefix) - 1, src,
	    sizeof(mb_body) - 1, &error), 0);
	assert_int_equal(mbox_deliver(path, "", mb_prefix, sizeof(mb_prefix) - 1, src,
	    sizeof(mb_body) - 1, &error), 0);
	assert_int_equal(lseek(src, 0, SEEK_CUR), 7);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	got = dl_read(path, &len);
	s = mb_check_msg(got, "a@example.org");
	s = mb_check_msg(s, "MAILER-DAEMON");
	assert_int_equal(s - got, (ptrdiff_t)len);
	free(got);

	/* A hostile sender stays one word on the From line. */
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(mbox_deliver(path, "a b\nFrom x@y", mb_prefix, sizeof(mb_prefix) - 1, src,
	    sizeof(mb_body) - 1, &error), 0);
	got = dl_read(path, &len);
	mb_check_msg(got, "a_b_From_x@y");
	free(got);
	close(src);
}

static void test_mbox_lock(void **state)
{
	struct dl_fixture *f = *state;
	char path[PATH_MAX];
	int src = dl_src(f->dir, mb_body, sizeof(mb_body) - 1);
	int ready[2], release[2], fd, w;
	struct mb_thread t;
	pthread_t th;
	struct stat st;
	pid_t pid;
	char c;

	assert_int_equal(util_fmt(path, sizeof(path), "%s/lockbox", f->dir), 0);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "old\n", 4), 4);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(release), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The child holds the write lock until the parent says so. */
		struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		if (fcntl(fd, F_SETLKW, &lk) < 0)
			_exit(1);
		if (write(ready[1], "r", 1) != 1 || read(release[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(ready[1]);
	close(release[0]);
	assert_int_equal(read(ready[0], &c, 1), 1);

	t.path = path;
	t.src = src;
	t.rc = -2;
	assert_int_equal(pthread_create(&th, NULL, mb_thread_main, &t), 0);
	/* Wait (bounded) until the delivery is blocked on the lock. */
	for (int i = 0; i < 1000 && (w = mb_has_waiter(st.st_ino)) == 0; i++)
		usleep(10000);
	if (getenv("KALE_TEST_DEBUG") != NULL)
		fprintf(stderr, "waiter seen: %d\n", w);
	if (w == 1) {
		struct stat now;
		assert_int_equal(stat(path, &now), 0);
		assert_int_equal(now.st_size, 4);   /* nothing written while locked */
	}
	assert_int_equal(write(release[1], "g", 1), 1);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(waitpid(pid, &w, 0), pid);
	assert_true(WIFEXITED(w) && WEXITSTATUS(w) == 0);
	assert_int_equal(t.rc, 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(st.st_size > 4);
	close(ready[0]);
	close(release[1]);
	close(fd);
	close(src);
}

static void test_mbox_write_error(void **state)
{
	struct dl_fixture *f = *state;
	char path[PATH_MAX];
	const char *error = NULL;
	struct rlimit old, lim;
	void (*oldsig)(int);
	struct stat st;
	char *body = xmalloc(300000);
	int src, rc, saved;

	memset(body, 'y', 300000);
	src = dl_src(f->dir, body, 300000);
	assert_int_equal(util_fmt(path, sizeof(path), "%s/errbox", f->dir), 0);
	assert_int_equal(mbox_deliver(path, "a@b", "", 0, src, 1000, &error), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	oldsig = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 200000;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	rc = mbox_deliver(path, "a@b", "", 0, src, 300000, &error);
	saved = errno;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_int_equal(rc, -1);
	assert_int_equal(saved, EFBIG);
	assert_string_equal(error, "write failed");
	{
		struct stat now;
		assert_int_equal(stat(path, &now), 0);
		assert_int_equal(now.st_size, st.st_size);   /* truncated back */
	}
	/* a short source: truncated back as well */
	assert_int_equal(mbox_deliver(path, "a@b", "", 0, src, 400000, &error), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(stat(path, &st), 0);
	/* a symlink is refused */
	char link[PATH_MAX];
	assert_int_equal(util_fmt(link, sizeof(link), "%s/linkbox", f->dir), 0);
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(mbox_deliver(link, "a@b", "", 0, src, 10, &error), -1);
	free(body);
	close(src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mailbox_path),
		cmocka_unit_test_setup_teardown(test_maildir_write_commit, dl_setup, dl_teardown),
		cmocka_unit_test_setup_teardown(test_maildir_big_and_cross_fs, dl_setup, dl_teardown),
		cmocka_unit_test_setup_teardown(test_maildir_abort_and_errors, dl_setup, dl_teardown),
		cmocka_unit_test_setup_teardown(test_mbox, dl_setup, dl_teardown),
		cmocka_unit_test_setup_teardown(test_mbox_lock, dl_setup, dl_teardown),
		cmocka_unit_test_setup_teardown(test_mbox_write_error, dl_setup, dl_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
