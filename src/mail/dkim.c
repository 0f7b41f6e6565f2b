/* dkim: DKIM keys (OpenSSL 3 EVP), signing and verification (libopendkim)
 * for kalectl and the filter. Signing canonicalizes relaxed/relaxed over a
 * fixed list of header fields and over-signs From. Verification evaluates
 * the first KDKIM_MAX_SIGS signatures of a message, refuses rsa-sha1 and
 * oversized h= lists before any hashing (libopendkim's prescreen), and
 * fetches key records through the caller's DNS function (libopendkim's key
 * lookup hook) within one time budget per message, with a small cache so a
 * key asked for twice is asked once. Security: the message and everything
 * in it is hostile. libopendkim sees bounded input (KDKIM_MSG_MAX, key
 * records under its 1 KiB buffer), every result text is a fixed string and
 * every name taken from a signature is cleaned. Private keys live in
 * memory that is wiped when freed and never reach an error or a log. */
#include "mail/dkim.h"

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <opendkim/dkim.h>

#include "lib/util.h"

#define KDKIM_FEED 16384        /* bytes handed to libopendkim at a time */
#define KDKIM_HDR_PREFIX "DKIM-Signature: "

/* ---- names ---- */

/* 1 if s is dot-separated labels of [A-Za-z0-9-] (and '_' if underscore),
 * 1..63 bytes each, 1..253 in all. */
static int kdkim_name_ok(const char *s, int underscore)
{
	size_t label = 0, n = 0;

	for (; *s; s++, n++) {
		unsigned char c = (unsigned char)*s;
		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (!isalnum(c) && c != '-' && !(underscore && c == '_'))
			return 0;
		if (++label > 63)
			return 0;
	}
	return n > 0 && n <= 253 && label > 0;
}

int kdkim_selector_ok(const char *s)
{
	return s != NULL && kdkim_name_ok(s, 1);
}

int kdkim_algorithm_ok(const char *algorithm)
{
	return algorithm != NULL && (strcmp(algorithm, "rsa-sha256") == 0 ||
	    strcmp(algorithm, "ed25519-sha256") == 0);
}

/* Copies a name taken from a signature, every byte outside
 * [A-Za-z0-9._-] made '?', cut to cap - 1. */
static void kdkim_clean(char *dst, size_t cap, const unsigned char *src)
{
	size_t i = 0;

	for (; src != NULL && src[i] != '\0' && i + 1 < cap; i++) {
		unsigned char c = src[i];
		dst[i] = (char)(isalnum(c) || c == '.' || c == '_' || c == '-' ? c : '?');
	}
	dst[i] = '\0';
}

/* ---- keys ---- */

/* base64 of in[0..n), malloc'd, no line breaks. */
static char *kdkim_b64(const unsigned char *in, size_t n)
{
	char *out = xmalloc(4 * ((n + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	return out;
}

/* Refuses to ask for a passphrase: kale's keys have none. */
static int kdkim_no_pass(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return 0;
}

int kdkim_keygen(const char *algorithm, char **private_pem_r, char **txt_r, char **error_r)
{
	int ed = algorithm != NULL && strcmp(algorithm, "ed25519-sha256") == 0;
	EVP_PKEY *pk = NULL;
	BIO *bio = NULL;
	unsigned char raw[64], *der = NULL;
	size_t rawlen = sizeof(raw);
	char *pem, *p64, *txt, *data;
	long plen;
	int derlen, rc = -1;

	*private_pem_r = NULL;
	*txt_r = NULL;
	if (!kdkim_algorithm_ok(algorithm))
		return util_err(error_r, "unknown DKIM algorithm '%.32s' (rsa-sha256, ed25519-sha256)",
		    algorithm ? algorithm : "");
	pk = ed ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
	    : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	if (pk == NULL) {
		util_err(error_r, "dkim: cannot make a %s key", algorithm);
		goto out;
	}
	/* secure memory BIO: its buffer is wiped when freed */
	if ((bio = BIO_new(BIO_s_secmem())) == NULL ||
	    PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL) != 1 ||
	    (plen = BIO_get_mem_data(bio, &data)) <= 0) {
		util_err(error_r, "dkim: cannot write the private key");
		goto out;
	}
	if (ed) {
		if (EVP_PKEY_get_raw_public_key(pk, raw, &rawlen) != 1 || rawlen != 32) {
			util_err(error_r, "dkim: cannot read the ed25519 public key");
			goto out;
		}
		p64 = kdkim_b64(raw, rawlen);
	} else {
		if ((derlen = i2d_PUBKEY(pk, &der)) <= 0) {
			util_err(error_r, "dkim: cannot encode the RSA public key");
			goto out;
		}
		p64 = kdkim_b64(der, (size_t)derlen);
	}
	txt = xmalloc(strlen(p64) + 32);
	if (util_fmt(txt, strlen(p64) + 32, "v=DKIM1; k=%s; p=%s", ed ? "ed25519" : "rsa", p64) < 0) {
		free(p64);
		free(txt);
		util_err(error_r, "dkim: TXT record too long");
		goto out;
	}
	free(p64);
	pem = xmalloc((size_t)plen + 1);
	memcpy(pem, data, (size_t)plen);
	pem[plen] = '\0';
	*private_pem_r = pem;
	*txt_r = txt;
	rc = 0;
out:
	OPENSSL_free(der);
	BIO_free(bio);
	EVP_PKEY_free(pk);
	return rc;
}

void kdkim_secret_free(char **p)
{
	if (*p == NULL)
		return;
	OPENSSL_cleanse(*p, strlen(*p));
	free(*p);
	*p = NULL;
}

/* Loads a PEM private key and checks it fits the algorithm: an RSA key of
 * at least 1024 bits for rsa-sha256, an Ed25519 key for ed25519-sha256. */
static int kdkim_key_check(const char *pem, int ed, char **error_r)
{
	BIO *bio = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, kdkim_no_pass, NULL) : NULL;
	int rc = 0;

	BIO_free(bio);
	if (pk == NULL)
		return util_err(error_r, "dkim: the private key is not a PEM key");
	if (ed && EVP_PKEY_get_base_id(pk) != EVP_PKEY_ED25519)
		rc = util_err(error_r, "dkim: the private key is not an Ed25519 key");
	else if (!ed && EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA)
		rc = util_err(error_r, "dkim: the private key is not an RSA key");
	else if (!ed && EVP_PKEY_get_bits(pk) < 1024)
		rc = util_err(error_r, "dkim: the RSA key has fewer than 1024 bits");
	EVP_PKEY_free(pk);
	return rc;
}

/* ---- feeding libopendkim ---- */

/* Hands msg[0..len) to dkim_chunk with every bare LF made CRLF (kale
 * stores LF), then the end of input. DKIM_STAT_OK or the first failure. */
static DKIM_STAT kdkim_feed(DKIM *d, const char *msg, size_t len)
{
	unsigned char buf[KDKIM_FEED + 2];
	size_t n = 0;
	DKIM_STAT st;

	for (size_t i = 0; i < len; i++) {
		if (msg[i] == '\n' && (i == 0 || msg[i - 1] != '\r'))
			buf[n++] = '\r';
		buf[n++] = (unsigned char)msg[i];
		if (n >= KDKIM_FEED) {
			if ((st = dkim_chunk(d, buf, n)) != DKIM_STAT_OK)
				return st;
			n = 0;
		}
	}
	if (n > 0 && (st = dkim_chunk(d, buf, n)) != DKIM_STAT_OK)
		return st;
	return dkim_chunk(d, NULL, 0);
}

/* "what: libopendkim's word (its message)" into *error_r. */
static int kdkim_lib_err(DKIM *d, DKIM_STAT st, const char *what, char **error_r)
{
	const char *word = dkim_getresultstr(st), *msg = d ? dkim_geterror(d) : NULL;

	return util_err(error_r, "dkim: %s: %s%s%.200s%s", what, word ? word : "failed",
	    msg ? " (" : "", msg ? msg : "", msg ? ")" : "");
}

/* ---- signing ---- */

/* libopendkim's allocator while it holds a private key: the blocks of one
 * signing are chained in an arena (the handle's memory closure), each is
 * wiped when freed, and what libopendkim leaves behind is wiped and freed
 * when the signing ends.
 *
 * libopendkim 2.11's dkim_free releases the key of an RSA signing handle
 * only: for ed25519 it frees its struct dkim_crypto but not the OpenSSL
 * key and the signature buffer it points to. The arena frees the buffer;
 * the key is taken from the struct as libopendkim frees it, but only when
 * the block is recognised for sure as that struct of this build (LP64
 * layout { u_char pad; int keysize; size_t inlen, outlen; EVP_PKEY *pkey;
 * void *key; BIO *keydata; u_char *in, *out; }: 64 bytes, out one of the
 * arena's live blocks of outlen bytes, keysize outlen * 8). Anything else
 * is left alone: a build with another layout leaks, it never crashes. */
struct kdkim_block {
	struct kdkim_block *prev, *next;
	size_t n;
	max_align_t data[];
};

struct kdkim_arena {
	struct kdkim_block *head;
	EVP_PKEY *orphan;            /* an ed25519 key libopendkim dropped */
};

#define KDKIM_CRYPTO_SIZE 64
#define KDKIM_CRYPTO_KEYSIZE 4
#define KDKIM_CRYPTO_OUTLEN 16
#define KDKIM_CRYPTO_PKEY 24
#define KDKIM_CRYPTO_OUT 56

static void *kdkim_malloc(void *closure, size_t n)
{
	struct kdkim_arena *a = closure;
	struct kdkim_block *b = malloc(sizeof(*b) + n);

	if (b == NULL)
		return NULL;
	b->n = n;
	b->prev = NULL;
	b->next = a != NULL ? a->head : NULL;
	if (b->next != NULL)
		b->next->prev = b;
	if (a != NULL)
		a->head = b;
	return b->data;
}

/* b is being freed: if it is libopendkim's struct dkim_crypto still
 * holding a key (see above), that key is kept for kdkim_arena_clear. */
static void kdkim_crypto_orphan(struct kdkim_arena *a, const struct kdkim_block *b)
{
	const char *p = (const char *)b->data;
	void *pkey, *out;
	size_t outlen;
	int keysize;

	if (sizeof(void *) != 8 || b->n != KDKIM_CRYPTO_SIZE || a->orphan != NULL)
		return;
	memcpy(&keysize, p + KDKIM_CRYPTO_KEYSIZE, sizeof(keysize));
	memcpy(&outlen, p + KDKIM_CRYPTO_OUTLEN, sizeof(outlen));
	memcpy(&pkey, p + KDKIM_CRYPTO_PKEY, sizeof(pkey));
	memcpy(&out, p + KDKIM_CRYPTO_OUT, sizeof(out));
	if (pkey == NULL || out == NULL || outlen == 0 || outlen > 4096 ||
	    keysize != (int)(outlen * 8))
		return;
	for (const struct kdkim_block *x = a->head; x != NULL; x = x->next)
		if ((const void *)x->data == out && x->n == outlen) {
			a->orphan = pkey;
			return;
		}
}

static void kdkim_block_free(struct kdkim_arena *a, struct kdkim_block *b)
{
	if (a != NULL)
		kdkim_crypto_orphan(a, b);
	if (b->prev != NULL)
		b->prev->next = b->next;
	else if (a != NULL && a->head == b)
		a->head = b->next;
	if (b->next != NULL)
		b->next->prev = b->prev;
	OPENSSL_cleanse(b->data, b->n);
	free(b);
}

static void kdkim_free(void *closure, void *p)
{
	if (p != NULL)
		kdkim_block_free(closure, (struct kdkim_block *)((char *)p -
		    offsetof(struct kdkim_block, data)));
}

/* After dkim_free and dkim_close: what libopendkim left behind. */
static void kdkim_arena_clear(struct kdkim_arena *a)
{
	while (a->head != NULL)
		kdkim_block_free(a, a->head);
	EVP_PKEY_free(a->orphan);
	a->orphan = NULL;
}

static const char *const kdkim_sign_hdrs[] = {
	"from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
	"references", "mime-version", "content-type", "content-transfer-encoding", NULL
};
static const char *const kdkim_oversign_hdrs[] = { "from", NULL };

int kdkim_sign(const char *domain, const char *selector, const char *algorithm,
    const char *private_pem, const char *msg, size_t len, char **header_r, char **error_r)
{
	int ed = algorithm != NULL && strcmp(algorithm, "ed25519-sha256") == 0;
	const char **hdrs = (const char **)kdkim_sign_hdrs;
	const char **over = (const char **)kdkim_oversign_hdrs;
	struct kdkim_arena arena = { NULL, NULL };
	DKIM_LIB *lib = NULL;
	DKIM *d = NULL;
	DKIM_STAT st;
	unsigned char *sig = NULL;
	size_t siglen = 0, k = 0;
	char *out;
	int rc = -1;

	*header_r = NULL;
	if (!kdkim_algorithm_ok(algorithm))
		return util_err(error_r, "unknown DKIM algorithm '%.32s'", algorithm ? algorithm : "");
	if (domain == NULL || !kdkim_name_ok(domain, 0))
		return util_err(error_r, "dkim: bad signing domain '%.64s'", domain ? domain : "");
	if (!kdkim_selector_ok(selector))
		return util_err(error_r, "dkim: bad selector '%.64s'", selector ? selector : "");
	if (len > KDKIM_MSG_MAX)
		return util_err(error_r, "dkim: message over %u bytes", KDKIM_MSG_MAX);
	if (private_pem == NULL)
		return util_err(error_r, "dkim: no private key");
	if (kdkim_key_check(private_pem, ed, error_r) < 0)
		return -1;
	if ((lib = dkim_init(kdkim_malloc, kdkim_free)) == NULL)
		return util_err(error_r, "dkim: cannot start libopendkim");
	/* libopendkim takes the lists themselves, with the size of a pointer */
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, hdrs, sizeof(hdrs)) != DKIM_STAT_OK) {
		util_err(error_r, "dkim: cannot set the signed header fields");
		goto out;
	}
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, over, sizeof(over)) != DKIM_STAT_OK) {
		util_err(error_r, "dkim: cannot set the over-signed header fields");
		goto out;
	}
	/* libopendkim's prototype lacks the const; it copies the key */
	d = dkim_sign(lib, (const unsigned char *)"kale", &arena,
	    (unsigned char *)(uintptr_t)private_pem, (const unsigned char *)selector,
	    (const unsigned char *)domain, DKIM_CANON_RELAXED,
	    DKIM_CANON_RELAXED, ed ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256, -1, &st);
	if (d == NULL) {
		kdkim_lib_err(NULL, st, "sign", error_r);
		goto out;
	}
	if ((st = kdkim_feed(d, msg, len)) != DKIM_STAT_OK) {
		kdkim_lib_err(d, st, "the message cannot be signed", error_r);
		goto out;
	}
	if ((st = dkim_eom(d, NULL)) != DKIM_STAT_OK) {
		kdkim_lib_err(d, st, "sign", error_r);
		goto out;
	}
	if ((st = dkim_getsighdr_d(d, strlen(KDKIM_HDR_PREFIX), &sig, &siglen)) != DKIM_STAT_OK) {
		kdkim_lib_err(d, st, "signature header", error_r);
		goto out;
	}
	/* the field with LF line ends (libopendkim folds with CRLF or LF) */
	out = xmalloc(strlen(KDKIM_HDR_PREFIX) + siglen + 2);
	memcpy(out, KDKIM_HDR_PREFIX, strlen(KDKIM_HDR_PREFIX));
	k = strlen(KDKIM_HDR_PREFIX);
	for (size_t i = 0; i < siglen; i++)
		if (sig[i] != '\r')
			out[k++] = (char)sig[i];
	out[k++] = '\n';
	out[k] = '\0';
	*header_r = out;
	rc = 0;
out:
	if (d != NULL)
		dkim_free(d);
	if (lib != NULL)
		dkim_close(lib);
	kdkim_arena_clear(&arena);
	return rc;
}

/* ---- verification ---- */

/* A result decided by kale rather than by libopendkim's signature error:
 * the prescreen's refusals and the key lookup's failures. */
struct kdkim_over {
	const char *result, *reason;
};

struct kdkim_key_cache {
	char name[DKIM_MAXHOSTNAMELEN * 2];
	int found;                   /* 1 record in rec, 0 none (over says why) */
	struct kdkim_over over;
	char rec[1024];
};

struct kdkim_vctx {
	const struct kdkim_dns *dns;
	uint64_t deadline_ms;
	int nsigs;                               /* signatures libopendkim found */
	DKIM_SIGINFO *sigs[KDKIM_MAX_SIGS];      /* the evaluated ones */
	struct kdkim_over over[KDKIM_MAX_SIGS];
	struct kdkim_key_cache cache[KDKIM_MAX_SIGS];
	int ncache;
	struct dns_txt_set txt;
};

static int kdkim_sig_index(const struct kdkim_vctx *v, const DKIM_SIGINFO *sig)
{
	for (int i = 0; i < v->nsigs && i < KDKIM_MAX_SIGS; i++)
		if (v->sigs[i] == sig)
			return i;
	return -1;
}

/* Before any hashing: the first KDKIM_MAX_SIGS signatures are evaluated,
 * the rest ignored; rsa-sha1 (RFC 8301) and h= lists longer than
 * KDKIM_MAX_H are refused. */
static DKIM_CBSTAT kdkim_prescreen(DKIM *d, DKIM_SIGINFO **sigs, int nsigs)
{
	struct kdkim_vctx *v = dkim_get_user_context(d);

	v->nsigs = nsigs;
	for (int i = 0; i < nsigs; i++) {
		const unsigned char *a, *h;
		int nh = 1;

		if (i >= KDKIM_MAX_SIGS) {
			dkim_sig_ignore(sigs[i]);
			continue;
		}
		v->sigs[i] = sigs[i];
		a = dkim_sig_gettagvalue(sigs[i], false, (u_char *)"a");
		h = dkim_sig_gettagvalue(sigs[i], false, (u_char *)"h");
		for (const unsigned char *p = h; p != NULL && *p != '\0'; p++)
			nh += *p == ':';
		if (a != NULL && strcasecmp((const char *)a, "rsa-sha1") == 0) {
			v->over[i] = (struct kdkim_over){ "policy", "rsa-sha1 is not accepted (RFC 8301)" };
			dkim_sig_ignore(sigs[i]);
		} else if (h != NULL && (nh > KDKIM_MAX_H || strlen((const char *)h) > 4096)) {
			v->over[i] = (struct kdkim_over){ "policy", "h= names too many header fields" };
			dkim_sig_ignore(sigs[i]);
		}
	}
	return DKIM_CBSTAT_CONTINUE;
}

/* Picks the key record among a name's TXT records: the one starting with
 * "v=DKIM1", else the first. NULL if there is none usable. */
static const struct dns_txt *kdkim_pick(const struct dns_txt_set *txt)
{
	const struct dns_txt *first = NULL;

	for (int i = 0; i < txt->n; i++) {
		const struct dns_txt *t = &txt->rec[i];
		size_t j = 0;
		if (memchr(t->s, '\0', t->len) != NULL)
			continue;
		while (j < t->len && (t->s[j] == ' ' || t->s[j] == '\t'))
			j++;
		if (t->len - j >= 7 && strncmp(t->s + j, "v=DKIM1", 7) == 0)
			return t;
		if (first == NULL)
			first = t;
	}
	return first;
}

/* Asks the caller's DNS for NAME once per message (the cache), within the
 * time budget, and keeps the record or why there is none. */
static struct kdkim_key_cache *kdkim_fetch(struct kdkim_vctx *v, const char *name)
{
	struct kdkim_key_cache *c;
	const struct dns_txt *t;
	enum dns_status st;

	for (int i = 0; i < v->ncache; i++)
		if (strcasecmp(v->cache[i].name, name) == 0)
			return &v->cache[i];
	c = &v->cache[v->ncache < KDKIM_MAX_SIGS ? v->ncache++ : KDKIM_MAX_SIGS - 1];
	memset(c, 0, sizeof(*c));
	(void)util_fmt(c->name, sizeof(c->name), "%s", name);
	if (util_now_ms() >= v->deadline_ms) {
		c->over = (struct kdkim_over){ "temperror", "key lookups took too long" };
		return c;
	}
	memset(&v->txt, 0, sizeof(v->txt));
	st = v->dns->txt(v->dns->arg, name, &v->txt);
	if (st == DNS_NOTFOUND || st == DNS_NODATA || (st == DNS_OK && v->txt.n == 0 &&
	    !v->txt.truncated)) {
		c->over = (struct kdkim_over){ "permerror", "no key published" };
	} else if (st != DNS_OK || v->txt.n == 0) {
		c->over = (struct kdkim_over){ "temperror", "key lookup failed" };
	} else if ((t = kdkim_pick(&v->txt)) == NULL) {
		c->over = (struct kdkim_over){ "permerror", "key record is not valid" };
	} else if (t->len >= sizeof(c->rec)) {
		c->over = (struct kdkim_over){ "permerror", "key record over 1023 bytes" };
	} else {
		memcpy(c->rec, t->s, t->len);
		c->rec[t->len] = '\0';
		c->found = 1;
	}
	return c;
}

/* libopendkim's key lookup: SELECTOR._domainkey.DOMAIN through the
 * caller's DNS. A failure is answered "not found" so that libopendkim
 * goes on with the other signatures; the real reason is kept in over. */
static DKIM_CBSTAT kdkim_key_lookup(DKIM *d, DKIM_SIGINFO *sig, unsigned char *buf,
    size_t buflen)
{
	struct kdkim_vctx *v = dkim_get_user_context(d);
	const unsigned char *sel = dkim_sig_getselector(sig), *dom = dkim_sig_getdomain(sig);
	int i = kdkim_sig_index(v, sig);
	struct kdkim_key_cache *c;
	char name[DKIM_MAXHOSTNAMELEN * 2];

	if (i < 0 || sel == NULL || dom == NULL)
		return DKIM_CBSTAT_NOTFOUND;
	if (util_fmt(name, sizeof(name), "%s._domainkey.%s", sel, dom) < 0 ||
	    strlen(name) > 253) {
		v->over[i] = (struct kdkim_over){ "permerror", "key name too long" };
		return DKIM_CBSTAT_NOTFOUND;
	}
	c = kdkim_fetch(v, name);
	if (!c->found) {
		v->over[i] = c->over;
		return DKIM_CBSTAT_NOTFOUND;
	}
	if (strlen(c->rec) >= buflen) {
		v->over[i] = (struct kdkim_over){ "permerror", "key record too long" };
		return DKIM_CBSTAT_NOTFOUND;
	}
	memcpy(buf, c->rec, strlen(c->rec) + 1);
	return DKIM_CBSTAT_CONTINUE;
}

/* Counts the DKIM-Signature fields of the header section (a cheap look
 * before libopendkim: a message without one is "none" at once). */
static int kdkim_count_sigs(const char *msg, size_t len)
{
	static const char name[] = "dkim-signature";
	size_t i = 0;
	int n = 0;

	while (i < len) {
		const char *eol = memchr(msg + i, '\n', len - i);
		size_t end = eol ? (size_t)(eol - msg) : len, j;
		if (end == i || (end == i + 1 && msg[i] == '\r'))
			break;                              /* the empty line */
		if (end - i > sizeof(name) - 1 && strncasecmp(msg + i, name, sizeof(name) - 1) == 0) {
			for (j = i + sizeof(name) - 1; j < end && (msg[j] == ' ' || msg[j] == '\t'); j++)
				;
			if (j < end && msg[j] == ':')
				n++;
		}
		i = end + 1;
	}
	return n;
}

static void kdkim_set(struct kdkim_result *r, const char *result, const char *reason)
{
	(void)util_fmt(r->result, sizeof(r->result), "%s", result);
	(void)util_fmt(r->reason, sizeof(r->reason), "%s", reason);
}

/* libopendkim's signature error as a result and a fixed reason. */
static struct kdkim_over kdkim_map_error(int err)
{
	switch (err) {
	case DKIM_SIGERROR_BADSIG: return (struct kdkim_over){ "fail", "signature did not verify" };
	case DKIM_SIGERROR_NOKEY: return (struct kdkim_over){ "permerror", "no key published" };
	case DKIM_SIGERROR_KEYFAIL: return (struct kdkim_over){ "temperror", "key lookup failed" };
	case DKIM_SIGERROR_MULTIREPLY: return (struct kdkim_over){ "permerror", "several key records" };
	case DKIM_SIGERROR_DNSSYNTAX:
	case DKIM_SIGERROR_KEYDECODE: return (struct kdkim_over){ "permerror", "key record is not valid" };
	case DKIM_SIGERROR_KEYVERSION: return (struct kdkim_over){ "permerror", "key record is not DKIM1" };
	case DKIM_SIGERROR_KEYUNKNOWNHASH:
	case DKIM_SIGERROR_KEYHASHMISMATCH:
		return (struct kdkim_over){ "permerror", "key does not allow the hash" };
	case DKIM_SIGERROR_NOTEMAILKEY: return (struct kdkim_over){ "permerror", "key is not for e-mail" };
	case DKIM_SIGERROR_KEYTYPEMISSING:
	case DKIM_SIGERROR_KEYTYPEUNKNOWN:
		return (struct kdkim_over){ "permerror", "key type unknown or not the signature's" };
	case DKIM_SIGERROR_KEYREVOKED: return (struct kdkim_over){ "permerror", "key revoked" };
	case DKIM_SIGERROR_KEYTOOSMALL: return (struct kdkim_over){ "policy", "key under 1024 bits" };
	case DKIM_SIGERROR_EXPIRED: return (struct kdkim_over){ "permerror", "signature expired" };
	case DKIM_SIGERROR_FUTURE: return (struct kdkim_over){ "permerror", "signature from the future" };
	case DKIM_SIGERROR_TIMESTAMPS: return (struct kdkim_over){ "permerror", "x= before t=" };
	case DKIM_SIGERROR_VERSION: return (struct kdkim_over){ "neutral", "unknown signature version" };
	case DKIM_SIGERROR_DOMAIN: return (struct kdkim_over){ "permerror", "i= not within d=" };
	case DKIM_SIGERROR_SUBDOMAIN:
		return (struct kdkim_over){ "permerror", "key does not allow a subdomain i=" };
	case DKIM_SIGERROR_INVALID_HC:
	case DKIM_SIGERROR_INVALID_BC: return (struct kdkim_over){ "permerror", "c= is not valid" };
	case DKIM_SIGERROR_MISSING_A:
	case DKIM_SIGERROR_INVALID_A: return (struct kdkim_over){ "permerror", "a= missing or unknown" };
	case DKIM_SIGERROR_MISSING_H:
	case DKIM_SIGERROR_EMPTY_H:
	case DKIM_SIGERROR_INVALID_H:
		return (struct kdkim_over){ "permerror", "h= missing or without From" };
	case DKIM_SIGERROR_INVALID_L: return (struct kdkim_over){ "permerror", "l= is not valid" };
	case DKIM_SIGERROR_TOOLARGE_L: return (struct kdkim_over){ "permerror", "l= beyond the body" };
	case DKIM_SIGERROR_INVALID_Q:
	case DKIM_SIGERROR_INVALID_QO: return (struct kdkim_over){ "permerror", "q= is not valid" };
	case DKIM_SIGERROR_MISSING_D:
	case DKIM_SIGERROR_EMPTY_D: return (struct kdkim_over){ "permerror", "d= missing" };
	case DKIM_SIGERROR_MISSING_S:
	case DKIM_SIGERROR_EMPTY_S: return (struct kdkim_over){ "permerror", "s= missing" };
	case DKIM_SIGERROR_MISSING_B:
	case DKIM_SIGERROR_EMPTY_B:
	case DKIM_SIGERROR_CORRUPT_B: return (struct kdkim_over){ "permerror", "b= missing or not base64" };
	case DKIM_SIGERROR_MISSING_BH:
	case DKIM_SIGERROR_EMPTY_BH:
	case DKIM_SIGERROR_CORRUPT_BH:
		return (struct kdkim_over){ "permerror", "bh= missing or not base64" };
	case DKIM_SIGERROR_MISSING_V:
	case DKIM_SIGERROR_EMPTY_V: return (struct kdkim_over){ "permerror", "v= missing" };
	case DKIM_SIGERROR_MBSFAILED:
		return (struct kdkim_over){ "permerror", "a required header field is not signed" };
	default: return (struct kdkim_over){ "permerror", "signature is not valid" };
	}
}

/* One signature's result after dkim_eom. */
static void kdkim_sig_result(DKIM *d, const struct kdkim_vctx *v, DKIM_SIGINFO *sig,
    struct kdkim_result *r)
{
	int i = kdkim_sig_index(v, sig), err = dkim_sig_geterror(sig), bh = dkim_sig_getbh(sig);
	unsigned int flags = dkim_sig_getflags(sig);
	const unsigned char *dom = dkim_sig_getdomain(sig), *sel = dkim_sig_getselector(sig);
	ssize_t msglen = 0, canonlen = 0, signlen = -1;
	struct kdkim_over o;

	memset(r, 0, sizeof(*r));
	kdkim_clean(r->domain, sizeof(r->domain), dom ? dom : dkim_sig_gettagvalue(sig, false,
	    (u_char *)"d"));
	kdkim_clean(r->selector, sizeof(r->selector), sel ? sel : dkim_sig_gettagvalue(sig, false,
	    (u_char *)"s"));
	kdkim_clean(r->algorithm, sizeof(r->algorithm), dkim_sig_gettagvalue(sig, false,
	    (u_char *)"a"));
	if (i < 0) {
		kdkim_set(r, "policy", "more than 16 signatures: not evaluated");
		return;
	}
	if (v->over[i].result != NULL) {
		kdkim_set(r, v->over[i].result, v->over[i].reason);
		return;
	}
	if ((flags & DKIM_SIGFLAG_IGNORE) != 0) {
		kdkim_set(r, "neutral", "signature ignored");
		return;
	}
	if ((flags & DKIM_SIGFLAG_PASSED) != 0 && bh == DKIM_SIGBH_MATCH) {
		if ((flags & DKIM_SIGFLAG_TESTKEY) != 0)
			kdkim_set(r, "pass", "key in test mode (t=y)");
		else if (dkim_sig_getcanonlen(d, sig, &msglen, &canonlen, &signlen) == DKIM_STAT_OK &&
		    signlen >= 0 && signlen < canonlen)
			kdkim_set(r, "pass", "l= leaves part of the body unsigned");
		else
			kdkim_set(r, "pass", "");
		return;
	}
	if ((flags & DKIM_SIGFLAG_PROCESSED) != 0 && bh == DKIM_SIGBH_MISMATCH &&
	    (err == DKIM_SIGERROR_OK || err == DKIM_SIGERROR_UNKNOWN || err == DKIM_SIGERROR_BADSIG)) {
		kdkim_set(r, "fail", "body hash did not verify");
		return;
	}
	if (err == DKIM_SIGERROR_OK || err == DKIM_SIGERROR_UNKNOWN) {
		if ((flags & DKIM_SIGFLAG_PROCESSED) == 0)
			kdkim_set(r, "neutral", "signature not evaluated");
		else
			kdkim_set(r, "fail", "signature did not verify");
		return;
	}
	o = kdkim_map_error(err);
	kdkim_set(r, o.result, o.reason);
}

int kdkim_verify(const char *msg, size_t len, const struct kdkim_dns *dns,
    struct kdkim_result *res, int max, int *n_r, char **error_r)
{
	struct kdkim_vctx *v = NULL;
	DKIM_LIB *lib = NULL;
	DKIM *d = NULL;
	DKIM_SIGINFO **sigs = NULL;
	DKIM_STAT st;
	unsigned int flags = DKIM_LIBFLAGS_BADSIGHANDLES;
	int nsigs = 0, counted, rc = -1;

	*n_r = 0;
	if (max < 1)
		return util_err(error_r, "dkim: no room for a result");
	if (len > KDKIM_MSG_MAX)
		return util_err(error_r, "dkim: message over %u bytes", KDKIM_MSG_MAX);
	if ((counted = kdkim_count_sigs(msg, len)) == 0) {
		memset(&res[0], 0, sizeof(res[0]));
		kdkim_set(&res[0], "none", "no signature");
		*n_r = 1;
		return 0;
	}
	if ((lib = dkim_init(NULL, NULL)) == NULL)
		return util_err(error_r, "dkim: cannot start libopendkim");
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) != DKIM_STAT_OK ||
	    dkim_set_prescreen(lib, kdkim_prescreen) != DKIM_STAT_OK ||
	    dkim_set_key_lookup(lib, kdkim_key_lookup) != DKIM_STAT_OK) {
		util_err(error_r, "dkim: cannot set up libopendkim");
		goto out;
	}
	v = xcalloc(1, sizeof(*v));
	v->dns = dns;
	v->deadline_ms = util_now_ms() + KDKIM_DNS_BUDGET_MS;
	if ((d = dkim_verify(lib, (const unsigned char *)"kale", NULL, &st)) == NULL) {
		kdkim_lib_err(NULL, st, "verify", error_r);
		goto out;
	}
	dkim_set_user_context(d, v);
	/* dkim_eom says NOSIG when no signature was left to evaluate (all
	 * refused): the list tells each one's fate */
	st = kdkim_feed(d, msg, len);
	if (st == DKIM_STAT_OK)
		(void)dkim_eom(d, NULL);
	if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK || sigs == NULL || nsigs <= 0) {
		/* libopendkim kept none where the scan saw some */
		for (int i = 0; i < counted && i < max; i++) {
			memset(&res[i], 0, sizeof(res[i]));
			kdkim_set(&res[i], "permerror", st == DKIM_STAT_OK || st == DKIM_STAT_NOSIG
			    ? "signature is not valid" : "message header section is not valid");
			(*n_r)++;
		}
		rc = 0;
		goto out;
	}
	for (int i = 0; i < nsigs && i < max; i++) {
		kdkim_sig_result(d, v, sigs[i], &res[i]);
		/* the message could not be read to its end: not evaluated */
		if (st != DKIM_STAT_OK && strcmp(res[i].result, "neutral") == 0)
			kdkim_set(&res[i], "permerror", "message is not valid");
		(*n_r)++;
	}
	rc = 0;
out:
	if (d != NULL)
		dkim_free(d);
	if (lib != NULL)
		dkim_close(lib);
	free(v);
	return rc;
}

int kdkim_ar_format(const struct kdkim_result *r, char *buf, size_t cap)
{
	char reason[sizeof(r->reason) + 3] = "", d[sizeof(r->domain) + 10] = "",
	    s[sizeof(r->selector) + 10] = "", a[sizeof(r->algorithm) + 10] = "";

	if (r->reason[0] != '\0' && strcmp(r->result, "none") != 0)
		(void)util_fmt(reason, sizeof(reason), " (%s)", r->reason);
	if (r->domain[0] != '\0')
		(void)util_fmt(d, sizeof(d), " header.d=%s", r->domain);
	if (r->selector[0] != '\0')
		(void)util_fmt(s, sizeof(s), " header.s=%s", r->selector);
	if (r->algorithm[0] != '\0')
		(void)util_fmt(a, sizeof(a), " header.a=%s", r->algorithm);
	return util_fmt(buf, cap, "dkim=%s%s%s%s%s", r->result, reason, d, s, a);
}
