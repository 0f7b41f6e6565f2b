/* ctl_queue: `kalectl status`, `reload` (through the control socket),
 * `queue list` / `queue show` (reading the spool directly, read-only) and
 * `queue flush|hold|release|delete|bounce` (through the control socket to
 * qmgr when the daemon runs, else on the spool itself via qmgr_offline()).
 * Runs only in kalectl, inside data_dir. */
#include "ctl/ctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl_client.h"
#include "lib/util.h"
#include "queue/qmgr.h"
#include "queue/queue_file.h"

#define CTL_SOCK "control.sock"       /* relative to data_dir */
#define CTL_SHOW_HEADER_LINES 50
#define CTL_SHOW_LINE_MAX 998

struct ctl_qent {
	char qid[32];
	const char *state;
	const char *dir;
};

static int ctl_qent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ctl_qent *)a)->qid, ((const struct ctl_qent *)b)->qid);
}

/* Lists the queue ids in dir (missing dir = none). */
static int ctl_queue_scan(const char *dir, const char *state, struct ctl_qent **ents, int *n)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return errno == ENOENT ? 0 : -1;
	while ((de = readdir(d)) != NULL) {
		struct ctl_qent *e;
		if (!queue_qid_valid(de->d_name) || strlen(de->d_name) >= sizeof(e->qid))
			continue;
		*ents = xrealloc(*ents, sizeof(**ents) * (size_t)(*n + 1));
		e = &(*ents)[(*n)++];
		memcpy(e->qid, de->d_name, strlen(de->d_name) + 1);
		e->state = state;
		e->dir = dir;
	}
	closedir(d);
	return 0;
}

static int ctl_queue_all(struct ctl_qent **ents, int *n)
{
	*ents = NULL;
	*n = 0;
	if (ctl_queue_scan(QUEUE_DIR_INCOMING, "queued", ents, n) < 0 ||
	    ctl_queue_scan(QUEUE_DIR_HOLD, "held", ents, n) < 0) {
		ctl_fail("cannot read the queue: %s", strerror(errno));
		free(*ents);
		*ents = NULL;
		return -1;
	}
	if (*n > 1)
		qsort(*ents, (size_t)*n, sizeof(**ents), ctl_qent_cmp);
	return 0;
}

/* Opens and reads one queue file; fd stays open in *fd_r when fd_r != NULL.
 * 0 ok, 1 no such file, -1 unreadable (*error_r). */
static int ctl_queue_read(const struct ctl_qent *e, struct queue_env *env, int *fd_r,
    const char **error_r)
{
	char path[128];
	int fd;

	memset(env, 0, sizeof(*env));
	if (util_fmt(path, sizeof(path), "%s/%s", e->dir, e->qid) < 0) {
		*error_r = "path too long";
		return -1;
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		*error_r = strerror(errno);
		return errno == ENOENT ? 1 : -1;
	}
	if (queue_file_read_env(fd, env, error_r) < 0) {
		close(fd);
		return -1;
	}
	if (fd_r != NULL)
		*fd_r = fd;
	else
		close(fd);
	return 0;
}

static int ctl_queue_list(int json)
{
	static const char *const hdr[6] = { "QID", "ARRIVAL", "SIZE", "SENDER", "RCPTS", "STATE" };
	struct ctl_qent *ents;
	struct ctl_table t;
	json_t *arr = NULL;
	int n;

	if (ctl_queue_all(&ents, &n) < 0)
		return CTL_EXIT_FAIL;
	if (json)
		arr = json_array();
	else
		ctl_table_init(&t, 6, hdr);
	for (int i = 0; i < n; i++) {
		struct queue_env env;
		const char *err = NULL;
		char when[32], size[32], nr[16];

		int r = ctl_queue_read(&ents[i], &env, NULL, &err);
		if (r != 0) {
			/* moved by qmgr meanwhile (1), or broken: say so, go on */
			if (r < 0)
				fprintf(stderr, "kalectl: %s: %s\n", ents[i].qid, err);
			queue_env_free(&env);
			continue;
		}
		ctl_fmt_time(env.arrival, when);
		if (json) {
			json_t *j = json_object(), *rc = json_array();
			json_object_set_new(j, "qid", ctl_json_str(ents[i].qid));
			json_object_set_new(j, "arrival", json_integer(env.arrival));
			json_object_set_new(j, "time", ctl_json_str(when));
			json_object_set_new(j, "size", json_integer((json_int_t)env.body_len));
			json_object_set_new(j, "sender", ctl_json_str(env.sender ? env.sender : ""));
			json_object_set_new(j, "rcpt_count", json_integer(env.n_rcpt));
			for (int r = 0; r < env.n_rcpt; r++)
				json_array_append_new(rc, ctl_json_str(env.rcpt[r].addr));
			json_object_set_new(j, "recipients", rc);
			json_object_set_new(j, "state", ctl_json_str(ents[i].state));
			json_array_append_new(arr, j);
		} else {
			const char *sender = env.sender && env.sender[0] ? env.sender : "<>";
			const char *cells[6] = { ents[i].qid, when, size, sender, nr, ents[i].state };
			util_fmt(size, sizeof(size), "%llu", (unsigned long long)env.body_len);
			util_fmt(nr, sizeof(nr), "%d", env.n_rcpt);
			ctl_table_add(&t, cells);
		}
		queue_env_free(&env);
	}
	if (json) {
		json_dumpf(arr, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		putchar('\n');
		json_decref(arr);
	} else {
		ctl_table_print(&t, stdout);
		ctl_table_free(&t);
	}
	free(ents);
	return CTL_EXIT_OK;
}

/* Prints s with control characters (but tab, and newline if keep_nl) made '?'. */
static void ctl_put_clean_nl(const char *s, size_t len, int keep_nl)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '\n' && keep_nl)
			putchar(ch);
		else
			putchar((ch < 0x20 && ch != '\t') || ch == 0x7f ? '?' : ch);
	}
}

static void ctl_put_clean(const char *s, size_t len)
{
	ctl_put_clean_nl(s, len, 0);
}

static void ctl_show_field(const char *name, const char *v)
{
	printf("%-10s ", name);
	ctl_put_clean(v, strlen(v));
	putchar('\n');
}

/* Prints up to CTL_SHOW_HEADER_LINES lines of the header block. */
static void ctl_show_headers(int fd, uint64_t body_len)
{
	FILE *fp;
	char *line = xmalloc(CTL_SHOW_LINE_MAX + 2);
	uint64_t off = 0;
	int lines = 0;

	if (lseek(fd, 0, SEEK_SET) < 0 || (fp = fdopen(dup(fd), "r")) == NULL) {
		free(line);
		return;
	}
	while (lines < CTL_SHOW_HEADER_LINES && off < body_len &&
	    fgets(line, CTL_SHOW_LINE_MAX + 2, fp) != NULL) {
		size_t len = strlen(line);
		if (off + len > body_len)
			len = (size_t)(body_len - off);
		off += len;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (len == 0)
			break;          /* end of the header */
		ctl_put_clean(line, len);
		putchar('\n');
		lines++;
	}
	fclose(fp);
	free(line);
}

static int ctl_queue_show(const char *qid)
{
	struct ctl_qent e;
	struct queue_env env;
	const char *err = NULL;
	char when[32], buf[64];
	unsigned char *done = NULL;
	int fd = -1, dfd;

	if (!queue_qid_valid(qid))
		return ctl_usage("bad queue id '%.50s'", qid);
	memset(&e, 0, sizeof(e));
	memcpy(e.qid, qid, strlen(qid) + 1);
	e.dir = QUEUE_DIR_INCOMING;
	e.state = "queued";
	if (ctl_queue_read(&e, &env, &fd, &err) == 1) {
		e.dir = QUEUE_DIR_HOLD;
		e.state = "held";
		if (ctl_queue_read(&e, &env, &fd, &err) == 1)
			return ctl_fail("no message %s in the queue", qid);
	}
	if (fd < 0) {
		queue_env_free(&env);
		return ctl_fail("%s: %s", qid, err ? err : "unreadable");
	}
	ctl_fmt_time(env.arrival, when);
	ctl_show_field("qid:", qid);
	ctl_show_field("state:", e.state);
	ctl_show_field("arrival:", when);
	util_fmt(buf, sizeof(buf), "%llu", (unsigned long long)env.body_len);
	ctl_show_field("size:", buf);
	ctl_show_field("client:", env.client_ip && env.client_ip[0] ? env.client_ip : "(local)");
	ctl_show_field("helo:", env.helo ? env.helo : "");
	ctl_show_field("sender:", env.sender && env.sender[0] ? env.sender : "<>");
	if (env.auth_user)
		ctl_show_field("auth:", env.auth_user);
	if (env.envid)
		ctl_show_field("envid:", env.envid);
	if (env.ret)
		ctl_show_field("ret:", env.ret == 1 ? "FULL" : "HDRS");
	if (env.smtputf8)
		ctl_show_field("smtputf8:", "yes");
	if (env.body8bit)
		ctl_show_field("8bitmime:", "yes");
	if (env.n_rcpt > 0) {
		done = xcalloc((size_t)env.n_rcpt, 1);
		dfd = open(QUEUE_DIR_DONE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			if (queue_done_read(dfd, qid, done, env.n_rcpt) < 0)
				memset(done, 0, (size_t)env.n_rcpt);
			close(dfd);
		}
	}
	for (int i = 0; i < env.n_rcpt; i++) {
		const struct queue_rcpt *r = &env.rcpt[i];
		printf("%-10s ", "rcpt:");
		ctl_put_clean(r->addr, strlen(r->addr));
		if (r->orig && strcmp(r->orig, r->addr) != 0) {
			printf(" (to ");
			ctl_put_clean(r->orig, strlen(r->orig));
			putchar(')');
		}
		printf(" %s\n", done[i] ? "done" : "pending");
	}
	printf("\n");
	ctl_show_headers(fd, env.body_len);
	free(done);
	close(fd);
	queue_env_free(&env);
	return CTL_EXIT_OK;
}

static void ctl_print_reply(const char *reply);

/* flush [QID] | hold QID | release QID | delete QID | bounce QID */
static int ctl_queue_action(struct ctl *c, const char *verb, const char *qid)
{
	char cmd[128], *reply = NULL, *err = NULL;
	int rc;

	if (util_fmt(cmd, sizeof(cmd), "queue %s%s%s", verb, qid ? " " : "", qid ? qid : "") < 0)
		return ctl_usage("bad queue id");
	if (ctl_enter(c) < 0)
		return CTL_EXIT_FAIL;
	rc = ctl_call(CTL_SOCK, cmd, &reply, &err);
	if (rc == -1) {
		/* daemon not running: act on the spool directly */
		free(reply);
		free(err);
		reply = err = NULL;
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (qmgr_offline(&c->cfg, c->st, cmd + 6, &reply) < 0) {
			ctl_fail("queue %s: %s", verb, reply);
			free(reply);
			return CTL_EXIT_FAIL;
		}
		rc = 0;
	}
	if (rc == 0)
		ctl_print_reply(reply);
	else
		ctl_fail("queue %s: %s", verb, err ? err : "failed");
	free(reply);
	free(err);
	return rc == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

int ctl_queue_cmd(struct ctl *c, int argc, char **argv)
{
	const char *pos[1];
	int json = 0, npos = 0;
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "list") == 0) {
		const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_enter(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_queue_list(json);
	}
	if (strcmp(sub, "show") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (!queue_qid_valid(pos[0]))
			return ctl_usage("bad queue id '%.50s'", pos[0]);
		if (ctl_enter(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_queue_show(pos[0]);
	}
	if (strcmp(sub, "flush") == 0 || strcmp(sub, "hold") == 0 || strcmp(sub, "release") == 0 ||
	    strcmp(sub, "delete") == 0 || strcmp(sub, "bounce") == 0) {
		int flush = strcmp(sub, "flush") == 0;
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, flush ? 0 : 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (npos == 1 && !queue_qid_valid(pos[0]))
			return ctl_usage("bad queue id '%.50s'", pos[0]);
		return ctl_queue_action(c, sub, npos == 1 ? pos[0] : NULL);
	}
	return ctl_usage("unknown queue command '%.50s'", sub);
}

static void ctl_print_reply(const char *reply)
{
	size_t len = strlen(reply);

	ctl_put_clean_nl(reply, len, 1);
	if (len > 0 && reply[len - 1] != '\n')
		putchar('\n');
}

static int ctl_count_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (queue_qid_valid(de->d_name))
			n++;
	closedir(d);
	return n;
}

int ctl_queue_status(struct ctl *c, int argc, char **argv)
{
	char *reply = NULL, *err = NULL;
	int rc;

	if (ctl_getopt(argc, argv, NULL, NULL, 0, 0, NULL) < 0)
		return ctl_usage(NULL);
	if (ctl_enter(c) < 0)
		return CTL_EXIT_FAIL;
	rc = ctl_call(CTL_SOCK, "status", &reply, &err);
	if (rc == 0) {
		ctl_print_reply(reply);
	} else if (rc == -1) {
		printf("daemon: not running\n");
		printf("queue: %d queued, %d held\n", ctl_count_dir(QUEUE_DIR_INCOMING),
		    ctl_count_dir(QUEUE_DIR_HOLD));
	} else {
		ctl_fail("status: %s", err ? err : "error");
	}
	free(reply);
	free(err);
	return rc == -2 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
}

int ctl_queue_reload(struct ctl *c, int argc, char **argv)
{
	char *reply = NULL, *err = NULL;
	int rc;

	if (ctl_getopt(argc, argv, NULL, NULL, 0, 0, NULL) < 0)
		return ctl_usage(NULL);
	if (ctl_enter(c) < 0)
		return CTL_EXIT_FAIL;
	rc = ctl_call(CTL_SOCK, "reload", &reply, &err);
	if (rc == 0)
		ctl_print_reply(reply[0] ? reply : "reloaded\n");
	else if (rc == -1)
		ctl_fail("daemon not running");
	else
		ctl_fail("reload failed: %s", err ? err : "error");
	free(reply);
	free(err);
	return rc == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}
