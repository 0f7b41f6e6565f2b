/* imapd_int: what the files of the imapd process share: the limits, the
 * process (struct imapd) and the session (struct imapd_sess), and the
 * functions one imapd_*.c file offers the others. Not for other modules:
 * the process entry point is imapd_main() in master/kaled.h. */
#ifndef KALE_IMAPD_INT_H
#define KALE_IMAPD_INT_H

#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include "auth/brake.h"
#include "imap/imap_mbox.h"
#include "imap/imap_parse.h"
#include "lib/server.h"
#include "lookup/lookup.h"
#include "lib/proc.h"
#include "store/store.h"

#define IMAPD_LINE_MAX        65536            /* one command line */
#define IMAPD_OUT_HIGH        (256 * 1024)     /* queued output that stops command reading */
#define IMAPD_OUT_LOW         (64 * 1024)      /* a FETCH being written is resumed below this */
#define IMAPD_STREAM_CHUNK    (64 * 1024)      /* literal bytes read from a file at a time */
#define IMAPD_CMD_MAX_PREAUTH 8192             /* a whole command before login */
#define IMAPD_CMD_MAX         (1024 * 1024)    /* a whole command after login */
#define IMAPD_MAX_ERRORS      20
#define IMAPD_MAX_BAD_LOGINS  3
#define IMAPD_AUTH_TIMEOUT    1800             /* RFC 3501 autologout: 30 min */
#define IMAPD_SHUTDOWN_SECS   8

enum imapd_state { IMAPD_NOAUTH = 1, IMAPD_AUTH = 2, IMAPD_SELECTED = 4 };

struct imapd;

struct imapd_sess {
	struct imapd *d;
	struct server_conn *conn;      /* the skeleton's connection (lib/server.h) */
	struct bufferevent *bev;       /* conn->bev */
	char ip[64];
	int tls, can_starttls;
	enum imapd_state state;
	char user[320];
	char root[4096];
	/* selected folder */
	struct imap_mbox mb;
	char mbname[256];
	int readonly;
	/* command assembly */
	char *cmd;
	size_t cmd_len, cmd_cap;
	uint64_t lit_left;
	int cmd_bad;              /* NUL seen: answer BAD when complete */
	/* continuation states */
	int idling;
	char idle_tag[IMAP_TAG_MAX + 1];
	int ino_fd;
	struct event *ino_ev;
	struct event *poll_ev;
	int auth_pending;
	char auth_tag[IMAP_TAG_MAX + 1];
	int starttls_pending;
	int login_pending;        /* password check running on the pool */
	int out_blocked;          /* output above IMAPD_OUT_HIGH: commands wait */
	struct imapd_fetch *fetch; /* a FETCH still being written: commands wait */
	uint64_t login_req;
	int closing;
	struct event *login_deadline;  /* not authenticated: at most 2 x command_timeout */
	int errors, bad_logins;
	/* the brute-force brake: a login waiting for its delay */
	struct brake_ticket brake;
	int brake_wait;
	struct event *brake_ev;
	char brake_tag[IMAP_TAG_MAX + 1];
	char *brake_user, *brake_pass;
};

struct imapd {
	struct kale_ctx *ctx;
	struct event_base *base;
	store *st;
	struct server *server;      /* listeners, limits, TLS, drain (lib/server.h) */
	struct lookup_pool *pool;   /* password checks off the loop */
};

/* A FETCH still being written (imapd_fetch.c); opaque to the other files. */
struct imapd_fetch;

/* A command handler: uid is 1 for the "UID ..." form. */
typedef void imapd_cmd_fn(struct imapd_sess *s, struct imap_cmd *c, int uid);

/* imapd.c: the command table */
void imapd_execute(struct imapd_sess *s, const char *buf, size_t len);
const char *imapd_arg_cstr(const struct imap_cmd *c, size_t i);

/* imapd_client.c: session I/O, flow control, close, deadlines */
struct evbuffer *imapd_out(struct imapd_sess *s);
void imapd_printf(struct imapd_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Closes once the output is written; never frees synchronously. */
void imapd_close(struct imapd_sess *s);
void imapd_bad(struct imapd_sess *s, const char *tag, const char *text);
/* Frees now (through the skeleton, which calls imapd_sess_release). */
void imapd_sess_free(struct imapd_sess *s);
void imapd_set_timeout(struct imapd_sess *s);
void imapd_read_cb(struct bufferevent *bev, void *arg);
/* The skeleton's callbacks (lib/server.h: struct server_ops). */
void imapd_on_read(void *arg);
void imapd_on_write(void *arg);
void imapd_on_event(void *arg, short what);
void imapd_sess_release(void *arg);
void imapd_on_login_deadline(evutil_socket_t fd, short what, void *arg);

/* imapd_auth.c: capabilities, STARTTLS, LOGIN, AUTHENTICATE, the brake */
void imapd_capability(struct imapd_sess *s, struct evbuffer *o);
/* The client's AUTHENTICATE PLAIN response (base64), for the tagged command. */
void imapd_auth_plain(struct imapd_sess *s, const char *tag, const char *b64);
imapd_cmd_fn imapd_cmd_capability, imapd_cmd_logout, imapd_cmd_id, imapd_cmd_enable, imapd_cmd_starttls,
    imapd_cmd_login, imapd_cmd_authenticate;

/* imapd_mailbox.c: the selected folder, folder commands, IDLE */
void imapd_write_flags(struct evbuffer *o, unsigned flags);
void imapd_idle_stop(struct imapd_sess *s);
void imapd_unselect(struct imapd_sess *s);
/* Rescans the selected folder and tells the client what changed: EXPUNGE
 * (only if allow_expunge), FETCH FLAGS, EXISTS, RECENT. */
int imapd_sync(struct imapd_sess *s, int allow_expunge);
int imapd_folder(struct imapd_sess *s, const char *name, char *path, size_t cap);
int imapd_flags_arg(const struct imap_arg *a, unsigned *flags);
/* The value of '*' in a message set of the selected folder. */
uint32_t imapd_star(struct imapd_sess *s, int uid);
/* Message set to index list: by sequence number or UID. */
int imapd_set(struct imapd_sess *s, const char *spec, int uid, struct imap_seqset *set);
int imapd_in_set(struct imapd_sess *s, const struct imap_seqset *set, size_t i, int uid);
imapd_cmd_fn imapd_cmd_noop, imapd_cmd_namespace, imapd_cmd_select, imapd_cmd_create, imapd_cmd_delete,
    imapd_cmd_rename, imapd_cmd_subscribe, imapd_cmd_list, imapd_cmd_status, imapd_cmd_append,
    imapd_cmd_close, imapd_cmd_expunge, imapd_cmd_idle;

/* imapd_fetch.c: FETCH, written as the client reads */
void imapd_fetch_free(struct imapd_fetch **jp);
/* Writes the FETCH on while less than IMAPD_OUT_HIGH waits. 1 when it is
 * complete (the tagged reply is written and s->fetch freed). */
int imapd_fetch_pump(struct imapd_sess *s);
imapd_cmd_fn imapd_cmd_fetch;

/* imapd_store.c: STORE, COPY, MOVE */
imapd_cmd_fn imapd_cmd_store, imapd_cmd_copy;

/* imapd_search.c: SEARCH (the program itself is imap_search.c) */
imapd_cmd_fn imapd_cmd_search;

#endif
