/* ctl: what kalectl's command files share: the run context (config, store),
 * option parsing, the entry into data_dir with privileges dropped, tables
 * and small output helpers. Runs only in kalectl. */
#ifndef KALE_CTL_H
#define KALE_CTL_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "conf/conf.h"
#include "store/store.h"

#define CTL_EXIT_OK    0
#define CTL_EXIT_FAIL  1
#define CTL_EXIT_USAGE 2

#define CTL_PASSWORD_MAX 1024

struct ctl {
	const char *conf_path;
	struct kale_config cfg;
	int cfg_loaded;
	int in_data_dir;
	store *st;
};

/* One option of a command: "--name" (flag) or "--name VALUE" / "--name=VALUE". */
struct ctl_opt {
	const char *name;     /* without the dashes */
	int has_arg;
	const char **value;   /* has_arg: receives the value */
	int *flag;            /* !has_arg: set to 1 */
};

/* Parses argv[0..argc) into options and positional arguments (at most
 * max_pos, at least min_pos). Returns 0, or -1 after printing what is wrong
 * (the caller then returns ctl_usage()). */
int ctl_getopt(int argc, char **argv, const struct ctl_opt *opts,
    const char **pos, int min_pos, int max_pos, int *npos_r);

/* Prints "kalectl: MSG" and the usage to stderr; returns CTL_EXIT_USAGE. */
int ctl_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ctl_print_usage(FILE *f);
/* Prints "kalectl: MSG" to stderr; returns CTL_EXIT_FAIL. */
int ctl_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads the config, creates data_dir, chdir()s into it and (as root) drops
 * to run_as. 0, or -1 after printing the error. */
int ctl_enter(struct ctl *c);
/* ctl_enter, then opens the store into c->st. 0 or -1 (printed). */
int ctl_open_store(struct ctl *c);
void ctl_close(struct ctl *c);

/* Reads a password from stdin (at most CTL_PASSWORD_MAX bytes, one trailing
 * newline stripped). malloc'd, or NULL after printing the error. */
char *ctl_read_password(void);
/* ctl_read_password with flags: CTL_PW_CR also strips a CR left at the end,
 * CTL_PW_EMPTY passes an empty password on instead of refusing it. */
#define CTL_PW_CR 1
#define CTL_PW_EMPTY 2
char *ctl_read_password_flags(int flags);

/* "YYYY-MM-DD HH:MM:SS" in UTC. */
void ctl_fmt_time(int64_t ts, char buf[32]);
/* ISO date "YYYY-MM-DD", datetime "YYYY-MM-DD[T ]HH:MM[:SS][Z]" (UTC) or a
 * relative "30m", "2h", "7d", "90s" before now. Unix seconds or -1. */
int64_t ctl_parse_time(const char *s, int64_t now);

/* A JSON string of s (NULL gives null); bytes that are not UTF-8 become '?'. */
json_t *ctl_json_str(const char *s);

/* An aligned text table; cells are copied with control characters made '?'. */
struct ctl_table {
	int ncol, nrows;
	char **cells;         /* nrows * ncol, row 0 is the header */
};
void ctl_table_init(struct ctl_table *t, int ncol, const char *const *header);
void ctl_table_add(struct ctl_table *t, const char *const *cells);
void ctl_table_print(const struct ctl_table *t, FILE *out);
void ctl_table_free(struct ctl_table *t);
/* A `list` sub-command (argv: its arguments, none allowed): opens the store,
 * fills a table of ncol columns under header through list(st, t) (0, or -1
 * on a store error) and prints it. An exit code; "cannot list WHAT" on error. */
int ctl_table_list(struct ctl *c, int argc, char **argv, int ncol, const char *const *header,
    int (*list)(store *st, struct ctl_table *t), const char *what);

/* Prints j (pretty, in key order) and a newline, then frees it; an exit code. */
int ctl_print_json(json_t *j);
/* The rows of a `show`/`list` command: a JSON array (--json) or a table. */
struct ctl_rows {
	struct ctl_table t;
	json_t *arr;          /* NULL: the table */
};
void ctl_rows_init(struct ctl_rows *o, int json, int ncol, const char *const *header);
/* Prints (rc 0) or says "cannot read WHAT" (rc < 0), frees; an exit code. */
int ctl_rows_end(struct ctl_rows *o, int rc, const char *what);

/* The end of a store command: rc < 0 prints *errp (freed) and gives
 * CTL_EXIT_FAIL; else prints "OK_MSG ARG" (unless ok_msg is NULL). */
int ctl_result(int rc, char **errp, const char *ok_msg, const char *arg);

/* Command groups (argv[0] is the sub-command, e.g. "add"); each returns an exit code. */
int ctl_policy_domain(struct ctl *c, int argc, char **argv);
int ctl_policy_user(struct ctl *c, int argc, char **argv);
int ctl_policy_alias(struct ctl *c, int argc, char **argv);
int ctl_policy_network(struct ctl *c, int argc, char **argv);
int ctl_log_cmd(struct ctl *c, int argc, char **argv);
/* filter, list and greylist (ctl_filter.c) */
int ctl_filter_cmd(struct ctl *c, int argc, char **argv);
int ctl_list_cmd(struct ctl *c, int argc, char **argv);
int ctl_greylist_cmd(struct ctl *c, int argc, char **argv);
/* policy test (ctl_diag.c) */
int ctl_policy_test(struct ctl *c, int argc, char **argv);
/* trace QID [--json] (ctl_trace.c) */
int ctl_trace_cmd(struct ctl *c, int argc, char **argv);
int ctl_queue_cmd(struct ctl *c, int argc, char **argv);
int ctl_queue_status(struct ctl *c, int argc, char **argv);
int ctl_queue_reload(struct ctl *c, int argc, char **argv);
/* verify add|list|del|flush|test (ctl_verify.c; added by H11) */
int ctl_verify_cmd(struct ctl *c, int argc, char **argv);
/* ctl_auth.c (H12): auth set|show|server ...|test */
int ctl_auth_cmd(struct ctl *c, int argc, char **argv);
/* dkim keygen|list|del|sign|verify (ctl_dkim.c) */
int ctl_dkim_cmd(struct ctl *c, int argc, char **argv);

#endif
