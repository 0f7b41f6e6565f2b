/* test_conf: unit tests for src/conf/conf.c: every key, defaults, relative
 * paths, durations, addresses, comments, CRLF, and each error class with its
 * exact "FILE:LINE:" prefix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "conf/conf.h"
#include "lib/util.h"

static char tmpdir[512];   /* realpath of the test's temp dir */
static char confpath[PATH_MAX];

static int setup(void **state)
{
	char tmpl[] = "/tmp/kale-test-conf-XXXXXX";
	char *real;

	(void)state;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	real = realpath(tmpl, NULL);
	if (real == NULL)
		return -1;
	snprintf(tmpdir, sizeof(tmpdir), "%s", real);
	free(real);
	snprintf(confpath, sizeof(confpath), "%s/kale.conf", tmpdir);
	return 0;
}

static int teardown(void **state)
{
	char p[PATH_MAX];

	(void)state;
	unlink(confpath);
	snprintf(p, sizeof(p), "%s/sub/k.conf", tmpdir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/sub", tmpdir);
	rmdir(p);
	rmdir(tmpdir);
	return 0;
}

static void write_bytes(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static int load_text(const char *text, struct kale_config *cfg, char **err)
{
	write_bytes(confpath, text, strlen(text));
	*err = NULL;
	return conf_load(confpath, cfg, err);
}

/* Loads text, expects failure at LINE with a message containing what. */
static void expect_error_len(const char *text, size_t len, int line, const char *what)
{
	struct kale_config cfg;
	char prefix[PATH_MAX + 32];
	char *err = NULL;

	write_bytes(confpath, text, len);
	assert_int_equal(conf_load(confpath, &cfg, &err), -1);
	assert_non_null(err);
	snprintf(prefix, sizeof(prefix), "%s:%d: ", confpath, line);
	if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, what) == NULL)
		fail_msg("want prefix '%s' and '%s', got '%s'", prefix, what, err);
	/* the struct is left zeroed; conf_free on it is harmless */
	assert_null(cfg.path);
	assert_null(cfg.hostname);
	conf_free(&cfg);
	free(err);
}

static void expect_error(const char *text, int line, const char *what)
{
	expect_error_len(text, strlen(text), line, what);
}

static void test_every_key(void **state)
{
	struct kale_config cfg;
	char *err;
	const char *text =
	    "; a full config\n"
	    "[server]\n"
	    "hostname = MX.Example.TEST\n"
	    "data_dir = /srv/kale\n"
	    "run_as = mail\n"
	    "\n"
	    "[listen]\n"
	    "smtp = 127.0.0.1:2525, [::1]:2525\n"
	    "submission = 127.0.0.1:5870\n"
	    "submissions = 127.0.0.1:4650\n"
	    "pop3 = 127.0.0.1:1100\n"
	    "pop3s = 127.0.0.1:9950\n"
	    "imap = 127.0.0.1:1430\n"
	    "imaps = 127.0.0.1:9930\n"
	    "admin = localhost:8080\n"
	    "[tls]\n"
	    "cert = /etc/kale/c.pem\n"
	    "key = k.pem\n"
	    "[smtp]\n"
	    "auth_on_mx = yes\n"
	    "greeting_delay = 3\n"
	    "[limits]\n"
	    "message_size = 1099511627776\n"
	    "max_recipients = 50\n"
	    "max_connections = 200\n"
	    "max_connections_per_ip = 200\n"
	    "command_timeout = 60\n"
	    "[dns]\n"
	    "servers = 127.0.0.1:5353, ::1, 10.0.0.1\n"
	    "[database]\n"
	    "url = sqlite:/srv/kale/policy.db\n"
	    "[queue]\n"
	    "retry = 30, 90s, 5m, 2h, 1d\n"
	    "max_age = 2d\n"
	    "[delivery]\n"
	    "remote_port = 2526\n"
	    "mailbox_format = mbox\n"
	    "[log]\n"
	    "syslog = on\n"
	    "level = debug\n";
	char want[PATH_MAX + 16];

	(void)state;
	if (load_text(text, &cfg, &err) != 0)
		fail_msg("unexpected error: %s", err);
	assert_string_equal(cfg.path, confpath);
	assert_string_equal(cfg.dir, tmpdir);
	assert_string_equal(cfg.hostname, "mx.example.test");
	assert_string_equal(cfg.data_dir, "/srv/kale");
	assert_string_equal(cfg.run_as, "mail");
	assert_int_equal(cfg.smtp.n, 2);
	assert_string_equal(cfg.smtp.addr[0].host, "127.0.0.1");
	assert_int_equal(cfg.smtp.addr[0].port, 2525);
	assert_string_equal(cfg.smtp.addr[1].host, "::1");
	assert_int_equal(cfg.smtp.addr[1].port, 2525);
	assert_int_equal(cfg.submission.addr[0].port, 5870);
	assert_int_equal(cfg.submissions.addr[0].port, 4650);
	assert_int_equal(cfg.pop3.addr[0].port, 1100);
	assert_int_equal(cfg.pop3s.addr[0].port, 9950);
	assert_int_equal(cfg.imap.addr[0].port, 1430);
	assert_int_equal(cfg.imaps.addr[0].port, 9930);
	assert_string_equal(cfg.admin.addr[0].host, "localhost");
	assert_int_equal(cfg.admin.n, 1);
	assert_string_equal(cfg.tls_cert, "/etc/kale/c.pem");
	snprintf(want, sizeof(want), "%s/k.pem", tmpdir);
	assert_string_equal(cfg.tls_key, want);
	assert_int_equal(cfg.auth_on_mx, 1);
	assert_int_equal(cfg.greeting_delay, 3);
	assert_true(cfg.message_size == (uint64_t)1 << 40);
	assert_int_equal(cfg.max_recipients, 50);
	assert_int_equal(cfg.max_connections, 200);
	assert_int_equal(cfg.max_connections_per_ip, 200);
	assert_int_equal(cfg.command_timeout, 60);
	assert_int_equal(cfg.dns_servers.n, 3);
	assert_int_equal(cfg.dns_servers.addr[0].port, 5353);
	assert_string_equal(cfg.dns_servers.addr[1].host, "::1");
	assert_int_equal(cfg.dns_servers.addr[1].port, 53);
	assert_int_equal(cfg.dns_servers.addr[2].port, 53);
	assert_string_equal(cfg.db_url, "sqlite:/srv/kale/policy.db");
	assert_int_equal(cfg.n_retry, 5);
	assert_int_equal(cfg.retry[0], 30);
	assert_int_equal(cfg.retry[1], 90);
	assert_int_equal(cfg.retry[2], 300);
	assert_int_equal(cfg.retry[3], 7200);
	assert_int_equal(cfg.retry[4], 86400);
	assert_int_equal(cfg.max_age, 2 * 86400);
	assert_int_equal(cfg.remote_port, 2526);
	assert_int_equal(cfg.mailbox_mbox, 1);
	assert_int_equal(cfg.log_syslog, 1);
	assert_string_equal(cfg.log_level, "debug");
	assert_int_equal(cfg.log_min_level, 0);
	conf_free(&cfg);
	assert_null(cfg.path);
	assert_null(cfg.hostname);
	assert_int_equal(cfg.smtp.n, 0);
	conf_free(&cfg);        /* twice is fine */
}

static void test_defaults(void **state)
{
	struct kale_config cfg;
	char *err;
	char want[PATH_MAX + 32];
	static const int retry[] = { 60, 300, 900, 1800, 3600, 7200, 14400 };

	(void)state;
	assert_int_equal(load_text("", &cfg, &err), 0);
	assert_non_null(cfg.hostname);
	assert_true(strlen(cfg.hostname) > 0);
	assert_string_equal(cfg.data_dir, "/var/lib/kale");
	assert_string_equal(cfg.run_as, "kale");
	assert_int_equal(cfg.smtp.n + cfg.submission.n + cfg.submissions.n + cfg.pop3.n +
	    cfg.pop3s.n + cfg.imap.n + cfg.imaps.n + cfg.admin.n + cfg.dns_servers.n, 0);
	snprintf(want, sizeof(want), "%s/tls/cert.pem", tmpdir);
	assert_string_equal(cfg.tls_cert, want);
	snprintf(want, sizeof(want), "%s/tls/key.pem", tmpdir);
	assert_string_equal(cfg.tls_key, want);
	assert_int_equal(cfg.auth_on_mx, 0);
	assert_int_equal(cfg.greeting_delay, 0);
	assert_true(cfg.message_size == 26214400);
	assert_int_equal(cfg.max_recipients, 100);
	assert_int_equal(cfg.max_connections, 1000);
	assert_int_equal(cfg.max_connections_per_ip, 20);
	assert_int_equal(cfg.command_timeout, 300);
	assert_string_equal(cfg.db_url, "sqlite:kale.db");
	assert_int_equal(cfg.n_retry, 7);
	assert_memory_equal(cfg.retry, retry, sizeof(retry));
	assert_int_equal(cfg.max_age, 5 * 86400);
	assert_int_equal(cfg.remote_port, 25);
	assert_int_equal(cfg.mailbox_mbox, 0);
	assert_int_equal(cfg.log_syslog, 0);
	assert_string_equal(cfg.log_level, "info");
	assert_int_equal(cfg.log_min_level, 1);
	conf_free(&cfg);

	/* only comments and blank lines: still the defaults */
	assert_int_equal(load_text("# nothing\n\n   ; here\n\t\n", &cfg, &err), 0);
	assert_int_equal(cfg.max_recipients, 100);
	conf_free(&cfg);
}

static void test_relative_paths(void **state)
{
	struct kale_config cfg;
	char *err, want[PATH_MAX + 32], sub[PATH_MAX + 16], subconf[PATH_MAX + 32], cwd[PATH_MAX];

	(void)state;
	assert_int_equal(load_text("[server]\ndata_dir = var\n[tls]\ncert = tls/c.pem\nkey = ./k/../k.pem\n",
	    &cfg, &err), 0);
	snprintf(want, sizeof(want), "%s/var", tmpdir);
	assert_string_equal(cfg.data_dir, want);
	snprintf(want, sizeof(want), "%s/tls/c.pem", tmpdir);
	assert_string_equal(cfg.tls_cert, want);
	snprintf(want, sizeof(want), "%s/k/../k.pem", tmpdir);
	assert_string_equal(cfg.tls_key, want);
	conf_free(&cfg);

	assert_int_equal(load_text("[server]\ndata_dir = ./var/\n", &cfg, &err), 0);
	snprintf(want, sizeof(want), "%s/var", tmpdir);
	assert_string_equal(cfg.data_dir, want);
	conf_free(&cfg);

	assert_int_equal(load_text("[server]\ndata_dir = .\n", &cfg, &err), 0);
	assert_string_equal(cfg.data_dir, tmpdir);
	conf_free(&cfg);

	/* the config named relative to the working directory, through a subfolder */
	snprintf(sub, sizeof(sub), "%s/sub", tmpdir);
	assert_int_equal(mkdir(sub, 0755), 0);
	snprintf(subconf, sizeof(subconf), "%s/k.conf", sub);
	write_bytes(subconf, "[server]\ndata_dir = var\n", 24);
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(tmpdir), 0);
	err = NULL;
	if (conf_load("sub/../sub/k.conf", &cfg, &err) != 0)
		fail_msg("unexpected error: %s", err);
	assert_int_equal(chdir(cwd), 0);
	assert_string_equal(cfg.path, "sub/../sub/k.conf");
	assert_string_equal(cfg.dir, sub);
	snprintf(want, sizeof(want), "%s/var", sub);
	assert_string_equal(cfg.data_dir, want);
	conf_free(&cfg);

	/* bare file name in the working directory */
	assert_int_equal(chdir(sub), 0);
	err = NULL;
	if (conf_load("k.conf", &cfg, &err) != 0)
		fail_msg("unexpected error: %s", err);
	assert_int_equal(chdir(cwd), 0);
	assert_string_equal(cfg.dir, sub);
	conf_free(&cfg);
}

static void test_durations(void **state)
{
	(void)state;
	assert_int_equal(conf_parse_duration("0"), 0);
	assert_int_equal(conf_parse_duration("90"), 90);
	assert_int_equal(conf_parse_duration("90s"), 90);
	assert_int_equal(conf_parse_duration("5m"), 300);
	assert_int_equal(conf_parse_duration("2h"), 7200);
	assert_int_equal(conf_parse_duration("5d"), 432000);
	assert_int_equal(conf_parse_duration("3650d"), 3650LL * 86400);
	assert_int_equal(conf_parse_duration(""), -1);
	assert_int_equal(conf_parse_duration("m"), -1);
	assert_int_equal(conf_parse_duration("-5"), -1);
	assert_int_equal(conf_parse_duration("+5"), -1);
	assert_int_equal(conf_parse_duration(" 5"), -1);
	assert_int_equal(conf_parse_duration("5 m"), -1);
	assert_int_equal(conf_parse_duration("5w"), -1);
	assert_int_equal(conf_parse_duration("5mm"), -1);
	assert_int_equal(conf_parse_duration("1.5h"), -1);
	assert_int_equal(conf_parse_duration("3651d"), -1);
	assert_int_equal(conf_parse_duration("99999999999999999999999"), -1);
	assert_int_equal(conf_parse_duration(NULL), -1);
}

static void test_addr(void **state)
{
	struct conf_addr a;
	char buf[300];
	static const char *const bad[] = {
		"", ":25", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
		"127.0.0.1:-1", "127.0.0.1:+25", "127.0.0.1:25x", "127.0.0.1: 25",
		"::1:25", "[::1]", "[::1]25", "[::1]:", "[::1]:0", "[]:25", "[nothost]:25",
		"[127.0.0.1]:25", "host name:25", "-host:25", ".host:25", "a/b:25",
		"127.0.0.1:99999999999999999999",
	};

	(void)state;
	assert_int_equal(conf_parse_addr("127.0.0.1:25", &a), 0);
	assert_string_equal(a.host, "127.0.0.1");
	assert_int_equal(a.port, 25);
	assert_int_equal(conf_parse_addr("[::1]:25", &a), 0);
	assert_string_equal(a.host, "::1");
	assert_int_equal(a.port, 25);
	assert_int_equal(conf_parse_addr("[2001:db8::7]:65535", &a), 0);
	assert_string_equal(a.host, "2001:db8::7");
	assert_int_equal(a.port, 65535);
	assert_int_equal(conf_parse_addr("mx.example.test:1", &a), 0);
	assert_string_equal(a.host, "mx.example.test");
	assert_int_equal(a.port, 1);
	assert_int_equal(conf_parse_addr("0.0.0.0:2525", &a), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (conf_parse_addr(bad[i], &a) != -1)
			fail_msg("'%s' was accepted", bad[i]);
	}
	/* a host of 256 characters does not fit */
	memset(buf, 'a', 256);
	memcpy(buf + 256, ":25", 4);
	assert_int_equal(conf_parse_addr(buf, &a), -1);

	assert_int_equal(conf_parse_addr("[::1]:2525", &a), 0);
	assert_int_equal(conf_addr_format(&a, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "[::1]:2525");
	assert_int_equal(conf_parse_addr("127.0.0.1:25", &a), 0);
	assert_int_equal(conf_addr_format(&a, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "127.0.0.1:25");
	assert_int_equal(conf_addr_format(&a, buf, 5), -1);
}

static void test_listen_lists(void **state)
{
	struct kale_config cfg;
	char *err;

	(void)state;
	assert_int_equal(load_text("[listen]\nsmtp = 127.0.0.1:25,[::1]:25 ,  mx.example.test:2525\n"
	    "imap =\npop3 =   ; off\nadmin = 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,"
	    "127.0.0.1:5,127.0.0.1:6,127.0.0.1:7,127.0.0.1:8\n", &cfg, &err), 0);
	assert_int_equal(cfg.smtp.n, 3);
	assert_string_equal(cfg.smtp.addr[1].host, "::1");
	assert_string_equal(cfg.smtp.addr[2].host, "mx.example.test");
	assert_int_equal(cfg.smtp.addr[2].port, 2525);
	assert_int_equal(cfg.imap.n, 0);
	assert_int_equal(cfg.pop3.n, 0);
	assert_int_equal(cfg.admin.n, 8);
	assert_int_equal(cfg.admin.addr[7].port, 8);
	conf_free(&cfg);
}

static void test_comments_and_crlf(void **state)
{
	struct kale_config cfg;
	char *err;

	(void)state;
	assert_int_equal(load_text(
	    "# hash comment\n"
	    "; semicolon comment\n"
	    "   # indented comment\n"
	    "[server]   ; section with a comment\n"
	    "  hostname   =   mx.example.test   ; greeting name\n"
	    "run_as = kale# not a comment (no space before it)\n"
	    "[database]\n"
	    "url = postgresql://u:p#w@h/db # trailing\n"
	    , &cfg, &err), -1);     /* run_as with '#' is a bad user name */
	assert_non_null(strstr(err, ":6: "));
	free(err);

	if (load_text(
	    "# hash comment\r\n"
	    "; semicolon comment\r\n"
	    "\r\n"
	    "[server]\t; tab before comment\r\n"
	    "  hostname   =   mx.example.test   ; greeting name\r\n"
	    "\tdata_dir=var#1\r\n"
	    "[ limits ]\r\n"
	    "max_recipients = 7\t# seven\r\n"
	    "[log]\r\n"
	    "level = warn", &cfg, &err) != 0)
		fail_msg("unexpected error: %s", err);
	assert_string_equal(cfg.hostname, "mx.example.test");
	assert_non_null(strstr(cfg.data_dir, "/var#1"));
	assert_int_equal(cfg.max_recipients, 7);
	assert_string_equal(cfg.log_level, "warn");
	assert_int_equal(cfg.log_min_level, 2);
	conf_free(&cfg);

	/* a UTF-8 byte order mark is tolerated; repeated sections merge */
	if (load_text("\xef\xbb\xbf[limits]\nmax_recipients = 9\n[server]\nrun_as = x\n"
	    "[limits]\ncommand_timeout = 5\n", &cfg, &err) != 0)
		fail_msg("unexpected error: %s", err);
	assert_int_equal(cfg.max_recipients, 9);
	assert_int_equal(cfg.command_timeout, 5);
	conf_free(&cfg);
}

static void test_errors(void **state)
{
	char big[CONF_MAX_LINE + 64];
	static const char nul[] = "[server]\nhostname = a\0b\n";

	(void)state;
	expect_error("[server]\n[nope]\n", 2, "unknown section [nope]");
	expect_error("[server\n", 1, "bad section header");
	expect_error("[server]\nfoo = 1\n", 2, "unknown key 'foo' in [server]");
	expect_error("[server]\nsmtp = 127.0.0.1:25\n", 2, "unknown key 'smtp' in [server]");
	expect_error("hostname = x\n", 1, "outside of any [section]");
	expect_error("[server]\nrun_as = a\n\nrun_as = b\n", 4, "duplicate key [server] run_as (first set on line 2)");
	expect_error("[limits]\nmax_recipients = 5\n[server]\n[limits]\nmax_recipients = 6\n", 5, "duplicate key");
	expect_error("[server]\nhostname\n", 2, "expected 'key = value'");
	expect_error("[server]\n= x\n", 2, "missing key");
	expect_error("[limits]\nmax_recipients = ten\n", 2, "[limits] max_recipients: bad value 'ten'");
	expect_error("[limits]\nmax_recipients = 0\n", 2, "want a number 1..100000");
	expect_error("[limits]\nmax_recipients = 100001\n", 2, "max_recipients");
	expect_error("[limits]\nmax_recipients = -1\n", 2, "max_recipients");
	expect_error("[limits]\nmax_recipients = +5\n", 2, "max_recipients");
	expect_error("[limits]\nmax_recipients = 5 5\n", 2, "max_recipients");
	expect_error("[limits]\nmessage_size = 0\n", 2, "message_size");
	expect_error("[limits]\nmessage_size = 1099511627777\n", 2, "message_size");
	expect_error("[limits]\nmax_connections = 0\n", 2, "max_connections");
	expect_error("[limits]\nmax_connections = 100001\n", 2, "max_connections");
	expect_error("[limits]\nmax_connections_per_ip = 0\n", 2, "max_connections_per_ip");
	expect_error("[limits]\ncommand_timeout = 0\n", 2, "command_timeout");
	expect_error("[limits]\ncommand_timeout = 3601\n", 2, "command_timeout");
	expect_error("[smtp]\ngreeting_delay = 301\n", 2, "greeting_delay");
	expect_error("[delivery]\nremote_port = 0\n", 2, "remote_port");
	expect_error("[delivery]\nremote_port = 65536\n", 2, "remote_port");
	expect_error("[delivery]\nmailbox_format = mh\n", 2, "want maildir or mbox");
	/* cross-key: reported on the per-ip line, or on max_connections when per-ip is default */
	expect_error("[limits]\nmax_connections_per_ip = 50\nmax_connections = 10\n", 2,
	    "max_connections_per_ip (50) is above max_connections (10)");
	expect_error("[limits]\n\nmax_connections = 10\n", 3, "is above");
	expect_error("[smtp]\nauth_on_mx = maybe\n", 2, "bad boolean 'maybe'");
	expect_error("[log]\nsyslog = 2\n", 2, "bad boolean");
	expect_error("[log]\nlevel = loud\n", 2, "want debug, info, warn or error");
	expect_error("[queue]\nmax_age = 5y\n", 2, "[queue] max_age: bad duration '5y'");
	expect_error("[queue]\nmax_age = 0\n", 2, "bad duration");
	expect_error("[queue]\nretry = 1m,,5m\n", 2, "bad interval ''");
	expect_error("[queue]\nretry = 1m,5x\n", 2, "bad interval '5x'");
	expect_error("[queue]\nretry = 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,"
	    "21,22,23,24,25,26,27,28,29,30,31,32,33\n", 2, "too many intervals (at most 32)");
	expect_error("[listen]\nsmtp = 127.0.0.1\n", 2, "[listen] smtp: bad address '127.0.0.1'");
	expect_error("[listen]\nsmtp = 127.0.0.1:0\n", 2, "bad address");
	expect_error("[listen]\nsmtp = 127.0.0.1:65536\n", 2, "bad address");
	expect_error("[listen]\nimap = ::1:143\n", 2, "bad address '::1:143'");
	expect_error("[listen]\nimap = [::1]:x\n", 2, "bad address");
	expect_error("[listen]\nsmtp = 127.0.0.1:25,\n", 2, "empty address in list");
	expect_error("[listen]\nsmtp = a:1,a:2,a:3,a:4,a:5,a:6,a:7,a:8,a:9\n", 2, "too many addresses (at most 8)");
	expect_error("[dns]\nservers = resolver.example:53\n", 2, "bad server address");
	expect_error("[server]\nhostname = bad host\n", 2, "bad host name");
	expect_error("[server]\nhostname = a\\b\n", 2, "bad host name");
	expect_error("[server]\nrun_as = \n", 2, "[server] run_as: empty value");
	expect_error("[server]\ndata_dir =\n", 2, "[server] data_dir: empty value");
	expect_error("[tls]\ncert = ; none\n", 2, "empty value");
	expect_error("[database]\nurl = mysql://x\n", 2, "bad database url");
	expect_error("[database]\nurl = sqlite:\n", 2, "bad database url");
	expect_error("[server]\n\n[database]\nurl = postgresql://kale:pw@db.example:5432/kale\n", 4,
	    "postgresql policy store not supported yet");
	expect_error("[server]\nhostname = a\x01" "b\n", 2, "control character 0x01");
	expect_error("[server]\nhostname = a\rb\n", 2, "control character 0x0d");
	expect_error_len(nul, sizeof(nul) - 1, 2, "NUL byte");

	/* a line of exactly CONF_MAX_LINE bytes is fine (a comment); one more is not */
	memset(big, ' ', sizeof(big));
	big[0] = '#';
	big[CONF_MAX_LINE] = '\n';
	big[CONF_MAX_LINE + 1] = '\0';
	{
		struct kale_config cfg;
		char *err;
		assert_int_equal(load_text(big, &cfg, &err), 0);
		conf_free(&cfg);
	}
	memcpy(big, "[server]\n#", 10);
	memset(big + 10, 'x', CONF_MAX_LINE);
	big[CONF_MAX_LINE + 10] = '\n';
	big[CONF_MAX_LINE + 11] = '\0';
	expect_error(big, 2, "line too long");
}

static void test_file_errors(void **state)
{
	struct kale_config cfg;
	char *err = NULL, path[PATH_MAX + 32], want[PATH_MAX + 64];
	char *huge;

	(void)state;
	snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
	assert_int_equal(conf_load(path, &cfg, &err), -1);
	snprintf(want, sizeof(want), "%s:0: cannot open: %s", path, strerror(ENOENT));
	assert_string_equal(err, want);
	free(err);

	err = NULL;
	assert_int_equal(conf_load(tmpdir, &cfg, &err), -1);
	snprintf(want, sizeof(want), "%s:0: cannot open: not a regular file", tmpdir);
	assert_string_equal(err, want);
	free(err);

	huge = xmalloc(CONF_MAX_FILE + 2);
	memset(huge, '\n', CONF_MAX_FILE + 1);
	write_bytes(confpath, huge, CONF_MAX_FILE + 1);
	free(huge);
	err = NULL;
	assert_int_equal(conf_load(confpath, &cfg, &err), -1);
	assert_non_null(strstr(err, ":0: file too large"));
	free(err);
}

/* [auth]: the brute-force brake's keys, defaults and bounds. */
static void test_brake_keys(void **state)
{
	struct kale_config cfg;
	char *err = NULL;

	(void)state;
	assert_int_equal(load_text("[server]\ndata_dir = /tmp\n", &cfg, &err), 0);
	assert_int_equal(cfg.brake_limit, 10);
	assert_int_equal(cfg.brake_window, 900);
	assert_int_equal(cfg.brake_max_delay, 15);
	conf_free(&cfg);
	assert_int_equal(load_text("[auth]\nbrake_limit = 3\nbrake_window = 2h\nbrake_max_delay = 0\n",
	    &cfg, &err), 0);
	assert_int_equal(cfg.brake_limit, 3);
	assert_int_equal(cfg.brake_window, 7200);
	assert_int_equal(cfg.brake_max_delay, 0);
	conf_free(&cfg);
	expect_error("[auth]\nbrake_limit = 0\n", 2, "[auth] brake_limit");
	expect_error("[auth]\n\nbrake_window = 0\n", 3, "[auth] brake_window");
	expect_error("[auth]\nbrake_window = 8d\n", 2, "[auth] brake_window");
	expect_error("[auth]\nbrake_max_delay = 5m1\n", 2, "[auth] brake_max_delay");
	expect_error("[auth]\nbrake_max_delay = 301\n", 2, "[auth] brake_max_delay");
	expect_error("[auth]\nbrake = 1\n", 2, "unknown key 'brake' in [auth]");
}

/* The sample kale.conf at the repository root must load. */
static void test_sample_config(void **state)
{
	struct kale_config cfg;
	char root[PATH_MAX], path[PATH_MAX + 16], want[PATH_MAX + 16];
	const char *me = __FILE__, *suffix = "tests/unit/test_conf.c";
	size_t n = strlen(me), sl = strlen(suffix);
	char *err = NULL, *real;

	(void)state;
	assert_true(n >= sl && strcmp(me + n - sl, suffix) == 0);
	snprintf(root, sizeof(root), "%.*s", (int)(n - sl), me);
	if (root[0] == '\0')
		snprintf(root, sizeof(root), ".");
	snprintf(path, sizeof(path), "%s/kale.conf", root);
	if (conf_load(path, &cfg, &err) != 0)
		fail_msg("sample config: %s", err);
	real = realpath(root, NULL);
	assert_non_null(real);
	snprintf(want, sizeof(want), "%s/var", real);
	assert_string_equal(cfg.data_dir, want);
	free(real);
	assert_string_equal(cfg.hostname, "mx.example.test");
	assert_string_equal(cfg.run_as, "kale");
	assert_int_equal(cfg.smtp.addr[0].port, 2525);
	assert_int_equal(cfg.submission.addr[0].port, 5870);
	assert_int_equal(cfg.submissions.addr[0].port, 4650);
	assert_int_equal(cfg.pop3.addr[0].port, 1100);
	assert_int_equal(cfg.imap.addr[0].port, 1430);
	assert_int_equal(cfg.admin.n, 0);          /* no admin service is built yet */
	assert_int_equal(cfg.pop3s.n + cfg.imaps.n, 0);
	conf_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_relative_paths),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_addr),
		cmocka_unit_test(test_listen_lists),
		cmocka_unit_test(test_comments_and_crlf),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_sample_config),
		cmocka_unit_test(test_brake_keys),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
