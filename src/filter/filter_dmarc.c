/* filter_dmarc.c: DMARC (RFC 7489) over libopendmarc, for the end-of-DATA
 * phase (filter_data.c). kale fetches the policy record itself, through its
 * own resolver ([dns] servers): _dmarc.FROM-DOMAIN, else _dmarc. of the
 * organizational domain (the public suffix list of Debian's publicsuffix
 * package, read by libopendmarc once per process). libopendmarc parses the
 * record and decides alignment and the policy that applies (p= or sp=);
 * pct= is applied here, since the library leaves it to its caller: a message
 * outside the sample gets the next milder policy (RFC 7489 6.6.4).
 * Blocking: runs on a lookup-pool thread or in kalectl. */
#define _DEFAULT_SOURCE
#include "filter/filter_int.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <opendmarc/dmarc.h>

#include "lib/util.h"
#include "mail/addr.h"
#include "mail/header.h"

/* In libopendmarc but not in its installed header: the organizational
 * domain of domain into tld ("" when the suffix list does not know it). */
int opendmarc_get_tld(u_char *domain, u_char *tld, size_t tld_len);

#define DMARC_PSL "/usr/share/publicsuffix/public_suffix_list.dat"

static OPENDMARC_LIB_T dmarc_lib;
static pthread_once_t dmarc_once = PTHREAD_ONCE_INIT;

static void dmarc_init(void)
{
	memset(&dmarc_lib, 0, sizeof(dmarc_lib));
	dmarc_lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
	(void)util_fmt((char *)dmarc_lib.tld_source_file, sizeof(dmarc_lib.tld_source_file), "%s",
	    DMARC_PSL);
	if (opendmarc_policy_library_init(&dmarc_lib) != 0) {
		dmarc_lib.tld_type = OPENDMARC_TLD_TYPE_NONE;
		(void)opendmarc_policy_library_init(&dmarc_lib);
	}
}

int filter_from_domain(const char *msg, size_t len, char *dom, size_t cap, const char **why_r)
{
	struct header_field f, from = { 0 };
	struct addr_list l = { 0 };
	size_t pos = 0;
	int n_from = 0, fields = 0;
	const char *at, *err;

	*why_r = "no From: field";
	dom[0] = '\0';
	while (fields++ < 10000 && header_field_next(msg, len, &pos, &f))
		if (header_field_is(msg, &f, "From") && n_from++ == 0)
			from = f;
	if (n_from == 0)
		return 0;
	if (n_from > 1) {
		*why_r = "several From: fields";
		return 0;
	}
	if (addr_parse_list(msg + from.body, from.off + from.len - from.body, &l, &err) < 0) {
		*why_r = "From: does not parse";
		return 0;
	}
	if (l.n != 1) {
		*why_r = l.n ? "several From: addresses" : "no From: address";
		addr_list_free(&l);
		return 0;
	}
	at = strrchr(l.addr[0], '@');
	if (at == NULL || at[1] == '\0' || at[1] == '[' || util_fmt(dom, cap, "%s", at + 1) < 0) {
		*why_r = "no domain in From:";
		dom[0] = '\0';
		addr_list_free(&l);
		return 0;
	}
	addr_list_free(&l);
	for (char *p = dom; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	if (dom[0] && dom[strlen(dom) - 1] == '.')
		dom[strlen(dom) - 1] = '\0';
	return dom[0] != '\0';
}

/* The organizational domain: the suffix list's, else the last two labels. */
static void dmarc_org(const char *domain, char *org, size_t cap)
{
	const char *p;
	int dots = 0;

	org[0] = '\0';
	if (dmarc_lib.tld_type != OPENDMARC_TLD_TYPE_NONE &&
	    opendmarc_get_tld((u_char *)domain, (u_char *)org, cap) == 0 && org[0] != '\0')
		return;
	for (p = domain + strlen(domain); p > domain; p--)
		if (p[-1] == '.' && ++dots == 2)
			break;
	(void)util_fmt(org, cap, "%s", p);
}

/* The DMARC record of _dmarc.domain: 1 found (in rec), 0 none (also when
 * there are several: RFC 7489 6.6.3), -1 a temporary DNS error. */
static int dmarc_record(struct dns_sync *ds, const char *domain, char *rec, size_t cap)
{
	struct dns_txt_set *txt = xmalloc(sizeof(*txt));
	char name[300];
	const char *err;
	enum dns_status st;
	int found = 0;

	if (util_fmt(name, sizeof(name), "_dmarc.%s", domain) < 0) {
		free(txt);
		return 0;
	}
	st = dns_sync_txt(ds, name, txt, &err);
	if (st == DNS_TEMPFAIL || (st == DNS_OK && txt->truncated)) {
		free(txt);
		return -1;
	}
	for (int i = 0; st == DNS_OK && i < txt->n; i++) {
		const struct dns_txt *t = &txt->rec[i];
		if (t->len < 8 || strncmp(t->s, "v=DMARC1", 8) != 0 ||
		    (t->len > 8 && t->s[8] != ';' && t->s[8] != ' ' && t->s[8] != '\t'))
			continue;
		if (memchr(t->s, '\0', t->len) != NULL || t->len >= cap)
			continue;
		if (found++ == 0)
			memcpy(rec, t->s, t->len + 1);
	}
	free(txt);
	return found == 1;
}

static int dmarc_spf_outcome(const char *spf)
{
	if (strcmp(spf, "pass") == 0)
		return DMARC_POLICY_SPF_OUTCOME_PASS;
	if (strcmp(spf, "fail") == 0 || strcmp(spf, "softfail") == 0)
		return DMARC_POLICY_SPF_OUTCOME_FAIL;
	if (strcmp(spf, "temperror") == 0)
		return DMARC_POLICY_SPF_OUTCOME_TMPFAIL;
	return DMARC_POLICY_SPF_OUTCOME_NONE;
}

static int dmarc_dkim_outcome(const char *r)
{
	if (strcmp(r, "pass") == 0)
		return DMARC_POLICY_DKIM_OUTCOME_PASS;
	if (strcmp(r, "fail") == 0 || strcmp(r, "permerror") == 0)
		return DMARC_POLICY_DKIM_OUTCOME_FAIL;
	if (strcmp(r, "temperror") == 0)
		return DMARC_POLICY_DKIM_OUTCOME_TMPFAIL;
	return DMARC_POLICY_DKIM_OUTCOME_NONE;
}

static void dmarc_set(struct filter_dmarc_res *r, const char *result, const char *policy,
    const char *reason)
{
	(void)util_fmt(r->result, sizeof(r->result), "%s", result);
	(void)util_fmt(r->policy, sizeof(r->policy), "%s", policy);
	(void)util_fmt(r->reason, sizeof(r->reason), "%s", reason);
}

void filter_dmarc_eval(struct dns_sync *ds, const struct filter_dmarc_in *in,
    struct filter_dmarc_res *r)
{
	char rec[1024], org[256], reason[160];
	const char *where, *policy;
	DMARC_POLICY_T *pctx;
	int found, e, pct = 100;

	memset(r, 0, sizeof(*r));
	(void)pthread_once(&dmarc_once, dmarc_init);
	(void)util_fmt(r->domain, sizeof(r->domain), "%s", in->from_domain);
	if (in->from_domain[0] == '\0') {
		/* RFC 7489 6.6.1: no single author domain, nothing to evaluate */
		dmarc_set(r, "permerror", "", in->from_why);
		return;
	}
	dmarc_org(in->from_domain, org, sizeof(org));
	where = in->from_domain;
	found = dmarc_record(ds, where, rec, sizeof(rec));
	if (found == 0 && strcasecmp(org, in->from_domain) != 0) {
		where = org;
		found = dmarc_record(ds, where, rec, sizeof(rec));
	}
	if (found < 0) {
		dmarc_set(r, "temperror", "", "DMARC record lookup failed");
		return;
	}
	if (found == 0) {
		dmarc_set(r, "none", "", "no DMARC record");
		return;
	}
	pctx = opendmarc_policy_connect_init((u_char *)(in->ip[0] ? in->ip : "0.0.0.0"),
	    strchr(in->ip, ':') != NULL);
	if (pctx == NULL) {
		dmarc_set(r, "temperror", "", "out of memory");
		return;
	}
	(void)opendmarc_policy_store_from_domain(pctx, (u_char *)in->from_domain);
	if (in->spf_domain[0] != '\0')
		(void)opendmarc_policy_store_spf(pctx, (u_char *)in->spf_domain,
		    dmarc_spf_outcome(in->spf), in->spf_helo ? DMARC_POLICY_SPF_ORIGIN_HELO
		    : DMARC_POLICY_SPF_ORIGIN_MAILFROM, NULL);
	for (int i = 0; i < in->n_dkim; i++)
		if (in->dkim[i].domain[0] != '\0')
			(void)opendmarc_policy_store_dkim(pctx, (u_char *)in->dkim[i].domain,
			    (u_char *)in->dkim[i].selector, dmarc_dkim_outcome(in->dkim[i].result), NULL);
	if (opendmarc_policy_store_dmarc(pctx, (u_char *)rec, (u_char *)where, (u_char *)org) != 0) {
		(void)opendmarc_policy_connect_shutdown(pctx);
		dmarc_set(r, "permerror", "", "the DMARC record does not parse");
		return;
	}
	e = opendmarc_get_policy_to_enforce(pctx);
	(void)opendmarc_policy_fetch_pct(pctx, &pct);
	(void)opendmarc_policy_connect_shutdown(pctx);
	switch (e) {
	case DMARC_POLICY_PASS:
		dmarc_set(r, "pass", "", "");
		return;
	case DMARC_POLICY_REJECT:
		policy = "reject";
		break;
	case DMARC_POLICY_QUARANTINE:
		policy = "quarantine";
		break;
	case DMARC_POLICY_NONE:
		policy = "none";
		break;
	case DMARC_POLICY_ABSENT:
		dmarc_set(r, "none", "", "no DMARC record");
		return;
	default:
		dmarc_set(r, "permerror", "", "DMARC evaluation failed");
		return;
	}
	if (pct >= 0 && pct < 100 && strcmp(policy, "none") != 0 &&
	    arc4random_uniform(100) >= (uint32_t)pct)
		policy = strcmp(policy, "reject") == 0 ? "quarantine" : "none";
	(void)util_fmt(reason, sizeof(reason), "neither SPF nor DKIM aligned with %s (p=%s)",
	    in->from_domain, policy);
	dmarc_set(r, "fail", policy, reason);
}
