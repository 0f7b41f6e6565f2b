/* imapd_search: the SEARCH command of the imapd process: parses the
 * program with imap_search.c and runs it on each message of the selected
 * folder, loading a message's file only when a key needs it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imap_search.h"
#include "imap/imapd_int.h"
#include "lib/util.h"
#include "mail/mime.h"

struct imapd_msgdata {
	char *data;
	size_t len;
	struct mime_part *mime;
	int loaded;
};

static int imapd_load(struct imapd_sess *s, struct imap_msg *m, struct imapd_msgdata *md, int need_mime)
{
	const char *err;
	if (!md->loaded) {
		if (imap_mbox_read(&s->mb, m, &md->data, &md->len, &err) < 0)
			return -1;
		md->loaded = 1;
	}
	if (need_mime && md->mime == NULL)
		md->mime = mime_parse(md->data, md->len, NULL, NULL);
	return need_mime && md->mime == NULL ? -1 : 0;
}

static void imapd_msgdata_free(struct imapd_msgdata *md)
{
	xfree(&md->data);
	mime_free(&md->mime);
	md->loaded = 0;
	md->len = 0;
}

/* One message of the selected folder for imap_search_match(): its file is
 * read (and parsed) at most once, when a key first needs it. */
struct imapd_search_msg {
	struct imapd_sess *s;
	struct imap_msg *m;
	struct imapd_msgdata md;
};

static int imapd_search_size(void *arg, uint64_t *size_r)
{
	struct imapd_search_msg *sm = arg;
	if (sm->m->size < 0 && imapd_load(sm->s, sm->m, &sm->md, 0) < 0)
		return -1;
	*size_r = (uint64_t)sm->m->size;
	return 0;
}

static time_t imapd_search_idate(void *arg)
{
	struct imapd_search_msg *sm = arg;
	return imap_mbox_idate(&sm->s->mb, sm->m);
}

static int imapd_search_text(void *arg, const char **data_r, size_t *len_r, size_t *body_off_r)
{
	struct imapd_search_msg *sm = arg;
	if (imapd_load(sm->s, sm->m, &sm->md, 1) < 0)
		return -1;
	*data_r = sm->md.data;
	*len_r = sm->md.len;
	*body_off_r = sm->md.mime->body_off;
	return 0;
}

void imapd_cmd_search(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	struct imap_search_key *prog;
	const char *err;
	int r = imap_search_parse(c->args, c->n_args, imapd_star(s, 0), imapd_star(s, 1), &prog, &err);
	if (r == IMAP_SEARCH_BADCHARSET) {
		imapd_printf(s, "%s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset", c->tag);
		return;
	}
	if (r != IMAP_SEARCH_OK) {
		imapd_bad(s, c->tag, err);
		return;
	}
	struct evbuffer *o = imapd_out(s);
	evbuffer_add_printf(o, "* SEARCH");
	for (size_t i = 0; i < s->mb.n; i++) {
		struct imapd_search_msg sm = { s, &s->mb.msgs[i], { NULL, 0, NULL, 0 } };
		struct imap_search_msg q = { (uint32_t)(i + 1), s->mb.msgs[i].uid, s->mb.msgs[i].flags, &sm,
		    imapd_search_size, imapd_search_idate, imapd_search_text };
		if (imap_search_match(prog, &q))
			evbuffer_add_printf(o, " %u", uid ? s->mb.msgs[i].uid : (unsigned)(i + 1));
		imapd_msgdata_free(&sm.md);
	}
	evbuffer_add(o, "\r\n", 2);
	imap_search_free(&prog);
	imapd_printf(s, "%s OK %sSEARCH completed", c->tag, uid ? "UID " : "");
}
