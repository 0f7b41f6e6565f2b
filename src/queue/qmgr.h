/* qmgr: the queue manager (src/queue/qmgr.c). Only what other modules and
 * the unit tests need; qmgr_main() itself is declared in master/kaled.h. */
#ifndef KALE_QMGR_H
#define KALE_QMGR_H

#include <stdint.h>

struct kale_config;

/* Seconds to wait before attempt number attempts + 1, from [queue] retry
 * (the last value repeats; 300 when the list is empty). */
int64_t qmgr_retry_delay(const struct kale_config *cfg, int attempts);

/* The control socket qmgr listens on, relative to data_dir. */
#define QMGR_SOCK "qmgr.sock"

struct store;
/* kalectl with the daemon stopped: runs a queue control command ("hold QID",
 * "release QID", "delete QID", "bounce QID", "flush [QID]") directly on the
 * spool; cwd must be data_dir. 0 ok, -1 refused; *reply_r (malloc'd) says
 * what happened. */
int qmgr_offline(const struct kale_config *cfg, struct store *st, const char *cmd, char **reply_r);

#endif
