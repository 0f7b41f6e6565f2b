/* kaled: the master's side of the child contract: the entry points it calls,
 * one per role, after forking. The child's side (the context and the
 * listeners it is handed) is src/lib/proc.h, which is all a child includes. */
#ifndef KALE_KALED_H
#define KALE_KALED_H

#include "lib/proc.h"

/* The entry point of each kind of child (defined in its module). */
int smtpd_main(struct kale_ctx *ctx);
int qmgr_main(struct kale_ctx *ctx);
int pop3d_main(struct kale_ctx *ctx);
int imapd_main(struct kale_ctx *ctx);
int pickup_main(struct kale_ctx *ctx);   /* src/sendmail/pickup.c */

const char *kale_listen_kind_name(enum kale_listen_kind k);

#endif
