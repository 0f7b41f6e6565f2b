/* proc: what the master hands each child process it forks (the child's
 * side of the contract; the master's side is src/master/kaled.h). A child
 * starts with privileges already dropped to run_as, the working directory
 * set to data_dir (all queue/mail paths are relative), and its listeners
 * open. It runs its own event loop and returns its exit status; on SIGTERM
 * it stops accepting, ends open sessions politely and returns within 10 s.
 * Children include this header, never anything of src/master/. */
#ifndef KALE_PROC_H
#define KALE_PROC_H

#include <openssl/ssl.h>

struct kale_config;
struct brake;

enum kale_listen_kind {
	LISTEN_SMTP, LISTEN_SUBMISSION, LISTEN_SUBMISSIONS,
	LISTEN_POP3, LISTEN_POP3S, LISTEN_IMAP, LISTEN_IMAPS, LISTEN_ADMIN,
	LISTEN_LOCAL,              /* <data_dir>/public/sendmail.sock: kale-sendmail */
	LISTEN_KINDS
};

struct kale_listener {
	int fd;                    /* bound, listening, non-blocking */
	enum kale_listen_kind kind;
	int implicit_tls;          /* submissions, pop3s, imaps */
	char name[300];            /* "127.0.0.1:2525" */
};

struct kale_ctx {
	const struct kale_config *cfg;
	struct kale_listener *ls;
	int n_ls;
	SSL_CTX *tls;              /* server context with the configured cert */
	int worker_id;             /* 0.. for smtpd workers */
	void *conn_table;          /* this service's shared connection table (lib/conntable.h) */
	struct brake *brake;       /* shared brute-force brake (smtpd, pop3d, imapd) */
};

#endif
