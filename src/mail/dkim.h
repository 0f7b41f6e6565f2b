/* dkim: DKIM (RFC 6376) keys, signing and verification over libopendkim,
 * with rsa-sha256 and ed25519-sha256 (RFC 8463). Keys are made with
 * OpenSSL 3; signing adds one DKIM-Signature (relaxed/relaxed); verifying
 * reports every signature of a message (at most KDKIM_MAX_SIGS are
 * evaluated) with its RFC 8601 result word. Key records are fetched through
 * a DNS function the caller gives (kale's resolver), never through
 * /etc/resolv.conf. Security: messages and signatures are untrusted; every
 * loop and buffer is bounded, and results carry only fixed texts and
 * cleaned names. Private keys are never logged or put into an error. */
#ifndef KALE_DKIM_H
#define KALE_DKIM_H

#include <stddef.h>

#include "lib/dns.h"

#define KDKIM_MAX_SIGS 16          /* signatures evaluated per message */
#define KDKIM_MAX_H 64             /* header fields named by one signature's h= */
#define KDKIM_DNS_BUDGET_MS 30000  /* all key lookups of one message */
#define KDKIM_MSG_MAX (64u * 1024 * 1024)  /* largest message signed or verified */

/* Key lookups: the TXT records of name (SELECTOR._domainkey.DOMAIN) into
 * *txt. Returns DNS_OK, DNS_NOTFOUND, DNS_NODATA or DNS_TEMPFAIL (lib/dns.h);
 * kalectl and the filter pass dns_sync_txt on kale's [dns] servers. */
struct kdkim_dns {
	enum dns_status (*txt)(void *arg, const char *name, struct dns_txt_set *txt);
	void *arg;
};

/* One signature's outcome. Names are cleaned: any byte outside
 * [A-Za-z0-9._-] became '?', so each can go into a header as it is. */
struct kdkim_result {
	char domain[256];          /* d= ("" if missing) */
	char selector[256];        /* s= */
	char algorithm[32];        /* a= */
	char result[16];           /* pass fail neutral policy temperror permerror none */
	char reason[96];           /* short, fixed text: "body hash did not verify" */
};

/* Makes a key pair: algorithm "rsa-sha256" (2048 bits) or "ed25519-sha256".
 * *private_pem_r gets the private key (PKCS#8 PEM; free it with
 * kdkim_secret_free), *txt_r the TXT record to publish ("v=DKIM1; k=rsa;
 * p=..."). 0, or -1 with *error_r. */
int kdkim_keygen(const char *algorithm, char **private_pem_r, char **txt_r, char **error_r);
/* Wipes and frees a string that held a private key; accepts NULL; sets *p NULL. */
void kdkim_secret_free(char **p);
/* 1 if s is a selector kale accepts: dot-separated labels of
 * [A-Za-z0-9_-], 1..63 bytes each, at most 253 in all. */
int kdkim_selector_ok(const char *s);
/* 1 if algorithm is "rsa-sha256" or "ed25519-sha256". */
int kdkim_algorithm_ok(const char *algorithm);

/* Signs msg[0..len) (an RFC 5322 message, LF or CRLF line ends) for
 * DOMAIN with SELECTOR's private key (PEM, of the algorithm's type),
 * relaxed/relaxed, over From (signed once more than present, so none can
 * be added), To, Cc, Subject, Date, Message-ID, Reply-To, In-Reply-To,
 * References, MIME-Version, Content-Type and Content-Transfer-Encoding as
 * far as present. *header_r gets the whole "DKIM-Signature: ..." field,
 * folded, with LF line ends and a final LF, to put at the top. 0 or -1. */
int kdkim_sign(const char *domain, const char *selector, const char *algorithm,
    const char *private_pem, const char *msg, size_t len, char **header_r, char **error_r);

/* Verifies every DKIM-Signature of msg[0..len) (LF or CRLF). Results go
 * into res[0..max) in header order, *n_r their number: one per signature,
 * the first KDKIM_MAX_SIGS evaluated and the others "policy"; a message
 * without signature gives one result "none". Signatures kale does not
 * accept (rsa-sha1, h= over KDKIM_MAX_H fields, keys under 1024 bits) are
 * "policy"; a key lookup that failed for now, or once KDKIM_DNS_BUDGET_MS
 * were spent, "temperror". Returns 0, or -1 with *error_r when nothing
 * could be evaluated (out of memory, library failure, message too big). */
int kdkim_verify(const char *msg, size_t len, const struct kdkim_dns *dns,
    struct kdkim_result *res, int max, int *n_r, char **error_r);

/* The result as an Authentication-Results method (RFC 8601, 8616):
 * "dkim=pass (reason) header.d=DOMAIN header.s=SEL header.a=ALG".
 * 0, or -1 if it did not fit (buf holds the cut text). */
int kdkim_ar_format(const struct kdkim_result *r, char *buf, size_t cap);

#endif
