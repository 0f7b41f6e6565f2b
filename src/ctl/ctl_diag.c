/* ctl_diag: kalectl policy test (operator.md §9): a dry run of what a real
 * SMTP session from --ip would be answered: trusted network, the
 * recipient's domain, its verification profile, the filter pipeline under
 * the domain's policy (src/filter/, with its DNS through [dns] servers)
 * and the route. It stores nothing (greylist state is read, not written;
 * no mail-log row) and sends nothing. Runs only in kalectl. */
#include "ctl/ctl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "filter/filter.h"
#include "lib/dns.h"
#include "lib/util.h"
#include "lookup/lookup.h"
#include "mail/dkim.h"
#include "mail/header.h"

#include <openssl/crypto.h>

static const char *const ctl_phase_names[] = { "connect", "helo", "mail", "rcpt", "data" };

struct ctl_ptest {
	struct event_base *base;
	int done;
	enum filter_verdict v;
	char reply[512];
	char check[32];
	char reason[512];
	uint64_t len;          /* the message after the end of DATA */
};

/* Runs the loop until the verdict; bounded: every check has a deadline of
 * its own, and this is the last word. */
static void ctl_ptest_wait(struct ctl_ptest *t)
{
	struct timeval tv = { 60, 0 };

	if (!t->done)
		event_base_loopexit(t->base, &tv);
	if (!t->done)
		event_base_dispatch(t->base);
}

/* --message FILE as smtpd would store it (LF line ends) in an unlinked
 * temporary file that the end-of-DATA phase may rewrite: its fd, or -1. */
static int ctl_ptest_message(const char *path, uint64_t *len_r)
{
	FILE *in = fopen(path, "rb"), *out = in ? tmpfile() : NULL;
	int ch, cr = 0, fd = -1;
	uint64_t n = 0;

	if (in == NULL || out == NULL) {
		fprintf(stderr, "kalectl: --message %s: %s\n", path, strerror(errno));
		goto done;
	}
	while ((ch = getc(in)) != EOF && n <= (uint64_t)KDKIM_MSG_MAX + 1) {
		if (cr && ch != '\n') {
			putc('\r', out);
			n++;
		}
		cr = ch == '\r';
		if (!cr) {
			putc(ch, out);
			n++;
		}
	}
	if (cr) {
		putc('\r', out);
		n++;
	}
	if (ferror(in) || fflush(out) != 0 || (fd = dup(fileno(out))) < 0)
		fprintf(stderr, "kalectl: --message %s: %s\n", path, strerror(errno));
	*len_r = n;
done:
	if (in != NULL)
		fclose(in);
	if (out != NULL)
		fclose(out);
	return fd;
}

/* The first header field of the message in fd: what the phase put on top. */
static void ctl_ptest_top(int fd, uint64_t len, char *buf, size_t cap)
{
	struct header_field f;
	size_t n = len < cap - 1 ? (size_t)len : cap - 1, pos = 0;

	buf[0] = '\0';
	if (fs_pread_all(fd, buf, n, 0) < 0)
		return;
	buf[n] = '\0';
	if (header_field_next(buf, n, &pos, &f) == 1 &&
	    (header_field_is(buf, &f, "Authentication-Results") ||
	    header_field_is(buf, &f, "DKIM-Signature"))) {
		buf[f.off + f.len] = '\0';
		if (f.len > 0 && buf[f.len - 1] == '\n')
			buf[f.len - 1] = '\0';
	} else {
		buf[0] = '\0';
	}
}

static void ctl_ptest_cb(void *arg, enum filter_verdict v, const char *reply, const char *check,
    const char *reason)
{
	struct ctl_ptest *t = arg;

	t->done = 1;
	t->v = v;
	(void)util_fmt(t->reply, sizeof(t->reply), "%s", reply ? reply : "");
	(void)util_fmt(t->check, sizeof(t->check), "%s", check ? check : "");
	(void)util_fmt(t->reason, sizeof(t->reason), "%s", reason ? reason : "");
	event_base_loopbreak(t->base);
}

static void ctl_ptest_data_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason, uint64_t len)
{
	struct ctl_ptest *t = arg;

	t->len = len;
	ctl_ptest_cb(arg, v, reply, check, reason);
}

static const char *ctl_verdict_name(enum filter_verdict v)
{
	switch (v) {
	case FILTER_ACCEPT: return "accept";
	case FILTER_TAG: return "tag";
	case FILTER_QUARANTINE: return "quarantine";
	case FILTER_TEMPFAIL: return "tempfail";
	default: return "reject";
	}
}

struct ctl_out {
	json_t *steps;
	int json;
};

static void ctl_step(struct ctl_out *o, const char *phase, const char *check, const char *result,
    const char *reason, const char *action)
{
	if (o->json)
		json_array_append_new(o->steps, json_pack("{s:s, s:s, s:s, s:o, s:s}", "phase", phase,
		    "check", check, "result", result, "reason", ctl_json_str(reason ? reason : ""),
		    "action", action ? action : ""));
	else
		printf("%-8s %-10s %-10s %-9s %s\n", phase, check, result, action && action[0] ? action
		    : "-", reason ? reason : "");
}

/* The end: the verdict, the reply and (accepted) the route. */
static int ctl_verdict(struct ctl_out *o, const char *verdict, const char *reply, const char *route)
{
	if (o->json) {
		return ctl_print_json(json_pack("{s:s, s:s, s:o, s:o}", "verdict", verdict, "reply",
		    reply, "route", ctl_json_str(route), "steps", o->steps));
	} else {
		printf("verdict: %s\nreply: %s\n", verdict, reply);
		if (route != NULL)
			printf("route: %s\n", route);
	}
	json_decref(o->steps);
	return CTL_EXIT_OK;
}

/* The recipient as smtpd decides it before the checks: 0 known (route
 * filled, *policy the domain's), 1 refused (reply filled), -1 error. */
static int ctl_ptest_rcpt(struct ctl *c, struct ctl_out *o, const char *to, int trusted,
    struct store_domain *d, char *reply, size_t rcap, char *route, size_t ocap)
{
	const char *at = strrchr(to, '@');
	char **targets = NULL, *err = NULL;
	int found, n;

	found = at ? store_domain_get(c->st, at + 1, d) : 0;
	if (found < 0)
		return -1;
	if (!found) {
		memset(d, 0, sizeof(*d));
		if (!trusted) {
			ctl_step(o, "rcpt", "domain", "fail", "not a domain of ours", NULL);
			(void)util_fmt(reply, rcap, "554 5.7.1 Relay access denied");
			return 1;
		}
		ctl_step(o, "rcpt", "domain", "pass", "trusted client relays anywhere", NULL);
		(void)util_fmt(route, ocap, "relay by MX");
		return 0;
	}
	ctl_step(o, "rcpt", "domain", "pass", d->local ? "local domain" : "relay domain", NULL);
	if (d->verify[0] && strcmp(d->verify, "none") != 0) {
		struct lookup_answer a;
		char *detail = NULL;
		int r = lookup_verify_sync(&c->cfg, d->verify, to, &a, &detail);
		ctl_step(o, "rcpt", "verify", r == LOOKUP_FOUND ? "pass" : r == LOOKUP_MISSING ? "fail"
		    : "error", a.detail, NULL);
		free(detail);
		if (r != LOOKUP_FOUND) {
			(void)util_fmt(reply, rcap, "%s", r == LOOKUP_MISSING
			    ? "550 5.1.1 Recipient address rejected: User unknown"
			    : "451 4.4.3 Recipient verification temporarily unavailable");
			return 1;
		}
	}
	if (!d->local) {
		(void)util_fmt(route, ocap, "relay to %s", d->relay);
		return 0;
	}
	n = store_rcpt_resolve(c->st, to, &targets, &err);
	if (n < 0) {
		free(err);
		return -1;
	}
	if (n == 0) {
		ctl_step(o, "rcpt", "user", "fail", "no such user or alias", NULL);
		(void)util_fmt(reply, rcap, "550 5.1.1 Recipient address rejected: User unknown");
		return 1;
	}
	{
		size_t off = 0;
		off += (size_t)(util_fmt(route, ocap, "local Maildir of") == 0 ? strlen(route) : 0);
		for (int i = 0; i < n && off < ocap; i++)
			if (util_fmt(route + off, ocap - off, " %s", targets[i]) == 0)
				off += strlen(route + off);
	}
	store_targets_free(targets, n);
	return 0;
}

int ctl_policy_test(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *ip = NULL, *helo = NULL, *from = NULL, *to = NULL, *message = NULL;
	int npos = 0, json = 0, trusted, rc;
	const struct ctl_opt opts[] = {
		{ "ip", 1, &ip, NULL }, { "helo", 1, &helo, NULL }, { "from", 1, &from, NULL },
		{ "to", 1, &to, NULL }, { "message", 1, &message, NULL }, { "json", 0, NULL, &json },
		{ NULL, 0, NULL, NULL } };
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	struct ctl_out o = { NULL, 0 };
	struct ctl_ptest t = { 0 };
	struct filter_env env = { 0 };
	struct filter_sess *fs = NULL;
	struct lookup_pool *pool = NULL;
	struct store_domain d;
	char servers[4096] = "", reply[512], route[1024] = "", *err = NULL, sender[320];
	const struct filter_step *steps;
	int nsteps, data = 0, refused_at_connect = 0;
	char top[8192] = "";

	if (argc < 1 || strcmp(argv[0], "test") != 0)
		return ctl_usage("policy takes: test --ip IP [--helo NAME] --from ADDR --to ADDR");
	if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
		return ctl_usage(NULL);
	if (ip == NULL || from == NULL || to == NULL)
		return ctl_usage("policy test needs --ip, --from and --to");
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	else
		return ctl_usage("--ip: '%.64s' is not an IP address", ip);
	if (strchr(to, '@') == NULL)
		return ctl_usage("--to needs an ADDRESS");
	/* "<>" and "" are the null sender */
	(void)util_fmt(sender, sizeof(sender), "%s", strcmp(from, "<>") == 0 ? "" : from);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	o.json = json;
	o.steps = json_array();
	if (!json)
		printf("%-8s %-10s %-10s %-9s %s\n", "PHASE", "CHECK", "RESULT", "ACTION", "REASON");
	trusted = store_network_match(c->st, (struct sockaddr *)&ss) == 1;
	ctl_step(&o, "connect", "network", trusted ? "trusted" : "none",
	    trusted ? "a trusted network: inbound checks are skipped" : NULL, NULL);
	rc = ctl_ptest_rcpt(c, &o, to, trusted, &d, reply, sizeof(reply), route, sizeof(route));
	if (rc < 0) {
		json_decref(o.steps);
		return ctl_fail("cannot read the policy store");
	}
	if (rc == 1)
		return ctl_verdict(&o, reply[0] == '4' ? "tempfail" : "reject", reply, NULL);

	t.base = event_base_new();
	(void)conf_dns_csv(&c->cfg, servers, sizeof(servers));
	env.base = t.base;
	env.dns = dns_new(t.base, servers, &err);
	free(err);
	err = NULL;
	env.st = c->st;
	env.hostname = c->cfg.hostname;
	env.pool = pool = lookup_pool_new(t.base, &c->cfg, 1, &err);
	free(err);
	env.dns_servers = servers;
	env.dry_run = 1;
	fs = filter_sess_new(&env, (struct sockaddr *)&ss, ip, trusted);
	if (filter_connect_wanted(fs)) {
		/* the connection is decided before the greeting, as smtpd does */
		filter_connect(fs, ctl_ptest_cb, &t);
		ctl_ptest_wait(&t);
		if (t.done && (t.v == FILTER_REJECT || t.v == FILTER_TEMPFAIL)) {
			if (t.v == FILTER_TEMPFAIL && strlen(t.reply) > 10) {
				char r[sizeof(t.reply)];
				(void)util_fmt(r, sizeof(r), "421 4.7.1 %s", t.reply + 10);
				(void)util_fmt(t.reply, sizeof(t.reply), "%s", r);
			}
			refused_at_connect = 1;
		}
	}
	if (!refused_at_connect) {
		t.done = 0;
		filter_helo(fs, helo ? helo : "");
		filter_mail(fs, sender);
		filter_rcpt(fs, to, d.filter[0] ? d.filter : NULL, ctl_ptest_cb, &t);
		ctl_ptest_wait(&t);
	}
	if (message != NULL && t.done && (t.v == FILTER_ACCEPT || t.v == FILTER_TAG ||
	    t.v == FILTER_QUARANTINE)) {
		/* the end of DATA, as smtpd runs it (outbound: signing) */
		uint64_t len = 0;
		int fd = ctl_ptest_message(message, &len);
		struct store_dkim_key key;
		const char *at = strrchr(sender, '@');
		int sign = trusted && at != NULL && store_dkim_get(c->st, at + 1, NULL, &key) == 1;
		if (fd < 0) {
			rc = CTL_EXIT_FAIL;
			goto free;
		}
		if (sign || (!trusted && filter_data_wanted(fs))) {
			struct timeval tv = { 90, 0 };
			t.done = 0;
			filter_data(fs, fd, len, sign ? &key : NULL, ctl_ptest_data_cb, &t);
			if (!t.done)
				event_base_loopexit(t.base, &tv);
			if (!t.done)
				event_base_dispatch(t.base);
			if (t.done)
				ctl_ptest_top(fd, t.len, top, sizeof(top));
			data = 1;
		}
		if (sign)
			OPENSSL_cleanse(&key, sizeof(key));
		close(fd);
	}
	steps = filter_steps(fs, &nsteps);
	for (int i = 0; i < nsteps; i++)
		ctl_step(&o, ctl_phase_names[steps[i].phase], steps[i].check, steps[i].result,
		    steps[i].reason, steps[i].action);
	if (!t.done) {
		(void)util_fmt(t.reply, sizeof(t.reply), "451 4.7.1 filter timed out");
		t.v = FILTER_TEMPFAIL;
	}
	rc = 0;
free:
	filter_sess_free(&fs);
	lookup_pool_free(&pool);
	dns_free(&env.dns);
	event_base_free(t.base);
	if (rc != 0) {
		json_decref(o.steps);
		return rc;
	}
	if (top[0] != '\0') {
		if (json)
			json_array_append_new(o.steps, json_pack("{s:s, s:s, s:s, s:s, s:s}", "phase",
			    "data", "check", "header", "result", "added", "reason", top, "action", ""));
		else
			printf("added:\n%s\n", top);
	}
	if (t.v == FILTER_ACCEPT || t.v == FILTER_TAG || t.v == FILTER_QUARANTINE)
		return ctl_verdict(&o, ctl_verdict_name(t.v), data ? "250 2.0.0 Ok" : "250 2.1.5 Ok",
		    route);
	return ctl_verdict(&o, ctl_verdict_name(t.v), t.reply, NULL);
}
