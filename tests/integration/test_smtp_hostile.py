"""SMTP receive path, hostile input (hostile-inputs.md): SMTP smuggling (every
end-of-data variant), over-long lines, bare CR/LF, NUL and 8-bit junk in
commands, malformed addresses, shell metacharacters, xtext-encoded newlines,
error floods, plaintext injected behind STARTTLS, half-open TLS handshakes.
Each test also checks that no smtpd worker crashed (no child was replaced)."""
import os
import socket
import threading
import time

import pytest

from conftest import (SmtpRaw, children_of, kale_wait, smtp_expect, smtp_msg, smtp_qid,
                      smtp_send, smtp_tls_context)


def crash_marks(k):
    t = k.log_text()
    return [m for m in ("AddressSanitizer", "runtime error:", "LeakSanitizer",
                        "Segmentation fault", "SIGSEGV", "SIGABRT") if m in t]


@pytest.fixture
def node(kale):
    """The running node; afterwards asserts that the master still runs and
    that none of its children was replaced (nothing crashed)."""
    before = set(kale_wait(lambda: children_of(kale.proc.pid), 5))
    assert before, "kaled has no child processes"
    yield kale
    assert kale.proc is not None and kale.proc.poll() is None, "kaled died:\n" + kale.log_text()
    after = set(children_of(kale.proc.pid))
    assert before <= after, "children died: %s (now %s)\n%s" % (
        sorted(before - after), sorted(after), kale.log_text()[-4000:])
    assert not crash_marks(kale), kale.log_text()[-4000:]


def queue_idle(k):
    d = os.path.join(k.data, "queue", "incoming")
    return not os.path.isdir(d) or not [f for f in os.listdir(d) if not f.startswith(".")]


# ---------------------------------------------------------------- smuggling

VARIANTS = {
    "lf.lf": b"\n.\n",
    "lf.crlf": b"\n.\r\n",
    "crlf.lf": b"\r\n.\n",
    "cr.crlf": b"\r.\r\n",
    "crlf.cr": b"\r\n.\r",
    "cr.cr": b"\r.\r",
    "lf.cr": b"\n.\r",
    "crlf-nul.crlf": b"\r\n\0.\r\n",
}

FIRST = (b"From: <bob@other.test>\r\nTo: <alice@example.test>\r\nSubject: smuggle\r\n\r\n"
         b"first body TOKEN-A")
SMUGGLED = (b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            b"From: <evil@other.test>\r\nSubject: smuggled\r\n\r\nsecond body TOKEN-B\r\n")


def send_smuggle(port, rcpt, variant):
    """Sends FIRST + variant + SMUGGLED + the real end. Asserts the server saw
    one message and did not run the smuggled MAIL as a command."""
    with SmtpRaw(port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
        smtp_expect(c.cmd("DATA"), 354)
        c.send(FIRST + variant + SMUGGLED + b".\r\n")
        smtp_qid(c.reply())
        # If the variant had ended the data, the next replies would be the
        # smuggled MAIL's 250 2.1.0, RCPT's 250, DATA's 354 ...
        r = c.cmd("QUIT")
        smtp_expect(r, 221, "2.0.0")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_smuggling_variant_is_one_message(node, name):
    send_smuggle(node.port, "alice@example.test", VARIANTS[name])
    msgs = node.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    # a marker message afterwards; once it is in and the queue is idle, any
    # smuggled second message would have been delivered too
    smtp_qid(smtp_send(node.port, "marker@other.test", ["alice@example.test"],
                       smtp_msg("marker")))
    msgs = node.wait_messages("alice@example.test", 2)
    assert kale_wait(lambda: queue_idle(node), 10)
    msgs = node.messages("alice@example.test")
    assert len(msgs) == 2, [m[:300] for m in msgs]
    one = [m for m in msgs if b"TOKEN-A" in m]
    assert len(one) == 1
    m = one[0]
    # the smuggled text is data inside the one message
    assert b"TOKEN-B" in m and b"MAIL FROM:<evil@other.test>" in m, m
    assert not any(b"TOKEN-B" in x and b"TOKEN-A" not in x for x in msgs)
    # what is stored has no bare CR (a CR is only ever part of CRLF)
    assert b"\r" not in m.replace(b"\r\n", b""), m


class Sink(threading.Thread):
    """A minimal SMTP server on loopback that records each DATA payload exactly
    as it came over the wire (up to the first CRLF.CRLF, as a strict next hop
    would read it)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.payloads = []
        self.commands = []
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                s, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.session, args=(s,), daemon=True).start()

    def session(self, s):
        s.settimeout(20)
        buf = b""

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    raise EOFError
                buf += d
            l, buf = buf.split(b"\r\n", 1)
            return l
        try:
            s.sendall(b"220 sink.test ESMTP\r\n")
            while True:
                l = line()
                self.commands.append(l)
                v = l[:4].upper()
                if v == b"EHLO":
                    s.sendall(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif v == b"DATA":
                    s.sendall(b"354 go\r\n")
                    while True:
                        idx = buf.find(b"\r\n.\r\n")
                        if buf.startswith(b".\r\n"):
                            idx = -2
                        if idx != -1:
                            break
                        d = s.recv(65536)
                        if not d:
                            raise EOFError
                        buf += d
                    self.payloads.append(buf[:idx + 2])
                    buf = buf[idx + 5:]
                    s.sendall(b"250 2.0.0 sunk\r\n")
                elif v == b"QUIT":
                    s.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    s.sendall(b"250 2.0.0 ok\r\n")
        except (OSError, EOFError):
            pass
        finally:
            s.close()

    def close(self):
        self.stop = True
        self.srv.close()


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.close()


def test_smuggling_not_passed_downstream(kale_factory, sink):
    """Each variant goes to an alias that points at a relay domain; the next
    hop (a strict sink) must get exactly one message per variant, with no bare
    CR or LF on the wire, so no next hop can find a different end of data."""
    k = kale_factory(start=False)
    k.ctl("domain", "add", "sink.test", "--relay", "127.0.0.1:%d" % sink.port)
    k.ctl("alias", "add", "fwd@example.test", "x@sink.test")
    k.start()
    for name, v in VARIANTS.items():
        send_smuggle(k.port, "fwd@example.test", v)
    ok = kale_wait(lambda: len(sink.payloads) >= len(VARIANTS) and queue_idle(k), 30)
    assert ok, "sink got %d of %d messages\n%s" % (len(sink.payloads), len(VARIANTS),
                                                  k.log_text()[-3000:])
    time.sleep(0.5)
    assert len(sink.payloads) == len(VARIANTS), sink.payloads
    for p in sink.payloads:
        assert b"TOKEN-A" in p and b"TOKEN-B" in p, p
        assert b"\n" not in p.replace(b"\r\n", b""), "bare LF sent downstream: %r" % p
        assert b"\r" not in p.replace(b"\r\n", b""), "bare CR sent downstream: %r" % p
        assert b"\0" not in p
    mails = [c for c in sink.commands if c.upper().startswith(b"MAIL FROM")]
    assert not any(b"evil@" in c for c in mails), mails


# ---------------------------------------------------------------- lines

def test_command_line_over_512_refused_session_goes_on(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("NOOP " + "x" * 600), 500, "5.5.2")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        smtp_expect(c.cmd("MAIL FROM:<" + "a" * 600 + "@other.test>"), 500, "5.5.2")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("after-long-lines")))
    assert len(node.wait_messages("alice@example.test", 1)) == 1


def test_huge_command_line_bounded(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        c.send(b"NOOP " + b"y" * (1024 * 1024) + b"\r\n")
        smtp_expect(c.reply(), 500, "5.5.2")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_ehlo_10k_refused(node):
    with SmtpRaw(node.port) as c:
        smtp_expect(c.cmd("EHLO " + "a" * 10240), 500, "5.5.2")
        r = c.cmd("EHLO client.test")
        smtp_expect(r, 250)
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


def test_helo_syntax(node):
    with SmtpRaw(node.port) as c:
        # RFC 2034 exempts HELO/EHLO replies from enhanced codes
        smtp_expect(c.cmd("EHLO"), 501)
        smtp_expect(c.cmd("HELO bad..name.."), 501)
        smtp_expect(c.cmd("EHLO [127.0.0.1]"), 250)


@pytest.mark.parametrize("line", [b"NOOP\rMAIL FROM:<evil@other.test>",
                                  b"NOOP\nMAIL FROM:<evil@other.test>",
                                  b"RSET\rMAIL FROM:<evil@other.test>",
                                  b"RSET\nMAIL FROM:<evil@other.test>"])
def test_bare_cr_lf_in_command_is_one_bad_command(node, line):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd(line), 501, "5.5.2")
        # MAIL was not executed: RCPT is out of sequence
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 503, "5.5.1")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


@pytest.mark.parametrize("line", [b"NOOP\0", b"NO\0OP", b"EHLO a\0b.test",
                                  b"MAIL FROM:<a\0b@other.test>",
                                  b"\0"])
def test_nul_in_command(node, line):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd(line), 501, "5.5.2")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


def test_nul_in_rcpt(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd(b"RCPT TO:<alice\0@example.test>"), 501, "5.5.2")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")


def test_8bit_junk(node):
    with SmtpRaw(node.port) as c:
        r = c.cmd(b"\xff\xfe\xfd\xfc")
        assert r.code in (500, 501, 502), r
        smtp_expect(r, r.code, "5.5.x")
        smtp_expect(c.cmd(b"EHLO \xc3\x28\xa0\xa1"), 501)  # RFC 2034: no enh. code needed on EHLO
        c.ehlo()
        smtp_expect(c.cmd(b"MAIL FROM:<\xff\xfe@other.test>"), 501, "5.x.x")
        smtp_expect(c.cmd(b"MAIL FROM:<\xc3\x28@other.test> SMTPUTF8"), 501, "5.x.x")
        smtp_expect(c.cmd(b"MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd(b"RCPT TO:<\xe2\x82@example.test>"), 501, "5.x.x")
        smtp_expect(c.cmd(b"RCPT TO:<alice@\x80example.test>"), 501, "5.x.x")
        smtp_expect(c.cmd(b"RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


BAD_PATHS = [
    "alice@other.test",             # no angle brackets
    "<alice@other.test",
    "alice@other.test>",
    "<alice@>",
    "<@other.test>",
    "<alice@@other.test>",
    "<alice@other..test>",
    "<alice@.other.test>",
    "<alice@-other.test>",
    "<.alice@other.test>",
    "<alice.@other.test>",
    "<al..ice@other.test>",
    "<al ice@other.test>",
    "<alice@oth er.test>",
    '<"unterminated@other.test>',
    "<alice@other.test>>",
    "<<alice@other.test>>",
    "<" + "a" * 65 + "@other.test>",
    "<alice@" + ("a" * 64 + ".") * 4 + "test>",
    "<alice@[300.1.1.1]>",
    "<alice@[1.2.3]>",
    "<alice@[IPv6:zz::1]>",
    "<alice(comment)@other.test>",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_malformed_sender(node, path):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:" + path)
        smtp_expect(r, 501)
        assert r.enh in ("5.1.7", "5.5.2", "5.5.4", "5.1.3"), r
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


@pytest.mark.parametrize("path", BAD_PATHS + ["<>"])
def test_malformed_recipient(node, path):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        r = c.cmd("RCPT TO:" + path.replace("other.test", "example.test"))
        smtp_expect(r, 501)
        assert r.enh in ("5.1.3", "5.5.2", "5.5.4"), r
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")


def test_unknown_and_duplicate_parameters(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<bob@other.test> FROBNICATE=yes")
        assert r.code in (501, 555), r
        smtp_expect(r, r.code, "5.5.4")
        r = c.cmd("MAIL FROM:<bob@other.test> SIZE=10 SIZE=20")
        assert r.code in (501, 555), r
        smtp_expect(r, r.code, "5.5.4")
        r = c.cmd("MAIL FROM:<bob@other.test> SIZE=abc")
        assert r.code in (501, 555), r
        smtp_expect(r, r.code, "5.5.4")
        r = c.cmd("MAIL FROM:<bob@other.test> SIZE=99999999999999999999999999")
        assert r.code in (501, 552, 555), r
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


def test_xtext_newlines_refused(node):
    """Encoded CR/LF/NUL in ESMTP parameters never reach the queue (Exim 21Nails)."""
    with SmtpRaw(node.port) as c:
        c.ehlo()
        for p in ("ENVID=abc+0D+0AX-Evil:+20yes", "ENVID=abc+0Ax", "ENVID=abc+0Dx",
                  "ENVID=a+00b"):
            r = c.cmd("MAIL FROM:<bob@other.test> " + p)
            assert r.code in (501, 555), (p, r)
            smtp_expect(r, r.code, "5.5.4")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        for p in ("ORCPT=rfc822;alice+0D+0AX-Evil:+20yes@example.test",
                  "ORCPT=rfc822;alice+0A@example.test",
                  "NOTIFY=SUCCESS ORCPT=rfc822;a+00b@example.test"):
            r = c.cmd("RCPT TO:<alice@example.test> " + p)
            assert r.code in (501, 555), (p, r)
            smtp_expect(r, r.code, "5.5.4")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("xtext")))
    msgs = node.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"X-Evil" not in msgs[0]


def test_shell_metacharacters_are_data(node):
    # short path: a local part has at most 64 octets
    marker = "/tmp/kpw%d" % os.getpid()
    m = marker
    if os.path.exists(marker):
        os.unlink(marker)
    senders = [
        "`touch${IFS}%s`@other.test" % m,
        "x|touch${IFS}%s@other.test" % m,
        "$(touch${IFS}%s)@other.test" % m,
        '"$(touch %s)"@other.test' % m,
        '"x;touch %s;"@other.test' % m,
        "${run{/bin/touch${IFS}%s}}@other.test" % m,
    ]
    accepted = []
    with SmtpRaw(node.port) as c:
        c.ehlo()
        for s in senders:
            r = c.cmd("MAIL FROM:<%s>" % s)
            if r.code == 250:
                smtp_expect(r, 250, "2.1.0")
                smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                # also as a (non-existent) local recipient: just an unknown user
                r2 = c.cmd("RCPT TO:<`touch${IFS}%s`@example.test>" % m)
                assert r2.code in (550, 501), r2
                smtp_qid(c.data(smtp_msg("meta", sender="meta@other.test")))
                accepted.append(s)
            else:
                smtp_expect(r, 501, "5.x.x")
    assert accepted, "every metacharacter sender was refused; the plain-atext ones are legal"
    msgs = node.wait_messages("alice@example.test", len(accepted))
    assert len(msgs) == len(accepted)
    for s in accepted:
        assert any(s.encode() in m_.split(b"\n\n", 1)[0] for m_ in msgs), (s, msgs)
    time.sleep(0.5)
    assert not os.path.exists(marker), "a shell ran an address!"


def test_error_flood_server_still_serves(node):
    with SmtpRaw(node.port) as c:
        c.send(b"".join(b"XYZZY %d\r\n" % i for i in range(100)))
        got = 0
        try:
            while got < 100:
                r = c.reply()
                got += 1
                assert 400 <= r.code < 600, r
                if r.code == 421:
                    break
        except (EOFError, ConnectionResetError):
            pass  # disconnecting after N errors is fine
    with SmtpRaw(node.port) as c:
        smtp_expect(c.banner, 220)
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("after-flood")))
    assert len(node.wait_messages("alice@example.test", 1)) == 1


def test_rcpt_flood_of_unknown_users_server_still_serves(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        c.send(b"".join(b"RCPT TO:<nobody%d@example.test>\r\n" % i for i in range(200)))
        try:
            for i in range(200):
                r = c.reply()
                assert r.code in (550, 452, 421), r
                if r.code == 421:
                    break
        except (EOFError, ConnectionResetError):
            pass
    with SmtpRaw(node.port) as c:
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("after-rcpt-flood")))


# ---------------------------------------------------------------- STARTTLS

def test_starttls_injection_discarded(node):
    """CVE-2011-0411: commands pipelined in plaintext behind STARTTLS must be
    thrown away, not run inside the TLS session."""
    with SmtpRaw(node.port) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@other.test>\r\nRCPT TO:<alice@example.test>\r\n")
        smtp_expect(c.reply(), 220)
        assert c.buf == b"", "plaintext reply after 220: %r" % c.buf
        c.sock = smtp_tls_context().wrap_socket(c.sock)
        r = c.ehlo()
        assert r.lines[0].split()[0] == "mx.kale.test", \
            "first reply inside TLS is not the EHLO answer (injected command ran?): %r" % r
        # the injected MAIL did not happen: RCPT is out of sequence
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 503, "5.5.1")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("tls-ok")))
    msgs = node.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"evil@other.test" not in msgs[0]


def test_starttls_injection_in_same_packet_as_ehlo(node):
    with SmtpRaw(node.port) as c:
        c.send(b"EHLO client.test\r\nSTARTTLS\r\nNOOP\r\nNOOP\r\n")
        smtp_expect(c.reply(), 250)
        smtp_expect(c.reply(), 220)
        assert c.buf == b""
        c.sock = smtp_tls_context().wrap_socket(c.sock)
        smtp_expect(c.cmd("HELP"), 214, "2.0.0")   # not the 250 of an injected NOOP


def test_half_open_tls_does_not_block_others(node):
    """Many clients stall inside the TLS handshake (after STARTTLS, a partial
    ClientHello, then nothing); a normal client is still served."""
    n = max(8, 3 * (os.cpu_count() or 1))
    stalled = []
    try:
        for i in range(n):
            src = "127.0.%d.%d" % (1 + i // 200, 1 + i % 200)
            c = SmtpRaw(node.port, source=src)
            c.ehlo()
            smtp_expect(c.cmd("STARTTLS"), 220)
            c.send(b"\x16\x03\x01\x02\x00\x01")  # record header and 1 byte of a ClientHello
            stalled.append(c)
        for i in range(n):   # and some that never say anything at all
            stalled.append(SmtpRaw(node.port, source="127.0.9.%d" % (1 + i), read_banner=False))
        with SmtpRaw(node.port) as c:
            c.ehlo()
            c.starttls()
            smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("tls-unblocked")))
        smtp_qid(smtp_send(node.port, "bob@other.test", ["alice@example.test"],
                           smtp_msg("plain-unblocked")))
    finally:
        for c in stalled:
            c.close()
    assert len(node.wait_messages("alice@example.test", 2)) == 2


def test_half_open_tls_times_out(kale_factory):
    k = kale_factory(limits={"command_timeout": 2})
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("STARTTLS"), 220)
        c.send(b"\x16\x03\x01\x02\x00\x01")
        try:
            c.wait_closed(timeout=15)     # raises socket.timeout if never closed
        except ConnectionResetError:
            pass
    with SmtpRaw(k.port) as c:
        c.ehlo()


def test_garbage_instead_of_tls_handshake(node):
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("STARTTLS"), 220)
        c.send(b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<alice@example.test>\r\n" * 10)
        # Plain commands where a TLS ClientHello belongs: the handshake fails,
        # the server closes (a reset counts), and no command was executed.
        # A timeout fails the test: the server must not sit on the garbage.
        try:
            data = c.wait_closed(timeout=10)
        except ConnectionResetError:
            data = b""
        assert b"250" not in data and b"MAIL" not in data, data
    with SmtpRaw(node.port) as c:
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("after-garbage")))


def test_mail_loop_too_many_received_refused(node):
    """Too many Received: headers is a mail loop (Postfix hopcount_limit = 50)."""
    hops = "".join("Received: from h%d.other.test by h%d.other.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   % (i, i + 1) for i in range(60))
    with SmtpRaw(node.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        r = c.data(hops + smtp_msg("looping"))
        assert r.code in (554, 550), r
        smtp_expect(r, r.code, "5.4.6")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        # 20 hops is fine
        few = "".join("Received: from h%d.other.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i
                      for i in range(20))
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], few + smtp_msg("not-looping"),
                        helo=False))
    msgs = node.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"not-looping" in msgs[0]
