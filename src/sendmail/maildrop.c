/* maildrop: the file format and its writer (kale-sendmail); the reader is
 * the pickup process (pickup.c). See maildrop.h. */
#include "sendmail/maildrop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "lib/util.h"

static int maildrop_line(int fd, const char *tag, const char *value)
{
	return fs_write_all(fd, tag, strlen(tag)) < 0 || fs_write_all(fd, value, strlen(value)) < 0 ||
	    fs_write_all(fd, "\n", 1) < 0 ? -1 : 0;
}

int maildrop_write(const char *data_dir, const char *sender, char *const *rcpt, int n_rcpt,
    const char *msg, size_t len, char *err, size_t cap)
{
	char tmp[4096], dst[4096], name[64];
	unsigned long long rnd = 0;
	int fd, e;

	if (n_rcpt < 1 || n_rcpt > MAILDROP_RCPT_MAX || strchr(sender, '\n') != NULL) {
		(void)util_fmt(err, cap, "bad envelope");
		return -1;
	}
	if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		rnd ^= (unsigned long long)clock() << 20;
	if (util_fmt(name, sizeof(name), "%lld.%d.%016llx", (long long)time(NULL), (int)getpid(),
	    rnd) < 0 || util_fmt(dst, sizeof(dst), "%s/" MAILDROP_DIR "/%s", data_dir, name) < 0 ||
	    util_fmt(tmp, sizeof(tmp), "%s/" MAILDROP_DIR "/.%s", data_dir, name) < 0) {
		(void)util_fmt(err, cap, "data_dir too long");
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		(void)util_fmt(err, cap, "%s: %s", tmp, strerror(errno));   /* message text: may be cut */
		return -1;
	}
	/* the pickup runs as run_as: "others" may read, the folder hides it */
	if (fchmod(fd, 0604) < 0 || fs_write_all(fd, MAILDROP_MAGIC, strlen(MAILDROP_MAGIC)) < 0 ||
	    maildrop_line(fd, "S ", sender) < 0)
		goto fail;
	for (int i = 0; i < n_rcpt; i++)
		if (strchr(rcpt[i], '\n') != NULL || maildrop_line(fd, "R ", rcpt[i]) < 0)
			goto fail;
	if (fs_write_all(fd, "\n", 1) < 0 || fs_write_all(fd, msg, len) < 0 || fsync(fd) < 0 ||
	    rename(tmp, dst) < 0 || syncfs(fd) < 0)
		goto fail;
	close(fd);
	return 0;
fail:
	e = errno;
	(void)util_fmt(err, cap, "%s: %s", tmp, strerror(e ? e : EIO));   /* may be cut */
	close(fd);
	unlink(tmp);
	unlink(dst);
	return -1;
}

int maildrop_parse(char *buf, size_t len, struct maildrop_env *e)
{
	size_t ml = strlen(MAILDROP_MAGIC), i;

	memset(e, 0, sizeof(*e));
	if (len < ml || memcmp(buf, MAILDROP_MAGIC, ml) != 0)
		return -1;
	i = ml;
	for (;;) {
		char *nl = i < len ? memchr(buf + i, '\n', len - i) : NULL;
		char *line = buf + i;
		if (nl == NULL)
			return -1;
		*nl = '\0';
		i = (size_t)(nl - buf) + 1;
		if (nl == line)
			break;                  /* end of the envelope */
		/* a NUL in an envelope line would cut it short (or pass for the
		 * empty line): refused */
		if (memchr(line, '\0', (size_t)(nl - line)) != NULL || line[1] != ' ' ||
		    strlen(line + 2) > 320)
			return -1;
		for (const char *p = line + 2; *p; p++)
			if ((unsigned char)*p < 0x21 || *p == 0x7f || *p == '<' || *p == '>')
				return -1;
		if (line[0] == 'S' && e->sender == NULL) {
			e->sender = line + 2;
		} else if (line[0] == 'R' && e->n_rcpt < MAILDROP_RCPT_MAX && line[2] != '\0') {
			e->rcpt[e->n_rcpt++] = line + 2;
		} else {
			return -1;
		}
	}
	if (e->sender == NULL || e->n_rcpt == 0)
		return -1;
	e->msg = buf + i;
	e->msg_len = len - i;
	return 0;
}
