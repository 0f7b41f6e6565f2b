/* conf: reads and validates kale.conf (operator.md §3) into a struct
 * kale_config. Runs in the master (kaled) and in kalectl; the file is trusted
 * operator input but is still read bounded and checked strictly. */
#include "conf/conf.h"

#include "lib/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#define CONF_MAX_DURATION (3650LL * 86400)  /* ten years */

enum conf_type {
	CT_HOSTNAME,   /* char *, DNS name characters */
	CT_USER,       /* char *, user name characters */
	CT_ADDRESS,    /* char *, local@domain; NULL when absent */
	CT_PATH,       /* char *, made absolute against cfg->dir */
	CT_LISTEN,     /* struct conf_listen, empty = off */
	CT_DNS,        /* struct conf_listen of IP literals, port optional (53) */
	CT_BOOL,       /* int */
	CT_INT,        /* int in [min,max] */
	CT_U64,        /* uint64_t in [min,max] */
	CT_DURATION,   /* int64_t seconds in [min,max] */
	CT_RETRY,      /* int retry[32] + n_retry */
	CT_MAILBOX,    /* int mailbox_mbox */
	CT_LOGLEVEL,   /* char *log_level + log_min_level */
	CT_DBURL,      /* char *db_url */
};

struct conf_key {
	const char *section;
	const char *name;
	enum conf_type type;
	size_t off;
	long long min, max;
};

#define CK(sec, name, type, field, min, max) \
	{ sec, name, type, offsetof(struct kale_config, field), min, max }

static const struct conf_key conf_keys[] = {
	CK("server", "hostname", CT_HOSTNAME, hostname, 0, 0),
	CK("server", "data_dir", CT_PATH, data_dir, 0, 0),
	CK("server", "run_as", CT_USER, run_as, 0, 0),
	CK("server", "postmaster", CT_ADDRESS, postmaster, 0, 0),
	CK("server", "root_alias", CT_ADDRESS, root_alias, 0, 0),
	CK("listen", "smtp", CT_LISTEN, smtp, 0, 0),
	CK("listen", "submission", CT_LISTEN, submission, 0, 0),
	CK("listen", "submissions", CT_LISTEN, submissions, 0, 0),
	CK("listen", "pop3", CT_LISTEN, pop3, 0, 0),
	CK("listen", "pop3s", CT_LISTEN, pop3s, 0, 0),
	CK("listen", "imap", CT_LISTEN, imap, 0, 0),
	CK("listen", "imaps", CT_LISTEN, imaps, 0, 0),
	CK("listen", "admin", CT_LISTEN, admin, 0, 0),
	CK("tls", "cert", CT_PATH, tls_cert, 0, 0),
	CK("tls", "key", CT_PATH, tls_key, 0, 0),
	CK("smtp", "auth_on_mx", CT_BOOL, auth_on_mx, 0, 1),
	CK("smtp", "greeting_delay", CT_INT, greeting_delay, 0, 300),
	CK("limits", "message_size", CT_U64, message_size, 1, 1LL << 40),
	CK("limits", "max_recipients", CT_INT, max_recipients, 1, 100000),
	CK("limits", "max_connections", CT_INT, max_connections, 1, 100000),
	CK("limits", "max_connections_per_ip", CT_INT, max_connections_per_ip, 1, 100000),
	CK("limits", "command_timeout", CT_INT, command_timeout, 1, 3600),
	CK("dns", "servers", CT_DNS, dns_servers, 0, 0),
	CK("database", "url", CT_DBURL, db_url, 0, 0),
	CK("queue", "retry", CT_RETRY, retry, 1, 30LL * 86400),
	CK("queue", "max_age", CT_DURATION, max_age, 60, 365LL * 86400),
	CK("delivery", "remote_port", CT_INT, remote_port, 1, 65535),
	CK("delivery", "mailbox_format", CT_MAILBOX, mailbox_mbox, 0, 1),
	CK("auth", "brake_limit", CT_INT, brake_limit, 1, 100000),
	CK("auth", "brake_window", CT_DURATION, brake_window, 1, 7LL * 86400),
	CK("auth", "brake_max_delay", CT_DURATION, brake_max_delay, 0, 300),
	CK("mailbox", "plaintext_auth", CT_BOOL, mailbox_plaintext_auth, 0, 1),
	CK("log", "syslog", CT_BOOL, log_syslog, 0, 1),
	CK("log", "level", CT_LOGLEVEL, log_level, 0, 3),
};
#define CONF_NKEYS (sizeof(conf_keys) / sizeof(conf_keys[0]))

static const char *const conf_sections[] = {
	"server", "listen", "tls", "smtp", "limits", "dns", "database",
	"queue", "delivery", "auth", "mailbox", "log",
};

struct conf_parser {
	const char *path;
	struct kale_config *cfg;
	int line;
	int key_line[CONF_NKEYS];   /* line each key was set on, 0 = not set */
	char *error;                /* first error, malloc'd */
};

static void conf_error(struct conf_parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records "FILE:LINE: message" unless an error is already recorded. */
static void conf_error(struct conf_parser *p, int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	size_t n;

	if (p->error != NULL)
		return;
	va_start(ap, fmt);
	(void)util_vfmt(msg, sizeof(msg), fmt, ap);   /* a message: cut if longer */
	va_end(ap);
	n = strlen(p->path) + strlen(msg) + 32;
	p->error = xmalloc(n);
	if (util_fmt(p->error, n, "%s:%d: %s", p->path, line, msg) < 0)
		abort();            /* n was computed to fit */
}

static int conf_is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Trims spaces and tabs on both ends, in place. */
static char *conf_trim(char *s)
{
	size_t n;

	while (conf_is_space(*s))
		s++;
	n = strlen(s);
	while (n > 0 && conf_is_space(s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* Cuts a comment: ';' or '#' at the start or after a space or tab. */
static void conf_strip_comment(char *s)
{
	for (char *c = s; *c; c++) {
		if ((*c == ';' || *c == '#') && (c == s || conf_is_space(c[-1]))) {
			*c = '\0';
			return;
		}
	}
}

int conf_parse_addr(const char *s, struct conf_addr *a)
{
	const char *colon, *host;
	size_t hlen;
	long long port;
	char buf[256];

	if (s == NULL || *s == '\0')
		return -1;
	if (*s == '[') {
		const char *end = strchr(s, ']');
		struct in6_addr in6;

		if (end == NULL || end[1] != ':')
			return -1;
		host = s + 1;
		hlen = (size_t)(end - host);
		colon = end + 1;
		if (hlen == 0 || hlen >= sizeof(buf))
			return -1;
		memcpy(buf, host, hlen);
		buf[hlen] = '\0';
		if (inet_pton(AF_INET6, buf, &in6) != 1)
			return -1;
	} else {
		colon = strchr(s, ':');
		if (colon == NULL || strchr(colon + 1, ':') != NULL)
			return -1;      /* no port, or a bare IPv6 literal */
		host = s;
		hlen = (size_t)(colon - s);
		if (hlen == 0 || hlen >= sizeof(buf))
			return -1;
		for (size_t i = 0; i < hlen; i++) {
			unsigned char c = (unsigned char)host[i];
			if (!isalnum(c) && c != '.' && c != '-' && c != '_')
				return -1;
		}
		if (host[0] == '.' || host[0] == '-')
			return -1;
		memcpy(buf, host, hlen);
		buf[hlen] = '\0';
	}
	/* util_strtonum accepts a sign; a port is digits only */
	if (!isdigit((unsigned char)colon[1]) ||
	    util_strtonum(colon + 1, 1, 65535, &port) < 0)
		return -1;
	memcpy(a->host, buf, hlen + 1);
	a->port = (int)port;
	return 0;
}

int conf_addr_format(const struct conf_addr *a, char *buf, size_t cap)
{
	if (strchr(a->host, ':') != NULL)
		return util_fmt(buf, cap, "[%s]:%d", a->host, a->port);
	return util_fmt(buf, cap, "%s:%d", a->host, a->port);
}

int64_t conf_parse_duration(const char *s)
{
	int64_t v = 0, mult = 1;
	const char *p = s;

	if (s == NULL || !isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		v = v * 10 + (*p - '0');
		if (v > CONF_MAX_DURATION)
			return -1;
	}
	switch (*p) {
	case '\0':
		return v;
	case 's':
		mult = 1;
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		return -1;
	}
	if (p[1] != '\0' || v > CONF_MAX_DURATION / mult)
		return -1;
	return v * mult;
}

/* "yes/no/true/false/on/off/1/0", any case; -1 if none. */
static int conf_parse_bool(const char *s)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return 1;
		if (strcasecmp(s, no[i]) == 0)
			return 0;
	}
	return -1;
}

/* Number, digits only (no sign, no spaces) in [min,max]. */
static int conf_parse_num(const char *s, long long min, long long max, long long *out)
{
	if (!isdigit((unsigned char)*s))
		return -1;
	return util_strtonum(s, min, max, out);
}

/* Makes value absolute against dir; drops leading "./" and trailing '/'. */
static char *conf_abs_path(const char *dir, const char *value)
{
	size_t n, cap;
	char *out;

	while (value[0] == '.' && value[1] == '/') {
		value += 2;
		while (*value == '/')
			value++;
	}
	if (value[0] == '\0' || strcmp(value, ".") == 0)
		return xstrdup(dir);
	if (value[0] == '/') {
		out = xstrdup(value);
	} else {
		cap = strlen(dir) + strlen(value) + 2;
		out = xmalloc(cap);
		if (util_fmt(out, cap, "%s%s%s", dir,
		    strcmp(dir, "/") == 0 ? "" : "/", value) < 0)
			abort();        /* cap was computed to fit */
	}
	n = strlen(out);
	while (n > 1 && out[n - 1] == '/')
		out[--n] = '\0';
	return out;
}

/* Parses a comma-separated address list in place into l; dns: IP literals
 * with an optional port. Returns 0, or -1 after recording an error. */
static int conf_listen_parse(struct conf_parser *p, const struct conf_key *k,
    char *value, struct conf_listen *l, int dns)
{
	char *item = value, *next;

	memset(l, 0, sizeof(*l));
	if (*value == '\0')
		return 0;
	for (; item != NULL; item = next) {
		struct conf_addr a;

		next = strchr(item, ',');
		if (next != NULL)
			*next++ = '\0';
		item = conf_trim(item);
		if (*item == '\0') {
			conf_error(p, p->line, "[%s] %s: empty address in list", k->section, k->name);
			return -1;
		}
		if (l->n == CONF_MAX_ADDRS) {
			conf_error(p, p->line, "[%s] %s: too many addresses (at most %d)",
			    k->section, k->name, CONF_MAX_ADDRS);
			return -1;
		}
		memset(&a, 0, sizeof(a));
		if (dns) {
			/* an IP literal, with or without a port (default 53) */
			struct in6_addr in6;
			struct in_addr in4;
			int ok;
			if (conf_parse_addr(item, &a) == 0) {
				ok = inet_pton(AF_INET, a.host, &in4) == 1 ||
				    inet_pton(AF_INET6, a.host, &in6) == 1;
			} else if (strlen(item) < sizeof(a.host) &&
			    (inet_pton(AF_INET, item, &in4) == 1 || inet_pton(AF_INET6, item, &in6) == 1)) {
				memcpy(a.host, item, strlen(item) + 1);
				a.port = 53;
				ok = 1;
			} else {
				ok = 0;
			}
			if (!ok) {
				conf_error(p, p->line, "[%s] %s: bad server address '%.100s' "
				    "(want an IP address, optionally with :port)", k->section, k->name, item);
				return -1;
			}
		} else if (conf_parse_addr(item, &a) < 0) {
			conf_error(p, p->line, "[%s] %s: bad address '%.100s' "
			    "(want host:port or [v6]:port, port 1..65535)", k->section, k->name, item);
			return -1;
		}
		l->addr[l->n++] = a;
	}
	return 0;
}

static int conf_retry_parse(struct conf_parser *p, const struct conf_key *k, char *value)
{
	struct kale_config *cfg = p->cfg;
	char *item = value, *next;

	cfg->n_retry = 0;
	for (; item != NULL; item = next) {
		int64_t d;

		next = strchr(item, ',');
		if (next != NULL)
			*next++ = '\0';
		item = conf_trim(item);
		if (cfg->n_retry == (int)(sizeof(cfg->retry) / sizeof(cfg->retry[0]))) {
			conf_error(p, p->line, "[%s] %s: too many intervals (at most %zu)", k->section,
			    k->name, sizeof(cfg->retry) / sizeof(cfg->retry[0]));
			return -1;
		}
		d = conf_parse_duration(item);
		if (d < k->min || d > k->max) {
			conf_error(p, p->line, "[%s] %s: bad interval '%.100s' "
			    "(want a duration like 90, 90s, 5m, 2h or 1d, between %llds and %llds)",
			    k->section, k->name, item, k->min, k->max);
			return -1;
		}
		cfg->retry[cfg->n_retry++] = (int)d;
	}
	return 0;
}

static int conf_name_ok(const char *s, int hostname)
{
	size_t n = strlen(s);

	if (n == 0 || n > (hostname ? 253u : 32u) || s[0] == '-' || s[0] == '.')
		return 0;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (isalnum(c) || c == '-' || c == '.' || c == '_')
			continue;
		return 0;
	}
	return 1;
}

/* Sets one key from its (trimmed, non-NULL) value. 0, or -1 after an error. */
static int conf_set(struct conf_parser *p, const struct conf_key *k, char *value)
{
	void *field = (char *)p->cfg + k->off;
	char **sfield = field;
	long long n;
	int64_t d;
	int b;

	if (*value == '\0' && k->type != CT_LISTEN && k->type != CT_DNS) {
		conf_error(p, p->line, "[%s] %s: empty value", k->section, k->name);
		return -1;
	}
	switch (k->type) {
	case CT_HOSTNAME:
	case CT_USER:
		if (!conf_name_ok(value, k->type == CT_HOSTNAME)) {
			conf_error(p, p->line, "[%s] %s: bad %s '%.100s'", k->section, k->name,
			    k->type == CT_HOSTNAME ? "host name" : "user name", value);
			return -1;
		}
		free(*sfield);
		*sfield = xstrdup(value);
		if (k->type == CT_HOSTNAME)
			util_lower(*sfield);
		return 0;
	case CT_ADDRESS: {
		/* dot-atom local part @ a host name; checked again by the store */
		const char *at = strrchr(value, '@');
		free(*sfield);
		*sfield = NULL;
		if (at == NULL || at == value || at - value > 64 || !conf_name_ok(at + 1, 1) ||
		    strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
		    ".!#$%&'*+/=?^_`{|}~-") != (size_t)(at - value)) {
			conf_error(p, p->line, "[%s] %s: bad address '%.100s' (expected local@domain)",
			    k->section, k->name, value);
			return -1;
		}
		*sfield = xstrdup(value);
		util_lower(*sfield);
		return 0;
	}
	case CT_PATH:
		if (strlen(p->cfg->dir) + strlen(value) + 2 > PATH_MAX) {
			conf_error(p, p->line, "[%s] %s: path too long", k->section, k->name);
			return -1;
		}
		free(*sfield);
		*sfield = conf_abs_path(p->cfg->dir, value);
		return 0;
	case CT_LISTEN:
	case CT_DNS:
		return conf_listen_parse(p, k, value, field, k->type == CT_DNS);
	case CT_BOOL:
		if ((b = conf_parse_bool(value)) < 0) {
			conf_error(p, p->line, "[%s] %s: bad boolean '%.100s' "
			    "(want yes, no, true, false, on, off, 1 or 0)", k->section, k->name, value);
			return -1;
		}
		*(int *)field = b;
		return 0;
	case CT_INT:
	case CT_U64:
		if (conf_parse_num(value, k->min, k->max, &n) < 0) {
			conf_error(p, p->line, "[%s] %s: bad value '%.100s' (want a number %lld..%lld)",
			    k->section, k->name, value, k->min, k->max);
			return -1;
		}
		if (k->type == CT_INT)
			*(int *)field = (int)n;
		else
			*(uint64_t *)field = (uint64_t)n;
		return 0;
	case CT_DURATION:
		d = conf_parse_duration(value);
		if (d < k->min || d > k->max) {
			conf_error(p, p->line, "[%s] %s: bad duration '%.100s' "
			    "(want like 90, 90s, 5m, 2h or 5d, between %llds and %llds)",
			    k->section, k->name, value, k->min, k->max);
			return -1;
		}
		*(int64_t *)field = d;
		return 0;
	case CT_RETRY:
		return conf_retry_parse(p, k, value);
	case CT_MAILBOX:
		if (strcmp(value, "maildir") == 0)
			p->cfg->mailbox_mbox = 0;
		else if (strcmp(value, "mbox") == 0)
			p->cfg->mailbox_mbox = 1;
		else {
			conf_error(p, p->line, "[%s] %s: bad value '%.100s' (want maildir or mbox)",
			    k->section, k->name, value);
			return -1;
		}
		return 0;
	case CT_LOGLEVEL: {
		static const char *const levels[] = { "debug", "info", "warn", "error" };
		for (int i = 0; i < 4; i++) {
			if (strcmp(value, levels[i]) == 0) {
				free(p->cfg->log_level);
				p->cfg->log_level = xstrdup(value);
				p->cfg->log_min_level = i;
				return 0;
			}
		}
		conf_error(p, p->line, "[%s] %s: bad value '%.100s' (want debug, info, warn or error)",
		    k->section, k->name, value);
		return -1;
	}
	case CT_DBURL:
		if (!(strncmp(value, "sqlite:", 7) == 0 && value[7] != '\0') &&
		    !(strncmp(value, "postgresql://", 13) == 0 && value[13] != '\0')) {
			conf_error(p, p->line, "[%s] %s: bad database url '%.100s' "
			    "(want sqlite:PATH or postgresql://...)", k->section, k->name, value);
			return -1;
		}
		free(*sfield);
		*sfield = xstrdup(value);
		return 0;
	}
	abort();
}

static int conf_section_known(const char *name)
{
	for (size_t i = 0; i < sizeof(conf_sections) / sizeof(conf_sections[0]); i++)
		if (strcmp(name, conf_sections[i]) == 0)
			return 1;
	return 0;
}

/* Handles one line (NUL-terminated, no line ending). section is the current
 * section buffer (updated by [section] lines). 0, or -1 after an error. */
static int conf_line(struct conf_parser *p, char *line, char *section, size_t seccap)
{
	char *s, *eq, *key, *value;

	for (s = line; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			conf_error(p, p->line, "control character 0x%02x in line", c);
			return -1;
		}
	}
	conf_strip_comment(line);
	s = conf_trim(line);
	if (*s == '\0')
		return 0;
	if (*s == '[') {
		size_t n = strlen(s);
		if (s[n - 1] != ']') {
			conf_error(p, p->line, "bad section header (want [name])");
			return -1;
		}
		s[n - 1] = '\0';
		s = conf_trim(s + 1);
		if (!conf_section_known(s)) {
			conf_error(p, p->line, "unknown section [%.100s]", s);
			return -1;
		}
		if (util_fmt(section, seccap, "%s", s) < 0)
			abort();        /* known names are short */
		return 0;
	}
	eq = strchr(s, '=');
	if (eq == NULL) {
		conf_error(p, p->line, "expected 'key = value'");
		return -1;
	}
	*eq = '\0';
	key = conf_trim(s);
	value = conf_trim(eq + 1);
	if (*key == '\0') {
		conf_error(p, p->line, "missing key before '='");
		return -1;
	}
	if (section[0] == '\0') {
		conf_error(p, p->line, "key '%.100s' outside of any [section]", key);
		return -1;
	}
	for (size_t i = 0; i < CONF_NKEYS; i++) {
		const struct conf_key *k = &conf_keys[i];
		if (strcmp(k->section, section) != 0 || strcmp(k->name, key) != 0)
			continue;
		if (p->key_line[i] != 0) {
			conf_error(p, p->line, "duplicate key [%s] %s (first set on line %d)",
			    section, key, p->key_line[i]);
			return -1;
		}
		p->key_line[i] = p->line;
		return conf_set(p, k, value);
	}
	conf_error(p, p->line, "unknown key '%.100s' in [%s]", key, section);
	return -1;
}

static int conf_key_line(const struct conf_parser *p, const char *section, const char *name)
{
	for (size_t i = 0; i < CONF_NKEYS; i++)
		if (strcmp(conf_keys[i].section, section) == 0 && strcmp(conf_keys[i].name, name) == 0)
			return p->key_line[i];
	return 0;
}

/* Checks that span several keys, after the whole file is read. */
static int conf_validate(struct conf_parser *p)
{
	struct kale_config *cfg = p->cfg;

	if (cfg->max_connections_per_ip > cfg->max_connections) {
		int line = conf_key_line(p, "limits", "max_connections_per_ip");
		if (line == 0)
			line = conf_key_line(p, "limits", "max_connections");
		conf_error(p, line, "[limits] max_connections_per_ip (%d) is above "
		    "max_connections (%d)", cfg->max_connections_per_ip, cfg->max_connections);
		return -1;
	}
	if (strncmp(cfg->db_url, "postgresql://", 13) == 0) {
		conf_error(p, conf_key_line(p, "database", "url"),
		    "postgresql policy store not supported yet");
		return -1;
	}
	return 0;
}

static void conf_defaults(struct kale_config *cfg)
{
	static const int retry[] = { 60, 300, 900, 1800, 3600, 7200, 14400 };
	char host[256];

	memset(host, 0, sizeof(host));
	if (gethostname(host, sizeof(host) - 1) < 0 || !conf_name_ok(host, 1))
		memcpy(host, "localhost", sizeof("localhost"));
	cfg->hostname = xstrdup(host);
	util_lower(cfg->hostname);
	cfg->data_dir = xstrdup("/var/lib/kale");
	cfg->run_as = xstrdup("kale");
	cfg->tls_cert = conf_abs_path(cfg->dir, "tls/cert.pem");
	cfg->tls_key = conf_abs_path(cfg->dir, "tls/key.pem");
	cfg->auth_on_mx = 0;
	cfg->greeting_delay = 0;
	cfg->message_size = 26214400;
	cfg->max_recipients = 100;
	cfg->max_connections = 1000;
	cfg->max_connections_per_ip = 20;
	cfg->command_timeout = 300;
	cfg->db_url = xstrdup("sqlite:kale.db");
	memcpy(cfg->retry, retry, sizeof(retry));
	cfg->n_retry = (int)(sizeof(retry) / sizeof(retry[0]));
	cfg->max_age = 5 * 86400;
	cfg->remote_port = 25;
	cfg->mailbox_mbox = 0;
	cfg->brake_limit = 10;
	cfg->brake_window = 900;
	cfg->brake_max_delay = 15;
	cfg->log_syslog = 0;
	cfg->log_level = xstrdup("info");
	cfg->log_min_level = 1;
}

/* Reads the whole file, at most CONF_MAX_FILE bytes. NULL after an error. */
static char *conf_read(struct conf_parser *p, size_t *len_r)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd;

	fd = open(p->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		conf_error(p, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0) {
		conf_error(p, 0, "cannot open: %s", strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		conf_error(p, 0, "cannot open: not a regular file");
		goto fail;
	}
	buf = xmalloc(CONF_MAX_FILE + 1);
	for (;;) {
		ssize_t n = read(fd, buf + len, CONF_MAX_FILE + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			conf_error(p, 0, "cannot read: %s", strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONF_MAX_FILE) {
			conf_error(p, 0, "file too large (more than %d bytes)", CONF_MAX_FILE);
			goto fail;
		}
	}
	close(fd);
	buf[len] = '\0';
	*len_r = len;
	return buf;
fail:
	free(buf);
	close(fd);
	return NULL;
}

/* cfg->dir: realpath of the folder holding the file. */
static int conf_set_dir(struct conf_parser *p)
{
	const char *slash = strrchr(p->path, '/');
	char *folder, *real;

	if (slash == NULL)
		folder = xstrdup(".");
	else if (slash == p->path)
		folder = xstrdup("/");
	else
		folder = xstrndup(p->path, (size_t)(slash - p->path));
	real = realpath(folder, NULL);
	free(folder);
	if (real == NULL) {
		conf_error(p, 0, "cannot resolve the config folder: %s", strerror(errno));
		return -1;
	}
	p->cfg->dir = real;
	return 0;
}

int conf_load(const char *path, struct kale_config *cfg, char **error_r)
{
	struct conf_parser p;
	char section[32] = "";
	char *buf = NULL, *line, *end;
	size_t len = 0;
	int ret = -1;

	memset(cfg, 0, sizeof(*cfg));
	memset(&p, 0, sizeof(p));
	p.path = path;
	p.cfg = cfg;
	cfg->path = xstrdup(path);
	if ((buf = conf_read(&p, &len)) == NULL)
		goto out;
	if (conf_set_dir(&p) < 0)
		goto out;
	conf_defaults(cfg);

	line = buf;
	if (len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0)
		line += 3;          /* UTF-8 byte order mark */
	while (line < buf + len) {
		size_t n;

		p.line++;
		end = memchr(line, '\n', (size_t)(buf + len - line));
		if (end == NULL)
			end = buf + len;
		n = (size_t)(end - line);
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (memchr(line, '\0', n) != NULL) {
			conf_error(&p, p.line, "NUL byte in line");
			goto out;
		}
		if (n > CONF_MAX_LINE) {
			conf_error(&p, p.line, "line too long (more than %d bytes)", CONF_MAX_LINE);
			goto out;
		}
		line[n] = '\0';
		if (conf_line(&p, line, section, sizeof(section)) < 0)
			goto out;
		line = end + 1;
	}
	if (conf_validate(&p) < 0)
		goto out;
	ret = 0;
out:
	free(buf);
	if (ret < 0) {
		*error_r = p.error;
		conf_free(cfg);
	}
	return ret;
}

void conf_free(struct kale_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->dir);
	free(cfg->hostname);
	free(cfg->data_dir);
	free(cfg->run_as);
	free(cfg->postmaster);
	free(cfg->root_alias);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->db_url);
	free(cfg->log_level);
	memset(cfg, 0, sizeof(*cfg));
}

int conf_dns_csv(const struct kale_config *cfg, char *buf, size_t cap)
{
	size_t len = 0;

	if (cap == 0)
		return -1;
	buf[0] = '\0';
	for (int i = 0; i < cfg->dns_servers.n; i++) {
		char one[300];
		if (conf_addr_format(&cfg->dns_servers.addr[i], one, sizeof(one)) < 0 ||
		    util_fmt(buf + len, cap - len, "%s%s", i ? "," : "", one) < 0)
			return -1;
		len = strlen(buf);
	}
	return 0;
}
