"""SMTP receive path, [limits] (operator.md §3, §5): message_size (SIZE= at
MAIL, oversized DATA and BDAT), max_recipients, per-IP and total connection
limits, command_timeout, and a full disk (452 4.3.1, never 250 then loss)."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid,
                      smtp_send)

LIMIT = 10000


def banner_code(port, source=None):
    with SmtpRaw(port, source=source) as c:
        return c.banner.code


def hold_conn(port, source=None):
    """Opens a session that got its 220. Slots of connections that just closed
    (e.g. the fixture's port probe) are released asynchronously, so a 421 is
    retried for a few seconds."""
    end = time.time() + 5
    while True:
        c = SmtpRaw(port, source=source)
        if c.banner.code == 220 or time.time() > end:
            smtp_expect(c.banner, 220)
            return c
        c.close()
        time.sleep(0.1)


@pytest.fixture
def small(kale_factory):
    return kale_factory(extra_conf="[limits]\nmessage_size = %d\n" % LIMIT)


def test_size_param_over_limit_refused_at_mail(small):
    with SmtpRaw(small.port) as c:
        c.ehlo()
        assert c.ext.get("SIZE") == str(LIMIT)
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> SIZE=%d" % (LIMIT * 2)), 552, "5.3.4")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> SIZE=%d" % (LIMIT // 2)), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("small-enough")))
    assert len(small.wait_messages("alice@example.test", 1)) == 1


def test_oversized_data_read_to_end_connection_kept(small):
    big = smtp_msg("too-big", ("x" * 70 + "\r\n") * (2 * LIMIT // 72 + 10))
    with SmtpRaw(small.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.data(big), 552, "5.3.4")
        # the body was read to its end: no body line comes back as a command
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("fits"),
                        helo=False))
    msgs = small.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"fits" in msgs[0]
    assert not any(b"too-big" in m for m in msgs)


def test_oversized_data_lying_size(small):
    """SIZE= says small, the body is big: still 552 5.3.4 at the end."""
    big = smtp_msg("liar", ("y" * 98 + "\r\n") * (LIMIT // 50))
    with SmtpRaw(small.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> SIZE=100"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.data(big), 552, "5.3.4")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")


def test_bdat_over_limit(small):
    chunk = b"z" * (LIMIT * 2)
    with SmtpRaw(small.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        smtp_expect(c.reply(), 552, "5.3.4")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        # over the limit across several chunks
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        part = b"w" * (LIMIT // 3)
        codes = []
        for i in range(5):
            last = b" LAST" if i == 4 else b""
            c.send(b"BDAT %d%s\r\n" % (len(part), last) + part)
            codes.append(c.reply())
            if codes[-1].code != 250:
                break   # RFC 3030: after a failed chunk the client sends no more
        assert codes[-1].code == 552 and codes[-1].enh == "5.3.4", codes
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
    smtp_qid(smtp_send(small.port, "bob@other.test", ["alice@example.test"], smtp_msg("ok")))
    msgs = small.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"zzzz" not in msgs[0] and b"wwww" not in msgs[0]


def test_huge_size_param_no_overflow(small):
    with SmtpRaw(small.port) as c:
        c.ehlo()
        for v in ("18446744073709551615", "18446744073709551616", "99999999999999999999999"):
            r = c.cmd("MAIL FROM:<bob@other.test> SIZE=%s" % v)
            assert r.code in (552, 501, 555), (v, r)
            assert r.enh in ("5.3.4", "5.5.4", "5.5.2"), (v, r)
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


def test_max_recipients_452(kale_factory):
    users = ["u%d@example.test" % i for i in range(5)]
    k = kale_factory(limits={"max_recipients": 3}, users=["alice@example.test"] + users)
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        for u in users[:3]:
            smtp_expect(c.cmd("RCPT TO:<%s>" % u), 250, "2.1.5")
        smtp_expect(c.cmd("RCPT TO:<%s>" % users[3]), 452, "4.5.3")
        smtp_expect(c.cmd("RCPT TO:<%s>" % users[4]), 452, "4.5.3")
        smtp_qid(c.data(smtp_msg("three")))
    for u in users[:3]:
        assert len(k.wait_messages(u, 1)) == 1, u
    assert k.messages(users[3]) == [] and k.messages(users[4]) == []


def test_per_ip_connection_limit(kale_factory):
    k = kale_factory(limits={"max_connections_per_ip": 3, "max_connections": 100})
    held = []
    try:
        for _ in range(3):
            held.append(hold_conn(k.port))
        with SmtpRaw(k.port) as c:
            smtp_expect(c.banner, 421, "4.x.x")
            assert c.wait_closed() == b""
        # another address is not affected
        with SmtpRaw(k.port, source="127.0.0.2") as c:
            smtp_expect(c.banner, 220)
            c.ehlo()
        # freeing one slot lets a new connection in
        held.pop().close()

        def one_more():
            c = SmtpRaw(k.port)
            ok = c.banner.code == 220
            if ok:
                held.append(c)
            else:
                c.close()
            return ok
        assert kale_wait(one_more, 5), "slot not freed after a client left"
    finally:
        for c in held:
            c.close()


def test_total_connection_limit(kale_factory):
    k = kale_factory(limits={"max_connections_per_ip": 2, "max_connections": 4})
    held = []
    try:
        for src in ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"):
            held.append(hold_conn(k.port, src))
        with SmtpRaw(k.port, source="127.0.0.3") as c:
            smtp_expect(c.banner, 421, "4.x.x")
            assert c.wait_closed() == b""
        held.pop().close()
        assert kale_wait(lambda: banner_code(k.port, "127.0.0.4") == 220, 5)
    finally:
        for c in held:
            c.close()


def test_connection_limit_counts_are_released(kale_factory):
    """Many short sessions in a row never run into the per-IP limit."""
    k = kale_factory(limits={"max_connections_per_ip": 2})
    for i in range(20):
        with SmtpRaw(k.port) as c:
            if c.banner.code == 421:
                # a slot may take a moment to be released: retry a little
                assert kale_wait(lambda: banner_code(k.port) == 220, 5), i
                continue
            smtp_expect(c.banner, 220)
            smtp_expect(c.cmd("QUIT"), 221, "2.0.0")
            c.wait_closed()


def test_command_timeout(kale_factory):
    k = kale_factory(limits={"command_timeout": 2})
    with SmtpRaw(k.port) as c:
        c.ehlo()
        # say nothing: 421 then close
        c.sock.settimeout(15)
        r = c.reply()
        smtp_expect(r, 421, "4.x.x")
        assert c.wait_closed(15) == b""
    # a slow sender in DATA is cut off too
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("DATA"), 354)
        c.send(b"Subject: stalled\r\n\r\npartial")
        c.sock.settimeout(15)
        r = c.reply()
        smtp_expect(r, 421, "4.x.x")
        assert c.wait_closed(15) == b""
    # the server still serves, and the stalled message was not delivered
    smtp_qid(smtp_send(k.port, "bob@other.test", ["alice@example.test"], smtp_msg("later")))
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"stalled" not in msgs[0]


def trickle_lifetime(c, data, limit=20.0):
    """Sends data one byte a second; returns how long the session lived."""
    t0 = time.time()
    c.sock.settimeout(1.0)
    for i in range(int(limit)):
        try:
            c.sock.sendall(data[i % len(data):i % len(data) + 1])
            got = c.sock.recv(4096)
            if got == b"" or b"421" in got:
                return time.time() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.time() - t0
    return time.time() - t0


def test_slow_command_sender_is_cut(kale_factory):
    """One byte every second kept a session alive forever under the idle
    timer (1,000 such sessions fill max_connections): a command must be
    complete within command_timeout."""
    k = kale_factory(limits={"command_timeout": 2})
    with SmtpRaw(k.port) as c:
        c.ehlo()
        lived = trickle_lifetime(c, b"NOOPNOOPNOOPNOOPNOOPNOOP")
    assert lived < 8, "a trickling sender lived %.1fs" % lived
    assert "smtp.deadline" in k.log_text()


def test_slow_data_sender_is_cut(kale_factory):
    """DATA must arrive at 500 bytes/s past command_timeout
    (Postfix's smtpd_min_data_rate)."""
    k = kale_factory(limits={"command_timeout": 2})
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("DATA"), 354)
        lived = trickle_lifetime(c, b"Subject: slow\r\n\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
    assert lived < 8, "a trickling DATA sender lived %.1fs" % lived
    # a normal sender is unaffected
    smtp_qid(smtp_send(k.port, "bob@other.test", ["alice@example.test"], smtp_msg("normal")))


# ---------------------------------------------------------------- full disk

def can_mount():
    return os.geteuid() == 0 and shutil.which("mount") is not None


def test_full_disk_452_then_recovers(kale_factory):
    if not can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    mounted = []
    holder = []

    def mount_tmpfs(k):
        holder.append(k)
        os.makedirs(k.data, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", k.data],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip("cannot mount tmpfs: %s" % p.stderr.strip())
        mounted.append(k.data)

    try:
        k = kale_factory(before_ctl=mount_tmpfs)
        smtp_qid(smtp_send(k.port, "bob@other.test", ["alice@example.test"], smtp_msg("before")))
        assert len(k.wait_messages("alice@example.test", 1)) == 1

        filler = os.path.join(k.data, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\1" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        # leave about 256 KB free: less than the 1 MB message
        os.truncate(filler, max(0, os.path.getsize(filler) - 256 * 1024))

        body = smtp_msg("big-on-full-disk", ("b" * 900 + "\r\n") * 1150)   # ~1 MB
        results = []
        with SmtpRaw(k.port) as c:
            c.ehlo()
            r = c.cmd("MAIL FROM:<bob@other.test>")
            results.append(r)
            if r.code == 250:
                r = c.cmd("RCPT TO:<alice@example.test>")
                results.append(r)
                if r.code == 250:
                    r = c.cmd("DATA")
                    results.append(r)
                    if r.code == 354:
                        c.send(body.encode() + b".\r\n")
                        r = c.reply()
                        results.append(r)
            final = results[-1]
            assert final.code == 452 and final.enh == "4.3.1", results
            smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        # declaring the size up front may be refused at MAIL already
        with SmtpRaw(k.port) as c:
            c.ehlo()
            r = c.cmd("MAIL FROM:<bob@other.test> SIZE=%d" % len(body))
            assert (r.code, r.enh) in ((452, "4.3.1"), (552, "5.3.4"), (250, "2.1.0")), r
        assert k.proc.poll() is None, "kaled died on a full disk:\n" + k.log_text()

        os.unlink(filler)
        r = smtp_send(k.port, "bob@other.test", ["alice@example.test"], body)
        smtp_qid(r)
        msgs = k.wait_messages("alice@example.test", 2, timeout=30)
        assert len(msgs) == 2, k.log_text()[-3000:]
        assert sum(b"big-on-full-disk" in m for m in msgs) == 1
        big = [m for m in msgs if b"big-on-full-disk" in m][0]
        assert big.replace(b"\r\n", b"\n").count(b"b" * 900 + b"\n") == 1150
    finally:
        for k_ in holder:
            if k_.proc is not None:
                k_.stop()       # kaled must be stopped before its file system goes away
        for d in mounted:
            subprocess.run(["umount", d], capture_output=True)
            if os.path.ismount(d):
                subprocess.run(["umount", "-l", d], capture_output=True)
