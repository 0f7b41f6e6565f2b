/* fuzz_imap_parse: libFuzzer target for src/imap/imap_parse.c (built by
 * CMake with -DKALE_FUZZ=ON, run by scripts/fuzz.sh). The input is one IMAP
 * command as on the wire; it is also fed, as a C string, to the literal
 * header, sequence set, date, FETCH attribute and mailbox name parsers.
 * Checks: no crash; literal sizes within max; sequence sets sorted, merged
 * and consistent with imap_seqset_has(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap/imap_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk_args(const struct imap_arg *a, size_t n, int depth)
{
	size_t i;

	if (depth > IMAP_MAX_DEPTH + 1)
		abort();
	for (i = 0; i < n; i++) {
		if (a[i].type == IMAP_ARG_LIST) {
			walk_args(a[i].list, a[i].n, depth + 1);
			continue;
		}
		if (a[i].type != IMAP_ARG_LITERAL && a[i].s != NULL && strlen(a[i].s) != a[i].len)
			abort(); /* ATOM/STRING: NUL-terminated copy without NUL */
		(void)imap_arg_str(&a[i]);
		(void)imap_arg_is_string(&a[i]);
		(void)imap_arg_is_atom(&a[i], "BODY");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct imap_cmd cmd;
	struct imap_seqset set;
	struct imap_fetch_att att;
	const char *err = NULL;
	uint64_t lsize = 0;
	int nonsync = 0, r;
	time_t t;
	char *s;
	size_t i;

	if (size > 65536)
		return 0;

	memset(&cmd, 0, sizeof(cmd));
	if (imap_cmd_parse((const char *)data, size, &cmd, &err) == 0)
		walk_args(cmd.args, cmd.n_args, 0);
	else if (err == NULL)
		abort();
	imap_cmd_free(&cmd);

	r = imap_literal_header((const char *)data, size, 4096, &lsize, &nonsync);
	if (r == 1 && lsize > 4096)
		abort();

	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	memset(&set, 0, sizeof(set));
	if (imap_seqset_parse(s, 1000, &set) == 0) {
		for (i = 0; i < set.n; i++) {
			if (set.r[i].lo > set.r[i].hi)
				abort();
			if (i > 0 && set.r[i - 1].hi >= set.r[i].lo)
				abort();
			if (!imap_seqset_has(&set, set.r[i].lo) || !imap_seqset_has(&set, set.r[i].hi))
				abort();
		}
		imap_seqset_free(&set);
	}

	(void)imap_date_parse(s, &t);
	(void)imap_datetime_parse(s, &t);

	memset(&att, 0, sizeof(att));
	err = NULL;
	if (imap_fetch_att_parse(s, &att, &err) == 0) {
		if (att.n_part < 0 || att.n_part > IMAP_MAX_PART_DEPTH ||
		    att.n_fields < 0 || att.n_fields > IMAP_MAX_FIELDS ||
		    memchr(att.name, '\0', sizeof(att.name)) == NULL)
			abort();
		imap_fetch_att_free(&att);
	}

	(void)imap_mailbox_name_ok(s);
	free(s);
	return 0;
}
