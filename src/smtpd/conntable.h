/* conntable: connection counts shared by all smtpd workers, for the total
 * and per-IP limits. A shared anonymous mapping made by the master before it
 * forks; each worker writes only its own row of slots (no locks), and the
 * master clears a row when it restarts that worker, so a crashed worker
 * never leaks counts. */
#ifndef KALE_CONNTABLE_H
#define KALE_CONNTABLE_H

#include <stdint.h>

struct conntable;

enum conntable_result { CONNTABLE_OK = 0, CONNTABLE_TOTAL = 1, CONNTABLE_PER_IP = 2 };

struct conntable *conntable_create(int nworkers, int slots_per_worker);
void conntable_reset_worker(struct conntable *ct, int worker);
/* Counts the connection if the limits allow it; *slot_r gets its slot. */
enum conntable_result conntable_add(struct conntable *ct, int worker, const uint8_t ip[16],
    int per_ip_limit, int total_limit, int *slot_r);
void conntable_del(struct conntable *ct, int worker, int slot);

#endif
