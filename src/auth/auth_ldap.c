/* auth_ldap: the "ldap:PROFILE" AUTH method: with the verification profile's
 * URL, base, filter and service bind, finds the user's entry, then binds as
 * that DN with the user's password (simple bind; never anonymous, never an
 * empty password). Runs on smtpd's lookup threads and in kalectl auth test. */
#include "auth/auth_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define LDAP_DEPRECATED 0
#include <ldap.h>

#include "lib/util.h"

#define AUTH_FILTER_MAX 4096

/* RFC 4515 escaping of one value into out; 0 or -1 when out is full. */
static int auth_ldap_put(char *out, size_t cap, size_t *len, const char *v, size_t vlen)
{
	for (size_t i = 0; i < vlen; i++) {
		unsigned char c = (unsigned char)v[i];
		char esc[4];
		size_t n = 1;

		if (c == '*' || c == '(' || c == ')' || c == '\\' || c == '\0') {
			snprintf(esc, sizeof(esc), "\\%02x", c);
			n = 3;
		} else {
			esc[0] = (char)c;
		}
		if (*len + n >= cap)
			return -1;
		memcpy(out + *len, esc, n);
		*len += n;
	}
	out[*len] = '\0';
	return 0;
}

int auth_ldap_filter(const char *tmpl, const char *address, char *out, size_t cap)
{
	const char *at = strrchr(address, '@');
	size_t len = 0, ulen = at ? (size_t)(at - address) : strlen(address);
	const char *dom = at ? at + 1 : "";

	out[0] = '\0';
	for (const char *p = tmpl; *p; p++) {
		int rc = 0;
		if (p[0] == '%' && p[1] == 'm') {
			rc = auth_ldap_put(out, cap, &len, address, strlen(address));
			p++;
		} else if (p[0] == '%' && p[1] == 'u') {
			rc = auth_ldap_put(out, cap, &len, address, ulen);
			p++;
		} else if (p[0] == '%' && p[1] == 'd') {
			rc = auth_ldap_put(out, cap, &len, dom, strlen(dom));
			p++;
		} else if (p[0] == '%' && p[1] == '%') {
			if (len + 1 >= cap)
				return -1;
			out[len++] = '%';
			out[len] = '\0';
			p++;
		} else {
			if (len + 1 >= cap)
				return -1;
			out[len++] = *p;
			out[len] = '\0';
		}
		if (rc < 0)
			return -1;
	}
	return 0;
}

static int auth_ldap_down(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_TIMEOUT || rc == LDAP_CONNECT_ERROR ||
	    rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_OTHER || rc == LDAP_TIMELIMIT_EXCEEDED;
}

static void auth_ldap_detail(char **detail_r, const char *profile, const char *what, int rc)
{
	char buf[400];

	if (detail_r == NULL)
		return;
	if (util_fmt(buf, sizeof(buf), "ldap:%s: %s%s%s", profile, what, rc ? ": " : "",
	    rc ? ldap_err2string(rc) : "") < 0)
		buf[sizeof(buf) - 1] = '\0';
	*detail_r = xstrdup(buf);
}

enum auth_result auth_ldap_check(const struct store_verify *p, const char *address,
    const char *password, int timeout, char **detail_r)
{
	struct timeval tv = { timeout > 0 ? timeout : 15, 0 };
	int version = LDAP_VERSION3, rc, n = 0;
	struct berval cred;
	LDAP *ld = NULL;
	LDAPMessage *res = NULL, *e;
	char filter[AUTH_FILTER_MAX], *dn = NULL;
	char *attrs[2] = { (char *)"1.1", NULL };
	enum auth_result r = AUTH_TEMPFAIL;

	if (strcmp(p->type, "ldap") != 0) {
		auth_ldap_detail(detail_r, p->name, "not an ldap verification profile", 0);
		return AUTH_TEMPFAIL;
	}
	if (password == NULL || *password == '\0') {
		auth_ldap_detail(detail_r, p->name, "empty password refused", 0);
		return AUTH_FAIL;
	}
	if (auth_ldap_filter(p->filter, address, filter, sizeof(filter)) < 0) {
		auth_ldap_detail(detail_r, p->name, "search filter too long", 0);
		return AUTH_FAIL;
	}
	if ((rc = ldap_initialize(&ld, p->url)) != LDAP_SUCCESS) {
		auth_ldap_detail(detail_r, p->name, "url", rc);
		return AUTH_TEMPFAIL;
	}
	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	if (p->starttls && (rc = ldap_start_tls_s(ld, NULL, NULL)) != LDAP_SUCCESS) {
		auth_ldap_detail(detail_r, p->name, "starttls", rc);
		goto out;
	}
	/* the service bind for the search: the profile's DN, or anonymous */
	if (p->bind_dn[0] != '\0' && p->bind_password[0] == '\0') {
		auth_ldap_detail(detail_r, p->name, "the profile's bind DN has no password", 0);
		goto out;
	}
	cred.bv_val = (char *)p->bind_password;
	cred.bv_len = strlen(p->bind_password);
	rc = ldap_sasl_bind_s(ld, p->bind_dn[0] ? p->bind_dn : NULL, LDAP_SASL_SIMPLE, &cred,
	    NULL, NULL, NULL);
	if (rc != LDAP_SUCCESS) {
		auth_ldap_detail(detail_r, p->name, "service bind", rc);
		goto out;
	}
	rc = ldap_search_ext_s(ld, p->base, LDAP_SCOPE_SUBTREE, filter, attrs, 0, NULL, NULL, &tv,
	    2, &res);
	if (rc == LDAP_SIZELIMIT_EXCEEDED || (rc == LDAP_SUCCESS && (n = ldap_count_entries(ld, res)) > 1)) {
		auth_ldap_detail(detail_r, p->name, "the login matches more than one entry", 0);
		r = AUTH_FAIL;
		goto out;
	}
	if (rc != LDAP_SUCCESS) {
		auth_ldap_detail(detail_r, p->name, "search", rc);
		goto out;
	}
	if (n == 0 || (e = ldap_first_entry(ld, res)) == NULL) {
		auth_ldap_detail(detail_r, p->name, "refused: no such user in the directory", 0);
		r = AUTH_FAIL;
		goto out;
	}
	if ((dn = ldap_get_dn(ld, e)) == NULL || *dn == '\0') {
		auth_ldap_detail(detail_r, p->name, "the entry has no DN", 0);
		r = AUTH_FAIL;
		goto out;
	}
	/* the user's bind: a DN and a non-empty password, so never anonymous */
	cred.bv_val = (char *)password;
	cred.bv_len = strlen(password);
	rc = ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, NULL);
	if (rc == LDAP_SUCCESS) {
		auth_ldap_detail(detail_r, p->name, "accepted", 0);
		r = AUTH_OK;
	} else if (auth_ldap_down(rc)) {
		auth_ldap_detail(detail_r, p->name, "user bind", rc);
	} else {
		auth_ldap_detail(detail_r, p->name, "refused", rc);
		r = AUTH_FAIL;
	}
out:
	if (dn != NULL)
		ldap_memfree(dn);
	ldap_msgfree(res);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return r;
}
