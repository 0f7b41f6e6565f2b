/* ctl_auth: kalectl's SMTP AUTH commands: auth set / show, auth server
 * add / list / del / move, and auth test (one real credential check through
 * auth_check). Runs only in kalectl (as run_as when started by root). */
#include "ctl/ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "lib/util.h"
#include "store/store.h"

#define CTL_AUTH_EXIT_ERROR 2

static int ctl_auth_set(struct ctl *c, int argc, char **argv)
{
	const char *v[7] = { NULL };
	static const char *const keys[7] = { "enable", "tls_only", "fake_sender_control", "timeout",
		"username_format", "default_domain", "method" };
	const struct ctl_opt opts[] = {
		{ "enable", 1, &v[0], NULL }, { "tls-only", 1, &v[1], NULL },
		{ "fake-sender-control", 1, &v[2], NULL }, { "timeout", 1, &v[3], NULL },
		{ "username-format", 1, &v[4], NULL }, { "default-domain", 1, &v[5], NULL },
		{ "method", 1, &v[6], NULL }, { NULL, 0, NULL, NULL } };
	char norm[7][320], *err = NULL;
	const char *pos[1];
	int npos = 0, any = 0;

	if (ctl_getopt(argc, argv, opts, pos, 0, 0, &npos) < 0)
		return ctl_usage(NULL);
	for (int i = 0; i < 7; i++) {
		if (v[i] == NULL)
			continue;
		any = 1;
		if (auth_setting_check(keys[i], v[i], norm[i], sizeof(norm[i]), &err) < 0) {
			ctl_usage("--%s: %s", opts[i].name, err);
			free(err);
			return CTL_EXIT_USAGE;
		}
	}
	if (!any)
		return ctl_usage("auth set needs at least one option");
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	/* every value was checked above: a failure here is a store error */
	for (int i = 0; i < 7; i++) {
		if (v[i] == NULL)
			continue;
		if (store_auth_set(c->st, keys[i], norm[i], &err) < 0) {
			ctl_fail("%s", err ? err : "cannot store the setting");
			free(err);
			return CTL_EXIT_FAIL;
		}
	}
	printf("updated auth settings\n");
	return CTL_EXIT_OK;
}

static int ctl_auth_show(struct ctl *c, int argc, char **argv)
{
	struct auth_settings s;
	const char *pos[1];
	char *err = NULL;
	int npos = 0;

	if (ctl_getopt(argc, argv, NULL, pos, 0, 0, &npos) < 0)
		return ctl_usage(NULL);
	if (ctl_open_store(c) < 0)
		return CTL_EXIT_FAIL;
	if (auth_settings_load(c->st, &s, &err) < 0) {
		ctl_fail("%s", err ? err : "cannot read the auth settings");
		free(err);
		return CTL_EXIT_FAIL;
	}
	printf("enable: %s\n", s.enable ? "yes" : "no");
	printf("tls-only: %s\n", s.tls_only ? "yes" : "no");
	printf("fake-sender-control: %s\n", s.fake_sender_control ? "yes" : "no");
	printf("timeout: %d\n", s.timeout);
	printf("username-format: %s\n", s.username_address ? "address" : "username");
	printf("default-domain: %s\n", s.default_domain[0] ? s.default_domain : "-");
	printf("method: %s\n", s.method);
	return CTL_EXIT_OK;
}

static int ctl_auth_server_row(void *ctx, const struct store_auth_server *srv)
{
	char id[24], pos[16], port[8];
	const char *cells[7] = { id, pos, srv->proto, srv->tls, srv->host, port,
		srv->enabled ? "yes" : "no" };

	if (util_fmt(id, sizeof(id), "%lld", (long long)srv->id) < 0 ||
	    util_fmt(pos, sizeof(pos), "%d", srv->position) < 0 ||
	    util_fmt(port, sizeof(port), "%d", srv->port) < 0)
		return 0;
	ctl_table_add(ctx, cells);
	return 0;
}

static int ctl_auth_server_list(store *st, struct ctl_table *t)
{
	return store_auth_server_list(st, ctl_auth_server_row, t);
}

static int ctl_auth_id(const char *s, int64_t *id_r)
{
	long long v;

	if (util_strtonum(s, 1, INT64_MAX, &v) < 0)
		return -1;
	*id_r = v;
	return 0;
}

static int ctl_auth_server(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "", *pos[2];
	char *err = NULL;
	int npos = 0;
	int64_t id;

	if (strcmp(sub, "add") == 0) {
		const char *proto = NULL, *tls = NULL, *host = NULL, *port = NULL;
		int disabled = 0;
		const struct ctl_opt opts[] = {
			{ "proto", 1, &proto, NULL }, { "tls", 1, &tls, NULL }, { "host", 1, &host, NULL },
			{ "port", 1, &port, NULL }, { "disabled", 0, NULL, &disabled },
			{ NULL, 0, NULL, NULL } };
		struct store_auth_server srv;
		long long p;

		if (ctl_getopt(argc - 1, argv + 1, opts, pos, 0, 0, &npos) < 0)
			return ctl_usage(NULL);
		if (proto == NULL || tls == NULL || host == NULL || port == NULL)
			return ctl_usage("auth server add needs --proto, --tls, --host and --port");
		memset(&srv, 0, sizeof(srv));
		if (util_fmt(srv.proto, sizeof(srv.proto), "%s", proto) < 0 ||
		    util_fmt(srv.tls, sizeof(srv.tls), "%s", tls) < 0 ||
		    util_fmt(srv.host, sizeof(srv.host), "%s", host) < 0 ||
		    util_strtonum(port, 1, 65535, &p) < 0)
			return ctl_usage("bad --proto, --tls, --host or --port");
		srv.port = (int)p;
		srv.enabled = !disabled;
		if (store_auth_server_check(&srv, &err) < 0) {
			ctl_usage("%s", err);
			free(err);
			return CTL_EXIT_USAGE;
		}
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_auth_server_add(c->st, &srv, &id, &err) < 0)
			goto fail;
		printf("added auth server %lld\n", (long long)id);
		return CTL_EXIT_OK;
	}
	if (strcmp(sub, "list") == 0) {
		static const char *const hdr[7] = { "ID", "POS", "PROTO", "TLS", "HOST", "PORT", "ENABLED" };
		return ctl_table_list(c, argc - 1, argv + 1, 7, hdr, ctl_auth_server_list, "auth servers");
	}
	if (strcmp(sub, "del") == 0) {
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 1, 1, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_auth_id(pos[0], &id) < 0)
			return ctl_usage("bad server ID '%.30s'", pos[0]);
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_auth_server_del(c->st, id, &err) < 0)
			goto fail;
		printf("deleted auth server %lld\n", (long long)id);
		return CTL_EXIT_OK;
	}
	if (strcmp(sub, "move") == 0) {
		long long p;
		if (ctl_getopt(argc - 1, argv + 1, NULL, pos, 2, 2, &npos) < 0)
			return ctl_usage(NULL);
		if (ctl_auth_id(pos[0], &id) < 0 || util_strtonum(pos[1], 1, 1000, &p) < 0)
			return ctl_usage("auth server move needs ID POSITION (numbers)");
		if (ctl_open_store(c) < 0)
			return CTL_EXIT_FAIL;
		if (store_auth_server_move(c->st, id, (int)p, &err) < 0)
			goto fail;
		printf("moved auth server %lld to position %lld\n", (long long)id, p);
		return CTL_EXIT_OK;
	}
	return ctl_usage("unknown auth server command '%.50s'", sub);
fail:
	ctl_fail("%s", err ? err : "failed");
	free(err);
	return CTL_EXIT_FAIL;
}

static void ctl_auth_print(const char *label, const char *s)
{
	fputs(label, stdout);
	for (const char *p = s ? s : ""; *p; p++)
		putchar((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p);
	putchar('\n');
}

static int ctl_auth_test(struct ctl *c, int argc, char **argv)
{
	const char *pos[1];
	int npos = 0, stdin_pw = 0;
	const struct ctl_opt opts[] = { { "password-stdin", 0, NULL, &stdin_pw }, { NULL, 0, NULL, NULL } };
	char *password, *address = NULL, *detail = NULL;
	enum auth_result r;

	if (ctl_getopt(argc, argv, opts, pos, 1, 1, &npos) < 0)
		return ctl_usage(NULL);
	if (!stdin_pw)
		return ctl_usage("auth test needs --password-stdin");
	/* an empty password is passed on: auth_check refuses it */
	if ((password = ctl_read_password_flags(CTL_PW_CR | CTL_PW_EMPTY)) == NULL)
		return CTL_AUTH_EXIT_ERROR;
	if (ctl_enter(c) < 0) {
		explicit_bzero(password, strlen(password));
		free(password);
		return CTL_AUTH_EXIT_ERROR;
	}
	/* auth_check only connects; kalectl may run before kaled ever ran, so
	 * migrate first (a failure is reported by auth_check's own open) */
	{
		char *err = NULL;
		if (store_migrate(&c->cfg, &err) < 0)
			free(err);
	}
	r = auth_check(&c->cfg, pos[0], password, &address, &detail);
	explicit_bzero(password, strlen(password));
	free(password);
	if (r == AUTH_OK) {
		ctl_auth_print("accepted: ", address);
		ctl_auth_print("detail: ", detail);
	} else if (r == AUTH_FAIL) {
		ctl_auth_print("refused: ", detail);
	} else {
		ctl_auth_print("error: ", detail);
	}
	free(address);
	free(detail);
	return r == AUTH_OK ? CTL_EXIT_OK : r == AUTH_FAIL ? CTL_EXIT_FAIL : CTL_AUTH_EXIT_ERROR;
}

int ctl_auth_cmd(struct ctl *c, int argc, char **argv)
{
	const char *sub = argc > 0 ? argv[0] : "";

	if (strcmp(sub, "set") == 0)
		return ctl_auth_set(c, argc - 1, argv + 1);
	if (strcmp(sub, "show") == 0)
		return ctl_auth_show(c, argc - 1, argv + 1);
	if (strcmp(sub, "server") == 0) {
		if (argc < 2)
			return ctl_usage("auth server needs add, list, del or move");
		return ctl_auth_server(c, argc - 1, argv + 1);
	}
	if (strcmp(sub, "test") == 0)
		return ctl_auth_test(c, argc - 1, argv + 1);
	return ctl_usage("unknown auth command '%.50s'", sub);
}
