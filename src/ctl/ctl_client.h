/* ctl_client: the client side of kaled's control socket (<data_dir>/control.sock,
 * AF_UNIX stream): send one command line, read the reply until EOF. Used by
 * kalectl and any tool that talks to a running daemon. */
#ifndef KALE_CTL_CLIENT_H
#define KALE_CTL_CLIENT_H

#define CTL_REPLY_MAX   (1024 * 1024)  /* longer replies are an error */
#define CTL_TIMEOUT_SEC 10

/* Sends "CMD\n" to the socket and reads the reply, whose first line is "ok"
 * or "error TEXT". Returns
 *    0  ok: *reply_r = the text after the first line (malloc'd, maybe "")
 *   -1  not reachable (no socket, refused): *error_r says why
 *   -2  the daemon answered "error TEXT" (*error_r = TEXT, *reply_r = the
 *       rest), or the reply was malformed, too long or late.
 * reply_r and error_r may be NULL; what they receive is malloc'd. */
/* Connects now to sock_path (relative to the current folder) and keeps the
 * connection for the next ctl_call() to it: kalectl calls it before it
 * drops root. Nothing happens when the daemon does not listen. */
void ctl_preconnect(const char *sock_path);
int ctl_call(const char *sock_path, const char *cmd, char **reply_r, char **error_r);

#endif
