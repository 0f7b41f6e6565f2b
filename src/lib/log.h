/* log: one logfmt line per event on stderr (and syslog when enabled).
 * Used by every kale process; no mail knowledge. */
#ifndef KALE_LOG_H
#define KALE_LOG_H

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(const char *proc, int use_syslog);
void log_set_proc(const char *proc);
void log_reopen(void);
/* Events below this level are dropped (default LOG_LVL_INFO). */
void log_set_level(enum log_level min);
/* log_event(LOG_LVL_INFO, "smtp.accept", "qid", qid, "client", ip, NULL):
 * key/value string pairs, terminated by NULL. NULL values are skipped. */
void log_event(enum log_level lvl, const char *event, ...)
    __attribute__((sentinel));

#endif
