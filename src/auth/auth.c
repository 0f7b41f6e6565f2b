/* auth: SMTP AUTH settings and credential checks: reads the settings from
 * the policy store, canonicalises the login, and asks localdb or the ordered
 * POP3/IMAP server list (auth_server.c); fake sender control. Runs on
 * smtpd's lookup threads (blocking) and in kalectl (auth set/show/test). */
#include "auth/auth_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf/conf.h"
#include "lib/util.h"

#define AUTH_DETAIL_MAX 2048

static int auth_err(char **error_r, const char *msg)
{
	if (error_r != NULL)
		*error_r = xstrdup(msg);
	return -1;
}

static int auth_bool(const char *v, int *out)
{
	if (strcmp(v, "yes") == 0 || strcmp(v, "1") == 0 || strcmp(v, "true") == 0 ||
	    strcmp(v, "on") == 0)
		*out = 1;
	else if (strcmp(v, "no") == 0 || strcmp(v, "0") == 0 || strcmp(v, "false") == 0 ||
	    strcmp(v, "off") == 0)
		*out = 0;
	else
		return -1;
	return 0;
}

static int auth_domain_ok(const char *d)
{
	size_t len = strlen(d), label = 0;

	if (len == 0 || len > 253)
		return 0;
	for (size_t i = 0; i <= len; i++) {
		char c = d[i];
		if (c == '.' || c == '\0') {
			if (label == 0 || d[i - 1] == '-')
				return 0;
			label = 0;
		} else if (isalnum((unsigned char)c) || c == '-') {
			if ((label == 0 && c == '-') || ++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return 1;
}

static int auth_profile_ok(const char *p)
{
	size_t len = strlen(p);

	if (len == 0 || len > 63)
		return 0;
	for (; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
			return 0;
	return 1;
}

int auth_setting_check(const char *key, const char *value, char *norm, size_t cap, char **error_r)
{
	int b;
	long long n;

	if (key == NULL || value == NULL)
		return auth_err(error_r, "missing setting");
	if (strcmp(key, "enable") == 0 || strcmp(key, "tls_only") == 0 ||
	    strcmp(key, "fake_sender_control") == 0) {
		if (auth_bool(value, &b) < 0)
			return auth_err(error_r, "expected yes or no");
		value = b ? "yes" : "no";
	} else if (strcmp(key, "timeout") == 0) {
		if (util_strtonum(value, 1, AUTH_TIMEOUT_MAX, &n) < 0)
			return auth_err(error_r, "timeout must be 1-300 seconds");
	} else if (strcmp(key, "username_format") == 0) {
		if (strcmp(value, "username") != 0 && strcmp(value, "address") != 0)
			return auth_err(error_r, "username format must be username or address");
	} else if (strcmp(key, "default_domain") == 0) {
		if (*value != '\0' && !auth_domain_ok(value))
			return auth_err(error_r, "bad default domain");
	} else if (strcmp(key, "method") == 0) {
		if (strcmp(value, "localdb") != 0 && strcmp(value, "servers") != 0 &&
		    !(strncmp(value, "ldap:", 5) == 0 && auth_profile_ok(value + 5)))
			return auth_err(error_r, "method must be localdb, servers or ldap:PROFILE");
	} else {
		return auth_err(error_r, "unknown auth setting");
	}
	if (util_fmt(norm, cap, "%s", value) < 0)
		return auth_err(error_r, "value too long");
	if (strcmp(key, "default_domain") == 0)
		util_lower(norm);
	return 0;
}

int auth_settings_load(store *st, struct auth_settings *s, char **error_r)
{
	static const char *const keys[] = { "enable", "tls_only", "fake_sender_control", "timeout",
		"username_format", "default_domain", "method", NULL };
	char v[320], norm[320];
	long long n;

	memset(s, 0, sizeof(*s));
	s->enable = 1;
	s->tls_only = 1;
	s->fake_sender_control = 1;
	s->timeout = 15;
	s->username_address = 1;
	memcpy(s->method, "localdb", sizeof("localdb"));
	for (int i = 0; keys[i] != NULL; i++) {
		int rc = store_auth_get(st, keys[i], v, sizeof(v));
		if (rc < 0)
			return auth_err(error_r, "auth: cannot read the settings from the store");
		if (rc == 0)
			continue;
		/* a value that does not check (edited by hand) keeps the default */
		if (auth_setting_check(keys[i], v, norm, sizeof(norm), NULL) < 0)
			continue;
		switch (i) {
		case 0: s->enable = strcmp(norm, "yes") == 0; break;
		case 1: s->tls_only = strcmp(norm, "yes") == 0; break;
		case 2: s->fake_sender_control = strcmp(norm, "yes") == 0; break;
		case 3:
			if (util_strtonum(norm, 1, AUTH_TIMEOUT_MAX, &n) == 0)
				s->timeout = (int)n;
			break;
		case 4: s->username_address = strcmp(norm, "address") == 0; break;
		case 5: (void)util_fmt(s->default_domain, sizeof(s->default_domain), "%s", norm); break;
		default: (void)util_fmt(s->method, sizeof(s->method), "%s", norm); break;
		}
	}
	return 0;
}

int auth_settings_get(const struct kale_config *cfg, struct auth_settings *s_r, char **error_r)
{
	store *st = NULL;
	int rc;

	if (store_connect(cfg, &st, error_r) < 0)
		return -1;
	rc = auth_settings_load(st, s_r, error_r);
	store_close(&st);
	return rc;
}

int auth_login_canon(const struct auth_settings *s, const char *login, char *out, size_t cap,
    const char **error_r)
{
	const char *at;
	size_t len = login ? strlen(login) : 0;

	if (len == 0 || len > AUTH_USER_MAX) {
		*error_r = "empty or too long user name";
		return -1;
	}
	for (const char *p = login; *p; p++) {
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			*error_r = "control character or space in the user name";
			return -1;
		}
	}
	at = strrchr(login, '@');
	if (at != NULL) {
		if (at == login || at[1] == '\0' || !auth_domain_ok(at + 1)) {
			*error_r = "the login is not a valid address";
			return -1;
		}
		if (util_fmt(out, cap, "%s", login) < 0) {
			*error_r = "user name too long";
			return -1;
		}
	} else if (s->username_address) {
		*error_r = "the login must be a full address (user@domain)";
		return -1;
	} else if (s->default_domain[0] == '\0') {
		*error_r = "username format without a default domain";
		return -1;
	} else if (util_fmt(out, cap, "%s@%s", login, s->default_domain) < 0) {
		*error_r = "user name too long";
		return -1;
	}
	util_lower(out);
	return 0;
}

struct auth_servers_run {
	const char *user, *password;
	uint64_t deadline;
	SSL_CTX *ctx;
	enum auth_result result;
	int tried, answered;
	char detail[AUTH_DETAIL_MAX];
};

static void auth_detail_add(struct auth_servers_run *r, const char *s)
{
	size_t len = strlen(r->detail);

	if (len > 0 && len + 2 < sizeof(r->detail)) {
		memcpy(r->detail + len, "; ", 3);
		len += 2;
	}
	if (util_fmt(r->detail + len, sizeof(r->detail) - len, "%s", s) < 0)
		r->detail[sizeof(r->detail) - 1] = '\0';
}

static int auth_servers_one(void *ctx, const struct store_auth_server *srv)
{
	struct auth_servers_run *r = ctx;
	char *detail = NULL;
	enum auth_result res;

	if (!srv->enabled)
		return 0;
	if (util_now_ms() >= r->deadline) {
		auth_detail_add(r, "timeout reached before the next server");
		return 1;
	}
	r->tried++;
	res = auth_server_login(srv, r->user, r->password, &r->ctx, r->deadline, &detail);
	auth_detail_add(r, detail ? detail : "?");
	free(detail);
	if (res == AUTH_TEMPFAIL)
		return 0;            /* down or no definite answer: the next one */
	r->result = res;
	r->answered = 1;
	return 1;
}

static enum auth_result auth_servers(store *st, const struct auth_settings *s, const char *user,
    const char *password, char **detail_r)
{
	struct auth_servers_run r;

	memset(&r, 0, sizeof(r));
	r.user = user;
	r.password = password;
	r.deadline = util_now_ms() + (uint64_t)s->timeout * 1000;
	r.result = AUTH_TEMPFAIL;
	if (store_auth_server_list(st, auth_servers_one, &r) < 0) {
		auth_detail_add(&r, "cannot read the auth server list");
		r.result = AUTH_TEMPFAIL;
	} else if (r.tried == 0) {
		auth_detail_add(&r, "no enabled auth servers");
	} else if (!r.answered) {
		auth_detail_add(&r, "no server gave an answer");
	}
	SSL_CTX_free(r.ctx);
	*detail_r = xstrdup(r.detail);
	return r.answered ? r.result : AUTH_TEMPFAIL;
}

static void auth_set_detail(char **detail_r, const char *fmt, const char *arg)
{
	char buf[512];

	if (detail_r == NULL)
		return;
	if (util_fmt(buf, sizeof(buf), fmt, arg ? arg : "") < 0)
		buf[sizeof(buf) - 1] = '\0';
	*detail_r = xstrdup(buf);
}

/* method "ldap:PROFILE": the verification profile gives the directory */
static enum auth_result auth_ldap(store *st, const struct auth_settings *s, const char *addr,
    const char *password, char **detail_r)
{
	struct store_verify *v = xcalloc(1, sizeof(*v));
	char *detail = NULL;
	enum auth_result r = AUTH_TEMPFAIL;
	int rc = store_verify_get(st, s->method + 5, v);

	if (rc < 0) {
		auth_set_detail(detail_r, "%s: cannot read the verification profile", s->method);
	} else if (rc == 0) {
		auth_set_detail(detail_r, "%s: no such verification profile", s->method);
	} else {
		r = auth_ldap_check(v, addr, password, s->timeout, &detail);
		if (detail_r != NULL)
			*detail_r = detail;
		else
			free(detail);
	}
	explicit_bzero(v, sizeof(*v));
	free(v);
	return r;
}

enum auth_result auth_check(const struct kale_config *cfg, const char *user, const char *password,
    char **address_r, char **detail_r)
{
	struct auth_settings s;
	store *st = NULL;
	char addr[AUTH_USER_MAX + 260], *err = NULL, *detail = NULL;
	const char *why;
	enum auth_result r = AUTH_TEMPFAIL;
	int rc;

	if (address_r != NULL)
		*address_r = NULL;
	if (detail_r != NULL)
		*detail_r = NULL;
	if (password == NULL || *password == '\0') {
		auth_set_detail(detail_r, "empty password refused%s", "");
		return AUTH_FAIL;
	}
	if (strlen(password) > AUTH_PASSWORD_MAX) {
		auth_set_detail(detail_r, "password too long%s", "");
		return AUTH_FAIL;
	}
	if (store_connect(cfg, &st, &err) < 0) {
		auth_set_detail(detail_r, "%s", err);
		free(err);
		return AUTH_TEMPFAIL;
	}
	if (auth_settings_load(st, &s, &err) < 0) {
		auth_set_detail(detail_r, "%s", err);
		free(err);
		goto out;
	}
	if (auth_login_canon(&s, user, addr, sizeof(addr), &why) < 0) {
		auth_set_detail(detail_r, "%s", why);
		r = AUTH_FAIL;
		goto out;
	}
	if (strcmp(s.method, "localdb") == 0) {
		rc = store_user_check_password(st, addr, password);
		r = rc == 1 ? AUTH_OK : rc == 0 ? AUTH_FAIL : AUTH_TEMPFAIL;
		auth_set_detail(detail_r, "%s", r == AUTH_OK ? "localdb: accepted" :
		    r == AUTH_FAIL ? "localdb: refused" : "localdb: store error");
	} else if (strcmp(s.method, "servers") == 0) {
		r = auth_servers(st, &s, addr, password, &detail);
		if (detail_r != NULL)
			*detail_r = detail;
		else
			free(detail);
	} else {
		r = auth_ldap(st, &s, addr, password, detail_r);
	}
	if (r == AUTH_OK && address_r != NULL)
		*address_r = xstrdup(addr);
out:
	store_close(&st);
	return r;
}

int auth_sender_allowed(const struct kale_config *cfg, const char *address, const char *sender)
{
	store *st = NULL;
	char **targets = NULL;
	char *err = NULL;
	int n, rc = 0;

	if (address == NULL || sender == NULL || *address == '\0' || *sender == '\0')
		return 0;
	if (strcasecmp(address, sender) == 0)
		return 1;
	if (store_connect(cfg, &st, &err) < 0) {
		free(err);
		return -1;
	}
	n = store_rcpt_resolve(st, sender, &targets, &err);
	if (n < 0) {
		rc = -1;
	} else {
		for (int i = 0; i < n && rc == 0; i++)
			if (strcasecmp(targets[i], address) == 0)
				rc = 1;
		store_targets_free(targets, n);
	}
	free(err);
	store_close(&st);
	return rc;
}
