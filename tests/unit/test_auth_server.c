/* test_auth_server: unit tests for src/auth/auth_server.c against a scripted
 * fake POP3/IMAP server on 127.0.0.1 (a thread, blocking I/O, OpenSSL for
 * STARTTLS): IMAP quoting and literals, STARTTLS/STLS injection discarded
 * (CVE-2021-38371), temporary answers, timeouts, a closed port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "auth/auth_int.h"
#include "lib/tls.h"
#include "lib/util.h"

enum { F_SEND, F_EXPECT, F_RAW, F_TLS, F_END };

struct fstep {
	int kind;
	const char *text;
};

struct fake {
	int lfd, port;
	SSL_CTX *ctx;
	const struct fstep *steps;
	int ok;
	char got[512];
	pthread_t th;
};

static char tmpdir[256];
static SSL_CTX *server_ctx;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int group_setup(void **state)
{
	char tmpl[] = "/tmp/kale-test-auth-XXXXXX", cert[300], key[300];
	char *err = NULL;

	(void)state;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	snprintf(tmpdir, sizeof(tmpdir), "%s", tmpl);
	snprintf(cert, sizeof(cert), "%s/cert.pem", tmpdir);
	snprintf(key, sizeof(key), "%s/key.pem", tmpdir);
	server_ctx = tls_server_ctx(cert, key, "localhost", &err);
	free(err);
	return server_ctx == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
	(void)state;
	SSL_CTX_free(server_ctx);
	return nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int fake_read(int fd, SSL *ssl, char *c)
{
	if (ssl != NULL)
		return SSL_read(ssl, c, 1) == 1 ? 0 : -1;
	return recv(fd, c, 1, 0) == 1 ? 0 : -1;
}

static int fake_write(int fd, SSL *ssl, const char *s)
{
	size_t len = strlen(s);

	if (ssl != NULL)
		return SSL_write(ssl, s, (int)len) == (int)len ? 0 : -1;
	return send(fd, s, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static void *fake_run(void *arg)
{
	struct fake *f = arg;
	struct pollfd pfd = { .fd = f->lfd, .events = POLLIN };
	struct timeval tv = { .tv_sec = 5 };
	SSL *ssl = NULL;
	int fd = -1;

	if (poll(&pfd, 1, 5000) != 1 || (fd = accept(f->lfd, NULL, NULL)) < 0)
		return NULL;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (const struct fstep *s = f->steps; s->kind != F_END; s++) {
		char line[512];
		size_t n = 0, want;

		switch (s->kind) {
		case F_SEND:
			if (fake_write(fd, ssl, s->text) < 0)
				goto out;
			break;
		case F_EXPECT:
			while (n < sizeof(line) - 1 && fake_read(fd, ssl, &line[n]) == 0 && line[n] != '\n')
				n++;
			line[n] = '\0';
			if (n > 0 && line[n - 1] == '\r')
				line[n - 1] = '\0';
			snprintf(f->got, sizeof(f->got), "%s", line);
			if (strcmp(line, s->text) != 0)
				goto out;
			break;
		case F_RAW:
			want = strlen(s->text);
			while (n < want && fake_read(fd, ssl, &line[n]) == 0)
				n++;
			line[n] = '\0';
			snprintf(f->got, sizeof(f->got), "%s", line);
			if (n != want || memcmp(line, s->text, want) != 0)
				goto out;
			break;
		case F_TLS:
			ssl = SSL_new(server_ctx);
			SSL_set_fd(ssl, fd);
			if (SSL_accept(ssl) != 1)
				goto out;
			break;
		}
	}
	f->ok = 1;
	/* let the client finish (LOGOUT/QUIT) without a reset */
	{
		char c;
		while (fake_read(fd, ssl, &c) == 0)
			;
	}
out:
	if (ssl != NULL) {
		SSL_shutdown(ssl);
		SSL_free(ssl);
	}
	close(fd);
	return NULL;
}

static void fake_start(struct fake *f, const struct fstep *steps)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	memset(f, 0, sizeof(*f));
	f->steps = steps;
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
	assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sin, &sl), 0);
	f->port = ntohs(sin.sin_port);
	assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
}

static void fake_join(struct fake *f)
{
	pthread_join(f->th, NULL);
	close(f->lfd);
}

static enum auth_result login(struct fake *f, const char *proto, const char *tls,
    const char *user, const char *pw, int timeout_ms, char **detail)
{
	struct store_auth_server srv;
	SSL_CTX *ctx = NULL;
	enum auth_result r;

	memset(&srv, 0, sizeof(srv));
	srv.id = 7;
	snprintf(srv.proto, sizeof(srv.proto), "%s", proto);
	snprintf(srv.tls, sizeof(srv.tls), "%s", tls);
	snprintf(srv.host, sizeof(srv.host), "127.0.0.1");
	srv.port = f->port;
	srv.enabled = 1;
	r = auth_server_login(&srv, user, pw, &ctx, util_now_ms() + (uint64_t)timeout_ms, detail);
	SSL_CTX_free(ctx);
	return r;
}

static void test_imap_quoted(void **state)
{
	static const struct fstep steps[] = {
		{ F_SEND, "* OK [CAPABILITY IMAP4rev1] hi\r\n" },
		{ F_EXPECT, "a2 LOGIN \"bob@x.test\" \"s3cret pw\"" },
		{ F_SEND, "* CAPABILITY IMAP4rev1\r\na2 OK logged in\r\n" },
		{ F_EXPECT, "a3 LOGOUT" },
		{ F_SEND, "* BYE\r\na3 OK bye\r\n" },
		{ F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "imap", "plain", "bob@x.test", "s3cret pw", 5000, &detail), AUTH_OK);
	fake_join(&f);
	assert_true(f.ok);
	assert_non_null(strstr(detail, "server 7 imap 127.0.0.1:"));
	assert_non_null(strstr(detail, "accepted"));
	free(detail);
}

static void test_imap_literal(void **state)
{
	static const struct fstep steps[] = {
		{ F_SEND, "* OK hi\r\n" },
		{ F_EXPECT, "a2 LOGIN \"bob@x.test\" {9}" },
		{ F_SEND, "+ go ahead\r\n" },
		{ F_RAW, "a\"b\\c\xc3\xa9 d\r\n" },
		{ F_SEND, "a2 NO [AUTHENTICATIONFAILED] wrong\r\n" },
		{ F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "imap", "plain", "bob@x.test", "a\"b\\c\xc3\xa9 d", 5000, &detail),
	    AUTH_FAIL);
	fake_join(&f);
	assert_true(f.ok);
	assert_non_null(strstr(detail, "refused"));
	free(detail);
}

static void test_imap_literal_refused_early(void **state)
{
	static const struct fstep steps[] = {
		{ F_SEND, "* OK hi\r\n" },
		{ F_EXPECT, "a2 LOGIN {5}" },
		{ F_SEND, "a2 BAD no literals here\r\n" },
		{ F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "imap", "plain", "b\"x@y", "pw", 5000, &detail), AUTH_TEMPFAIL);
	fake_join(&f);
	assert_true(f.ok);
	free(detail);
}

static void test_imap_starttls_injection(void **state)
{
	/* the injected "a2 OK" must not be taken as the LOGIN answer */
	static const struct fstep steps[] = {
		{ F_SEND, "* OK hi\r\n" },
		{ F_EXPECT, "a1 STARTTLS" },
		{ F_SEND, "a1 OK begin TLS\r\na2 OK injected\r\n" },
		{ F_TLS, NULL },
		{ F_EXPECT, "a2 LOGIN \"bob@x.test\" \"pw\"" },
		{ F_SEND, "a2 NO [AUTHENTICATIONFAILED] no\r\n" },
		{ F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "imap", "starttls", "bob@x.test", "pw", 5000, &detail), AUTH_FAIL);
	fake_join(&f);
	assert_true(f.ok);
	free(detail);
}

static void test_pop3_stls_injection(void **state)
{
	static const struct fstep steps[] = {
		{ F_SEND, "+OK hi\r\n" },
		{ F_EXPECT, "STLS" },
		{ F_SEND, "+OK begin\r\n+OK\r\n+OK injected\r\n" },
		{ F_TLS, NULL },
		{ F_EXPECT, "USER bob@x.test" },
		{ F_SEND, "+OK\r\n" },
		{ F_EXPECT, "PASS p w" },
		{ F_SEND, "-ERR [AUTH] no\r\n" },
		{ F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "pop3", "starttls", "bob@x.test", "p w", 5000, &detail), AUTH_FAIL);
	fake_join(&f);
	assert_true(f.ok);
	free(detail);
}

static void test_pop3_ok_and_temp(void **state)
{
	static const struct fstep ok[] = {
		{ F_SEND, "+OK hi\r\n" }, { F_EXPECT, "USER u@x.test" }, { F_SEND, "+OK\r\n" },
		{ F_EXPECT, "PASS pw" }, { F_SEND, "+OK in\r\n" }, { F_EXPECT, "QUIT" },
		{ F_SEND, "+OK bye\r\n" }, { F_END, NULL } };
	static const struct fstep temp[] = {
		{ F_SEND, "+OK hi\r\n" }, { F_EXPECT, "USER u@x.test" }, { F_SEND, "+OK\r\n" },
		{ F_EXPECT, "PASS pw" }, { F_SEND, "-ERR [SYS/TEMP] db down\r\n" }, { F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, ok);
	assert_int_equal(login(&f, "pop3", "plain", "u@x.test", "pw", 5000, &detail), AUTH_OK);
	fake_join(&f);
	assert_true(f.ok);
	free(detail);
	detail = NULL;
	fake_start(&f, temp);
	assert_int_equal(login(&f, "pop3", "plain", "u@x.test", "pw", 5000, &detail), AUTH_TEMPFAIL);
	fake_join(&f);
	assert_true(f.ok);
	assert_non_null(strstr(detail, "SYS/TEMP"));
	free(detail);
}

static void test_imap_unavailable_and_logindisabled(void **state)
{
	static const struct fstep unav[] = {
		{ F_SEND, "* OK hi\r\n" }, { F_EXPECT, "a2 LOGIN \"u@x.test\" \"pw\"" },
		{ F_SEND, "a2 NO [UNAVAILABLE] later\r\n" }, { F_END, NULL } };
	static const struct fstep dis[] = {
		{ F_SEND, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n" }, { F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, unav);
	assert_int_equal(login(&f, "imap", "plain", "u@x.test", "pw", 5000, &detail), AUTH_TEMPFAIL);
	fake_join(&f);
	assert_true(f.ok);
	free(detail);
	detail = NULL;
	fake_start(&f, dis);
	assert_int_equal(login(&f, "imap", "plain", "u@x.test", "pw", 5000, &detail), AUTH_TEMPFAIL);
	fake_join(&f);
	assert_non_null(strstr(detail, "LOGINDISABLED"));
	free(detail);
}

static void test_silent_server_times_out(void **state)
{
	static const struct fstep steps[] = { { F_EXPECT, "never" }, { F_END, NULL } };
	struct fake f;
	char *detail = NULL;

	(void)state;
	fake_start(&f, steps);
	assert_int_equal(login(&f, "imap", "plain", "u@x.test", "pw", 300, &detail), AUTH_TEMPFAIL);
	assert_non_null(strstr(detail, "timed out"));
	fake_join(&f);
	free(detail);
}

static void test_closed_port_and_crlf(void **state)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	struct fake f;
	char *detail = NULL;
	int fd;

	(void)state;
	/* a port that was just free: nobody listens there */
	memset(&f, 0, sizeof(f));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	f.port = ntohs(sin.sin_port);
	close(fd);
	assert_int_equal(login(&f, "pop3", "plain", "u@x.test", "pw", 2000, &detail), AUTH_TEMPFAIL);
	assert_non_null(strstr(detail, "connect"));
	free(detail);
	detail = NULL;
	/* CR/LF cannot be sent in POP3: refused without connecting */
	assert_int_equal(login(&f, "pop3", "plain", "u@x.test", "p\r\nQUIT", 2000, &detail), AUTH_FAIL);
	free(detail);
}

static void test_needs_literal(void **state)
{
	(void)state;
	assert_int_equal(auth_imap_needs_literal("plain-pass word"), 0);
	assert_int_equal(auth_imap_needs_literal("a\"b"), 1);
	assert_int_equal(auth_imap_needs_literal("a\\b"), 1);
	assert_int_equal(auth_imap_needs_literal("a\rb"), 1);
	assert_int_equal(auth_imap_needs_literal("a\nb"), 1);
	assert_int_equal(auth_imap_needs_literal("caf\xc3\xa9"), 1);
	assert_int_equal(auth_imap_needs_literal(""), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_needs_literal),
		cmocka_unit_test(test_imap_quoted),
		cmocka_unit_test(test_imap_literal),
		cmocka_unit_test(test_imap_literal_refused_early),
		cmocka_unit_test(test_imap_starttls_injection),
		cmocka_unit_test(test_pop3_stls_injection),
		cmocka_unit_test(test_pop3_ok_and_temp),
		cmocka_unit_test(test_imap_unavailable_and_logindisabled),
		cmocka_unit_test(test_silent_server_times_out),
		cmocka_unit_test(test_closed_port_and_crlf),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
