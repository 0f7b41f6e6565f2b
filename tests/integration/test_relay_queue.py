"""Gateway relay, queue control and crash safety (issue 4): kalectl queue
hold / release / delete / bounce / flush with the daemon running (through
the control socket to qmgr) and stopped (on the spool), max_age expiry,
and kill -9 in the middle of deliveries with no loss."""
import os
import pwd
import threading
import time

import pytest

from conftest import kale_wait, smtp_msg, smtp_qid, smtp_send
from relaysink import Sink
from test_relay import FAST, WAIT, log_rows, queue_idle, wait_log


def held(k, qid):
    return os.path.exists(os.path.join(k.data, "queue", "hold", qid))


def queued(k, qid):
    return os.path.exists(os.path.join(k.data, "queue", "incoming", qid))


class Gate:
    """A sink policy switch: 451 for every RCPT until opened."""

    def __init__(self):
        self.open = False

    def rcpt(self, addr, n):
        return b"250 2.1.5 ok" if self.open else b"451 4.3.0 not now"


@pytest.fixture
def gated(kale_factory):
    gate = Gate()
    s = Sink(rcpt_reply=gate.rcpt)
    s.start()
    k = kale_factory(start=False, extra_conf="[queue]\nretry = 1s\nmax_age = 60s\n")
    k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port)
    k.start()
    yield k, s, gate
    s.close()


def deferred_qid(k, s, subject="q"):
    qid = smtp_qid(smtp_send(k.port, "alice@example.test", ["x@relay.test"],
                             smtp_msg(subject, sender="alice@example.test")))
    assert kale_wait(lambda: s.rcpt_seen.get("x@relay.test", 0) >= 1, WAIT)
    return qid


def test_hold_is_never_attempted_then_release(gated):
    k, s, gate = gated
    qid = deferred_qid(k, s)
    p = k.ctl("queue", "hold", qid)
    assert "held" in p.stdout
    assert held(k, qid) and not queued(k, qid)
    tries = s.rcpt_seen["x@relay.test"]
    gate.open = True
    k.ctl("queue", "flush")
    time.sleep(3)                       # several retry periods of 1 s
    assert s.rcpt_seen["x@relay.test"] == tries, "a held message was attempted"
    assert s.txs == []
    lst = k.ctl("queue", "list", "--json").stdout
    assert qid in lst and "held" in lst
    k.ctl("queue", "release", qid)
    assert kale_wait(lambda: s.delivered() == ["x@relay.test"] and queue_idle(k), WAIT)
    wait_log(k, "x@relay.test", "held", "released", "delivered")


def test_hold_twice_and_unknown_qid_refused(gated):
    k, s, gate = gated
    qid = deferred_qid(k, s)
    k.ctl("queue", "hold", qid)
    p = k.ctl("queue", "hold", qid, check=False)
    assert p.returncode == 1 and "already held" in p.stderr
    p = k.ctl("queue", "release", "0" * 24, check=False)
    assert p.returncode == 1
    p = k.ctl("queue", "delete", "../../etc", check=False)
    assert p.returncode == 2


def test_delete(gated):
    k, s, gate = gated
    qid = deferred_qid(k, s)
    k.ctl("queue", "delete", qid)
    assert not queued(k, qid) and not held(k, qid)
    assert not os.path.exists(os.path.join(k.data, "queue", "done", qid))
    gate.open = True
    time.sleep(2)
    assert s.txs == []
    wait_log(k, "x@relay.test", "deleted")


def test_bounce_sends_dsn(gated):
    k, s, gate = gated
    qid = deferred_qid(k, s, "to-bounce")
    k.ctl("queue", "bounce", qid)
    assert kale_wait(lambda: queue_idle(k) and k.messages("alice@example.test"), WAIT), \
        k.log_text()[-3000:]
    d = k.messages("alice@example.test")[0].decode("utf-8", "replace")
    assert "Status: 5.0.0" in d and "Final-Recipient: rfc822; x@relay.test" in d
    assert "Subject: to-bounce" in d
    wait_log(k, "x@relay.test", "bounced")


def test_queue_control_with_daemon_stopped(gated):
    k, s, gate = gated
    q1 = deferred_qid(k, s, "one")
    q2 = smtp_qid(smtp_send(k.port, "alice@example.test", ["y@relay.test"],
                            smtp_msg("two", sender="alice@example.test")))
    q3 = smtp_qid(smtp_send(k.port, "alice@example.test", ["z@relay.test"],
                            smtp_msg("three", sender="alice@example.test")))
    assert kale_wait(lambda: s.rcpt_seen.get("z@relay.test", 0) >= 1, WAIT)
    k.stop()
    k.ctl("queue", "hold", q1)
    assert held(k, q1)
    k.ctl("queue", "release", q1)
    assert queued(k, q1)
    k.ctl("queue", "hold", q1)
    k.ctl("queue", "delete", q2)
    assert not queued(k, q2)
    k.ctl("queue", "bounce", q3)
    assert not queued(k, q3)
    gate.open = True
    k.start()
    # the DSN for q3 (queued by kalectl) is delivered; q1 stays held
    assert kale_wait(lambda: k.messages("alice@example.test"), WAIT), k.log_text()[-3000:]
    d = k.messages("alice@example.test")[0].decode("utf-8", "replace")
    assert "z@relay.test" in d and "Subject: three" in d
    time.sleep(1.5)
    assert s.txs == [] and held(k, q1)
    k.ctl("queue", "release", q1)
    assert kale_wait(lambda: s.delivered() == ["x@relay.test"] and queue_idle(k), WAIT)


# ------------------------------------------------------------------ expiry

def queue_file(qid, arrival, sender, rcpts, body):
    def rec(t, v):
        return t + str(len(v)).encode() + b":" + v + b"\n"
    env = rec(b"V", b"1") + rec(b"Q", qid.encode()) + rec(b"T", str(arrival).encode())
    env += rec(b"C", b"127.0.0.1") + rec(b"H", b"client.test") + rec(b"S", sender.encode())
    env += rec(b"F", b"")
    for r in rcpts:
        # r: "addr" or ("addr", orcpt or None, notify bits)
        addr, orcpt, notify = (r, None, 0) if isinstance(r, str) else r
        a = addr.encode()
        sub = b"a" + str(len(a)).encode() + b":" + a + b"o" + str(len(a)).encode() + b":" + a
        if orcpt:
            sub += b"p" + str(len(orcpt)).encode() + b":" + orcpt.encode()
        n = str(notify).encode()
        sub += b"n" + str(len(n)).encode() + b":" + n
        env += rec(b"R", sub)
    env += b"Z0:\n"
    trailer = b"KALEQ001 %016x %016x     \n" % (len(body), len(env))
    return body + env + trailer


def test_max_age_expiry_sends_dsn(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"451 4.3.0 not now")
    s.start()
    try:
        k = kale_factory(start=False, extra_conf=FAST)
        k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port)
        k.start()
        k.stop()
        qid = "0005F0000000000000001234"
        data = queue_file(qid, int(time.time()) - 3600, "alice@example.test", ["old@relay.test"],
                          b"Subject: too-old\n\nbody\n")
        path = os.path.join(k.data, "queue", "incoming", qid)
        with open(path, "wb") as f:
            f.write(data)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        k.start()
        assert kale_wait(lambda: queue_idle(k) and k.messages("alice@example.test"), WAIT), \
            k.log_text()[-3000:]
        d = k.messages("alice@example.test")[0].decode("utf-8", "replace")
        assert "Final-Recipient: rfc822; old@relay.test" in d
        assert "Status: 4.4.7" in d and "Action: failed" in d
        assert "Subject: too-old" in d
        wait_log(k, "old@relay.test", "deferred", "expired")
    finally:
        s.close()


# ------------------------------------------------------------------ crash

def test_kill9_mid_delivery_no_loss(kale_factory):
    release = threading.Event()
    first = threading.Event()

    def data_reply(tx):
        if not release.is_set():
            first.set()
            release.wait(20)            # hold the 250 until kale is dead
        return b"250 2.0.0 queued"

    s = Sink(data_reply=data_reply)
    s.start()
    try:
        k = kale_factory(start=False, extra_conf=FAST)
        k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port)
        k.start()
        n = 15
        for i in range(n):
            smtp_qid(smtp_send(k.port, "bob@other.test", ["r%d@relay.test" % i],
                               smtp_msg("crash-%d" % i)))
        assert first.wait(WAIT), k.log_text()[-3000:]
        k.kill9()
        release.set()
        k.start()
        want = {"r%d@relay.test" % i for i in range(n)}
        assert kale_wait(lambda: want <= set(s.delivered()) and queue_idle(k), 60), \
            (sorted(want - set(s.delivered())), k.log_text()[-3000:])
        got = s.delivered()
        # only transactions caught between the next hop's 250 and our
        # durable mark may be sent twice
        for a in want:
            assert got.count(a) <= 2, (a, got)
    finally:
        release.set()
        s.close()
