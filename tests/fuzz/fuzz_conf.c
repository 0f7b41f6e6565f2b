/* fuzz_conf: libFuzzer target for conf_load() and the small value parsers in
 * src/conf/conf.c (built by CMake with -DKALE_FUZZ=ON, run by
 * scripts/fuzz.sh). The input is written to a mkstemp() file under /tmp,
 * loaded, and the file is unlinked again. Checks: no crash; on error the
 * message is set and the config zeroed; listen address counts in bounds;
 * a parsed address formats back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_listen(const struct conf_listen *l)
{
	int i;

	if (l->n < 0 || l->n > CONF_MAX_ADDRS)
		abort();
	for (i = 0; i < l->n; i++) {
		if (l->addr[i].port < 0 || l->addr[i].port > 65535 ||
		    memchr(l->addr[i].host, '\0', sizeof(l->addr[i].host)) == NULL)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct kale_config zero;
	char path[] = "/tmp/kale-fuzz-conf-XXXXXX";
	struct kale_config cfg;
	struct conf_addr a;
	char *err = NULL, *s, buf[600];
	int fd, r;

	if (size > CONF_MAX_FILE + 16)
		return 0;
	fd = mkstemp(path);
	if (fd < 0)
		return 0;
	if (size > 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		unlink(path);
		return 0;
	}
	close(fd);
	r = conf_load(path, &cfg, &err);
	unlink(path);
	if (r == 0) {
		check_listen(&cfg.smtp);
		check_listen(&cfg.submission);
		check_listen(&cfg.submissions);
		check_listen(&cfg.pop3);
		check_listen(&cfg.pop3s);
		check_listen(&cfg.imap);
		check_listen(&cfg.imaps);
		check_listen(&cfg.admin);
		check_listen(&cfg.dns_servers);
		if (cfg.n_retry < 0 || cfg.n_retry > 32)
			abort();
		conf_free(&cfg);
	} else {
		if (err == NULL || memcmp(&cfg, &zero, sizeof(cfg)) != 0)
			abort();
		free(err);
	}

	/* the value parsers on the input as one C string */
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	if (conf_parse_addr(s, &a) == 0) {
		if (a.port < 1 || a.port > 65535)
			abort();
		(void)conf_addr_format(&a, buf, sizeof(buf));
	}
	(void)conf_parse_duration(s);
	free(s);
	return 0;
}
