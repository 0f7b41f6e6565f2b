/* pickup: kaled's child that hands the files kale-sendmail left in
 * <data_dir>/maildrop (kaled was down) to smtpd over sendmail.sock, as
 * Postfix's pickup does. Runs as run_as, blocking, one file at a time. The
 * sender's identity is the file's owner: it is passed with XUID, so smtpd
 * applies the same rules (sender, headers, Received) as to kale-sendmail.
 * A file is removed only after smtpd's 250; a 4xx or no answer leaves it for
 * the next pass; a refused one is kept as refused.NAME and logged; a
 * malformed one as bad.NAME. Leftover ".NAME" files (a kale-sendmail that
 * died while writing) are removed after an hour. */
#include "sendmail/maildrop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include "conf/conf.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lib/proc.h"
#include "sendmail/smc.h"

#define PICKUP_TICK_MS     2000     /* a pass at least this often */
#define PICKUP_BATCH       500      /* files per pass */
#define PICKUP_STALE       3600     /* seconds before a ".NAME" is garbage */
#define PICKUP_TIMEOUT     60       /* seconds per socket read/write */

static volatile sig_atomic_t pickup_stop;

static void pickup_on_term(int sig)
{
	(void)sig;
	pickup_stop = 1;
}

static void pickup_set_aside(int dfd, const char *name, const char *prefix)
{
	char to[300];

	if (util_fmt(to, sizeof(to), "%s%s", prefix, name) == 0 && renameat(dfd, name, dfd, to) == 0)
		return;
	log_event(LOG_LVL_ERROR, "pickup.error", "file", name, "op", "rename", "error", strerror(errno),
	    NULL);
}

/* One file. 0 when the daemon could not be reached (the pass stops), else
 * 1: handed over, set aside, or left for a later pass after a 4xx. */
static int pickup_one(const struct kale_config *cfg, int dfd, const char *name)
{
	struct maildrop_env env;
	struct smc *c;
	struct stat sb;
	char *buf, uid[24];
	size_t max = (size_t)cfg->message_size + 65536 + MAILDROP_RCPT_MAX * 330, got = 0;
	int fd, rc, connected = 1;

	fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		log_event(LOG_LVL_WARN, "pickup.bad", "file", name, "reason", strerror(errno), NULL);
		if (errno == ELOOP)
			unlinkat(dfd, name, 0);    /* a link: removing it touches nothing else */
		else
			pickup_set_aside(dfd, name, "bad.");
		return 1;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_nlink != 1 || (size_t)sb.st_size > max) {
		log_event(LOG_LVL_WARN, "pickup.bad", "file", name,
		    "reason", "not a plain file with one link, or too large", NULL);
		close(fd);
		pickup_set_aside(dfd, name, "bad.");
		return 1;
	}
	buf = xmalloc((size_t)sb.st_size + 1);
	while (got < (size_t)sb.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	(void)util_fmt(uid, sizeof(uid), "%ld", (long)sb.st_uid);
	if (got != (size_t)sb.st_size || maildrop_parse(buf, got, &env) < 0) {
		log_event(LOG_LVL_WARN, "pickup.bad", "file", name, "uid", uid,
		    "reason", "not a maildrop file", NULL);
		free(buf);
		pickup_set_aside(dfd, name, "bad.");
		return 1;
	}
	c = xcalloc(1, sizeof(*c));
	c->fd = -1;
	if (smc_connect(c, cfg->data_dir, PICKUP_TIMEOUT) < 0) {
		rc = SMC_TEMPFAIL;
		connected = 0;
	} else {
		rc = smc_send(c, cfg->hostname, (long)sb.st_uid, env.sender, (char *const *)env.rcpt,
		    env.n_rcpt, env.msg, env.msg_len);
	}
	smc_close(c);
	if (rc == SMC_TEMPFAIL && connected && time(NULL) - sb.st_mtime > cfg->max_age) {
		rc = SMC_FAIL;          /* refused for longer than mail may wait */
		(void)util_fmt(c->error + strlen(c->error), sizeof(c->error) - strlen(c->error),
		    " (for longer than [queue] max_age)");
	}
	if (rc == SMC_OK) {
		if (unlinkat(dfd, name, 0) < 0)
			log_event(LOG_LVL_ERROR, "pickup.error", "file", name, "op", "unlink",
			    "error", strerror(errno), NULL);
		else
			log_event(LOG_LVL_INFO, "pickup.queued", "file", name, "uid", uid,
			    "from", env.sender, NULL);
	} else if (rc == SMC_FAIL) {
		log_event(LOG_LVL_ERROR, "pickup.refused", "file", name, "uid", uid,
		    "from", env.sender, "reply", c->error, NULL);
		pickup_set_aside(dfd, name, "refused.");
	} else {
		log_event(LOG_LVL_WARN, "pickup.deferred", "file", name, "uid", uid,
		    "reason", c->error, NULL);
	}
	free(c);
	free(buf);
	return rc == SMC_TEMPFAIL && !connected ? 0 : 1;
}

/* One pass over the folder. */
static void pickup_pass(const struct kale_config *cfg, int dfd)
{
	int lfd = dup(dfd), n = 0;
	DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
	struct dirent *de;
	time_t now = time(NULL);

	if (d == NULL) {
		if (lfd >= 0)
			close(lfd);
		return;
	}
	rewinddir(d);
	while (!pickup_stop && n < PICKUP_BATCH && (de = readdir(d)) != NULL) {
		const char *name = de->d_name;
		if (name[0] == '.') {
			struct stat sb;
			if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
			    fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
			    now - sb.st_mtime > PICKUP_STALE)
				unlinkat(dfd, name, 0);
			continue;
		}
		if (strncmp(name, "bad.", 4) == 0 || strncmp(name, "refused.", 8) == 0)
			continue;
		n++;
		if (pickup_one(cfg, dfd, name) == 0)
			break;            /* the daemon is not taking mail: later */
	}
	closedir(d);
}

int pickup_main(struct kale_ctx *ctx)
{
	struct sigaction sa;
	struct pollfd pfd;
	int dfd, ifd;

	log_set_proc("pickup");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = pickup_on_term;
	sigaction(SIGTERM, &sa, NULL);        /* no SA_RESTART: poll() returns */
	signal(SIGPIPE, SIG_IGN);
	dfd = open(MAILDROP_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		log_event(LOG_LVL_ERROR, "pickup.error", "op", "open", "file", MAILDROP_DIR,
		    "error", strerror(errno), NULL);
		return 1;
	}
	ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ifd >= 0 && inotify_add_watch(ifd, MAILDROP_DIR, IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW) < 0) {
		close(ifd);
		ifd = -1;
	}
	while (!pickup_stop) {
		char ev[4096];
		pickup_pass(ctx->cfg, dfd);
		pfd.fd = ifd;
		pfd.events = POLLIN;
		if (poll(&pfd, ifd >= 0 ? 1 : 0, PICKUP_TICK_MS) > 0)
			while (read(ifd, ev, sizeof(ev)) > 0)
				;
	}
	if (ifd >= 0)
		close(ifd);
	close(dfd);
	return 0;
}
