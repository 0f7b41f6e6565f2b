/* master: the kaled parent process. Reads kale.conf, prepares data_dir,
 * binds the listeners (root only for this), forks the children (smtpd
 * workers, qmgr, pop3d, imapd) which drop to run_as, restarts any that dies
 * with backoff, reloads on SIGHUP, stops cleanly on SIGTERM/SIGINT, and
 * answers kalectl on the control socket. It holds no mail and parses no
 * network input. */
#include "master/master.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "master/kaled.h"
#include "queue/queue_file.h"
#include "sendmail/maildrop.h"
#include "lib/conntable.h"
#include "auth/brake.h"
#include "store/store.h"

#define MASTER_MAX_SLOTS 72
#define MASTER_MAX_RETIRED 256
#define MASTER_MAX_LISTENERS 64
#define MASTER_STOP_SECS 10

enum master_role { ROLE_SMTPD, ROLE_QMGR, ROLE_POP3D, ROLE_IMAPD, ROLE_PICKUP };

static const char *master_role_name[] = { "smtpd", "qmgr", "pop3d", "imapd", "pickup" };

struct master_slot {
	enum master_role role;
	int worker_id;
	pid_t pid;
	uint64_t started_ms;
	int backoff;               /* seconds before the next restart */
	struct event *restart_ev;
	struct master *m;
};

struct master_retired {
	pid_t pid;
	enum master_role role;
};

struct master {
	struct kale_config cfg;
	struct event_base *base;
	struct kale_listener ls[MASTER_MAX_LISTENERS];
	int n_ls;
	SSL_CTX *tls;
	struct conntable *conns;   /* smtpd workers', one row each */
	struct conntable *conns_pop3, *conns_imap;   /* one row: pop3d's, imapd's */
	struct brake *brake;       /* shared by every child: never reset on restart */
	int nworkers;
	struct master_slot slot[MASTER_MAX_SLOTS];
	int n_slots;
	struct master_retired retired[MASTER_MAX_RETIRED];
	int n_retired;
	uid_t uid;
	gid_t gid;
	int drop;                  /* started as root: children drop to run_as */
	int stopping;
	pid_t pid;
	struct evconnlistener *ctl;
	int sig_fd;                /* signalfd: the master takes signals as events */
	struct event *sig_ev, *kill_ev;
	int lock_fd;               /* data_dir, flock()ed: one instance per data_dir */
	struct kale_listener *reuse;   /* during a reload: listeners to take over */
	int n_reuse;
};

const char *kale_listen_kind_name(enum kale_listen_kind k)
{
	static const char *names[] = { "smtp", "submission", "submissions", "pop3", "pop3s",
		"imap", "imaps", "admin", "local" };
	return k < LISTEN_KINDS ? names[k] : "?";
}

/* ---------- listeners ---------- */

static int master_open_dir(const char *rel);

static int master_bind_one(struct master *m, const struct conf_addr *a, enum kale_listen_kind kind,
    char **error_r)
{
	struct addrinfo hints = { 0 }, *res = NULL;
	char port[16], name[sizeof(m->ls[0].name)];
	int fd = -1, one = 1, rc;

	if (m->n_ls >= MASTER_MAX_LISTENERS) {
		*error_r = xstrdup("too many listeners");
		return -1;
	}
	{
		/* A reload keeps a socket that stays in the config: binding it anew
		 * would need SO_REUSEPORT, which would also let a second instance
		 * share our ports silently. */
		if (util_fmt(name, sizeof(name), strchr(a->host, ':') ? "[%s]:%d" : "%s:%d", a->host,
		    a->port) < 0) {
			*error_r = xstrdup("listen address too long");
			return -1;
		}
		for (int i = 0; i < m->n_reuse; i++)
			if (m->reuse[i].kind == kind && strcmp(m->reuse[i].name, name) == 0) {
				m->ls[m->n_ls++] = m->reuse[i];
				m->reuse[i].kind = LISTEN_KINDS;        /* taken */
				return 0;
			}
	}
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	(void)util_fmt(port, sizeof(port), "%d", a->port);     /* 1..65535 fits */
	rc = getaddrinfo(a->host[0] ? a->host : NULL, port, &hints, &res);
	if (rc != 0) {
		if (asprintf(error_r, "cannot resolve listen address %s: %s", a->host, gai_strerror(rc)) < 0)
			*error_r = NULL;
		return -1;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (res->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	}
	if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		if (asprintf(error_r, "cannot listen on %s:%d (%s): %s", a->host, a->port,
		    kale_listen_kind_name(kind), strerror(errno)) < 0)
			*error_r = NULL;
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	m->ls[m->n_ls].fd = fd;
	m->ls[m->n_ls].kind = kind;
	m->ls[m->n_ls].implicit_tls = kind == LISTEN_SUBMISSIONS || kind == LISTEN_POP3S || kind == LISTEN_IMAPS;
	memcpy(m->ls[m->n_ls].name, name, sizeof(name));
	m->n_ls++;
	return 0;
}

static const struct conf_listen *master_listen_of(const struct kale_config *cfg, enum kale_listen_kind k)
{
	switch (k) {
	case LISTEN_SMTP: return &cfg->smtp;
	case LISTEN_SUBMISSION: return &cfg->submission;
	case LISTEN_SUBMISSIONS: return &cfg->submissions;
	case LISTEN_POP3: return &cfg->pop3;
	case LISTEN_POP3S: return &cfg->pop3s;
	case LISTEN_IMAP: return &cfg->imap;
	case LISTEN_IMAPS: return &cfg->imaps;
	default: return &cfg->admin;
	}
}

/* Kinds served by a child process in this build. */
static int master_served(enum kale_listen_kind k)
{
	return k == LISTEN_SMTP || k == LISTEN_SUBMISSION || k == LISTEN_SUBMISSIONS ||
	    k == LISTEN_POP3 || k == LISTEN_POP3S || k == LISTEN_IMAP || k == LISTEN_IMAPS;
}

static void master_close_listeners(struct master *m)
{
	for (int i = 0; i < m->n_ls; i++)
		close(m->ls[i].fd);
	m->n_ls = 0;
}

/* Undoes a failed master_bind_all: closes what it bound, gives back what it
 * took over from m->reuse. */
static void master_unbind(struct master *m)
{
	for (int i = 0; i < m->n_ls; i++) {
		int taken = 0;
		for (int j = 0; j < m->n_reuse; j++)
			if (m->reuse[j].fd == m->ls[i].fd && m->reuse[j].kind == LISTEN_KINDS) {
				m->reuse[j].kind = m->ls[i].kind;
				taken = 1;
			}
		if (!taken)
			close(m->ls[i].fd);
	}
	m->n_ls = 0;
}

static int master_bind_all(struct master *m, char **error_r)
{
	for (int k = 0; k < LISTEN_KINDS; k++) {
		const struct conf_listen *l = master_listen_of(&m->cfg, (enum kale_listen_kind)k);
		if (l->n > 0 && !master_served((enum kale_listen_kind)k)) {
			log_event(LOG_LVL_WARN, "master.listen", "kind", kale_listen_kind_name((enum kale_listen_kind)k),
			    "note", "not served by this build; ignored", NULL);
			continue;
		}
		for (int i = 0; i < l->n; i++)
			if (master_bind_one(m, &l->addr[i], (enum kale_listen_kind)k, error_r) < 0) {
				master_unbind(m);
				return -1;
			}
	}
	return 0;
}

/* The local injection socket for kale-sendmail: any local user may submit
 * (like /usr/sbin/sendmail), and what comes in is treated as trusted. */
static int master_bind_local(struct master *m, char **error_r)
{
	struct sockaddr_un sun = { 0 };
	int fd, dfd;

	if (m->n_ls >= MASTER_MAX_LISTENERS)
		return 0;
	/* public/ is root's, 0755, inside data_dir (0751, run_as's): every
	 * local user reaches the socket and nothing else. The socket is made
	 * through the folder's fd, so a public/ swapped for a link is not
	 * followed. The old place is removed. */
	unlink("sendmail.sock");
	dfd = master_open_dir("public");
	if (dfd < 0 || (m->drop && fchown(dfd, 0, 0) < 0) || fchmod(dfd, 0755) < 0) {
		if (asprintf(error_r, "%s/public: %s", m->cfg.data_dir, strerror(errno)) < 0)
			*error_r = NULL;
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	unlinkat(dfd, "sendmail.sock", 0);
	sun.sun_family = AF_UNIX;
	(void)util_fmt(sun.sun_path, sizeof(sun.sun_path), "/proc/self/fd/%d/sendmail.sock", dfd); /* fits */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	{
		mode_t old = umask(0);          /* 0666, without a chmod() that follows links */
		int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
		umask(old);
		if (rc < 0 || listen(fd, 128) < 0) {
			if (asprintf(error_r, "local socket %s/public/sendmail.sock: %s", m->cfg.data_dir,
			    strerror(errno)) < 0)
				*error_r = NULL;
			if (fd >= 0)
				close(fd);
			close(dfd);
			return -1;
		}
	}
	close(dfd);
	m->ls[m->n_ls].fd = fd;
	m->ls[m->n_ls].kind = LISTEN_LOCAL;
	m->ls[m->n_ls].implicit_tls = 0;
	if (util_fmt(m->ls[m->n_ls].name, sizeof(m->ls[m->n_ls].name), "%s/public/sendmail.sock",
	    m->cfg.data_dir) < 0)   /* a display name: cut with "..." */
		memcpy(m->ls[m->n_ls].name + sizeof(m->ls[m->n_ls].name) - 4, "...", 4);
	m->n_ls++;
	return 0;
}

static int master_has_kind(struct master *m, enum kale_listen_kind a, enum kale_listen_kind b)
{
	for (int i = 0; i < m->n_ls; i++)
		if (m->ls[i].kind == a || m->ls[i].kind == b)
			return 1;
	return 0;
}

/* ---------- sanitizer builds ---------- */

#ifdef KALE_SANITIZE
#include <sanitizer/common_interface_defs.h>
#define MASTER_SANITIZER_DIR "sanitizer"

/* Reports of a child go to <data_dir>/sanitizer/ROLE.PID when the operator
 * asked for report files (log_path= in ASAN_OPTIONS or UBSAN_OPTIONS): the
 * folder given there is usually root's, and the child no longer is. Without
 * log_path they go to stderr, the daemon's log, which the child inherits.
 * KALE_SANITIZER_SELFTEST=ROLE makes that child read past a heap block,
 * so the tests can see a report arrive (sanitizer builds only). */
static void master_sanitizer_child(enum master_role role)
{
	static char path[64];
	const char *a = getenv("ASAN_OPTIONS"), *u = getenv("UBSAN_OPTIONS");
	const char *t = getenv("KALE_SANITIZER_SELFTEST");

	if ((a != NULL && strstr(a, "log_path=") != NULL) || (u != NULL && strstr(u, "log_path=") != NULL)) {
		(void)util_fmt(path, sizeof(path), MASTER_SANITIZER_DIR "/%s", master_role_name[role]);
		__sanitizer_set_report_path(path);
	}
	if (t != NULL && strcmp(t, master_role_name[role]) == 0) {
		char *volatile p = malloc(4);
		volatile char c = p[4];
		(void)c;
		free(p);
	}
}
#else
static void master_sanitizer_child(enum master_role role)
{
	(void)role;
}
#endif

/* ---------- data_dir ---------- */

/* Opens a folder below data_dir without following a symbolic link at any
 * step: the run_as user owns data_dir and may have planted links in it, and
 * the master is root. */
static int master_open_dir(const char *rel)
{
	char buf[PATH_MAX];
	int fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (util_fmt(buf, sizeof(buf), "%s", rel) < 0) {
		close(fd);
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf, *slash; fd >= 0 && p != NULL; p = slash) {
		int nfd;
		slash = strchr(p, '/');
		if (slash != NULL)
			*slash++ = '\0';
		nfd = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(fd);
		fd = nfd;
	}
	return fd;
}

/* master_open_dir() as a DIR stream; NULL on error. */
static DIR *master_opendir(const char *rel)
{
	int dfd = master_open_dir(rel);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;

	if (d == NULL && dfd >= 0)
		close(dfd);
	return d;
}

static int master_fail_path(char **error_r, const char *dir, const char *rel, const char *why)
{
	if (asprintf(error_r, "%s/%s: %s; refusing to start (a link planted in data_dir?)", dir, rel, why) < 0)
		*error_r = NULL;
	return -1;
}

/* Creates data_dir's folders and gives them to run_as. Nothing is followed:
 * a folder that is a link, or a policy-store file that is a link, a hard
 * link or not a plain file, stops the start-up. */
static int master_prepare_dir(struct master *m, char **error_r)
{
	static const char *dirs[] = { "queue", QUEUE_DIR_TMP, QUEUE_DIR_INCOMING, QUEUE_DIR_HOLD,
		QUEUE_DIR_DONE, "mail", "public", MAILDROP_DIR,
#ifdef KALE_SANITIZE
		MASTER_SANITIZER_DIR,
#endif
		NULL };
	static const char *files[] = { "kale.db", "kale.db-wal", "kale.db-shm", "kale.db-journal", NULL };
	int fd;

	if (fs_mkdirs(m->cfg.data_dir, 0750) < 0 || chdir(m->cfg.data_dir) < 0) {
		if (asprintf(error_r, "%s: data_dir %s: %s", m->cfg.path, m->cfg.data_dir, strerror(errno)) < 0)
			*error_r = NULL;
		return -1;
	}
	if (m->drop && chown(".", m->uid, m->gid) < 0)
		log_event(LOG_LVL_WARN, "master.chown", "path", m->cfg.data_dir, "error", strerror(errno), NULL);
	if (chmod(".", 0751) < 0)           /* others pass through to public/ only */
		log_event(LOG_LVL_WARN, "master.chmod", "path", m->cfg.data_dir, "error", strerror(errno), NULL);
	for (int i = 0; dirs[i]; i++) {
		if (mkdir(dirs[i], 0750) < 0 && errno != EEXIST) {
			if (asprintf(error_r, "%s/%s: %s", m->cfg.data_dir, dirs[i], strerror(errno)) < 0)
				*error_r = NULL;
			return -1;
		}
		fd = master_open_dir(dirs[i]);
		if (fd < 0)
			return master_fail_path(error_r, m->cfg.data_dir, dirs[i],
			    errno == ELOOP || errno == ENOTDIR ? "not a folder" : strerror(errno));
		if (m->drop && strcmp(dirs[i], "public") != 0 && fchown(fd, m->uid, m->gid) < 0)
			log_event(LOG_LVL_WARN, "master.chown", "path", dirs[i], "error", strerror(errno), NULL);
		/* maildrop/: every local user may add a file (kale-sendmail while
		 * kaled is down), none may list or touch another's (sticky) */
		if (strcmp(dirs[i], MAILDROP_DIR) == 0 && fchmod(fd, 01733) < 0)
			log_event(LOG_LVL_WARN, "master.chmod", "path", dirs[i], "error", strerror(errno), NULL);
		close(fd);
	}
	for (int i = 0; files[i]; i++) {
		struct stat sb;
		if (lstat(files[i], &sb) < 0) {
			if (errno == ENOENT)
				continue;
			return master_fail_path(error_r, m->cfg.data_dir, files[i], strerror(errno));
		}
		if (!S_ISREG(sb.st_mode) || sb.st_nlink != 1)
			return master_fail_path(error_r, m->cfg.data_dir, files[i],
			    S_ISLNK(sb.st_mode) ? "a symbolic link" : "not a plain file with one link");
		if (!m->drop || sb.st_uid == m->uid)
			continue;
		/* A store made by an older kaled as root: hand it over. */
		fd = open(files[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_nlink != 1) {
			if (fd >= 0)
				close(fd);
			return master_fail_path(error_r, m->cfg.data_dir, files[i], "changed while checked");
		}
		if (fchown(fd, m->uid, m->gid) < 0)
			log_event(LOG_LVL_WARN, "master.chown", "path", files[i], "error", strerror(errno), NULL);
		close(fd);
	}
	return 0;
}

/* Only one kaled may run on a data_dir: two queue managers would deliver
 * every message twice. The lock is on the folder itself, and the children
 * inherit it, so it holds as long as any process of this instance lives. */
static int master_lock(struct master *m, char **error_r)
{
	m->lock_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (m->lock_fd < 0 || flock(m->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (asprintf(error_r, "%s: data_dir %s: %s", m->cfg.path, m->cfg.data_dir,
		    errno == EWOULDBLOCK ? "another kaled runs on it" : strerror(errno)) < 0)
			*error_r = NULL;
		return -1;
	}
	return 0;
}

/* Files in queue/tmp are messages that never got their 250: no smtpd runs
 * yet, so all of them are leftovers of a crash. Runs as run_as. */
static void master_clean_tmp(void)
{
	DIR *d = master_opendir(QUEUE_DIR_TMP);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && unlinkat(dirfd(d), de->d_name, 0) == 0)
			n++;
	closedir(d);
	if (n > 0) {
		char num[16];
		(void)util_fmt(num, sizeof(num), "%d", n);
		log_event(LOG_LVL_INFO, "queue.tmp_cleaned", "files", num, NULL);
	}
}

/* Creates and migrates the policy store of cfg (the children only connect
 * to it) and, with clean_tmp, cleans queue/tmp, as the run_as user, so root
 * never opens a file in a folder run_as can write. */
static int master_migrate_store(struct master *m, const struct kale_config *cfg, int clean_tmp,
    char **error_r)
{
	int pfd[2], status = 0;
	char buf[512];
	ssize_t n;
	pid_t pid;

	if (!m->drop) {
		if (store_migrate(cfg, error_r) < 0)
			return -1;
		if (clean_tmp)
			master_clean_tmp();
		return 0;
	}
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		*error_r = xstrdup("pipe failed");
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		*error_r = xstrdup("fork failed");
		return -1;
	}
	if (pid == 0) {
		const char *err = NULL;
		char *error = NULL;
		close(pfd[0]);
		if (util_drop_privs(m->uid, m->gid, &err) < 0) {
			if (write(pfd[1], err, strlen(err)) < 0)
				_exit(1);
			_exit(1);
		}
		{
			/* The store is opened by its absolute path: every folder on
			 * the way must let run_as through. Name the one that does not. */
			char path[PATH_MAX];
			util_fmt(path, sizeof(path), "%s", cfg->data_dir);
			for (char *p = path + 1; path[0] == '/'; p++) {
				char c = *p;
				if (c != '/' && c != '\0')
					continue;
				*p = '\0';
				if (access(path, X_OK) < 0) {
					char msg[PATH_MAX + 64];
					util_fmt(msg, sizeof(msg), "%s: cannot pass through %s: %s", cfg->run_as,
					    path, strerror(errno));
					if (write(pfd[1], msg, strlen(msg)) < 0)
						_exit(1);
					_exit(1);
				}
				*p = c;
				if (c == '\0')
					break;
			}
		}
		if (store_migrate(cfg, &error) < 0) {
			const char *e = error ? error : "cannot open the policy store";
			if (write(pfd[1], e, strlen(e)) < 0)
				_exit(1);
			_exit(1);
		}
		if (clean_tmp)
			master_clean_tmp();
		_exit(0);
	}
	close(pfd[1]);
	n = read(pfd[0], buf, sizeof(buf) - 1);
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	buf[n > 0 ? n : 0] = '\0';
	if (asprintf(error_r, "policy store (as %s): %s", cfg->run_as, n > 0 ? buf : "failed") < 0)
		*error_r = NULL;
	return -1;
}

static int master_count_dir(const char *path)
{
	DIR *d = master_opendir(path);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* ---------- children ---------- */

static void master_start(struct master *m, struct master_slot *s);

static void master_restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct master_slot *s = arg;

	(void)fd;
	(void)what;
	if (!s->m->stopping && s->pid == 0)
		master_start(s->m, s);
}

static int master_retired_role(struct master *m, enum master_role role)
{
	for (int i = 0; i < m->n_retired; i++)
		if (m->retired[i].role == role)
			return 1;
	return 0;
}

static int master_role_has(enum master_role role, enum kale_listen_kind k)
{
	switch (role) {
	case ROLE_SMTPD:
		return k == LISTEN_SMTP || k == LISTEN_SUBMISSION || k == LISTEN_SUBMISSIONS || k == LISTEN_LOCAL;
	case ROLE_POP3D: return k == LISTEN_POP3 || k == LISTEN_POP3S;
	case ROLE_IMAPD: return k == LISTEN_IMAP || k == LISTEN_IMAPS;
	default: return 0;
	}
}

static int master_cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* A child keeps stdin/out/err, the instance lock and its own listeners, and
 * closes everything else the master holds: other services' listeners,
 * control connections (kalectl would wait for their end forever), the
 * signalfd, libevent's fds. */
static void master_child_fds(struct master *m, enum master_role role)
{
	int keep[MASTER_MAX_LISTENERS + 2], n = 0, from = 3;

	log_reopen();
	keep[n++] = m->lock_fd;
	for (int i = 0; i < m->n_ls; i++) {
		if (master_role_has(role, m->ls[i].kind))
			keep[n++] = m->ls[i].fd;
		else
			m->ls[i].fd = -1;
	}
	qsort(keep, (size_t)n, sizeof(keep[0]), master_cmp_int);
	for (int i = 0; i < n; i++) {
		if (keep[i] < from)
			continue;
		if (keep[i] > from)
			close_range((unsigned)from, (unsigned)keep[i] - 1, 0);
		from = keep[i] + 1;
	}
	close_range((unsigned)from, ~0U, 0);
}

/* The connection table a role counts its sessions in (NULL: none). */
static struct conntable *master_conns(struct master *m, enum master_role role)
{
	switch (role) {
	case ROLE_SMTPD: return m->conns;
	case ROLE_POP3D: return m->conns_pop3;
	case ROLE_IMAPD: return m->conns_imap;
	default: return NULL;
	}
}

static void master_start(struct master *m, struct master_slot *s)
{
	struct kale_ctx ctx;
	pid_t pid;

	/* Two queue managers must never run at once. */
	if (s->role == ROLE_QMGR && master_retired_role(m, ROLE_QMGR))
		return;
	conntable_reset_worker(master_conns(m, s->role), s->worker_id);
	pid = fork();
	if (pid < 0) {
		log_event(LOG_LVL_ERROR, "master.fork", "error", strerror(errno), NULL);
		s->pid = 0;
		return;
	}
	if (pid > 0) {
		char p[16], w[16];
		s->pid = pid;
		s->started_ms = util_now_ms();
		(void)util_fmt(p, sizeof(p), "%d", (int)pid);
		(void)util_fmt(w, sizeof(w), "%d", s->worker_id);
		log_event(LOG_LVL_INFO, "child.start", "role", master_role_name[s->role], "worker", w,
		    "child", p, NULL);
		return;
	}
	/* child */
	{
		sigset_t all;
		const char *err = NULL;
		int rc = 1;

		for (int sig = 1; sig < NSIG; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				signal(sig, SIG_DFL);
		signal(SIGPIPE, SIG_IGN);
		/* Ctrl-C reaches the whole process group; the master alone decides. */
		signal(SIGINT, SIG_IGN);
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		master_child_fds(m, s->role);
		if (m->drop && util_drop_privs(m->uid, m->gid, &err) < 0) {
			log_event(LOG_LVL_ERROR, "child.privs", "error", err, NULL);
			_exit(1);
		}
		/* After the drop: a change of credentials clears the death signal. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != m->pid)
			_exit(1);
		master_sanitizer_child(s->role);
		memset(&ctx, 0, sizeof(ctx));
		ctx.cfg = &m->cfg;
		ctx.ls = m->ls;
		ctx.n_ls = m->n_ls;
		ctx.tls = m->tls;
		ctx.worker_id = s->worker_id;
		ctx.conn_table = master_conns(m, s->role);
		ctx.brake = m->brake;
		switch (s->role) {
		case ROLE_SMTPD: rc = smtpd_main(&ctx); break;
		case ROLE_QMGR: rc = qmgr_main(&ctx); break;
		case ROLE_POP3D: rc = pop3d_main(&ctx); break;
		case ROLE_IMAPD: rc = imapd_main(&ctx); break;
		case ROLE_PICKUP: rc = pickup_main(&ctx); break;
		}
		_exit(rc);
	}
}

static void master_plan(struct master *m)
{
	m->n_slots = 0;
	if (master_has_kind(m, LISTEN_SMTP, LISTEN_LOCAL))
		for (int i = 0; i < m->nworkers; i++)
			m->slot[m->n_slots++] = (struct master_slot){ .role = ROLE_SMTPD, .worker_id = i };
	m->slot[m->n_slots++] = (struct master_slot){ .role = ROLE_QMGR };
	if (master_has_kind(m, LISTEN_POP3, LISTEN_POP3S))
		m->slot[m->n_slots++] = (struct master_slot){ .role = ROLE_POP3D };
	if (master_has_kind(m, LISTEN_IMAP, LISTEN_IMAPS))
		m->slot[m->n_slots++] = (struct master_slot){ .role = ROLE_IMAPD };
	if (master_has_kind(m, LISTEN_LOCAL, LISTEN_LOCAL))
		m->slot[m->n_slots++] = (struct master_slot){ .role = ROLE_PICKUP };
	for (int i = 0; i < m->n_slots; i++) {
		m->slot[i].m = m;
		m->slot[i].backoff = 1;
		m->slot[i].restart_ev = evtimer_new(m->base, master_restart_cb, &m->slot[i]);
	}
}

static int master_alive(struct master *m)
{
	int n = m->n_retired;

	for (int i = 0; i < m->n_slots; i++)
		if (m->slot[i].pid > 0)
			n++;
	return n;
}

static void master_reap(struct master *m)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		char p[16], st[32];
		struct master_slot *s = NULL;

		(void)util_fmt(p, sizeof(p), "%d", (int)pid);
		if (WIFEXITED(status))
			(void)util_fmt(st, sizeof(st), "exit %d", WEXITSTATUS(status));
		else
			(void)util_fmt(st, sizeof(st), "signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		for (int i = 0; i < m->n_retired; i++)
			if (m->retired[i].pid == pid) {
				enum master_role role = m->retired[i].role;
				m->retired[i] = m->retired[--m->n_retired];
				log_event(LOG_LVL_INFO, "child.retired", "role", master_role_name[role],
				    "child", p, "status", st, NULL);
				if (role == ROLE_QMGR && !m->stopping)
					for (int j = 0; j < m->n_slots; j++)
						if (m->slot[j].role == ROLE_QMGR && m->slot[j].pid == 0)
							master_start(m, &m->slot[j]);
				goto next;
			}
		for (int i = 0; i < m->n_slots; i++)
			if (m->slot[i].pid == pid)
				s = &m->slot[i];
		if (s == NULL)
			continue;
		s->pid = 0;
		if (m->stopping) {
			log_event(LOG_LVL_INFO, "child.stop", "role", master_role_name[s->role], "child", p,
			    "status", st, NULL);
		} else {
			struct timeval tv = { 0, 0 };
			if (util_now_ms() - s->started_ms > 30000)
				s->backoff = 1;
			tv.tv_sec = s->backoff;
			log_event(LOG_LVL_WARN, "child.died", "role", master_role_name[s->role], "child", p,
			    "status", st, "restart_in", s->backoff == 1 ? "1s" : NULL, NULL);
			s->backoff = s->backoff * 2 > 60 ? 60 : s->backoff * 2;
			evtimer_add(s->restart_ev, &tv);
		}
next:;
	}
	if (m->stopping && master_alive(m) == 0)
		event_base_loopexit(m->base, NULL);
}

static void master_kill_cb(evutil_socket_t fd, short what, void *arg)
{
	struct master *m = arg;

	(void)fd;
	(void)what;
	log_event(LOG_LVL_WARN, "master.kill", "note", "children did not stop in time", NULL);
	for (int i = 0; i < m->n_slots; i++)
		if (m->slot[i].pid > 0)
			kill(m->slot[i].pid, SIGKILL);
	for (int i = 0; i < m->n_retired; i++)
		kill(m->retired[i].pid, SIGKILL);
}

static void master_shutdown(struct master *m)
{
	struct timeval tv = { MASTER_STOP_SECS - 1, 0 };

	if (m->stopping)
		return;
	m->stopping = 1;
	log_event(LOG_LVL_INFO, "master.stopping", NULL);
	for (int i = 0; i < m->n_slots; i++) {
		evtimer_del(m->slot[i].restart_ev);
		if (m->slot[i].pid > 0)
			kill(m->slot[i].pid, SIGTERM);
	}
	for (int i = 0; i < m->n_retired; i++)
		kill(m->retired[i].pid, SIGTERM);
	if (master_alive(m) == 0)
		event_base_loopexit(m->base, NULL);
	else
		evtimer_add(m->kill_ev, &tv);
}

/* Reload: a new config is read and checked first; a bad one changes
 * nothing. Then a new generation of children starts, the old smtpd workers
 * finish their sessions (SIGUSR2) and the other old children stop; the new
 * qmgr starts only after the old one has exited. */
static int master_reload(struct master *m, char **error_r)
{
	struct kale_config ncfg;
	SSL_CTX *ntls;
	int relisten;

	memset(&ncfg, 0, sizeof(ncfg));
	if (conf_load(m->cfg.path, &ncfg, error_r) < 0)
		return -1;
	if (strcmp(ncfg.data_dir, m->cfg.data_dir) != 0 || strcmp(ncfg.run_as, m->cfg.run_as) != 0) {
		conf_free(&ncfg);
		*error_r = xstrdup("data_dir and run_as cannot change on reload; restart kaled");
		return -1;
	}
	/* the new children only connect: a new db_url is migrated first */
	if (strcmp(ncfg.db_url, m->cfg.db_url) != 0 && master_migrate_store(m, &ncfg, 0, error_r) < 0) {
		conf_free(&ncfg);
		return -1;
	}
	ntls = tls_server_ctx(ncfg.tls_cert, ncfg.tls_key, ncfg.hostname, error_r);
	if (ntls == NULL) {
		conf_free(&ncfg);
		return -1;
	}
	relisten = 0;
	for (int k = 0; k < LISTEN_KINDS; k++)
		if (memcmp(master_listen_of(&ncfg, (enum kale_listen_kind)k),
		    master_listen_of(&m->cfg, (enum kale_listen_kind)k), sizeof(struct conf_listen)) != 0)
			relisten = 1;
	if (relisten) {
		struct kale_listener old[MASTER_MAX_LISTENERS];
		int n_old = m->n_ls;
		struct kale_config tmp = m->cfg;

		memcpy(old, m->ls, sizeof(old));
		m->cfg = ncfg;
		m->n_ls = 0;
		m->reuse = old;
		m->n_reuse = n_old;
		if (master_bind_all(m, error_r) < 0) {
			m->reuse = NULL;
			m->n_reuse = 0;
			m->cfg = tmp;
			memcpy(m->ls, old, sizeof(old));
			m->n_ls = n_old;
			conf_free(&ncfg);
			SSL_CTX_free(ntls);
			return -1;
		}
		m->reuse = NULL;
		m->n_reuse = 0;
		m->cfg = tmp;
		for (int i = 0; i < n_old; i++) {
			if (old[i].kind == LISTEN_KINDS)
				continue;                       /* taken over */
			if (old[i].kind == LISTEN_LOCAL && m->n_ls < MASTER_MAX_LISTENERS)
				m->ls[m->n_ls++] = old[i];      /* same path: keep it */
			else
				close(old[i].fd);
		}
	}
	conf_free(&m->cfg);
	m->cfg = ncfg;
	log_set_level((enum log_level)m->cfg.log_min_level);
	SSL_CTX_free(m->tls);
	m->tls = ntls;
	log_set_proc("master");
	for (int i = 0; i < m->n_slots; i++) {
		struct master_slot *s = &m->slot[i];
		evtimer_del(s->restart_ev);
		event_free(s->restart_ev);
		if (s->pid > 0 && m->n_retired < MASTER_MAX_RETIRED) {
			kill(s->pid, s->role == ROLE_SMTPD ? SIGUSR2 : SIGTERM);
			m->retired[m->n_retired].pid = s->pid;
			m->retired[m->n_retired].role = s->role;
			m->n_retired++;
		}
	}
	master_plan(m);
	for (int i = 0; i < m->n_slots; i++)
		master_start(m, &m->slot[i]);
	log_event(LOG_LVL_INFO, "master.reload", "listeners", relisten ? "rebound" : "kept", NULL);
	return 0;
}

static void master_signal(struct master *m, int sig)
{
	char *error = NULL;

	switch (sig) {
	case SIGCHLD:
		master_reap(m);
		break;
	case SIGHUP:
		if (!m->stopping && master_reload(m, &error) < 0) {
			log_event(LOG_LVL_ERROR, "master.reload", "error", error ? error : "failed", NULL);
			free(error);
		}
		break;
	default:
		master_shutdown(m);
		break;
	}
}

static void master_signal_cb(evutil_socket_t fd, short what, void *arg)
{
	struct signalfd_siginfo si;

	(void)what;
	while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		master_signal(arg, (int)si.ssi_signo);
}

/* ---------- control socket ---------- */

/* The brute-force brake: what is braked now, the worst keys first. The
 * table is written by the children: only the copies brake_stats() made
 * (bounded, NUL-terminated) are printed. */
static void master_ctl_brake(struct master *m, struct evbuffer *out)
{
	struct brake_params p;
	struct brake_stats st;

	brake_params_conf(&m->cfg, &p);
	if (brake_stats(m->brake, &p, brake_now(), &st) < 0) {
		evbuffer_add_printf(out, "brake: unavailable\n");
		return;
	}
	evbuffer_add_printf(out, "brake: %d addresses (%d refused), %d accounts (%d refused)\n",
	    st.ips, st.ips_blocked, st.accounts, st.accounts_blocked);
	for (int i = 0; i < st.n_top; i++)
		evbuffer_add_printf(out, "brake: %s %s failures %d%s, last %llds ago\n",
		    st.top[i].is_account ? "account" : "address", st.top[i].name, st.top[i].failures,
		    st.top[i].blocked ? " refused" : "", (long long)st.top[i].idle_s);
}

static void master_ctl_status(struct master *m, struct evbuffer *out)
{
	evbuffer_add_printf(out, "ok\ndaemon: running (pid %d)\nhostname: %s\ndata_dir: %s\n",
	    (int)m->pid, m->cfg.hostname, m->cfg.data_dir);
	for (int i = 0; i < m->n_ls; i++)
		evbuffer_add_printf(out, "listen: %s %s%s\n", kale_listen_kind_name(m->ls[i].kind),
		    m->ls[i].name, m->ls[i].implicit_tls ? " (tls)" : "");
	for (int i = 0; i < m->n_slots; i++)
		evbuffer_add_printf(out, "child: %s%s pid %d\n", master_role_name[m->slot[i].role],
		    m->slot[i].role == ROLE_SMTPD ? (char[]){ (char)('0' + m->slot[i].worker_id % 10), 0 } : "",
		    (int)m->slot[i].pid);
	evbuffer_add_printf(out, "queue: incoming %d, hold %d\n",
	    master_count_dir(QUEUE_DIR_INCOMING), master_count_dir(QUEUE_DIR_HOLD));
	master_ctl_brake(m, out);
}

static void master_ctl_write_cb(struct bufferevent *bev, void *arg)
{
	(void)arg;
	bufferevent_free(bev);
}

static void master_ctl_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	(void)arg;
	bufferevent_free(bev);
}

/* "queue ..." commands go to qmgr, the only process that may move queue
 * files (docs/queue.md): the line is passed on its socket, the answer back. */
struct master_fwd {
	struct bufferevent *client, *qmgr;
};

static void master_fwd_free(struct master_fwd *f)
{
	if (f->qmgr)
		bufferevent_free(f->qmgr);
	if (f->client)
		bufferevent_free(f->client);
	free(f);
}

static void master_fwd_client_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	master_fwd_free(arg);
}

static void master_fwd_qmgr_read_cb(struct bufferevent *bev, void *arg)
{
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 65536)
		master_fwd_free(arg);
}

static void master_fwd_qmgr_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct master_fwd *f = arg;
	struct evbuffer *out = bufferevent_get_output(f->client);

	if ((what & BEV_EVENT_EOF) && evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		evbuffer_add_buffer(out, bufferevent_get_input(bev));
	else
		evbuffer_add_printf(out, "error no answer from the queue manager\n");
	bufferevent_free(f->qmgr);
	bufferevent_setcb(f->client, NULL, master_ctl_write_cb, master_ctl_event_cb, NULL);
	bufferevent_enable(f->client, EV_WRITE);
	free(f);
}

static int master_ctl_forward(struct master *m, struct bufferevent *bev, const char *cmd)
{
	struct sockaddr_un sun = { 0 };
	struct timeval tv = { 10, 0 };
	struct master_fwd *f;
	int fd;

	sun.sun_family = AF_UNIX;
	(void)util_fmt(sun.sun_path, sizeof(sun.sun_path), "qmgr.sock");
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || evutil_make_socket_nonblocking(fd) < 0) {
		close(fd);
		return -1;
	}
	f = xcalloc(1, sizeof(*f));
	f->client = bev;
	f->qmgr = bufferevent_socket_new(m->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (f->qmgr == NULL) {
		close(fd);
		free(f);
		return -1;
	}
	bufferevent_setcb(f->qmgr, master_fwd_qmgr_read_cb, NULL, master_fwd_qmgr_event_cb, f);
	bufferevent_set_timeouts(f->qmgr, &tv, &tv);
	bufferevent_enable(f->qmgr, EV_READ | EV_WRITE);
	evbuffer_add_printf(bufferevent_get_output(f->qmgr), "%s\n", cmd);
	bufferevent_disable(bev, EV_READ);
	bufferevent_setcb(bev, NULL, NULL, master_fwd_client_event_cb, f);
	return 0;
}

static void master_ctl_read_cb(struct bufferevent *bev, void *arg)
{
	struct master *m = arg;
	struct evbuffer *in = bufferevent_get_input(bev), *out = bufferevent_get_output(bev);
	size_t len;
	char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
	char *error = NULL;

	if (line == NULL) {
		if (evbuffer_get_length(in) > 1024)
			bufferevent_free(bev);
		return;
	}
	if (strcmp(line, "status") == 0) {
		master_ctl_status(m, out);
	} else if (strcmp(line, "reload") == 0) {
		if (master_reload(m, &error) < 0) {
			evbuffer_add_printf(out, "error %s\n", error ? error : "reload failed");
			log_event(LOG_LVL_ERROR, "master.reload", "error", error, NULL);
			free(error);
		} else {
			evbuffer_add_printf(out, "ok\nreloaded\n");
		}
	} else if (strcmp(line, "flush") == 0) {
		for (int i = 0; i < m->n_slots; i++)
			if (m->slot[i].role == ROLE_QMGR && m->slot[i].pid > 0)
				kill(m->slot[i].pid, SIGUSR1);
		evbuffer_add_printf(out, "ok\nqueue flush requested\n");
	} else if (strncmp(line, "queue ", 6) == 0) {
		if (master_ctl_forward(m, bev, line + 6) == 0) {
			free(line);
			return;
		}
		evbuffer_add_printf(out, "error queue manager not running\n");
	} else {
		evbuffer_add_printf(out, "error unknown command\n");
	}
	free(line);
	bufferevent_disable(bev, EV_READ);
	bufferevent_setcb(bev, NULL, master_ctl_write_cb, master_ctl_event_cb, m);
}

static void master_ctl_accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct master *m = arg;
	struct bufferevent *bev = bufferevent_socket_new(m->base, fd, BEV_OPT_CLOSE_ON_FREE);
	struct timeval tv = { 10, 0 };

	(void)lev;
	(void)sa;
	(void)salen;
	if (bev == NULL) {
		close(fd);
		return;
	}
	bufferevent_setcb(bev, master_ctl_read_cb, NULL, master_ctl_event_cb, m);
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static int master_ctl_open(struct master *m, char **error_r)
{
	struct sockaddr_un sun = { 0 };
	int fd;

	sun.sun_family = AF_UNIX;
	(void)util_fmt(sun.sun_path, sizeof(sun.sun_path), "control.sock");
	unlink(sun.sun_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* The socket stays the master's user's, mode 0600: the children (run_as)
	 * cannot ask the master for anything. Made under a umask rather than
	 * chmod()ed afterwards: a path in data_dir may be swapped for a link. */
	{
		mode_t old = umask(077);
		int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
		umask(old);
		if (rc < 0 || listen(fd, 16) < 0) {
			if (asprintf(error_r, "control socket %s/control.sock: %s", m->cfg.data_dir, strerror(errno)) < 0)
				*error_r = NULL;
			if (fd >= 0)
				close(fd);
			return -1;
		}
	}
	m->ctl = evconnlistener_new(m->base, master_ctl_accept_cb, m, LEV_OPT_CLOSE_ON_FREE, -1, fd);
	return m->ctl ? 0 : -1;
}

/* ---------- entry points ---------- */

int master_check(const char *path)
{
	struct kale_config cfg;
	char *error = NULL;
	struct stat sb;

	memset(&cfg, 0, sizeof(cfg));
	if (conf_load(path, &cfg, &error) < 0) {
		fprintf(stderr, "%s\n", error ? error : "cannot load config");
		free(error);
		return 1;
	}
	if (stat(cfg.data_dir, &sb) == 0) {
		if (chdir(cfg.data_dir) < 0 || store_migrate(&cfg, &error) < 0) {
			fprintf(stderr, "%s:0: policy store: %s\n", path, error ? error : strerror(errno));
			free(error);
			conf_free(&cfg);
			return 1;
		}
	}
	printf("%s: ok\n", path);
	conf_free(&cfg);
	return 0;
}

int master_run(const char *path)
{
	struct master *m = xcalloc(1, sizeof(*m));
	char *error = NULL;
	int rc = 1;
	static const int sigs[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT };

	m->pid = getpid();
	if (conf_load(path, &m->cfg, &error) < 0) {
		fprintf(stderr, "%s\n", error ? error : "cannot load config");
		goto out;
	}
	log_init("master", m->cfg.log_syslog);
	log_set_level((enum log_level)m->cfg.log_min_level);
	signal(SIGPIPE, SIG_IGN);
	umask(027);
	if (geteuid() == 0) {
		if (util_user_ids(m->cfg.run_as, &m->uid, &m->gid) < 0) {
			if (asprintf(&error, "%s: run_as user '%s' does not exist", path, m->cfg.run_as) < 0)
				error = NULL;
			fprintf(stderr, "%s\n", error ? error : "bad run_as");
			goto out;
		}
		m->drop = m->uid != 0;
	}
	if (master_prepare_dir(m, &error) < 0 || master_lock(m, &error) < 0 ||
	    master_migrate_store(m, &m->cfg, 1, &error) < 0)
		goto fail;
	/* The control socket exists before any listener: once a port answers,
	 * kalectl can talk to this master. */
	m->base = event_base_new();
	if (master_ctl_open(m, &error) < 0)
		goto fail;
	m->tls = tls_server_ctx(m->cfg.tls_cert, m->cfg.tls_key, m->cfg.hostname, &error);
	if (m->tls == NULL)
		goto fail;
	if (master_bind_all(m, &error) < 0 || master_bind_local(m, &error) < 0)
		goto fail;
	m->nworkers = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (m->nworkers < 1)
		m->nworkers = 1;
	if (m->nworkers > 64)
		m->nworkers = 64;
	m->conns = conntable_create(m->nworkers, m->cfg.max_connections);
	m->conns_pop3 = conntable_create(1, m->cfg.max_connections);
	m->conns_imap = conntable_create(1, m->cfg.max_connections);
	if (m->conns == NULL || m->conns_pop3 == NULL || m->conns_imap == NULL) {
		error = xstrdup("cannot map the connection table");
		goto fail;
	}
	m->brake = brake_create(BRAKE_SLOTS);
	if (m->brake == NULL) {
		error = xstrdup("cannot map the brute-force brake table");
		goto fail;
	}
	{
		/* Signals arrive through a signalfd, so libevent's signal handling
		 * stays free for the children's own event loops. */
		sigset_t set;
		sigemptyset(&set);
		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
			sigaddset(&set, sigs[i]);
		sigprocmask(SIG_BLOCK, &set, NULL);
		m->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
		if (m->sig_fd < 0) {
			error = xstrdup("signalfd failed");
			goto fail;
		}
		m->sig_ev = event_new(m->base, m->sig_fd, EV_READ | EV_PERSIST, master_signal_cb, m);
		event_add(m->sig_ev, NULL);
	}
	m->kill_ev = evtimer_new(m->base, master_kill_cb, m);
	master_plan(m);
	{
		char nw[16];
		(void)util_fmt(nw, sizeof(nw), "%d", m->nworkers);
		log_event(LOG_LVL_INFO, "master.start", "config", path, "data_dir", m->cfg.data_dir,
		    "workers", nw, "run_as", m->drop ? m->cfg.run_as : NULL, NULL);
	}
	for (int i = 0; i < m->n_ls; i++)
		log_event(LOG_LVL_INFO, "master.listen", "kind", kale_listen_kind_name(m->ls[i].kind),
		    "addr", m->ls[i].name, NULL);
	for (int i = 0; i < m->n_slots; i++)
		master_start(m, &m->slot[i]);
	event_base_dispatch(m->base);
	master_reap(m);
	unlink("control.sock");
	log_event(LOG_LVL_INFO, "master.stop", NULL);
	rc = 0;
	goto out;
fail:
	if (m->ctl)
		unlink("control.sock");
	fprintf(stderr, "kaled: %s\n", error ? error : "start-up failed");
	log_event(LOG_LVL_ERROR, "master.fail", "error", error, NULL);
out:
	free(error);
	if (m->ctl)
		evconnlistener_free(m->ctl);
	if (m->sig_ev)
		event_free(m->sig_ev);
	if (m->sig_fd > 0)
		close(m->sig_fd);
	for (int i = 0; i < m->n_slots; i++)
		if (m->slot[i].restart_ev)
			event_free(m->slot[i].restart_ev);
	if (m->kill_ev)
		event_free(m->kill_ev);
	if (m->base)
		event_base_free(m->base);
	master_close_listeners(m);
	if (m->lock_fd > 0)
		close(m->lock_fd);
	SSL_CTX_free(m->tls);
	brake_free(&m->brake);
	conf_free(&m->cfg);
	free(m);
	return rc;
}
