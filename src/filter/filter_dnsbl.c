/* filter_dnsbl.c: the "dnsbl" check (RFC 5782). The client address is
 * looked up in every zone of the policy (zones with weights); a zone lists
 * it when it answers an address in 127.0.0.0/8 (127.255.255.0/24 are the
 * lists' own error codes, e.g. "query refused": not a listing). The sum of
 * the listing zones' weights against the threshold (default 1) decides. The
 * reason names the zone, the code and the zone's TXT record. Answers are kept
 * per session, so later recipients cost nothing. */
#include "filter/filter_int.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/dns.h"
#include "lib/util.h"

#define DNSBL_ZONES 16

struct dnsbl_zone {
	char zone[256];
	int state;                /* 0 not asked, 1 asking, 2 answered */
	enum dns_status st;
	int listed;
	char code[INET_ADDRSTRLEN];
	char txt[200];
	int txt_pending;
};

struct dnsbl_data {
	struct dnsbl_zone z[DNSBL_ZONES];
	int n;
	int pending;              /* queries in flight for the current run */
	const struct filter_check_conf *cc;   /* of the run waiting */
};

static struct dnsbl_zone *dnsbl_zone(struct dnsbl_data *d, const char *zone)
{
	for (int i = 0; i < d->n; i++)
		if (strcasecmp(d->z[i].zone, zone) == 0)
			return &d->z[i];
	if (d->n == DNSBL_ZONES)
		return NULL;
	memset(&d->z[d->n], 0, sizeof(d->z[0]));
	(void)util_fmt(d->z[d->n].zone, sizeof(d->z[0].zone), "%s", zone);
	return &d->z[d->n++];
}

/* Every zone of the policy answered: sums and answers. */
static void dnsbl_decide(struct filter_sess *fs, struct dnsbl_data *d,
    const struct filter_check_conf *cc)
{
	json_t *zones = json_object_get(cc->opts, "zones"), *z;
	double sum = 0, threshold = json_number_value(json_object_get(cc->opts, "threshold"));
	char why[600] = "", *err = NULL;
	size_t i, off = 0;
	int tempfail = 0;

	if (threshold <= 0)
		threshold = 1;
	json_array_foreach(zones, i, z) {
		const char *name = json_string_value(json_object_get(z, "zone"));
		json_t *w = json_object_get(z, "weight");
		struct dnsbl_zone *dz = name ? dnsbl_zone(d, name) : NULL;

		if (dz == NULL)
			continue;
		if (dz->st == DNS_TEMPFAIL) {
			tempfail = 1;
			err = dz->zone;
		}
		if (!dz->listed)
			continue;
		sum += w != NULL ? json_number_value(w) : 1;
		if (off < sizeof(why) - 1 &&
		    util_fmt(why + off, sizeof(why) - off, "%s%s: %s%s%s", off ? ", " : "", dz->zone,
		    dz->code, dz->txt[0] ? " " : "", dz->txt) == 0)
			off = strlen(why);
	}
	if (sum >= threshold) {
		filter_answer(fs, FILTER_RES_FAIL, "fail", why);
	} else if (tempfail) {
		char msg[300];
		(void)util_fmt(msg, sizeof(msg), "%s: lookup failed", err);
		filter_answer(fs, FILTER_RES_ERROR, "temperror", msg);
	} else {
		filter_answer(fs, FILTER_RES_PASS, off ? "listed" : "pass", why);
	}
}

struct dnsbl_q {
	struct filter_sess *fs;
	int zi;                   /* index of the zone in dnsbl_data */
};

static void dnsbl_done_one(struct filter_sess *fs, struct dnsbl_data *d)
{
	if (--d->pending == 0)
		dnsbl_decide(fs, d, d->cc);
}

/* In a DNS callback: the session's data, or NULL (q freed, reference
 * dropped) when the session is gone or the resolver is being freed. */
static struct dnsbl_data *dnsbl_live(struct dnsbl_q *q, enum dns_status st)
{
	struct filter_sess *fs = q->fs;

	if (fs->dead || st == DNS_CANCELLED) {
		free(q);
		filter_unref(fs);
		return NULL;
	}
	return fs->data[filter_check_index("dnsbl")];
}

static void dnsbl_txt_cb(void *arg, enum dns_status st, const struct dns_txt_set *txt,
    const char *error)
{
	struct dnsbl_q *q = arg;
	struct filter_sess *fs = q->fs;
	struct dnsbl_data *d;

	(void)error;
	if ((d = dnsbl_live(q, st)) == NULL)
		return;
	if (st == DNS_OK && txt->n > 0) {
		/* printable ASCII only: it goes into a reply and the log */
		char *out = d->z[q->zi].txt;
		size_t k = 0;
		for (size_t i = 0; i < txt->rec[0].len && k < sizeof(d->z[0].txt) - 1; i++) {
			char c = txt->rec[0].s[i];
			out[k++] = (c >= 0x20 && c < 0x7f) ? c : '?';
		}
		out[k] = '\0';
	}
	free(q);
	dnsbl_done_one(fs, d);
	filter_unref(fs);
}

static void dnsbl_a_cb(void *arg, enum dns_status st, const struct in_addr *a, int n,
    const char *error)
{
	struct dnsbl_q *q = arg;
	struct filter_sess *fs = q->fs;
	struct dnsbl_data *d;
	struct dnsbl_zone *z;

	(void)error;
	if ((d = dnsbl_live(q, st)) == NULL)
		return;
	z = &d->z[q->zi];
	z->state = 2;
	z->st = st == DNS_OK || st == DNS_TEMPFAIL ? st : DNS_NOTFOUND;
	for (int i = 0; st == DNS_OK && i < n && !z->listed; i++) {
		const unsigned char *b = (const unsigned char *)&a[i];
		if (b[0] == 127 && !(b[1] == 255 && b[2] == 255)) {
			z->listed = 1;
			inet_ntop(AF_INET, &a[i], z->code, sizeof(z->code));
		}
	}
	if (z->listed) {
		/* the TXT record says why; the same query name */
		char name[400];
		if (filter_dnsbl_name((const struct sockaddr *)&fs->sa, z->zone, name, sizeof(name)) == 0) {
			d->pending++;
			filter_ref(fs);
			dns_txt(fs->env->dns, name, dnsbl_txt_cb, q);
			q = NULL;
		}
	}
	free(q);
	dnsbl_done_one(fs, d);
	filter_unref(fs);
}

static void dnsbl_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	int idx = filter_check_index("dnsbl");
	json_t *zones = json_object_get(cc->opts, "zones"), *z;
	struct dnsbl_data *d;
	size_t i;

	if (json_array_size(zones) == 0) {
		filter_answer(fs, FILTER_RES_PASS, "none", "no zones");
		return;
	}
	if (fs->env->dns == NULL) {
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "no resolver");
		return;
	}
	if (fs->data[idx] == NULL)
		fs->data[idx] = xcalloc(1, sizeof(struct dnsbl_data));
	d = fs->data[idx];
	d->cc = cc;
	d->pending = 1;           /* held until every query is sent */
	json_array_foreach(zones, i, z) {
		const char *zone = json_string_value(json_object_get(z, "zone"));
		struct dnsbl_zone *dz = zone ? dnsbl_zone(d, zone) : NULL;
		char name[400];
		struct dnsbl_q *q;

		if (dz == NULL || dz->state != 0)
			continue;
		if (filter_dnsbl_name((const struct sockaddr *)&fs->sa, dz->zone, name, sizeof(name)) < 0) {
			dz->state = 2;
			dz->st = DNS_NOTFOUND;     /* no address to ask about (a local socket) */
			continue;
		}
		dz->state = 1;
		q = xcalloc(1, sizeof(*q));
		q->fs = fs;
		q->zi = (int)(dz - d->z);
		d->pending++;
		filter_ref(fs);
		dns_a4(fs->env->dns, name, dnsbl_a_cb, q);
	}
	dnsbl_done_one(fs, d);
}

const struct filter_check filter_check_dnsbl = {
	.name = "dnsbl", .phase = FILTER_PH_CONNECT, .connect = 1, .run = dnsbl_run,
	.sess_free = free,
};
