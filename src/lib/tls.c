/* tls: builds OpenSSL 3 server and client contexts, and generates the
 * self-signed certificate used on first start. Runs in the master (kaled),
 * before it forks the network-facing processes, and in client code paths. */
#include "lib/tls.h"

#include "lib/log.h"
#include "lib/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define TLS_SELFSIGNED_DAYS 3650
#define TLS_CN_MAX 64           /* ub_common_name (RFC 5280) */

const char *tls_error_string(char *buf, size_t cap)
{
	size_t off = 0;
	unsigned long e;

	if (cap == 0)
		return buf;
	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		char one[256];
		size_t n;

		ERR_error_string_n(e, one, sizeof(one));
		n = strlen(one);
		if (off + n + 3 > cap)
			continue;       /* keep draining; drop what does not fit */
		if (off > 0) {
			memcpy(buf + off, "; ", 2);
			off += 2;
		}
		memcpy(buf + off, one, n);
		off += n;
		buf[off] = '\0';
	}
	return buf;
}

static void tls_set_error(char **error_r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* *error_r = "tls: <message>[: <openssl errors>]", malloc'd. */
static void tls_set_error(char **error_r, const char *fmt, ...)
{
	char msg[PATH_MAX + 256], ossl[1024];
	size_t n;
	va_list ap;

	va_start(ap, fmt);
	(void)util_vfmt(msg, sizeof(msg), fmt, ap);   /* a message: cut if longer */
	va_end(ap);
	tls_error_string(ossl, sizeof(ossl));
	n = strlen(msg) + strlen(ossl) + 16;
	*error_r = xmalloc(n);
	if (util_fmt(*error_r, n, "tls: %s%s%s", msg, ossl[0] ? ": " : "", ossl) < 0)
		abort();            /* n was computed to fit */
}

/* Never prompt for a passphrase: encrypted keys are refused. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

/* 1 exists, 0 absent, -1 other error (errno set). */
static int tls_exists(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0)
		return 1;
	return errno == ENOENT ? 0 : -1;
}

static int tls_add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok == 1 ? 0 : -1;
}

/* subjectAltName = DNS:cn, built as a structure so cn is never parsed. */
static int tls_add_san(X509 *x, const char *cn)
{
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	GENERAL_NAME *gen = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
	int ret = -1;

	if (gens == NULL || gen == NULL || ia5 == NULL)
		goto out;
	if (ASN1_STRING_set(ia5, cn, (int)strlen(cn)) != 1)
		goto out;
	GENERAL_NAME_set0_value(gen, GEN_DNS, ia5);
	ia5 = NULL;
	if (sk_GENERAL_NAME_push(gens, gen) <= 0)
		goto out;
	gen = NULL;
	if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
		goto out;
	ret = 0;
out:
	ASN1_IA5STRING_free(ia5);
	GENERAL_NAME_free(gen);
	GENERAL_NAMES_free(gens);
	return ret;
}

/* A fresh self-signed certificate for pk. NULL on failure (OpenSSL queue set). */
static X509 *tls_make_cert(EVP_PKEY *pk, const char *cn)
{
	unsigned char serial[16];
	X509 *x = X509_new();
	X509_NAME *name;
	BIGNUM *bn = NULL;
	const char *subject_cn = strlen(cn) <= TLS_CN_MAX ? cn : "kale self-signed";

	if (x == NULL || X509_set_version(x, 2) != 1)
		goto fail;
	if (RAND_bytes(serial, sizeof(serial)) != 1)
		goto fail;
	serial[0] &= 0x7f;      /* positive */
	serial[0] |= 0x01;      /* and not zero */
	if ((bn = BN_bin2bn(serial, sizeof(serial), NULL)) == NULL ||
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
		goto fail;
	if (X509_gmtime_adj(X509_getm_notBefore(x), -300) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), TLS_SELFSIGNED_DAYS, 0, NULL) == NULL)
		goto fail;
	if (X509_set_pubkey(x, pk) != 1)
		goto fail;
	name = X509_get_subject_name(x);
	if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	    (const unsigned char *)subject_cn, -1, -1, 0) != 1 ||
	    X509_set_issuer_name(x, name) != 1)
		goto fail;
	if (tls_add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
	    tls_add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
	    tls_add_ext(x, NID_ext_key_usage, "serverAuth") < 0 ||
	    tls_add_ext(x, NID_subject_key_identifier, "hash") < 0 ||
	    tls_add_san(x, cn) < 0)
		goto fail;
	if (X509_sign(x, pk, EVP_sha256()) <= 0)
		goto fail;
	BN_free(bn);
	return x;
fail:
	BN_free(bn);
	X509_free(x);
	return NULL;
}

/* Writes a PEM object to "<path>.tmp" with mode, fsync'd; the caller renames.
 * key or cert is set. 0, or -1 with *error_r. */
static int tls_write_tmp(const char *path, const char *tmp, mode_t mode,
    EVP_PKEY *key, X509 *cert, char **error_r)
{
	char *parent = xstrdup(path), *slash = strrchr(parent, '/');
	FILE *f = NULL;
	int fd = -1, ret = -1, ok;

	if (slash != NULL && slash != parent) {
		*slash = '\0';
		if (fs_mkdirs(parent, 0755) < 0) {
			tls_set_error(error_r, "cannot create folder %s: %s", parent, strerror(errno));
			goto out;
		}
	}
	(void)unlink(tmp);      /* left over from a crash */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0 || fchmod(fd, mode) < 0) {
		tls_set_error(error_r, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	if ((f = fdopen(fd, "w")) == NULL) {
		tls_set_error(error_r, "cannot write %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (key != NULL)
		ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	else
		ok = PEM_write_X509(f, cert);
	if (ok != 1 || fflush(f) != 0 || fsync(fileno(f)) < 0) {
		tls_set_error(error_r, "cannot write %s: %s", tmp, strerror(errno));
		goto out;
	}
	ret = 0;
out:
	if (f != NULL && fclose(f) != 0 && ret == 0) {
		tls_set_error(error_r, "cannot write %s: %s", tmp, strerror(errno));
		ret = -1;
	}
	if (fd >= 0)
		close(fd);
	if (ret < 0)
		(void)unlink(tmp);
	free(parent);
	return ret;
}

static char *tls_tmp_name(const char *path)
{
	size_t n = strlen(path) + 8;
	char *tmp = xmalloc(n);

	if (util_fmt(tmp, n, "%s.tmp", path) < 0)
		abort();            /* n was computed to fit */
	return tmp;
}

static void tls_fsync_parent(const char *path)
{
	char *parent = xstrdup(path), *slash = strrchr(parent, '/');

	if (slash != NULL) {
		if (slash == parent)
			slash[1] = '\0';
		else
			*slash = '\0';
		(void)fs_fsync_dir(parent);
	} else {
		(void)fs_fsync_dir(".");
	}
	free(parent);
}

/* Generates key + self-signed cert; both temp files are complete on disk
 * before either is renamed into place. 0, or -1 with *error_r. */
static int tls_selfsigned(const char *cert, const char *key, const char *cn, char **error_r)
{
	char *cert_tmp = tls_tmp_name(cert), *key_tmp = tls_tmp_name(key);
	EVP_PKEY *pk = NULL;
	X509 *x = NULL;
	int ret = -1;

	if ((pk = EVP_EC_gen("P-256")) == NULL) {
		tls_set_error(error_r, "cannot generate an EC P-256 key");
		goto out;
	}
	if ((x = tls_make_cert(pk, cn)) == NULL) {
		tls_set_error(error_r, "cannot make a self-signed certificate for %s", cn);
		goto out;
	}
	if (tls_write_tmp(key, key_tmp, 0600, pk, NULL, error_r) < 0)
		goto out;
	if (tls_write_tmp(cert, cert_tmp, 0644, NULL, x, error_r) < 0) {
		(void)unlink(key_tmp);
		goto out;
	}
	if (rename(key_tmp, key) < 0) {
		tls_set_error(error_r, "cannot rename %s: %s", key_tmp, strerror(errno));
		(void)unlink(key_tmp);
		(void)unlink(cert_tmp);
		goto out;
	}
	if (rename(cert_tmp, cert) < 0) {
		tls_set_error(error_r, "cannot rename %s: %s", cert_tmp, strerror(errno));
		(void)unlink(cert_tmp);
		(void)unlink(key);      /* back to "both absent" */
		goto out;
	}
	tls_fsync_parent(key);
	tls_fsync_parent(cert);
	log_event(LOG_LVL_INFO, "tls.selfsigned", "cert", cert, "key", key, "cn", cn,
	    "days", "3650", NULL);
	ret = 0;
out:
	X509_free(x);
	EVP_PKEY_free(pk);
	free(cert_tmp);
	free(key_tmp);
	return ret;
}

/* Reads a PEM private key without ever asking for a passphrase. */
static EVP_PKEY *tls_read_key(const char *path, char **error_r)
{
	EVP_PKEY *pk = NULL;
	struct stat st;
	FILE *f;

	f = fopen(path, "re");
	if (f == NULL) {
		tls_set_error(error_r, "cannot open key %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0) {
		char mode[8];
		if (util_fmt(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777)) == 0)
			log_event(LOG_LVL_WARN, "tls.key_mode", "key", path, "mode", mode,
			    "hint", "chmod 600", NULL);
	}
	pk = PEM_read_PrivateKey(f, NULL, tls_no_passphrase, NULL);
	fclose(f);
	if (pk == NULL)
		tls_set_error(error_r, "cannot read private key %s", path);
	return pk;
}

/* Options shared by server and client contexts. */
static int tls_ctx_common(SSL_CTX *ctx)
{
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		return -1;
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_default_passwd_cb(ctx, tls_no_passphrase);
	return 0;
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *cn, char **error_r)
{
	SSL_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;
	X509 *leaf;
	int have_cert, have_key;

	if (cn == NULL || cn[0] == '\0')
		cn = "localhost";
	ERR_clear_error();
	if ((have_cert = tls_exists(cert)) < 0) {
		tls_set_error(error_r, "cannot access %s: %s", cert, strerror(errno));
		goto fail;
	}
	if ((have_key = tls_exists(key)) < 0) {
		tls_set_error(error_r, "cannot access %s: %s", key, strerror(errno));
		goto fail;
	}
	if (have_cert != have_key) {
		tls_set_error(error_r, "%s %s exists but %s %s is missing; provide both, or "
		    "remove the other to have a self-signed pair generated",
		    have_cert ? "certificate" : "key", have_cert ? cert : key,
		    have_cert ? "key" : "certificate", have_cert ? key : cert);
		goto fail;
	}
	if (!have_cert && tls_selfsigned(cert, key, cn, error_r) < 0)
		goto fail;

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL || tls_ctx_common(ctx) < 0) {
		tls_set_error(error_r, "cannot create a server context");
		goto fail;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Each process would have its own cache anyway; tickets keep resumption. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		tls_set_error(error_r, "cannot load certificate %s", cert);
		goto fail;
	}
	if ((pk = tls_read_key(key, error_r)) == NULL)
		goto fail;
	leaf = SSL_CTX_get0_certificate(ctx);
	if (leaf == NULL || X509_check_private_key(leaf, pk) != 1) {
		ERR_clear_error();
		tls_set_error(error_r, "key %s does not match certificate %s", key, cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		tls_set_error(error_r, "cannot use key %s with certificate %s", key, cert);
		goto fail;
	}
	EVP_PKEY_free(pk);
	return ctx;
fail:
	EVP_PKEY_free(pk);
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}

SSL_CTX *tls_client_ctx(char **error_r)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL || tls_ctx_common(ctx) < 0) {
		tls_set_error(error_r, "cannot create a client context");
		goto fail;
	}
	if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		tls_set_error(error_r, "cannot load the default CA paths");
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}
