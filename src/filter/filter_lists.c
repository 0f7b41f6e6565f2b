/* filter_lists.c: the "lists" check, the policy's allow and block lists of
 * senders, client addresses, HELO names and recipients (qmail's
 * badmailfrom and more). An allow hit passes and makes the checks its entry
 * names (by default every other check) skip this recipient; a block hit is a
 * fail. Allow wins over block. Answers at once: the lists are part of the
 * policy snapshot. */
#include "filter/filter_int.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/util.h"

/* 1 if entry l matches what the session knows now. */
static int lists_hit(const struct filter_sess *fs, const struct store_filter_list *l)
{
	if (strcmp(l->kind, "sender") == 0)
		return fs->have_mail && fs->sender[0] && filter_addr_match(l->value, fs->sender);
	if (strcmp(l->kind, "recipient") == 0)
		return fs->rcpt[0] && filter_addr_match(l->value, fs->rcpt);
	if (strcmp(l->kind, "helo") == 0)
		return fs->helo[0] && strcasecmp(l->value, fs->helo) == 0;
	if (strcmp(l->kind, "client") == 0)
		return filter_ip_match(l->value, (const struct sockaddr *)&fs->sa) == 1;
	return 0;
}

/* The skip bits of an allow entry: the checks named, or every check. */
static unsigned lists_skip_mask(const struct store_filter_list *l)
{
	unsigned mask = 0;
	char buf[sizeof(l->skip)], *save = NULL;

	if (l->skip[0] == '\0')
		return ~0u;
	(void)util_fmt(buf, sizeof(buf), "%s", l->skip);
	for (char *w = strtok_r(buf, ", ", &save); w != NULL; w = strtok_r(NULL, ", ", &save)) {
		mask |= filter_skip_bit(w);
	}
	return mask;
}

static void lists_run(struct filter_sess *fs, const struct filter_check_conf *cc)
{
	const struct store_filter_list *l;
	char why[400];
	int n;

	(void)cc;
	l = filter_conf_lists(filter_sess_conf(fs), &n);
	for (int i = 0; i < n; i++) {
		if (strcmp(l[i].list, "allow") == 0 && lists_hit(fs, &l[i])) {
			(void)util_fmt(why, sizeof(why), "allow %s %s", l[i].kind, l[i].value);
			filter_skip(fs, lists_skip_mask(&l[i]));
			filter_answer(fs, FILTER_RES_PASS, "pass", why);
			return;
		}
	}
	for (int i = 0; i < n; i++) {
		if (strcmp(l[i].list, "block") == 0 && lists_hit(fs, &l[i])) {
			(void)util_fmt(why, sizeof(why), "block %s %s", l[i].kind, l[i].value);
			filter_answer(fs, FILTER_RES_FAIL, "fail", why);
			return;
		}
	}
	filter_answer(fs, FILTER_RES_PASS, "pass", NULL);
}

const struct filter_check filter_check_lists = {
	.name = "lists", .phase = FILTER_PH_RCPT, .connect = 2, .run = lists_run,
};
