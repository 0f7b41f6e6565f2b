/* fuzz_imap_search: libFuzzer target for src/imap/imap_search.c (built by
 * CMake with -DKALE_FUZZ=ON, run by scripts/fuzz.sh). The input is the
 * argument part of a SEARCH command as on the wire ("a SEARCH " is put in
 * front); a program that parses is run against a few fixed messages.
 * Checks: no crash; a refusal always has a reason; match answers 0 or 1. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "imap/imap_search.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fmsg {
	const char *text;
	uint64_t size;
	time_t idate;
};

static int f_size(void *arg, uint64_t *size_r)
{
	*size_r = ((struct fmsg *)arg)->size;
	return 0;
}

static time_t f_idate(void *arg)
{
	return ((struct fmsg *)arg)->idate;
}

static int f_text(void *arg, const char **data_r, size_t *len_r, size_t *body_off_r)
{
	const struct fmsg *m = arg;
	const char *b;

	if (m->text == NULL)
		return -1;
	*data_r = m->text;
	*len_r = strlen(m->text);
	b = strstr(m->text, "\r\n\r\n");
	*body_off_r = b ? (size_t)(b - m->text) + 4 : *len_r;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fmsg msgs[3] = {
		{ "From: a@b.test\r\nTo: c@d.test\r\nSubject: hello\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
		  "\r\nbody text\r\n", 100, 760000000 },
		{ "Subject: =?utf-8?q?x?=\r\n\r\n", 30, 1700000000 },
		{ NULL, 0, 0 },
	};
	struct imap_cmd cmd;
	struct imap_search_key *prog = NULL;
	const char *err = NULL;
	char *line;

	if (size > 16384)
		return 0;
	line = malloc(size + 12);
	if (line == NULL)
		return 0;
	memcpy(line, "a SEARCH ", 9);
	memcpy(line + 9, data, size);
	memcpy(line + 9 + size, "\r\n", 2);
	memset(&cmd, 0, sizeof(cmd));
	if (imap_cmd_parse(line, size + 11, &cmd, &err) == 0) {
		int r = imap_search_parse(cmd.args, cmd.n_args, 3, 42, &prog, &err);
		if (r == IMAP_SEARCH_OK) {
			for (uint32_t i = 0; i < 3; i++) {
				struct imap_search_msg m = { i + 1, 40 + i, i == 0 ? IMAP_FL_SEEN : 0, &msgs[i],
					f_size, f_idate, f_text };
				int k = imap_search_match(prog, &m);
				if (k != 0 && k != 1)
					abort();
			}
			imap_search_free(&prog);
		} else if (err == NULL || prog != NULL) {
			abort();
		}
	}
	imap_cmd_free(&cmd);
	free(line);
	return 0;
}
