/* ctl_policy: kalectl's domain, user, alias and network commands; each
 * checks its arguments, opens the store and calls one store_* function.
 * Runs only in kalectl (as run_as when started by root). */
#include "ctl/ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/util.h"

/* Runs a store call's result: prints the error, returns the exit code. */
/* errp is read only here, after the store call (an argument) has run. */
/* ---- domain ---- */

static int ctl_domain_row(void *ctx, const struct store_domain *d)
{
	const char *cells[6] = { d->name, d->local ? "local" : "relay",
		d->local ? "-" : d->relay, d->tls, d->verify[0] ? d->verify : "-", d->filter };

	ctl_table_add(ctx, cells);
	return 0;
}

static int ctl_domain_list(store *st, struct ctl_table *t)
{
	return store_domain_list(st, ctl_domain_row, t);
}

int ctl_policy_domain(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *relay = NULL, *tls = NULL, *verify = NULL, *filter = NULL;
	int local = 0, npos = 0;
	char *err = NULL;
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "add") == 0) {
		const struct ctl_opt opts[] = {
			{ "local", 0, NULL, &local }, { "relay", 1, &relay, NULL },
			{ "tls", 1, &tls, NULL }, { "verify", 1, &verify, NULL },
			{ "filter", 1, &filter, NULL }, { NULL, 0, NULL, NULL } };
		struct store_domain d;
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (local == (relay != NULL))
			return ctl_usage("domain add needs exactly one of --local or --relay");
		if (tls != NULL && strcmp(tls, "opportunistic") != 0 && strcmp(tls, "require") != 0)
			return ctl_usage("--tls must be opportunistic or require");
		memset(&d, 0, sizeof(d));
		if (util_fmt(d.name, sizeof(d.name), "%s", pos[0]) < 0)
			return ctl_fail("domain name too long");
		d.local = local;
		if (relay != NULL) {
			if (store_relay_check(relay, &err) < 0)
				return ctl_result(-1, &err, NULL, NULL);
			if (util_fmt(d.relay, sizeof(d.relay), "%s", relay) < 0)
				return ctl_fail("relay too long");
		}
		if (util_fmt(d.tls, sizeof(d.tls), "%s", tls ? tls : "opportunistic") < 0 ||
		    util_fmt(d.verify, sizeof(d.verify), "%s", verify ? verify : "") < 0 ||
		    util_fmt(d.filter, sizeof(d.filter), "%s", filter ? filter : "") < 0)
			return ctl_fail("verification profile or filter policy name too long");
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_domain_add(c->st, &d, &err), &err, "added domain", d.name);
	}
	if (strcmp(sub, "set") == 0) {
		const struct ctl_opt opts[] = { { "verify", 1, &verify, NULL },
			{ "filter", 1, &filter, NULL }, { NULL, 0, NULL, NULL } };
		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (verify == NULL && filter == NULL)
			return ctl_usage("domain set needs --verify PROFILE|none or --filter POLICY");
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (verify != NULL && store_domain_set_verify(c->st, pos[0], verify, &err) < 0)
			return ctl_result(-1, &err, NULL, NULL);
		if (filter != NULL && store_domain_set_filter(c->st, pos[0], filter, &err) < 0)
			return ctl_result(-1, &err, NULL, NULL);
		return ctl_result(0, &err, "updated domain", pos[0]);
	}
	if (strcmp(sub, "list") == 0) {
		static const char *const hdr[6] = { "DOMAIN", "TYPE", "ROUTE", "TLS", "VERIFY", "FILTER" };
		return ctl_table_list(c, argc - 1, argv + 1, 6, hdr, ctl_domain_list, "domains");
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_domain_del(c->st, pos[0], &err), &err, "deleted domain", pos[0]);
	}
	return ctl_usage("unknown domain command '%.50s'", sub);
}

/* ---- user ---- */

static int ctl_print_line(void *ctx, const char *s)
{
	(void)ctx;
	for (const char *p = s; *p; p++)
		putchar((unsigned char)*p < 0x20 ? '?' : *p);
	putchar('\n');
	return 0;
}

struct ctl_import {
	int tty;
	long last;
};

static void ctl_import_progress(void *ctx, long line)
{
	struct ctl_import *im = ctx;

	if (im->tty) {
		fprintf(stderr, "\rimporting: line %ld", line);
		fflush(stderr);
		im->last = line;
	}
}

static void ctl_import_error(void *ctx, long line, const char *msg)
{
	struct ctl_import *im = ctx;

	if (im->tty && im->last > 0)
		fputc('\n', stderr);
	im->last = 0;
	fprintf(stderr, "line %ld: %s\n", line, msg);
}

static int ctl_user_import(struct ctl *c, const char *path)
{
	struct ctl_import im = { .tty = isatty(STDERR_FILENO) };
	char *err = NULL;
	long ok = 0, bad = 0;
	FILE *fp;
	int rc;

	/* the file is opened before dropping privileges: root may read it */
	if (strcmp(path, "-") == 0) {
		fp = stdin;
	} else if ((fp = fopen(path, "re")) == NULL) {
		return ctl_fail("cannot open %s: %s", path, strerror(errno));
	}
	if (ctl_open_store(c) < 0) {
		rc = CTL_EXIT_FAIL;
		goto out;
	}
	rc = store_user_import(c->st, fp, ctl_import_progress, &im, ctl_import_error, &im,
	    &ok, &bad, &err);
	if (im.tty && im.last > 0)
		fputc('\n', stderr);
	if (rc < 0) {
		rc = ctl_fail("import failed, nothing imported: %s", err ? err : "error");
		free(err);
		goto out;
	}
	printf("imported %ld user%s, %ld bad line%s\n", ok, ok == 1 ? "" : "s", bad, bad == 1 ? "" : "s");
	rc = bad > 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
out:
	if (fp != stdin)
		fclose(fp);
	return rc;
}

int ctl_policy_user(struct ctl *c, int argc, char **argv)
{
	const char *pos[1];
	int pw_stdin = 0, npos = 0, rc;
	char *err = NULL, *pw = NULL;
	const char *sub = argc > 0 ? argv[0] : "";
	const struct ctl_opt pw_opts[] = { { "password-stdin", 0, NULL, &pw_stdin }, { NULL, 0, NULL, NULL } };

	if (strcmp(sub, "add") == 0 || strcmp(sub, "passwd") == 0) {
		int add = sub[0] == 'a';
		if (ctl_getopt(argc - 1, argv + 1, pw_opts, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (!add && !pw_stdin)
			return ctl_usage("user passwd needs --password-stdin");
		if (pw_stdin && (pw = ctl_read_password()) == NULL)
			return CTL_EXIT_FAIL;
		if (ctl_open_store(c) < 0) {
			rc = CTL_EXIT_FAIL;
		} else if (add) {
			rc = ctl_result(store_user_add(c->st, pos[0], pw, &err), &err, "added user", pos[0]);
		} else {
			rc = ctl_result(store_user_passwd(c->st, pos[0], pw, &err), &err,
			    "changed password of", pos[0]);
		}
		if (pw != NULL) {
			explicit_bzero(pw, strlen(pw));
			free(pw);
		}
		return rc;
	}
	if (strcmp(sub, "import") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		return ctl_user_import(c, pos[0]);
	}
	if (strcmp(sub, "list") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 0, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_user_list(c->st, npos ? pos[0] : NULL, ctl_print_line, NULL) < 0)
			return ctl_fail("cannot list users");
		return CTL_EXIT_OK;
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_user_del(c->st, pos[0], &err), &err, "deleted user", pos[0]);
	}
	return ctl_usage("unknown user command '%.50s'", sub);
}

/* ---- alias ---- */

static int ctl_alias_row(void *ctx, const char *address, const char *targets)
{
	const char *cells[2] = { address, targets };

	ctl_table_add(ctx, cells);
	return 0;
}

static int ctl_alias_list(store *st, struct ctl_table *t)
{
	return store_alias_list(st, ctl_alias_row, t);
}

int ctl_policy_alias(struct ctl *c, int argc, char **argv)
{
	const char *pos[2];
	int npos = 0;
	char *err = NULL;
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "add") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 2, 2, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_alias_add(c->st, pos[0], pos[1], &err), &err, "added alias", pos[0]);
	}
	if (strcmp(sub, "list") == 0) {
		static const char *const hdr[2] = { "ALIAS", "TARGETS" };
		return ctl_table_list(c, argc - 1, argv + 1, 2, hdr, ctl_alias_list, "aliases");
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		return ctl_result(store_alias_del(c->st, pos[0], &err), &err, "deleted alias", pos[0]);
	}
	return ctl_usage("unknown alias command '%.50s'", sub);
}

/* ---- network ---- */

int ctl_policy_network(struct ctl *c, int argc, char **argv)
{
	const char *pos[1];
	int npos = 0;
	char *err = NULL;
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "add") == 0 || strcmp(sub, "del") == 0) {
		int add = sub[0] == 'a';
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (add)
			return ctl_result(store_network_add(c->st, pos[0], &err), &err, "added network", pos[0]);
		return ctl_result(store_network_del(c->st, pos[0], &err), &err, "deleted network", pos[0]);
	}
	if (strcmp(sub, "list") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_network_list(c->st, ctl_print_line, NULL) < 0)
			return ctl_fail("cannot list networks");
		return CTL_EXIT_OK;
	}
	return ctl_usage("unknown network command '%.50s'", sub);
}
