/* imapd_mailbox: the folders of an imapd session: the selected folder and
 * its synchronisation (EXPUNGE / FETCH FLAGS / EXISTS / RECENT), message
 * sets and flag arguments, SELECT/EXAMINE, CREATE, DELETE, RENAME,
 * (UN)SUBSCRIBE, LIST/LSUB, STATUS, APPEND, NOOP/CHECK, NAMESPACE,
 * CLOSE/UNSELECT, EXPUNGE and IDLE. The Maildir work is imap_mbox.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conf/conf.h"
#include "imap/imap_fetch.h"
#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/util.h"

static const char *imapd_flag_names[] = { "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent" };

void imapd_write_flags(struct evbuffer *o, unsigned flags)
{
	evbuffer_add(o, "(", 1);
	int first = 1;
	for (int i = 0; i < 6; i++)
		if (flags & (1u << i)) {
			if (!first)
				evbuffer_add(o, " ", 1);
			evbuffer_add(o, imapd_flag_names[i], strlen(imapd_flag_names[i]));
			first = 0;
		}
	evbuffer_add(o, ")", 1);
}

void imapd_idle_stop(struct imapd_sess *s)
{
	if (s->ino_ev != NULL)
		event_free(s->ino_ev);
	s->ino_ev = NULL;
	if (s->poll_ev != NULL)
		event_free(s->poll_ev);
	s->poll_ev = NULL;
	if (s->ino_fd >= 0)
		close(s->ino_fd);
	s->ino_fd = -1;
	s->idling = 0;
}

void imapd_unselect(struct imapd_sess *s)
{
	imap_mbox_msgs_free(s->mb.msgs, s->mb.n);
	s->mb.msgs = NULL;
	s->mb.n = 0;
	xfree(&s->mb.path);
	s->mbname[0] = '\0';
	if (s->state == IMAPD_SELECTED)
		s->state = IMAPD_AUTH;
}

/* Rescans the selected folder and tells the client what changed: EXPUNGE
 * (only if allow_expunge), FETCH FLAGS, EXISTS, RECENT. */
int imapd_sync(struct imapd_sess *s, int allow_expunge)
{
	struct imap_mbox nm;
	const char *err;
	size_t recent = 0;
	memset(&nm, 0, sizeof(nm));
	nm.path = s->mb.path;
	if (imap_mbox_scan(&nm, &recent, &err) < 0) {
		log_event(LOG_LVL_WARN, "imap.sync_failed", "user", s->user, "error", err, NULL);
		return -1;
	}
	struct evbuffer *o = imapd_out(s);
	struct imap_msg *old = s->mb.msgs;
	size_t on = s->mb.n;
	/* merge by uid: both lists are sorted */
	struct imap_msg *res = xcalloc(nm.n + on + 1, sizeof(*res));
	size_t rn = 0, i = 0, j = 0;
	size_t seq = 0;
	while (i < on) {
		while (j < nm.n && nm.msgs[j].uid < old[i].uid)
			j++;  /* a new file with a lower uid cannot happen; skip it */
		if (j < nm.n && nm.msgs[j].uid == old[i].uid) {
			struct imap_msg *m = &nm.msgs[j];
			unsigned keep = old[i].flags & IMAP_FL_RECENT;
			seq++;
			if ((m->flags & IMAP_FL_STORED) != (old[i].flags & IMAP_FL_STORED)) {
				evbuffer_add_printf(o, "* %zu FETCH (FLAGS ", seq);
				imapd_write_flags(o, m->flags | keep);
				evbuffer_add(o, ")\r\n", 3);
			}
			m->flags |= keep;
			if (old[i].size >= 0)
				m->size = old[i].size;
			if (old[i].idate != 0)
				m->idate = old[i].idate;
			res[rn++] = *m;
			memset(m, 0, sizeof(*m));
			imap_msg_free(&old[i]);
			i++;
			j++;
		} else if (allow_expunge) {
			evbuffer_add_printf(o, "* %zu EXPUNGE\r\n", seq + 1);
			imap_msg_free(&old[i]);
			i++;
		} else {
			/* keep the vanished message until an EXPUNGE may be sent */
			seq++;
			res[rn++] = old[i];
			memset(&old[i], 0, sizeof(old[i]));
			i++;
		}
	}
	uint32_t last = rn > 0 ? res[rn - 1].uid : 0;
	size_t added = 0;
	for (j = 0; j < nm.n; j++) {
		if (nm.msgs[j].base == NULL || nm.msgs[j].uid <= last)
			continue;
		res[rn++] = nm.msgs[j];
		memset(&nm.msgs[j], 0, sizeof(nm.msgs[j]));
		added++;
	}
	/* the files this session moved out of new/ are its \Recent ones */
	for (size_t k = 0; k < recent && k < added; k++)
		res[rn - 1 - k].flags |= IMAP_FL_RECENT;
	imap_mbox_msgs_free(nm.msgs, nm.n);
	xfree(&old);
	s->mb.msgs = res;
	s->mb.n = rn;
	s->mb.uidvalidity = nm.uidvalidity;
	s->mb.uidnext = nm.uidnext;
	if (added > 0 || allow_expunge == 2) {
		size_t r = 0;
		for (size_t k = 0; k < rn; k++)
			if (res[k].flags & IMAP_FL_RECENT)
				r++;
		evbuffer_add_printf(o, "* %zu EXISTS\r\n* %zu RECENT\r\n", rn, r);
	}
	return 0;
}

int imapd_folder(struct imapd_sess *s, const char *name, char *path, size_t cap)
{
	return imap_folder_path(s->root, name, path, cap);
}

static int imapd_flag_parse(const struct imap_arg *a, unsigned *flags)
{
	static const struct { const char *n; unsigned f; } fl[] = {
		{ "\\Seen", IMAP_FL_SEEN }, { "\\Answered", IMAP_FL_ANSWERED }, { "\\Flagged", IMAP_FL_FLAGGED },
		{ "\\Deleted", IMAP_FL_DELETED }, { "\\Draft", IMAP_FL_DRAFT },
	};
	if (a->type != IMAP_ARG_ATOM)
		return -1;
	for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++)
		if (strcasecmp(a->s, fl[i].n) == 0) {
			*flags |= fl[i].f;
			return 0;
		}
	if (a->s[0] == '\\')
		return -1;  /* \Recent and unknown system flags cannot be stored */
	return 0;      /* keywords are accepted and not kept */
}

int imapd_flags_arg(const struct imap_arg *a, unsigned *flags)
{
	*flags = 0;
	if (a->type == IMAP_ARG_LIST) {
		for (size_t i = 0; i < a->n; i++)
			if (imapd_flag_parse(&a->list[i], flags) < 0)
				return -1;
		return 0;
	}
	return imapd_flag_parse(a, flags);
}

/* The value of '*': the last sequence number, or the last UID. */
uint32_t imapd_star(struct imapd_sess *s, int uid)
{
	uint32_t star = uid ? (s->mb.n > 0 ? s->mb.msgs[s->mb.n - 1].uid : 0) : (uint32_t)s->mb.n;
	if (uid && s->mb.n == 0)
		star = s->mb.uidnext > 0 ? s->mb.uidnext - 1 : 0;
	return star;
}

/* Message set to index list: by sequence number or UID. */
int imapd_set(struct imapd_sess *s, const char *spec, int uid, struct imap_seqset *set)
{
	return imap_seqset_parse(spec, imapd_star(s, uid), set);
}

int imapd_in_set(struct imapd_sess *s, const struct imap_seqset *set, size_t i, int uid)
{
	return imap_seqset_has(set, uid ? s->mb.msgs[i].uid : (uint32_t)(i + 1));
}

void imapd_cmd_noop(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (s->state == IMAPD_SELECTED)
		imapd_sync(s, 1);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

void imapd_cmd_namespace(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	imapd_printf(s, "* NAMESPACE ((\"\" \".\")) NIL NIL");
	imapd_printf(s, "%s OK NAMESPACE completed", c->tag);
}

void imapd_cmd_select(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0);
	char path[4096];
	imapd_unselect(s);
	if (name == NULL || c->n_args < 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	s->mb.path = xstrdup(path);
	s->readonly = strcmp(c->name, "EXAMINE") == 0;
	struct evbuffer *o = imapd_out(s);
	/* the sync writes EXISTS and RECENT (allow_expunge 2 forces them) */
	if (imapd_sync(s, 2) < 0) {
		imapd_unselect(s);
		imapd_printf(s, "%s NO [SERVERBUG] Cannot open the mailbox", c->tag);
		return;
	}
	if (strcasecmp(name, "INBOX") == 0)
		util_fmt(s->mbname, sizeof(s->mbname), "INBOX");
	else
		util_fmt(s->mbname, sizeof(s->mbname), "%s", name);
	s->state = IMAPD_SELECTED;
	evbuffer_add_printf(o, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n");
	evbuffer_add_printf(o, "* OK [PERMANENTFLAGS (%s)] Flags permitted\r\n",
	    s->readonly ? "" : "\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*");
	for (size_t i = 0; i < s->mb.n; i++)
		if (!(s->mb.msgs[i].flags & IMAP_FL_SEEN)) {
			evbuffer_add_printf(o, "* OK [UNSEEN %zu] First unseen\r\n", i + 1);
			break;
		}
	evbuffer_add_printf(o, "* OK [UIDVALIDITY %u] UIDs valid\r\n", s->mb.uidvalidity);
	evbuffer_add_printf(o, "* OK [UIDNEXT %u] Predicted next UID\r\n", s->mb.uidnext);
	imapd_printf(s, "%s OK [%s] %s completed", c->tag, s->readonly ? "READ-ONLY" : "READ-WRITE", c->name);
}

void imapd_cmd_create(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	if (name == NULL || c->n_args != 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	char tmp[256];
	/* a trailing delimiter only says the client wants to make children */
	if (util_fmt(tmp, sizeof(tmp), "%s", name) < 0) {
		imapd_printf(s, "%s NO Mailbox name too long", c->tag);
		return;
	}
	size_t l = strlen(tmp);
	if (l > 1 && tmp[l - 1] == '.')
		tmp[l - 1] = '\0';
	if (imap_folder_create(s->root, tmp, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK CREATE completed", c->tag);
}

void imapd_cmd_delete(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	if (name == NULL || c->n_args != 1) {
		imapd_bad(s, c->tag, "Missing mailbox name");
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(name, s->mbname) == 0)
		imapd_unselect(s);
	if (imap_folder_delete(s->root, name, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK DELETE completed", c->tag);
}

void imapd_cmd_rename(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *a = imapd_arg_cstr(c, 0), *b = imapd_arg_cstr(c, 1), *err;
	if (a == NULL || b == NULL || c->n_args != 2) {
		imapd_bad(s, c->tag, "RENAME needs two mailbox names");
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(a, s->mbname) == 0)
		imapd_unselect(s);
	if (imap_folder_rename(s->root, a, b, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK RENAME completed", c->tag);
}

void imapd_cmd_subscribe(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	if (name == NULL || c->n_args != 1 || (strcasecmp(name, "INBOX") != 0 && imap_mailbox_name_ok(name) < 0)) {
		imapd_bad(s, c->tag, "Invalid mailbox name");
		return;
	}
	int sub = strcmp(c->name, "SUBSCRIBE") == 0;
	if (sub && (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path))) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	if (imap_subs_set(s->root, strcasecmp(name, "INBOX") == 0 ? "INBOX" : name, sub, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

static void imapd_list_one(struct imapd_sess *s, const char *verb, const char *name, char **all, size_t n_all, int exists)
{
	struct evbuffer *o = imapd_out(s);
	size_t nl = strlen(name);
	int children = 0;
	for (size_t i = 0; i < n_all; i++)
		if (strncmp(all[i], name, nl) == 0 && all[i][nl] == '.')
			children = 1;
	evbuffer_add_printf(o, "* %s (%s%s", verb, exists ? "" : "\\NonExistent ",
	    children ? "\\HasChildren" : "\\HasNoChildren");
	const char *su = imap_folder_special_use(name);
	if (su != NULL)
		evbuffer_add_printf(o, " %s", su);
	evbuffer_add_printf(o, ") \".\" ");
	imap_write_cstring(o, name);
	evbuffer_add(o, "\r\n", 2);
}

void imapd_cmd_list(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *ref = imapd_arg_cstr(c, 0), *pat = imapd_arg_cstr(c, 1);
	if (ref == NULL || pat == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "LIST needs a reference and a pattern");
		return;
	}
	int lsub = strcmp(c->name, "LSUB") == 0;
	if (pat[0] == '\0') {
		if (!lsub)
			imapd_printf(s, "* LIST (\\Noselect) \".\" \"\"");
		imapd_printf(s, "%s OK %s completed", c->tag, c->name);
		return;
	}
	char full[1024];
	if (util_fmt(full, sizeof(full), "%s%s", ref, pat) < 0) {
		imapd_bad(s, c->tag, "Pattern too long");
		return;
	}
	if (strncasecmp(full, "INBOX", 5) == 0)
		memcpy(full, "INBOX", 5);
	char **all, **subs = NULL;
	size_t n_all, n_subs = 0;
	imap_folder_list(s->root, &all, &n_all);
	if (lsub) {
		imap_subs_list(s->root, &subs, &n_subs);
		for (size_t i = 0; i < n_subs; i++) {
			if (!imap_list_match(full, subs[i]))
				continue;
			int exists = 0;
			for (size_t k = 0; k < n_all; k++)
				if (strcmp(all[k], subs[i]) == 0)
					exists = 1;
			imapd_list_one(s, "LSUB", subs[i], all, n_all, exists);
		}
	} else {
		for (size_t i = 0; i < n_all; i++)
			if (imap_list_match(full, all[i]))
				imapd_list_one(s, "LIST", all[i], all, n_all, 1);
	}
	imap_names_free(all, n_all);
	imap_names_free(subs, n_subs);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

void imapd_cmd_status(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	if (name == NULL || c->n_args != 2 || c->args[1].type != IMAP_ARG_LIST) {
		imapd_bad(s, c->tag, "STATUS needs a mailbox and a list");
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [NONEXISTENT] Mailbox does not exist", c->tag);
		return;
	}
	struct imap_mbox mb;
	size_t recent = 0;
	memset(&mb, 0, sizeof(mb));
	mb.path = path;
	if (imap_mbox_scan(&mb, &recent, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	size_t unseen = 0;
	for (size_t i = 0; i < mb.n; i++)
		if (!(mb.msgs[i].flags & IMAP_FL_SEEN))
			unseen++;
	struct evbuffer *o = imapd_out(s);
	evbuffer_add_printf(o, "* STATUS ");
	imap_write_cstring(o, strcasecmp(name, "INBOX") == 0 ? "INBOX" : name);
	evbuffer_add_printf(o, " (");
	const struct imap_arg *l = &c->args[1];
	int bad = 0;
	for (size_t i = 0; i < l->n; i++) {
		const struct imap_arg *a = &l->list[i];
		if (i > 0)
			evbuffer_add(o, " ", 1);
		if (imap_arg_is_atom(a, "MESSAGES"))
			evbuffer_add_printf(o, "MESSAGES %zu", mb.n);
		else if (imap_arg_is_atom(a, "RECENT"))
			evbuffer_add_printf(o, "RECENT %zu", recent);
		else if (imap_arg_is_atom(a, "UIDNEXT"))
			evbuffer_add_printf(o, "UIDNEXT %u", mb.uidnext);
		else if (imap_arg_is_atom(a, "UIDVALIDITY"))
			evbuffer_add_printf(o, "UIDVALIDITY %u", mb.uidvalidity);
		else if (imap_arg_is_atom(a, "UNSEEN"))
			evbuffer_add_printf(o, "UNSEEN %zu", unseen);
		else
			bad = 1;
	}
	evbuffer_add(o, ")\r\n", 3);
	imap_mbox_msgs_free(mb.msgs, mb.n);
	if (bad)
		imapd_printf(s, "%s OK STATUS completed (unknown items ignored)", c->tag);
	else
		imapd_printf(s, "%s OK STATUS completed", c->tag);
}

void imapd_cmd_append(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	const char *name = imapd_arg_cstr(c, 0), *err;
	char path[4096];
	unsigned flags = 0;
	time_t idate = 0;
	size_t i = 1;
	if (name == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "APPEND needs a mailbox and a message");
		return;
	}
	if (i < c->n_args && c->args[i].type == IMAP_ARG_LIST) {
		if (imapd_flags_arg(&c->args[i], &flags) < 0) {
			imapd_bad(s, c->tag, "Invalid flags");
			return;
		}
		i++;
	}
	if (i + 1 < c->n_args && c->args[i].type == IMAP_ARG_STRING) {
		if (imap_datetime_parse(c->args[i].s, &idate) < 0) {
			imapd_bad(s, c->tag, "Invalid date-time");
			return;
		}
		i++;
	}
	if (i + 1 != c->n_args || c->args[i].type != IMAP_ARG_LITERAL) {
		imapd_bad(s, c->tag, "APPEND needs the message as a literal");
		return;
	}
	const struct imap_arg *m = &c->args[i];
	if (m->len == 0) {
		imapd_printf(s, "%s NO Empty message", c->tag);
		return;
	}
	if (m->len > s->d->ctx->cfg->message_size) {
		imapd_printf(s, "%s NO [TOOBIG] Message too large", c->tag);
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [TRYCREATE] Mailbox does not exist", c->tag);
		return;
	}
	uint32_t uv, nuid;
	if (imap_mbox_append(path, m->s, m->len, flags, idate, &uv, &nuid, &err) < 0) {
		imapd_printf(s, "%s NO %s", c->tag, err);
		return;
	}
	if (s->state == IMAPD_SELECTED && strcmp(path, s->mb.path) == 0)
		imapd_sync(s, 0);
	imapd_printf(s, "%s OK [APPENDUID %u %u] APPEND completed", c->tag, uv, nuid);
}

void imapd_cmd_close(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	if (strcmp(c->name, "CLOSE") == 0 && !s->readonly)
		for (size_t i = 0; i < s->mb.n; i++)
			if (s->mb.msgs[i].flags & IMAP_FL_DELETED)
				imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
	imapd_unselect(s);
	imapd_printf(s, "%s OK %s completed", c->tag, c->name);
}

void imapd_cmd_expunge(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	struct imap_seqset set = { NULL, 0 };
	if (s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (uid) {
		const char *spec = imapd_arg_cstr(c, 0);
		if (spec == NULL || c->n_args != 1 || imapd_set(s, spec, 1, &set) < 0) {
			imapd_bad(s, c->tag, "Invalid UID set");
			return;
		}
	}
	for (size_t i = 0; i < s->mb.n; i++)
		if ((s->mb.msgs[i].flags & IMAP_FL_DELETED) && (!uid || imapd_in_set(s, &set, i, 1)))
			imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
	imap_seqset_free(&set);
	imapd_sync(s, 1);
	imapd_printf(s, "%s OK %sEXPUNGE completed", c->tag, uid ? "UID " : "");
}

static void imapd_idle_changed(struct imapd_sess *s)
{
	if (!s->idling)
		return;
	imapd_sync(s, 1);
}

static void imapd_ino_cb(evutil_socket_t fd, short what, void *arg)
{
	struct imapd_sess *s = arg;
	char buf[4096];
	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	imapd_idle_changed(s);
}

static void imapd_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	imapd_idle_changed(arg);
}

void imapd_cmd_idle(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	(void)uid;
	s->idling = 1;
	memcpy(s->idle_tag, c->tag, sizeof(s->idle_tag));
	imapd_printf(s, "+ idling");
	if (s->state != IMAPD_SELECTED)
		return;
	imapd_sync(s, 1);
	s->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	char p[4200];
	int ok = s->ino_fd >= 0;
	uint32_t mask = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE;
	if (ok && (util_fmt(p, sizeof(p), "%s/new", s->mb.path) < 0 || inotify_add_watch(s->ino_fd, p, mask) < 0))
		ok = 0;
	if (ok && (util_fmt(p, sizeof(p), "%s/cur", s->mb.path) < 0 || inotify_add_watch(s->ino_fd, p, mask) < 0))
		ok = 0;
	if (ok) {
		s->ino_ev = event_new(s->d->base, s->ino_fd, EV_READ | EV_PERSIST, imapd_ino_cb, s);
		event_add(s->ino_ev, NULL);
	} else {
		/* no inotify (limit reached): poll every two seconds */
		if (s->ino_fd >= 0)
			close(s->ino_fd);
		s->ino_fd = -1;
		struct timeval tv = { 2, 0 };
		s->poll_ev = event_new(s->d->base, -1, EV_PERSIST, imapd_poll_cb, s);
		event_add(s->poll_ev, &tv);
	}
}
