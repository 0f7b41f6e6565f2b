/* test_lookup_ldap: the one RFC 4515 escaper (lookup_ldap_escape) and the
 * filters made with it, for the ldap verification backend and for AUTH's
 * ldap method alike; and what the shared LDAP code makes of libldap's
 * result codes (configuration error or temporary failure). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define LDAP_DEPRECATED 0
#include <ldap.h>

#include "auth/auth_int.h"
#include "lib/util.h"
#include "lookup/lookup_ldap.h"
#include "store/store.h"

#define SET(field, value) assert_int_equal(util_fmt(field, sizeof(field), "%s", value), 0)

static void escape_is(const char *v, size_t len, const char *want)
{
	char *s = lookup_ldap_escape(v, len);

	assert_non_null(s);
	assert_string_equal(s, want);
	free(s);
}

static void test_escape(void **state)
{
	(void)state;
	escape_is("", 0, "");
	escape_is("plain.user-1@corp.test", 22, "plain.user-1@corp.test");
	escape_is("*", 1, "\\2a");
	escape_is("(", 1, "\\28");
	escape_is(")", 1, "\\29");
	escape_is("\\", 1, "\\5c");
	escape_is("\0", 1, "\\00");
	escape_is("a\0b", 3, "a\\00b");              /* NUL does not end the value */
	escape_is("*)(uid=*", 8, "\\2a\\29\\28uid=\\2a");
	escape_is("\\2a", 3, "\\5c2a");              /* an escape is escaped again */
	/* non-ASCII bytes (UTF-8 and stray ones) pass unchanged: RFC 4515
	 * allows UTF-8 in values, and only the five specials are escaped */
	escape_is("j\xc3\xb6rg", 5, "j\xc3\xb6rg");
	escape_is("\xff\x80(", 3, "\xff\x80\\28");
	/* the other ASCII specials of other syntaxes are left alone */
	escape_is("a=b,c+d;e<f>g\"h#", 16, "a=b,c+d;e<f>g\"h#");
	/* only len bytes are read */
	escape_is("ab*cd", 2, "ab");
}

static void test_filter(void **state)
{
	char *f, out[64];

	(void)state;
	f = lookup_ldap_filter("(mail=%m)", "*)(uid=*@corp.test");
	assert_string_equal(f, "(mail=\\2a\\29\\28uid=\\2a@corp.test)");
	free(f);
	f = lookup_ldap_filter("(&(uid=%u)(o=%d)(x=100%%))", "a\\b@(c).test");
	assert_string_equal(f, "(&(uid=a\\5cb)(o=\\28c\\29.test)(x=100%))");
	free(f);
	/* AUTH's filter is the same escaper, bounded */
	assert_int_equal(auth_ldap_filter("(mail=%m)", "*)(uid=*@x", out, sizeof(out)), 0);
	assert_string_equal(out, "(mail=\\2a\\29\\28uid=\\2a@x)");
	assert_int_equal(auth_ldap_filter("(uid=%u)", "j\xc3\xb6rg@x", out, sizeof(out)), 0);
	assert_string_equal(out, "(uid=j\xc3\xb6rg)");
	assert_int_equal(auth_ldap_filter("(mail=%m)", "***@x", out, 12), -1);
	assert_string_equal(out, "");
	assert_int_equal(auth_ldap_filter("(mail=%m)", "a@x", out, 12), 0);
	assert_string_equal(out, "(mail=a@x)");
}

static void test_kinds(void **state)
{
	(void)state;
	assert_int_equal(lookup_ldap_kind(LDAP_INVALID_CREDENTIALS), LOOKUP_CONFIG);
	assert_int_equal(lookup_ldap_kind(LDAP_NO_SUCH_OBJECT), LOOKUP_CONFIG);
	assert_int_equal(lookup_ldap_kind(LDAP_INVALID_DN_SYNTAX), LOOKUP_CONFIG);
	assert_int_equal(lookup_ldap_kind(LDAP_FILTER_ERROR), LOOKUP_CONFIG);
	assert_int_equal(lookup_ldap_kind(LDAP_INSUFFICIENT_ACCESS), LOOKUP_CONFIG);
	assert_int_equal(lookup_ldap_kind(LDAP_SERVER_DOWN), LOOKUP_ERROR);
	assert_int_equal(lookup_ldap_kind(LDAP_TIMEOUT), LOOKUP_ERROR);
	assert_int_equal(lookup_ldap_kind(LDAP_BUSY), LOOKUP_ERROR);
	assert_int_equal(lookup_ldap_kind(LDAP_UNAVAILABLE), LOOKUP_ERROR);
	assert_int_equal(lookup_ldap_kind(LDAP_TIMELIMIT_EXCEEDED), LOOKUP_ERROR);
	assert_true(lookup_ldap_conn_error(LDAP_SERVER_DOWN));
	assert_true(lookup_ldap_conn_error(LDAP_TIMEOUT));
	assert_false(lookup_ldap_conn_error(LDAP_INVALID_CREDENTIALS));
	assert_false(lookup_ldap_conn_error(LDAP_NO_SUCH_OBJECT));
}

static void test_open_refusals(void **state)
{
	struct store_verify v;
	struct ldap *ld = (struct ldap *)&v;
	char *detail = NULL;

	(void)state;
	memset(&v, 0, sizeof(v));
	SET(v.name, "x");
	SET(v.type, "ldap");
	/* a bind DN without a password would be an unauthenticated bind */
	SET(v.url, "ldap://127.0.0.1:1");
	SET(v.bind_dn, "cn=reader,dc=x");
	assert_int_equal(lookup_ldap_open(&v, 2, &ld, &detail), LOOKUP_CONFIG);
	assert_null(ld);
	assert_non_null(strstr(detail, "password"));
	xfree(&detail);
	/* not a URL libldap takes */
	SET(v.url, "nonsense://x");
	assert_int_equal(lookup_ldap_open(&v, 2, &ld, &detail), LOOKUP_CONFIG);
	assert_null(ld);
	xfree(&detail);
	/* nobody listens: temporary (port 1 on loopback is closed) */
	SET(v.url, "ldap://127.0.0.1:1");
	v.bind_dn[0] = '\0';
	assert_int_equal(lookup_ldap_open(&v, 2, &ld, &detail), LOOKUP_ERROR);
	assert_null(ld);
	assert_non_null(detail);
	xfree(&detail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_filter),
		cmocka_unit_test(test_kinds),
		cmocka_unit_test(test_open_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
