/* kalectl: the operator's command-line tool (operator.md §4). Finds the
 * config, then hands the command to its group in src/ctl/ctl_*.c. Runs as
 * the invoking user; as root it enters data_dir and becomes run_as before
 * it touches the store or the spool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"

struct ctl_group {
	const char *name;
	int (*run)(struct ctl *c, int argc, char **argv);
	int needs_sub;        /* "domain add", but plain "status" */
};

static const struct ctl_group ctl_groups[] = {
	{ "domain", ctl_policy_domain, 1 },
	{ "user", ctl_policy_user, 1 },
	{ "alias", ctl_policy_alias, 1 },
	{ "network", ctl_policy_network, 1 },
	{ "auth", ctl_auth_cmd, 1 },
	{ "log", ctl_log_cmd, 1 },
	{ "verify", ctl_verify_cmd, 1 },
	{ "queue", ctl_queue_cmd, 1 },
	{ "filter", ctl_filter_cmd, 1 },
	{ "list", ctl_list_cmd, 1 },
	{ "greylist", ctl_greylist_cmd, 1 },
	{ "policy", ctl_policy_test, 1 },
	{ "trace", ctl_trace_cmd, 0 },
	{ "dkim", ctl_dkim_cmd, 1 },
	{ "status", ctl_queue_status, 0 },
	{ "reload", ctl_queue_reload, 0 },
	{ NULL, NULL, 0 }
};

int main(int argc, char **argv)
{
	struct ctl c;
	const char *conf = NULL;
	int i = 1, rc;

	memset(&c, 0, sizeof(c));
	while (i < argc) {
		if (strcmp(argv[i], "-c") == 0) {
			if (i + 1 >= argc)
				return ctl_usage("-c needs a FILE");
			conf = argv[i + 1];
			i += 2;
		} else if (strncmp(argv[i], "-c", 2) == 0) {
			conf = argv[i] + 2;
			i++;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			ctl_print_usage(stdout);
			return CTL_EXIT_OK;
		} else if (argv[i][0] == '-') {
			return ctl_usage("unknown option '%.50s'", argv[i]);
		} else {
			break;
		}
	}
	if (i >= argc)
		return ctl_usage("missing COMMAND");
	if (conf == NULL || *conf == '\0')
		conf = getenv("KALE_CONF");
	if (conf == NULL || *conf == '\0')
		conf = "/etc/kale/kale.conf";
	c.conf_path = conf;
	for (const struct ctl_group *g = ctl_groups; g->name != NULL; g++) {
		if (strcmp(g->name, argv[i]) != 0)
			continue;
		if (g->needs_sub && i + 1 >= argc)
			rc = ctl_usage("%s needs a sub-command", g->name);
		else
			rc = g->run(&c, argc - i - 1, argv + i + 1);
		ctl_close(&c);
		if (fflush(stdout) != 0 || ferror(stdout)) {
			fprintf(stderr, "kalectl: write error on stdout\n");
			return CTL_EXIT_FAIL;
		}
		return rc;
	}
	return ctl_usage("unknown command '%.50s'", argv[i]);
}
