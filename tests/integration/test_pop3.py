"""POP3 server (RFC 1939/2449/2595) over kale's Maildirs: login with and
without TLS, STAT/LIST/UIDL/RETR/TOP, dot-stuffing, DELE/RSET/QUIT and the
UPDATE state, STLS with pipelined plaintext, pop3s, hostile input, limits."""
import os
import poplib
import socket
import ssl
import time

import pytest

from conftest import kale_wait, make_traversable, smtp_msg, smtp_qid, smtp_send

LISTENERS = ("smtp", "pop3", "pop3s")
ALICE = "alice@example.test"
ALICE_PW = "alice-secret"
BOB = "bob@example.test"
BOB_PW = "secret-bob@example.test"
TIMEOUT = 10


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def factory(kale_factory, tmp_path):
    """kale_factory, with the temp folders' ancestors opened for run_as."""
    make_traversable(tmp_path)
    return kale_factory


@pytest.fixture
def node(factory):
    return factory(users=(ALICE, BOB), listeners=LISTENERS)


def deliver(k, rcpt, subject, body):
    """Sends one message by SMTP and waits for it in the Maildir."""
    before = len(k.messages(rcpt))
    smtp_qid(smtp_send(k.ports["smtp"], "sender@other.test", [rcpt], smtp_msg(subject, body)))
    msgs = k.wait_messages(rcpt, before + 1)
    assert len(msgs) == before + 1, k.log_text()[-3000:]


def pop_stls(k, user=ALICE, pw=ALICE_PW):
    p = poplib.POP3("127.0.0.1", k.ports["pop3"], timeout=TIMEOUT)
    p.stls(tls_ctx())
    if user is not None:
        p.user(user)
        p.pass_(pw)
    return p


def pop_ssl(k, user=ALICE, pw=ALICE_PW):
    p = poplib.POP3_SSL("127.0.0.1", k.ports["pop3s"], context=tls_ctx(), timeout=TIMEOUT)
    if user is not None:
        p.user(user)
        p.pass_(pw)
    return p


class Raw:
    """A line-level POP3 client on a plain socket, TLS-able."""

    def __init__(self, port, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls:
            self.sock = tls_ctx().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def readline(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.readline()

    def multiline(self):
        """The rest of a multi-line answer, raw (still dot-stuffed), up to and
        including the terminating ".\\r\\n"."""
        while b"\r\n.\r\n" not in b"\r\n" + self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        data = b"\r\n" + self.buf
        i = data.index(b"\r\n.\r\n")
        out = data[2:i + 5]
        self.buf = data[i + 5:]
        return out

    def closed(self):
        """True once the server has closed the connection (after any data)."""
        end = time.time() + TIMEOUT
        while time.time() < end:
            try:
                d = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return True
            if not d:
                return True
            self.buf += d
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_login(k, user=ALICE, pw=ALICE_PW):
    r = Raw(k.ports["pop3s"], tls=True)
    assert r.readline().startswith(b"+OK")
    assert r.cmd("USER " + user).startswith(b"+OK")
    assert r.cmd("PASS " + pw).startswith(b"+OK")
    return r


# ---- login ----

def test_plaintext_login_refused_without_tls(node):
    p = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=TIMEOUT)
    assert p.getwelcome().startswith(b"+OK")
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps, caps
    with pytest.raises(poplib.error_proto) as e:
        p.user(ALICE)
    assert b"[AUTH]" in e.value.args[0]
    with pytest.raises(poplib.error_proto):
        p.pass_(ALICE_PW)
    p.quit()
    assert "pop3.login " not in node.log_text()


def test_plaintext_login_allowed_by_admin(factory):
    k = factory(users=(ALICE,), listeners=LISTENERS,
                extra_conf="[mailbox]\nplaintext_auth = yes\n")
    p = poplib.POP3("127.0.0.1", k.ports["pop3"], timeout=TIMEOUT)
    assert "USER" in p.capa()
    p.user(ALICE)
    assert p.pass_(ALICE_PW).startswith(b"+OK")
    p.quit()


def test_login_after_stls(node):
    p = poplib.POP3("127.0.0.1", node.ports["pop3"], timeout=TIMEOUT)
    p.stls(tls_ctx())
    caps = p.capa()
    assert "USER" in caps and "STLS" not in caps, caps
    p.user(ALICE)
    assert p.pass_(ALICE_PW).startswith(b"+OK")
    assert p.stat() == (0, 0)
    p.quit()
    kale_wait(lambda: "event=pop3.login " in node.log_text())
    log = node.log_text()
    assert "event=pop3.login " in log and "user=alice@example.test" in log


def test_bad_login(node):
    p = pop_stls(node, user=None)
    p.user(ALICE)
    with pytest.raises(poplib.error_proto) as e:
        p.pass_("wrong")
    assert b"[AUTH]" in e.value.args[0]
    p.user("nobody@example.test")
    with pytest.raises(poplib.error_proto):
        p.pass_("whatever")
    # still usable: the right password works
    p.user(ALICE)
    assert p.pass_(ALICE_PW).startswith(b"+OK")
    p.quit()
    assert kale_wait(lambda: "pop3.login_failed" in node.log_text())
    # mail log: login-failed rows with the client IP
    out = kale_wait(lambda: node.ctl("log", "search", "--action", "login-failed",
                                     check=False).stdout)
    assert "127.0.0.1" in out, out


def test_too_many_bad_logins_disconnects(node):
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    for _ in range(3):
        assert r.cmd("USER " + ALICE).startswith(b"+OK")
        assert r.cmd("PASS bad").startswith(b"-ERR")
    assert r.closed()
    r.close()


def test_pass_before_user_and_commands_before_login(node):
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    assert r.cmd("PASS x").startswith(b"-ERR")
    for c in ("STAT", "LIST", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP"):
        assert r.cmd(c).startswith(b"-ERR"), c
    assert r.cmd("QUIT").startswith(b"+OK")
    assert r.closed()
    r.close()


# ---- reading mail ----

def test_stat_list_uidl_retr_top_and_dot_stuffing(node):
    deliver(node, ALICE, "first", "line one\r\n.\r\n.foo\r\n..bar\r\nend\r\n")
    deliver(node, ALICE, "second", "hello\r\n")
    p = pop_stls(node)
    count, size = p.stat()
    assert count == 2
    resp, lst, _ = p.list()
    sizes = [int(x.split()[1]) for x in lst]
    assert [int(x.split()[0]) for x in lst] == [1, 2] and sum(sizes) == size
    resp, uids, _ = p.uidl()
    assert len(uids) == 2 and len(set(u.split()[1] for u in uids)) == 2
    resp, lines, octets = p.retr(1)
    assert b"Subject: first" in lines
    body = lines[lines.index(b"") + 1:]
    assert body[:5] == [b"line one", b".", b".foo", b"..bar", b"end"], body
    # LIST's size is the CRLF size of exactly what RETR sends (unstuffed)
    assert sum(len(l) + 2 for l in lines) == sizes[0]
    assert resp.startswith(b"+OK %d" % sizes[0])
    resp, lines, _ = p.top(1, 0)
    assert lines[-1] == b"" and b"Subject: first" in lines and b"line one" not in lines
    resp, lines, _ = p.top(1, 2)
    assert lines[-2:] == [b"line one", b"."], lines
    assert p.list(2).split()[2] == str(sizes[1]).encode()
    assert p.uidl(2) == b"+OK " + uids[1]
    p.quit()

    # on the wire: CRLF everywhere, dot-stuffed lines
    r = raw_login(node)
    assert r.cmd("RETR 1").startswith(b"+OK")
    data = r.multiline()
    assert b"\r\n..\r\n" in data and b"\r\n..foo\r\n" in data and b"\r\n...bar\r\n" in data
    assert data.endswith(b"\r\nend\r\n.\r\n")
    assert data.count(b"\n") == data.count(b"\r\n")
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()


def test_bad_message_numbers(node):
    deliver(node, ALICE, "one", "x\r\n")
    r = raw_login(node)
    for c in ("RETR 2", "RETR 0", "LIST 9", "UIDL 4294967295", "TOP 3 0", "DELE 2",
              "RETR 99999999999999999999", "RETR", "RETR x"):
        assert r.cmd(c).startswith(b"-ERR"), c
    assert r.cmd("RETR 1").startswith(b"+OK")
    r.multiline()
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()


def test_retr_moves_new_to_cur_seen(node):
    deliver(node, ALICE, "seen", "x\r\n")
    box = node.mailbox(ALICE)
    assert len(os.listdir(os.path.join(box, "new"))) == 1
    p = pop_stls(node)
    p.retr(1)
    p.quit()
    assert os.listdir(os.path.join(box, "new")) == []
    cur = os.listdir(os.path.join(box, "cur"))
    assert len(cur) == 1 and cur[0].endswith(":2,S"), cur


def test_uidl_stable_across_sessions(node):
    deliver(node, ALICE, "u1", "x\r\n")
    deliver(node, ALICE, "u2", "y\r\n")
    p = pop_stls(node)
    first = p.uidl()[1]
    p.quit()
    p = pop_ssl(node)
    p.retr(1)           # moves it to cur/ with flags: the UID must not change
    second = p.uidl()[1]
    p.quit()
    p = pop_stls(node)
    third = p.uidl()[1]
    p.quit()
    assert first == second == third
    deliver(node, ALICE, "u3", "z\r\n")
    p = pop_stls(node)
    fourth = p.uidl()[1]
    p.quit()
    assert fourth[:2] == first and len(fourth) == 3


# ---- deleting ----

def test_dele_quit_removes(node):
    deliver(node, ALICE, "d1", "x\r\n")
    deliver(node, ALICE, "d2", "y\r\n")
    p = pop_stls(node)
    keep_uid = p.uidl(2).split()[2]
    assert p.dele(1).startswith(b"+OK")
    assert p.stat()[0] == 1
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    with pytest.raises(poplib.error_proto):
        p.dele(1)
    assert p.quit().startswith(b"+OK")
    assert len(node.messages(ALICE)) == 1
    p = pop_stls(node)
    assert p.stat()[0] == 1
    assert p.uidl(1).split()[2] == keep_uid
    p.quit()


def test_dele_then_drop_keeps(node):
    deliver(node, ALICE, "k1", "x\r\n")
    r = raw_login(node)
    assert r.cmd("DELE 1").startswith(b"+OK")
    r.close()           # no QUIT: no UPDATE state
    time.sleep(0.3)
    p = pop_stls(node)
    assert p.stat()[0] == 1
    p.quit()
    assert len(node.messages(ALICE)) == 1


def test_rset(node):
    deliver(node, ALICE, "r1", "x\r\n")
    deliver(node, ALICE, "r2", "y\r\n")
    p = pop_stls(node)
    total = p.stat()
    p.dele(1)
    p.dele(2)
    assert p.stat() == (0, 0)
    assert p.rset().startswith(b"+OK")
    assert p.stat() == total
    p.quit()
    assert len(node.messages(ALICE)) == 2


def test_concurrent_sessions(node):
    deliver(node, ALICE, "c1", "x\r\n")
    deliver(node, ALICE, "c2", "y\r\n")
    a = pop_stls(node)
    b = pop_ssl(node)
    a.dele(1)
    seen_by_a = a.retr(2)[1]
    a.quit()
    with pytest.raises(poplib.error_proto) as e:
        b.retr(1)
    assert b"vanished" in e.value.args[0]
    resp, lines, _ = b.retr(2)    # moved to cur/ by the other session: still found
    assert lines == seen_by_a
    b.dele(1)
    assert b.quit().startswith(b"+OK")
    assert len(node.messages(ALICE)) == 1


def test_users_see_only_their_mailbox(node):
    deliver(node, BOB, "for bob", "x\r\n")
    p = pop_stls(node)
    assert p.stat() == (0, 0)
    p.quit()
    p = pop_ssl(node, BOB, BOB_PW)
    assert p.stat()[0] == 1
    p.quit()


# ---- STLS boundary ----

def test_stls_discards_pipelined_plaintext(node):
    s = socket.create_connection(("127.0.0.1", node.ports["pop3"]), timeout=TIMEOUT)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    # the injected command must never run inside the TLS session
    s.sendall(b"STLS\r\nXINJ\r\n")
    assert f.readline().startswith(b"+OK")
    t = tls_ctx().wrap_socket(s)
    t.sendall(b"CAPA\r\n")
    tf = t.makefile("rb")
    first = tf.readline()
    assert first.startswith(b"+OK"), first
    lines = []
    while True:
        line = tf.readline()
        assert line
        if line == b".\r\n":
            break
        lines.append(line.strip())
    assert b"STLS" not in lines and b"USER" in lines
    t.sendall(b"NOOP\r\n")
    assert tf.readline().startswith(b"-ERR")    # not logged in: one answer, no extra
    t.sendall(b"QUIT\r\n")
    assert tf.readline().startswith(b"+OK")
    t.close()


def test_stls_twice_and_after_login(node):
    p = pop_stls(node, user=None)
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STLS")
    p.user(ALICE)
    p.pass_(ALICE_PW)
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STLS")
    p.quit()


def test_pop3s(node):
    deliver(node, ALICE, "over tls", "secure\r\n")
    p = poplib.POP3_SSL("127.0.0.1", node.ports["pop3s"], context=tls_ctx(), timeout=TIMEOUT)
    caps = p.capa()
    assert "USER" in caps and "STLS" not in caps
    p.user(ALICE)
    p.pass_(ALICE_PW)
    resp, lines, _ = p.retr(1)
    assert b"secure" in lines
    p.quit()


def test_pop3s_plaintext_client_dropped(node):
    s = socket.create_connection(("127.0.0.1", node.ports["pop3s"]), timeout=TIMEOUT)
    s.sendall(b"USER alice@example.test\r\n")
    data = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
    except (ConnectionResetError, socket.timeout):
        pass
    assert b"+OK" not in data
    s.close()


# ---- hostile input ----

def test_nul_bytes_and_control_characters(node):
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    assert r.cmd("USER alice@example.test\0x").startswith(b"-ERR")
    assert r.cmd("\0\0\0").startswith(b"-ERR")
    assert r.cmd("NOOP\rQUIT").startswith(b"-ERR")
    assert r.cmd("USER " + ALICE).startswith(b"+OK")
    assert r.cmd("PASS " + ALICE_PW).startswith(b"+OK")
    assert r.cmd("QUIT").startswith(b"+OK")
    r.close()


def test_overlong_lines(node):
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    assert r.cmd("USER " + "a" * 300).startswith(b"-ERR line too long")
    # 253 octets + CRLF = 255: the longest legal line, refused only as a command
    assert r.cmd("PASS " + "b" * 248) != b"-ERR line too long"
    # a 100 KB line without any line end, then a real command
    r.send(b"X" * 100000)
    r.send(b"\r\n")
    assert r.readline().startswith(b"-ERR line too long")
    assert r.cmd("CAPA").startswith(b"+OK")
    r.multiline()
    r.close()


def test_error_flood_disconnects(node):
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    r.send(b"BOGUS\r\n" * 20)
    errs = 0
    try:
        while True:
            line = r.readline()
            assert line.startswith(b"-ERR")
            errs += 1
    except EOFError:
        pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    # ten answers, then the "too many errors" one, then the server hangs up
    assert 10 <= errs <= 11, errs
    r.close()


def test_pipelining(node):
    deliver(node, ALICE, "p1", "one\r\n")
    deliver(node, ALICE, "p2", "two\r\n")
    r = Raw(node.ports["pop3s"], tls=True)
    r.readline()
    r.send(("USER %s\r\nPASS %s\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nNOOP\r\nQUIT\r\n"
            % (ALICE, ALICE_PW)).encode())
    assert r.readline().startswith(b"+OK")
    assert r.readline().startswith(b"+OK")
    assert r.readline().startswith(b"+OK 2 ")
    assert r.readline().startswith(b"+OK")
    assert b"one" in r.multiline()
    assert r.readline().startswith(b"+OK")
    assert b"two" in r.multiline()
    assert r.readline() == b"+OK"
    assert r.readline().startswith(b"+OK")
    assert r.closed()
    r.close()


def test_large_message(node):
    body = "".join("line %06d .%s\r\n" % (i, "x" * 60) for i in range(20000))
    body += ".\r\n..\r\n"
    deliver(node, ALICE, "large", body)
    p = pop_ssl(node)
    size = p.list(1).split()[2]
    resp, lines, octets = p.retr(1)
    assert resp.startswith(b"+OK " + size)
    assert lines[-2:] == [b".", b".."], lines[-4:]
    assert sum(len(l) + 2 for l in lines) == int(size)
    p.quit()


# ---- limits and shutdown ----

def test_per_ip_connection_limit(factory):
    k = factory(users=(ALICE,), listeners=LISTENERS,
                limits={"max_connections_per_ip": 2})

    def session():
        # the start-up probe's connections may not be reaped yet: retry
        end = time.time() + TIMEOUT
        while True:
            r = Raw(k.ports["pop3"])
            if r.readline().startswith(b"+OK") or time.time() > end:
                return r
            r.close()
            time.sleep(0.1)

    a = session()
    b = session()
    c = Raw(k.ports["pop3"])
    line = c.readline()
    assert line.startswith(b"-ERR") and b"too many" in line, line
    assert c.closed()
    c.close()
    a.close()
    b.close()
    # a slot frees up when a session ends
    d = session()
    assert d.cmd("CAPA").startswith(b"+OK")
    d.close()


def test_idle_timeout_and_login_deadline(factory):
    k = factory(users=(ALICE,), listeners=LISTENERS, limits={"command_timeout": 2})
    # idle: autologout after command_timeout
    r = Raw(k.ports["pop3s"], tls=True)
    r.readline()
    line = r.readline()
    assert line.startswith(b"-ERR") and b"idle" in line, line
    assert r.closed()
    r.close()
    # never idle, but never logging in either: cut off all the same
    r = Raw(k.ports["pop3s"], tls=True)
    r.readline()
    lines = []
    end = time.time() + 15
    try:
        while time.time() < end:
            r.send(b"CAPA\r\n")
            line = r.readline()
            if line.startswith(b"-ERR"):
                lines.append(line)
                break
            r.multiline()
            time.sleep(0.3)
    except (EOFError, ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    assert lines and b"login timeout" in lines[0], lines
    r.close()


def test_shutdown_answers_open_sessions(node):
    r = raw_login(node)
    assert r.cmd("NOOP") == b"+OK"
    rc = node.stop()
    assert rc == 0
    line = r.readline()
    assert line.startswith(b"-ERR") and b"shutting down" in line, line
    r.close()
