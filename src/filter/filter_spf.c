/* filter_spf.c: the "spf" check (RFC 7208) with libspf2. The MAIL FROM
 * identity (or, for the null sender, the HELO name) is checked for the
 * client address once per transaction, on the first recipient. libspf2
 * resolves synchronously, so the evaluation runs on a lookup-pool thread
 * (lookup_pool_job); its DNS goes through kale's resolver ([dns] servers,
 * dns_sync_raw, answers parsed by c-ares) by a DNS layer of our own, never
 * through /etc/resolv.conf. Each result has its own action (options fail,
 * softfail, permerror, temperror); pass, neutral and none pass. The result
 * is kept for Authentication-Results. Security: every answer libspf2 sees
 * is bounded by dns.c (sizes, CNAME hops) and the whole evaluation by a
 * deadline; libspf2's own limits (10 DNS mechanisms) stay on. */
#include "filter/filter_int.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ares.h>
#include <jansson.h>
#include <spf2/spf.h>

#include "lib/dns.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lookup/lookup.h"

#define SPF_DEADLINE_MS 20000      /* one evaluation, all its lookups */

/* ---- the pool thread's libspf2 server and resolver ---- */

struct spf_thread {
	SPF_server_t *srv;
	SPF_dns_server_t layer;      /* our DNS layer under libspf2 */
	struct dns_sync *ds;
	char servers[1024];
	uint64_t deadline_ms;        /* of the evaluation running */
	char top[256];               /* the domain checked */
	int top_spf;                 /* it published a v=spf1 record */
	unsigned char buf[DNS_RAW_MAX];
};

static pthread_key_t spf_key;
static pthread_once_t spf_once = PTHREAD_ONCE_INIT;

static void spf_thread_free(void *p)
{
	struct spf_thread *t = p;

	if (t == NULL)
		return;
	if (t->srv != NULL)
		SPF_server_free(t->srv);
	dns_sync_free(&t->ds);
	free(t);
}

/* libspf2 reports through these; nothing goes to stdout/stderr. */
static void spf_log_warning(const char *file, int line, const char *msg)
{
	(void)file, (void)line;
	log_event(LOG_LVL_DEBUG, "spf.warning", "msg", msg, NULL);
}

static void spf_log_quiet(const char *file, int line, const char *msg)
{
	(void)file, (void)line, (void)msg;
}

static void spf_once_init(void)
{
	(void)pthread_key_create(&spf_key, spf_thread_free);
	SPF_warning_handler = spf_log_warning;
	SPF_info_handler = spf_log_quiet;
	SPF_debug_handler = spf_log_quiet;
}

/* Copies one record into rr->rr[i]: 0, or -1 (libspf2 out of memory). */
static int spf_rr_put(SPF_dns_rr_t *rr, int i, const void *data, size_t len)
{
	if (SPF_dns_rr_buf_realloc(rr, i, len) != SPF_E_SUCCESS)
		return -1;
	memcpy(rr->rr[i], data, len);
	rr->num_rr = i + 1;
	return 0;
}

/* The records of an answer, parsed by c-ares into rr; the number kept, or
 * -1 when the answer is malformed. */
static int spf_parse(SPF_dns_rr_t *rr, ns_type type, const unsigned char *b, int len)
{
	int n = 0;

	switch (type) {
	case ns_t_a: {
		struct ares_addrttl a[DNS_ADDR_MAX];
		int na = DNS_ADDR_MAX;
		if (ares_parse_a_reply(b, len, NULL, a, &na) != ARES_SUCCESS)
			return -1;
		for (int i = 0; i < na; i++)
			if (spf_rr_put(rr, n, &a[i].ipaddr, sizeof(a[i].ipaddr)) == 0)
				n++;
		return n;
	}
	case ns_t_aaaa: {
		struct ares_addr6ttl a[DNS_ADDR_MAX];
		int na = DNS_ADDR_MAX;
		if (ares_parse_aaaa_reply(b, len, NULL, a, &na) != ARES_SUCCESS)
			return -1;
		for (int i = 0; i < na; i++)
			if (spf_rr_put(rr, n, &a[i].ip6addr, sizeof(struct in6_addr)) == 0)
				n++;
		return n;
	}
	case ns_t_mx: {
		struct ares_mx_reply *mx = NULL;
		if (ares_parse_mx_reply(b, len, &mx) != ARES_SUCCESS)
			return -1;
		for (struct ares_mx_reply *m = mx; m != NULL && n < DNS_MX_MAX * 2; m = m->next)
			if (spf_rr_put(rr, n, m->host, strlen(m->host) + 1) == 0)
				n++;
		ares_free_data(mx);
		return n;
	}
	case ns_t_ptr: {
		struct hostent *he = NULL;
		if (ares_parse_ptr_reply(b, len, NULL, 0, AF_INET, &he) != ARES_SUCCESS)
			return -1;
		if (he->h_name != NULL && spf_rr_put(rr, n, he->h_name, strlen(he->h_name) + 1) == 0)
			n++;
		for (char **al = he->h_aliases; al != NULL && *al != NULL && n < DNS_PTR_MAX; al++)
			if (spf_rr_put(rr, n, *al, strlen(*al) + 1) == 0)
				n++;
		ares_free_hostent(he);
		return n;
	}
	case ns_t_txt:
	case ns_t_spf: {
		/* the character-strings of one record joined (RFC 7208 3.3) */
		struct ares_txt_ext *txt = NULL;
		char *rec = NULL;
		size_t rlen = 0;
		if (ares_parse_txt_reply_ext(b, len, &txt) != ARES_SUCCESS)
			return -1;
		for (struct ares_txt_ext *t = txt; t != NULL; t = t->next) {
			if (t->record_start && rec != NULL) {
				if (n < DNS_TXT_MAX && spf_rr_put(rr, n, rec, rlen + 1) == 0)
					n++;
				rlen = 0;
			}
			if (rlen + t->length > DNS_TXT_BYTES)
				continue;
			rec = xrealloc(rec, rlen + t->length + 1);
			memcpy(rec + rlen, t->txt, t->length);
			rlen += t->length;
			rec[rlen] = '\0';
		}
		if (rec != NULL && n < DNS_TXT_MAX && spf_rr_put(rr, n, rec, rlen + 1) == 0)
			n++;
		free(rec);
		ares_free_data(txt);
		return n;
	}
	default:
		return 0;
	}
}

/* 1 if name can be asked at all: labels of 1..63 bytes, 253 in all (a
 * trailing dot allowed). c-ares refuses other names, which is no DNS error. */
static int spf_name_ok(const char *name)
{
	size_t len = strlen(name), label = 0;

	if (len == 0 || len > 254 || (len == 254 && name[253] != '.'))
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (name[i] != '.') {
			if (++label > 63)
				return 0;
		} else if (label == 0) {
			return 0;
		} else {
			label = 0;
		}
	}
	return 1;
}

/* libspf2 asks a question: one DNS lookup through kale's resolver. */
static SPF_dns_rr_t *spf_lookup(SPF_dns_server_t *layer, const char *domain, ns_type type,
    int should_cache)
{
	struct spf_thread *t = layer->hook;
	enum dns_status st = DNS_TEMPFAIL;
	const char *err = NULL;
	SPF_dns_rr_t *rr;
	int len = 0, herrno;

	(void)should_cache;
	if (!spf_name_ok(domain))
		st = DNS_NOTFOUND;   /* never asked: no such name (RFC 7208 4.3) */
	else if (util_now_ms() < t->deadline_ms)
		st = dns_sync_raw(t->ds, domain, (int)type, t->buf, sizeof(t->buf), &len, &err);
	herrno = st == DNS_OK ? NETDB_SUCCESS : st == DNS_NOTFOUND ? HOST_NOT_FOUND
	    : st == DNS_NODATA ? NO_DATA : TRY_AGAIN;
	rr = SPF_dns_rr_new_init(layer, domain, type, 0, herrno);
	if (rr == NULL || st != DNS_OK)
		return rr;
	if (spf_parse(rr, type, t->buf, len) < 0) {
		rr->num_rr = 0;
		rr->herrno = TRY_AGAIN;      /* malformed: a temporary error */
	} else if (rr->num_rr == 0) {
		rr->herrno = NO_DATA;
	} else if ((type == ns_t_txt || type == ns_t_spf) && strcasecmp(domain, t->top) == 0) {
		for (int i = 0; i < rr->num_rr; i++) {
			const char *x = rr->rr[i]->txt;
			if (strncasecmp(x, "v=spf1", 6) == 0 && (x[6] == ' ' || x[6] == '\0'))
				t->top_spf = 1;
		}
	}
	return rr;
}

/* This thread's server for [dns] servers `servers` (made on first use). */
static struct spf_thread *spf_thread_get(const char *servers, char **error_r)
{
	struct spf_thread *t;
	struct dns_opts o = { .timeout_ms = 2000, .tries = 2, .deadline_ms = 6000 };

	(void)pthread_once(&spf_once, spf_once_init);
	t = pthread_getspecific(spf_key);
	if (t != NULL && strcmp(t->servers, servers) == 0)
		return t;
	spf_thread_free(t);
	(void)pthread_setspecific(spf_key, NULL);
	t = xcalloc(1, sizeof(*t));
	(void)util_fmt(t->servers, sizeof(t->servers), "%s", servers);
	if ((t->ds = dns_sync_new(servers, &o, error_r)) == NULL) {
		free(t);
		return NULL;
	}
	t->layer.destroy = NULL;      /* ours: libspf2 does not free it */
	t->layer.lookup = spf_lookup;
	t->layer.name = "kale";
	t->layer.hook = t;
	if ((t->srv = SPF_server_new_dns(&t->layer, 0)) == NULL) {
		spf_thread_free(t);
		(void)util_err(error_r, "libspf2: cannot make a server");
		return NULL;
	}
	(void)pthread_setspecific(spf_key, t);
	return t;
}

void filter_spf_eval(const char *servers, const char *hostname, const struct sockaddr *sa,
    const char *helo, const char *sender, char *result, size_t rcap, char *reason, size_t xcap)
{
	SPF_request_t *req = NULL;
	SPF_response_t *resp = NULL;
	struct spf_thread *t;
	char *err = NULL;
	int bad;

	(void)util_fmt(reason, xcap, "%s", "");
	if ((t = spf_thread_get(servers ? servers : "", &err)) == NULL) {
		(void)util_fmt(result, rcap, "temperror");
		(void)util_fmt(reason, xcap, "%s", err ? err : "no resolver");
		free(err);
		return;
	}
	t->deadline_ms = util_now_ms() + SPF_DEADLINE_MS;
	if (hostname != NULL && hostname[0])
		(void)SPF_server_set_rec_dom(t->srv, hostname);
	req = SPF_request_new(t->srv);
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			struct in_addr a4;
			memcpy(&a4, s6->sin6_addr.s6_addr + 12, 4);
			bad = SPF_request_set_ipv4(req, a4) != SPF_E_SUCCESS;
		} else {
			bad = SPF_request_set_ipv6(req, s6->sin6_addr) != SPF_E_SUCCESS;
		}
	} else if (sa->sa_family == AF_INET) {
		bad = SPF_request_set_ipv4(req, ((const struct sockaddr_in *)sa)->sin_addr) != SPF_E_SUCCESS;
	} else {
		bad = 1;
	}
	if (!bad && helo != NULL && helo[0])
		bad = SPF_request_set_helo_dom(req, helo) != SPF_E_SUCCESS;
	/* the null sender: the HELO identity (RFC 7208 2.4), postmaster@HELO */
	if (!bad)
		bad = SPF_request_set_env_from(req, sender && sender[0] ? sender : helo ? helo : "") != 0;
	if (!bad) {
		/* the domain checked: of MAIL FROM, or the HELO name (set_env_from
		 * made postmaster@HELO of the null sender) */
		req->use_local_policy = 0;
		req->cur_dom = req->env_from_dp != NULL ? req->env_from_dp : req->helo_dom;
		bad = req->cur_dom == NULL || req->cur_dom[0] == '\0';
	}
	if (bad) {
		(void)util_fmt(result, rcap, "none");
		(void)util_fmt(reason, xcap, "no identity to check");
	} else {
		/* SPF_request_query_mailfrom's steps, without its shortcut that
		 * passes every loopback client: the record, then its evaluation */
		SPF_record_t *rec = NULL;
		SPF_errcode_t e;

		int interp = 0;

		resp = SPF_response_new(req);
		(void)util_fmt(t->top, sizeof(t->top), "%s", req->cur_dom);
		t->top_spf = 0;
		e = SPF_server_get_record(t->srv, req, resp, &rec);
		if (e == SPF_E_SUCCESS) {
			resp->spf_record_exp = rec;     /* for the exp= modifier */
			e = SPF_record_interpret(rec, req, resp, 0);
			resp->spf_record_exp = NULL;
			interp = 1;
		}
		if (rec != NULL)
			SPF_record_free(rec);
		if (e == SPF_E_NOT_SPF && (interp || t->top_spf)) {
			/* libspf2's word for a record that does not compile, and for
			 * an include:/redirect= target without one: permerror */
			(void)util_fmt(result, rcap, "permerror");
			(void)util_fmt(reason, xcap, "%s", interp ? "include or redirect target has no SPF record"
			    : "SPF record does not parse");
		} else if (e == SPF_E_NOT_SPF) {
			(void)util_fmt(result, rcap, "none");
			(void)util_fmt(reason, xcap, "no SPF record");
		} else if (e == SPF_E_DNS_ERROR) {
			(void)util_fmt(result, rcap, "temperror");
			(void)util_fmt(reason, xcap, "SPF record lookup failed");
		} else if (e != SPF_E_SUCCESS && SPF_response_result(resp) == SPF_RESULT_INVALID) {
			(void)util_fmt(result, rcap, "permerror");
			(void)util_fmt(reason, xcap, "%s", SPF_strerror(e));
		} else {
			SPF_result_t r = SPF_response_result(resp);
			const char *c = SPF_response_get_header_comment(resp);
			(void)util_fmt(result, rcap, "%s", r == SPF_RESULT_INVALID ? "permerror"
			    : SPF_strresult(r));
			if (c != NULL)
				(void)util_fmt(reason, xcap, "%s", c);
		}
	}
	if (resp != NULL)
		SPF_response_free(resp);
	SPF_request_free(req);
	/* printable ASCII only: it goes into replies and headers */
	for (char *p = reason; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			*p = '?';
}

/* ---- the check ---- */

struct spf_data {
	int state;                   /* 0 not asked, 1 asking, 2 answered */
	char result[16];
	char reason[256];
};

struct spf_job {
	struct filter_sess *fs;
	struct sockaddr_storage sa;
	char helo[256], sender[320], servers[1024], hostname[256];
	char result[16], reason[256];
};

static struct spf_data *spf_data(struct filter_sess *fs)
{
	int i = filter_check_index("spf");

	if (fs->data[i] == NULL)
		fs->data[i] = xcalloc(1, sizeof(struct spf_data));
	return fs->data[i];
}

static void spf_answer(struct filter_sess *fs, const struct spf_data *d)
{
	const struct filter_check_conf *cc = filter_conf_check(filter_sess_conf(fs), "spf");
	const char *r = d->result, *an;
	enum filter_action a = cc->action;

	(void)util_fmt(fs->spf, sizeof(fs->spf), "%s", r);
	(void)util_fmt(fs->spf_from, sizeof(fs->spf_from), "%s", fs->sender[0] ? fs->sender : fs->helo);
	if (strcmp(r, "pass") == 0 || strcmp(r, "neutral") == 0 || strcmp(r, "none") == 0) {
		filter_answer(fs, FILTER_RES_PASS, r, d->reason);
		return;
	}
	an = json_string_value(json_object_get(cc->opts, r));
	if (an != NULL)
		(void)filter_action_parse(an, &a);
	if (strcmp(r, "temperror") == 0 && a == FILTER_ACT_TEMPFAIL) {
		/* a lookup that failed: a check error, which --on-error can pass */
		filter_answer(fs, FILTER_RES_ERROR, r, d->reason[0] ? d->reason : "SPF lookup failed");
		return;
	}
	filter_answer_as(fs, FILTER_RES_FAIL, r, d->reason, &a,
	    strcmp(r, "permerror") == 0 ? "5.7.24" : "5.7.23");
}

static void spf_work(void *arg)
{
	struct spf_job *j = arg;

	filter_spf_eval(j->servers, j->hostname, (const struct sockaddr *)&j->sa, j->helo, j->sender,
	    j->result,
	    sizeof(j->result), j->reason, sizeof(j->reason));
}

static void spf_done(void *arg, int cancelled)
{
	struct spf_job *j = arg;
	struct filter_sess *fs = j->fs;
	struct spf_data *d;

	if (!cancelled && !fs->dead) {
		d = spf_data(fs);
		d->state = 2;
		(void)util_fmt(d->result, sizeof(d->result), "%s", j->result);
		(void)util_fmt(d->reason, sizeof(d->reason), "%s", j->reason);
		spf_answer(fs, d);
	}
	free(j);
	filter_unref(fs);
}

static void spf_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	struct spf_data *d = spf_data(fs);
	struct spf_job *j;

	(void)cc;
	if (d->state == 2) {
		spf_answer(fs, d);
		return;
	}
	if (fs->env->pool == NULL) {
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "no lookup pool");
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->fs = fs;
	memcpy(&j->sa, &fs->sa, sizeof(j->sa));
	(void)util_fmt(j->helo, sizeof(j->helo), "%s", fs->helo);
	(void)util_fmt(j->sender, sizeof(j->sender), "%s", fs->sender);
	(void)util_fmt(j->servers, sizeof(j->servers), "%s",
	    fs->env->dns_servers ? fs->env->dns_servers : "");
	(void)util_fmt(j->hostname, sizeof(j->hostname), "%s",
	    fs->env->hostname ? fs->env->hostname : "");
	d->state = 1;
	filter_ref(fs);
	(void)lookup_pool_job(fs->env->pool, spf_work, spf_done, j);
}

/* A new MAIL is a new identity. */
static void spf_mail_reset(struct filter_sess *fs, void **data)
{
	(void)fs;
	free(*data);
	*data = NULL;
}

const struct filter_check filter_check_spf = {
	.name = "spf", .phase = FILTER_PH_MAIL, .ecode = "5.7.23", .run = spf_run, .sess_free = free,
	.mail_reset = spf_mail_reset,
};

struct dns_sync *filter_thread_dns(const char *servers, char **error_r)
{
	struct spf_thread *t = spf_thread_get(servers ? servers : "", error_r);

	return t != NULL ? t->ds : NULL;
}
