/* kale-sendmail: the sendmail-compatible injector for local programs. Reads a
 * message on stdin and hands it to kaled over <data_dir>/public/sendmail.sock
 * (sendmail/smc.c). When kaled is not running, the message goes into
 * <data_dir>/maildrop, which kaled's pickup empties later (maildrop.h).
 * Runs as the invoking user; exit 0 queued, 75 (EX_TEMPFAIL) on a 4xx or
 * when neither worked, 1 otherwise. */
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "conf/conf.h"
#include "lib/util.h"
#include "sendmail/maildrop.h"
#include "sendmail/smc.h"

#define SM_ADDR_MAX    320
#define SM_RCPT_MAX    1000
#define SM_TIMEOUT     300        /* seconds per read/write on the socket */
#define SM_EXIT_FAIL   1

struct sm {
	int extract;              /* -t */
	int ignore_dots;          /* -i / -oi */
	const char *from;         /* -f / -r */
	const char *conf;         /* -C */
	char **rcpt;
	int n_rcpt;
	struct smc smc;
};

static void sm_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sm_err(const char *fmt, ...)
{
	va_list ap;

	fputs("kale-sendmail: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- recipients ---- */

static int sm_rcpt_add(struct sm *s, const char *addr, const char *hostname)
{
	char buf[SM_ADDR_MAX + 260];
	size_t len = strlen(addr);

	if (len == 0)
		return 0;
	if (len > SM_ADDR_MAX) {
		sm_err("address too long: %.60s...", addr);
		return -1;
	}
	for (const char *p = addr; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '<' || *p == '>') {
			sm_err("bad character in address %.100s", addr);
			return -1;
		}
	}
	if (strchr(addr, '@') == NULL) {
		if (util_fmt(buf, sizeof(buf), "%s@%s", addr, hostname) < 0) {
			sm_err("address too long");
			return -1;
		}
	} else if (util_fmt(buf, sizeof(buf), "%s", addr) < 0) {
		sm_err("address too long");
		return -1;
	}
	for (int i = 0; i < s->n_rcpt; i++)
		if (strcasecmp(s->rcpt[i], buf) == 0)
			return 0;
	if (s->n_rcpt >= SM_RCPT_MAX) {
		sm_err("too many recipients (max %d)", SM_RCPT_MAX);
		return -1;
	}
	s->rcpt = xrealloc(s->rcpt, sizeof(*s->rcpt) * (size_t)(s->n_rcpt + 1));
	s->rcpt[s->n_rcpt++] = xstrdup(buf);
	return 0;
}

/* Appends c to buf (cap bytes); 0 or -1 when full. */
static int sm_put(char *buf, size_t cap, size_t *len, char c)
{
	if (*len + 1 >= cap)
		return -1;
	buf[(*len)++] = c;
	buf[*len] = '\0';
	return 0;
}

/* An RFC 5322 address list ("A <a@x>, b@y (c), grp: c@z;") or a command
 * line argument: adds each address. Comments and display names dropped. */
static int sm_parse_list(struct sm *s, const char *list, const char *hostname)
{
	char plain[SM_ADDR_MAX + 2], angle[SM_ADDR_MAX + 2], *a;
	size_t pl = 0, al = 0;
	int in_angle = 0, have_angle = 0, over = 0;

	plain[0] = angle[0] = '\0';
	for (const char *p = list;; p++) {
		char c = *p;

		if (c == '"') {
			char *b = in_angle ? angle : plain;
			size_t *bl = in_angle ? &al : &pl;
			over |= sm_put(b, sizeof(plain), bl, '"');
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0')
					over |= sm_put(b, sizeof(plain), bl, *p++);
				over |= sm_put(b, sizeof(plain), bl, *p);
			}
			over |= sm_put(b, sizeof(plain), bl, '"');
			if (*p == '\0')
				p--;
		} else if (c == '(' && !in_angle) {
			int depth = 1;
			for (p++; *p && depth > 0; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				else if (*p == '(')
					depth++;
				else if (*p == ')')
					depth--;
			}
			p--;
		} else if (c == '<' && !in_angle) {
			in_angle = have_angle = 1;
			al = 0;
			angle[0] = '\0';
		} else if (c == '>' && in_angle) {
			in_angle = 0;
		} else if (c == ':' && !in_angle) {
			pl = 0;               /* "group:" or a display name: not an address */
			plain[0] = '\0';
		} else if (((c == ',' || c == ';') && !in_angle) || c == '\0') {
			if (over) {
				sm_err("address too long in %.100s", list);
				return -1;
			}
			a = have_angle ? angle : plain;
			if (have_angle && a[0] == '@' && strchr(a, ':') != NULL)
				a = strchr(a, ':') + 1;      /* source route */
			if (sm_rcpt_add(s, a, hostname) < 0)
				return -1;
			pl = al = 0;
			plain[0] = angle[0] = '\0';
			in_angle = have_angle = 0;
			if (c == '\0')
				break;
		} else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			continue;
		} else {
			over |= in_angle ? sm_put(angle, sizeof(angle), &al, c) :
			    sm_put(plain, sizeof(plain), &pl, c);
		}
	}
	return 0;
}

/* ---- stdin ---- */

/* Reads stdin (at most max bytes). With !ignore_dots a line "." ends it. */
static char *sm_read_stdin(size_t max, int ignore_dots, size_t *len_r)
{
	size_t cap = 65536, len = 0;
	char *buf = xmalloc(cap + 1);

	for (;;) {
		ssize_t n;
		if (len == cap) {
			if (cap > max) {
				free(buf);
				sm_err("message too large (max %zu bytes)", max);
				return NULL;
			}
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		n = read(STDIN_FILENO, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			sm_err("reading stdin: %s", strerror(errno));
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > max) {
		free(buf);
		sm_err("message too large (max %zu bytes)", max);
		return NULL;
	}
	buf[len] = '\0';
	if (!ignore_dots) {
		/* the first line that is exactly "." (LF or CRLF) ends the message */
		for (size_t i = 0; i < len; ) {
			char *nl = memchr(buf + i, '\n', len - i);
			size_t ll = nl ? (size_t)(nl - (buf + i)) : len - i;
			if ((ll == 1 && buf[i] == '.') || (ll == 2 && buf[i] == '.' && buf[i + 1] == '\r')) {
				len = i;
				break;
			}
			i += ll + 1;
		}
		buf[len] = '\0';
	}
	*len_r = len;
	return buf;
}

static int sm_is_header(const char *line, size_t ll, const char *name)
{
	size_t nl = strlen(name);

	return ll > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':';
}

/* -t: recipients from To/Cc/Bcc (unfolded); Bcc fields are cut out of
 * the message in place. Returns 0 or -1. */
static int sm_extract(struct sm *s, char *msg, size_t *len, const char *hostname)
{
	size_t i = 0, field_start = 0;
	char *value = NULL;
	size_t vlen = 0;
	int is_rcpt = 0, is_bcc = 0, rc = 0;

	/* walk header lines; a field ends where a line does not start with WSP */
	for (;;) {
		char *nl;
		size_t ll, cl;
		int cont, end;

		if (i > *len)
			i = *len;     /* the last line had no newline */
		nl = i < *len ? memchr(msg + i, '\n', *len - i) : NULL;
		ll = nl ? (size_t)(nl - (msg + i)) : *len - i;
		cl = ll > 0 && msg[i + ll - 1] == '\r' ? ll - 1 : ll;
		cont = cl > 0 && (msg[i] == ' ' || msg[i] == '\t');
		end = cl == 0 || i >= *len;

		if (!cont) {
			/* the previous field is complete */
			if (value != NULL && is_rcpt) {
				value[vlen] = '\0';
				if (sm_parse_list(s, value, hostname) < 0)
					rc = -1;
			}
			if (is_bcc) {
				memmove(msg + field_start, msg + i, *len - i);
				*len -= i - field_start;
				i = field_start;
				is_bcc = 0;
				free(value);
				value = NULL;
				continue;
			}
			free(value);
			value = NULL;
			vlen = 0;
			is_rcpt = 0;
			if (end || rc < 0)
				break;
			field_start = i;
			is_bcc = sm_is_header(msg + i, cl, "bcc");
			is_rcpt = is_bcc || sm_is_header(msg + i, cl, "to") || sm_is_header(msg + i, cl, "cc");
			if (is_rcpt) {
				const char *colon = memchr(msg + i, ':', cl);
				size_t off = (size_t)(colon - (msg + i)) + 1;
				value = xmalloc(*len + 1);
				memcpy(value, msg + i + off, cl - off);
				vlen = cl - off;
			}
		} else if (value != NULL) {
			value[vlen++] = ' ';
			memcpy(value + vlen, msg + i, cl);
			vlen += cl;
		}
		i += ll + 1;
	}
	free(value);
	return rc;
}

/* ---- options ---- */

static int sm_usage(void)
{
	fputs("usage: kale-sendmail [-t] [-i] [-f ADDR] [-C FILE] [-F NAME] [-oi] [RECIPIENT...]\n",
	    stderr);
	return SM_EXIT_FAIL;
}

/* Parses sendmail's options; argv[*first] is the first recipient. 0 or -1. */
static int sm_options(struct sm *s, int argc, char **argv, int *first)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **target = NULL;

		if (a[0] != '-' || a[1] == '\0')
			break;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		switch (a[1]) {
		case 't':
			if (a[2] != '\0')
				goto unknown;
			s->extract = 1;
			continue;
		case 'i':
			s->ignore_dots = 1;
			continue;
		case 'o':        /* -oi; -oem -odi -oQ... and others are ignored */
			if (strcmp(a, "-oi") == 0)
				s->ignore_dots = 1;
			continue;
		case 'f': case 'r':
			target = &s->from;
			break;
		case 'C':
			target = &s->conf;
			break;
		case 'F': case 'B': case 'N': case 'R': case 'V': case 'L': case 'h': case 'X':
			if (a[2] == '\0')
				i++;          /* the value is the next argument: ignored */
			continue;
		case 'b':
			if (strcmp(a, "-bm") == 0)
				continue;
			sm_err("%s is not supported (only -bm, the default)", a);
			return -1;
		case 'v': case 'm': case 'n': case 'U': case 'G': case 'e': case 'A':
			continue;
		default:
			goto unknown;
		}
		if (a[2] != '\0') {
			*target = a + 2;
		} else if (i + 1 < argc) {
			*target = argv[++i];
		} else {
			sm_err("option %s needs a value", a);
			return -1;
		}
		continue;
unknown:
		sm_err("unknown option %.50s", a);
		return -1;
	}
	if (i > argc)
		i = argc;
	*first = i;
	return 0;
}

static int sm_sender(struct sm *s, const struct kale_config *cfg, char *out, size_t cap)
{
	struct passwd *pw;
	const char *f = s->from;

	if (f != NULL) {
		size_t len = strlen(f);
		if (len >= 2 && f[0] == '<' && f[len - 1] == '>') {
			if (util_fmt(out, cap, "%.*s", (int)(len - 2), f + 1) < 0)
				return -1;
		} else if (util_fmt(out, cap, "%s", f) < 0) {
			return -1;
		}
		if (strlen(out) > SM_ADDR_MAX)
			return -1;
		for (const char *p = out; *p; p++)
			if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>')
				return -1;
		if (out[0] != '\0' && strchr(out, '@') == NULL) {
			char tmp[SM_ADDR_MAX + 2];
			if (util_fmt(tmp, sizeof(tmp), "%s", out) < 0 ||
			    util_fmt(out, cap, "%s@%s", tmp, cfg->hostname) < 0)
				return -1;
		}
		return 0;
	}
	pw = getpwuid(getuid());
	return util_fmt(out, cap, "%s@%s", pw != NULL ? pw->pw_name : "nobody", cfg->hostname);
}

int main(int argc, char **argv)
{
	struct sm *s = xcalloc(1, sizeof(*s));
	struct kale_config cfg;
	char *err = NULL, *msg = NULL, sender[SM_ADDR_MAX + 260];
	const char *conf;
	size_t len = 0;
	int first = argc, rc = SM_EXIT_FAIL, cfg_loaded = 0;

	s->smc.fd = -1;
	memset(&cfg, 0, sizeof(cfg));
	signal(SIGPIPE, SIG_IGN);
	if (sm_options(s, argc, argv, &first) < 0) {
		sm_usage();
		goto out;
	}
	conf = s->conf;
	if (conf == NULL || *conf == '\0')
		conf = getenv("KALE_CONF");
	if (conf == NULL || *conf == '\0')
		conf = "/etc/kale/kale.conf";
	if (conf_load(conf, &cfg, &err) < 0) {
		sm_err("%s", err ? err : "cannot load the config");
		free(err);
		goto out;
	}
	cfg_loaded = 1;
	if (sm_sender(s, &cfg, sender, sizeof(sender)) < 0) {
		sm_err("bad sender address");
		goto out;
	}
	for (int i = first; i < argc; i++)
		if (sm_parse_list(s, argv[i], cfg.hostname) < 0)
			goto out;
	msg = sm_read_stdin((size_t)cfg.message_size + 65536, s->ignore_dots, &len);
	if (msg == NULL)
		goto out;
	if (s->extract && sm_extract(s, msg, &len, cfg.hostname) < 0)
		goto out;
	if (s->n_rcpt == 0) {
		sm_err("no recipients");
		goto out;
	}
	if (smc_connect(&s->smc, cfg.data_dir, SM_TIMEOUT) < 0) {
		/* No daemon (not running, no socket): into the maildrop, which
		 * kaled picks up when it runs again. */
		char why[600];
		int e = errno;
		if ((e == ENOENT || e == ECONNREFUSED) &&
		    maildrop_write(cfg.data_dir, sender, s->rcpt, s->n_rcpt, msg, len, why, sizeof(why)) == 0) {
			rc = 0;
			goto out;
		}
		sm_err("%s", s->smc.error);
		if (e == ENOENT || e == ECONNREFUSED)
			sm_err("maildrop: %s", why);
		rc = EX_TEMPFAIL;
		goto out;
	}
	rc = smc_send(&s->smc, cfg.hostname, -1, sender, s->rcpt, s->n_rcpt, msg, len);
	if (rc != SMC_OK)
		sm_err("%s", s->smc.error);
out:
	smc_close(&s->smc);
	for (int i = 0; i < s->n_rcpt; i++)
		free(s->rcpt[i]);
	free(s->rcpt);
	free(s);
	free(msg);
	if (cfg_loaded)
		conf_free(&cfg);
	return rc;
}
