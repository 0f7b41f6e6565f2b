/* imapd_store: the imapd commands that change messages of the selected
 * folder: STORE (flags), COPY and MOVE (with UIDPLUS COPYUID). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imapd_int.h"
#include "lib/util.h"

void imapd_cmd_store(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0);
	const char *what = imapd_arg_cstr(c, 1);
	struct imap_seqset set;
	unsigned flags;
	if (spec == NULL || what == NULL || c->n_args != 3) {
		imapd_bad(s, c->tag, "STORE needs a set, an item and flags");
		return;
	}
	if (s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	int mode;  /* 0 set, 1 add, -1 remove */
	const char *w = what;
	if (*w == '+') {
		mode = 1;
		w++;
	} else if (*w == '-') {
		mode = -1;
		w++;
	} else {
		mode = 0;
	}
	int silent;
	if (strcasecmp(w, "FLAGS") == 0)
		silent = 0;
	else if (strcasecmp(w, "FLAGS.SILENT") == 0)
		silent = 1;
	else {
		imapd_bad(s, c->tag, "Invalid STORE item");
		return;
	}
	if (imapd_flags_arg(&c->args[2], &flags) < 0) {
		imapd_bad(s, c->tag, "Invalid flags");
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	int failed = 0;
	struct evbuffer *o = imapd_out(s);
	for (size_t i = 0; i < s->mb.n; i++) {
		if (!imapd_in_set(s, &set, i, uid))
			continue;
		struct imap_msg *m = &s->mb.msgs[i];
		unsigned nf = m->flags & IMAP_FL_STORED;
		if (mode == 0)
			nf = flags;
		else if (mode > 0)
			nf |= flags;
		else
			nf &= ~flags;
		if (imap_mbox_set_flags(&s->mb, m, nf) < 0)
			failed = 1;
		if (!silent || uid) {
			evbuffer_add_printf(o, "* %zu FETCH (", i + 1);
			if (uid)
				evbuffer_add_printf(o, "UID %u ", m->uid);
			evbuffer_add(o, "FLAGS ", 6);
			imapd_write_flags(o, m->flags);
			evbuffer_add(o, ")\r\n", 3);
		}
	}
	imap_seqset_free(&set);
	if (failed)
		imapd_printf(s, "%s NO Some messages could not be changed", c->tag);
	else
		imapd_printf(s, "%s OK %sSTORE completed", c->tag, uid ? "UID " : "");
}

/* Appends "a:b" runs of uids to buf. */
static void imapd_uidset_add(struct evbuffer *b, uint32_t *prev_lo, uint32_t *prev_hi, uint32_t v, int flush)
{
	if (!flush && *prev_hi != 0 && v == *prev_hi + 1) {
		*prev_hi = v;
		return;
	}
	if (*prev_lo != 0) {
		if (evbuffer_get_length(b) > 0)
			evbuffer_add(b, ",", 1);
		if (*prev_lo == *prev_hi)
			evbuffer_add_printf(b, "%u", *prev_lo);
		else
			evbuffer_add_printf(b, "%u:%u", *prev_lo, *prev_hi);
	}
	*prev_lo = *prev_hi = v;
}

void imapd_cmd_copy(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0), *name = imapd_arg_cstr(c, 1), *err = NULL;
	char path[4096];
	struct imap_seqset set;
	int move = strcmp(c->name, "MOVE") == 0;
	if (spec == NULL || name == NULL || c->n_args != 2) {
		imapd_bad(s, c->tag, "Needs a set and a mailbox");
		return;
	}
	if (move && s->readonly) {
		imapd_printf(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (imapd_folder(s, name, path, sizeof(path)) < 0 || !imap_folder_exists(path)) {
		imapd_printf(s, "%s NO [TRYCREATE] Mailbox does not exist", c->tag);
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
	uint32_t sl = 0, sh = 0, dl = 0, dh = 0, uv = 0;
	int failed = 0, any = 0;
	if (strcmp(path, s->mb.path) == 0 && move) {
		/* moving into the same folder changes nothing */
		imap_seqset_free(&set);
		evbuffer_free(src);
		evbuffer_free(dst);
		imapd_printf(s, "%s OK MOVE completed", c->tag);
		return;
	}
	for (size_t i = 0; i < s->mb.n && !failed; i++) {
		if (!imapd_in_set(s, &set, i, uid))
			continue;
		uint32_t nuid;
		if (imap_mbox_copy(&s->mb, &s->mb.msgs[i], path, &uv, &nuid, &err) < 0) {
			failed = 1;
			break;
		}
		any = 1;
		imapd_uidset_add(src, &sl, &sh, s->mb.msgs[i].uid, 0);
		imapd_uidset_add(dst, &dl, &dh, nuid, 0);
	}
	imapd_uidset_add(src, &sl, &sh, 0, 1);
	imapd_uidset_add(dst, &dl, &dh, 0, 1);
	char code[1024] = "";
	if (any && evbuffer_get_length(src) < 400 && evbuffer_get_length(dst) < 400) {
		char a[512], b[512];
		size_t al = evbuffer_remove(src, a, sizeof(a) - 1), bl = evbuffer_remove(dst, b, sizeof(b) - 1);
		a[al] = '\0';
		b[bl] = '\0';
		if (util_fmt(code, sizeof(code), "[COPYUID %u %s %s] ", uv, a, b) < 0)
			code[0] = '\0';
	}
	evbuffer_free(src);
	evbuffer_free(dst);
	if (failed) {
		imap_seqset_free(&set);
		imapd_printf(s, "%s NO %s", c->tag, err != NULL ? err : "copy failed");
		return;
	}
	if (move) {
		if (code[0] != '\0')
			imapd_printf(s, "* OK %s", code);
		for (size_t i = 0; i < s->mb.n; i++)
			if (imapd_in_set(s, &set, i, uid))
				imap_mbox_unlink(&s->mb, &s->mb.msgs[i]);
		imapd_sync(s, 1);
		imapd_printf(s, "%s OK MOVE completed", c->tag);
	} else {
		imapd_printf(s, "%s OK %sCOPY completed", c->tag, code);
	}
	imap_seqset_free(&set);
}
