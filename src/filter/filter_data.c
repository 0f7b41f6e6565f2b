/* filter_data.c: the end-of-DATA phase. The message is complete in its
 * queue/tmp file, not yet committed. One lookup-pool job reads it back
 * (bounded by KDKIM_MSG_MAX) and then, for inbound mail, verifies every
 * DKIM signature, evaluates DMARC with the SPF result of the MAIL phase
 * ("none" when no policy ran spf at RCPT), and rewrites the file in
 * place with one Authentication-Results field (RFC 8601) on top and without
 * any Authentication-Results field that came from outside naming our host
 * or any X-Spam-* field (the verdict fields are ours alone);
 * for outbound mail it signs with the sender domain's key and puts the
 * DKIM-Signature on top. Back on the loop thread, the checks dkim and dmarc
 * of every policy under which a recipient was accepted turn the results
 * into a verdict, and the strictest wins (operator.md §6). The queue format
 * and its readers do not change: what is added is part of the message
 * (docs/architecture.md). */
#include "filter/filter_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lib/log.h"
#include "lib/util.h"
#include "lookup/lookup.h"
#include "mail/header.h"

#define FDATA_AR_MAX 8192     /* the Authentication-Results field we add */

struct fdata_job {
	struct filter_sess *fs;
	int fd;                   /* our own descriptor of the tmp file */
	uint64_t len, new_len;
	int sign;
	struct store_dkim_key key;
	char servers[512], hostname[256];
	struct sockaddr_storage sa;
	char ip[INET6_ADDRSTRLEN], helo[256], sender[320];
	char spf[16];             /* the RCPT phase's result, "" if spf did not run */
	/* the policies that decide (references taken and dropped on the loop
	 * thread; read-only on the pool thread) */
	struct filter_pol *pols[8];
	unsigned pskip[8];        /* what allow-list hits skipped under each */
	int n_pols;
	int pol_error;            /* one could not be read: 451 */
	int rcpt_tag;             /* a recipient was tagged or quarantined at RCPT */
	double rcpt_score;        /* the RCPT phase's spam score (the highest) */
	int scored;               /* the RCPT phase computed one */
	double msg_score;         /* the message's score, for X-Spam-Score */
	int msg_scored;           /* one was computed: the field is added */
	int tagged;               /* X-Spam-Flag added, Subject prefixed */
	/* results */
	struct kdkim_result dk[KDKIM_MAX_SIGS];
	int n_dk;
	struct filter_dmarc_res dm;
	char error[160];          /* could not read, sign or rewrite */
	int skipped;              /* too big to look at */
};

struct fdata_verdict {
	enum filter_verdict v;
	char reply[400];
	char check[16];
	char reason[300];
	double score;             /* the message's spam score (the highest of the policies) */
	int scored;               /* a score action added to it */
};

static void fdata_verdict_of(struct filter_sess *fs, const struct fdata_job *j,
    struct fdata_verdict *best);

#define FDATA_TAG "[SPAM] "   /* the Subject prefix of a tagged message */

/* ---------- on the pool thread ---------- */

/* The authserv-id of an Authentication-Results body (after CFWS). */
static int fdata_ar_ours(const char *b, size_t n, const char *host)
{
	size_t i = 0, k, hl = strlen(host);
	int depth = 0, guard = 0;

	while (i < n && guard++ < 4096) {
		char c = b[i];
		if (depth > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			i++;
		} else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			i++;
		} else if (c == '(') {
			depth = 1;
			i++;
		} else {
			break;
		}
	}
	if (i < n && b[i] == '"')
		i++;               /* a quoted authserv-id */
	for (k = i; k < n && b[k] != ';' && b[k] != '"' && b[k] != '(' && !isspace((unsigned char)b[k]); k++)
		;
	return k - i == hl && strncasecmp(b + i, host, hl) == 0;
}

/* 1 if s can stand as an RFC 8601 pvalue as it is. */
static int fdata_pvalue_ok(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && strchr("!#$%&'*+-/=?^_`{|}~.@", *s) == NULL)
			return 0;
	return 1;
}

static void fdata_ar_build(const struct fdata_job *j, const char *spf_id, const char *spf_prop,
    char *ar, size_t cap)
{
	char m[512];
	size_t n;

	(void)util_fmt(ar, cap, "Authentication-Results: %s", j->hostname);
	n = strlen(ar);
	if (fdata_pvalue_ok(spf_id))
		(void)util_fmt(m, sizeof(m), "spf=%s %s=%s", j->spf[0] ? j->spf : "none", spf_prop, spf_id);
	else
		(void)util_fmt(m, sizeof(m), "spf=%s", j->spf[0] ? j->spf : "none");
	(void)util_fmt(ar + n, cap - n, ";\n\t%s", m);
	for (int i = 0; i < j->n_dk; i++) {
		n = strlen(ar);
		if (kdkim_ar_format(&j->dk[i], m, sizeof(m)) == 0 &&
		    util_fmt(ar + n, cap - n, ";\n\t%s", m) < 0)
			ar[n] = '\0';
	}
	n = strlen(ar);
	if (j->dm.domain[0] != '\0' && fdata_pvalue_ok(j->dm.domain))
		(void)util_fmt(m, sizeof(m), "dmarc=%s%s%s%s header.from=%s", j->dm.result,
		    j->dm.policy[0] ? " (p=" : "", j->dm.policy, j->dm.policy[0] ? ")" : "",
		    j->dm.domain);
	else
		(void)util_fmt(m, sizeof(m), "dmarc=%s", j->dm.result);
	if (util_fmt(ar + n, cap - n, ";\n\t%s\n", m) < 0)
		(void)util_fmt(ar + n, cap - n, "\n");
}

static enum dns_status fdata_txt(void *arg, const char *name, struct dns_txt_set *txt)
{
	const char *err;

	return dns_sync_txt(arg, name, txt, &err);
}

/* Writes top, then buf without the forged Authentication-Results fields and
 * without any X-Spam-* field (inbound), with the Subject prefixed (tagged),
 * at offset 0. */
static int fdata_rewrite(struct fdata_job *j, const char *top, const char *buf)
{
	struct header_field f;
	size_t pos = 0, from = 0, tl = strlen(top), pl = strlen(FDATA_TAG);
	uint64_t off = 0;
	int fields = 0;

	if (fs_pwrite_all(j->fd, top, tl, 0) < 0)
		return -1;
	off = tl;
	while (!j->sign && fields++ < 100000 && header_field_next(buf, j->len, &pos, &f)) {
		size_t cut = f.off + f.len;      /* what of buf is written up to here */
		const char *ins = NULL;
		if ((header_field_is(buf, &f, "Authentication-Results") &&
		    fdata_ar_ours(buf + f.body, f.off + f.len - f.body, j->hostname)) ||
		    (f.name_len > 7 && strncasecmp(buf + f.off, "X-Spam-", 7) == 0)) {
			/* a field from outside in our name, or one of the spam verdict
			 * fields only we write: left out */
			cut = f.off;
		} else if (j->tagged && header_field_is(buf, &f, "Subject")) {
			cut = f.body + (f.body < f.off + f.len && buf[f.body] == ' ');
			if (f.off + f.len - cut >= pl && strncmp(buf + cut, FDATA_TAG, pl) == 0)
				continue;         /* tagged already */
			ins = FDATA_TAG;
		} else {
			continue;
		}
		if (cut > from && fs_pwrite_all(j->fd, buf + from, cut - from, (off_t)off) < 0)
			return -1;
		off += cut - from;
		if (ins != NULL) {
			if (fs_pwrite_all(j->fd, ins, pl, (off_t)off) < 0)
				return -1;
			off += pl;
		}
		from = ins != NULL ? cut : f.off + f.len;
	}
	if (j->len > from && fs_pwrite_all(j->fd, buf + from, j->len - from, (off_t)off) < 0)
		return -1;
	off += j->len - from;
	if (ftruncate(j->fd, (off_t)off) < 0)
		return -1;
	j->new_len = off;
	return 0;
}

/* 1 if msg's header section has a Subject field. */
static int fdata_has_subject(const char *buf, size_t len)
{
	struct header_field f;
	size_t pos = 0;
	int fields = 0;

	while (fields++ < 100000 && header_field_next(buf, len, &pos, &f))
		if (header_field_is(buf, &f, "Subject"))
			return 1;
	return 0;
}

static void fdata_work(void *arg)
{
	struct fdata_job *j = arg;
	struct dns_sync *ds = NULL;
	char *buf = NULL, *top = NULL, *err = NULL, *derr = NULL;
	const char *why;
	char from[256];
	struct kdkim_dns kd;

	j->new_len = j->len;
	if (j->len > KDKIM_MSG_MAX) {
		j->skipped = 1;
		return;
	}
	if ((buf = malloc(j->len + 1)) == NULL) {
		(void)util_fmt(j->error, sizeof(j->error), "out of memory");
		return;
	}
	if (fs_pread_all(j->fd, buf, j->len, 0) < 0) {
		(void)util_fmt(j->error, sizeof(j->error), "cannot read the message: %s", strerror(errno));
		goto out;
	}
	buf[j->len] = '\0';
	if (j->sign) {
		if (kdkim_sign(j->key.domain, j->key.selector, j->key.algorithm, j->key.private_key, buf,
		    j->len, &top, &err) < 0) {
			(void)util_fmt(j->error, sizeof(j->error), "DKIM signing failed: %s", err);
			free(err);
			goto out;
		}
	} else {
		struct filter_dmarc_in in = { 0 };
		const char *spf_id;
		/* the thread's resolver, as SPF's: a lookup gives up after 6 s
		 * (KDKIM_DNS_BUDGET_MS for all keys of a message) */
		if ((ds = filter_thread_dns(j->servers, &derr)) == NULL) {
			(void)util_fmt(j->error, sizeof(j->error), "DNS: %s", derr ? derr : "no resolver");
			free(derr);
			goto out;
		}
		kd.txt = fdata_txt;
		kd.arg = ds;
		if (kdkim_verify(buf, j->len, &kd, j->dk, KDKIM_MAX_SIGS, &j->n_dk, &err) < 0) {
			j->n_dk = 1;
			memset(&j->dk[0], 0, sizeof(j->dk[0]));
			(void)util_fmt(j->dk[0].result, sizeof(j->dk[0].result), "temperror");
			(void)util_fmt(j->dk[0].reason, sizeof(j->dk[0].reason), "verification failed");
			free(err);
		}
		spf_id = j->sender[0] ? j->sender : j->helo;
		in.ip = j->ip;
		(void)filter_from_domain(buf, j->len, from, sizeof(from), &why);
		in.from_domain = from;
		in.from_why = why;
		in.spf = j->spf;
		in.spf_domain = strrchr(spf_id, '@') ? strrchr(spf_id, '@') + 1 : spf_id;
		in.spf_helo = j->sender[0] == '\0';
		in.dkim = j->dk;
		in.n_dkim = j->n_dk;
		filter_dmarc_eval(ds, &in, &j->dm);
		if (!j->pol_error) {
			/* the verdict, to know whether to tag (the loop thread logs it) */
			struct fdata_verdict best;
			fdata_verdict_of(NULL, j, &best);
			j->tagged = j->rcpt_tag || best.v == FILTER_TAG || best.v == FILTER_QUARANTINE;
			j->msg_scored = best.scored;
			j->msg_score = best.score;
		}
		top = xmalloc(FDATA_AR_MAX + 64);
		fdata_ar_build(j, spf_id, j->sender[0] ? "smtp.mailfrom" : "smtp.helo", top,
		    FDATA_AR_MAX);
		if (j->msg_scored) {
			size_t n = strlen(top);
			(void)util_fmt(top + n, FDATA_AR_MAX + 64 - n, "X-Spam-Score: %.1f\n", j->msg_score);
		}
		if (j->tagged) {
			/* until the quarantine exists (issue 14), quarantine tags too */
			size_t n = strlen(top);
			(void)util_fmt(top + n, FDATA_AR_MAX + 64 - n, "X-Spam-Flag: YES\n%s",
			    fdata_has_subject(buf, j->len) ? "" : "Subject: " FDATA_TAG "\n");
		}
	}
	if (fdata_rewrite(j, top, buf) < 0)
		(void)util_fmt(j->error, sizeof(j->error), "cannot rewrite the message: %s",
		    strerror(errno));
out:
	free(top);
	free(buf);
}

/* ---------- on the loop thread ---------- */

static int fdata_rank(enum filter_verdict v)
{
	switch (v) {
	case FILTER_REJECT: return 4;
	case FILTER_TEMPFAIL: return 3;
	case FILTER_QUARANTINE: return 2;
	case FILTER_TAG: return 1;
	default: return 0;
	}
}

static void fdata_take(struct fdata_verdict *best, enum filter_verdict v, const char *reply,
    const char *check, const char *reason)
{
	if (fdata_rank(v) <= fdata_rank(best->v) && best->check[0] != '\0')
		return;
	if (v == FILTER_ACCEPT)
		return;
	best->v = v;
	(void)util_fmt(best->reply, sizeof(best->reply), "%s", reply ? reply : "");
	(void)util_fmt(best->check, sizeof(best->check), "%s", check);
	(void)util_fmt(best->reason, sizeof(best->reason), "%s", reason);
}

/* What action a of check (ecode for a refusal) makes of a failure why. */
static void fdata_act(struct filter_sess *fs, struct fdata_verdict *best,
    const struct filter_check_conf *cc, enum filter_action a, const char *ecode, const char *why,
    double *score)
{
	char reply[400];

	switch (a) {
	case FILTER_ACT_REJECT:
		(void)util_fmt(reply, sizeof(reply), "550 %s %s", ecode, why);
		fdata_take(best, FILTER_REJECT, reply, cc->name, why);
		break;
	case FILTER_ACT_TEMPFAIL:
		(void)util_fmt(reply, sizeof(reply), "451 4.7.1 %s", why);
		fdata_take(best, FILTER_TEMPFAIL, reply, cc->name, why);
		break;
	case FILTER_ACT_QUARANTINE:
		fdata_take(best, FILTER_QUARANTINE, NULL, cc->name, why);
		break;
	case FILTER_ACT_TAG:
		fdata_take(best, FILTER_TAG, NULL, cc->name, why);
		break;
	case FILTER_ACT_SCORE:
		*score += cc->score;
		break;
	default:
		break;
	}
	if (fs != NULL)
		filter_log_row(fs, "checked", why);
}

/* A check error: 451 unless --on-error pass; a check set to log decides nothing. */
static void fdata_error(struct filter_sess *fs, struct fdata_verdict *best,
    const struct filter_check_conf *cc, const char *why)
{
	char reply[400];

	if (!cc->on_error_pass && cc->action != FILTER_ACT_LOG) {
		(void)util_fmt(reply, sizeof(reply), "451 4.7.1 %s (temporary failure, try again later)", why);
		fdata_take(best, FILTER_TEMPFAIL, reply, cc->name, why);
	}
	if (fs != NULL)
		filter_log_row(fs, "checked", why);
}

/* The outcome of all signatures: pass if one passed, else the worst. */
static const char *fdata_dkim_summary(const struct fdata_job *j, const char **reason)
{
	const char *r = "none";

	*reason = "";
	for (int i = 0; i < j->n_dk; i++) {
		const char *x = j->dk[i].result;
		if (strcmp(x, "pass") == 0) {
			*reason = "";
			return "pass";
		}
		if (strcmp(x, "fail") == 0 || strcmp(x, "permerror") == 0 ||
		    (strcmp(x, "temperror") == 0 && strcmp(r, "fail") != 0 && strcmp(r, "permerror") != 0) ||
		    (strcmp(r, "none") == 0 && strcmp(x, "none") != 0)) {
			r = x;
			*reason = j->dk[i].reason;
		}
	}
	return r;
}

/* The checks of policy p on the results; with fs (the loop thread) also
 * its steps (if steps) and log rows, without (the pool thread) only *best. */
static void fdata_decide_policy(struct filter_sess *fs, const struct fdata_job *j,
    const struct filter_policy_conf *p, unsigned skip, int steps, struct fdata_verdict *best)
{
	const struct filter_check_conf *cc;
	const char *dres, *dwhy;
	char why[300];
	double score = 0, tag, quar, rej;

	dres = fdata_dkim_summary(j, &dwhy);
	for (int k = 0; k < 2 && steps && fs != NULL; k++)
		if (skip & (k ? FILTER_SKIP_DMARC : FILTER_SKIP_DKIM))
			filter_step_push(fs, FILTER_PH_DATA, k ? "dmarc" : "dkim", "skipped", "allow list",
			    NULL);
	if ((cc = filter_conf_check(p, "dkim")) != NULL && cc->action != FILTER_ACT_OFF &&
	    !(skip & FILTER_SKIP_DKIM)) {
		int fail = strcmp(dres, "fail") == 0 || strcmp(dres, "permerror") == 0;
		(void)util_fmt(why, sizeof(why), "dkim: %s%s%s", dres, dwhy[0] ? ", " : "", dwhy);
		if (steps && fs != NULL)
			filter_step_push(fs, FILTER_PH_DATA, "dkim", dres, dwhy,
			    fail ? filter_action_name(cc->action) : strcmp(dres, "temperror") == 0
			    ? (cc->on_error_pass || cc->action == FILTER_ACT_LOG ? "pass" : "tempfail") : NULL);
		if (fail)
			fdata_act(fs, best, cc, cc->action, "5.7.1", why, &score);
		else if (strcmp(dres, "temperror") == 0)
			fdata_error(fs, best, cc, why);
	}
	if ((cc = filter_conf_check(p, "dmarc")) != NULL && cc->action != FILTER_ACT_OFF &&
	    !(skip & FILTER_SKIP_DMARC)) {
		const char *r = j->dm.result;
		enum filter_action a = cc->action;
		(void)util_fmt(why, sizeof(why), "dmarc: %s%s%s", r, j->dm.reason[0] ? ", " : "",
		    j->dm.reason);
		if (strcmp(r, "fail") == 0) {
			/* the published policy's own action (the options follow p=) */
			char key[24];
			const char *an;
			(void)util_fmt(key, sizeof(key), "p-%s", j->dm.policy);
			an = json_string_value(json_object_get(cc->opts, key));
			if (an != NULL)
				(void)filter_action_parse(an, &a);
		}
		if (steps && fs != NULL)
			filter_step_push(fs, FILTER_PH_DATA, "dmarc", r, j->dm.reason,
			    strcmp(r, "fail") == 0 ? filter_action_name(a) : strcmp(r, "temperror") == 0
			    ? (cc->on_error_pass || a == FILTER_ACT_LOG ? "pass" : "tempfail") : NULL);
		if (strcmp(r, "fail") == 0)
			fdata_act(fs, best, cc, a, "5.7.26", why, &score);
		else if (strcmp(r, "temperror") == 0)
			fdata_error(fs, best, cc, why);
	}
	/* the message's score: the RCPT phase's and these checks' */
	if (score != 0 || j->scored) {
		score += j->rcpt_score;
		if (!best->scored || score > best->score)
			best->score = score;
		best->scored = 1;
	}
	filter_conf_scores(p, &tag, &quar, &rej);
	(void)util_fmt(why, sizeof(why), "score %.1f", score);
	if (score > 0 && score >= rej)
		fdata_take(best, FILTER_REJECT, "550 5.7.1 Message refused: spam", "score", why);
	else if (score > 0 && score >= quar)
		fdata_take(best, FILTER_QUARANTINE, NULL, "score", why);
	else if (score > 0 && score >= tag)
		fdata_take(best, FILTER_TAG, NULL, "score", why);
}

static void fdata_decide(struct filter_sess *fs, struct fdata_job *j)
{
	filter_data_cb *cb = fs->dcb;
	void *arg = fs->dcb_arg;
	struct fdata_verdict best;

	fs->dcb = NULL;
	if (j->error[0] != '\0') {
		log_event(LOG_LVL_ERROR, "filter.data_error", "client", fs->ip, "error", j->error, NULL);
		filter_step_push(fs, FILTER_PH_DATA, j->sign ? "dkim-sign" : "data", "error", j->error,
		    "tempfail");
		cb(arg, FILTER_TEMPFAIL, "451 4.3.0 Message could not be checked, try again later",
		    "data", j->error, j->len);
		return;
	}
	if (j->skipped) {
		filter_step_push(fs, FILTER_PH_DATA, j->sign ? "dkim-sign" : "data", "skipped",
		    "message too large to check", NULL);
		cb(arg, FILTER_ACCEPT, NULL, NULL, NULL, j->len);
		return;
	}
	if (j->sign) {
		char r[300];
		(void)util_fmt(r, sizeof(r), "d=%s s=%s a=%s", j->key.domain, j->key.selector,
		    j->key.algorithm);
		filter_step_push(fs, FILTER_PH_DATA, "dkim-sign", "signed", r, NULL);
		cb(arg, FILTER_ACCEPT, NULL, NULL, NULL, j->new_len);
		return;
	}
	(void)util_fmt(fs->dmarc, sizeof(fs->dmarc), "%s", j->dm.result);
	fdata_verdict_of(fs, j, &best);
	if (j->tagged)
		filter_step_push(fs, FILTER_PH_DATA, "tag", "tagged",
		    "X-Spam-Flag: YES, Subject prefixed " FDATA_TAG, NULL);
	cb(arg, best.v, best.reply[0] ? best.reply : NULL, best.check[0] ? best.check : NULL,
	    best.reason[0] ? best.reason : NULL, j->new_len);
}

/* The strictest verdict of the deciding policies (pure over j but for what
 * fs is given: steps and log rows). */
static void fdata_verdict_of(struct filter_sess *fs, const struct fdata_job *j,
    struct fdata_verdict *best)
{
	memset(best, 0, sizeof(*best));
	best->v = FILTER_ACCEPT;
	if (j->pol_error)
		fdata_take(best, FILTER_TEMPFAIL, "451 4.3.0 Filter policy unavailable", "policy",
		    "policy unavailable");
	for (int i = 0; i < j->n_pols; i++)
		fdata_decide_policy(fs, j, filter_pol_conf(j->pols[i]), j->pskip[i], i == 0, best);
}

static void fdata_done(void *arg, int cancelled)
{
	struct fdata_job *j = arg;
	struct filter_sess *fs = j->fs;

	close(j->fd);
	OPENSSL_cleanse(&j->key, sizeof(j->key));
	if (!cancelled && !fs->dead && fs->dcb != NULL)
		fdata_decide(fs, j);
	for (int i = 0; i < j->n_pols; i++)
		filter_pol_release(&j->pols[i]);
	free(j);
	filter_unref(fs);
}

int filter_data_wanted(struct filter_sess *fs)
{
	int want = fs->rcpt_tag || fs->scored;

	for (int i = 0; i < fs->n_dpol && !want; i++) {
		char *err = NULL;
		struct filter_pol *p = filter_policy_get(fs->env->st, fs->dpol[i], &err);
		const struct filter_check_conf *a, *b;
		if (p == NULL) {
			free(err);
			return 1;      /* fdata_decide says 451 */
		}
		a = filter_conf_check(filter_pol_conf(p), "dkim");
		b = filter_conf_check(filter_pol_conf(p), "dmarc");
		want = (a && a->action != FILTER_ACT_OFF && !(fs->dskip[i] & FILTER_SKIP_DKIM)) ||
		    (b && b->action != FILTER_ACT_OFF && !(fs->dskip[i] & FILTER_SKIP_DMARC));
		filter_pol_release(&p);
	}
	return want;
}

void filter_data(struct filter_sess *fs, int fd, uint64_t len, const struct store_dkim_key *key,
    filter_data_cb *cb, void *arg)
{
	struct fdata_job *j = xcalloc(1, sizeof(*j));

	j->fs = fs;
	j->len = len;
	j->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
	if (key != NULL) {
		j->sign = 1;
		j->key = *key;
	}
	(void)util_fmt(j->servers, sizeof(j->servers), "%s",
	    fs->env->dns_servers ? fs->env->dns_servers : "");
	(void)util_fmt(j->hostname, sizeof(j->hostname), "%s",
	    fs->env->hostname ? fs->env->hostname : "");
	memcpy(&j->sa, &fs->sa, sizeof(j->sa));
	(void)util_fmt(j->ip, sizeof(j->ip), "%s", fs->ip);
	(void)util_fmt(j->helo, sizeof(j->helo), "%s", fs->helo);
	(void)util_fmt(j->sender, sizeof(j->sender), "%s", fs->sender);
	(void)util_fmt(j->spf, sizeof(j->spf), "%s", fs->spf);
	j->rcpt_tag = fs->rcpt_tag;
	j->rcpt_score = fs->rcpt_score;
	j->scored = fs->scored;
	for (int i = 0; !j->sign && i < fs->n_dpol && j->n_pols < 8; i++) {
		char *err = NULL;
		j->pskip[j->n_pols] = fs->dskip[i];
		if ((j->pols[j->n_pols] = filter_policy_get(fs->env->st, fs->dpol[i], &err)) != NULL)
			j->n_pols++;
		else
			j->pol_error = 1;
		free(err);
	}
	fs->dcb = cb;
	fs->dcb_arg = arg;
	filter_ref(fs);
	if (j->fd < 0) {
		(void)util_fmt(j->error, sizeof(j->error), "cannot open the message: %s", strerror(errno));
		fdata_done(j, 0);
		return;
	}
	if (fs->env->pool == NULL) {
		fdata_work(j);     /* kalectl policy test: blocking is fine */
		fdata_done(j, 0);
		return;
	}
	(void)lookup_pool_job(fs->env->pool, fdata_work, fdata_done, j);
}
