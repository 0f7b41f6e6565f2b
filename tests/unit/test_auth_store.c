/* test_auth_store: unit tests for src/store/store_auth.c and src/auth/auth.c:
 * settings defaults, checks and round trip, login canonicalisation, the
 * auth server list (add, order, move, del), auth_check with localdb and
 * with no servers, and auth_sender_allowed through aliases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "auth/auth_int.h"
#include "conf/conf.h"
#include "lib/util.h"

static char tmpdir[256], dburl[320];
static struct kale_config cfg;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	char tmpl[] = "/tmp/kale-test-authst-XXXXXX";
	store *st = NULL;
	struct store_domain d;
	char *err = NULL;

	if (mkdtemp(tmpl) == NULL)
		return -1;
	snprintf(tmpdir, sizeof(tmpdir), "%s", tmpl);
	snprintf(dburl, sizeof(dburl), "sqlite:%s/kale.db", tmpdir);
	memset(&cfg, 0, sizeof(cfg));
	cfg.db_url = dburl;
	if (store_open_migrate(&cfg, &st, &err) < 0) {
		fprintf(stderr, "%s\n", err);
		free(err);
		return -1;
	}
	memset(&d, 0, sizeof(d));
	snprintf(d.name, sizeof(d.name), "example.test");
	d.local = 1;
	if (store_domain_add(st, &d, &err) < 0 ||
	    store_user_add(st, "alice@example.test", "alice-pw", &err) < 0 ||
	    store_user_add(st, "bob@example.test", "bob-pw", &err) < 0 ||
	    store_alias_add(st, "sales@example.test", "alice@example.test, carol@other.test", &err) < 0 ||
	    store_alias_add(st, "all@example.test", "sales@example.test", &err) < 0) {
		fprintf(stderr, "%s\n", err);
		free(err);
		store_close(&st);
		return -1;
	}
	store_close(&st);
	*state = NULL;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static store *open_store(void)
{
	store *st = NULL;
	char *err = NULL;

	assert_int_equal(store_open_migrate(&cfg, &st, &err), 0);
	return st;
}

static void test_settings_defaults_and_set(void **state)
{
	struct auth_settings s;
	store *st = open_store();
	char *err = NULL, norm[320];

	(void)state;
	assert_int_equal(auth_settings_get(&cfg, &s, &err), 0);
	assert_int_equal(s.enable, 1);
	assert_int_equal(s.tls_only, 1);
	assert_int_equal(s.fake_sender_control, 1);
	assert_int_equal(s.timeout, 15);
	assert_int_equal(s.username_address, 1);
	assert_string_equal(s.default_domain, "");
	assert_string_equal(s.method, "localdb");

	assert_int_equal(auth_setting_check("enable", "no", norm, sizeof(norm), &err), 0);
	assert_string_equal(norm, "no");
	assert_int_equal(store_auth_set(st, "enable", norm, &err), 0);
	assert_int_equal(auth_setting_check("default_domain", "Corp.TEST", norm, sizeof(norm), &err), 0);
	assert_string_equal(norm, "corp.test");
	assert_int_equal(store_auth_set(st, "default_domain", norm, &err), 0);
	assert_int_equal(store_auth_set(st, "timeout", "42", &err), 0);
	assert_int_equal(store_auth_set(st, "method", "ldap:corp", &err), 0);
	assert_int_equal(store_auth_set(st, "username_format", "username", &err), 0);
	/* a value stored behind kalectl's back that does not check: default */
	assert_int_equal(store_auth_set(st, "tls_only", "perhaps", &err), 0);
	assert_int_equal(auth_settings_load(st, &s, &err), 0);
	assert_int_equal(s.enable, 0);
	assert_int_equal(s.tls_only, 1);
	assert_int_equal(s.timeout, 42);
	assert_int_equal(s.username_address, 0);
	assert_string_equal(s.default_domain, "corp.test");
	assert_string_equal(s.method, "ldap:corp");

	assert_int_equal(store_auth_set(st, "Bad-Key", "x", &err), -1);
	free(err);
	err = NULL;
	store_close(&st);
}

static void test_setting_check(void **state)
{
	static const char *const bad[][2] = {
		{ "enable", "maybe" }, { "timeout", "0" }, { "timeout", "301" }, { "timeout", "1x" },
		{ "username_format", "uid" }, { "default_domain", "a..b" }, { "default_domain", "a b" },
		{ "method", "pam" }, { "method", "ldap:" }, { "method", "ldap:a/b" }, { "nosuch", "x" },
	};
	char norm[320], *err = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(auth_setting_check(bad[i][0], bad[i][1], norm, sizeof(norm), &err), -1);
		assert_non_null(err);
		free(err);
		err = NULL;
	}
	assert_int_equal(auth_setting_check("timeout", "300", norm, sizeof(norm), &err), 0);
	assert_int_equal(auth_setting_check("enable", "1", norm, sizeof(norm), &err), 0);
	assert_string_equal(norm, "yes");
	assert_int_equal(auth_setting_check("default_domain", "", norm, sizeof(norm), &err), 0);
	assert_int_equal(auth_setting_check("method", "servers", norm, sizeof(norm), &err), 0);
}

static void test_login_canon(void **state)
{
	struct auth_settings s;
	char out[600];
	const char *why;

	(void)state;
	memset(&s, 0, sizeof(s));
	s.username_address = 1;
	assert_int_equal(auth_login_canon(&s, "Bob@Example.TEST", out, sizeof(out), &why), 0);
	assert_string_equal(out, "bob@example.test");
	assert_int_equal(auth_login_canon(&s, "bob", out, sizeof(out), &why), -1);
	assert_int_equal(auth_login_canon(&s, "", out, sizeof(out), &why), -1);
	assert_int_equal(auth_login_canon(&s, "bo b@x.test", out, sizeof(out), &why), -1);
	assert_int_equal(auth_login_canon(&s, "bob\r\n@x.test", out, sizeof(out), &why), -1);
	assert_int_equal(auth_login_canon(&s, "@x.test", out, sizeof(out), &why), -1);
	assert_int_equal(auth_login_canon(&s, "bob@", out, sizeof(out), &why), -1);
	s.username_address = 0;
	assert_int_equal(auth_login_canon(&s, "bob", out, sizeof(out), &why), -1);   /* no domain */
	snprintf(s.default_domain, sizeof(s.default_domain), "corp.test");
	assert_int_equal(auth_login_canon(&s, "Bob", out, sizeof(out), &why), 0);
	assert_string_equal(out, "bob@corp.test");
	assert_int_equal(auth_login_canon(&s, "bob@other.test", out, sizeof(out), &why), 0);
	assert_string_equal(out, "bob@other.test");
}

static int collect(void *ctx, const struct store_auth_server *srv)
{
	char *buf = ctx;
	size_t len = strlen(buf);

	snprintf(buf + len, 512 - len, "%lld:%d:%s:%s:%s:%d:%d ", (long long)srv->id, srv->position,
	    srv->proto, srv->tls, srv->host, srv->port, srv->enabled);
	return 0;
}

static void test_server_list(void **state)
{
	struct store_auth_server srv;
	store *st = open_store();
	char *err = NULL, buf[512];
	int64_t a, b, c;

	(void)state;
	memset(&srv, 0, sizeof(srv));
	snprintf(srv.proto, sizeof(srv.proto), "pop3");
	snprintf(srv.tls, sizeof(srv.tls), "plain");
	snprintf(srv.host, sizeof(srv.host), "pop.x.test");
	srv.port = 110;
	srv.enabled = 1;
	assert_int_equal(store_auth_server_add(st, &srv, &a, &err), 0);
	snprintf(srv.proto, sizeof(srv.proto), "imap");
	snprintf(srv.tls, sizeof(srv.tls), "ssl");
	snprintf(srv.host, sizeof(srv.host), "::1");
	srv.port = 993;
	assert_int_equal(store_auth_server_add(st, &srv, &b, &err), 0);
	snprintf(srv.tls, sizeof(srv.tls), "starttls");
	snprintf(srv.host, sizeof(srv.host), "10.1.2.3");
	srv.port = 143;
	srv.enabled = 0;
	assert_int_equal(store_auth_server_add(st, &srv, &c, &err), 0);

	buf[0] = '\0';
	assert_int_equal(store_auth_server_list(st, collect, buf), 0);
	assert_string_equal(buf, "1:1:pop3:plain:pop.x.test:110:1 2:2:imap:ssl:::1:993:1 "
	    "3:3:imap:starttls:10.1.2.3:143:0 ");
	assert_int_equal(store_auth_server_move(st, c, 1, &err), 0);
	buf[0] = '\0';
	assert_int_equal(store_auth_server_list(st, collect, buf), 0);
	assert_string_equal(buf, "3:1:imap:starttls:10.1.2.3:143:0 1:2:pop3:plain:pop.x.test:110:1 "
	    "2:3:imap:ssl:::1:993:1 ");
	assert_int_equal(store_auth_server_move(st, c, 2, &err), 0);
	assert_int_equal(store_auth_server_move(st, a, 50, &err), 0);
	buf[0] = '\0';
	assert_int_equal(store_auth_server_list(st, collect, buf), 0);
	/* [c a b] -> c to 2: [a c b] -> a past the end: [c b a] */
	assert_string_equal(buf, "3:1:imap:starttls:10.1.2.3:143:0 2:2:imap:ssl:::1:993:1 "
	    "1:3:pop3:plain:pop.x.test:110:1 ");
	assert_int_equal(store_auth_server_del(st, b, &err), 0);
	buf[0] = '\0';
	assert_int_equal(store_auth_server_list(st, collect, buf), 0);
	assert_string_equal(buf, "3:1:imap:starttls:10.1.2.3:143:0 1:2:pop3:plain:pop.x.test:110:1 ");

	assert_int_equal(store_auth_server_del(st, b, &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_auth_server_move(st, 999, 1, &err), -1);
	free(err);
	err = NULL;
	assert_int_equal(store_auth_server_move(st, a, 0, &err), -1);
	free(err);
	err = NULL;
	snprintf(srv.proto, sizeof(srv.proto), "smtp");
	assert_int_equal(store_auth_server_add(st, &srv, NULL, &err), -1);
	free(err);
	err = NULL;
	snprintf(srv.proto, sizeof(srv.proto), "imap");
	snprintf(srv.host, sizeof(srv.host), "bad host");
	assert_int_equal(store_auth_server_add(st, &srv, NULL, &err), -1);
	free(err);
	err = NULL;
	snprintf(srv.host, sizeof(srv.host), "h.test");
	srv.port = 70000;
	assert_int_equal(store_auth_server_add(st, &srv, NULL, &err), -1);
	free(err);
	store_close(&st);
}

static void test_check_localdb(void **state)
{
	char *addr = NULL, *detail = NULL;

	(void)state;
	assert_int_equal(auth_check(&cfg, "Alice@example.test", "alice-pw", &addr, &detail), AUTH_OK);
	assert_string_equal(addr, "alice@example.test");
	assert_non_null(strstr(detail, "localdb"));
	free(addr);
	free(detail);
	addr = detail = NULL;
	assert_int_equal(auth_check(&cfg, "alice@example.test", "bad", &addr, &detail), AUTH_FAIL);
	assert_null(addr);
	free(detail);
	assert_int_equal(auth_check(&cfg, "alice@example.test", "", &addr, &detail), AUTH_FAIL);
	free(detail);
	assert_int_equal(auth_check(&cfg, "alice@example.test", NULL, NULL, NULL), AUTH_FAIL);
	assert_int_equal(auth_check(&cfg, "ghost@example.test", "alice-pw", NULL, &detail), AUTH_FAIL);
	free(detail);
	assert_int_equal(auth_check(&cfg, "alice", "alice-pw", NULL, &detail), AUTH_FAIL);
	free(detail);
}

static void test_check_methods(void **state)
{
	store *st = open_store();
	char *err = NULL, *detail = NULL, *addr = NULL;

	(void)state;
	assert_int_equal(store_auth_set(st, "username_format", "username", &err), 0);
	assert_int_equal(store_auth_set(st, "default_domain", "example.test", &err), 0);
	assert_int_equal(auth_check(&cfg, "bob", "bob-pw", &addr, NULL), AUTH_OK);
	assert_string_equal(addr, "bob@example.test");
	free(addr);
	assert_int_equal(store_auth_set(st, "method", "servers", &err), 0);
	assert_int_equal(auth_check(&cfg, "bob", "bob-pw", NULL, &detail), AUTH_TEMPFAIL);
	assert_non_null(strstr(detail, "no enabled auth servers"));
	free(detail);
	assert_int_equal(store_auth_set(st, "method", "ldap:corp", &err), 0);
	assert_int_equal(auth_check(&cfg, "bob", "bob-pw", NULL, &detail), AUTH_TEMPFAIL);
	free(detail);
	assert_int_equal(store_auth_set(st, "method", "localdb", &err), 0);
	store_close(&st);
}

static void test_sender_allowed(void **state)
{
	(void)state;
	assert_int_equal(auth_sender_allowed(&cfg, "alice@example.test", "alice@example.test"), 1);
	assert_int_equal(auth_sender_allowed(&cfg, "alice@example.test", "ALICE@Example.Test"), 1);
	assert_int_equal(auth_sender_allowed(&cfg, "alice@example.test", "sales@example.test"), 1);
	assert_int_equal(auth_sender_allowed(&cfg, "alice@example.test", "all@example.test"), 1);
	assert_int_equal(auth_sender_allowed(&cfg, "bob@example.test", "sales@example.test"), 0);
	assert_int_equal(auth_sender_allowed(&cfg, "bob@example.test", "alice@example.test"), 0);
	assert_int_equal(auth_sender_allowed(&cfg, "bob@example.test", "ceo@elsewhere.test"), 0);
	assert_int_equal(auth_sender_allowed(&cfg, "bob@example.test", ""), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_setting_check),
		cmocka_unit_test(test_login_canon),
		cmocka_unit_test_setup_teardown(test_settings_defaults_and_set, setup, teardown),
		cmocka_unit_test_setup_teardown(test_server_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_localdb, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_methods, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sender_allowed, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
