/* conf: kale.conf, the INI file that says how this node runs (operator.md §3).
 * Parsed by the master and by kalectl; children get the parsed struct. */
#ifndef KALE_CONF_H
#define KALE_CONF_H

#include <stddef.h>
#include <stdint.h>

#define CONF_MAX_ADDRS 8

/* One listen address: host is an IPv4 literal, an IPv6 literal (stored
 * without brackets) or a name; port 1..65535. */
struct conf_addr {
	char host[256];
	int port;
};

struct conf_listen {
	struct conf_addr addr[CONF_MAX_ADDRS];
	int n;
};

struct kale_config {
	char *path;          /* the config file as given */
	char *dir;           /* its folder: base of relative paths */

	/* [server] */
	char *hostname;      /* default: system hostname */
	char *data_dir;      /* absolute after loading; default /var/lib/kale */
	char *run_as;        /* default "kale" */
	char *postmaster;    /* NULL: postmaster@ the first local domain that has one */
	char *root_alias;    /* NULL: the postmaster; where LOCAL@hostname goes */

	/* [listen] */
	struct conf_listen smtp, submission, submissions, pop3, pop3s, imap, imaps, admin;

	/* [tls]: absolute paths after loading */
	char *tls_cert;      /* default <dir>/tls/cert.pem */
	char *tls_key;       /* default <dir>/tls/key.pem */

	/* [smtp] */
	int auth_on_mx;      /* bool, default 0 */
	int greeting_delay;  /* seconds, default 0 */

	/* [limits] */
	uint64_t message_size;     /* default 26214400 */
	int max_recipients;        /* default 100 */
	int max_connections;       /* default 1000 */
	int max_connections_per_ip;/* default 20 */
	int command_timeout;       /* seconds, default 300 */

	/* [dns] */
	struct conf_listen dns_servers;  /* empty: /etc/resolv.conf */

	/* [database] */
	char *db_url;        /* default "sqlite:kale.db" (relative to data_dir) */

	/* [queue] */
	int retry[32];       /* seconds; default 1m,5m,15m,30m,1h,2h,4h */
	int n_retry;
	int64_t max_age;     /* seconds, default 5d */

	/* [delivery] */
	int remote_port;     /* default 25 */
	int mailbox_mbox;    /* mailbox_format: 0 maildir (default), 1 mbox */

	/* [auth]: the brute-force brake (docs/auth.md) */
	int brake_limit;           /* failures per address or account, default 10 */
	int64_t brake_window;      /* seconds, default 15m */
	int64_t brake_max_delay;   /* seconds, default 15; 0: no delays */

	/* [mailbox]: POP3/IMAP servers */
	int mailbox_plaintext_auth; /* plaintext_auth: allow USER/PASS, LOGIN,
	                               AUTHENTICATE without TLS; bool, default 0 */

	/* [log] */
	int log_syslog;      /* bool, default 0 */
	char *log_level;     /* debug|info|warn|error, default info */

	/* Added by conf.c (derived, never set directly in the file): */
	int log_min_level;   /* log_level as an enum log_level value (0 debug .. 3 error) */
};

/* Loads and validates FILE. On error returns -1 and sets *error_r to a
 * malloc'd "FILE:LINE: what is wrong" (LINE 0 for file-level errors).
 * cfg is overwritten (not freed first) and is left zeroed on error.
 * The file is limited to CONF_MAX_FILE bytes and lines to CONF_MAX_LINE. */
#define CONF_MAX_LINE 4096
#define CONF_MAX_FILE (1024 * 1024)
int conf_load(const char *path, struct kale_config *cfg, char **error_r);
/* Frees everything and zeroes the struct; safe on a zeroed struct. */
void conf_free(struct kale_config *cfg);

/* Parses "host:port" / "[v6]:port"; 0 ok, -1 bad. */
int conf_parse_addr(const char *s, struct conf_addr *a);
/* [dns] servers as c-ares's "host:port,..." list ("" for /etc/resolv.conf). 0 or -1. */
int conf_dns_csv(const struct kale_config *cfg, char *buf, size_t cap);
/* Parses a duration: plain seconds or with s/m/h/d suffix; -1 on error. */
int64_t conf_parse_duration(const char *s);
/* Formats an address back as "host:port" or "[v6]:port"; 0 ok, -1 too long. */
int conf_addr_format(const struct conf_addr *a, char *buf, size_t cap);

#endif
