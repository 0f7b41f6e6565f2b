/* master: entry points of the kaled parent process (see master.c). */
#ifndef KALE_MASTER_H
#define KALE_MASTER_H

/* Validates the config and the policy store; prints "FILE: ok" or the
 * error; returns the exit status (0 or 1). */
int master_check(const char *path);
/* Runs the daemon in the foreground until SIGTERM/SIGINT; exit status. */
int master_run(const char *path);

#endif
