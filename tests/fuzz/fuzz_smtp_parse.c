/* fuzz_smtp_parse: libFuzzer target for src/smtpd/smtp_parse.c. Built with the
 * others by -DKALE_FUZZ=ON and run by scripts/fuzz.sh; by hand:
 *   clang -std=c17 -g -O1 -D_GNU_SOURCE -Isrc -fsanitize=fuzzer,address,undefined \
 *     tests/fuzz/fuzz_smtp_parse.c src/smtpd/smtp_parse.c -o /tmp/fuzz_smtp_parse
 *   /tmp/fuzz_smtp_parse -max_len=2048 -max_total_time=60
 * Checks: no crash; DATA/BDAT output identical however the input is split;
 * output never holds CR or NUL; decoded ENVID/ORCPT never hold control bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtpd/smtp_parse.h"

struct acc {
	char buf[4096];
	size_t len;
};

static void acc_out(void *ctx, const char *p, size_t n)
{
	struct acc *a = ctx;

	if (memchr(p, '\r', n) != NULL || memchr(p, '\0', n) != NULL)
		abort();
	if (a->len + n > sizeof(a->buf))
		abort();
	memcpy(a->buf + a->len, p, n);
	a->len += n;
}

static void no_ctl(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			abort();
	}
}

static size_t data_run(const uint8_t *d, size_t n, size_t step, size_t cut, struct acc *a,
    struct smtp_data *sd, int *done)
{
	size_t pos = 0, used = 0;

	smtp_data_init(sd, 3000);
	*done = 0;
	while (pos < n && !*done) {
		size_t end = step ? pos + step : (pos < cut ? cut : n);

		if (end > n)
			end = n;
		used += smtp_data_feed(sd, (const char *)d + pos, end - pos, done, acc_out, a);
		pos = end;
	}
	return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char line[SMTP_LINE_MAX + 600];
	static struct acc a1, a2, a3;
	struct smtp_cmd cmd;
	struct smtp_path p;
	struct smtp_data d1, d2, d3;
	const char *err;
	uint64_t n;
	int last, done1, done2, done3;
	size_t u1, u2, u3, cut;

	if (size == 0 || size > 2048)
		return 0;
	cut = data[0] % (size + 1);

	/* command line + whatever argument parser applies */
	if (size - 1 < sizeof(line) - 1) {
		memcpy(line, data + 1, size - 1);
		if (smtp_parse_command(line, size - 1, &cmd) == SMTP_PARSE_OK) {
			switch (cmd.verb) {
			case SMTP_MAIL:
			case SMTP_RCPT:
				if (smtp_parse_path(cmd.arg, cmd.verb == SMTP_MAIL, &p, &err) == 0) {
					no_ctl(p.envid);
					no_ctl(p.orcpt);
					no_ctl(p.addr);
				}
				break;
			case SMTP_HELO:
			case SMTP_EHLO:
				(void)smtp_parse_helo(cmd.arg);
				break;
			case SMTP_BDAT:
				(void)smtp_parse_bdat(cmd.arg, &n, &last);
				break;
			default:
				break;
			}
		}
	}

	/* DATA: whole vs byte by byte vs split at one position */
	a1.len = a2.len = a3.len = 0;
	u1 = data_run(data, size, 0, size, &a1, &d1, &done1);
	u2 = data_run(data, size, 1, 0, &a2, &d2, &done2);
	u3 = data_run(data, size, 0, cut, &a3, &d3, &done3);
	if (u1 != u2 || u1 != u3 || done1 != done2 || done1 != done3 || a1.len != a2.len ||
	    a1.len != a3.len || memcmp(a1.buf, a2.buf, a1.len) != 0 ||
	    memcmp(a1.buf, a3.buf, a1.len) != 0 || d1.hops != d2.hops || d1.hops != d3.hops ||
	    d1.size != a1.len || d1.too_big != d3.too_big)
		abort();

	/* BDAT in two chunks */
	a1.len = 0;
	smtp_bdat_init(&d1, 3000);
	smtp_bdat_feed(&d1, (const char *)data, cut, acc_out, &a1);
	smtp_bdat_feed(&d1, (const char *)data + cut, size - cut, acc_out, &a1);
	smtp_bdat_last(&d1, acc_out, &a1);
	return 0;
}
