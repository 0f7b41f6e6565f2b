/* test_lookup_tmpl: SQL templates become parameterised statements (values
 * bound, never pasted), LDAP filter values are RFC 4515 escaped, and the
 * profile checks of kalectl verify add. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/util.h"
#include "lookup/lookup_int.h"

#define SET(field, value) assert_int_equal(util_fmt(field, sizeof(field), "%s", value), 0)

static void compile_ok(const char *tmpl, int dollar, const char *want_sql, int nparams,
    const char *p0, const char *p1)
{
	struct lookup_sql q;
	char *err = NULL;

	assert_int_equal(lookup_sql_compile(tmpl, dollar, &q, &err), 0);
	assert_null(err);
	assert_string_equal(q.sql, want_sql);
	assert_int_equal(q.nparams, nparams);
	if (p0 != NULL)
		assert_string_equal(q.params[0], p0);
	if (p1 != NULL)
		assert_string_equal(q.params[1], p1);
	lookup_sql_free(&q);
}

static void compile_bad(const char *tmpl, int dollar)
{
	struct lookup_sql q;
	char *err = NULL;

	assert_int_equal(lookup_sql_compile(tmpl, dollar, &q, &err), -1);
	assert_non_null(err);
	assert_null(q.sql);
	assert_int_equal(q.nparams, 0);
	free(err);
}

static void test_sql_compile(void **state)
{
	(void)state;
	compile_ok("select email from mailusers where email='%m'", 0,
	    "select email from mailusers where email=?", 1, "%m", NULL);
	compile_ok("select email from mailusers where email='%m'", 1,
	    "select email from mailusers where email=$1", 1, "%m", NULL);
	compile_ok("select 1 from u where name = '%u' and dom = %d", 1,
	    "select 1 from u where name = $1 and dom = $2", 2, "%u", "%d");
	/* a literal with text around the placeholders is one parameter */
	compile_ok("select 1 from t where a = '%u@%d'", 0, "select 1 from t where a = ?", 1,
	    "%u@%d", NULL);
	compile_ok("select 1 from t where a = 'smtp:%m' or b = 'it''s %m'", 0,
	    "select 1 from t where a = ? or b = ?", 2, "smtp:%m", "it's %m");
	compile_ok("select 1 from t where a = 'a\\'b%m'", 0, "select 1 from t where a = ?", 1,
	    "a'b%m", NULL);
	/* literals without placeholders, identifiers and %% stay as written */
	compile_ok("select 1 from \"t\" where k='x''y' and e=%m and n % 2 = 0 and p %% 3 = 1", 1,
	    "select 1 from \"t\" where k='x''y' and e=$1 and n % 2 = 0 and p % 3 = 1", 1, "%m", NULL);
	compile_ok("select 1 from `t` where e like '%m%%'", 0, "select 1 from `t` where e like ?", 1,
	    "%m%%", NULL);
}

static void test_sql_compile_refused(void **state)
{
	(void)state;
	compile_bad("select 1 from t", 0);
	compile_bad("select 1 from t where e='%m'; drop table t", 0);
	compile_bad("select 1 from t where e='%m' -- x", 0);
	compile_bad("select 1 from t where e='%m' /* x */", 0);
	compile_bad("select 1 from t where e='%m' # x", 0);
	compile_bad("select 1 from t where e='%m' and f=?", 0);
	compile_bad("select 1 from t where e='%m' and f=$1", 1);
	compile_bad("select 1 from t where e='%m", 0);
	compile_bad("select 1 from \"%m\" where e=%m", 1);
	compile_bad("select 1 from t where e='%m'\x01", 0);
	compile_bad("select %m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m,%m", 0);
}

static void expand_is(const char *tmpl, const char *addr, int ldap, const char *want)
{
	char *s = lookup_expand(tmpl, addr, ldap);

	assert_string_equal(s, want);
	free(s);
}

static void test_expand(void **state)
{
	(void)state;
	expand_is("%m", "x'or'1'='1@corp.test", 0, "x'or'1'='1@corp.test");
	expand_is("%u|%d|%m|%%|%x|%", "a@b@c.test", 0, "a@b|c.test|a@b@c.test|%|%x|%");
	expand_is("%u/%d", "nodomain", 0, "nodomain/");
	expand_is("(mail=%m)", "o'brien@d.test", 1, "(mail=o'brien@d.test)");
	expand_is("(mail=%m)", "*)(uid=*@corp.test", 1, "(mail=\\2a\\29\\28uid=\\2a@corp.test)");
	expand_is("(|(mail=%m)(proxyAddresses=smtp:%m))", "a)(|(objectClass=*)@x", 1,
	    "(|(mail=a\\29\\28|\\28objectClass=\\2a\\29@x)(proxyAddresses=smtp:a\\29\\28|\\28objectClass=\\2a\\29@x))");
	expand_is("(uid=%u)", "back\\slash@x", 1, "(uid=back\\5cslash)");
}

static void test_ldap_escape_nul(void **state)
{
	char *s = lookup_ldap_escape("a\0b*", 4);

	(void)state;
	assert_string_equal(s, "a\\00b\\2a");
	free(s);
}

static int check(const char *type, const char *url, const char *query, const char *base,
    const char *filter, int starttls)
{
	struct store_verify v;
	char *err = NULL;
	int rc;

	memset(&v, 0, sizeof(v));
	SET(v.name, "x");
	SET(v.type, type);
	SET(v.url, url);
	SET(v.query, query);
	SET(v.base, base);
	SET(v.filter, filter);
	SET(v.route_attr, "mailHost");
	v.starttls = starttls;
	rc = lookup_profile_check(&v, &err);
	assert_true(rc == 0 ? err == NULL : err != NULL);
	free(err);
	return rc;
}

static void test_profile_check(void **state)
{
	(void)state;
	assert_int_equal(check("localdb", "", "", "", "", 0), 0);
	assert_int_equal(check("mysql", "mysql://u:p%40ss@127.0.0.1:3306/db", "select 1 where e='%m'",
	    "", "", 0), 0);
	assert_int_equal(check("mysql", "mysql://u@host/db", "select 1 where e=%m", "", "", 0), 0);
	assert_int_equal(check("mysql", "mysql://u:p@host:0/db", "select 1 where e=%m", "", "", 0), -1);
	assert_int_equal(check("mysql", "mysql://u:p@host", "select 1 where e=%m", "", "", 0), -1);
	assert_int_equal(check("mysql", "mysql://u:p%zz@host/db", "select 1 where e=%m", "", "", 0), -1);
	assert_int_equal(check("mysql", "mysql://u:p@host/db", "select 1", "", "", 0), -1);
	assert_int_equal(check("pgsql", "postgresql://u:p@h/db", "select 1 where e=%m", "", "", 0), 0);
	assert_int_equal(check("pgsql", "mysql://u:p@h/db", "select 1 where e=%m", "", "", 0), -1);
	assert_int_equal(check("ldap", "ldap://127.0.0.1:389", "", "dc=x", "(mail=%m)", 0), 0);
	assert_int_equal(check("ldap", "ldap://127.0.0.1:389", "", "dc=x", "(mail=%m)", 1), 0);
	assert_int_equal(check("ldap", "ldaps://127.0.0.1", "", "dc=x", "(mail=%m)", 1), -1);
	assert_int_equal(check("ldap", "ldaps://127.0.0.1", "", "dc=x", "(|(mail=%m)(uid=%u))", 0), 0);
	assert_int_equal(check("ldap", "ldap://h", "", "", "(mail=%m)", 0), -1);
	assert_int_equal(check("ldap", "ldap://h", "", "dc=x", "mail=%m", 0), -1);
	assert_int_equal(check("ldap", "ldap://h", "", "dc=x", "(mail=%m))(", 0), -1);
	assert_int_equal(check("ldap", "ldap://h", "", "dc=x", "(mail=x)", 0), -1);
	assert_int_equal(check("ldap", "ldap://h", "", "dc=x", "(mail=%m)(uid=x)", 0), -1);
	assert_int_equal(check("ldap", "http://h", "", "dc=x", "(mail=%m)", 0), -1);
	assert_int_equal(check("smtp", "", "", "", "", 0), 0);
	assert_int_equal(check("nope", "", "", "", "", 0), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sql_compile),
		cmocka_unit_test(test_sql_compile_refused),
		cmocka_unit_test(test_expand),
		cmocka_unit_test(test_ldap_escape_nul),
		cmocka_unit_test(test_profile_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
