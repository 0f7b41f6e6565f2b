/* ctl: kalectl's shared machinery: usage, option parsing, loading the config
 * and entering data_dir as run_as, password input, time parsing, tables and
 * JSON strings. Runs only in kalectl. */
#include "ctl/ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "ctl/ctl_client.h"
#include "lib/util.h"

static const char ctl_usage_text[] =
	"usage: kalectl [-c FILE] COMMAND ...\n"
	"  domain add DOMAIN --local|--relay HOST[:PORT]|[IPv6][:PORT]|mx|ldap:PROFILE\n"
	"                    [--tls opportunistic|require] [--verify PROFILE|none]\n"
	"                    [--filter POLICY]\n"
	"  domain set DOMAIN [--verify PROFILE|none] [--filter POLICY]\n"
	"  domain list | domain del DOMAIN\n"
	"  user add ADDRESS [--password-stdin] | user passwd ADDRESS --password-stdin\n"
	"  user import FILE.csv | user list [DOMAIN] | user del ADDRESS\n"
	"  alias add ADDRESS TARGET[,TARGET...] | alias list | alias del ADDRESS\n"
	"  network add CIDR | network list | network del CIDR\n"
	"  log search [--from ADDR] [--to ADDR] [--ip IP] [--action ACTION]\n"
	"             [--since TIME] [--limit N] [--json]\n"
	"  verify add NAME --type localdb|mysql|pgsql|ldap|smtp [--url URL] [--query SQL]\n"
	"             [--base DN] [--filter FILTER] [--bind-dn DN --bind-password-stdin]\n"
	"             [--route-attribute ATTR] [--mode realtime|cache] [--ttl-found S]\n"
	"             [--ttl-missing S] [--fallback PROFILE] [--timeout S] [--starttls]\n"
	"  verify test NAME ADDRESS | verify list | verify del NAME | verify flush [NAME]\n"
	"  auth set [--enable yes|no] [--tls-only yes|no] [--fake-sender-control yes|no]\n"
	"           [--timeout S] [--username-format username|address]\n"
	"           [--default-domain DOMAIN] [--method localdb|servers|ldap:PROFILE]\n"
	"  auth show | auth test USER --password-stdin\n"
	"  auth server add --proto pop3|imap --tls plain|ssl|starttls --host HOST --port PORT\n"
	"                  [--disabled]\n"
	"  auth server list | auth server del ID | auth server move ID POSITION\n"
	"  filter list | filter show [POLICY] [--json]\n"
	"  filter add POLICY [--copy-of POLICY] | filter del POLICY\n"
	"  filter set [--policy POLICY] CHECK [--action ACTION] [--score N]\n"
	"             [--on-error tempfail|pass] [check options]\n"
	"             dnsbl: --zones ZONE[=WEIGHT],... --threshold N\n"
	"             greylist: --delay DURATION --expire DURATION --auto-allow N\n"
	"             spf: --fail|--softfail|--permerror|--temperror ACTION (--action: all)\n"
	"  filter set [--policy POLICY] score [--tag N] [--quarantine N] [--reject N]\n"
	"  list add allow|block sender|client|helo|recipient VALUE [--policy POLICY]\n"
	"           [--comment TEXT] [--skip CHECK,...]\n"
	"  list del allow|block KIND VALUE [--policy POLICY] | list show [--policy P] [--json]\n"
	"  greylist list [--json] | greylist flush [ADDRESS|IP]\n"
	"  policy test --ip IP [--helo NAME] --from ADDR|<> --to ADDR [--json]\n"
	"  trace QID [--json]\n"
	"  dkim keygen DOMAIN [--selector SEL] [--algorithm rsa-sha256|ed25519-sha256] [--json]\n"
	"  dkim list [--json] | dkim del DOMAIN [--selector SEL]\n"
	"  dkim sign DOMAIN FILE [--selector SEL] | dkim verify FILE [--json] [--dns HOST:PORT]\n"
	"  status | reload\n"
	"  queue list [--json] | queue show QID | queue flush [QID]\n"
	"  queue hold QID | queue release QID | queue delete QID | queue bounce QID\n"
	"config: -c FILE, else $KALE_CONF, else /etc/kale/kale.conf\n"
	"exit: 0 ok, 1 refused or failed, 2 bad usage\n";

void ctl_print_usage(FILE *f)
{
	fputs(ctl_usage_text, f);
}

int ctl_usage(const char *fmt, ...)
{
	va_list ap;

	if (fmt != NULL) {
		fputs("kalectl: ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	ctl_print_usage(stderr);
	return CTL_EXIT_USAGE;
}

int ctl_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("kalectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CTL_EXIT_FAIL;
}

int ctl_getopt(int argc, char **argv, const struct ctl_opt *opts,
    const char **pos, int min_pos, int max_pos, int *npos_r)
{
	int npos = 0, only_pos = 0;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *eq;
		const struct ctl_opt *o = NULL;
		size_t nlen;

		if (only_pos || a[0] != '-' || a[1] == '\0') {
			if (npos >= max_pos) {
				fprintf(stderr, "kalectl: unexpected argument '%.100s'\n", a);
				return -1;
			}
			pos[npos++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_pos = 1;
			continue;
		}
		if (a[1] != '-') {
			fprintf(stderr, "kalectl: unknown option '%.100s'\n", a);
			return -1;
		}
		eq = strchr(a + 2, '=');
		nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		for (const struct ctl_opt *p = opts; p != NULL && p->name != NULL; p++)
			if (strlen(p->name) == nlen && memcmp(p->name, a + 2, nlen) == 0)
				o = p;
		if (o == NULL) {
			if (strncmp(a, "--password", 10) == 0)
				fprintf(stderr, "kalectl: passwords are read from stdin only "
				    "(--password-stdin)\n");
			else
				fprintf(stderr, "kalectl: unknown option '%.100s'\n", a);
			return -1;
		}
		if (!o->has_arg) {
			if (eq != NULL) {
				fprintf(stderr, "kalectl: option --%s takes no value\n", o->name);
				return -1;
			}
			*o->flag = 1;
		} else if (eq != NULL) {
			*o->value = eq + 1;
		} else if (i + 1 < argc) {
			*o->value = argv[++i];
		} else {
			fprintf(stderr, "kalectl: option --%s needs a value\n", o->name);
			return -1;
		}
	}
	if (npos < min_pos) {
		fprintf(stderr, "kalectl: missing argument\n");
		return -1;
	}
	if (npos_r != NULL)
		*npos_r = npos;
	return 0;
}

int ctl_enter(struct ctl *c)
{
	char *err = NULL;
	const char *perr = NULL;
	uid_t uid = 0;
	gid_t gid = 0;
	int drop = 0;

	if (c->in_data_dir)
		return 0;
	if (!c->cfg_loaded) {
		if (conf_load(c->conf_path, &c->cfg, &err) < 0) {
			ctl_fail("%s", err ? err : "cannot load the config");
			free(err);
			return -1;
		}
		c->cfg_loaded = 1;
	}
	umask(027);
	if (geteuid() == 0 && c->cfg.run_as != NULL && c->cfg.run_as[0] != '\0') {
		if (util_user_ids(c->cfg.run_as, &uid, &gid) < 0) {
			ctl_fail("run_as user '%s' does not exist", c->cfg.run_as);
			return -1;
		}
		drop = 1;
	}
	if (fs_mkdirs(c->cfg.data_dir, 0750) < 0) {
		ctl_fail("cannot create %s: %s", c->cfg.data_dir, strerror(errno));
		return -1;
	}
	if (drop && chown(c->cfg.data_dir, uid, gid) < 0) {
		ctl_fail("cannot chown %s: %s", c->cfg.data_dir, strerror(errno));
		return -1;
	}
	if (chdir(c->cfg.data_dir) < 0) {
		ctl_fail("cannot enter %s: %s", c->cfg.data_dir, strerror(errno));
		return -1;
	}
	if (drop)
		ctl_preconnect("control.sock");
	if (drop && util_drop_privs(uid, gid, &perr) < 0) {
		ctl_fail("cannot become %s: %s", c->cfg.run_as, perr);
		return -1;
	}
	c->in_data_dir = 1;
	return 0;
}

int ctl_open_store(struct ctl *c)
{
	char *err = NULL;

	if (c->st != NULL)
		return 0;
	if (ctl_enter(c) < 0)
		return -1;
	if (store_open_migrate(&c->cfg, &c->st, &err) < 0) {
		ctl_fail("%s", err ? err : "cannot open the store");
		free(err);
		return -1;
	}
	return 0;
}

void ctl_close(struct ctl *c)
{
	store_close(&c->st);
	if (c->cfg_loaded)
		conf_free(&c->cfg);
	c->cfg_loaded = 0;
}

char *ctl_read_password(void)
{
	return ctl_read_password_flags(0);
}

char *ctl_read_password_flags(int flags)
{
	char *buf = xmalloc(CTL_PASSWORD_MAX + 2);
	size_t len = 0;

	while (len < CTL_PASSWORD_MAX + 1) {
		ssize_t n = read(STDIN_FILENO, buf + len, CTL_PASSWORD_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ctl_fail("reading the password from stdin: %s", strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if ((flags & CTL_PW_CR) && len > 0 && buf[len - 1] == '\r')
		len--;
	if (len > CTL_PASSWORD_MAX) {
		ctl_fail("password too long (max %d bytes)", CTL_PASSWORD_MAX);
		goto fail;
	}
	buf[len] = '\0';
	if (memchr(buf, '\0', len) != NULL || memchr(buf, '\n', len) != NULL) {
		ctl_fail("the password must be one line without NUL bytes");
		goto fail;
	}
	if (len == 0 && !(flags & CTL_PW_EMPTY)) {
		ctl_fail("empty password on stdin");
		goto fail;
	}
	return buf;
fail:
	explicit_bzero(buf, CTL_PASSWORD_MAX + 2);
	free(buf);
	return NULL;
}

void ctl_fmt_time(int64_t ts, char buf[32])
{
	time_t t = (time_t)ts;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, 32, "%Y-%m-%d %H:%M:%S", &tm) == 0)
		util_fmt(buf, 32, "%lld", (long long)ts);
}

int64_t ctl_parse_time(const char *s, int64_t now)
{
	struct tm tm;
	const char *end;
	size_t len = strlen(s);

	if (len >= 2 && len <= 12 && strchr("smhd", s[len - 1]) != NULL) {
		char num[16];
		long long v;
		int64_t mul = s[len - 1] == 's' ? 1 : s[len - 1] == 'm' ? 60 :
		    s[len - 1] == 'h' ? 3600 : 86400;
		memcpy(num, s, len - 1);
		num[len - 1] = '\0';
		if (num[0] >= '0' && num[0] <= '9' &&
		    util_strtonum(num, 0, 100LL * 365 * 86400, &v) == 0 && v * mul <= now)
			return now - v * mul;
		return -1;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%d", &tm);
	if (end == NULL || tm.tm_year < 70 || len < 10 || s[4] != '-' || s[7] != '-')
		return -1;
	if (*end == 'T' || *end == ' ') {
		const char *e2 = strptime(end + 1, "%H:%M:%S", &tm);
		if (e2 == NULL)
			e2 = strptime(end + 1, "%H:%M", &tm);
		if (e2 == NULL)
			return -1;
		end = e2;
		if (*end == 'Z')
			end++;
	}
	if (*end != '\0')
		return -1;
	return (int64_t)timegm(&tm);
}

json_t *ctl_json_str(const char *s)
{
	json_t *j;
	char *copy;

	if (s == NULL)
		return json_null();
	if ((j = json_string(s)) != NULL)
		return j;
	/* not UTF-8: keep ASCII, replace every other byte */
	copy = xstrdup(s);
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	j = json_string(copy);
	free(copy);
	return j ? j : json_null();
}

static char *ctl_cell(const char *s)
{
	char *c = xstrdup(s ? s : "-");

	for (char *p = c; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return c;
}

void ctl_table_init(struct ctl_table *t, int ncol, const char *const *header)
{
	t->ncol = ncol;
	t->nrows = 0;
	t->cells = NULL;
	ctl_table_add(t, header);
}

void ctl_table_add(struct ctl_table *t, const char *const *cells)
{
	t->cells = xrealloc(t->cells, sizeof(char *) * (size_t)t->ncol * (size_t)(t->nrows + 1));
	for (int i = 0; i < t->ncol; i++)
		t->cells[t->nrows * t->ncol + i] = ctl_cell(cells[i]);
	t->nrows++;
}

void ctl_table_print(const struct ctl_table *t, FILE *out)
{
	size_t *w = xcalloc((size_t)t->ncol, sizeof(size_t));

	for (int r = 0; r < t->nrows; r++)
		for (int i = 0; i < t->ncol; i++) {
			size_t l = strlen(t->cells[r * t->ncol + i]);
			if (l > w[i])
				w[i] = l;
		}
	for (int r = 0; r < t->nrows; r++) {
		for (int i = 0; i < t->ncol; i++) {
			const char *cell = t->cells[r * t->ncol + i];
			if (i == t->ncol - 1)
				fprintf(out, "%s\n", cell);
			else
				fprintf(out, "%-*s  ", (int)w[i], cell);
		}
	}
	free(w);
}

void ctl_table_free(struct ctl_table *t)
{
	for (int i = 0; i < t->nrows * t->ncol; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

int ctl_print_json(json_t *j)
{
	if (j == NULL)
		return ctl_fail("out of memory");
	json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	fputc('\n', stdout);
	json_decref(j);
	return CTL_EXIT_OK;
}

void ctl_rows_init(struct ctl_rows *o, int json, int ncol, const char *const *header)
{
	memset(o, 0, sizeof(*o));
	if (json)
		o->arr = json_array();
	else
		ctl_table_init(&o->t, ncol, header);
}

int ctl_rows_end(struct ctl_rows *o, int rc, const char *what)
{
	if (o->arr != NULL) {
		if (rc < 0) {
			json_decref(o->arr);
			return ctl_fail("cannot read %s", what);
		}
		return ctl_print_json(o->arr);
	}
	if (rc == 0)
		ctl_table_print(&o->t, stdout);
	ctl_table_free(&o->t);
	return rc == 0 ? CTL_EXIT_OK : ctl_fail("cannot read %s", what);
}

int ctl_result(int rc, char **errp, const char *ok_msg, const char *arg)
{
	if (rc < 0) {
		ctl_fail("%s", *errp ? *errp : "failed");
		free(*errp);
		*errp = NULL;
		return CTL_EXIT_FAIL;
	}
	if (ok_msg != NULL)
		printf("%s %s\n", ok_msg, arg);
	return CTL_EXIT_OK;
}

int ctl_table_list(struct ctl *c, int argc, char **argv, int ncol, const char *const *header,
    int (*list)(store *st, struct ctl_table *t), const char *what)
{
	const char *pos[1];
	int npos = 0, rc;
	struct ctl_table t;

	if (ctl_getopt(argc, argv, NULL, pos, 0, 0, &npos) < 0)
		return ctl_usage(NULL);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	ctl_table_init(&t, ncol, header);
	rc = list(c->st, &t);
	if (rc == 0)
		ctl_table_print(&t, stdout);
	ctl_table_free(&t);
	return rc == 0 ? CTL_EXIT_OK : ctl_fail("cannot list %s", what);
}
