/* test_tls: unit tests for src/lib/tls.c: self-signed generation into a temp
 * dir, reuse on the second call, one-file-missing and mismatch errors, and a
 * full in-memory handshake between the server and client contexts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lib/tls.h"
#include "lib/util.h"

static char tmpdir[256];

static void path_in(char *buf, size_t cap, const char *rel)
{
	assert_int_equal(util_fmt(buf, cap, "%s/%s", tmpdir, rel), 0);
}

static int setup(void **state)
{
	char tmpl[] = "/tmp/kale-test-tls-XXXXXX";

	(void)state;
	umask(022);
	if (mkdtemp(tmpl) == NULL)
		return -1;
	snprintf(tmpdir, sizeof(tmpdir), "%s", tmpl);
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *slurp(const char *path)
{
	char *s = fs_read_file(path, 65536, NULL);
	assert_non_null(s);
	return s;
}

static SSL_CTX *server_ok(const char *cert, const char *key, const char *cn)
{
	char *err = NULL;
	SSL_CTX *ctx = tls_server_ctx(cert, key, cn, &err);

	if (ctx == NULL)
		fail_msg("tls_server_ctx: %s", err);
	return ctx;
}

static void server_fails(const char *cert, const char *key, const char *what)
{
	char *err = NULL;
	SSL_CTX *ctx = tls_server_ctx(cert, key, "mx.example.test", &err);

	if (ctx != NULL)
		fail_msg("tls_server_ctx accepted %s / %s", cert, key);
	assert_non_null(err);
	if (strncmp(err, "tls: ", 5) != 0 || strstr(err, what) == NULL)
		fail_msg("want '%s', got '%s'", what, err);
	free(err);
	assert_int_equal(ERR_peek_error(), 0);  /* error queue left clean */
}

static void test_generate(void **state)
{
	char cert[512], key[512], dir[512];
	struct stat st;
	SSL_CTX *ctx;
	X509 *x;
	EVP_PKEY *pk;
	FILE *f;
	char cn[128];
	int days = 0, secs = 0;

	(void)state;
	path_in(cert, sizeof(cert), "a/tls/cert.pem");
	path_in(key, sizeof(key), "a/private/key.pem");
	ctx = server_ok(cert, key, "mx.example.test");
	assert_true(SSL_CTX_get_min_proto_version(ctx) == TLS1_2_VERSION);
	assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_COMPRESSION);
	assert_true(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION);
	assert_true(SSL_CTX_get_mode(ctx) & SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_free(ctx);

	assert_int_equal(stat(key, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(stat(cert, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	path_in(dir, sizeof(dir), "a/tls");
	assert_int_equal(stat(dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0755);
	path_in(dir, sizeof(dir), "a/tls/cert.pem.tmp");
	assert_int_equal(access(dir, F_OK), -1);

	f = fopen(cert, "r");
	assert_non_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
	    sizeof(cn)) > 0);
	assert_string_equal(cn, "mx.example.test");
	assert_int_equal(X509_check_host(x, "mx.example.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(x, "other.example.test", 0, 0, NULL), 0);
	assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)), 1);
	assert_true(days >= 3649 && days <= 3650);
	pk = X509_get0_pubkey(x);
	assert_non_null(pk);
	assert_true(EVP_PKEY_is_a(pk, "EC"));
	assert_int_equal(X509_verify(x, pk), 1);        /* signed by its own key */
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
	X509_free(x);
}

static void test_reuse(void **state)
{
	char cert[512], key[512];
	char *c1, *k1, *c2, *k2;
	struct stat s1, s2;

	(void)state;
	path_in(cert, sizeof(cert), "r/cert.pem");
	path_in(key, sizeof(key), "r/key.pem");
	SSL_CTX_free(server_ok(cert, key, "mx.example.test"));
	c1 = slurp(cert);
	k1 = slurp(key);
	assert_int_equal(stat(cert, &s1), 0);
	SSL_CTX_free(server_ok(cert, key, "another.example.test"));
	c2 = slurp(cert);
	k2 = slurp(key);
	assert_int_equal(stat(cert, &s2), 0);
	assert_string_equal(c1, c2);
	assert_string_equal(k1, k2);
	assert_true(s1.st_ino == s2.st_ino);
	assert_non_null(strstr(c1, "-----BEGIN CERTIFICATE-----"));
	assert_non_null(strstr(k1, "-----BEGIN PRIVATE KEY-----"));
	free(c1);
	free(k1);
	free(c2);
	free(k2);
}

static void test_one_missing(void **state)
{
	char cert[512], key[512];
	char *k1, *k2;

	(void)state;
	path_in(cert, sizeof(cert), "m/cert.pem");
	path_in(key, sizeof(key), "m/key.pem");
	SSL_CTX_free(server_ok(cert, key, "mx.example.test"));
	k1 = slurp(key);
	assert_int_equal(unlink(cert), 0);
	server_fails(cert, key, "is missing");
	/* nothing was regenerated behind the operator's back */
	assert_int_equal(access(cert, F_OK), -1);
	k2 = slurp(key);
	assert_string_equal(k1, k2);
	free(k1);
	free(k2);

	/* the other way round: a certificate without its key */
	path_in(cert, sizeof(cert), "m2/cert.pem");
	path_in(key, sizeof(key), "m2/key.pem");
	SSL_CTX_free(server_ok(cert, key, "mx.example.test"));
	assert_int_equal(unlink(key), 0);
	server_fails(cert, key, "certificate");
	assert_int_equal(access(key, F_OK), -1);
}

static void test_mismatch_and_garbage(void **state)
{
	char cert_a[512], key_a[512], cert_b[512], key_b[512], junk[512];
	FILE *f;

	(void)state;
	path_in(cert_a, sizeof(cert_a), "x/a-cert.pem");
	path_in(key_a, sizeof(key_a), "x/a-key.pem");
	path_in(cert_b, sizeof(cert_b), "x/b-cert.pem");
	path_in(key_b, sizeof(key_b), "x/b-key.pem");
	SSL_CTX_free(server_ok(cert_a, key_a, "a.example.test"));
	SSL_CTX_free(server_ok(cert_b, key_b, "b.example.test"));
	server_fails(cert_a, key_b, "does not match");
	server_fails(cert_b, key_a, "does not match");

	path_in(junk, sizeof(junk), "x/junk.pem");
	f = fopen(junk, "w");
	assert_non_null(f);
	fputs("not a pem file\n", f);
	fclose(f);
	server_fails(junk, key_a, "cannot load certificate");
	server_fails(cert_a, junk, "cannot read private key");
	/* a certificate where the key should be */
	server_fails(cert_a, cert_a, "cannot read private key");
}

static void test_odd_names(void **state)
{
	char cert[512], key[512], long_cn[201];
	X509 *x;
	FILE *f;

	(void)state;
	/* no cn: localhost */
	path_in(cert, sizeof(cert), "n1/cert.pem");
	path_in(key, sizeof(key), "n1/key.pem");
	SSL_CTX_free(server_ok(cert, key, NULL));
	f = fopen(cert, "r");
	assert_non_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
	X509_free(x);

	/* longer than a CN may be: still a valid certificate, name in the SAN */
	memset(long_cn, 'a', 200);
	long_cn[200] = '\0';
	long_cn[60] = long_cn[120] = long_cn[180] = '.';
	path_in(cert, sizeof(cert), "n2/cert.pem");
	path_in(key, sizeof(key), "n2/key.pem");
	SSL_CTX_free(server_ok(cert, key, long_cn));
}

/* Moves bytes between the two memory BIO ends until both handshakes finish. */
static void test_handshake(void **state)
{
	char cert[512], key[512], *err = NULL;
	SSL_CTX *sctx, *cctx;
	SSL *s, *c;
	BIO *sb, *cb;
	int s_done = 0, c_done = 0;
	char buf[16];

	(void)state;
	path_in(cert, sizeof(cert), "h/cert.pem");
	path_in(key, sizeof(key), "h/key.pem");
	sctx = server_ok(cert, key, "mx.example.test");
	cctx = tls_client_ctx(&err);
	if (cctx == NULL)
		fail_msg("tls_client_ctx: %s", err);
	assert_true(SSL_CTX_get_min_proto_version(cctx) == TLS1_2_VERSION);
	assert_true(SSL_CTX_get_verify_mode(cctx) == SSL_VERIFY_NONE);
	/* trust exactly our self-signed certificate and verify it */
	assert_int_equal(SSL_CTX_load_verify_locations(cctx, cert, NULL), 1);
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);

	s = SSL_new(sctx);
	c = SSL_new(cctx);
	assert_non_null(s);
	assert_non_null(c);
	assert_int_equal(SSL_set1_host(c, "mx.example.test"), 1);
	assert_int_equal(SSL_set_tlsext_host_name(c, "mx.example.test"), 1);
	assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	SSL_set_bio(s, sb, sb);
	SSL_set_bio(c, cb, cb);
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	for (int i = 0; i < 100 && !(s_done && c_done); i++) {
		int r;
		if (!c_done) {
			r = SSL_do_handshake(c);
			if (r == 1)
				c_done = 1;
			else
				assert_int_equal(SSL_get_error(c, r), SSL_ERROR_WANT_READ);
		}
		if (!s_done) {
			r = SSL_do_handshake(s);
			if (r == 1)
				s_done = 1;
			else
				assert_int_equal(SSL_get_error(s, r), SSL_ERROR_WANT_READ);
		}
	}
	assert_true(s_done && c_done);
	assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
	assert_true(SSL_version(c) >= TLS1_2_VERSION);
	assert_null(SSL_get_current_compression(c));
	assert_int_equal(SSL_write(c, "hello", 5), 5);
	assert_int_equal(SSL_read(s, buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "hello", 5);
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sctx);
	SSL_CTX_free(cctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generate),
		cmocka_unit_test(test_reuse),
		cmocka_unit_test(test_one_missing),
		cmocka_unit_test(test_mismatch_and_garbage),
		cmocka_unit_test(test_odd_names),
		cmocka_unit_test(test_handshake),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
