/* Unit tests for the RFC 3464 DSN builder (src/mail/dsn.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mail/dsn.h"

static const char ORIG[] = "Subject: hello\nFrom: <a@b.test>\n\nbody line\nsecret body\n";

static struct dsn_info info(void)
{
	struct dsn_info i;

	memset(&i, 0, sizeof(i));
	i.reporting_mta = "mx.kale.test";
	i.qid = "0006151A2B3C401F2A3B7C9E";
	i.sender = "alice@example.test";
	i.arrival = 1700000000;
	i.now = 1700000100;
	i.boundary_seed = "0006151A2B3C401F2A3B7CAA";
	return i;
}

static void test_headers_only(void **state)
{
	struct dsn_info in = info();
	struct dsn_rcpt r[2] = {
		{ "bad1@relay.test", NULL, "failed", "5.1.1", "sink.test[127.0.0.1]:25", "550 5.1.1 no such user" },
		{ "bad2@relay.test", "rfc822;Bad2@Relay.TEST", "failed", "5.2.2", NULL, "552 5.2.2 full" },
	};
	size_t len;
	char *d;

	(void)state;
	d = dsn_build(&in, r, 2, ORIG, strlen(ORIG), 0, &len);
	assert_non_null(d);
	assert_int_equal(strlen(d), len);
	assert_non_null(strstr(d, "To: <alice@example.test>\n"));
	assert_non_null(strstr(d, "Auto-Submitted: auto-replied\n"));
	assert_non_null(strstr(d, "Content-Type: multipart/report; report-type=delivery-status;"));
	assert_non_null(strstr(d, "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.kale.test\n"));
	assert_non_null(strstr(d, "Final-Recipient: rfc822; bad1@relay.test\nAction: failed\nStatus: 5.1.1\n"
	    "Remote-MTA: dns; sink.test[127.0.0.1]:25\nDiagnostic-Code: smtp; 550 5.1.1 no such user\n"));
	assert_non_null(strstr(d, "Original-Recipient: rfc822;Bad2@Relay.TEST\nFinal-Recipient: rfc822; bad2@relay.test\n"));
	assert_non_null(strstr(d, "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\n"));
	assert_non_null(strstr(d, "Content-Type: text/rfc822-headers\n\nSubject: hello\nFrom: <a@b.test>\n"));
	assert_null(strstr(d, "secret body"));
	/* ends with the closing boundary */
	assert_non_null(strstr(d, "--\n"));
	assert_int_equal(d[len - 1], '\n');
	assert_non_null(strstr(d + len - 40, "--\n"));
	free(d);
}

static void test_full_and_clean(void **state)
{
	struct dsn_info in = info();
	struct dsn_rcpt r = { "x@y.test", NULL, "failed", "5.0.0", NULL, "550 evil\r\nInjected: yes\x01" };
	size_t len;
	char *d;

	(void)state;
	in.envid = "ENV123";
	d = dsn_build(&in, &r, 1, ORIG, strlen(ORIG), 1, &len);
	assert_non_null(d);
	assert_non_null(strstr(d, "Content-Type: message/rfc822\n\nSubject: hello"));
	assert_non_null(strstr(d, "secret body"));
	assert_non_null(strstr(d, "Original-Envelope-Id: ENV123\n"));
	assert_null(strstr(d, "\nInjected: yes"));
	assert_non_null(strstr(d, "550 evil??Injected: yes?"));
	free(d);
}

static void test_none(void **state)
{
	struct dsn_info in = info();
	size_t len = 7;

	(void)state;
	assert_null(dsn_build(&in, NULL, 0, ORIG, strlen(ORIG), 0, &len));
}

static void test_header_len(void **state)
{
	(void)state;
	assert_int_equal(dsn_header_len("a: b\n\nbody", 10), 6);
	assert_int_equal(dsn_header_len("a: b\nc: d\n", 10), 10);
	assert_int_equal(dsn_header_len("\nbody", 5), 1);
	assert_int_equal(dsn_header_len("", 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_headers_only),
		cmocka_unit_test(test_full_and_clean),
		cmocka_unit_test(test_none),
		cmocka_unit_test(test_header_len),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
