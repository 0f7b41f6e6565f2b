/* conntable: lock-free shared connection table (see conntable.h). Created by
 * the master (one per service), used by the server processes through
 * lib/server.c. A used slot holds its owner's pid, so a process that
 * outlives the reset of its row (a reload drains the old generation while
 * the new one starts) cannot free a slot the new process took. */
#include "lib/conntable.h"

#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

struct conntable_slot {
	atomic_int used;               /* 0, or the owner's pid */
	uint8_t ip[16];
};

struct conntable {
	int nworkers;
	int cap;
	struct conntable_slot slot[];
};

struct conntable *conntable_create(int nworkers, int cap)
{
	size_t sz = sizeof(struct conntable) + (size_t)nworkers * (size_t)cap * sizeof(struct conntable_slot);
	struct conntable *ct = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (ct == MAP_FAILED)
		return NULL;
	ct->nworkers = nworkers;
	ct->cap = cap;
	return ct;
}

void conntable_free(struct conntable **ctp)
{
	struct conntable *ct = *ctp;

	if (ct == NULL)
		return;
	(void)munmap(ct, sizeof(struct conntable) +
	    (size_t)ct->nworkers * (size_t)ct->cap * sizeof(struct conntable_slot));
	*ctp = NULL;
}

void conntable_reset_worker(struct conntable *ct, int worker)
{
	if (ct == NULL || worker < 0 || worker >= ct->nworkers)
		return;
	for (int i = 0; i < ct->cap; i++)
		atomic_store(&ct->slot[worker * ct->cap + i].used, 0);
}

enum conntable_result conntable_add(struct conntable *ct, int worker, const uint8_t ip[16],
    int per_ip_limit, int total_limit, int *slot_r)
{
	int total = 0, same = 0, free_slot = -1;

	*slot_r = -1;
	if (ct == NULL)
		return CONNTABLE_OK;
	for (int i = 0; i < ct->nworkers * ct->cap; i++) {
		struct conntable_slot *s = &ct->slot[i];
		if (!atomic_load(&s->used)) {
			if (free_slot < 0 && i / ct->cap == worker)
				free_slot = i;
			continue;
		}
		total++;
		if (memcmp(s->ip, ip, 16) == 0)
			same++;
	}
	if (total >= total_limit || free_slot < 0)
		return CONNTABLE_TOTAL;
	if (same >= per_ip_limit)
		return CONNTABLE_PER_IP;
	memcpy(ct->slot[free_slot].ip, ip, 16);
	atomic_store(&ct->slot[free_slot].used, (int)getpid());
	*slot_r = free_slot;
	return CONNTABLE_OK;
}

void conntable_del(struct conntable *ct, int worker, int slot)
{
	int mine = (int)getpid();

	(void)worker;
	if (ct == NULL || slot < 0 || slot >= ct->nworkers * ct->cap)
		return;
	(void)atomic_compare_exchange_strong(&ct->slot[slot].used, &mine, 0);
}
