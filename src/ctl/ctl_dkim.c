/* ctl_dkim: kalectl's DKIM commands (operator.md §6): dkim keygen|list|del
 * manage the signing keys in the policy store, and two diagnostics, dkim
 * sign (prints a message signed with a domain's key) and dkim verify
 * (prints each signature's result, key records asked through kale's
 * resolver). Keys and signatures are src/mail/dkim.c's work; this file
 * parses the command line, reads files and prints. Security: a private
 * key is never printed (list reads none) and is wiped after use; the
 * message files are read before kalectl drops to run_as (they may be the
 * operator's), but parsed only after. Runs only in kalectl. */
#include "ctl/ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lib/dns.h"
#include "lib/util.h"
#include "mail/dkim.h"

#define CTL_DKIM_RESULTS 64       /* signatures printed by dkim verify */

/* Reads a whole message file ("-": stdin) of at most KDKIM_MSG_MAX bytes.
 * malloc'd and NUL-terminated, or NULL after printing the error. */
static char *ctl_dkim_read(const char *path, size_t *len_r)
{
	int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	char *buf = NULL;

	if (fd < 0) {
		ctl_fail("cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fs_read_to_end(fd, KDKIM_MSG_MAX, &buf, len_r) < 0) {
		if (errno == E2BIG)
			ctl_fail("%s: larger than %u bytes", path, KDKIM_MSG_MAX);
		else
			ctl_fail("cannot read %s: %s", path, strerror(errno));
	}
	if (fd != STDIN_FILENO)
		close(fd);
	return buf;
}

/* ---- keygen ---- */

/* The TXT value as a zone-file record: quoted strings of at most 255 bytes
 * (the value is base64 and "v=DKIM1; k=...; p=": nothing to escape). */
static void ctl_dkim_print_zone(const char *name, const char *txt)
{
	size_t len = strlen(txt);

	printf("zone:  %s. 3600 IN TXT (", name);
	for (size_t i = 0; i < len; i += 255)
		printf(" \"%.*s\"", (int)(len - i < 255 ? len - i : 255), txt + i);
	printf(" )\n");
}

static int ctl_dkim_keygen(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *selector = NULL, *algorithm = "rsa-sha256";
	int npos = 0, json = 0, rc;
	const struct ctl_opt opts[] = {
		{ "selector", 1, &selector, NULL }, { "algorithm", 1, &algorithm, NULL },
		{ "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
	struct store_dkim_key k;
	struct store_domain d;
	char sel[64], name[330], *pem = NULL, *txt = NULL, *err = NULL;

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (!kdkim_algorithm_ok(algorithm))
		return ctl_usage("--algorithm takes rsa-sha256 or ed25519-sha256");
	if (selector == NULL) {
		time_t now = time(NULL);
		struct tm tm;
		gmtime_r(&now, &tm);
		(void)util_fmt(sel, sizeof(sel), "kale%04d%02d", tm.tm_year + 1900, tm.tm_mon + 1);
	} else if (!kdkim_selector_ok(selector) || util_fmt(sel, sizeof(sel), "%s", selector) < 0) {
		return ctl_usage("bad --selector '%.64s' (labels of A-Z a-z 0-9 - _, at most 63)",
		    selector);
	}
	util_lower(sel);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	/* refusals before the work of making a key */
	if ((rc = store_domain_get(c->st, pos[0], &d)) <= 0)
		return rc < 0 ? ctl_fail("cannot read the domains")
		    : ctl_fail("no domain %.253s (kalectl domain add)", pos[0]);
	memset(&k, 0, sizeof(k));
	if ((rc = store_dkim_get(c->st, d.name, sel, &k)) != 0) {
		OPENSSL_cleanse(&k, sizeof(k));
		return rc < 0 ? ctl_fail("cannot read the DKIM keys")
		    : ctl_fail("DKIM key %s for %s already exists (choose another --selector)", sel,
		    d.name);
	}
	if (kdkim_keygen(algorithm, &pem, &txt, &err) < 0)
		return ctl_result(-1, &err, NULL, NULL);
	(void)util_fmt(k.domain, sizeof(k.domain), "%s", d.name);
	(void)util_fmt(k.selector, sizeof(k.selector), "%s", sel);
	(void)util_fmt(k.algorithm, sizeof(k.algorithm), "%s", algorithm);
	if (util_fmt(k.private_key, sizeof(k.private_key), "%s", pem) < 0 ||
	    util_fmt(k.txt, sizeof(k.txt), "%s", txt) < 0) {
		rc = ctl_fail("the new key does not fit the store");
		goto out;
	}
	k.created = (int64_t)time(NULL);
	rc = store_dkim_add(c->st, &k, &err);
	if (rc < 0) {
		rc = ctl_result(-1, &err, NULL, NULL);
		goto out;
	}
	(void)util_fmt(name, sizeof(name), "%s._domainkey.%s", k.selector, k.domain);
	if (json) {
		rc = ctl_print_json(json_pack("{s:s, s:s, s:s, s:s, s:s}", "domain", k.domain,
		    "selector", k.selector, "algorithm", k.algorithm, "name", name, "txt", k.txt));
		goto out;
	}
	printf("added DKIM key %s for %s (%s); publish this TXT record:\n", k.selector, k.domain,
	    k.algorithm);
	printf("name:  %s\nvalue: %s\n", name, k.txt);
	ctl_dkim_print_zone(name, k.txt);
	rc = CTL_EXIT_OK;
out:
	OPENSSL_cleanse(&k, sizeof(k));
	kdkim_secret_free(&pem);
	free(txt);
	return rc;
}

/* ---- list ---- */

struct ctl_dkim_list {
	struct ctl_rows r;
	char last[256];          /* the previous row's domain: the first row of one signs */
};

static int ctl_dkim_row(void *ctx, const struct store_dkim_key *k)
{
	struct ctl_dkim_list *o = ctx;
	int active = strcmp(o->last, k->domain) != 0;
	char created[32], name[330];

	(void)util_fmt(o->last, sizeof(o->last), "%s", k->domain);
	(void)util_fmt(name, sizeof(name), "%s._domainkey.%s", k->selector, k->domain);
	if (o->r.arr != NULL) {
		json_array_append_new(o->r.arr, json_pack("{s:s, s:s, s:s, s:I, s:b, s:s, s:s}",
		    "domain", k->domain, "selector", k->selector, "algorithm", k->algorithm,
		    "created", (json_int_t)k->created, "active", active, "name", name, "txt", k->txt));
		return 0;
	}
	ctl_fmt_time(k->created, created);
	{
		const char *cells[5] = { k->domain, k->selector, k->algorithm, created,
			active ? "yes" : "-" };
		ctl_table_add(&o->r.t, cells);
	}
	return 0;
}

static int ctl_dkim_list(struct ctl *c, int argc, char **argv)
{
	static const char *const hdr[5] = { "DOMAIN", "SELECTOR", "ALGORITHM", "CREATED", "SIGNS" };
	int json = 0, npos = 0;
	const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { NULL, 0, NULL, NULL } };
	struct ctl_dkim_list o;
	const char *pos[1];

	if (ctl_getopt(argc, argv, opts, pos, 0, 0, &npos) < 0)
		return ctl_usage(NULL);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	memset(&o, 0, sizeof(o));
	ctl_rows_init(&o.r, json, 5, hdr);
	return ctl_rows_end(&o.r, store_dkim_list(c->st, ctl_dkim_row, &o), "the DKIM keys");
}

/* ---- del ---- */

static int ctl_dkim_del(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *selector = NULL;
	const struct ctl_opt opts[] = { { "selector", 1, &selector, NULL }, { NULL, 0, NULL, NULL } };
	int npos = 0;
	char *err = NULL;
	long n;

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	n = store_dkim_del(c->st, pos[0], selector, &err);
	if (n < 0)
		return ctl_result(-1, &err, NULL, NULL);
	if (selector != NULL)
		printf("deleted DKIM key %s for %s\n", selector, pos[0]);
	else
		printf("deleted %ld DKIM key%s for %s\n", n, n == 1 ? "" : "s", pos[0]);
	return CTL_EXIT_OK;
}

/* ---- sign ---- */

/* dkim sign DOMAIN FILE [--selector SEL]: the signature field, then the
 * message as it was (the field's line ends follow the message's). */
static int ctl_dkim_sign(struct ctl *c, int argc, char **argv)
{
	const char *pos[2], *selector = NULL;
	const struct ctl_opt opts[] = { { "selector", 1, &selector, NULL }, { NULL, 0, NULL, NULL } };
	struct store_dkim_key *k;
	char *msg, *hdr = NULL, *err = NULL;
	const char *eol;
	size_t len;
	int npos = 0, rc;

	if (ctl_getopt(argc, argv, opts, pos, 2, 2, &npos) < 0)
		return ctl_usage(NULL);
	if ((msg = ctl_dkim_read(pos[1], &len)) == NULL)
		return CTL_EXIT_FAIL;
	if (ctl_open_store(c) < 0) {
		free(msg);
		return CTL_EXIT_FAIL;
	}
	k = xcalloc(1, sizeof(*k));
	rc = store_dkim_get(c->st, pos[0], selector, k);
	if (rc <= 0) {
		rc = rc < 0 ? ctl_fail("cannot read the DKIM keys") : selector != NULL
		    ? ctl_fail("no DKIM key %.64s for %.253s", selector, pos[0])
		    : ctl_fail("no DKIM key for %.253s (kalectl dkim keygen)", pos[0]);
		goto out;
	}
	if (kdkim_sign(k->domain, k->selector, k->algorithm, k->private_key, msg, len, &hdr,
	    &err) < 0) {
		rc = ctl_result(-1, &err, NULL, NULL);
		goto out;
	}
	eol = memchr(msg, '\n', len);
	if (eol != NULL && eol > msg && eol[-1] == '\r') {
		/* a CRLF message gets a CRLF field */
		for (const char *p = hdr; *p; p++) {
			if (*p == '\n')
				fputc('\r', stdout);
			fputc(*p, stdout);
		}
	} else {
		fputs(hdr, stdout);
	}
	fwrite(msg, 1, len, stdout);
	rc = CTL_EXIT_OK;
out:
	OPENSSL_cleanse(k, sizeof(*k));
	free(k);
	free(hdr);
	free(msg);
	return rc;
}

/* ---- verify ---- */

static enum dns_status ctl_dkim_txt(void *arg, const char *name, struct dns_txt_set *txt)
{
	const char *err = NULL;

	return dns_sync_txt(arg, name, txt, &err);
}

/* dkim verify FILE [--json] [--dns HOST:PORT]: key records from --dns, or
 * from the [dns] servers of the config. */
static int ctl_dkim_verify(struct ctl *c, int argc, char **argv)
{
	const char *pos[1], *dns = NULL;
	int npos = 0, json = 0, n = 0, rc;
	const struct ctl_opt opts[] = { { "json", 0, NULL, &json }, { "dns", 1, &dns, NULL },
		{ NULL, 0, NULL, NULL } };
	struct kdkim_result *res = NULL;
	struct dns_sync *ds = NULL;
	struct kdkim_dns kd;
	struct conf_addr a;
	char servers[1024], *msg, *err = NULL;
	size_t len;

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (dns != NULL && (conf_parse_addr(dns, &a) < 0 ||
	    conf_addr_format(&a, servers, sizeof(servers)) < 0))
		return ctl_usage("--dns takes HOST:PORT or [IPv6]:PORT, not '%.64s'", dns);
	if ((msg = ctl_dkim_read(pos[0], &len)) == NULL)
		return CTL_EXIT_FAIL;
	/* the config, data_dir and (as root) run_as before the message is parsed */
	if (ctl_enter(c) < 0) {
		free(msg);
		return CTL_EXIT_FAIL;
	}
	if (dns == NULL && conf_dns_csv(&c->cfg, servers, sizeof(servers)) < 0) {
		free(msg);
		return ctl_fail("[dns] servers too long");
	}
	if ((ds = dns_sync_new(servers, NULL, &err)) == NULL) {
		free(msg);
		return ctl_result(-1, &err, NULL, NULL);
	}
	kd.txt = ctl_dkim_txt;
	kd.arg = ds;
	res = xcalloc(CTL_DKIM_RESULTS, sizeof(*res));
	if (kdkim_verify(msg, len, &kd, res, CTL_DKIM_RESULTS, &n, &err) < 0) {
		rc = ctl_result(-1, &err, NULL, NULL);
		goto out;
	}
	if (json) {
		json_t *arr = json_array();
		for (int i = 0; i < n; i++)
			json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s}", "result",
			    res[i].result, "domain", res[i].domain, "selector", res[i].selector,
			    "algorithm", res[i].algorithm, "reason", res[i].reason));
		rc = ctl_print_json(arr);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		char line[1024];
		(void)kdkim_ar_format(&res[i], line, sizeof(line));
		printf("%s\n", line);
	}
	rc = CTL_EXIT_OK;
out:
	free(res);
	dns_sync_free(&ds);
	free(msg);
	return rc;
}

int ctl_dkim_cmd(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "keygen") == 0)
		return ctl_dkim_keygen(c, argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0)
		return ctl_dkim_list(c, argc - 1, argv + 1);
	if (strcmp(sub, "del") == 0)
		return ctl_dkim_del(c, argc - 1, argv + 1);
	if (strcmp(sub, "sign") == 0)
		return ctl_dkim_sign(c, argc - 1, argv + 1);
	if (strcmp(sub, "verify") == 0)
		return ctl_dkim_verify(c, argc - 1, argv + 1);
	return ctl_usage("unknown dkim command '%.50s'", sub);
}
