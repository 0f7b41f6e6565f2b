/* log: formats events as logfmt (ts=... level=... event=... key=value) and
 * writes each as one write(2) to stderr so lines from processes never mix. */
#include "lib/log.h"
#include "lib/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

static char log_proc[32] = "kale";
static int log_syslog;
static enum log_level log_min = LOG_LVL_INFO;

void log_set_level(enum log_level min)
{
	log_min = min;
}

void log_init(const char *proc, int use_syslog)
{
	log_set_proc(proc);
	log_syslog = use_syslog;
	if (use_syslog)
		openlog("kale", LOG_PID, LOG_MAIL);
}

/* After fork, before the child closes the fds it does not own: syslog's
 * socket is opened again on the next line. */
void log_reopen(void)
{
	if (log_syslog) {
		closelog();
		openlog("kale", LOG_PID, LOG_MAIL);
	}
}

void log_set_proc(const char *proc)
{
	(void)util_fmt(log_proc, sizeof(log_proc), "%s", proc);   /* a short role name */
}

static const char log_hex[] = "0123456789abcdef";

/* Appends a value, quoted when it holds spaces, quotes, '=' or control bytes. */
static size_t log_put(char *buf, size_t off, size_t cap, const char *s)
{
	int quote = (*s == '\0');
	for (const char *p = s; *p; p++)
		if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20 || *p == 0x7f)
			quote = 1;
	if (!quote) {
		size_t n = strlen(s);
		if (off + n >= cap)
			n = cap - off - 1;
		memcpy(buf + off, s, n);
		return off + n;
	}
	if (off + 1 < cap)
		buf[off++] = '"';
	for (const char *p = s; *p && off + 5 < cap; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			buf[off++] = '\\';
			buf[off++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			/* "\xHH": four bytes, room checked by the loop condition */
			buf[off++] = '\\';
			buf[off++] = 'x';
			buf[off++] = log_hex[c >> 4];
			buf[off++] = log_hex[c & 0xf];
		} else {
			buf[off++] = (char)c;
		}
	}
	if (off + 1 < cap)
		buf[off++] = '"';
	return off;
}

void log_event(enum log_level lvl, const char *event, ...)
{
	static const char *names[] = { "debug", "info", "warn", "error" };
	char buf[4096];
	struct timeval tv;
	struct tm tm;
	size_t off;
	va_list ap;

	if (lvl < log_min)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	off = strftime(buf, sizeof(buf), "ts=%Y-%m-%dT%H:%M:%S", &tm);
	/* a cut prefix is still logged: off is where the text really ends */
	(void)util_fmt(buf + off, sizeof(buf) - off, ".%03dZ level=%s proc=%s pid=%d event=",
	    (int)(tv.tv_usec / 1000), names[lvl], log_proc, (int)getpid());
	off += strlen(buf + off);
	off = log_put(buf, off, sizeof(buf) - 2, event);
	va_start(ap, event);
	for (;;) {
		const char *k = va_arg(ap, const char *), *v;
		if (k == NULL)
			break;
		v = va_arg(ap, const char *);
		if (v == NULL)
			continue;
		if (off + strlen(k) + 3 >= sizeof(buf) - 2)
			break;
		buf[off++] = ' ';
		memcpy(buf + off, k, strlen(k));
		off += strlen(k);
		buf[off++] = '=';
		off = log_put(buf, off, sizeof(buf) - 2, v);
	}
	va_end(ap);
	buf[off++] = '\n';
	if (write(STDERR_FILENO, buf, off) < 0) {
		/* nowhere left to report it */
	}
	if (log_syslog) {
		static const int prio[] = { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR };
		buf[off - 1] = '\0';
		syslog(prio[lvl], "%s", buf);
	}
}
