/* lookup_ldap: the ldap verification backend (OpenLDAP libldap): a pooled,
 * bound connection per worker thread (ldap://, ldaps://, StartTLS), the
 * filter template with RFC 4515 escaped values, and the route attribute
 * (mailHost) of the entry found. Its connect/bind code and the escaper are
 * shared with AUTH's ldap method (lookup_ldap.h). Runs in the lookup
 * threads of smtpd and qmgr and in kalectl verify test. */
#include "lookup/lookup_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define LDAP_DEPRECATED 0
#include <ldap.h>

#include "lib/util.h"

#define LOOKUP_ROUTE_MAX 300

static char *lookup_ldap_err(const char *what, int rc)
{
	char buf[512];

	if (util_fmt(buf, sizeof(buf), "ldap %s: %s (%d)", what, ldap_err2string(rc), rc) < 0)
		buf[0] = '\0';
	return xstrdup(buf);
}

int lookup_ldap_conn_error(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_TIMEOUT || rc == LDAP_CONNECT_ERROR ||
	    rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_OTHER;
}

enum lookup_result lookup_ldap_kind(int rc)
{
	switch (rc) {
	case LDAP_INVALID_CREDENTIALS:
	case LDAP_INAPPROPRIATE_AUTH:
	case LDAP_INSUFFICIENT_ACCESS:
	case LDAP_STRONG_AUTH_REQUIRED:
	case LDAP_CONFIDENTIALITY_REQUIRED:
	case LDAP_NO_SUCH_OBJECT:         /* the base DN */
	case LDAP_INVALID_DN_SYNTAX:
	case LDAP_FILTER_ERROR:
	case LDAP_UNDEFINED_TYPE:
	case LDAP_INAPPROPRIATE_MATCHING:
	case LDAP_INVALID_SYNTAX:
	case LDAP_PARAM_ERROR:
		return LOOKUP_CONFIG;
	default:
		return LOOKUP_ERROR;
	}
}

enum lookup_result lookup_ldap_open(const struct store_verify *v, int timeout_s,
    struct ldap **ld_r, char **detail_r)
{
	struct timeval tv = { timeout_s > 0 ? timeout_s : LOOKUP_TIMEOUT_S, 0 };
	int version = LDAP_VERSION3, rc;
	enum lookup_result res;
	struct berval cred;
	LDAP *ld = NULL;

	*ld_r = NULL;
	rc = ldap_initialize(&ld, v->url);
	if (rc != LDAP_SUCCESS) {
		*detail_r = lookup_ldap_err("url", rc);
		return LOOKUP_CONFIG;
	}
	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
	ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	if (v->starttls) {
		/* a failed handshake (an untrusted certificate, a server without
		 * StartTLS) may be a server's passing state: temporary */
		rc = ldap_start_tls_s(ld, NULL, NULL);
		if (rc != LDAP_SUCCESS) {
			*detail_r = lookup_ldap_err("starttls", rc);
			res = LOOKUP_ERROR;
			goto fail;
		}
	}
	cred.bv_val = (char *)v->bind_password;
	cred.bv_len = strlen(v->bind_password);
	/* anonymous when no bind DN; an empty password with a DN would be an
	 * unauthenticated bind (RFC 4513 5.1.2): refused */
	if (v->bind_dn[0] != '\0' && cred.bv_len == 0) {
		*detail_r = xstrdup("ldap bind: a bind DN needs a password");
		res = LOOKUP_CONFIG;
		goto fail;
	}
	rc = ldap_sasl_bind_s(ld, v->bind_dn[0] ? v->bind_dn : NULL, LDAP_SASL_SIMPLE,
	    &cred, NULL, NULL, NULL);
	if (rc != LDAP_SUCCESS) {
		*detail_r = lookup_ldap_err("bind", rc);
		res = lookup_ldap_kind(rc);
		goto fail;
	}
	*ld_r = (struct ldap *)ld;
	return LOOKUP_FOUND;
fail:
	ldap_unbind_ext_s(ld, NULL, NULL);
	return res;
}

char *lookup_ldap_filter(const char *tmpl, const char *address)
{
	return lookup_expand(tmpl, address, 1);
}

/* ---- the backend ---- */

static int lookup_ldap_check(const struct store_verify *v, char **error_r)
{
	const char *msg = NULL;

	if (strncmp(v->url, "ldap://", 7) != 0 && strncmp(v->url, "ldaps://", 8) != 0 &&
	    strncmp(v->url, "ldapi://", 8) != 0)
		msg = "ldap needs --url ldap://HOST[:PORT] or ldaps://HOST[:PORT]";
	else if (!ldap_is_ldap_url(v->url) && strncmp(v->url, "ldapi://", 8) != 0)
		msg = "bad ldap url";
	else if (v->starttls && strncmp(v->url, "ldap://", 7) != 0)
		msg = "--starttls goes with ldap:// only";
	else if (v->base[0] == '\0')
		msg = "ldap needs --base DN";
	else if (v->filter[0] == '\0')
		msg = "ldap needs --filter, e.g. (mail=%m)";
	else if (lookup_ldap_filter_check(v->filter, error_r) < 0)
		return -1;
	for (const char *p = v->route_attr; msg == NULL && *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != ';' && *p != '.')
			msg = "bad --route-attribute";
	if (msg == NULL)
		return 0;
	if (error_r != NULL)
		*error_r = xstrdup(msg);
	return -1;
}

static void lookup_ldap_close(struct lookup_conn *c)
{
	if (c->handle != NULL)
		ldap_unbind_ext_s(c->handle, NULL, NULL);
	c->handle = NULL;
}

static enum lookup_result lookup_ldap_connect(struct lookup_conn *c, char **detail_r)
{
	struct ldap *ld = NULL;
	enum lookup_result res = lookup_ldap_open(&c->prof, LOOKUP_TIMEOUT(c), &ld, detail_r);

	c->handle = ld;
	return res;
}

static enum lookup_result lookup_ldap_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r, int *conn_failed_r)
{
	struct timeval tv = { LOOKUP_TIMEOUT(c), 0 };
	char *attrs[2] = { NULL, NULL }, *filter;
	LDAPMessage *res = NULL, *e;
	struct berval **vals;
	enum lookup_result ret;
	int rc;

	filter = lookup_ldap_filter(c->prof.filter, address);
	attrs[0] = c->prof.route_attr[0] ? c->prof.route_attr : (char *)"1.1";
	rc = ldap_search_ext_s(c->handle, c->prof.base, LDAP_SCOPE_SUBTREE, filter, attrs, 0,
	    NULL, NULL, &tv, 2, &res);
	if (rc != LDAP_SUCCESS && rc != LDAP_SIZELIMIT_EXCEEDED) {
		*detail_r = lookup_ldap_err("search", rc);
		*conn_failed_r = lookup_ldap_conn_error(rc);
		ret = lookup_ldap_kind(rc);
		goto out;
	}
	e = ldap_first_entry(c->handle, res);
	if (e == NULL) {
		ret = LOOKUP_MISSING;
		goto out;
	}
	ret = LOOKUP_FOUND;
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

/* libldap's global options are set up at the first call: not from several
 * threads at once */
static void lookup_ldap_init(void)
{
	int v = 0;

	(void)ldap_get_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
}

const struct lookup_backend lookup_backend_ldap = {
	.name = "ldap",
	.check = lookup_ldap_check,
	.open = lookup_ldap_connect,
	.ask = lookup_ldap_ask,
	.close = lookup_ldap_close,
	.init = lookup_ldap_init,
};
