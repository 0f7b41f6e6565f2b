/* lookup_localdb: the localdb verification backend: kale's own users and
 * aliases in the policy store (the rules of delivery: aliases, +extension),
 * asked through the worker's store handle. No settings, no connection.
 * Runs in the lookup threads of smtpd and qmgr and in kalectl. */
#include "lookup/lookup_int.h"

#include <stdlib.h>

#include "lib/util.h"

static enum lookup_result lookup_localdb_ask(struct lookup_conn *c, const char *address,
    char **route_r, char **detail_r, int *conn_failed_r)
{
	char **targets = NULL, *err = NULL;
	int n;

	(void)route_r;
	(void)conn_failed_r;
	n = store_rcpt_resolve(c->st, address, &targets, &err);
	if (n < 0) {
		*detail_r = err ? err : xstrdup("localdb: policy store error");
		return LOOKUP_ERROR;
	}
	if (n > 0)
		store_targets_free(targets, n);
	return n > 0 ? LOOKUP_FOUND : LOOKUP_MISSING;
}

const struct lookup_backend lookup_backend_localdb = {
	.name = "localdb",
	.ask = lookup_localdb_ask,
};
