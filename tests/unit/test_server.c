/* Unit tests for the server skeleton (lib/server.c) and its connection
 * table (lib/conntable.c): limits, refusals, close after flush, drain. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "lib/conntable.h"
#include "lib/server.h"
#include "lib/util.h"

static const uint8_t ip_a[16] = { [10] = 0xff, [11] = 0xff, 10, 0, 0, 1 };
static const uint8_t ip_b[16] = { [10] = 0xff, [11] = 0xff, 10, 0, 0, 2 };
static const uint8_t ip_c[16] = { [10] = 0xff, [11] = 0xff, 10, 0, 0, 3 };

static void test_conntable_limits(void **state)
{
	struct conntable *ct = conntable_create(2, 3);
	int s1, s2, s3, s4, s5;

	(void)state;
	assert_non_null(ct);
	assert_int_equal(conntable_add(ct, 0, ip_a, 2, 4, &s1), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 0, ip_a, 2, 4, &s2), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 1, ip_a, 2, 4, &s3), CONNTABLE_PER_IP);
	assert_int_equal(s3, -1);
	assert_int_equal(conntable_add(ct, 1, ip_b, 2, 4, &s3), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 1, ip_c, 2, 4, &s4), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 1, ip_c, 2, 5, &s5), CONNTABLE_OK);
	/* the total counts every row */
	assert_int_equal(conntable_add(ct, 0, ip_b, 2, 5, &s5), CONNTABLE_TOTAL);
	conntable_del(ct, 0, s1);
	assert_int_equal(conntable_add(ct, 0, ip_a, 2, 5, &s1), CONNTABLE_OK);
	/* a full row is "total" whatever the limit */
	conntable_del(ct, 1, s4);
	assert_int_equal(conntable_add(ct, 0, ip_b, 2, 100, &s5), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 0, ip_c, 2, 100, &s5), CONNTABLE_TOTAL);
	/* a reset row counts nothing */
	conntable_reset_worker(ct, 0);
	assert_int_equal(conntable_add(ct, 0, ip_a, 1, 100, &s1), CONNTABLE_OK);
	assert_int_equal(conntable_add(ct, 0, ip_a, 1, 100, &s2), CONNTABLE_PER_IP);
	/* no table: everything is allowed */
	assert_int_equal(conntable_add(NULL, 0, ip_a, 0, 0, &s2), CONNTABLE_OK);
	assert_int_equal(s2, -1);
	conntable_free(&ct);
	assert_null(ct);
}

/* A slot taken by another process (the next generation, after the row was
 * reset) is not freed by the one that held it before. */
static void test_conntable_foreign_slot(void **state)
{
	struct conntable *ct = conntable_create(1, 2);
	int slot = -1, st, other;
	pid_t pid;

	(void)state;
	assert_non_null(ct);
	assert_int_equal(conntable_add(ct, 0, ip_a, 1, 10, &slot), CONNTABLE_OK);
	conntable_reset_worker(ct, 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int s;
		_exit(conntable_add(ct, 0, ip_a, 1, 10, &s) == CONNTABLE_OK && s == slot ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	conntable_del(ct, 0, slot);            /* ours no longer: left alone */
	assert_int_equal(conntable_add(ct, 0, ip_a, 1, 10, &other), CONNTABLE_PER_IP);
	conntable_free(&ct);
}

/* ---- the skeleton over a loopback listener ---- */

struct t_owner {
	int accepted, freed, refused, drained;
};

struct t_sess {
	struct t_owner *o;
	struct server_conn *c;
};

static void *t_on_accept(void *owner, struct server_conn *c)
{
	struct t_sess *s = xcalloc(1, sizeof(*s));

	s->o = owner;
	s->c = c;
	s->o->accepted++;
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	evbuffer_add(bufferevent_get_output(c->bev), "hello\r\n", 7);
	return s;
}

static const char *t_on_refuse(void *owner, const struct server_conn *c, enum server_refusal why)
{
	struct t_owner *o = owner;

	assert_string_equal(c->ip, "127.0.0.1");
	o->refused++;
	return why == SERVER_REFUSE_PER_IP ? "busy\r\n" : "other\r\n";
}

static void t_on_read(void *arg)
{
	struct t_sess *s = arg;
	struct evbuffer *in = bufferevent_get_input(s->c->bev);

	/* "quit": one reply, then close after it is written */
	if (evbuffer_get_length(in) >= 6) {
		evbuffer_drain(in, evbuffer_get_length(in));
		evbuffer_add(bufferevent_get_output(s->c->bev), "bye\r\n", 5);
		server_conn_close(s->c);
		server_conn_close(s->c);       /* twice is once */
	}
}

static void t_on_event(void *arg, short what)
{
	struct t_sess *s = arg;

	(void)what;
	server_conn_free(s->c);
}

static void t_on_free(void *arg)
{
	struct t_sess *s = arg;

	s->o->freed++;
	free(s);
}

static void t_on_drain(void *owner, int hard)
{
	struct t_owner *o = owner;

	assert_int_equal(hard, 1);
	o->drained++;
}

static void t_on_stop(void *arg)
{
	struct t_sess *s = arg;

	evbuffer_add(bufferevent_get_output(s->c->bev), "stop\r\n", 6);
	server_conn_close(s->c);
}

static const struct server_ops t_ops = {
	.on_accept = t_on_accept,
	.on_refuse = t_on_refuse,
	.on_read = t_on_read,
	.on_event = t_on_event,
	.on_free = t_on_free,
	.on_drain = t_on_drain,
	.on_stop = t_on_stop,
};

static int t_connect(int port)
{
	struct sockaddr_in sin;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

/* Runs the loop until fd has want (or EOF when want is NULL). */
static void t_expect(struct event_base *base, int fd, const char *want)
{
	char buf[64];
	size_t have = 0;

	for (int i = 0; i < 400; i++) {
		ssize_t r;
		event_base_loop(base, EVLOOP_NONBLOCK);
		r = recv(fd, buf + have, sizeof(buf) - 1 - have, MSG_DONTWAIT);
		if (r == 0) {
			assert_null(want);
			return;
		}
		if (r > 0) {
			have += (size_t)r;
			buf[have] = '\0';
			if (want != NULL && strcmp(buf, want) == 0)
				return;
		}
		usleep(5000);
	}
	fail_msg("wanted \"%s\", have \"%.*s\"", want != NULL ? want : "EOF", (int)have, buf);
}

static void test_server_limits_close_drain(void **state)
{
	struct event_base *base = event_base_new();
	struct t_owner o;
	struct server_params p;
	struct server_listen l;
	struct server *srv;
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	const char *err = NULL;
	int lfd, a, b, c;

	(void)state;
	memset(&o, 0, sizeof(o));
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(lfd, 16), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
	memset(&p, 0, sizeof(p));
	p.name = "test";
	p.base = base;
	p.max_conns = 10;
	p.max_conns_per_ip = 1;
	p.term_grace_s = 2;
	p.close_timeout_s = 1;
	p.ops = &t_ops;
	p.owner = &o;
	srv = server_new(&p, &err);    /* no table given: a private one */
	assert_non_null(srv);
	l.fd = lfd;
	l.implicit_tls = 0;
	l.name = "127.0.0.1:test";
	l.data = NULL;
	assert_int_equal(server_listen(srv, &l, &err), 0);

	a = t_connect(ntohs(sin.sin_port));
	t_expect(base, a, "hello\r\n");
	/* per-IP limit: refused with the protocol's line, then closed */
	b = t_connect(ntohs(sin.sin_port));
	t_expect(base, b, "busy\r\n");
	t_expect(base, b, NULL);
	close(b);
	assert_int_equal(o.refused, 1);
	assert_int_equal(server_conn_count(srv), 1);
	/* close after flush frees the slot */
	assert_int_equal(send(a, "quit\r\n", 6, 0), 6);
	t_expect(base, a, "bye\r\n");
	t_expect(base, a, NULL);
	close(a);
	assert_int_equal(o.freed, 1);
	assert_int_equal(server_conn_count(srv), 0);
	c = t_connect(ntohs(sin.sin_port));
	t_expect(base, c, "hello\r\n");
	/* drain: on_stop says goodbye, the loop exits when the last is gone */
	server_stop(srv, 1);
	assert_int_equal(server_stopping(srv), 2);
	assert_int_equal(o.drained, 1);
	t_expect(base, c, "stop\r\n");
	t_expect(base, c, NULL);
	close(c);
	assert_int_equal(o.accepted, 2);
	assert_int_equal(o.freed, 2);
	server_free(&srv);
	assert_null(srv);
	server_free(&srv);
	event_base_free(base);
}

/* accept() failing with EMFILE pauses the listener for a second; the
 * waiting client is taken once descriptors are free again. */
static void test_server_emfile_backoff(void **state)
{
	struct event_base *base = event_base_new();
	struct t_owner o;
	struct server_params p;
	struct server_listen l;
	struct server *srv;
	struct sockaddr_in sin;
	struct rlimit old, low;
	socklen_t sl = sizeof(sin);
	const char *err = NULL;
	int lfd, a, next;

	(void)state;
	memset(&o, 0, sizeof(o));
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(lfd, 16), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
	memset(&p, 0, sizeof(p));
	p.name = "test";
	p.base = base;
	p.max_conns = 10;
	p.max_conns_per_ip = 10;
	p.term_grace_s = 1;
	p.ops = &t_ops;
	p.owner = &o;
	srv = server_new(&p, &err);
	assert_non_null(srv);
	l.fd = lfd;
	l.implicit_tls = 0;
	l.name = "127.0.0.1:test";
	l.data = NULL;
	assert_int_equal(server_listen(srv, &l, &err), 0);
	a = t_connect(ntohs(sin.sin_port));
	/* no descriptor left for accept() */
	next = dup(0);
	assert_true(next >= 0);
	close(next);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = (rlim_t)next;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	for (int i = 0; i < 20; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		usleep(5000);
	}
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(o.accepted, 0);
	/* the listener rests, so nothing is taken at once ... */
	for (int i = 0; i < 20; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		usleep(5000);
	}
	assert_int_equal(o.accepted, 0);
	/* ... but within the second */
	t_expect(base, a, "hello\r\n");
	assert_int_equal(o.accepted, 1);
	close(a);
	server_free(&srv);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_conntable_limits),
		cmocka_unit_test(test_conntable_foreign_slot),
		cmocka_unit_test(test_server_limits_close_drain),
		cmocka_unit_test(test_server_emfile_backoff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
