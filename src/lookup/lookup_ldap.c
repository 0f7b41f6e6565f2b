/* lookup_ldap: the ldap verification backend (OpenLDAP libldap): a pooled,
 * bound connection per worker thread (ldap://, ldaps://, StartTLS), the
 * filter template with RFC 4515 escaped values, and the route attribute
 * (mailHost) of the entry found. Runs in smtpd's lookup threads and in
 * kalectl verify test. */
#include "lookup/lookup_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define LDAP_DEPRECATED 0
#include <ldap.h>

#include "lib/util.h"

#define LOOKUP_ROUTE_MAX 300

void lookup_ldap_close(struct lookup_conn *c)
{
	if (c->handle != NULL)
		ldap_unbind_ext_s(c->handle, NULL, NULL);
	c->handle = NULL;
}

static char *lookup_ldap_err(const char *what, int rc)
{
	char buf[512];

	if (util_fmt(buf, sizeof(buf), "ldap %s: %s (%d)", what, ldap_err2string(rc), rc) < 0)
		buf[0] = '\0';
	return xstrdup(buf);
}

static int lookup_ldap_connect(struct lookup_conn *c, char **detail_r)
{
	struct timeval tv = { LOOKUP_TIMEOUT(c), 0 };
	int version = LDAP_VERSION3, rc;
	struct berval cred;
	LDAP *ld = NULL;

	rc = ldap_initialize(&ld, c->prof.url);
	if (rc != LDAP_SUCCESS) {
		*detail_r = lookup_ldap_err("url", rc);
		return -1;
	}
	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	if (c->prof.starttls) {
		rc = ldap_start_tls_s(ld, NULL, NULL);
		if (rc != LDAP_SUCCESS) {
			*detail_r = lookup_ldap_err("starttls", rc);
			goto fail;
		}
	}
	cred.bv_val = c->prof.bind_password;
	cred.bv_len = strlen(c->prof.bind_password);
	/* anonymous when no bind DN; an empty password with a DN would be an
	 * unauthenticated bind (RFC 4513 5.1.2): refused */
	if (c->prof.bind_dn[0] != '\0' && cred.bv_len == 0) {
		*detail_r = xstrdup("ldap bind: a bind DN needs a password");
		goto fail;
	}
	rc = ldap_sasl_bind_s(ld, c->prof.bind_dn[0] ? c->prof.bind_dn : NULL, LDAP_SASL_SIMPLE,
	    &cred, NULL, NULL, NULL);
	if (rc != LDAP_SUCCESS) {
		*detail_r = lookup_ldap_err("bind", rc);
		goto fail;
	}
	c->handle = ld;
	return 0;
fail:
	ldap_unbind_ext_s(ld, NULL, NULL);
	return -1;
}

static int lookup_ldap_conn_error(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_TIMEOUT || rc == LDAP_CONNECT_ERROR ||
	    rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_OTHER;
}

/* 0 found, 1 missing, -1 error; *conn_err_r 1 when the connection failed. */
static int lookup_ldap_run(struct lookup_conn *c, const char *address, int *conn_err_r,
    char **route_r, char **detail_r)
{
	struct timeval tv = { LOOKUP_TIMEOUT(c), 0 };
	char *attrs[2] = { NULL, NULL }, *filter;
	LDAPMessage *res = NULL, *e;
	struct berval **vals;
	int rc, ret = -1;

	*conn_err_r = 0;
	filter = lookup_expand(c->prof.filter, address, 1);
	attrs[0] = c->prof.route_attr[0] ? c->prof.route_attr : (char *)"1.1";
	rc = ldap_search_ext_s(c->handle, c->prof.base, LDAP_SCOPE_SUBTREE, filter, attrs, 0,
	    NULL, NULL, &tv, 2, &res);
	if (rc != LDAP_SUCCESS && rc != LDAP_SIZELIMIT_EXCEEDED) {
		*detail_r = lookup_ldap_err("search", rc);
		*conn_err_r = lookup_ldap_conn_error(rc);
		goto out;
	}
	e = ldap_first_entry(c->handle, res);
	if (e == NULL) {
		ret = 1;
		goto out;
	}
	ret = 0;
	if (c->prof.route_attr[0] != '\0' &&
	    (vals = ldap_get_values_len(c->handle, e, c->prof.route_attr)) != NULL) {
		if (vals[0] != NULL && vals[0]->bv_len > 0 && vals[0]->bv_len <= LOOKUP_ROUTE_MAX &&
		    memchr(vals[0]->bv_val, '\0', vals[0]->bv_len) == NULL)
			*route_r = xstrndup(vals[0]->bv_val, vals[0]->bv_len);
		ldap_value_free_len(vals);
	}
out:
	ldap_msgfree(res);
	free(filter);
	return ret;
}

enum lookup_result lookup_ldap_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r)
{
	int pooled = c->handle != NULL, conn_err = 0, rc;

	*detail_r = NULL;
	*route_r = NULL;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->handle == NULL && lookup_ldap_connect(c, detail_r) < 0)
			return LOOKUP_ERROR;
		rc = lookup_ldap_run(c, address, &conn_err, route_r, detail_r);
		if (rc >= 0)
			return rc == 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
		lookup_ldap_close(c);
		if (!conn_err || !pooled)
			return LOOKUP_ERROR;
		xfree(detail_r);
		pooled = 0;
	}
	return LOOKUP_ERROR;
}
