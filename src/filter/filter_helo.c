/* filter_helo.c: the "helo" check. A fail when the HELO/EHLO name is not a
 * host name or address literal (RFC 5321 §4.1.1.1), claims to be us (our
 * host name), is an address literal that is not the client's, or is a name
 * with no address (A/AAAA) in the DNS. Resolved once per HELO name. */
#include "filter/filter_int.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/dns.h"
#include "lib/util.h"

struct helo_data {
	char name[256];           /* the name the answer is for */
	int state;                /* 0 not asked, 1 asking, 2 answered */
	enum dns_status st;
};

static void helo_answer(struct filter_sess *fs, const struct helo_data *d)
{
	if (d->st == DNS_OK)
		filter_answer(fs, FILTER_RES_PASS, "pass", NULL);
	else if (d->st == DNS_TEMPFAIL)
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "HELO name lookup failed");
	else
		filter_answer(fs, FILTER_RES_FAIL, "fail", "HELO name does not resolve");
}

static void helo_cb(void *arg, enum dns_status st, const struct dns_addr *a, int n,
    const char *error)
{
	struct filter_sess *fs = arg;
	int i = filter_check_index("helo");
	struct helo_data *d;

	(void)a, (void)n, (void)error;
	if (fs->dead || st == DNS_CANCELLED) {
		filter_unref(fs);
		return;
	}
	d = fs->data[i];
	d->state = 2;
	d->st = st;
	helo_answer(fs, d);
	filter_unref(fs);
}

/* An address literal: 1 it is the client's, 0 another, -1 not a literal. */
static int helo_literal(const struct filter_sess *fs, const char *name)
{
	struct sockaddr_storage ss;
	char lit[INET6_ADDRSTRLEN + 8];
	size_t len = strlen(name);

	if (name[0] != '[' || len < 3 || len - 2 >= sizeof(lit))
		return -1;
	memcpy(lit, name + 1, len - 2);
	lit[len - 2] = '\0';
	memset(&ss, 0, sizeof(ss));
	if (strncasecmp(lit, "IPv6:", 5) == 0) {
		ss.ss_family = AF_INET6;
		if (inet_pton(AF_INET6, lit + 5, &((struct sockaddr_in6 *)&ss)->sin6_addr) != 1)
			return 0;
	} else {
		ss.ss_family = AF_INET;
		if (inet_pton(AF_INET, lit, &((struct sockaddr_in *)&ss)->sin_addr) != 1)
			return 0;
	}
	return filter_sa_equal((const struct sockaddr *)&ss, (const struct sockaddr *)&fs->sa);
}

static void helo_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	int i = filter_check_index("helo"), lit;
	struct helo_data *d;
	const char *h = fs->helo;

	(void)cc;
	if (!filter_helo_syntax(h)) {
		filter_answer(fs, FILTER_RES_FAIL, "fail", "invalid HELO name");
		return;
	}
	if ((lit = helo_literal(fs, h)) >= 0) {
		if (lit == 1)
			filter_answer(fs, FILTER_RES_PASS, "pass", NULL);
		else
			filter_answer(fs, FILTER_RES_FAIL, "fail", "HELO address literal is not the client");
		return;
	}
	if (fs->env->hostname != NULL && strcasecmp(h, fs->env->hostname) == 0) {
		filter_answer(fs, FILTER_RES_FAIL, "fail", "HELO claims to be us");
		return;
	}
	if (fs->data[i] == NULL)
		fs->data[i] = xcalloc(1, sizeof(struct helo_data));
	d = fs->data[i];
	if (d->state == 2 && strcasecmp(d->name, h) == 0) {
		helo_answer(fs, d);
		return;
	}
	if (fs->env->dns == NULL) {
		filter_answer(fs, FILTER_RES_ERROR, "temperror", "no resolver");
		return;
	}
	(void)util_fmt(d->name, sizeof(d->name), "%s", h);
	d->state = 1;
	filter_ref(fs);
	dns_addr(fs->env->dns, h, 25, helo_cb, fs);
}

const struct filter_check filter_check_helo = {
	.name = "helo", .phase = FILTER_PH_HELO, .run = helo_run, .sess_free = free,
};
