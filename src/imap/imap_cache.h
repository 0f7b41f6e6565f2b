/* imap_cache: a process-wide, byte-bounded LRU of parsed message structures
 * (the MIME tree plus the rendered ENVELOPE, BODY and BODYSTRUCTURE), keyed
 * by the message file's identity, so repeated FETCHes never parse a message
 * again. Run by imapd (one thread). */
#ifndef KALE_IMAP_CACHE_H
#define KALE_IMAP_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "mail/mime.h"

/* All entries together, and the largest single entry that is kept. */
#define IMAP_CACHE_MAX_BYTES (64u * 1024 * 1024)
#define IMAP_CACHE_MAX_ENTRY (16u * 1024 * 1024)

/* A message file: Maildir files never change once delivered, so device,
 * inode, size, mtime and the unique base name identify its contents. */
struct imap_cache_key {
	uint64_t dev, ino, fsize;
	int64_t mtime_ns;
	const char *base;
};

struct imap_cache_ent {
	/* key (base is owned) */
	uint64_t dev, ino, fsize;
	int64_t mtime_ns;
	char *base;
	/* value */
	int64_t crlf_size;        /* the message's size with CRLF line ends */
	struct mime_part *mime;   /* offsets are in the CRLF form */
	char *envelope, *body, *bodystructure;
	size_t envelope_len, body_len, bodystructure_len;
	/* bookkeeping */
	size_t cost;              /* bytes held, roughly */
	int refs;                 /* pinned while > 0: never evicted or freed */
	int cached;               /* in the table (else freed on the last release) */
	struct imap_cache_ent *hnext, *lru_prev, *lru_next;
};

struct imap_cache_stats {
	uint64_t hits, misses, inserts, evictions, too_big;
	size_t entries, bytes;
};

/* The entry for key, pinned, or NULL. */
struct imap_cache_ent *imap_cache_get(const struct imap_cache_key *key);
/* Takes e (key, value filled; cost computed here) and returns it pinned.
 * An entry larger than the entry limit is not kept: it lives until its
 * release. Older unpinned entries are evicted to stay under the budget. */
struct imap_cache_ent *imap_cache_put(struct imap_cache_ent *e);
/* Unpins; accepts NULL and sets *e to NULL. */
void imap_cache_release(struct imap_cache_ent **e);
/* Drops every unpinned entry. */
void imap_cache_clear(void);
/* Limits (0 leaves one unchanged); for tests. */
void imap_cache_set_limits(size_t max_bytes, size_t max_entry);
void imap_cache_get_stats(struct imap_cache_stats *st);

/* Bytes a MIME tree holds (nodes, strings, parameter arrays). */
size_t imap_cache_mime_cost(const struct mime_part *root);

#endif
