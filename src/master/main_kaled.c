/* kaled: the kale daemon's command line (kaled -c FILE [--check]). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "master/master.h"

static void kaled_usage(void)
{
	fprintf(stderr,
	    "usage: kaled [-c FILE] [--check]\n"
	    "  -c FILE   configuration file (default: $KALE_CONF, then /etc/kale/kale.conf)\n"
	    "  --check   validate the configuration and the policy store, then exit\n");
}

int main(int argc, char **argv)
{
	const char *path = getenv("KALE_CONF");
	char abs[PATH_MAX];
	int check = 0;

	if (path == NULL || *path == '\0')
		path = "/etc/kale/kale.conf";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			check = 1;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			kaled_usage();
			return 0;
		} else {
			fprintf(stderr, "kaled: unknown argument '%s'\n", argv[i]);
			kaled_usage();
			return 2;
		}
	}
	/* The daemon changes into data_dir; keep an absolute path for reloads. */
	if (realpath(path, abs) != NULL)
		path = abs;
	return check ? master_check(path) : master_run(path);
}
