/* auth_ldap: the "ldap:PROFILE" AUTH method: with the verification profile's
 * URL, base, filter and service bind, finds the user's entry, then binds as
 * that DN with the user's password (simple bind; never anonymous, never an
 * empty password). The connection, StartTLS, service bind and the RFC 4515
 * escaper are the ldap lookup backend's (lookup/lookup_ldap.h). Runs on
 * smtpd's lookup threads and in kalectl auth test. */
#include "auth/auth_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define LDAP_DEPRECATED 0
#include <ldap.h>

#include "lib/util.h"
#include "lookup/lookup_ldap.h"

#define AUTH_FILTER_MAX 4096

/* The filter with RFC 4515 escaped values: the lookup module's one escaper
 * (lookup_ldap_filter), here bounded to cap bytes. */
int auth_ldap_filter(const char *tmpl, const char *address, char *out, size_t cap)
{
	char *f = lookup_ldap_filter(tmpl, address);
	int rc = util_fmt(out, cap, "%s", f);

	free(f);
	if (rc < 0 && cap > 0)
		out[0] = '\0';
	return rc < 0 ? -1 : 0;
}

static int auth_ldap_down(int rc)
{
	return lookup_ldap_conn_error(rc) || rc == LDAP_TIMELIMIT_EXCEEDED;
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
	int rc, n = 0;
	struct berval cred;
	LDAP *ld = NULL;
	LDAPMessage *res = NULL, *e;
	char filter[AUTH_FILTER_MAX], *dn = NULL, *err = NULL;
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
	/* the lookup backend's connect: URL, StartTLS, the profile's service
	 * bind (its DN, or anonymous) */
	if (lookup_ldap_open(p, (int)tv.tv_sec, &ld, &err) != LOOKUP_FOUND) {
		auth_ldap_detail(detail_r, p->name, err ? err : "connect", 0);
		free(err);
		return AUTH_TEMPFAIL;
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
