/* filter_rdns.c: "rdns" (the client has a PTR name) and "fcrdns" (one of
 * its PTR names resolves back to the client address, forward-confirmed).
 * The lookups run once per session, on the first recipient that asks,
 * through c-ares on the caller's loop; both checks share the answer. */
#include "filter/filter_int.h"

#include <stdlib.h>
#include <string.h>

#include "lib/dns.h"
#include "lib/util.h"

#define RDNS_NAMES 3          /* PTR names tried forward */

struct rdns_data {
	int ptr_state;            /* 0 not asked, 1 asking, 2 answered */
	enum dns_status ptr_st;
	char names[RDNS_NAMES][256];
	int n_names;
	int fwd_state;            /* the same for the forward lookups */
	int fwd_pending;
	int fwd_match, fwd_tempfail;
	int waiting_fcrdns;       /* which check waits for the answer */
};

static struct rdns_data *rdns_data(struct filter_sess *fs)
{
	int i = filter_check_index("rdns");
	if (fs->data[i] == NULL)
		fs->data[i] = xcalloc(1, sizeof(struct rdns_data));
	return fs->data[i];
}

/* In a DNS callback: the session's data, or NULL (reference dropped)
 * when the session is gone or the resolver is being freed. */
static struct rdns_data *rdns_live(struct filter_sess *fs, enum dns_status st)
{
	if (fs->dead || st == DNS_CANCELLED) {
		filter_unref(fs);
		return NULL;
	}
	return rdns_data(fs);
}

static void rdns_fcrdns_answer(struct filter_sess *fs, struct rdns_data *d)
{
	if (d->fwd_match)
		filter_answer(fs, FILTER_RES_PASS, "pass", d->names[0]);
	else if (d->ptr_st == DNS_TEMPFAIL || d->fwd_tempfail)
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "DNS lookup failed");
	else if (d->n_names == 0)
		filter_answer(fs, FILTER_RES_FAIL, "fail", "client has no PTR name");
	else
		filter_answer(fs, FILTER_RES_FAIL, "fail", "PTR name does not resolve back to the client");
}

static void rdns_fwd_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error)
{
	struct filter_sess *fs = arg;
	struct rdns_data *d = rdns_live(fs, st);

	(void)error;
	if (d == NULL)
		return;
	if (st == DNS_TEMPFAIL)
		d->fwd_tempfail = 1;
	for (int i = 0; st == DNS_OK && i < n; i++)
		if (filter_sa_equal((const struct sockaddr *)&a[i].ss, (const struct sockaddr *)&fs->sa))
			d->fwd_match = 1;
	if (--d->fwd_pending == 0) {
		d->fwd_state = 2;
		rdns_fcrdns_answer(fs, d);
	}
	filter_unref(fs);
}

/* The PTR is known: answers rdns, or starts fcrdns's forward lookups. */
static void rdns_go_on(struct filter_sess *fs, struct rdns_data *d)
{
	if (!d->waiting_fcrdns) {
		if (d->ptr_st == DNS_OK && d->n_names > 0)
			filter_answer(fs, FILTER_RES_PASS, "pass", d->names[0]);
		else if (d->ptr_st == DNS_TEMPFAIL)
			filter_answer(fs, FILTER_RES_ERROR, "temperror", "PTR lookup failed");
		else
			filter_answer(fs, FILTER_RES_FAIL, "fail", "client has no PTR name");
		return;
	}
	if (d->fwd_state == 2 || d->n_names == 0) {
		rdns_fcrdns_answer(fs, d);
		return;
	}
	d->fwd_state = 1;
	d->fwd_pending = d->n_names;
	for (int i = 0, n = d->n_names; i < n; i++) {
		filter_ref(fs);
		dns_addr(fs->env->dns, d->names[i], 25, rdns_fwd_cb, fs);
	}
}

static void rdns_ptr_cb(void *arg, enum dns_status st, const struct dns_name *names, int n,
    const char *error)
{
	struct filter_sess *fs = arg;
	struct rdns_data *d = rdns_live(fs, st);

	(void)error;
	if (d == NULL)
		return;
	d->ptr_state = 2;
	d->ptr_st = st;
	for (int i = 0; st == DNS_OK && i < n && d->n_names < RDNS_NAMES; i++)
		if (util_fmt(d->names[d->n_names], sizeof(d->names[0]), "%s", names[i].name) == 0)
			d->n_names++;
	rdns_go_on(fs, d);
	filter_unref(fs);
}

static void rdns_start(struct filter_sess *fs, int fcrdns)
{
	struct rdns_data *d = rdns_data(fs);

	d->waiting_fcrdns = fcrdns;
	if (fs->env->dns == NULL) {
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "no resolver");
		return;
	}
	if (d->ptr_state == 2) {
		rdns_go_on(fs, d);
		return;
	}
	d->ptr_state = 1;
	filter_ref(fs);
	dns_ptr(fs->env->dns, (const struct sockaddr *)&fs->sa, rdns_ptr_cb, fs);
}

static void rdns_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	(void)cc;
	rdns_start(fs, 0);
}

static void fcrdns_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	(void)cc;
	rdns_start(fs, 1);
}

const struct filter_check filter_check_rdns = {
	.name = "rdns", .phase = FILTER_PH_CONNECT, .run = rdns_run, .sess_free = free,
};

const struct filter_check filter_check_fcrdns = {
	.name = "fcrdns", .phase = FILTER_PH_CONNECT, .run = fcrdns_run,
};
