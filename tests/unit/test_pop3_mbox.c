/* test_pop3_mbox: the POP3 view of a Maildir in a temp folder: sizes, UIDs,
 * order, seen flags, another session moving or deleting files, UPDATE. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "pop3/pop3_mbox.h"

static char root[64];

static void put(const char *rel, const char *content)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

static int exists(const char *rel)
{
	char path[512];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	return stat(path, &st) == 0;
}

static int setup(void **state)
{
	char path[512];

	(void)state;
	snprintf(root, sizeof(root), "/tmp/kale-pop3-XXXXXX");
	if (mkdtemp(root) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/new", root);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/cur", root);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/tmp", root);
	mkdir(path, 0700);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_missing_maildir_is_empty(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;
	uint32_t n;
	uint64_t size;

	(void)state;
	assert_int_equal(pop3_mbox_open("/nonexistent/kale/box", &mb, &err), 0);
	pop3_mbox_stat(mb, &n, &size);
	assert_int_equal(n, 0);
	assert_int_equal(size, 0);
	pop3_mbox_free(&mb);
	assert_null(mb);
	pop3_mbox_free(&mb);
}

static void test_scan_sizes_uids(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;
	uint32_t n;
	uint64_t size;

	(void)state;
	put("new/200.b.host", "Subject: b\n\nbody\n");          /* 17 + 3 = 20 */
	put("new/1000.z.host", "z\n");                         /* 3, sorts last of numbers */
	put("cur/100.a.host:2,S", "Subject: a\r\n\r\nx\r\n");   /* 17 */
	put("new/.hidden", "ignored\n");
	put("cur/300.c.host:2,", "no newline");                 /* 10 + 2 = 12 */
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(mb->n, 4);
	assert_string_equal(mb->msgs[0].uid, "100.a.host");
	assert_int_equal(mb->msgs[0].size, 17);
	assert_int_equal(mb->msgs[0].in_new, 0);
	assert_string_equal(mb->msgs[1].uid, "200.b.host");
	assert_int_equal(mb->msgs[1].size, 20);
	assert_int_equal(mb->msgs[1].in_new, 1);
	assert_string_equal(mb->msgs[2].uid, "300.c.host");
	assert_int_equal(mb->msgs[2].size, 12);
	assert_string_equal(mb->msgs[3].uid, "1000.z.host");
	pop3_mbox_stat(mb, &n, &size);
	assert_int_equal(n, 4);
	assert_int_equal(size, 17 + 20 + 12 + 3);
	mb->msgs[1].deleted = 1;
	pop3_mbox_stat(mb, &n, &size);
	assert_int_equal(n, 3);
	assert_int_equal(size, 17 + 12 + 3);
	pop3_mbox_free(&mb);
}

static void test_hashed_uid(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;
	char uid[65];

	(void)state;
	put("new/has space:2,S", "x\n");   /* not a valid UIDL: hashed, stably */
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(mb->n, 1);
	assert_int_equal(strlen(mb->msgs[0].uid), 64);
	memcpy(uid, mb->msgs[0].uid, sizeof(uid));
	assert_int_equal(pop3_mbox_mark_seen(mb, 0), 0);
	assert_true(exists("cur/has space:2,S"));
	pop3_mbox_free(&mb);
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_string_equal(mb->msgs[0].uid, uid);
	pop3_mbox_free(&mb);
}

static void test_duplicate_in_new_and_cur(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;

	(void)state;
	put("new/400.d.host", "x\n");
	put("cur/400.d.host:2,S", "x\n");
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(mb->n, 1);
	assert_int_equal(mb->msgs[0].in_new, 0);
	pop3_mbox_free(&mb);
}

static void test_seen_relocate_vanish_commit(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;
	uint32_t failed = 9;
	char from[512], to[512];
	int fd;

	(void)state;
	put("new/500.e.host", "e\n");
	put("new/600.f.host", "f\n");
	put("new/700.g.host", "g\n");
	put("cur/800.h.host:2,F", "h\n");
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(mb->n, 4);

	/* RETR marks seen: new -> cur with S; cur flags gain S in order */
	assert_int_equal(pop3_mbox_mark_seen(mb, 0), 0);
	assert_true(exists("cur/500.e.host:2,S"));
	assert_false(exists("new/500.e.host"));
	assert_int_equal(pop3_mbox_mark_seen(mb, 3), 0);
	assert_true(exists("cur/800.h.host:2,FS"));
	fd = pop3_mbox_open_msg(mb, 0, &err);
	assert_true(fd >= 0);
	close(fd);

	/* another session moved 600 to cur/: still found by its UID */
	snprintf(from, sizeof(from), "%s/new/600.f.host", root);
	snprintf(to, sizeof(to), "%s/cur/600.f.host:2,S", root);
	assert_int_equal(rename(from, to), 0);
	fd = pop3_mbox_open_msg(mb, 1, &err);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(mb->msgs[1].in_new, 0);

	/* another session deleted 700 */
	snprintf(from, sizeof(from), "%s/new/700.g.host", root);
	assert_int_equal(unlink(from), 0);
	assert_int_equal(pop3_mbox_open_msg(mb, 2, &err), -1);
	assert_string_equal(err, "message vanished");

	/* UPDATE: 500 and the vanished 700 deleted; 600 and 800 stay */
	mb->msgs[0].deleted = 1;
	mb->msgs[2].deleted = 1;
	assert_int_equal(pop3_mbox_commit(mb, &failed), 2);
	assert_int_equal(failed, 0);
	assert_false(exists("cur/500.e.host:2,S"));
	assert_true(exists("cur/600.f.host:2,S"));
	assert_true(exists("cur/800.h.host:2,FS"));
	pop3_mbox_free(&mb);
}

static void test_commit_moves_new_to_cur(void **state)
{
	struct pop3_mbox *mb = NULL;
	const char *err = NULL;
	uint32_t failed;

	(void)state;
	put("new/900.i.host", "i\n");
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(pop3_mbox_commit(mb, &failed), 0);
	assert_true(exists("cur/900.i.host:2,"));
	assert_false(exists("new/900.i.host"));
	pop3_mbox_free(&mb);
	/* and the UID is the same in the next session */
	assert_int_equal(pop3_mbox_open(root, &mb, &err), 0);
	assert_int_equal(mb->n, 1);
	assert_string_equal(mb->msgs[0].uid, "900.i.host");
	pop3_mbox_free(&mb);
}

static void test_name_order(void **state)
{
	(void)state;
	assert_true(pop3_mbox_name_cmp("1700.M99P1Q1.h", "1700.M100P1Q1.h") < 0);
	assert_true(pop3_mbox_name_cmp("1700.M100P1Q1.h", "1700.M99P1Q1.h") > 0);
	assert_true(pop3_mbox_name_cmp("999.M5P1Q1.h", "1000.M1P1Q1.h") < 0);
	assert_true(pop3_mbox_name_cmp("1700.M5P1Q2.h", "1700.M5P1Q10.h") < 0);
	assert_int_equal(pop3_mbox_name_cmp("abc", "abc"), 0);
	assert_true(pop3_mbox_name_cmp("abc", "abd") < 0);
	assert_true(pop3_mbox_name_cmp("ab", "abc") < 0);
	assert_true(pop3_mbox_name_cmp("a\xff", "a1") > 0);
	assert_int_equal(pop3_mbox_name_cmp("a007", "a7"), 0);
	assert_true(pop3_mbox_name_cmp("a0", "a00x") < 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_missing_maildir_is_empty),
		cmocka_unit_test(test_name_order),
		cmocka_unit_test_setup_teardown(test_scan_sizes_uids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hashed_uid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_in_new_and_cur, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seen_relocate_vanish_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_moves_new_to_cur, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
