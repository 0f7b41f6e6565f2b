/* store_dkim: the rows of dkim_keys (schema version 5): the DKIM signing
 * keys of kale's domains, one per (domain, selector), the newest being the
 * one a domain signs with. Keys are made by src/mail/dkim.c (kalectl dkim
 * keygen); this file only checks the names and keeps the rows. Security:
 * the private keys are the most sensitive rows of the store after the
 * password hashes: only store_dkim_get reads them, the list never does,
 * and no error text ever contains one. */
#include "store/store_int.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

#include "lib/util.h"

/* A selector: dot-separated labels of [a-z0-9_-], lower-cased into out. */
static int store_dkim_selector_norm(const char *in, char *out, size_t cap, char **error_r)
{
	size_t len = in ? strlen(in) : 0, label = 0;

	if (len == 0 || len >= cap)
		return util_err(error_r, "bad DKIM selector '%.64s' (1-%zu characters)", in ? in : "",
		    cap - 1);
	for (size_t i = 0; i <= len; i++) {
		char c = (char)tolower((unsigned char)in[i]);
		if (c == '.' || c == '\0') {
			if (label == 0)
				return util_err(error_r, "bad DKIM selector '%.64s': empty label", in);
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
			label++;
		} else {
			return util_err(error_r, "bad DKIM selector '%.64s': only a-z 0-9 - _ and dots",
			    in);
		}
		out[i] = c;
	}
	return 0;
}

static void store_dkim_row(struct store_q *q, struct store_dkim_key *k)
{
	memset(k, 0, sizeof(*k));
	store_q_copy(q, 0, k->domain, sizeof(k->domain));
	store_q_copy(q, 1, k->selector, sizeof(k->selector));
	store_q_copy(q, 2, k->algorithm, sizeof(k->algorithm));
	store_q_copy(q, 3, k->private_key, sizeof(k->private_key));
	store_q_copy(q, 4, k->txt, sizeof(k->txt));
	k->created = store_q_int(q, 5);
}

int store_dkim_add(store *st, const struct store_dkim_key *k, char **error_r)
{
	struct store_domain d;
	char domain[256], selector[64], what[330];
	int rc;

	if (store_domain_name_norm(k->domain, domain, sizeof(domain), error_r) < 0 ||
	    store_dkim_selector_norm(k->selector, selector, sizeof(selector), error_r) < 0)
		return -1;
	if (strcmp(k->algorithm, "rsa-sha256") != 0 && strcmp(k->algorithm, "ed25519-sha256") != 0)
		return util_err(error_r, "unknown DKIM algorithm '%.32s'", k->algorithm);
	if (strncmp(k->private_key, "-----BEGIN ", 11) != 0 ||
	    strnlen(k->private_key, sizeof(k->private_key)) >= sizeof(k->private_key))
		return util_err(error_r, "the DKIM private key is not a PEM text");
	if (strncmp(k->txt, "v=DKIM1;", 8) != 0 || strnlen(k->txt, sizeof(k->txt)) >= sizeof(k->txt))
		return util_err(error_r, "the DKIM TXT record is not a DKIM1 record");
	rc = store_domain_get(st, domain, &d);
	if (rc < 0)
		return store_err_db(st, error_r, "store: read domain");
	if (rc == 0)
		return util_err(error_r, "no domain %s (kalectl domain add)", domain);
	(void)util_fmt(what, sizeof(what), "%s for %s", selector, domain);
	return store_run_added(st, store_run(st, ST_DKIM_ADD, "tttttI", domain, selector,
	    k->algorithm, k->private_key, k->txt, k->created ? k->created : (int64_t)time(NULL)),
	    "DKIM key", what, error_r);
}

int store_dkim_get(store *st, const char *domain, const char *selector,
    struct store_dkim_key *k_r)
{
	struct store_q q;
	int rc = selector == NULL ? store_q_start(st, &q, ST_DKIM_NEWEST, NULL, "t", domain)
	    : store_q_start(st, &q, ST_DKIM_GET, NULL, "tt", domain, selector);

	if (rc < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW)
		store_dkim_row(&q, k_r);
	store_q_end(&q);
	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

struct store_dkim_each {
	int (*cb)(void *ctx, const struct store_dkim_key *k);
	void *ctx;
};

static int store_dkim_each_row(struct store_q *q, void *arg)
{
	const struct store_dkim_each *e = arg;
	struct store_dkim_key k;

	store_dkim_row(q, &k);
	return e->cb(e->ctx, &k);
}

int store_dkim_list(store *st, int (*cb)(void *ctx, const struct store_dkim_key *k), void *ctx)
{
	struct store_dkim_each e = { cb, ctx };
	struct store_q q;

	if (store_q_start(st, &q, ST_DKIM_LIST, NULL, "") < 0)
		return -1;
	return store_q_each(&q, store_dkim_each_row, &e);
}

long store_dkim_del(store *st, const char *domain, const char *selector, char **error_r)
{
	int rc = selector == NULL ? store_run(st, ST_DKIM_DEL_DOMAIN, "t", domain)
	    : store_run(st, ST_DKIM_DEL, "tt", domain, selector);
	long n;

	if (rc != STORE_DONE)
		return store_err_db(st, error_r, "store: delete DKIM key");
	n = store_changes(st);
	if (n == 0)
		return selector == NULL
		    ? util_err(error_r, "no DKIM key for %.253s", domain)
		    : util_err(error_r, "no DKIM key %.64s for %.253s", selector, domain);
	return n;
}
