/* imapd_fetch: the FETCH command of the imapd process, written one message
 * at a time as the client reads, literal bodies streamed from the message
 * file. The pure parts are imap_fetch.c (output) and imap_cache.c (the
 * parsed-structure cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "imap/imap_cache.h"
#include "imap/imap_fetch.h"
#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imapd_int.h"
#include "lib/log.h"
#include "lib/util.h"

static int imapd_fetch_atts(const struct imap_arg *a, struct imap_fetch_att **atts_r, size_t *n_r, const char **err)
{
	struct imap_fetch_att *v = NULL;
	size_t n = 0;
	static const char *const fast[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE" };
	static const char *const all[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE" };
	static const char *const full[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY" };
	const char *const *macro = NULL;
	size_t mn = 0;
	const struct imap_arg *list = a;
	size_t ln = 1;
	if (a->type == IMAP_ARG_LIST) {
		list = a->list;
		ln = a->n;
	} else if (imap_arg_is_atom(a, "FAST")) {
		macro = fast;
		mn = 3;
	} else if (imap_arg_is_atom(a, "ALL")) {
		macro = all;
		mn = 4;
	} else if (imap_arg_is_atom(a, "FULL")) {
		macro = full;
		mn = 5;
	}
	size_t total = macro != NULL ? mn : ln;
	if (total == 0 || total > 100) {
		*err = "Invalid FETCH attribute list";
		return -1;
	}
	v = xcalloc(total, sizeof(*v));
	for (size_t i = 0; i < total; i++) {
		const char *atom = macro != NULL ? macro[i] : (list[i].type == IMAP_ARG_ATOM ? list[i].s : NULL);
		if (atom == NULL || imap_fetch_att_parse(atom, &v[n], err) < 0) {
			if (atom == NULL)
				*err = "Invalid FETCH attribute";
			for (size_t k = 0; k < n; k++)
				imap_fetch_att_free(&v[k]);
			xfree(&v);
			return -1;
		}
		n++;
	}
	*atts_r = v;
	*n_r = n;
	return 0;
}

/* A FETCH is written one message at a time as the client reads: literal
 * bodies are streamed from the file in IMAPD_STREAM_CHUNK pieces whenever
 * less than IMAPD_OUT_HIGH waits, so a session holds about that much output
 * whatever the message sizes. No other command is read until it is done, so
 * replies stay in order. */
struct imapd_fetch {
	char tag[IMAP_TAG_MAX + 1];
	int uid;
	struct imap_seqset set;
	struct imap_fetch_att *atts;
	size_t n_atts;
	size_t next;                 /* next message index to look at */
	/* the message being written */
	size_t idx;
	int in_msg;                  /* "* n FETCH (" written; attributes from att on */
	size_t att;
	int first, has_flags;
	int fd;                      /* its file, or -1 */
	struct stat sb;
	int conv;                    /* the file has bare LF: served as CRLF */
	struct imap_cache_ent *ent;  /* its parsed form, pinned while this message needs it */
	int streaming;
	struct imap_crlf_rd rd;      /* the literal being streamed */
};

static void imapd_fetch_msg_end(struct imapd_fetch *j)
{
	imap_cache_release(&j->ent);
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	j->in_msg = 0;
	j->streaming = 0;
}

void imapd_fetch_free(struct imapd_fetch **jp)
{
	struct imapd_fetch *j = *jp;
	if (j == NULL)
		return;
	imapd_fetch_msg_end(j);
	for (size_t k = 0; k < j->n_atts; k++)
		imap_fetch_att_free(&j->atts[k]);
	xfree(&j->atts);
	imap_seqset_free(&j->set);
	xfree(jp);
}

/* The parsed structure of the open message, from the cache or parsed now
 * (once, then cached); pinned in j->ent. NULL if the file cannot be read. */
static struct imap_cache_ent *imapd_fetch_ent(struct imapd_fetch *j, struct imap_msg *m)
{
	if (j->ent != NULL)
		return j->ent;
	struct imap_cache_key k = { (uint64_t)j->sb.st_dev, (uint64_t)j->sb.st_ino, (uint64_t)j->sb.st_size,
	    (int64_t)j->sb.st_mtim.tv_sec * 1000000000 + (int64_t)j->sb.st_mtim.tv_nsec, m->base };
	j->ent = imap_cache_get(&k);
	if (j->ent != NULL)
		return j->ent;
	struct imap_mbox_buf b;
	if (imap_mbox_read_range(j->fd, j->conv, 0, (size_t)m->size, &b) < 0)
		return NULL;
	struct imap_cache_ent *e = imap_fetch_parse(b.data, b.len);
	imap_mbox_buf_free(&b);
	if (e == NULL)
		return NULL;
	e->dev = k.dev;
	e->ino = k.ino;
	e->fsize = k.fsize;
	e->mtime_ns = k.mtime_ns;
	e->base = xstrdup(m->base);
	j->ent = imap_cache_put(e);
	return j->ent;
}

/* Does the attribute need the parsed structure (everything but whole-message
 * literals and per-file facts)? */
static int imapd_att_needs_ent(const struct imap_fetch_att *a)
{
	return a->kind == IMAP_F_ENVELOPE || a->kind == IMAP_F_BODYSTRUCTURE || a->kind == IMAP_F_BODY ||
	    (a->kind == IMAP_F_SECTION && (a->n_part > 0 || a->sect != IMAP_S_ALL));
}

/* Something went wrong after part of the reply was written (the file
 * changed under us): the literal cannot be completed, so the session ends. */
static void imapd_fetch_fail(struct imapd_sess *s, const char *why)
{
	log_event(LOG_LVL_WARN, "imap.fetch_failed", "client", s->ip, "user", s->user, "reason", why, NULL);
	imapd_close(s);
}

/* Starts message idx: opens its file if an attribute needs it, sets \Seen,
 * writes "* n FETCH (". A message whose file is gone gets a short reply. */
static void imapd_fetch_begin(struct imapd_sess *s, struct imapd_fetch *j, size_t idx)
{
	struct imap_msg *m = &s->mb.msgs[idx];
	struct evbuffer *o = imapd_out(s);
	int need_file = 0, need_ent = 0, set_seen = 0, has_uid = 0;
	j->has_flags = 0;
	for (size_t i = 0; i < j->n_atts; i++) {
		const struct imap_fetch_att *a = &j->atts[i];
		if (a->kind == IMAP_F_SECTION || a->kind == IMAP_F_ENVELOPE || a->kind == IMAP_F_BODYSTRUCTURE ||
		    a->kind == IMAP_F_BODY || (a->kind == IMAP_F_SIZE && m->size < 0))
			need_file = 1;
		if (imapd_att_needs_ent(a))
			need_ent = 1;
		if (a->kind == IMAP_F_SECTION && !a->peek)
			set_seen = 1;
		if (a->kind == IMAP_F_UID)
			has_uid = 1;
		if (a->kind == IMAP_F_FLAGS)
			j->has_flags = 1;
	}
	j->idx = idx;
	if (need_file) {
		const char *err = NULL;
		int64_t size = m->size;
		j->fd = imap_mbox_open(&s->mb, m, &j->sb, &err);
		if (j->fd >= 0 && size < 0 && imap_mbox_crlf_size(j->fd, (uint64_t)j->sb.st_size, &size) < 0)
			size = -1;
		if (j->fd >= 0 && size >= 0) {
			m->size = size;
			j->conv = (uint64_t)size != (uint64_t)j->sb.st_size;
		}
		if (j->fd < 0 || size < 0 || (need_ent && imapd_fetch_ent(j, m) == NULL)) {
			/* the file vanished under us: report what we know */
			imapd_fetch_msg_end(j);
			evbuffer_add_printf(o, "* %zu FETCH (UID %u FLAGS ", idx + 1, m->uid);
			imapd_write_flags(o, m->flags);
			evbuffer_add(o, ")\r\n", 3);
			return;
		}
	}
	if (set_seen && !s->readonly && !(m->flags & IMAP_FL_SEEN)) {
		if (imap_mbox_set_flags(&s->mb, m, (m->flags | IMAP_FL_SEEN) & IMAP_FL_STORED) == 0 && !j->has_flags)
			j->has_flags = 2;  /* add FLAGS to the response */
	}
	evbuffer_add_printf(o, "* %zu FETCH (", idx + 1);
	j->first = 1;
	if (j->uid && !has_uid) {
		evbuffer_add_printf(o, "UID %u", m->uid);
		j->first = 0;
	}
	j->in_msg = 1;
	j->att = 0;
}

/* Writes the message's attributes from j->att on; returns early when one
 * starts a streamed literal, else ends the message. */
static void imapd_fetch_items(struct imapd_sess *s, struct imapd_fetch *j)
{
	struct imap_msg *m = &s->mb.msgs[j->idx];
	struct evbuffer *o = imapd_out(s);
	while (j->att < j->n_atts) {
		const struct imap_fetch_att *a = &j->atts[j->att++];
		if (!j->first)
			evbuffer_add(o, " ", 1);
		j->first = 0;
		struct imap_cache_ent *e = NULL;
		if (imapd_att_needs_ent(a)) {
			e = imapd_fetch_ent(j, m);
			if (e == NULL) {
				imapd_fetch_fail(s, "message file changed");
				return;
			}
		}
		switch (a->kind) {
		case IMAP_F_FLAGS:
			evbuffer_add(o, "FLAGS ", 6);
			imapd_write_flags(o, m->flags);
			break;
		case IMAP_F_UID:
			evbuffer_add_printf(o, "UID %u", m->uid);
			break;
		case IMAP_F_MODSEQ:
			evbuffer_add_printf(o, "MODSEQ (1)");
			break;
		case IMAP_F_INTERNALDATE: {
			char buf[32];
			imap_datetime_format(imap_mbox_idate(&s->mb, m), buf);
			evbuffer_add_printf(o, "INTERNALDATE \"%s\"", buf);
			break;
		}
		case IMAP_F_SIZE:
			evbuffer_add_printf(o, "RFC822.SIZE %lld", (long long)(m->size >= 0 ? m->size : 0));
			break;
		case IMAP_F_ENVELOPE:
			evbuffer_add(o, "ENVELOPE ", 9);
			evbuffer_add(o, e->envelope, e->envelope_len);
			break;
		case IMAP_F_BODYSTRUCTURE:
			evbuffer_add(o, "BODYSTRUCTURE ", 14);
			evbuffer_add(o, e->bodystructure, e->bodystructure_len);
			break;
		case IMAP_F_BODY:
			evbuffer_add(o, "BODY ", 5);
			evbuffer_add(o, e->body, e->body_len);
			break;
		case IMAP_F_SECTION: {
			size_t off = 0, len = (size_t)m->size;
			int r = e != NULL ? imap_section_range(e->mime, (size_t)m->size, a, &off, &len) : 0;
			char *owned = NULL;
			if (r == 2) {
				struct imap_mbox_buf b;
				if (imap_mbox_read_range(j->fd, j->conv, off, len, &b) < 0) {
					imapd_fetch_fail(s, "message file changed");
					return;
				}
				owned = imap_section_fields(b.data, b.len, a, &len);
				imap_mbox_buf_free(&b);
				off = 0;
			} else if (r != 0) {
				len = 0;
			}
			if (a->partial) {
				if (a->p_off >= len) {
					len = 0;
				} else {
					off += a->p_off;
					len -= a->p_off;
					if (len > a->p_len)
						len = a->p_len;
				}
			}
			evbuffer_add_printf(o, "%s {%zu}\r\n", a->name, len);
			if (owned != NULL) {
				evbuffer_add(o, owned + off, len);
				xfree(&owned);
			} else if (len > 0) {
				/* the bytes come from the file as the client reads */
				imap_crlf_rd_init(&j->rd, j->fd, j->conv, off, len);
				j->streaming = 1;
				/* the entry stays pinned across the stream only if a later
				 * item needs it (one parse per message per FETCH) */
				int later = 0;
				for (size_t k = j->att; k < j->n_atts; k++)
					later |= imapd_att_needs_ent(&j->atts[k]);
				if (!later)
					imap_cache_release(&j->ent);
				return;
			}
			break;
		}
		}
	}
	if (j->has_flags == 2) {
		if (!j->first)
			evbuffer_add(o, " ", 1);
		evbuffer_add(o, "FLAGS ", 6);
		imapd_write_flags(o, m->flags);
	}
	evbuffer_add(o, ")\r\n", 3);
	imapd_fetch_msg_end(j);
}

/* Writes the FETCH on while less than IMAPD_OUT_HIGH waits. 1 when it is
 * complete (the tagged reply is written and s->fetch freed). */
int imapd_fetch_pump(struct imapd_sess *s)
{
	struct imapd_fetch *j = s->fetch;
	struct evbuffer *o = imapd_out(s);
	while (!s->closing && evbuffer_get_length(o) < IMAPD_OUT_HIGH) {
		if (j->streaming) {
			struct evbuffer_iovec v;
			if (evbuffer_reserve_space(o, IMAPD_STREAM_CHUNK, &v, 1) < 1) {
				imapd_fetch_fail(s, "out of memory");
				break;
			}
			size_t cap = v.iov_len < IMAPD_STREAM_CHUNK ? v.iov_len : IMAPD_STREAM_CHUNK;
			ssize_t r = imap_crlf_rd_next(&j->rd, v.iov_base, cap);
			if (r <= 0) {
				imapd_fetch_fail(s, "message file changed");
				break;
			}
			v.iov_len = (size_t)r;
			evbuffer_commit_space(o, &v, 1);
			if (j->rd.left == 0)
				j->streaming = 0;
			continue;
		}
		if (j->in_msg) {
			imapd_fetch_items(s, j);
			continue;
		}
		size_t i = j->next;
		while (i < s->mb.n && !imapd_in_set(s, &j->set, i, j->uid))
			i++;
		if (i >= s->mb.n) {
			imapd_printf(s, "%s OK %sFETCH completed", j->tag, j->uid ? "UID " : "");
			imapd_fetch_free(&s->fetch);
			return 1;
		}
		j->next = i + 1;
		imapd_fetch_begin(s, j, i);
	}
	return 0;
}

void imapd_cmd_fetch(struct imapd_sess *s, struct imap_cmd *c, int uid)
{
	const char *spec = imapd_arg_cstr(c, 0), *err = NULL;
	struct imap_seqset set;
	struct imap_fetch_att *atts = NULL;
	size_t n_atts = 0;
	if (spec == NULL || c->n_args < 2) {
		imapd_bad(s, c->tag, "FETCH needs a set and attributes");
		return;
	}
	if (c->n_args > 2) {
		/* CHANGEDSINCE etc. need CONDSTORE, which kale does not offer */
		imapd_bad(s, c->tag, "FETCH modifiers are not supported");
		return;
	}
	if (imapd_set(s, spec, uid, &set) < 0) {
		imapd_bad(s, c->tag, "Invalid message set");
		return;
	}
	if (!uid && set.n > 0 && set.r[set.n - 1].hi > s->mb.n) {
		imap_seqset_free(&set);
		imapd_bad(s, c->tag, "Message sequence number out of range");
		return;
	}
	if (imapd_fetch_atts(&c->args[1], &atts, &n_atts, &err) < 0) {
		imap_seqset_free(&set);
		imapd_bad(s, c->tag, err);
		return;
	}
	struct imapd_fetch *j = xcalloc(1, sizeof(*j));
	util_fmt(j->tag, sizeof(j->tag), "%s", c->tag);
	j->uid = uid;
	j->set = set;
	j->atts = atts;
	j->n_atts = n_atts;
	j->fd = -1;
	s->fetch = j;
	if (imapd_fetch_pump(s) || s->closing)
		return;
	/* more to write: no command is read until the FETCH is done; the write
	 * callback runs again when the output is down to IMAPD_OUT_LOW */
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_setwatermark(s->bev, EV_WRITE, IMAPD_OUT_LOW, 0);
}
