/* conntable: connection counts for the total and per-IP limits, shared by
 * the processes of one service (every smtpd worker; pop3d; imapd). A shared
 * anonymous mapping made by the master before it forks, one row of slots
 * per process; each process writes only its own row (no locks), and the
 * master clears a row when it restarts that process, so a crashed process
 * never leaks counts. No mail knowledge. */
#ifndef KALE_CONNTABLE_H
#define KALE_CONNTABLE_H

#include <stdint.h>

struct conntable;

enum conntable_result { CONNTABLE_OK = 0, CONNTABLE_TOTAL = 1, CONNTABLE_PER_IP = 2 };

/* nworkers rows of slots_per_worker slots; NULL if the mapping fails. */
struct conntable *conntable_create(int nworkers, int slots_per_worker);
/* Unmaps the table (a process's private one); NULL-safe, nulls the pointer. */
void conntable_free(struct conntable **ctp);
void conntable_reset_worker(struct conntable *ct, int worker);
/* Counts the connection if the limits allow it; *slot_r gets its slot.
 * A NULL table counts nothing and allows everything. */
enum conntable_result conntable_add(struct conntable *ct, int worker, const uint8_t ip[16],
    int per_ip_limit, int total_limit, int *slot_r);
/* Frees a slot this process took (a slot cleared and reused since, by a
 * restarted process of the same row, is left alone). */
void conntable_del(struct conntable *ct, int worker, int slot);

#endif
