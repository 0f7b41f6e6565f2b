/* fuzz_queue_file: libFuzzer target for queue_file_read_env() in
 * src/queue/queue_file.c (built by CMake with -DKALE_FUZZ=ON, run by
 * scripts/fuzz.sh). The input is a whole queue file, handed over in a memfd.
 * Checks: no crash; on success the body lies inside the file, the recipient
 * count is in bounds and every recipient has an address; on error the env
 * is empty and an error text is set; a valid env writes back (after a
 * body of body_len bytes) into a file that reads back equal. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "queue/queue_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int mkfd(void)
{
	return memfd_create("kale-fuzz-queue", MFD_CLOEXEC);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct queue_env env, env2;
	const char *err = NULL;
	int fd, fd2, i;

	if (size > 1 << 20)
		return 0;
	fd = mkfd();
	if (fd < 0)
		return 0;
	if (size > 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	if (queue_file_read_env(fd, &env, &err) == 0) {
		if (env.body_len > size || env.n_rcpt < 0 || env.n_rcpt > QUEUE_RCPT_MAX)
			abort();
		if (memchr(env.qid, '\0', sizeof(env.qid)) == NULL)
			abort();
		for (i = 0; i < env.n_rcpt; i++) {
			if (env.rcpt[i].addr == NULL)
				abort();
		}
		/* round trip: same body bytes, then the envelope written anew */
		fd2 = mkfd();
		if (fd2 >= 0) {
			if ((env.body_len == 0 ||
			        write(fd2, data, env.body_len) == (ssize_t)env.body_len) &&
			    queue_file_finish(fd2, &env) == 0) {
				if (queue_file_read_env(fd2, &env2, &err) != 0)
					abort();
				if (env2.n_rcpt != env.n_rcpt || env2.body_len != env.body_len ||
				    strcmp(env2.qid, env.qid) != 0 || env2.arrival != env.arrival)
					abort();
				queue_env_free(&env2);
			}
			close(fd2);
		}
		queue_env_free(&env);
	} else {
		if (err == NULL || env.n_rcpt != 0 || env.rcpt != NULL)
			abort();
		queue_env_free(&env);
	}
	close(fd);
	return 0;
}
