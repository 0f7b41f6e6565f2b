/* imap_cache: the process-wide LRU of parsed message structures that imapd
 * keeps so BODYSTRUCTURE, BODY, ENVELOPE and section fetches parse a message
 * once, not once per FETCH. Bounded in bytes; pinned entries (in use by a
 * FETCH being written) are never evicted. Run by imapd (one thread). */
#include "imap/imap_cache.h"

#include <string.h>

#include "lib/util.h"

#define IMAP_CACHE_BUCKETS 1024

static struct imap_cache_ent *imap_cache_tab[IMAP_CACHE_BUCKETS];
static struct imap_cache_ent *imap_cache_head, *imap_cache_tail;  /* most recent first */
static size_t imap_cache_max_bytes = IMAP_CACHE_MAX_BYTES;
static size_t imap_cache_max_entry = IMAP_CACHE_MAX_ENTRY;
static struct imap_cache_stats imap_cache_st;

static size_t imap_cache_hash(uint64_t dev, uint64_t ino, uint64_t fsize)
{
	uint64_t h = ino * 0x9e3779b97f4a7c15ULL ^ dev * 0xc2b2ae3d27d4eb4fULL ^ fsize;
	h ^= h >> 29;
	return (size_t)(h % IMAP_CACHE_BUCKETS);
}

static size_t imap_cache_str_cost(const char *s)
{
	return s != NULL ? strlen(s) + 1 : 0;
}

static size_t imap_cache_params_cost(const struct mime_param *p, size_t n)
{
	size_t c = n * sizeof(*p);
	for (size_t i = 0; i < n; i++)
		c += imap_cache_str_cost(p[i].name) + imap_cache_str_cost(p[i].value);
	return c;
}

size_t imap_cache_mime_cost(const struct mime_part *root)
{
	size_t c = 0;
	const struct mime_part *p = root;
	/* depth-first without recursion: children, then siblings, then up */
	while (p != NULL) {
		c += sizeof(*p) + imap_cache_str_cost(p->type) + imap_cache_str_cost(p->subtype) +
		    imap_cache_str_cost(p->id) + imap_cache_str_cost(p->description) +
		    imap_cache_str_cost(p->encoding) + imap_cache_str_cost(p->md5) +
		    imap_cache_str_cost(p->language) + imap_cache_str_cost(p->location) +
		    imap_cache_str_cost(p->disposition) + imap_cache_params_cost(p->params, p->n_params) +
		    imap_cache_params_cost(p->disp_params, p->n_disp_params);
		if (p->children != NULL) {
			p = p->children;
			continue;
		}
		while (p != NULL && p != root && p->next == NULL)
			p = p->parent;
		if (p == NULL || p == root)
			break;
		p = p->next;
	}
	return c;
}

static void imap_cache_ent_free(struct imap_cache_ent *e)
{
	mime_free(&e->mime);
	xfree(&e->envelope);
	xfree(&e->body);
	xfree(&e->bodystructure);
	xfree(&e->base);
	xfree(&e);
}

static void imap_cache_unlink(struct imap_cache_ent *e)
{
	struct imap_cache_ent **pp = &imap_cache_tab[imap_cache_hash(e->dev, e->ino, e->fsize)];
	while (*pp != NULL && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp == e)
		*pp = e->hnext;
	e->hnext = NULL;
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	else
		imap_cache_head = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else
		imap_cache_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
	e->cached = 0;
	imap_cache_st.entries--;
	imap_cache_st.bytes -= e->cost;
}

static void imap_cache_to_front(struct imap_cache_ent *e)
{
	if (imap_cache_head == e)
		return;
	/* out of the list ... */
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else if (e->lru_prev != NULL)
		imap_cache_tail = e->lru_prev;
	/* ... and in at the head */
	e->lru_prev = NULL;
	e->lru_next = imap_cache_head;
	if (imap_cache_head != NULL)
		imap_cache_head->lru_prev = e;
	imap_cache_head = e;
	if (imap_cache_tail == NULL)
		imap_cache_tail = e;
}

/* Evicts unpinned entries, oldest first, until need more bytes fit. */
static void imap_cache_make_room(size_t need)
{
	struct imap_cache_ent *e = imap_cache_tail;
	while (e != NULL && imap_cache_st.bytes + need > imap_cache_max_bytes) {
		struct imap_cache_ent *prev = e->lru_prev;
		if (e->refs == 0) {
			imap_cache_unlink(e);
			imap_cache_ent_free(e);
			imap_cache_st.evictions++;
		}
		e = prev;
	}
}

struct imap_cache_ent *imap_cache_get(const struct imap_cache_key *k)
{
	struct imap_cache_ent *e = imap_cache_tab[imap_cache_hash(k->dev, k->ino, k->fsize)];
	for (; e != NULL; e = e->hnext)
		if (e->dev == k->dev && e->ino == k->ino && e->fsize == k->fsize && e->mtime_ns == k->mtime_ns &&
		    strcmp(e->base, k->base) == 0)
			break;
	if (e == NULL) {
		imap_cache_st.misses++;
		return NULL;
	}
	imap_cache_st.hits++;
	imap_cache_to_front(e);
	e->refs++;
	return e;
}

struct imap_cache_ent *imap_cache_put(struct imap_cache_ent *e)
{
	e->cost = sizeof(*e) + imap_cache_str_cost(e->base) + imap_cache_mime_cost(e->mime) +
	    e->envelope_len + e->body_len + e->bodystructure_len;
	e->refs = 1;
	e->cached = 0;
	e->hnext = e->lru_prev = e->lru_next = NULL;
	if (e->cost > imap_cache_max_entry || e->cost > imap_cache_max_bytes) {
		imap_cache_st.too_big++;
		return e;
	}
	/* an older entry with the same key (cannot happen in imapd, which looks
	 * before it parses) goes first */
	struct imap_cache_key k = { e->dev, e->ino, e->fsize, e->mtime_ns, e->base };
	struct imap_cache_ent *old = imap_cache_get(&k);
	if (old != NULL) {
		imap_cache_st.hits--;
		imap_cache_unlink(old);
		if (--old->refs == 0)
			imap_cache_ent_free(old);
	}
	imap_cache_make_room(e->cost);
	size_t h = imap_cache_hash(e->dev, e->ino, e->fsize);
	e->hnext = imap_cache_tab[h];
	imap_cache_tab[h] = e;
	e->lru_next = imap_cache_head;
	if (imap_cache_head != NULL)
		imap_cache_head->lru_prev = e;
	imap_cache_head = e;
	if (imap_cache_tail == NULL)
		imap_cache_tail = e;
	e->cached = 1;
	imap_cache_st.entries++;
	imap_cache_st.bytes += e->cost;
	imap_cache_st.inserts++;
	return e;
}

void imap_cache_release(struct imap_cache_ent **ep)
{
	struct imap_cache_ent *e = *ep;
	if (e == NULL)
		return;
	*ep = NULL;
	if (--e->refs > 0)
		return;
	if (!e->cached)
		imap_cache_ent_free(e);
	else if (imap_cache_st.bytes > imap_cache_max_bytes)
		imap_cache_make_room(0);   /* pins may have held the cache over budget */
}

void imap_cache_clear(void)
{
	struct imap_cache_ent *e = imap_cache_head;
	while (e != NULL) {
		struct imap_cache_ent *next = e->lru_next;
		if (e->refs == 0) {
			imap_cache_unlink(e);
			imap_cache_ent_free(e);
		}
		e = next;
	}
}

void imap_cache_set_limits(size_t max_bytes, size_t max_entry)
{
	if (max_bytes > 0)
		imap_cache_max_bytes = max_bytes;
	if (max_entry > 0)
		imap_cache_max_entry = max_entry;
	imap_cache_make_room(0);
}

void imap_cache_get_stats(struct imap_cache_stats *st)
{
	*st = imap_cache_st;
}
