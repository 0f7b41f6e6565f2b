/* fuzz_pop3_parse: libFuzzer target for src/pop3/pop3_parse.c (built by
 * CMake with -DKALE_FUZZ=ON, run by scripts/fuzz.sh). The input is a command
 * line for pop3_parse() and a stored message for the transfer filter and the
 * size counter. Checks: no crash; arguments bounded; filter output within
 * 2*n per feed, ends in ".\r\n", never has a bare LF, and is the same
 * whether fed whole or byte by byte. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pop3/pop3_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t xfer(const char *in, size_t n, int64_t top, size_t step, char *out)
{
	struct pop3_xfer x;
	size_t pos = 0, len = 0, w, end;

	pop3_xfer_init(&x, top);
	while (pos < n) {
		end = step ? pos + step : n;
		if (end > n)
			end = n;
		w = pop3_xfer_feed(&x, in + pos, end - pos, out + len);
		if (w > 2 * (end - pos))
			abort();
		len += w;
		pos = end;
	}
	w = pop3_xfer_finish(&x, out + len);
	if (w > 5)
		abort();
	return len + w;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char o1[2 * 4096 + 8], o2[2 * 4096 + 8];
	struct pop3_cmd cmd;
	struct pop3_size sz;
	const char *err = NULL, *in = (const char *)data;
	enum pop3_parse_result r;
	size_t n1, n2, i;
	int64_t top;

	if (size > 4096)
		return 0;

	memset(&cmd, 0, sizeof(cmd));
	r = pop3_parse(in, size, &cmd, &err);
	if (r == POP3_PARSE_OK) {
		if ((int)cmd.verb < 0 || cmd.verb >= POP3_CMD_COUNT ||
		    memchr(cmd.arg, '\0', sizeof(cmd.arg)) == NULL)
			abort();
		(void)pop3_verb_name(cmd.verb);
	} else if (r != POP3_PARSE_UNKNOWN && r != POP3_PARSE_SYNTAX) {
		abort();
	}
	(void)pop3_uid_valid(in, size);

	top = size > 0 ? (int64_t)(data[0] % 8) - 1 : -1; /* -1 (all) .. 6 lines */
	n1 = xfer(in, size, top, 0, o1);
	n2 = xfer(in, size, top, 1, o2);
	if (n1 != n2 || memcmp(o1, o2, n1) != 0)
		abort();
	if (n1 < 3 || memcmp(o1 + n1 - 3, ".\r\n", 3) != 0)
		abort();
	for (i = 0; i < n1; i++) {
		if (o1[i] == '\n' && (i == 0 || o1[i - 1] != '\r'))
			abort();
	}

	pop3_size_init(&sz);
	pop3_size_feed(&sz, in, size / 2);
	pop3_size_feed(&sz, in + size / 2, size - size / 2);
	if (pop3_size_total(&sz) < size / 2)
		abort();
	return 0;
}
