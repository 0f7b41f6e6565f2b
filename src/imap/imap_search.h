/* imap_search: the IMAP SEARCH program (RFC 3501 6.4.4) as a pure module.
 * imap_search_parse() turns the tokenized arguments of SEARCH into a tree;
 * imap_search_match() evaluates it on one message, reading what it needs
 * through the accessors of struct imap_search_msg. Used by imapd. */
#ifndef KALE_IMAP_SEARCH_H
#define KALE_IMAP_SEARCH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "imap/imap_parse.h"

/* A parsed program (the root of the key tree: the AND of the top-level keys). */
struct imap_search_key;

enum imap_search_result {
	IMAP_SEARCH_OK = 0,
	IMAP_SEARCH_BAD = -1,          /* syntax: tagged BAD with *error_r */
	IMAP_SEARCH_BADCHARSET = -2,   /* CHARSET other than US-ASCII / UTF-8: NO [BADCHARSET] */
};

/* Parses the arguments of SEARCH (after "SEARCH"; a leading "CHARSET x" is
 * checked here). star_seq / star_uid are the values of '*' in sequence sets
 * and in UID sets. IMAP_SEARCH_OK with *prog_r, else a result above with
 * *error_r (static text) and nothing allocated. */
int imap_search_parse(const struct imap_arg *args, size_t n_args, uint32_t star_seq, uint32_t star_uid,
    struct imap_search_key **prog_r, const char **error_r);
void imap_search_free(struct imap_search_key **prog);

/* One message as the matcher sees it. The accessors are called only when a
 * key needs them; each returns -1 when the message cannot be read, and then
 * the key does not match. */
struct imap_search_msg {
	uint32_t seq;                  /* sequence number */
	uint32_t uid;
	unsigned flags;                /* IMAP_FL_* (imap_mbox.h), \Recent included */
	void *arg;                     /* passed to the accessors */
	/* RFC822.SIZE */
	int (*size)(void *arg, uint64_t *size_r);
	/* INTERNALDATE */
	time_t (*idate)(void *arg);
	/* the whole message (CRLF lines) and where its top-level body starts */
	int (*text)(void *arg, const char **data_r, size_t *len_r, size_t *body_off_r);
};

/* 1 if the message matches the program, else 0. */
int imap_search_match(const struct imap_search_key *prog, const struct imap_search_msg *m);

#endif
