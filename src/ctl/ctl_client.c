/* ctl_client: connects to kaled's control socket, sends one command line and
 * reads the whole reply (bounded in size and time). Runs in kalectl and in
 * other command-line tools; never in the daemon. */
#include "ctl/ctl_client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "lib/util.h"

static void ctl_set(char **dst, const char *s, size_t len)
{
	if (dst != NULL)
		*dst = xstrndup(s, len);
}

/* The control socket is root's (mode 0600), so that kaled's unprivileged
 * children cannot drive the master; kalectl, which drops to run_as early,
 * connects once while it is still root and keeps the connection here. */
static int ctl_pre_fd = -1;
static char ctl_pre_path[108];

void ctl_preconnect(const char *sock_path)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (ctl_pre_fd >= 0 || util_fmt(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path) < 0)
		return;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		close(fd);
		return;
	}
	ctl_pre_fd = fd;
	util_fmt(ctl_pre_path, sizeof(ctl_pre_path), "%s", sock_path);
}

int ctl_call(const char *sock_path, const char *cmd, char **reply_r, char **error_r)
{
	struct sockaddr_un sun;
	struct timeval tv = { .tv_sec = CTL_TIMEOUT_SEC };
	char *buf = NULL, *line;
	size_t len = 0, cmdlen = strlen(cmd);
	int fd = -1, rc = -2, pre = 0;

	if (reply_r != NULL)
		*reply_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(sock_path) >= sizeof(sun.sun_path)) {
		ctl_set(error_r, "socket path too long", 20);
		return -1;
	}
	if (cmdlen == 0 || memchr(cmd, '\n', cmdlen) != NULL || memchr(cmd, '\r', cmdlen) != NULL) {
		ctl_set(error_r, "bad command", 11);
		return -2;
	}
	memcpy(sun.sun_path, sock_path, strlen(sock_path) + 1);
	if (ctl_pre_fd >= 0 && strcmp(ctl_pre_path, sock_path) == 0) {
		fd = ctl_pre_fd;
		ctl_pre_fd = -1;
		pre = 1;
	} else {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	}
	if (fd < 0) {
		ctl_set(error_r, strerror(errno), strlen(strerror(errno)));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!pre && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		const char *e = strerror(errno);
		ctl_set(error_r, e, strlen(e));
		rc = -1;
		goto out;
	}
	if (fs_write_all(fd, cmd, cmdlen) < 0 || fs_write_all(fd, "\n", 1) < 0) {
		ctl_set(error_r, "write to control socket failed", 30);
		goto out;
	}
	shutdown(fd, SHUT_WR);
	if (fs_read_to_end(fd, CTL_REPLY_MAX, &buf, &len) < 0) {
		const char *e = errno == E2BIG ? "reply too long" : errno == EAGAIN ||
		    errno == EWOULDBLOCK ? "daemon did not answer in time" : strerror(errno);
		ctl_set(error_r, e, strlen(e));
		goto out;
	}
	if (memchr(buf, '\0', len) != NULL) {
		ctl_set(error_r, "malformed reply", 15);
		goto out;
	}
	line = strchr(buf, '\n');
	{
		size_t l1 = line ? (size_t)(line - buf) : len;
		const char *rest = line ? line + 1 : buf + len;
		if (l1 > 0 && buf[l1 - 1] == '\r')
			l1--;
		if (l1 == 2 && memcmp(buf, "ok", 2) == 0) {
			ctl_set(reply_r, rest, strlen(rest));
			rc = 0;
		} else if (l1 >= 5 && memcmp(buf, "error", 5) == 0 && (l1 == 5 || buf[5] == ' ')) {
			ctl_set(error_r, l1 > 6 ? buf + 6 : "error", l1 > 6 ? l1 - 6 : 5);
			ctl_set(reply_r, rest, strlen(rest));
		} else {
			ctl_set(error_r, "malformed reply", 15);
		}
	}
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}
