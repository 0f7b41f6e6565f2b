/* store_user: local users (yescrypt password hashes), their bulk import and
 * the password check. Runs in kalectl (changes) and in kaled's smtpd/pop3d/
 * imapd (store_user_check_password, store_user_exists). */
#include "store/store_int.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "lib/util.h"

#define STORE_IMPORT_CHUNK 512
#define STORE_IMPORT_LINE  2048
#define STORE_PASSWORD_MAX 1024

/* A valid hash of a random password: checked against when the user is
 * unknown, so that an unknown user costs as much time as a wrong password. */
static const char store_dummy_hash[] =
	"$y$j9T$bx4QCeqoHvWCQhp1sYA9S0$tRo525kIx.E3AgQgNdYeF/XwMOY8Y65GrGgeRGK10f6";

/* yescrypt hash of password, malloc'd, or NULL with *error_r */
static char *store_hash(const char *password, char **error_r)
{
	char *salt, *hash = NULL, *out = NULL;
	void *data = NULL;
	int size = 0;

	if (strlen(password) > STORE_PASSWORD_MAX) {
		util_err(error_r, "password too long (max %d)", STORE_PASSWORD_MAX);
		return NULL;
	}
	salt = crypt_gensalt_ra("$y$", 0, NULL, 0);
	if (salt == NULL) {
		util_err(error_r, "crypt_gensalt: %s", strerror(errno));
		return NULL;
	}
	hash = crypt_ra(password, salt, &data, &size);
	if (hash == NULL || hash[0] == '*')
		util_err(error_r, "crypt: %s", strerror(errno));
	else
		out = xstrdup(hash);
	free(data);
	free(salt);
	return out;
}

static int store_ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	volatile unsigned char diff = (unsigned char)(la != lb);

	for (size_t i = 0; i < la && i < lb; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

static int store_user_insert(store *st, const char *addr, const char *domain,
    const char *hash, char **error_r)
{
	int64_t n = 0;

	if (store_run_int(st, ST_USER_IS_ALIAS, &n, "t", addr) == 0 && n > 0)
		return util_err(error_r, "%s is an alias; delete the alias first", addr);
	return store_run_added(st, store_run(st, ST_USER_ADD, "tttI", addr, domain, hash,
	    (int64_t)time(NULL)), "user", addr, error_r);
}

int store_user_add(store *st, const char *address, const char *password, char **error_r)
{
	char addr[320], domain[256];
	char *hash = NULL;
	int rc;

	if (store_local_address(st, address, 1, addr, sizeof(addr), domain, sizeof(domain), error_r) < 0)
		return -1;
	if (password != NULL && *password != '\0' && (hash = store_hash(password, error_r)) == NULL)
		return -1;
	rc = store_user_insert(st, addr, domain, hash, error_r);
	free(hash);
	return rc;
}

int store_user_passwd(store *st, const char *address, const char *password, char **error_r)
{
	char *hash;
	int rc = -1;

	if (password == NULL || *password == '\0')
		return util_err(error_r, "empty password");
	if ((hash = store_hash(password, error_r)) == NULL)
		return -1;
	if (store_run(st, ST_USER_PASSWD, "tt", hash, address) != STORE_DONE)
		store_err_db(st, error_r, "store: passwd");
	else if (store_changes(st) == 0)
		util_err(error_r, "no such user %.320s", address);
	else
		rc = 0;
	free(hash);
	return rc;
}

int store_user_del(store *st, const char *address, char **error_r)
{
	if (store_run(st, ST_USER_DEL, "t", address) != STORE_DONE)
		return store_err_db(st, error_r, "store: delete user");
	if (store_changes(st) == 0)
		return util_err(error_r, "no such user %.320s", address);
	return 0;
}

int store_user_exists(store *st, const char *address)
{
	int rc = store_run(st, ST_USER_EXISTS, "t", address);

	return rc == STORE_ROW ? 1 : rc == STORE_DONE ? 0 : -1;
}

int store_user_check_password(store *st, const char *address, const char *password)
{
	struct store_q q;
	char *hash = NULL, *res;
	void *data = NULL;
	int size = 0, rc, found = 0;

	if (address == NULL || password == NULL)
		return 0;
	/* POP3 and IMAP serve mailboxes: a user of a relay domain (a LocalDB
	 * recipient) has none, and logs in only for SMTP AUTH. */
	if (store_q_start(st, &q, st->mailbox_only ? ST_USER_HASH_MAILBOX : ST_USER_HASH, NULL,
	    "t", address) < 0)
		return -1;
	rc = store_q_step(&q);
	if (rc == STORE_ROW) {
		const char *h = store_q_text(&q, 0);
		if (h != NULL && *h != '\0') {
			hash = xstrdup(h);
			found = 1;
		}
	}
	store_q_end(&q);
	if (rc != STORE_ROW && rc != STORE_DONE)
		return -1;
	if (*password == '\0' || strlen(password) > STORE_PASSWORD_MAX) {
		free(hash);
		return 0;
	}
	res = crypt_ra(password, found ? hash : store_dummy_hash, &data, &size);
	rc = found && res != NULL && res[0] != '*' && store_ct_equal(res, hash);
	free(data);
	free(hash);
	return rc;
}

void store_set_mailbox_only(store *st)
{
	st->mailbox_only = 1;
}

int store_user_list(store *st, const char *domain, int (*cb)(void *ctx, const char *address), void *ctx)
{
	struct store_q q;
	int rc;

	if ((domain != NULL ? store_q_start(st, &q, ST_USER_LIST_DOMAIN, NULL, "t", domain) :
	    store_q_start(st, &q, ST_USER_LIST, NULL, "")) < 0)
		return -1;
	while ((rc = store_q_step(&q)) == STORE_ROW) {
		if (cb(ctx, store_q_text(&q, 0)) != 0) {
			rc = STORE_DONE;
			break;
		}
	}
	store_q_end(&q);
	return rc == STORE_DONE ? 0 : -1;
}

/* ---- bulk import ---- */

struct store_import_line {
	long line;
	char addr[320];
	char domain[256];
	char *password;      /* NULL = none */
	char *hash;
	char *error;         /* set when the line is bad */
};

struct store_import_pool {
	struct store_import_line *lines;
	int n;
	int next;            /* next index to hash */
	pthread_mutex_t mu;
};

static void *store_import_worker(void *arg)
{
	struct store_import_pool *p = arg;

	for (;;) {
		struct store_import_line *l;
		int i;

		pthread_mutex_lock(&p->mu);
		i = p->next++;
		pthread_mutex_unlock(&p->mu);
		if (i >= p->n)
			return NULL;
		l = &p->lines[i];
		if (l->error == NULL && l->password != NULL)
			l->hash = store_hash(l->password, &l->error);
	}
}

/* hashes every password of the chunk, on up to ncpu threads */
static void store_import_hash(struct store_import_line *lines, int n, int nthreads)
{
	struct store_import_pool p = { .lines = lines, .n = n, .next = 0 };
	pthread_t th[16];
	int started = 0;

	pthread_mutex_init(&p.mu, NULL);
	for (int i = 0; i < nthreads - 1 && i < 16; i++) {
		if (pthread_create(&th[started], NULL, store_import_worker, &p) != 0)
			break;
		started++;
	}
	store_import_worker(&p);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&p.mu);
}

static void store_import_line_clear(struct store_import_line *l)
{
	if (l->password != NULL) {
		explicit_bzero(l->password, strlen(l->password));
		free(l->password);
	}
	free(l->hash);
	free(l->error);
	memset(l, 0, sizeof(*l));
}

/* Parses one line into l; returns 1 for a data line, 0 to skip. */
static int store_import_parse(store *st, char *buf, long lineno, struct store_import_line *l)
{
	char *p = buf, *comma, *end;

	l->line = lineno;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0' || *p == '#')
		return 0;
	if (strcmp(p, "address,password") == 0 || strcmp(p, "address") == 0)
		return 0;
	comma = strchr(p, ',');
	end = comma ? comma : p + strlen(p);
	while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*end = '\0';
	if (comma != NULL && comma[1] != '\0')
		l->password = xstrdup(comma + 1);
	if (store_local_address(st, p, 1, l->addr, sizeof(l->addr), l->domain, sizeof(l->domain),
	    &l->error) < 0)
		return 1;
	return 1;
}

int store_user_import(store *st, FILE *csv,
    void (*progress)(void *ctx, long line), void *ctx,
    void (*line_error)(void *ctx, long line, const char *msg), void *ctx2,
    long *ok_r, long *bad_r, char **error_r)
{
	struct store_import_line *lines = xcalloc(STORE_IMPORT_CHUNK, sizeof(*lines));
	char *buf = xmalloc(STORE_IMPORT_LINE + 2);
	long lineno = 0, ok = 0, bad = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int n = 0, eof = 0, rc = -1, in_tx = 0;

	*ok_r = *bad_r = 0;
	if (ncpu < 1)
		ncpu = 1;
	if (store_tx_begin(st, error_r) < 0)
		goto out;
	in_tx = 1;
	while (!eof) {
		/* read and check up to one chunk of data lines */
		n = 0;
		while (n < STORE_IMPORT_CHUNK) {
			size_t len;
			if (fgets(buf, STORE_IMPORT_LINE + 2, csv) == NULL) {
				if (ferror(csv)) {
					util_err(error_r, "read error: %s", strerror(errno));
					goto out;
				}
				eof = 1;
				break;
			}
			lineno++;
			len = strlen(buf);
			if (len > 0 && buf[len - 1] == '\n')
				buf[--len] = '\0';
			else if (!feof(csv)) {
				int c;
				while ((c = fgetc(csv)) != EOF && c != '\n')
					;
				lines[n].line = lineno;
				lines[n].error = xstrdup("line too long");
				n++;
				continue;
			}
			if (len > 0 && buf[len - 1] == '\r')
				buf[--len] = '\0';
			if (memchr(buf, '\0', len) != NULL || strlen(buf) != len) {
				lines[n].line = lineno;
				lines[n].error = xstrdup("NUL byte in line");
				n++;
				continue;
			}
			if (store_import_parse(st, buf, lineno, &lines[n]))
				n++;
			else
				store_import_line_clear(&lines[n]);
		}
		store_import_hash(lines, n, (int)(ncpu > 16 ? 16 : ncpu));
		for (int i = 0; i < n; i++) {
			struct store_import_line *l = &lines[i];
			if (l->error == NULL)
				store_user_insert(st, l->addr, l->domain, l->hash, &l->error);
			if (l->error != NULL) {
				bad++;
				if (line_error != NULL)
					line_error(ctx2, l->line, l->error);
			} else {
				ok++;
			}
			store_import_line_clear(l);
		}
		if (progress != NULL)
			progress(ctx, lineno);
	}
	in_tx = 0;
	if (store_tx_commit(st, error_r) < 0)
		goto out;
	*ok_r = ok;
	*bad_r = bad;
	rc = 0;
out:
	if (in_tx)
		store_tx_rollback(st);
	for (int i = 0; i < STORE_IMPORT_CHUNK; i++)
		store_import_line_clear(&lines[i]);
	free(lines);
	explicit_bzero(buf, STORE_IMPORT_LINE + 2);
	free(buf);
	return rc;
}

/* ---- the password check of worker threads ---- */

/* Each thread that checks passwords (pop3d's and imapd's lookup pool)
 * keeps one read-only, mailbox-only handle, opened on its first check and
 * closed when the thread exits. A read-only handle never takes the write
 * lock and runs no migration; its statements stay prepared. */
struct store_tl {
	store *st;
	char *url;           /* the db_url it was opened for */
};

static pthread_key_t store_tl_key;
static pthread_once_t store_tl_once = PTHREAD_ONCE_INIT;
static int store_tl_ok;

static void store_tl_free(void *p)
{
	struct store_tl *t = p;

	if (t == NULL)
		return;
	store_close(&t->st);
	free(t->url);
	free(t);
}

static void store_tl_init(void)
{
	store_tl_ok = pthread_key_create(&store_tl_key, store_tl_free) == 0;
}

void store_user_thread_close(void)
{
	pthread_once(&store_tl_once, store_tl_init);
	if (!store_tl_ok)
		return;
	store_tl_free(pthread_getspecific(store_tl_key));
	pthread_setspecific(store_tl_key, NULL);
}

/* The calling thread's handle for cfg, opened if needed; NULL on error. */
static store *store_tl_get(const struct kale_config *cfg)
{
	const char *url = cfg && cfg->db_url ? cfg->db_url : "sqlite:kale.db";
	struct store_tl *t;
	char *err = NULL;

	pthread_once(&store_tl_once, store_tl_init);
	if (!store_tl_ok)
		return NULL;
	t = pthread_getspecific(store_tl_key);
	if (t != NULL && strcmp(t->url, url) != 0) {
		store_user_thread_close();
		t = NULL;
	}
	if (t == NULL) {
		t = xcalloc(1, sizeof(*t));
		t->url = xstrdup(url);
		if (pthread_setspecific(store_tl_key, t) != 0) {
			store_tl_free(t);
			return NULL;
		}
	}
	if (t->st == NULL) {
		if (store_open_flags(cfg, STORE_OPEN_READONLY, &t->st, &err) < 0) {
			free(err);
			return NULL;
		}
		store_set_mailbox_only(t->st);
	}
	return t->st;
}

int store_user_check_password_once(const struct kale_config *cfg, const char *address,
    const char *password)
{
	store *st = store_tl_get(cfg);
	int rc;

	if (st == NULL)
		return -1;
	rc = store_user_check_password(st, address, password);
	if (rc < 0) {
		/* a broken handle (file replaced, I/O error): reopen next time */
		store_user_thread_close();
	}
	return rc;
}
