/* smtpd_rcpt: RCPT in an smtpd worker: the postmaster and root-alias
 * rewriting of this host's names (smtpd_rcpt_host), the domain's
 * verification profile (off the loop, smtpd_verify_cb), the decision
 * with alias resolution and de-duplication (smtpd_rcpt_decide), and for
 * inbound mail the filter pipeline's verdict (smtpd_filter_cb). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/bufferevent.h>

#include "lib/log.h"
#include "lib/util.h"
#include "smtpd/smtpd_int.h"

static void smtpd_verify_cb(void *ctx, const struct lookup_answer *a);
static void smtpd_filter_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason);
static void smtpd_rcpt_add(struct smtpd_session *s, const struct smtp_path *pp, char **targets,
    int n);
static void smtpd_rcpt_decide(struct smtpd_session *s, const struct smtp_path *pp, const char *addr,
    int found, const struct store_domain *dom, int special);

/* The first local domain, the postmaster's fallback when none is set and no
 * local domain has a postmaster user or alias. */
static int smtpd_first_local_cb(void *ctx, const struct store_domain *d)
{
	if (!d->local)
		return 0;
	(void)util_fmt(ctx, 256, "%s", d->name);
	return 1;
}

static int smtpd_is_postmaster(const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t n = at ? (size_t)(at - addr) : strlen(addr);
	return n == 10 && strncasecmp(addr, "postmaster", 10) == 0;
}

/* Rewrites RCPT for names of this host that no domain record covers:
 * unqualified "postmaster" and postmaster@hostname go to the postmaster
 * (RFC 5321 4.5.1: always accepted), any other LOCAL@hostname (root,
 * cron's users) to the root alias, for local, trusted and authenticated
 * clients. 1 rewritten (p and addr), 0 not ours, -1 error (replied). */
static int smtpd_rcpt_host(struct smtpd_session *s, struct smtp_path *p, char *addr, size_t cap)
{
	const struct kale_config *cfg = s->w->cfg;
	struct store_domain d;
	char to[300], first[256] = "";
	int pm = smtpd_is_postmaster(p->addr), r;

	if (p->domain[0] != '\0') {
		if (p->domain_literal || strcasecmp(p->domain, cfg->hostname) != 0)
			return 0;
		if ((r = store_domain_get(s->w->st, p->domain, &d)) != 0) {
			if (r > 0)
				return 0;       /* the host name is a domain of its own */
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return -1;
		}
		if (!pm && s->kind != LISTEN_LOCAL && !s->trusted && s->auth_address == NULL)
			return 0;
	}
	r = pm ? store_postmaster(s->w->st, cfg, to, sizeof(to))
	       : store_root_alias(s->w->st, cfg, to, sizeof(to));
	if (r < 0) {
		smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
		return -1;
	}
	if (r == 0) {
		/* Nobody configured: queued for postmaster of the first local
		 * domain (or of this host) all the same, with a warning. */
		if (store_domain_list(s->w->st, smtpd_first_local_cb, first) < 0) {
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return -1;
		}
		(void)util_fmt(to, sizeof(to), "postmaster@%s", first[0] ? first : cfg->hostname);
		log_event(LOG_LVL_WARN, "smtp.postmaster", "client", s->ip, "rcpt", addr, "to", to,
		    "reason", "no [server] postmaster, and no postmaster user or alias in a local domain",
		    NULL);
	}
	(void)util_fmt(addr, cap, "%s", to);
	(void)util_fmt(p->domain, sizeof(p->domain), "%s", strrchr(to, '@') + 1);
	return 1;
}

/* MAIL given: the table checks it (smtpd_commands). */
void smtpd_cmd_rcpt(struct smtpd_session *s, char *arg)
{
	struct smtpd_tx *tx = &s->tx;
	struct smtp_path p;
	struct store_domain dom;
	const char *err;
	char addr[300];
	int found, special;

	if (smtp_parse_path(arg, 0, &p, &err) < 0) {
		smtpd_reject(s, NULL, err);
		s->errors++;
		return;
	}
	if (p.utf8 && !tx->mail.smtputf8) {
		smtpd_reject(s, p.addr, "553 5.6.7 Non-ASCII address needs SMTPUTF8");
		return;
	}
	if (tx->n_targets >= s->w->cfg->max_recipients) {
		smtpd_reject(s, p.addr, "452 4.5.3 Too many recipients");
		return;
	}
	(void)util_fmt(addr, sizeof(addr), "%s", p.addr);
	if ((special = smtpd_rcpt_host(s, &p, addr, sizeof(addr))) < 0)
		return;
	found = p.domain_literal ? 0 : store_domain_get(s->w->st, p.domain, &dom);
	if (found < 0) {
		smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
		return;
	}
	/* postmaster@ any domain we accept is never refused by a profile */
	special |= found && smtpd_is_postmaster(addr);
	if (!special && found && dom.verify[0] && strcmp(dom.verify, "none") != 0 && s->w->pool) {
		/* The domain's verification profile decides first, off the loop. */
		struct smtpd_rcptwait *rw = xcalloc(1, sizeof(*rw));
		rw->p = p;
		(void)util_fmt(rw->addr, sizeof(rw->addr), "%s", addr);
		rw->dom = dom;
		s->rw = rw;
		s->state = SMTPD_WAIT;
		bufferevent_disable(s->bev, EV_READ);
		{
			/* the answer may come at once (a cache hit): rw is gone then */
			uint64_t id = lookup_verify(s->w->pool, dom.verify, addr, smtpd_verify_cb, s);
			if (s->rw == rw)
				rw->req = id;
		}
		return;
	}
	smtpd_rcpt_decide(s, &p, addr, found, &dom, special);
}

/* The verification profile answered: go on with RCPT where it stopped. */
static void smtpd_verify_cb(void *ctx, const struct lookup_answer *a)
{
	struct smtpd_session *s = ctx;
	struct smtpd_rcptwait *rw = s->rw;
	struct store_log_row row = { 0 };
	char usec[32];

	s->rw = NULL;
	if (s->state == SMTPD_CLOSING) {
		free(rw);                  /* shutting down: the 421 is on its way */
		return;
	}
	s->state = SMTPD_CMD;
	(void)util_fmt(usec, sizeof(usec), "%lld", (long long)a->elapsed_us);
	log_event(LOG_LVL_DEBUG, "verify.answer", "profile", a->profile, "to", rw->addr,
	    "result", a->result == LOOKUP_FOUND ? "found" : a->result == LOOKUP_MISSING ? "missing" : "error",
	    "detail", a->detail, "usec", usec, NULL);
	if (a->result == LOOKUP_FOUND) {
		smtpd_rcpt_decide(s, &rw->p, rw->addr, 1, &rw->dom, 0);
	} else {
		const char *text = a->result == LOOKUP_MISSING
		    ? "550 5.1.1 Recipient address rejected: User unknown"
		    : "451 4.4.3 Recipient verification temporarily unavailable";
		smtpd_reply(s, "%s", text);
		row.session = s->sid[0] ? s->sid : NULL;
		row.client = s->ip;
		row.helo = s->helo[0] ? s->helo : NULL;
		row.sender = s->tx.active ? s->tx.mail.addr : NULL;
		row.rcpt = rw->addr;
		row.action = "rejected";
		row.code = a->result == LOOKUP_MISSING ? "550 5.1.1" : "451 4.4.3";
		row.reason = a->detail ? a->detail : (a->result == LOOKUP_MISSING ? "user unknown" : "verification failed");
		row.profile = a->profile;
		store_log_add(s->w->st, &row);
		log_event(LOG_LVL_INFO, "smtp.reject", "client", s->ip, "to", rw->addr, "reply", text,
		    "profile", a->profile, NULL);
	}
	free(rw);
	if (s->busy || s->state == SMTPD_WAIT)
		return;          /* answered inside smtpd_process (its loop goes on), or
		                  * the filter pipeline has the recipient now */
	bufferevent_enable(s->bev, EV_READ);
	smtpd_process(s);
}

/* Decides RCPT once the domain (and any verification profile) is known.
 * special: postmaster or a name of this host (never refused; 2 once
 * rewritten to the postmaster, which is not rewritten again). */
static void smtpd_rcpt_decide(struct smtpd_session *s, const struct smtp_path *pp, const char *addr,
    int found, const struct store_domain *dom, int special)
{
	struct smtpd_tx *tx = &s->tx;
	char **targets = NULL;
	char *error = NULL;
	int n = 0;

	if (found && dom->local) {
		n = store_rcpt_resolve(s->w->st, addr, &targets, &error);
		if (n < 0) {
			log_event(LOG_LVL_ERROR, "store.error", "op", "rcpt", "error", error, NULL);
			free(error);
			smtpd_reject(s, addr, "451 4.3.0 Temporary lookup failure");
			return;
		}
		if (n == 0 && special == 1 && smtpd_is_postmaster(addr)) {
			/* postmaster@ a local domain without one: the postmaster */
			struct store_domain d2;
			char to[300];
			int f2 = -1;
			if (store_postmaster(s->w->st, s->w->cfg, to, sizeof(to)) == 1 &&
			    strcasecmp(to, addr) != 0 &&
			    (f2 = store_domain_get(s->w->st, strrchr(to, '@') + 1, &d2)) >= 0) {
				store_targets_free(targets, 0);
				smtpd_rcpt_decide(s, pp, to, f2, &d2, 2);
				return;
			}
		}
		if (n == 0 && special) {
			store_targets_free(targets, 0);
			targets = xmalloc(sizeof(char *));
			targets[0] = xstrdup(addr);
			n = 1;
		}
		if (n == 0) {
			smtpd_reject(s, addr, "550 5.1.1 Recipient address rejected: User unknown");
			return;
		}
	} else if (found || s->trusted || s->auth_address || special) {
		/* Relay domain, or a trusted or authenticated client relaying
		 * anywhere, or the postmaster / root alias elsewhere: queued
		 * for the remote delivery agent. */
		targets = xmalloc(sizeof(char *));
		targets[0] = xstrdup(addr);
		n = 1;
	} else {
		smtpd_reject(s, addr, "554 5.7.1 Relay access denied");
		return;
	}
	/* An address reached twice (directly and through an alias) gets one copy. */
	for (int i = 0; i < n; i++) {
		int dup = 0;
		for (int r = 0; r < tx->n_rcpt && !dup; r++)
			for (int t = 0; t < tx->rcpt[r].n_targets && !dup; t++)
				dup = strcasecmp(tx->rcpt[r].targets[t], targets[i]) == 0;
		for (int j = 0; j < i && !dup; j++)
			dup = strcasecmp(targets[j], targets[i]) == 0;
		if (dup) {
			free(targets[i]);
			targets[i--] = targets[--n];
		}
	}
	if (tx->n_targets + n > s->w->cfg->max_recipients) {
		store_targets_free(targets, n);
		smtpd_reject(s, addr, "452 4.5.3 Too many recipients");
		return;
	}
	if (!special && s->fs != NULL) {
		/* the filter policy decides (src/filter/): inbound mail under the
		 * recipient domain's, outbound mail (trusted, authenticated; only
		 * its own checks run) under the sender domain's */
		struct smtpd_filterwait *fw = xcalloc(1, sizeof(*fw));
		struct store_domain sd;
		const char *policy = found ? dom->filter : NULL, *at;
		if (s->trusted || s->auth_address) {
			at = tx->mail.is_null ? NULL : strrchr(tx->mail.addr, '@');
			policy = at != NULL && store_domain_get(s->w->st, at + 1, &sd) == 1 ? sd.filter
			    : NULL;
		}
		fw->p = *pp;
		(void)util_fmt(fw->addr, sizeof(fw->addr), "%s", addr);
		fw->targets = targets;
		fw->n = n;
		fw->sync = 1;
		s->fw = fw;
		s->state = SMTPD_WAIT;
		bufferevent_disable(s->bev, EV_READ);
		filter_rcpt(s->fs, addr, policy, smtpd_filter_cb, s);
		if (s->fw == fw)
			fw->sync = 0;      /* the verdict comes later */
		return;
	}
	smtpd_rcpt_add(s, pp, targets, n);
}

/* The filter pipeline's verdict on a recipient (maybe inside filter_rcpt). */
static void smtpd_filter_cb(void *arg, enum filter_verdict v, const char *reply,
    const char *check, const char *reason)
{
	struct smtpd_session *s = arg;
	struct smtpd_filterwait *fw = s->fw;
	int sync = fw->sync;

	s->fw = NULL;
	if (s->state == SMTPD_CLOSING) {
		store_targets_free(fw->targets, fw->n);
		free(fw);
		return;
	}
	s->state = SMTPD_CMD;
	if (v == FILTER_REJECT || v == FILTER_TEMPFAIL) {
		char code[16] = "";
		size_t k = strcspn(reply + 4, " ");
		if (k < 8)
			(void)util_fmt(code, sizeof(code), "%.*s", (int)(4 + k), reply);
		smtpd_reply(s, "%s", reply);
		smtpd_log_row(s, check && strcmp(check, "greylist") == 0 ? "greylisted" : "rejected",
		    fw->addr, code, reason);
		log_event(LOG_LVL_INFO, "smtp.reject", "client", s->ip, "from", s->tx.mail.addr,
		    "to", fw->addr, "reply", reply, "check", check, NULL);
		store_targets_free(fw->targets, fw->n);
	} else {
		if (v != FILTER_ACCEPT)
			log_event(LOG_LVL_INFO, "filter.verdict", "client", s->ip, "to", fw->addr,
			    "verdict", v == FILTER_TAG ? "tag" : "quarantine", "reason", reason, NULL);
		smtpd_rcpt_add(s, &fw->p, fw->targets, fw->n);
	}
	free(fw);
	if (sync || s->busy)
		return;            /* smtpd_process's loop goes on */
	bufferevent_enable(s->bev, EV_READ);
	smtpd_process(s);
}

/* Takes the recipient: its targets join the transaction. */
static void smtpd_rcpt_add(struct smtpd_session *s, const struct smtp_path *pp, char **targets,
    int n)
{
	struct smtpd_tx *tx = &s->tx;

	tx->rcpt = xrealloc(tx->rcpt, sizeof(*tx->rcpt) * (size_t)(tx->n_rcpt + 1));
	tx->rcpt[tx->n_rcpt].orig = xstrdup(pp->addr);
	tx->rcpt[tx->n_rcpt].orcpt = pp->orcpt[0] ? xstrdup(pp->orcpt) : NULL;
	tx->rcpt[tx->n_rcpt].notify = pp->notify;
	tx->rcpt[tx->n_rcpt].targets = targets;
	tx->rcpt[tx->n_rcpt].n_targets = n;
	tx->n_rcpt++;
	tx->n_targets += n;
	smtpd_reply(s, "250 2.1.5 Ok");
	smtpd_log_row(s, "rcpt", pp->addr, "250 2.1.5", NULL);
}
