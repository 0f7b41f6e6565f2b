/* brake: the shared brute-force brake table (see brake.h). Mapped by the
 * master before it forks; written by smtpd workers, pop3d and imapd under a
 * robust process-shared mutex, read by the master for kalectl status. */
#include "auth/brake.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/util.h"

#define BRAKE_LOCK_MS  500
#define BRAKE_FREE     0
#define BRAKE_IP       1
#define BRAKE_ACCOUNT  2

struct brake_slot {
	uint32_t gen;             /* bumped whenever the slot gets a new key */
	int kind;                 /* BRAKE_FREE, BRAKE_IP, BRAKE_ACCOUNT */
	int failures;
	int pending;              /* attempts begun and not yet ended */
	int64_t last;             /* last begin or failure */
	uint8_t ip[16];
	char name[BRAKE_NAME_MAX];
};

/* The shared part. Every process writes it, so the size and the slot
 * count a reader trusts are in its private struct brake, not in here. */
struct brake_map {
	pthread_mutex_t mu;
	uint32_t gen;
	struct brake_slot slot[];
};

struct brake {
	struct brake_map *map;
	struct brake_slot *slot;  /* map->slot */
	int nslots;
};

static size_t brake_size(int nslots)
{
	return sizeof(struct brake_map) + (size_t)nslots * sizeof(struct brake_slot);
}

struct brake *brake_create(int nslots)
{
	pthread_mutexattr_t attr;
	struct brake_map *map;
	struct brake *b;

	if (nslots <= 0)
		nslots = BRAKE_SLOTS;
	map = mmap(NULL, brake_size(nslots), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED)
		return NULL;
	if (pthread_mutexattr_init(&attr) != 0)
		goto fail;
	if (pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) != 0 ||
	    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) != 0 ||
	    pthread_mutex_init(&map->mu, &attr) != 0) {
		pthread_mutexattr_destroy(&attr);
		goto fail;
	}
	pthread_mutexattr_destroy(&attr);
	b = calloc(1, sizeof(*b));
	if (b == NULL) {
		pthread_mutex_destroy(&map->mu);
		goto fail;
	}
	b->map = map;
	b->slot = map->slot;
	b->nslots = nslots;
	return b;
fail:
	munmap(map, brake_size(nslots));
	return NULL;
}

void brake_free(struct brake **b)
{
	if (b == NULL || *b == NULL)
		return;
	pthread_mutex_destroy(&(*b)->map->mu);
	munmap((*b)->map, brake_size((*b)->nslots));
	free(*b);
	*b = NULL;
}

int64_t brake_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec;
}

void brake_params_conf(const struct kale_config *cfg, struct brake_params *p_r)
{
	p_r->limit = cfg->brake_limit;
	p_r->window_s = (int)cfg->brake_window;
	p_r->max_delay_s = (int)cfg->brake_max_delay;
}

int brake_delay_ms(const struct brake_params *p, int failures)
{
	int64_t ms;

	if (failures <= 0 || p->max_delay_s <= 0)
		return 0;
	ms = 1000LL << (failures - 1 > 20 ? 20 : failures - 1);
	if (ms > (int64_t)p->max_delay_s * 1000)
		ms = (int64_t)p->max_delay_s * 1000;
	return (int)ms;
}

/* A process that died holding the lock leaves it EOWNERDEAD: the slots are
 * independent counters, so the table is taken over as it is. A holder that
 * hangs (only a broken or hostile child could) makes us give up after
 * BRAKE_LOCK_MS rather than wait forever. */
static int brake_lock(struct brake *b)
{
	struct timespec ts;
	int rc;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)BRAKE_LOCK_MS * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	rc = pthread_mutex_timedlock(&b->map->mu, &ts);
	if (rc == EOWNERDEAD) {
		pthread_mutex_consistent(&b->map->mu);
		log_event(LOG_LVL_WARN, "auth.brake_recovered", "note", "a process died holding the brake lock", NULL);
		rc = 0;
	}
	if (rc != 0)
		log_event(LOG_LVL_ERROR, "auth.brake_lock", "error", strerror(rc), NULL);
	return rc == 0 ? 0 : -1;
}

static void brake_unlock(struct brake *b)
{
	pthread_mutex_unlock(&b->map->mu);
}

/* IPv4 (also v4-mapped) keeps all 32 bits, IPv6 is cut to its /64: one
 * end site usually holds a whole /64. */
static void brake_ip_key(const char *ip, uint8_t key[16])
{
	struct in_addr a4;
	struct in6_addr a6;

	memset(key, 0, 16);
	if (inet_pton(AF_INET, ip, &a4) == 1) {
		key[10] = 0xff;
		key[11] = 0xff;
		memcpy(key + 12, &a4, 4);
	} else if (inet_pton(AF_INET6, ip, &a6) == 1) {
		memcpy(key, &a6, 16);
		if (!IN6_IS_ADDR_V4MAPPED(&a6))
			memset(key + 8, 0, 8);
	} else {
		size_t n = strlen(ip);
		memcpy(key, ip, n < 16 ? n : 16);     /* not an address: its text */
	}
}

static void brake_account_key(const char *login, char out[BRAKE_NAME_MAX])
{
	size_t i;

	for (i = 0; login != NULL && login[i] != '\0' && i + 1 < BRAKE_NAME_MAX; i++) {
		unsigned char c = (unsigned char)login[i];
		out[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : (c < 0x20 || c == 0x7f ? '?' : c));
	}
	out[i] = '\0';
}

static int brake_expired(const struct brake *b, const struct brake_slot *s,
    const struct brake_params *p, int64_t now)
{
	(void)b;
	return s->kind == BRAKE_FREE || now - s->last > p->window_s;
}

/* Finds the slot for a key, or takes a free or expired one, or evicts the
 * one idle longest (an in-flight one only if nothing else is left). */
static int brake_slot(struct brake *b, const struct brake_params *p, int kind, const uint8_t ip[16],
    const char *name, int64_t now)
{
	int found = -1, spare = -1, oldest = -1, oldest_busy = -1;

	for (int i = 0; i < b->nslots; i++) {
		struct brake_slot *s = &b->slot[i];
		if (brake_expired(b, s, p, now)) {
			if (spare < 0)
				spare = i;
			continue;
		}
		if (s->kind == kind && (kind == BRAKE_IP ? memcmp(s->ip, ip, 16) == 0 :
		    strncmp(s->name, name, BRAKE_NAME_MAX) == 0)) {
			found = i;
			break;
		}
		if (s->pending > 0) {
			if (oldest_busy < 0 || s->last < b->slot[oldest_busy].last)
				oldest_busy = i;
		} else if (oldest < 0 || s->last < b->slot[oldest].last) {
			oldest = i;
		}
	}
	if (found >= 0)
		return found;
	if (spare < 0)
		spare = oldest >= 0 ? oldest : oldest_busy;
	if (spare < 0)
		return -1;
	{
		struct brake_slot *s = &b->slot[spare];
		memset(s->ip, 0, sizeof(s->ip));
		memset(s->name, 0, sizeof(s->name));
		s->gen = ++b->map->gen;
		s->kind = kind;
		s->failures = 0;
		s->pending = 0;
		s->last = now;
		if (kind == BRAKE_IP)
			memcpy(s->ip, ip, 16);
		else
			memcpy(s->name, name, BRAKE_NAME_MAX);
	}
	return spare;
}

/* Counts as read from the shared pages, clamped: whatever another process
 * wrote there, arithmetic on them cannot overflow. */
#define BRAKE_COUNT_MAX 1000000

static int brake_clamp(int n)
{
	return n < 0 ? 0 : n > BRAKE_COUNT_MAX ? BRAKE_COUNT_MAX : n;
}

static int brake_count(const struct brake_slot *s)
{
	return brake_clamp(s->failures);
}

enum brake_verdict brake_begin(struct brake *b, const struct brake_params *p, const char *ip,
    const char *login, int64_t now, struct brake_ticket *t)
{
	uint8_t key[16];
	char name[BRAKE_NAME_MAX];
	int slot[2], failures = 0, busy = 0;

	memset(t, 0, sizeof(*t));
	t->slot[0] = t->slot[1] = -1;
	if (b == NULL)
		return BRAKE_GO;
	brake_ip_key(ip != NULL ? ip : "", key);
	brake_account_key(login, name);
	if (brake_lock(b) < 0)
		return BRAKE_REFUSE;
	slot[0] = brake_slot(b, p, BRAKE_IP, key, NULL, now);
	slot[1] = name[0] != '\0' ? brake_slot(b, p, BRAKE_ACCOUNT, NULL, name, now) : -1;
	if (slot[1] == slot[0])
		slot[1] = -1;             /* a one-slot table: cannot happen with BRAKE_SLOTS */
	for (int k = 0; k < 2; k++) {
		if (slot[k] < 0)
			continue;
		struct brake_slot *s = &b->slot[slot[k]];
		int n = brake_count(s);
		if (n > failures)
			failures = n;
		if (n + brake_clamp(s->pending) >= p->limit)
			busy = 1;
	}
	t->failures = failures;
	if (busy) {
		brake_unlock(b);
		return BRAKE_REFUSE;
	}
	for (int k = 0; k < 2; k++) {
		if (slot[k] < 0)
			continue;
		struct brake_slot *s = &b->slot[slot[k]];
		s->pending = brake_clamp(s->pending) + 1;
		s->last = now;
		t->slot[k] = slot[k];
		t->gen[k] = s->gen;
	}
	brake_unlock(b);
	t->active = 1;
	t->delay_ms = brake_delay_ms(p, failures);
	return BRAKE_GO;
}

int brake_end(struct brake *b, struct brake_ticket *t, enum brake_outcome o, int64_t now)
{
	int failures = 0;

	if (b == NULL || !t->active)
		return 0;
	t->active = 0;
	if (brake_lock(b) < 0)
		return 0;
	for (int k = 0; k < 2; k++) {
		if (t->slot[k] < 0 || t->slot[k] >= b->nslots)
			continue;
		struct brake_slot *s = &b->slot[t->slot[k]];
		if (s->gen != t->gen[k])
			continue;             /* evicted meanwhile */
		s->pending = brake_clamp(s->pending - (s->pending > 0));
		if (o == BRAKE_FAILURE) {
			s->failures = brake_count(s) + 1;
			s->last = now;
		} else if (o == BRAKE_SUCCESS && k == 1) {
			s->failures = 0;      /* the account's own count; never the address's */
		}
		if (brake_count(s) > failures)
			failures = brake_count(s);
	}
	brake_unlock(b);
	return failures;
}

static void brake_name(const struct brake_slot *s, char *out, size_t cap)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	char buf[INET6_ADDRSTRLEN];

	if (s->kind == BRAKE_ACCOUNT) {
		size_t i;
		for (i = 0; i + 1 < cap && i + 1 < BRAKE_NAME_MAX && s->name[i] != '\0'; i++) {
			unsigned char c = (unsigned char)s->name[i];
			out[i] = (char)(c < 0x20 || c == 0x7f ? '?' : c);   /* one status line each */
		}
		out[i] = '\0';
	} else if (memcmp(s->ip, v4mapped, 12) == 0 && inet_ntop(AF_INET, s->ip + 12, buf, sizeof(buf))) {
		/* cannot truncate: the one caller's cap is BRAKE_NAME_MAX (128) */
		(void)util_fmt(out, cap, "%s", buf);
	} else if (inet_ntop(AF_INET6, s->ip, buf, sizeof(buf)) != NULL) {
		(void)util_fmt(out, cap, "%s/64", buf);
	} else {
		(void)util_fmt(out, cap, "?");
	}
}

int brake_stats(struct brake *b, const struct brake_params *p, int64_t now, struct brake_stats *st_r)
{
	memset(st_r, 0, sizeof(*st_r));
	if (b == NULL)
		return 0;
	if (brake_lock(b) < 0)
		return -1;
	for (int i = 0; i < b->nslots; i++) {
		const struct brake_slot *s = &b->slot[i];
		int n = brake_count(s), blocked, pos;
		if (brake_expired(b, s, p, now) || n == 0 || (s->kind != BRAKE_IP && s->kind != BRAKE_ACCOUNT))
			continue;
		blocked = n + brake_clamp(s->pending) >= p->limit;
		if (s->kind == BRAKE_IP) {
			st_r->ips++;
			st_r->ips_blocked += blocked;
		} else {
			st_r->accounts++;
			st_r->accounts_blocked += blocked;
		}
		/* insertion into the top list, most failures first */
		for (pos = st_r->n_top; pos > 0 && st_r->top[pos - 1].failures < n; pos--)
			;
		if (pos >= BRAKE_TOP)
			continue;
		if (st_r->n_top < BRAKE_TOP)
			st_r->n_top++;
		memmove(&st_r->top[pos + 1], &st_r->top[pos],
		    (size_t)(st_r->n_top - 1 - pos) * sizeof(st_r->top[0]));
		{
			struct brake_entry *e = &st_r->top[pos];
			memset(e, 0, sizeof(*e));
			e->is_account = s->kind == BRAKE_ACCOUNT;
			brake_name(s, e->name, sizeof(e->name));
			e->failures = n;
			e->pending = brake_clamp(s->pending);
			e->idle_s = now - s->last;
			e->blocked = blocked;
		}
	}
	brake_unlock(b);
	return 0;
}

void brake_log(const char *proto, const char *ip, const char *login, const struct brake_ticket *t,
    const char *action)
{
	char name[BRAKE_NAME_MAX], n[16], d[32];

	brake_account_key(login, name);
	(void)util_fmt(n, sizeof(n), "%d", t->failures);              /* an int in 16 */
	(void)util_fmt(d, sizeof(d), "%d.%03ds", t->delay_ms / 1000, /* two ints in 32 */
	    t->delay_ms % 1000);
	log_event(LOG_LVL_WARN, "auth.brake", "proto", proto, "client", ip, "user", name[0] ? name : NULL,
	    "failures", n, "delay", strcmp(action, "delay") == 0 ? d : NULL, "action", action, NULL);
}
