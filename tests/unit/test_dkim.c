/* Unit tests for src/mail/dkim.c: keys, signing then verifying with a fake
 * DNS (rsa-sha256 and ed25519-sha256, LF and CRLF), tampered body and
 * header, an added From, a wrong key, key lookup failures, and hostile
 * signatures (absurd l=, huge h=, bad base64, garbage, rsa-sha1, 100
 * DKIM-Signature fields): each gives a clear result in bounded work. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>

#include "lib/util.h"
#include "mail/dkim.h"

#define DOMAIN "example.test"
#define SEL "sel1"
#define NAME SEL "._domainkey." DOMAIN

static const char msg_lf[] =
	"From: Alice <alice@example.test>\n"
	"To: bob@other.test\n"
	"Subject: hello\n"
	"Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
	"Message-ID: <1@example.test>\n"
	"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\n"
	"\n"
	"hello world\n"
	"second line\n";

/* keys made once for the whole run */
static char *rsa_pem, *rsa_txt, *ed_pem, *ed_txt, *rsa2_pem, *rsa2_txt;

/* ---- the fake DNS ---- */

struct fake_dns {
	const char *name;           /* the name it knows */
	const char *txt;            /* its one record; NULL: NXDOMAIN */
	enum dns_status force;      /* not DNS_OK: answered for every name */
	int calls;
};

static enum dns_status fake_txt(void *arg, const char *name, struct dns_txt_set *set)
{
	struct fake_dns *f = arg;

	f->calls++;
	if (f->force != DNS_OK)
		return f->force;
	if (f->txt == NULL || strcasecmp(name, f->name) != 0)
		return DNS_NOTFOUND;
	set->n = 1;
	set->rec[0].len = strlen(f->txt);
	memcpy(set->buf, f->txt, set->rec[0].len + 1);
	set->rec[0].s = set->buf;
	return DNS_OK;
}

/* Verifies msg against a DNS publishing txt at NAME; returns n. */
static int verify(const char *msg, const char *txt, struct kdkim_result *res, int max,
    struct fake_dns *f_r)
{
	struct fake_dns f = { NAME, txt, DNS_OK, 0 };
	struct kdkim_dns dns = { fake_txt, &f };
	char *err = NULL;
	int n = -1;

	assert_int_equal(kdkim_verify(msg, strlen(msg), &dns, res, max, &n, &err), 0);
	assert_null(err);
	if (f_r != NULL)
		*f_r = f;
	return n;
}

/* The signed message: the field, then msg. malloc'd. */
static char *sign(const char *alg, const char *pem, const char *msg)
{
	char *hdr = NULL, *err = NULL, *out;

	assert_int_equal(kdkim_sign(DOMAIN, SEL, alg, pem, msg, strlen(msg), &hdr, &err), 0);
	assert_null(err);
	out = xmalloc(strlen(hdr) + strlen(msg) + 1);
	strcpy(out, hdr);
	strcat(out, msg);
	free(hdr);
	return out;
}

/* The tag "NAME=" of a signature field (not the end of a longer name:
 * h= is not bh=). */
static char *tag_pos(const char *s, const char *name)
{
	const char *p = s;

	while ((p = strstr(p, name)) != NULL) {
		if (p > s && (p[-1] == ' ' || p[-1] == '\t' || p[-1] == ';'))
			return (char *)p;
		p++;
	}
	fail_msg("no tag %s", name);
	return NULL;
}

/* s with the first `from` replaced by `to`. malloc'd. */
static char *replace(const char *s, const char *from, const char *to)
{
	const char *p = strstr(s, from);
	char *out;

	assert_non_null(p);
	out = xmalloc(strlen(s) + strlen(to) + 1);
	memcpy(out, s, (size_t)(p - s));
	strcpy(out + (p - s), to);
	strcat(out, p + strlen(from));
	return out;
}

static int setup(void **state)
{
	char *err = NULL;

	(void)state;
	if (kdkim_keygen("rsa-sha256", &rsa_pem, &rsa_txt, &err) < 0 ||
	    kdkim_keygen("ed25519-sha256", &ed_pem, &ed_txt, &err) < 0 ||
	    kdkim_keygen("rsa-sha256", &rsa2_pem, &rsa2_txt, &err) < 0) {
		fprintf(stderr, "keygen: %s\n", err);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	kdkim_secret_free(&rsa_pem);
	kdkim_secret_free(&ed_pem);
	kdkim_secret_free(&rsa2_pem);
	free(rsa_txt);
	free(ed_txt);
	free(rsa2_txt);
	return 0;
}

static void test_keygen(void **state)
{
	char *pem = NULL, *txt = NULL, *err = NULL;

	(void)state;
	assert_int_equal(strncmp(rsa_txt, "v=DKIM1; k=rsa; p=MII", 21), 0);
	assert_int_equal(strncmp(ed_txt, "v=DKIM1; k=ed25519; p=", 22), 0);
	assert_int_equal(strlen(ed_txt), 22 + 44);            /* 32 bytes of base64 */
	assert_non_null(strstr(rsa_pem, "-----BEGIN PRIVATE KEY-----"));
	assert_non_null(strstr(ed_pem, "-----BEGIN PRIVATE KEY-----"));
	assert_int_equal(kdkim_keygen("rsa-sha1", &pem, &txt, &err), -1);
	assert_null(pem);
	assert_non_null(strstr(err, "rsa-sha1"));
	free(err);
	assert_true(kdkim_selector_ok("kale202401"));
	assert_true(kdkim_selector_ok("a.b_c-d"));
	assert_false(kdkim_selector_ok(""));
	assert_false(kdkim_selector_ok("a;b"));
	assert_false(kdkim_selector_ok("a..b"));
	assert_false(kdkim_selector_ok("x\ny"));
}

static void check_pass(const char *signed_msg, const char *txt, const char *alg)
{
	struct kdkim_result res[4];
	int n = verify(signed_msg, txt, res, 4, NULL);

	assert_int_equal(n, 1);
	assert_string_equal(res[0].result, "pass");
	assert_string_equal(res[0].domain, DOMAIN);
	assert_string_equal(res[0].selector, SEL);
	assert_string_equal(res[0].algorithm, alg);
}

static void test_sign_verify_rsa(void **state)
{
	char *s = sign("rsa-sha256", rsa_pem, msg_lf), *h, *crlf;
	const char *hl;

	(void)state;
	assert_int_equal(strncmp(s, "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;", 53), 0);
	assert_null(strchr(s, '\r'));
	/* From is listed once more than present; Received is not signed */
	hl = tag_pos(s, "h=");
	h = xmalloc(strlen(hl) + 1);
	{
		/* unfolded */
		size_t k = 0;
		for (const char *p = hl; *p && *p != ';'; p++)
			if (*p != ' ' && *p != '\t' && *p != '\n')
				h[k++] = *p;
		h[k] = '\0';
	}
	assert_non_null(strstr(h, "From:To:Subject:Date:Message-ID"));
	assert_non_null(strcasestr(strcasestr(h, "from") + 4, "from"));
	assert_null(strcasestr(h, "received"));
	free(h);
	check_pass(s, rsa_txt, "rsa-sha256");
	/* the same message with CRLF line ends verifies too */
	crlf = xmalloc(2 * strlen(s) + 1);
	{
		size_t k = 0;
		for (const char *p = s; *p; p++) {
			if (*p == '\n')
				crlf[k++] = '\r';
			crlf[k++] = *p;
		}
		crlf[k] = '\0';
	}
	check_pass(crlf, rsa_txt, "rsa-sha256");
	free(crlf);
	free(s);
}

static void test_sign_verify_ed25519(void **state)
{
	char *s = sign("ed25519-sha256", ed_pem, msg_lf);

	(void)state;
	assert_non_null(strstr(s, "a=ed25519-sha256;"));
	check_pass(s, ed_txt, "ed25519-sha256");
	free(s);
}

static void test_sign_crlf_input(void **state)
{
	const char *m = "From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n";
	char *s = sign("rsa-sha256", rsa_pem, m);

	(void)state;
	check_pass(s, rsa_txt, "rsa-sha256");
	free(s);
}

static void check_fail(const char *m, const char *txt, const char *result, const char *reason)
{
	struct kdkim_result res[4];
	int n = verify(m, txt, res, 4, NULL);

	assert_int_equal(n, 1);
	assert_string_equal(res[0].result, result);
	if (reason != NULL)
		assert_string_equal(res[0].reason, reason);
}

static void test_tampered(void **state)
{
	const char *alg[2] = { "rsa-sha256", "ed25519-sha256" };
	const char *pem[2] = { rsa_pem, ed_pem }, *txt[2] = { rsa_txt, ed_txt };

	(void)state;
	for (int i = 0; i < 2; i++) {
		char *s = sign(alg[i], pem[i], msg_lf), *t;
		/* body */
		t = replace(s, "hello world", "hello World");
		check_fail(t, txt[i], "fail", "body hash did not verify");
		free(t);
		/* a body line added */
		t = replace(s, "second line\n", "second line\nthird line\n");
		check_fail(t, txt[i], "fail", "body hash did not verify");
		free(t);
		/* a signed header */
		t = replace(s, "Subject: hello", "Subject: hellO");
		check_fail(t, txt[i], "fail", "signature did not verify");
		free(t);
		/* a second From above the first: From is over-signed */
		t = replace(s, "From: Alice", "From: mallory@evil.test\nFrom: Alice");
		check_fail(t, txt[i], "fail", "signature did not verify");
		free(t);
		/* an unsigned header and relaxed whitespace changes still pass */
		t = replace(s, "Received: from x", "X-Extra: 1\nReceived:  from   x");
		check_fail(t, txt[i], "pass", "");
		free(t);
		free(s);
	}
}

static void test_wrong_key(void **state)
{
	char *s = sign("rsa-sha256", rsa_pem, msg_lf), *e = sign("ed25519-sha256", ed_pem, msg_lf);

	(void)state;
	check_fail(s, rsa2_txt, "fail", "signature did not verify");
	/* an ed25519 key for an RSA signature and the other way round */
	check_fail(s, ed_txt, "permerror", NULL);
	check_fail(e, rsa_txt, "permerror", NULL);
	free(s);
	free(e);
}

static void test_key_lookup(void **state)
{
	char *s = sign("rsa-sha256", rsa_pem, msg_lf);
	struct kdkim_result res[2];
	struct fake_dns f = { NAME, rsa_txt, DNS_TEMPFAIL, 0 };
	struct kdkim_dns dns = { fake_txt, &f };
	char *err = NULL, big[2000];
	int n;

	(void)state;
	check_fail(s, NULL, "permerror", "no key published");
	assert_int_equal(kdkim_verify(s, strlen(s), &dns, res, 2, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_string_equal(res[0].result, "temperror");
	assert_string_equal(res[0].reason, "key lookup failed");
	assert_int_equal(f.calls, 1);
	check_fail(s, "v=DKIM1; k=rsa; p=", "permerror", "key revoked");
	check_fail(s, "v=DKIM1; k=rsa; p=!!!not*base64", "permerror", NULL);
	check_fail(s, "v=DKIM2; k=rsa; p=AAAA", "permerror", NULL);
	check_fail(s, "garbage without tags", "permerror", NULL);
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	memcpy(big, "v=DKIM1; p=", 11);
	check_fail(s, big, "permerror", "key record over 1023 bytes");
	free(s);
}

static void test_none(void **state)
{
	struct kdkim_result res[2];
	struct fake_dns f;
	char ar[256];

	(void)state;
	assert_int_equal(verify(msg_lf, rsa_txt, res, 2, &f), 1);
	assert_string_equal(res[0].result, "none");
	assert_int_equal(f.calls, 0);
	assert_int_equal(kdkim_ar_format(&res[0], ar, sizeof(ar)), 0);
	assert_string_equal(ar, "dkim=none");
	/* a header-only message, an empty one */
	assert_int_equal(verify("Subject: x\n", rsa_txt, res, 2, NULL), 1);
	assert_string_equal(res[0].result, "none");
	assert_int_equal(verify("", rsa_txt, res, 2, NULL), 1);
	assert_string_equal(res[0].result, "none");
}

static void test_ar_format(void **state)
{
	char *s = sign("ed25519-sha256", ed_pem, msg_lf), *t, ar[512];
	struct kdkim_result res[2];

	(void)state;
	assert_int_equal(verify(s, ed_txt, res, 2, NULL), 1);
	assert_int_equal(kdkim_ar_format(&res[0], ar, sizeof(ar)), 0);
	assert_string_equal(ar, "dkim=pass header.d=example.test header.s=sel1 header.a=ed25519-sha256");
	t = replace(s, "hello world", "bye");
	assert_int_equal(verify(t, ed_txt, res, 2, NULL), 1);
	assert_int_equal(kdkim_ar_format(&res[0], ar, sizeof(ar)), 0);
	assert_string_equal(ar, "dkim=fail (body hash did not verify) header.d=example.test "
	    "header.s=sel1 header.a=ed25519-sha256");
	assert_int_equal(kdkim_ar_format(&res[0], ar, 10), -1);
	free(t);
	free(s);
}

/* A hostile variant of a good signature: its "v=1; " made "v=1; EXTRA".
 * The result is never pass and is one of the words allowed. */
static void check_hostile(const char *s, const char *extra, const char *want)
{
	char tag[4096];
	char *t;
	struct kdkim_result res[2];

	(void)util_fmt(tag, sizeof(tag), "v=1; %s", extra);
	t = replace(s, "v=1; ", tag);
	assert_int_equal(verify(t, rsa_txt, res, 2, NULL), 1);
	if (want != NULL)
		assert_string_equal(res[0].result, want);
	assert_string_not_equal(res[0].result, "pass");
	assert_string_not_equal(res[0].result, "none");
	free(t);
}

static void test_hostile_tags(void **state)
{
	char *s = sign("rsa-sha256", rsa_pem, msg_lf), *t, *h;
	size_t hlen = 64 * 1024;

	(void)state;
	check_hostile(s, "l=99999999999999999999999999999; ", "permerror");
	check_hostile(s, "l=-5; ", "permerror");
	check_hostile(s, "l=100000000; ", "permerror");
	check_hostile(s, "x=1; ", "permerror");                  /* expired */
	check_hostile(s, "v=2; ", NULL);
	check_hostile(s, "q=http/well-known; ", NULL);
	/* h= of 64 KiB naming thousands of fields: refused before any hashing */
	h = xmalloc(hlen + 16);
	strcpy(h, "h=");
	while (strlen(h) + 10 < hlen)
		strcat(h, "from:to:");
	strcat(h, "from; ");
	{
		char *p = tag_pos(s, "h="), *e;
		size_t pre;
		e = strchr(p, ';');
		pre = (size_t)(p - s);
		t = xmalloc(strlen(s) + strlen(h) + 1);
		memcpy(t, s, pre);
		strcpy(t + pre, h);
		strcat(t, e + 2);
	}
	{
		struct kdkim_result res[2];
		assert_int_equal(verify(t, rsa_txt, res, 2, NULL), 1);
		assert_string_equal(res[0].result, "policy");
	}
	free(t);
	free(h);
	/* bad base64 in b= and bh= */
	{
		char *p = tag_pos(s, "b="), *q;
		q = xstrdup(s);
		q[p - s + 2] = '!';
		q[p - s + 3] = '*';
		{
			struct kdkim_result res[2];
			assert_int_equal(verify(q, rsa_txt, res, 2, NULL), 1);
			assert_true(strcmp(res[0].result, "permerror") == 0 ||
			    strcmp(res[0].result, "fail") == 0);
		}
		free(q);
	}
	t = replace(s, "bh=", "bh=*&^%$#@!");
	{
		struct kdkim_result res[2];
		assert_int_equal(verify(t, rsa_txt, res, 2, NULL), 1);
		assert_true(strcmp(res[0].result, "permerror") == 0 || strcmp(res[0].result, "fail") == 0);
	}
	free(t);
	/* rsa-sha1 is refused by policy (RFC 8301) */
	t = replace(s, "a=rsa-sha256", "a=rsa-sha1");
	{
		struct kdkim_result res[2];
		assert_int_equal(verify(t, rsa_txt, res, 2, NULL), 1);
		assert_string_equal(res[0].result, "policy");
		assert_string_equal(res[0].algorithm, "rsa-sha1");
	}
	free(t);
	/* d= with bytes that must not reach a header */
	t = replace(s, "d=example.test", "d=ex(am)ple\"; x");
	{
		struct kdkim_result res[2];
		assert_int_equal(verify(t, rsa_txt, res, 2, NULL), 1);
		assert_string_not_equal(res[0].result, "pass");
		assert_null(strpbrk(res[0].domain, "()\"; "));
	}
	free(t);
	free(s);
}

static void test_garbage_fields(void **state)
{
	static const char *const bad[] = {
		"DKIM-Signature: garbage\n",
		"DKIM-Signature:\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=; s=; h=; bh=; b=\n",
		"DKIM-Signature: ;;;;===;;;\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=sel1; h=from; bh=AAAA; b=AAAA\n",
		"DKIM-Signature: v=1; \x01\x02\xff; d=example.test\n",
		"DKIM-Signature : v=1; a=rsa-sha256; d=example.test; s=sel1; h=from; bh=; b=\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *m = xmalloc(strlen(bad[i]) + sizeof(msg_lf));
		struct kdkim_result res[4];
		int n;
		strcpy(m, bad[i]);
		strcat(m, msg_lf);
		n = verify(m, rsa_txt, res, 4, NULL);
		assert_int_equal(n, 1);
		assert_string_not_equal(res[0].result, "pass");
		assert_string_not_equal(res[0].result, "none");
		free(m);
	}
}

static void test_many_signatures(void **state)
{
	char *s = sign("rsa-sha256", rsa_pem, msg_lf), *m, *sig;
	size_t siglen = strstr(s, "From: Alice") - s;
	struct kdkim_result res[128];
	struct fake_dns f;
	uint64_t t0 = util_now_ms();
	int n;

	(void)state;
	/* 100 copies of the good signature field above the message */
	m = xmalloc(100 * siglen + sizeof(msg_lf));
	sig = xstrndup(s, siglen);
	m[0] = '\0';
	for (int i = 0; i < 100; i++)
		strcat(m, sig);
	strcat(m, msg_lf);
	n = verify(m, rsa_txt, res, 128, &f);
	assert_int_equal(n, 100);
	for (int i = 0; i < 100; i++) {
		if (i < KDKIM_MAX_SIGS) {
			assert_string_equal(res[i].result, "pass");
		} else {
			assert_string_equal(res[i].result, "policy");
			assert_string_equal(res[i].domain, DOMAIN);
		}
	}
	assert_int_equal(f.calls, 1);                     /* one key, asked once */
	/* fewer result slots than signatures */
	assert_int_equal(verify(m, rsa_txt, res, 3, NULL), 3);
	assert_true(util_now_ms() - t0 < 30000);
	free(m);
	free(sig);
	free(s);
}

/* Two signatures, rsa-sha256 by sel1 and ed25519-sha256 by sel2 (the
 * fake DNS knows two names here): each has its own result. */
struct fake_dns2 {
	const char *txt1, *txt2;
	int calls;
};

static enum dns_status fake_txt2(void *arg, const char *name, struct dns_txt_set *set)
{
	struct fake_dns2 *f = arg;
	const char *txt = strcmp(name, NAME) == 0 ? f->txt1
	    : strcmp(name, "sel2._domainkey." DOMAIN) == 0 ? f->txt2 : NULL;

	f->calls++;
	if (txt == NULL)
		return DNS_NOTFOUND;
	set->n = 1;
	set->rec[0].len = strlen(txt);
	memcpy(set->buf, txt, set->rec[0].len + 1);
	set->rec[0].s = set->buf;
	return DNS_OK;
}

static void test_two_signatures(void **state)
{
	char *h1 = NULL, *h2 = NULL, *err = NULL, *m;
	struct fake_dns2 f = { rsa_txt, ed_txt, 0 };
	struct kdkim_dns dns = { fake_txt2, &f };
	struct kdkim_result res[4];
	int n;

	(void)state;
	assert_int_equal(kdkim_sign(DOMAIN, SEL, "rsa-sha256", rsa_pem, msg_lf, strlen(msg_lf),
	    &h1, &err), 0);
	assert_int_equal(kdkim_sign(DOMAIN, "sel2", "ed25519-sha256", ed_pem, msg_lf,
	    strlen(msg_lf), &h2, &err), 0);
	m = xmalloc(strlen(h1) + strlen(h2) + sizeof(msg_lf));
	strcpy(m, h2);
	strcat(m, h1);
	strcat(m, msg_lf);
	assert_int_equal(kdkim_verify(m, strlen(m), &dns, res, 4, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(res[0].result, "pass");
	assert_string_equal(res[0].selector, "sel2");
	assert_string_equal(res[0].algorithm, "ed25519-sha256");
	assert_string_equal(res[1].result, "pass");
	assert_string_equal(res[1].selector, SEL);
	assert_int_equal(f.calls, 2);
	/* one key missing: the other signature still passes */
	f.txt2 = NULL;
	assert_int_equal(kdkim_verify(m, strlen(m), &dns, res, 4, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(res[0].result, "permerror");
	assert_string_equal(res[0].reason, "no key published");
	assert_string_equal(res[1].result, "pass");
	free(m);
	free(h1);
	free(h2);
}

static void test_sign_refusals(void **state)
{
	char *hdr = NULL, *err = NULL;

	(void)state;
	assert_int_equal(kdkim_sign(DOMAIN, SEL, "ed25519-sha256", rsa_pem, msg_lf, strlen(msg_lf),
	    &hdr, &err), -1);
	assert_non_null(strstr(err, "not an Ed25519 key"));
	assert_null(strstr(err, "PRIVATE"));
	free(err);
	assert_int_equal(kdkim_sign(DOMAIN, "bad;sel", "rsa-sha256", rsa_pem, msg_lf,
	    strlen(msg_lf), &hdr, &err), -1);
	free(err);
	assert_int_equal(kdkim_sign("bad domain", SEL, "rsa-sha256", rsa_pem, msg_lf,
	    strlen(msg_lf), &hdr, &err), -1);
	free(err);
	assert_int_equal(kdkim_sign(DOMAIN, SEL, "rsa-sha256", "not a key", msg_lf,
	    strlen(msg_lf), &hdr, &err), -1);
	free(err);
	/* no From: libopendkim refuses to sign */
	assert_int_equal(kdkim_sign(DOMAIN, SEL, "rsa-sha256", rsa_pem, "Subject: x\n\nbody\n", 17,
	    &hdr, &err), -1);
	assert_null(hdr);
	free(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keygen),
		cmocka_unit_test(test_sign_verify_rsa),
		cmocka_unit_test(test_sign_verify_ed25519),
		cmocka_unit_test(test_sign_crlf_input),
		cmocka_unit_test(test_tampered),
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_key_lookup),
		cmocka_unit_test(test_none),
		cmocka_unit_test(test_ar_format),
		cmocka_unit_test(test_hostile_tags),
		cmocka_unit_test(test_garbage_fields),
		cmocka_unit_test(test_many_signatures),
		cmocka_unit_test(test_two_signatures),
		cmocka_unit_test(test_sign_refusals),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
