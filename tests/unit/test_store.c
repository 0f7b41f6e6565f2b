/* test_store: the policy store against a fresh SQLite file in a temp dir:
 * migrations, domains, users, aliases, recipient resolution, networks, the
 * mail log and the bulk import, including injection-looking values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "lib/util.h"
#include "store/store.h"
#include "unit_store.h"

static int setup(void **state)
{
	*state = unit_store_new("store");
	return 0;
}

static void add_domain(store *st, const char *name, int local, const char *relay)
{
	struct store_domain d;
	char *err = NULL;

	memset(&d, 0, sizeof(d));
	snprintf(d.name, sizeof(d.name), "%s", name);
	d.local = local;
	snprintf(d.relay, sizeof(d.relay), "%s", relay ? relay : "");
	if (store_domain_add(st, &d, &err) != 0)
		fail_msg("add domain %s: %s", name, err);
}

static int domain_add_err(store *st, const char *name, int local, const char *relay,
    const char *tls, const char *expect)
{
	struct store_domain d;
	char *err = NULL;
	int rc;

	memset(&d, 0, sizeof(d));
	snprintf(d.name, sizeof(d.name), "%s", name);
	d.local = local;
	snprintf(d.relay, sizeof(d.relay), "%s", relay ? relay : "");
	snprintf(d.tls, sizeof(d.tls), "%s", tls ? tls : "");
	rc = store_domain_add(st, &d, &err);
	if (rc == 0)
		return 0;
	assert_non_null(err);
	if (expect != NULL && strstr(err, expect) == NULL)
		fail_msg("error '%s' lacks '%s'", err, expect);
	free(err);
	return rc;
}

static void test_migrations_reopen(void **state)
{
	struct fix *f = *state;
	sqlite3 *db;
	sqlite3_stmt *s;
	char *err = NULL;

	add_domain(f->st, "example.test", 1, NULL);
	store_close(&f->st);
	assert_null(f->st);
	store_close(&f->st);                 /* NULL is fine */
	assert_int_equal(store_open_migrate(&f->cfg, &f->st, &err), 0);
	assert_int_equal(store_domain_get(f->st, "example.test", &(struct store_domain){0}), 1);
	store_close(&f->st);
	assert_int_equal(store_open_migrate(&f->cfg, &f->st, &err), 0);

	assert_int_equal(sqlite3_open("kale.db", &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*), max(version) FROM schema_version",
	    -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(s, 0), 1);
	assert_int_equal(sqlite3_column_int(s, 1), store_schema_version());
	sqlite3_finalize(s);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	sqlite3_close(db);
}

static void test_open_bad_url(void **state)
{
	struct fix *f = *state;
	struct kale_config cfg = { 0 };
	store *st = NULL;
	char *err = NULL;

	(void)f;
	cfg.db_url = "postgresql://u@h/db";
	assert_int_equal(store_open_migrate(&cfg, &st, &err), -1);
	assert_null(st);
	assert_non_null(strstr(err, "unsupported"));
	free(err);
	err = NULL;
	cfg.db_url = "sqlite:";
	assert_int_equal(store_open_migrate(&cfg, &st, &err), -1);
	free(err);
}

static int count_domains(void *ctx, const struct store_domain *d)
{
	(void)d;
	(*(int *)ctx)++;
	return 0;
}

static void test_domains(void **state)
{
	struct fix *f = *state;
	struct store_domain d;
	char *err = NULL;
	int n = 0;

	add_domain(f->st, "Example.TEST", 1, NULL);
	assert_int_equal(store_domain_get(f->st, "EXAMPLE.test", &d), 1);
	assert_string_equal(d.name, "example.test");
	assert_int_equal(d.local, 1);
	assert_string_equal(d.tls, "opportunistic");
	assert_int_equal(domain_add_err(f->st, "example.test", 1, NULL, NULL, "already exists"), -1);
	assert_int_equal(domain_add_err(f->st, "EXAMPLE.TEST", 1, NULL, NULL, "already exists"), -1);

	/* name syntax */
	assert_int_equal(domain_add_err(f->st, "", 1, NULL, NULL, "empty"), -1);
	assert_int_equal(domain_add_err(f->st, "a..b", 1, NULL, NULL, "empty label"), -1);
	assert_int_equal(domain_add_err(f->st, ".a.b", 1, NULL, NULL, NULL), -1);
	assert_int_equal(domain_add_err(f->st, "a.b.", 1, NULL, NULL, NULL), -1);
	assert_int_equal(domain_add_err(f->st, "-a.b", 1, NULL, NULL, "starts"), -1);
	assert_int_equal(domain_add_err(f->st, "a-.b", 1, NULL, NULL, "ends"), -1);
	assert_int_equal(domain_add_err(f->st, "a_b.c", 1, NULL, NULL, "only"), -1);
	assert_int_equal(domain_add_err(f->st, "x'or'1'='1", 1, NULL, NULL, "only"), -1);
	assert_int_equal(domain_add_err(f->st, "a;rm -rf.b", 1, NULL, NULL, NULL), -1);
	{
		char big[300];
		memset(big, 'a', sizeof(big));
		for (int i = 60; i < 299; i += 61)
			big[i] = '.';
		big[254] = '\0';
		assert_int_equal(domain_add_err(f->st, big, 1, NULL, NULL, "too long"), -1);
		memset(big, 'a', 64);
		big[64] = '\0';
		assert_int_equal(domain_add_err(f->st, big, 1, NULL, NULL, "63"), -1);
	}

	/* local vs relay, tls, relay forms */
	assert_int_equal(domain_add_err(f->st, "r.test", 1, "mx", NULL, "either"), -1);
	assert_int_equal(domain_add_err(f->st, "r.test", 0, "", NULL, "--local or --relay"), -1);
	assert_int_equal(domain_add_err(f->st, "r.test", 0, "mx", "always", "tls"), -1);
	assert_int_equal(domain_add_err(f->st, "r1.test", 0, "mx", "require", NULL), 0);
	assert_int_equal(domain_add_err(f->st, "r2.test", 0, "smtp.example.org:2525", NULL, NULL), 0);
	assert_int_equal(domain_add_err(f->st, "r3.test", 0, "192.0.2.1", NULL, NULL), 0);
	assert_int_equal(domain_add_err(f->st, "r4.test", 0, "[2001:db8::1]:25", NULL, NULL), 0);
	assert_int_equal(domain_add_err(f->st, "r5.test", 0, "[2001:db8::2]", NULL, NULL), 0);
	/* ldap:PROFILE verifies with PROFILE by default, so it must exist */
	assert_int_equal(domain_add_err(f->st, "r6.test", 0, "ldap:corp", NULL,
	    "no verification profile 'corp'"), -1);
	{
		struct store_domain d6;
		memset(&d6, 0, sizeof(d6));
		snprintf(d6.name, sizeof(d6.name), "r6.test");
		snprintf(d6.relay, sizeof(d6.relay), "ldap:corp");
		snprintf(d6.verify, sizeof(d6.verify), "none");
		assert_int_equal(store_domain_add(f->st, &d6, &err), 0);
	}
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "host:0", NULL, "port"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "host:65536", NULL, "port"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "host:", NULL, "port"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "2001:db8::1", NULL, NULL), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "[zz]:25", NULL, "IPv6"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "[::1]x", NULL, NULL), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "ldap:", NULL, "ldap"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "ldap:a b", NULL, "ldap"), -1);
	assert_int_equal(domain_add_err(f->st, "r7.test", 0, "host;ls", NULL, NULL), -1);
	assert_int_equal(store_domain_get(f->st, "r4.test", &d), 1);
	assert_int_equal(d.local, 0);
	assert_string_equal(d.relay, "[2001:db8::1]:25");
	assert_int_equal(store_domain_get(f->st, "r1.test", &d), 1);
	assert_string_equal(d.tls, "require");

	/* verify: only an existing profile can be attached */
	assert_int_equal(store_domain_set_verify(f->st, "r1.test", "corp-ldap", &err), -1);
	xfree(&err);
	{
		struct store_verify v;
		memset(&v, 0, sizeof(v));
		snprintf(v.name, sizeof(v.name), "corp-ldap");
		snprintf(v.type, sizeof(v.type), "localdb");
		snprintf(v.mode, sizeof(v.mode), "realtime");
		v.timeout = 5;
		v.ttl_found = 3600;
		v.ttl_missing = 300;
		assert_int_equal(store_verify_add(f->st, &v, &err), 0);
	}
	assert_int_equal(store_domain_set_verify(f->st, "r1.test", "corp-ldap", &err), 0);
	assert_int_equal(store_domain_get(f->st, "r1.test", &d), 1);
	assert_string_equal(d.verify, "corp-ldap");
	assert_int_equal(store_domain_set_verify(f->st, "r1.test", "none", &err), 0);
	assert_int_equal(store_domain_get(f->st, "r1.test", &d), 1);
	assert_string_equal(d.verify, "");
	assert_int_equal(store_domain_set_verify(f->st, "r1.test", "a'b", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_domain_set_verify(f->st, "nope.test", "corp-ldap", &err), -1);
	assert_non_null(strstr(err, "does not exist"));
	free(err);
	err = NULL;

	/* a domain routed by ldap:PROFILE verifies with it unless told "none" */
	{
		struct store_domain l;
		memset(&l, 0, sizeof(l));
		snprintf(l.name, sizeof(l.name), "ld1.test");
		snprintf(l.relay, sizeof(l.relay), "ldap:corp-ldap");
		assert_int_equal(store_domain_add(f->st, &l, &err), 0);
		assert_int_equal(store_domain_get(f->st, "ld1.test", &d), 1);
		assert_string_equal(d.verify, "corp-ldap");
		snprintf(l.name, sizeof(l.name), "ld2.test");
		snprintf(l.verify, sizeof(l.verify), "none");
		assert_int_equal(store_domain_add(f->st, &l, &err), 0);
		assert_int_equal(store_domain_get(f->st, "ld2.test", &d), 1);
		assert_string_equal(d.verify, "");
		assert_int_equal(store_domain_del(f->st, "ld1.test", &err), 0);
		assert_int_equal(store_domain_del(f->st, "ld2.test", &err), 0);
	}

	assert_int_equal(store_domain_list(f->st, count_domains, &n), 0);
	assert_int_equal(n, 7);

	/* del refuses while users exist */
	assert_int_equal(store_user_add(f->st, "a@example.test", NULL, &err), 0);
	assert_int_equal(store_domain_del(f->st, "example.test", &err), -1);
	assert_string_equal(err, "domain has 1 user; delete them first");
	free(err);
	err = NULL;
	assert_int_equal(store_user_del(f->st, "a@example.test", &err), 0);
	assert_int_equal(store_alias_add(f->st, "x@example.test", "y@example.org", &err), 0);
	assert_int_equal(store_domain_del(f->st, "example.test", &err), -1);
	assert_non_null(strstr(err, "1 alias"));
	free(err);
	err = NULL;
	assert_int_equal(store_alias_del(f->st, "x@example.test", &err), 0);
	assert_int_equal(store_domain_del(f->st, "EXAMPLE.test", &err), 0);
	assert_int_equal(store_domain_get(f->st, "example.test", &d), 0);
	assert_int_equal(store_domain_del(f->st, "example.test", &err), -1);
	assert_non_null(strstr(err, "does not exist"));
	free(err);
	assert_int_equal(store_domain_get(f->st, "x'or'1'='1", &d), 0);
}

static int user_add_err(store *st, const char *addr, const char *expect)
{
	char *err = NULL;
	int rc = store_user_add(st, addr, NULL, &err);

	if (rc == 0)
		return 0;
	assert_non_null(err);
	if (expect != NULL && strstr(err, expect) == NULL)
		fail_msg("error '%s' lacks '%s'", err, expect);
	free(err);
	return rc;
}

static int collect(void *ctx, const char *s)
{
	char *buf = ctx;
	size_t len = strlen(buf);

	snprintf(buf + len, 1024 - len, "%s;", s);
	return 0;
}

static void test_users(void **state)
{
	struct fix *f = *state;
	char *err = NULL;
	char list[1024] = "";

	add_domain(f->st, "example.test", 1, NULL);
	add_domain(f->st, "relay.test", 0, "mx");
	assert_int_equal(store_user_add(f->st, "Alice@Example.Test", "s3cret", &err), 0);
	assert_int_equal(store_user_exists(f->st, "alice@example.test"), 1);
	assert_int_equal(store_user_exists(f->st, "ALICE@EXAMPLE.TEST"), 1);
	assert_int_equal(store_user_exists(f->st, "bob@example.test"), 0);
	assert_int_equal(user_add_err(f->st, "alice@example.test", "already exists"), -1);
	/* a relay domain's user is a LocalDB recipient: it exists, may log in
	 * (SMTP AUTH), but not where a mailbox is needed (POP3/IMAP) */
	assert_int_equal(store_user_add(f->st, "bob@relay.test", "pw", &err), 0);
	assert_int_equal(store_user_exists(f->st, "bob@relay.test"), 1);
	assert_int_equal(store_user_check_password(f->st, "bob@relay.test", "pw"), 1);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "s3cret"), 1);
	store_set_mailbox_only(f->st);
	assert_int_equal(store_user_check_password(f->st, "bob@relay.test", "pw"), 0);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "s3cret"), 1);
	assert_int_equal(user_add_err(f->st, "bob@nowhere.test", "does not exist"), -1);
	assert_int_equal(user_add_err(f->st, "bob", "local@domain"), -1);
	assert_int_equal(user_add_err(f->st, "@example.test", "empty"), -1);
	assert_int_equal(user_add_err(f->st, ".bob@example.test", "dot"), -1);
	assert_int_equal(user_add_err(f->st, "bob.@example.test", "dot"), -1);
	assert_int_equal(user_add_err(f->st, "b..ob@example.test", "dot"), -1);
	assert_int_equal(user_add_err(f->st, "x'or'1'='1@example.test", "only"), -1);
	assert_int_equal(user_add_err(f->st, "b ob@example.test", "only"), -1);
	assert_int_equal(user_add_err(f->st,
	    "ab234567890123456789012345678901234567890123456789012345678901234@example.test", "64"), -1);
	assert_int_equal(user_add_err(f->st, "b.o_b+x-y@example.test", NULL), 0);
	assert_int_equal(store_user_add(f->st, "nopw@example.test", NULL, &err), 0);

	/* passwords */
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "s3cret"), 1);
	assert_int_equal(store_user_check_password(f->st, "ALICE@example.test", "s3cret"), 1);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "s3cret "), 0);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "wrong"), 0);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", ""), 0);
	assert_int_equal(store_user_check_password(f->st, "nopw@example.test", ""), 0);
	assert_int_equal(store_user_check_password(f->st, "nopw@example.test", "x"), 0);
	assert_int_equal(store_user_check_password(f->st, "ghost@example.test", "s3cret"), 0);
	assert_int_equal(store_user_check_password(f->st, "x'or'1'='1", "x'or'1'='1"), 0);
	assert_int_equal(store_user_passwd(f->st, "alice@example.test", "new", &err), 0);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "s3cret"), 0);
	assert_int_equal(store_user_check_password(f->st, "alice@example.test", "new"), 1);
	assert_int_equal(store_user_passwd(f->st, "alice@example.test", "", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_user_passwd(f->st, "ghost@example.test", "x", &err), -1);
	assert_non_null(strstr(err, "no such user"));
	free(err);
	err = NULL;
	{
		/* the hash is yescrypt, never the password */
		sqlite3 *db;
		sqlite3_stmt *s;
		assert_int_equal(sqlite3_open("kale.db", &db), SQLITE_OK);
		assert_int_equal(sqlite3_prepare_v2(db, "SELECT password_hash FROM users WHERE address = "
		    "'alice@example.test'", -1, &s, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(s), SQLITE_ROW);
		assert_memory_equal(sqlite3_column_text(s, 0), "$y$", 3);
		sqlite3_finalize(s);
		sqlite3_close(db);
	}

	assert_int_equal(store_user_list(f->st, NULL, collect, list), 0);
	assert_string_equal(list, "alice@example.test;b.o_b+x-y@example.test;nopw@example.test;bob@relay.test;");
	list[0] = '\0';
	assert_int_equal(store_user_list(f->st, "relay.test", collect, list), 0);
	assert_string_equal(list, "bob@relay.test;");
	assert_int_equal(store_user_del(f->st, "Alice@example.test", &err), 0);
	assert_int_equal(store_user_exists(f->st, "alice@example.test"), 0);
	assert_int_equal(store_user_del(f->st, "alice@example.test", &err), -1);
	free(err);
}

static int collect_alias(void *ctx, const char *a, const char *t)
{
	char *buf = ctx;
	size_t len = strlen(buf);

	snprintf(buf + len, 1024 - len, "%s=%s;", a, t);
	return 0;
}

static void test_aliases(void **state)
{
	struct fix *f = *state;
	char *err = NULL;
	char list[1024] = "";

	add_domain(f->st, "example.test", 1, NULL);
	add_domain(f->st, "relay.test", 0, "mx");
	assert_int_equal(store_user_add(f->st, "alice@example.test", NULL, &err), 0);
	assert_int_equal(store_alias_add(f->st, "Info@example.test",
	    " Alice@Example.test , o'brien@Other.ORG,alice@example.test", &err), 0);
	assert_int_equal(store_alias_add(f->st, "info@example.test", "x@y.z", &err), -1);
	assert_non_null(strstr(err, "already exists"));
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "alice@example.test", "x@y.z", &err), -1);
	assert_non_null(strstr(err, "is a user"));
	free(err);
	err = NULL;
	assert_int_equal(store_user_add(f->st, "info@example.test", NULL, &err), -1);
	assert_non_null(strstr(err, "is an alias"));
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "x@relay.test", "a@b.c", &err), -1);
	assert_non_null(strstr(err, "not a local domain"));
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "x@example.test", "not-an-address", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "x@example.test", "a b@c.d", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "x@example.test", "a@c..d", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_alias_add(f->st, "x@example.test", " , ", &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_alias_list(f->st, collect_alias, list), 0);
	assert_string_equal(list, "info@example.test=alice@example.test,o'brien@other.org;");
	assert_int_equal(store_alias_del(f->st, "INFO@example.test", &err), 0);
	assert_int_equal(store_alias_del(f->st, "info@example.test", &err), -1);
	free(err);
}

static int resolve(store *st, const char *addr, char *out, size_t cap)
{
	char **t = NULL, *err = NULL;
	int n = store_rcpt_resolve(st, addr, &t, &err);

	out[0] = '\0';
	if (n < 0) {
		snprintf(out, cap, "ERR %s", err);
		free(err);
		return n;
	}
	for (int i = 0; i < n; i++) {
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s%s", i ? "," : "", t[i]);
	}
	store_targets_free(t, n);
	return n;
}

static void test_resolve(void **state)
{
	struct fix *f = *state;
	char *err = NULL, out[1024], a[64], b[64];

	add_domain(f->st, "example.test", 1, NULL);
	assert_int_equal(store_user_add(f->st, "alice@example.test", NULL, &err), 0);
	assert_int_equal(store_user_add(f->st, "bob@example.test", NULL, &err), 0);
	assert_int_equal(store_user_add(f->st, "carol+x@example.test", NULL, &err), 0);

	assert_int_equal(resolve(f->st, "alice@example.test", out, sizeof(out)), 1);
	assert_string_equal(out, "alice@example.test");
	assert_int_equal(resolve(f->st, "ALICE@Example.Test", out, sizeof(out)), 1);
	assert_string_equal(out, "alice@example.test");
	assert_int_equal(resolve(f->st, "nobody@example.test", out, sizeof(out)), 0);
	assert_int_equal(resolve(f->st, "x'or'1'='1@example.test", out, sizeof(out)), 0);

	/* +ext */
	assert_int_equal(resolve(f->st, "alice+news@example.test", out, sizeof(out)), 1);
	assert_string_equal(out, "alice@example.test");
	assert_int_equal(resolve(f->st, "carol+x@example.test", out, sizeof(out)), 1);
	assert_string_equal(out, "carol+x@example.test");
	assert_int_equal(resolve(f->st, "nobody+x@example.test", out, sizeof(out)), 0);

	/* aliases: nested, duplicates, external targets */
	assert_int_equal(store_alias_add(f->st, "team@example.test",
	    "alice@example.test,bob@example.test,sales@example.test", &err), 0);
	assert_int_equal(store_alias_add(f->st, "sales@example.test",
	    "BOB@example.test,ext@partner.example,bob+x@example.test", &err), 0);
	assert_int_equal(resolve(f->st, "team@example.test", out, sizeof(out)), 3);
	assert_string_equal(out, "alice@example.test,bob@example.test,ext@partner.example");
	assert_int_equal(resolve(f->st, "team+list@example.test", out, sizeof(out)), 3);

	/* loops: a -> b -> a, plus a user */
	assert_int_equal(store_alias_add(f->st, "loop1@example.test", "loop2@example.test,alice@example.test", &err), 0);
	assert_int_equal(store_alias_add(f->st, "loop2@example.test", "loop1@example.test", &err), 0);
	assert_int_equal(resolve(f->st, "loop2@example.test", out, sizeof(out)), 1);
	assert_string_equal(out, "alice@example.test");
	/* a pure loop resolves to nothing: unknown */
	assert_int_equal(store_alias_add(f->st, "self@example.test", "self@example.test", &err), 0);
	assert_int_equal(resolve(f->st, "self@example.test", out, sizeof(out)), 0);

	/* depth: a chain of 10 aliases works, 11 is refused */
	for (int i = 0; i < 11; i++) {
		snprintf(a, sizeof(a), "c%d@example.test", i);
		if (i < 10)
			snprintf(b, sizeof(b), "c%d@example.test", i + 1);
		else
			snprintf(b, sizeof(b), "alice@example.test");
		assert_int_equal(store_alias_add(f->st, a, b, &err), 0);
	}
	assert_int_equal(resolve(f->st, "c1@example.test", out, sizeof(out)), 1);
	assert_string_equal(out, "alice@example.test");
	assert_int_equal(resolve(f->st, "c0@example.test", out, sizeof(out)), -1);
	assert_non_null(strstr(out, "deeper than 10"));
}

static int match(store *st, const char *ip)
{
	struct sockaddr_storage ss = unit_sa(ip);
	return store_network_match(st, (struct sockaddr *)&ss);
}

static void test_networks(void **state)
{
	struct fix *f = *state;
	char *err = NULL, list[1024] = "";
	store *other = NULL;

	assert_int_equal(match(f->st, "127.0.0.1"), 0);   /* nothing trusted by default */
	assert_int_equal(store_network_add(f->st, "192.168.1.0/24", &err), 0);
	assert_int_equal(store_network_add(f->st, "10.1.2.3", &err), 0);
	assert_int_equal(store_network_add(f->st, "2001:DB8:0::/32", &err), 0);
	assert_int_equal(store_network_add(f->st, "192.168.1.0/24", &err), -1);
	assert_non_null(strstr(err, "already exists"));
	free(err);
	err = NULL;
	assert_int_equal(store_network_add(f->st, "192.168.1.7/24", &err), -1);
	assert_non_null(strstr(err, "did you mean 192.168.1.0/24"));
	free(err);
	err = NULL;
	const char *bad[] = { "", "/8", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3/8", "::1/129",
		"x'or'1'='1", "10.0.0.0/8x", "1.2.3.4/" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (store_network_add(f->st, bad[i], &err) != -1)
			fail_msg("accepted %s", bad[i]);
		free(err);
		err = NULL;
	}
	assert_int_equal(store_network_list(f->st, collect, list), 0);
	assert_string_equal(list, "10.1.2.3/32;192.168.1.0/24;2001:db8::/32;");

	assert_int_equal(match(f->st, "192.168.1.200"), 1);
	assert_int_equal(match(f->st, "192.168.2.1"), 0);
	assert_int_equal(match(f->st, "10.1.2.3"), 1);
	assert_int_equal(match(f->st, "10.1.2.4"), 0);
	assert_int_equal(match(f->st, "2001:db8:ffff::1"), 1);
	assert_int_equal(match(f->st, "2001:db9::1"), 0);
	assert_int_equal(match(f->st, "::ffff:192.168.1.9"), 1);   /* v4-mapped */
	assert_int_equal(match(f->st, "::1"), 0);

	/* a change made through another connection is seen (data_version) */
	assert_int_equal(store_open_migrate(&f->cfg, &other, &err), 0);
	assert_int_equal(store_network_add(other, "::1/128", &err), 0);
	assert_int_equal(store_network_del(other, "192.168.1.0/24", &err), 0);
	assert_int_equal(match(f->st, "::1"), 1);
	assert_int_equal(match(f->st, "192.168.1.200"), 0);
	store_close(&other);

	assert_int_equal(store_network_add(f->st, "0.0.0.0/0", &err), 0);
	assert_int_equal(match(f->st, "203.0.113.9"), 1);
	assert_int_equal(store_network_del(f->st, "0.0.0.0/0", &err), 0);
	assert_int_equal(match(f->st, "203.0.113.9"), 0);
	assert_int_equal(store_network_del(f->st, "0.0.0.0/0", &err), -1);
	free(err);
}

struct logc {
	int n;
	char first_rcpt[256];
	int64_t first_ts;
};

static int log_cb(void *ctx, const struct store_log_row *r)
{
	struct logc *c = ctx;
	if (c->n++ == 0) {
		snprintf(c->first_rcpt, sizeof(c->first_rcpt), "%s", r->rcpt ? r->rcpt : "(null)");
		c->first_ts = r->ts;
	}
	return 0;
}

static int search(store *st, const char *from, const char *to, const char *ip,
    const char *action, int64_t since, int limit, struct logc *c)
{
	struct store_log_query q = { .from = from, .to = to, .ip = ip, .action = action,
		.since = since, .limit = limit };
	memset(c, 0, sizeof(*c));
	assert_int_equal(store_log_search(st, &q, log_cb, c), 0);
	return c->n;
}

static void test_log(void **state)
{
	struct fix *f = *state;
	struct logc c;
	char rcpt[64];

	for (int i = 0; i < 1200; i++) {
		struct store_log_row r = { 0 };
		snprintf(rcpt, sizeof(rcpt), "u%d@example.test", i);
		r.ts = 1000000 + i;
		r.qid = "0123456789ABCDEF01234567";
		r.client = i % 2 ? "192.0.2.1" : "2001:db8::1";
		r.sender = i % 3 ? "alice@example.org" : "";
		r.rcpt = rcpt;
		r.action = i % 4 ? "accepted" : "rejected";
		r.code = "250 2.0.0";
		r.size = i;
		store_log_add(f->st, &r);
	}
	{
		struct store_log_row r = { 0 };
		r.sender = "x'or'1'='1@evil.test";
		r.rcpt = "100%_off@example.test";
		r.action = "rejected";
		store_log_add(f->st, &r);          /* ts 0 = now */
	}
	assert_int_equal(store_log_flush(f->st), 0);
	assert_int_equal(store_log_flush(f->st), 0);
	assert_int_equal(search(f->st, NULL, NULL, NULL, NULL, 0, 0, &c), 100);
	assert_string_equal(c.first_rcpt, "100%_off@example.test");
	assert_int_equal(search(f->st, NULL, NULL, NULL, NULL, 0, 5000, &c), 1201);
	assert_int_equal(search(f->st, NULL, NULL, NULL, NULL, 1001190, 5000, &c), 11);
	assert_int_equal(search(f->st, NULL, "u1199@", NULL, NULL, 0, 0, &c), 1);
	assert_int_equal(search(f->st, NULL, "U119", NULL, NULL, 0, 0, &c), 11);  /* substring, any case */
	assert_int_equal(search(f->st, NULL, NULL, "192.0.2.1", NULL, 0, 5000, &c), 600);
	assert_int_equal(search(f->st, NULL, NULL, NULL, "rejected", 0, 5000, &c), 301);
	assert_int_equal(search(f->st, "alice@", NULL, NULL, "accepted", 0, 5000, &c), 600);
	assert_int_equal(search(f->st, NULL, NULL, NULL, "x' OR '1'='1", 0, 5000, &c), 0);
	assert_int_equal(search(f->st, "x'or'1'='1", NULL, NULL, NULL, 0, 5000, &c), 1);
	/* LIKE wildcards in the query are literal */
	assert_int_equal(search(f->st, NULL, "%_", NULL, NULL, 0, 5000, &c), 1);
	assert_int_equal(search(f->st, NULL, "%", NULL, NULL, 0, 5000, &c), 1);
	assert_int_equal(search(f->st, NULL, "_", NULL, NULL, 0, 5000, &c), 1);
	assert_int_equal(search(f->st, NULL, NULL, NULL, NULL, 0, 3, &c), 3);

	/* rows still in the batch are written at close */
	{
		struct store_log_row r = { .ts = 5, .rcpt = "late@example.test", .action = "deferred" };
		char *err = NULL;
		store_log_add(f->st, &r);
		store_close(&f->st);
		assert_int_equal(store_open_migrate(&f->cfg, &f->st, &err), 0);
		assert_int_equal(search(f->st, NULL, NULL, NULL, "deferred", 0, 0, &c), 1);
		assert_string_equal(c.first_rcpt, "late@example.test");
		assert_int_equal(c.first_ts, 5);
	}
}

/* store_log_trace: a message's rows and its session's rows without a queue
 * id, from the session's previous message on; another session, another
 * message and a later transaction stay out. */
struct tracec {
	int n;
	char seen[32][48];    /* "action rcpt" */
};

static int trace_cb(void *ctx, const struct store_log_row *r)
{
	struct tracec *c = ctx;
	if (c->n < 32)
		snprintf(c->seen[c->n], sizeof(c->seen[0]), "%s %s", r->action ? r->action : "-",
		    r->rcpt ? r->rcpt : "-");
	c->n++;
	return 0;
}

static void log_row(store *st, int64_t ts, const char *session, const char *qid,
    const char *action, const char *rcpt)
{
	struct store_log_row r = { .ts = ts, .session = session, .qid = qid, .action = action,
		.rcpt = rcpt };
	store_log_add(st, &r);
}

static void test_log_trace(void **state)
{
	struct fix *f = *state;
	const char *q1 = "000000000000100000000001", *q2 = "000000000000200000000001";
	struct tracec c;

	log_row(f->st, 100, "s1", NULL, "connect", NULL);
	log_row(f->st, 100, "s2", NULL, "connect", NULL);          /* another session */
	log_row(f->st, 101, "s1", NULL, "rejected", "nobody@x");
	log_row(f->st, 101, "s2", NULL, "rcpt", "other@x");
	log_row(f->st, 101, "s1", NULL, "checked", "a@x");
	log_row(f->st, 101, "s1", NULL, "rcpt", "a@x");
	/* the queue manager's row of this second, flushed before the session's */
	log_row(f->st, 102, NULL, q1, "delivered", "a@x");
	log_row(f->st, 102, "s1", q1, "accepted", "a@x");
	log_row(f->st, 103, "s1", NULL, "rcpt", "b@x");             /* the next message */
	log_row(f->st, 103, "s1", q2, "accepted", "b@x");
	log_row(f->st, 104, NULL, q2, "deferred", "b@x");
	log_row(f->st, 105, NULL, q1, "deleted", "a@x");
	assert_int_equal(store_log_flush(f->st), 0);

	memset(&c, 0, sizeof(c));
	assert_int_equal(store_log_trace(f->st, q1, 0, trace_cb, &c), 7);
	assert_string_equal(c.seen[0], "connect -");
	assert_string_equal(c.seen[1], "rejected nobody@x");
	assert_string_equal(c.seen[2], "checked a@x");
	assert_string_equal(c.seen[3], "rcpt a@x");
	assert_string_equal(c.seen[4], "accepted a@x");    /* the session's row first */
	assert_string_equal(c.seen[5], "delivered a@x");
	assert_string_equal(c.seen[6], "deleted a@x");

	memset(&c, 0, sizeof(c));
	assert_int_equal(store_log_trace(f->st, q2, 0, trace_cb, &c), 4);
	assert_string_equal(c.seen[0], "connect -");
	assert_string_equal(c.seen[1], "rcpt b@x");
	assert_string_equal(c.seen[2], "accepted b@x");
	assert_string_equal(c.seen[3], "deferred b@x");

	memset(&c, 0, sizeof(c));
	assert_int_equal(store_log_trace(f->st, q1, 2, trace_cb, &c), 2);
	memset(&c, 0, sizeof(c));
	assert_int_equal(store_log_trace(f->st, "000000000000300000000001", 0, trace_cb, &c), 0);
	assert_int_equal(store_log_trace(f->st, "x' OR '1'='1", 0, trace_cb, &c), 0);
	assert_int_equal(c.n, 0);

	/* rows still in the batch are part of the answer */
	log_row(f->st, 106, NULL, q2, "delivered", "b@x");
	memset(&c, 0, sizeof(c));
	assert_int_equal(store_log_trace(f->st, q2, 0, trace_cb, &c), 5);
	assert_string_equal(c.seen[4], "delivered b@x");
}

struct imp {
	int n_err;
	long lines[16];
	char msgs[16][200];
	long last_progress;
};

static void imp_err(void *ctx, long line, const char *msg)
{
	struct imp *im = ctx;
	if (im->n_err < 16) {
		im->lines[im->n_err] = line;
		snprintf(im->msgs[im->n_err], sizeof(im->msgs[0]), "%s", msg);
	}
	im->n_err++;
}

static void imp_progress(void *ctx, long line)
{
	((struct imp *)ctx)->last_progress = line;
}

static void test_import(void **state)
{
	struct fix *f = *state;
	struct imp im = { 0 };
	char *err = NULL;
	long ok = -1, bad = -1;
	FILE *fp;
	static const char csv[] =
		"address,password\n"                    /* 1 header */
		"# a comment\n"                         /* 2 */
		"\n"                                    /* 3 */
		"one@example.test,pw-one\n"             /* 4 */
		"Two@Example.test\r\n"                  /* 5 no password, CRLF */
		"three@relay.test,x\n"                  /* 6 relay domain: LocalDB user */
		"bad address@example.test,x\n"          /* 7 syntax */
		"one@example.test,again\n"              /* 8 duplicate */
		"four@nowhere.test\n"                   /* 9 unknown domain */
		"x'or'1'='1@example.test,x\n"           /* 10 */
		"  five@example.test  ,pass,with,commas\n" /* 11 */
		"six@example.test,";                    /* 12 no newline, empty password */

	add_domain(f->st, "example.test", 1, NULL);
	add_domain(f->st, "relay.test", 0, "mx");
	fp = fmemopen((void *)csv, sizeof(csv) - 1, "r");
	assert_non_null(fp);
	assert_int_equal(store_user_import(f->st, fp, imp_progress, &im, imp_err, &im, &ok, &bad, &err), 0);
	fclose(fp);
	assert_int_equal(ok, 5);
	assert_int_equal(bad, 4);
	assert_int_equal(im.n_err, 4);
	assert_int_equal(im.lines[0], 7);
	assert_int_equal(im.lines[1], 8);
	assert_non_null(strstr(im.msgs[1], "already exists"));
	assert_int_equal(im.lines[2], 9);
	assert_non_null(strstr(im.msgs[2], "does not exist"));
	assert_int_equal(im.lines[3], 10);
	assert_int_equal(store_user_exists(f->st, "three@relay.test"), 1);
	assert_int_equal(im.last_progress, 12);
	assert_int_equal(store_user_check_password(f->st, "one@example.test", "pw-one"), 1);
	assert_int_equal(store_user_check_password(f->st, "five@example.test", "pass,with,commas"), 1);
	assert_int_equal(store_user_exists(f->st, "two@example.test"), 1);
	assert_int_equal(store_user_exists(f->st, "six@example.test"), 1);
	assert_int_equal(store_user_check_password(f->st, "six@example.test", ""), 0);

	/* a long line is one bad line, not several */
	{
		size_t n = 5000;
		char *big = xmalloc(n + 64);
		memset(big, 'a', n);
		snprintf(big + n, 64, "@example.test\nseven@example.test\n");
		memset(&im, 0, sizeof(im));
		fp = fmemopen(big, strlen(big), "r");
		assert_int_equal(store_user_import(f->st, fp, NULL, NULL, imp_err, &im, &ok, &bad, &err), 0);
		fclose(fp);
		free(big);
		assert_int_equal(ok, 1);
		assert_int_equal(bad, 1);
		assert_int_equal(im.lines[0], 1);
		assert_string_equal(im.msgs[0], "line too long");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_migrations_reopen, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_open_bad_url, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_domains, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_users, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_aliases, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_resolve, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_networks, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_log, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_log_trace, setup, unit_store_free),
		cmocka_unit_test_setup_teardown(test_import, setup, unit_store_free),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
