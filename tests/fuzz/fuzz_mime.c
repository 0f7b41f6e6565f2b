/* fuzz_mime: libFuzzer target for src/mail/mime.c (built by CMake with
 * -DKALE_FUZZ=ON, run by scripts/fuzz.sh). The input is a whole message.
 * Checks: no crash; every part's offsets ordered and inside the message,
 * depths and child counts consistent, part count as reported, type and
 * subtype set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mail/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t walk(const struct mime_part *p, size_t len, int depth)
{
	const struct mime_part *c;
	size_t n = 1, kids = 0, i;

	if (p->depth != depth || depth > MIME_MAX_DEPTH + 1)
		abort();
	if (p->hdr_off > p->body_off || p->body_off > p->end_off || p->end_off > len)
		abort();
	if (p->type == NULL || p->subtype == NULL)
		abort();
	for (i = 0; i < p->n_params; i++) {
		if (p->params[i].name == NULL || p->params[i].value == NULL)
			abort();
	}
	(void)mime_param_get(p->params, p->n_params, "charset");
	(void)mime_is_multipart(p);
	(void)mime_is_message(p);
	for (c = p->children; c != NULL; c = c->next) {
		if (c->parent != p)
			abort();
		kids++;
		n += walk(c, len, depth + 1);
	}
	if (kids != p->n_children)
		abort();
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mime_part *root;
	size_t n_parts = 0;
	int trunc = 0;
	char *v;

	if (size > 65536)
		return 0;
	root = mime_parse((const char *)data, size, &n_parts, &trunc);
	if (root == NULL)
		abort(); /* only for absurd lengths */
	if (walk(root, size, 0) != n_parts || n_parts > MIME_MAX_PARTS + 1)
		abort();
	v = mime_header_get((const char *)data + root->hdr_off, root->body_off - root->hdr_off,
	    "Content-Type", 1000);
	if (v != NULL && strlen(v) > 1000)
		abort();
	free(v);
	mime_free(&root);
	if (root != NULL)
		abort();
	return 0;
}
