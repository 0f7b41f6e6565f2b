/* unit_store.h: what the unit tests of the policy store and of its users
 * share: a fresh SQLite store in a temp dir (the test's cwd while it runs)
 * and an address from text. Included by test_*.c only, after cmocka.h. */
#ifndef KALE_UNIT_STORE_H
#define KALE_UNIT_STORE_H

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/util.h"
#include "store/store.h"

struct fix {
	char dir[64];
	char old[4096];
	struct kale_config cfg;
	store *st;
};

/* A new store, migrated, in a new temp dir named after prefix. */
static inline struct fix *unit_store_new(const char *prefix)
{
	struct fix *f = xcalloc(1, sizeof(*f));
	char *err = NULL;

	snprintf(f->dir, sizeof(f->dir), "/tmp/kale-test-%s-XXXXXX", prefix);
	assert_non_null(mkdtemp(f->dir));
	assert_non_null(getcwd(f->old, sizeof(f->old)));
	assert_int_equal(chdir(f->dir), 0);
	f->cfg.db_url = "sqlite:kale.db";
	assert_int_equal(store_open_migrate(&f->cfg, &f->st, &err), 0);
	return f;
}

/* Closes the store, removes its files and the temp dir. */
static inline int unit_store_free(void **state)
{
	struct fix *f = *state;
	const char *files[] = { "kale.db", "kale.db-wal", "kale.db-shm" };

	store_close(&f->st);
	for (size_t i = 0; i < 3; i++)
		unlink(files[i]);
	assert_int_equal(chdir(f->old), 0);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* An IPv4 or IPv6 address (with a ':') as a socket address. */
static inline struct sockaddr_storage unit_sa(const char *ip)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
	}
	return ss;
}

#endif
