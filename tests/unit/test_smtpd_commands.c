/* test_smtpd_commands: the smtpd command table (src/smtpd/smtpd_session.c)
 * without a live session: every parsed verb finds its entry, unknown verbs
 * find none, and the state and HELO/MAIL gating gives the replies the
 * handlers gave before the table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtpd/smtp_parse.h"
#include "smtpd/smtpd_int.h"

#define ALL (SMTPD_NEED_HELO | SMTPD_NEED_MAIL)

/* The entry for a command line, through the real parser. */
static const struct smtpd_command *entry_for(const char *line)
{
	char buf[SMTP_LINE_MAX + 1];
	struct smtp_cmd cmd;
	size_t len = strlen(line);

	assert_true(len < sizeof(buf));
	memcpy(buf, line, len);
	buf[len] = '\0';
	assert_int_equal(smtp_parse_command(buf, len, &cmd), SMTP_PARSE_OK);
	return smtpd_command_find(cmd.verb);
}

static void test_every_verb(void **state)
{
	static const struct { enum smtp_verb v; const char *name; } verbs[] = {
		{ SMTP_HELO, "HELO" }, { SMTP_EHLO, "EHLO" }, { SMTP_MAIL, "MAIL" },
		{ SMTP_RCPT, "RCPT" }, { SMTP_DATA, "DATA" }, { SMTP_BDAT, "BDAT" },
		{ SMTP_RSET, "RSET" }, { SMTP_NOOP, "NOOP" }, { SMTP_QUIT, "QUIT" },
		{ SMTP_VRFY, "VRFY" }, { SMTP_EXPN, "EXPN" }, { SMTP_HELP, "HELP" },
		{ SMTP_STARTTLS, "STARTTLS" }, { SMTP_AUTH, "AUTH" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		const struct smtpd_command *c = smtpd_command_find(verbs[i].v);
		assert_non_null(c);
		assert_int_equal(c->verb, verbs[i].v);
		assert_string_equal(c->name, verbs[i].name);
		assert_non_null(c->fn);
		/* every entry is taken in SMTPD_CMD once its needs are met */
		assert_null(smtpd_command_refusal(c, SMTPD_CMD, ALL));
		/* an entry with needs says how it refuses */
		if (c->needs)
			assert_non_null(c->refuse);
	}
	assert_null(smtpd_command_find(SMTP_UNKNOWN));
}

static void test_lines(void **state)
{
	(void)state;
	assert_int_equal(entry_for("ehlo client.example")->verb, SMTP_EHLO);
	assert_int_equal(entry_for("MAIL FROM:<a@example.org>")->verb, SMTP_MAIL);
	assert_int_equal(entry_for("rcpt to:<b@example.org>")->verb, SMTP_RCPT);
	assert_int_equal(entry_for("BDAT 10 LAST")->verb, SMTP_BDAT);
	assert_int_equal(entry_for("StartTLS")->verb, SMTP_STARTTLS);
	assert_null(entry_for("XYZZY"));
	assert_null(entry_for("TURN"));
}

static void test_needs(void **state)
{
	const struct smtpd_command *mail = smtpd_command_find(SMTP_MAIL);
	const struct smtpd_command *rcpt = smtpd_command_find(SMTP_RCPT);
	const struct smtpd_command *data = smtpd_command_find(SMTP_DATA);

	(void)state;
	assert_string_equal(smtpd_command_refusal(mail, SMTPD_CMD, 0), "503 5.5.1 Send HELO/EHLO first");
	assert_null(smtpd_command_refusal(mail, SMTPD_CMD, SMTPD_NEED_HELO));
	assert_string_equal(smtpd_command_refusal(rcpt, SMTPD_CMD, SMTPD_NEED_HELO),
	    "503 5.5.1 Need MAIL before RCPT");
	assert_null(smtpd_command_refusal(rcpt, SMTPD_CMD, ALL));
	assert_string_equal(smtpd_command_refusal(data, SMTPD_CMD, SMTPD_NEED_HELO),
	    "503 5.5.1 Need MAIL command");
	assert_null(smtpd_command_refusal(data, SMTPD_CMD, ALL));
	/* no needs: taken before HELO (the handlers check the rest) */
	{
		static const enum smtp_verb free_verbs[] = {
			SMTP_HELO, SMTP_EHLO, SMTP_BDAT, SMTP_RSET, SMTP_NOOP, SMTP_QUIT,
			SMTP_VRFY, SMTP_EXPN, SMTP_HELP, SMTP_STARTTLS, SMTP_AUTH,
		};
		for (size_t i = 0; i < sizeof(free_verbs) / sizeof(free_verbs[0]); i++)
			assert_null(smtpd_command_refusal(smtpd_command_find(free_verbs[i]), SMTPD_CMD, 0));
	}
}

static void test_states(void **state)
{
	static const enum smtpd_state other[] = {
		SMTPD_GREETING, SMTPD_DATA, SMTPD_BDAT, SMTPD_COMMIT, SMTPD_AUTH,
		SMTPD_WAIT, SMTPD_CLOSING,
	};

	(void)state;
	/* commands are lines read in SMTPD_CMD only */
	for (int v = SMTP_HELO; v <= SMTP_AUTH; v++) {
		const struct smtpd_command *c = smtpd_command_find((enum smtp_verb)v);
		assert_non_null(c);
		for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
			assert_string_equal(smtpd_command_refusal(c, other[i], ALL),
			    "503 5.5.1 Bad sequence of commands");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_verb),
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_needs),
		cmocka_unit_test(test_states),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
