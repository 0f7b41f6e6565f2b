"""The brute-force brake (docs/auth.md): one table for every smtpd worker,
pop3d and imapd, keyed per client address and per account. Failures over
SMTP AUTH, IMAP and POP3 add up; a success does not reset the address
("fail, fail, log in as myself" cannot guess forever); over the limit the
password is not checked; the delay is a timer, not a stalled process; the
brake is shown by kalectl status. Clients bind 127.0.0.x source addresses
so each test has addresses of its own."""
import base64
import socket
import time

import pytest

from conftest import Kale, SmtpRaw, kale_wait

ALICE, ALICE_PW = "alice@example.test", "alice-secret"
BOB, BOB_PW = "bob@example.test", "secret-bob@example.test"
LISTENERS = ("smtp", "submission", "pop3", "imap")
TIMEOUT = 20


def conf(limit, max_delay=0):
    return ("[auth]\nbrake_limit = %d\nbrake_max_delay = %d\n\n"
            "[mailbox]\nplaintext_auth = yes\n" % (limit, max_delay))


@pytest.fixture
def make(kale_factory):
    def mk(limit=6, max_delay=0):
        k = kale_factory(users=(ALICE, BOB), listeners=LISTENERS, extra_conf=conf(limit, max_delay),
                         start=False)
        k.ctl("auth", "set", "--tls-only", "no")
        k.start()
        return k
    return mk


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Line:
    """A line-based client (IMAP, POP3) from a chosen source address."""

    def __init__(self, port, src):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                             source_address=(src, 0))
        self.buf = b""
        self.greeting = self.readline()

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("closed; unread %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def close(self):
        self.sock.close()


def imap_login(k, src, user, pw):
    """One IMAP LOGIN on a new connection: the tagged answer."""
    c = Line(k.ports["imap"], src)
    try:
        c.send("a LOGIN %s %s" % (user, pw))
        while True:
            line = c.readline()
            if line.startswith(b"a "):
                return line.decode()
    finally:
        c.close()


def pop3_login(k, src, user, pw):
    c = Line(k.ports["pop3"], src)
    try:
        c.send("USER " + user)
        assert c.readline().startswith(b"+OK")
        c.send("PASS " + pw)
        return c.readline().decode()
    finally:
        c.close()


def smtp_login(k, src, user, pw):
    """One AUTH PLAIN on a new submission connection: (code, text)."""
    with SmtpRaw(k.ports["submission"], source=src, timeout=TIMEOUT) as c:
        c.ehlo()
        r = c.cmd("AUTH PLAIN " + b64("\0%s\0%s" % (user, pw)))
        return r.code, r.text


def test_one_brake_for_smtp_imap_pop3(make):
    """Failures from one address over several SMTP connections (landing on
    any smtpd worker), IMAP and POP3 add up to one brake; a right password
    from that address is then refused without being checked, in every
    protocol; a user from another address is not braked."""
    k = make(limit=6)
    bad = "127.0.0.2"
    n = 0
    for i in range(2):
        code, _ = smtp_login(k, bad, "x%d@example.test" % i, "guess")
        assert code == 535, code
        n += 1
    for i in range(2):
        assert "NO [AUTHENTICATIONFAILED]" in imap_login(k, bad, "y%d@example.test" % i, "guess")
        n += 1
    for i in range(2):
        assert pop3_login(k, bad, "z%d@example.test" % i, "guess").startswith("-ERR [AUTH]")
        n += 1
    assert n == 6
    # the limit is reached: right passwords are refused, with temp-fail answers
    code, text = smtp_login(k, bad, ALICE, ALICE_PW)
    assert code == 421 and text.startswith("4.7.0"), (code, text)
    assert "NO [UNAVAILABLE]" in imap_login(k, bad, ALICE, ALICE_PW)
    assert pop3_login(k, bad, ALICE, ALICE_PW).startswith("-ERR [SYS/TEMP]")
    # another address: alice logs in everywhere
    good = "127.0.0.3"
    assert smtp_login(k, good, ALICE, ALICE_PW)[0] == 235
    assert " OK " in imap_login(k, good, ALICE, ALICE_PW)
    assert pop3_login(k, good, ALICE, ALICE_PW).startswith("+OK")
    # kalectl status shows the brake
    out = k.ctl("status").stdout
    assert "brake: 1 addresses (1 refused)" in out, out
    assert "brake: address 127.0.0.2 failures 6 refused" in out, out
    assert "127.0.0.3" not in out, out
    assert kale_wait(lambda: "event=auth.brake" in k.log_text() and "action=refuse" in k.log_text())
    assert ALICE_PW not in k.log_text()


def test_many_smtp_connections_share_the_brake(make):
    """Parallel SMTP sessions (the workers take turns accepting) cannot
    make more than the limit of checks between them."""
    k = make(limit=5)
    src = "127.0.0.4"
    conns = [SmtpRaw(k.ports["submission"], source=src, timeout=TIMEOUT) for _ in range(12)]
    try:
        for c in conns:
            c.ehlo()
        for c in conns:
            c.send("AUTH PLAIN %s\r\n" % b64("\0%s\0wrong" % BOB))
        codes = sorted(c.reply().code for c in conns)
    finally:
        for c in conns:
            c.close()
    assert codes.count(535) == 5 and codes.count(421) == 7, codes
    assert smtp_login(k, src, ALICE, ALICE_PW)[0] == 421


def test_fail_fail_login_as_myself_still_braked(make):
    """An attacker who also has an account cannot reset the brake by logging
    in between guesses: the guesses stop at the limit, the victim account is
    braked from every address, and other users are not."""
    k = make(limit=6)
    src = "127.0.0.5"
    guesses = 0
    refused = None
    for rnd in range(12):
        if rnd % 2 == 0:
            r = imap_login(k, src, BOB, "guess%d" % rnd)
            ok_own = smtp_login(k, src, ALICE, ALICE_PW)[0]
        else:
            code, _ = smtp_login(k, src, BOB, "guess%d" % rnd)
            r = "NO [AUTHENTICATIONFAILED]" if code == 535 else "NO [UNAVAILABLE] %d" % code
            ok_own = 235 if " OK " in imap_login(k, src, ALICE, ALICE_PW) else 0
        if "UNAVAILABLE" in r:
            refused = rnd
            break
        assert "AUTHENTICATIONFAILED" in r, r
        guesses += 1
        if guesses < 6:
            assert ok_own == 235, (rnd, ok_own)
    assert refused is not None and guesses == 6, (refused, guesses)
    # the victim's account is braked from elsewhere too; alice is not
    assert "NO [UNAVAILABLE]" in imap_login(k, "127.0.0.6", BOB, BOB_PW)
    assert " OK " in imap_login(k, "127.0.0.6", ALICE, ALICE_PW)
    out = k.ctl("status").stdout
    assert "brake: account bob@example.test failures 6 refused" in out, out


def test_delay_grows_and_does_not_block(make):
    """With a delay: the first failure is answered at once, the next attempt
    waits 1 s, the one after 2 s (capped by brake_max_delay), while other
    clients are served meanwhile."""
    k = make(limit=10, max_delay=2)
    src = "127.0.0.7"
    t0 = time.time()
    assert pop3_login(k, src, BOB, "guess").startswith("-ERR [AUTH]")
    assert time.time() - t0 < 0.9
    t0 = time.time()
    assert "AUTHENTICATIONFAILED" in imap_login(k, src, BOB, "guess")
    assert 0.9 <= time.time() - t0 < 1.9
    # the third waits 2 s; meanwhile another address logs in at once
    c = Line(k.ports["pop3"], src)
    try:
        c.send("USER " + BOB)
        assert c.readline().startswith(b"+OK")
        t0 = time.time()
        c.send("PASS " + BOB_PW)
        t1 = time.time()
        assert pop3_login(k, "127.0.0.8", ALICE, ALICE_PW).startswith("+OK")
        assert time.time() - t1 < 0.9
        assert c.readline().startswith(b"+OK")      # the right password, after the delay
        assert 1.9 <= time.time() - t0 < 3.5
    finally:
        c.close()
    assert kale_wait(lambda: "action=delay" in k.log_text())
    # bob logged in: his account count is cleared, the address's is not
    out = k.ctl("status").stdout
    assert "brake: address 127.0.0.7 failures 2," in out, out
    assert "account bob@example.test" not in out, out


def test_bad_brake_config_names_file_and_line(tmp_path):
    for bad in ("brake_limit = 0", "brake_window = 0", "brake_max_delay = 1h", "brake_limit = x"):
        d = tmp_path / bad.split()[0] / bad.split()[2]
        d.mkdir(parents=True)
        k = Kale(d, extra_conf="[auth]\n%s\n" % bad)
        p = k.ctl("status", check=False)
        assert p.returncode != 0, bad
        assert "kale.conf:" in p.stderr + p.stdout and "brake_" in p.stderr + p.stdout, (bad, p.stderr)
