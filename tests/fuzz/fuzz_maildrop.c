/* fuzz_maildrop: libFuzzer target for maildrop_parse in
 * src/sendmail/maildrop.c, the parser pickup runs (as run_as) on files any
 * local user may leave in maildrop/ (built by CMake with -DKALE_FUZZ=ON, run
 * by scripts/fuzz.sh). Checks: no crash, no read outside the buffer; a file
 * accepted has the magic line, a sender and 1..MAILDROP_RCPT_MAX recipients,
 * each NUL-terminated inside the buffer, at most 320 bytes of printable
 * ASCII without '<' or '>'; the message is the rest of the buffer; a file
 * refused leaves no recipients. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sendmail/maildrop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_value(const char *v, const char *buf, size_t len, int empty_ok)
{
	size_t n;

	if (v == NULL || v < buf || v >= buf + len)
		abort();
	n = strnlen(v, (size_t)(buf + len - v));
	if (v + n >= buf + len || n > 320 || (n == 0 && !empty_ok))
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x21 || v[i] == 0x7f || v[i] == '<' || v[i] == '>')
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct maildrop_env e;
	size_t ml = strlen(MAILDROP_MAGIC);
	char *buf;

	if (size > 65536)
		return 0;
	/* an exact-size copy: ASan catches any read past the file's end */
	buf = malloc(size > 0 ? size : 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	if (maildrop_parse(buf, size, &e) < 0) {
		free(buf);
		return 0;
	}
	if (size < ml || memcmp(data, MAILDROP_MAGIC, ml) != 0)
		abort();
	/* the sender may be empty (the null reverse-path), a recipient not */
	check_value(e.sender, buf, size, 1);
	if (e.n_rcpt < 1 || e.n_rcpt > MAILDROP_RCPT_MAX)
		abort();
	for (int i = 0; i < e.n_rcpt; i++)
		check_value(e.rcpt[i], buf, size, 0);
	if (e.msg < buf || e.msg > buf + size || e.msg + e.msg_len != buf + size)
		abort();
	/* the envelope ends with an empty line just before the message */
	if (e.msg < buf + ml + 1 || e.msg[-1] != '\0' || e.msg[-2] != '\0')
		abort();
	free(buf);
	return 0;
}
