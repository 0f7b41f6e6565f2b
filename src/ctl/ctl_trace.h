/* ctl_trace: what `kalectl trace` makes of the mail-log rows of one message
 * (pure functions, no I/O, so the unit tests can call them): one step per
 * row, and the verdict, the reply and the outcome from all of them. Runs
 * only in kalectl. */
#ifndef KALE_CTL_TRACE_H
#define KALE_CTL_TRACE_H

#include <stdint.h>

#include "store/store.h"

/* One decision, from one mail-log row. */
struct ctl_trace_step {
	int64_t ts;
	char phase[16];      /* connect helo mail rcpt data queue delivery outcome */
	char check[24];      /* the check's name, or connect rcpt smtp data queued delivery admin */
	char result[16];     /* pass fail temperror none, or for admin/outcome rows a state */
	char action[24];     /* the mail log's action (connect checked rcpt rejected accepted ...) */
	char rcpt[320];      /* "" if none */
	char code[32];       /* SMTP code "550 5.1.1", "" if none */
	char reason[1100];   /* why, "" for a plain pass */
};

/* The step of row r (r->action may be NULL). */
void ctl_trace_step_of(const struct store_log_row *r, struct ctl_trace_step *st);

/* The end of a trace from its n steps (oldest first): the verdict (accept,
 * reject, tempfail), the reply a session got and a last step "outcome"
 * (result delivered, bounced, expired, deleted, held, pending, mixed or
 * rejected; reason: how many recipients ended how). */
struct ctl_trace_end {
	const char *verdict;
	char reply[1200];
	struct ctl_trace_step outcome;
};
void ctl_trace_end_of(const char *qid, const struct ctl_trace_step *steps, int n,
    struct ctl_trace_end *e);

#endif
