"""Gateway relay (issue 4): static routes to a real next hop (a Python sink
on loopback), one transaction per message and hop, dot-stuffing on the
wire, STARTTLS, PIPELINING, outcomes 2xx / 4xx (retry) / 5xx (DSN)."""
import os
import re
import time

import pytest

from conftest import kale_wait, smtp_msg, smtp_qid, smtp_send
from relaysink import Sink

FAST = "[queue]\nretry = 1s,1s,2s\nmax_age = 60s\n"
WAIT = 30.0


def queue_idle(k):
    d = os.path.join(k.data, "queue", "incoming")
    return not os.path.isdir(d) or not [f for f in os.listdir(d) if not f.startswith(".")]


def log_rows(k, *args):
    p = k.ctl("log", "search", "--json", "--limit", "1000", *args)
    import json
    return json.loads(p.stdout or "[]")


def wait_log(k, rcpt, *actions, timeout=WAIT):
    """Waits until the mail log has a row for rcpt with each action; returns the rows."""
    def ok():
        rows = log_rows(k, "--to", rcpt)
        have = [r["action"] for r in rows]
        return rows if all(a in have for a in actions) else None
    rows = kale_wait(ok, timeout, 0.2)
    assert rows, "log for %s lacks %s: %r" % (rcpt, actions, log_rows(k, "--to", rcpt))
    return rows


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.close()


def relay_node(kale_factory, sink, extra_conf=FAST, tls=None, host="127.0.0.1"):
    k = kale_factory(start=False, extra_conf=extra_conf)
    route = "%s:%d" % (host if ":" not in host else "[%s]" % host, sink.port)
    args = ["domain", "add", "relay.test", "--relay", route]
    if tls:
        args += ["--tls", tls]
    k.ctl(*args)
    k.start()
    return k


def test_static_route_one_transaction_dot_stuffed(kale_factory, sink):
    k = relay_node(kale_factory, sink)
    body = ("line one\r\n.starts with a dot\r\n..two dots\r\n.\r\n"
            "last line without dot\r\n")
    msg = smtp_msg("static", body, to="a@relay.test")
    qid = smtp_qid(smtp_send(k.port, "bob@other.test", ["a@relay.test", "b@relay.test"], msg))
    assert kale_wait(lambda: len(sink.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
    time.sleep(0.3)
    assert len(sink.txs) == 1, "one transaction for both recipients"
    tx = sink.txs[0]
    assert sorted(tx.rcpts) == ["a@relay.test", "b@relay.test"]
    assert tx.mail.startswith(b"MAIL FROM:<bob@other.test>")
    data = tx.data
    # exactly one end of data, at the very end
    assert data.endswith(b"\r\n.\r\n") and data.count(b"\r\n.\r\n") == 1, data
    assert b"\r\n..starts with a dot\r\n" in data
    assert b"\r\n...two dots\r\n" in data
    assert b"\r\n..\r\nlast line" in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"Subject: static" in data
    assert qid.encode() in data          # our Received header went along
    assert tx.pipelined, "PIPELINING offered but MAIL/RCPT/DATA not pipelined"


def test_body_without_final_newline_gets_one_crlf(kale_factory, sink):
    k = relay_node(kale_factory, sink)
    # BDAT-free way to get a body without a final LF is not possible over
    # SMTP (DATA always ends with CRLF); check the normal case ends cleanly.
    smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("end", "x")))
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    assert sink.txs[0].data.endswith(b"\r\nx\r\n.\r\n")


def test_size_and_8bitmime_parameters(kale_factory, sink):
    k = relay_node(kale_factory, sink)
    body = "caf\xc3\xa9\r\n"
    from conftest import SmtpRaw, smtp_expect
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> BODY=8BITMIME"), 250)
        smtp_expect(c.cmd("RCPT TO:<x@relay.test>"), 250)
        c.sock.sendall(b"DATA\r\n")
        smtp_expect(c.reply(), 354)
        c.sock.sendall(("Subject: 8bit\r\n\r\n" + body).encode("latin-1") + b".\r\n")
        smtp_qid(c.reply())
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    m = sink.txs[0].mail
    assert re.search(rb" SIZE=\d+", m), m
    assert b" BODY=8BITMIME" in m, m


def test_4xx_then_success_on_retry(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"451 4.3.0 try later" if n == 1 else b"250 2.1.5 ok")
    s.start()
    try:
        k = relay_node(kale_factory, s)
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("retry")))
        assert kale_wait(lambda: len(s.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        assert s.rcpt_seen["x@relay.test"] == 2
        wait_log(k, "x@relay.test", "deferred", "delivered")
    finally:
        s.close()


def test_connection_refused_defers_then_delivers(kale_factory):
    s = Sink()
    port = s.port
    s.srv.close()                      # nobody listens on the port yet
    k = kale_factory(start=False, extra_conf=FAST)
    k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % port)
    k.start()
    smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("refused")))
    assert kale_wait(lambda: any(r["action"] == "deferred"
                                 for r in log_rows(k, "--to", "x@relay.test")), WAIT)
    assert not queue_idle(k)
    s2 = Sink()
    s2.srv.close()
    import socket
    s2.srv = socket.socket()
    s2.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s2.srv.bind(("127.0.0.1", port))
    s2.srv.listen(16)
    s2.srv.settimeout(0.2)
    s2.port = port
    s2.start()
    try:
        assert kale_wait(lambda: len(s2.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
    finally:
        s2.close()


def dsn_of(k, address, timeout=WAIT):
    msgs = k.wait_messages(address, 1, timeout)
    assert msgs, "no DSN in %s\n%s" % (address, k.log_text()[-3000:])
    return msgs[0].replace(b"\r\n", b"\n").decode("utf-8", "replace")


def test_5xx_bounce_sends_one_dsn(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"550 5.1.1 <%s> no such user here" % a.encode()
             if a.startswith("bad") else b"250 2.1.5 ok")
    s.start()
    try:
        k = relay_node(kale_factory, s)
        qid = smtp_qid(smtp_send(k.port, "alice@example.test",
                                 ["good@relay.test", "bad1@relay.test", "bad2@relay.test"],
                                 smtp_msg("bounce-me", sender="alice@example.test")))
        assert kale_wait(lambda: queue_idle(k) and len(k.messages("alice@example.test")) >= 1,
                         WAIT), k.log_text()[-3000:]
        time.sleep(0.5)
        assert s.delivered() == ["good@relay.test"]
        msgs = k.messages("alice@example.test")
        assert len(msgs) == 1, "one DSN for both failed recipients"
        d = msgs[0].replace(b"\r\n", b"\n").decode("utf-8", "replace")
        assert "Content-Type: multipart/report; report-type=delivery-status" in d
        assert "Content-Type: message/delivery-status" in d
        assert "Final-Recipient: rfc822; bad1@relay.test" in d
        assert "Final-Recipient: rfc822; bad2@relay.test" in d
        assert "good@relay.test" not in d.split("Content-Type: message/delivery-status")[1] \
            .split("Content-Type: text/rfc822-headers")[0]
        assert "Action: failed" in d and "Status: 5.1.1" in d
        assert "Diagnostic-Code: smtp; 550 5.1.1 <bad1@relay.test> no such user here" in d
        assert "Remote-MTA: dns; 127.0.0.1" in d
        assert "X-Kale-Queue-ID: " + qid in d
        assert "Content-Type: text/rfc822-headers" in d
        assert "Subject: bounce-me" in d
        assert "Return-Path: <>" in d
        rows = wait_log(k, "bad1@relay.test", "bounced")
        assert [r["action"] for r in rows].count("bounced") == 1, rows
    finally:
        s.close()


def test_bounce_of_bounce_is_dropped(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"550 5.1.1 no")
    s.start()
    try:
        k = relay_node(kale_factory, s)
        smtp_qid(smtp_send(k.port, "", ["x@relay.test"], smtp_msg("null-sender")))
        assert kale_wait(lambda: queue_idle(k) and "dsn.dropped" in k.log_text(), WAIT), \
            k.log_text()[-3000:]
        assert s.delivered() == []
    finally:
        s.close()


def test_expiry_sends_dsn(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"450 4.2.0 mailbox busy")
    s.start()
    try:
        k = relay_node(kale_factory, s, extra_conf="[queue]\nretry = 1s\nmax_age = 60s\n")
        # age the message: rewrite nothing, just wait for max_age is too slow;
        # instead bounce it administratively is tested elsewhere. Here: the
        # deferral is logged and the message stays queued.
        smtp_qid(smtp_send(k.port, "alice@example.test", ["x@relay.test"],
                           smtp_msg("busy", sender="alice@example.test")))
        assert kale_wait(lambda: s.rcpt_seen.get("x@relay.test", 0) >= 2, WAIT)
        assert not queue_idle(k)
        assert k.messages("alice@example.test") == []
    finally:
        s.close()


def test_starttls_opportunistic(kale_factory):
    k = kale_factory(start=False, extra_conf=FAST)
    k.start()           # makes the self-signed certificate
    k.stop()
    cert = os.path.join(k.dir, "tls", "cert.pem")
    key = os.path.join(k.dir, "tls", "key.pem")
    s = Sink(certfile=cert, keyfile=key)
    s.start()
    try:
        k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port)
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("tls")))
        assert kale_wait(lambda: len(s.txs) >= 1, WAIT), k.log_text()[-3000:]
        assert s.txs[0].tls
        # after STARTTLS: EHLO again, and the pipelined group in one record
        assert s.txs[0].pipelined
    finally:
        s.close()


def test_tls_require_without_starttls_defers(kale_factory, sink):
    k = relay_node(kale_factory, sink, tls="require")
    smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("must-tls")))
    assert kale_wait(lambda: any(r["action"] == "deferred" and "TLS" in (r.get("reason") or "")
                                 for r in log_rows(k, "--to", "x@relay.test")), WAIT), \
        log_rows(k)
    assert sink.txs == []
    assert not queue_idle(k)


def test_ipv6_literal_route(kale_factory):
    try:
        s = Sink(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    s.start()
    try:
        k = relay_node(kale_factory, s, host="::1")
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("v6")))
        assert kale_wait(lambda: len(s.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        rows = wait_log(k, "x@relay.test", "delivered")
        assert any(r["action"] == "delivered" and "::1" in (r.get("relay") or "") for r in rows), rows
    finally:
        s.close()


def test_local_and_relay_recipients_in_one_message(kale_factory, sink):
    k = relay_node(kale_factory, sink)
    smtp_qid(smtp_send(k.port, "bob@other.test", ["alice@example.test", "x@relay.test"],
                       smtp_msg("mixed")))
    assert kale_wait(lambda: len(sink.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
    assert len(k.messages("alice@example.test")) == 1
    assert sink.delivered() == ["x@relay.test"]


def test_concurrency_limit_and_connection_reuse(kale_factory):
    """60 messages to one next hop that answers DATA slowly: never more than
    RELAY_DEST_CONCURRENCY (20) connections at once, so most messages went
    over a reused connection."""
    def slow(tx):
        time.sleep(0.2)
        return b"250 2.0.0 queued"
    s = Sink(data_reply=slow)
    s.start()
    try:
        k = relay_node(kale_factory, s)
        n = 60
        from conftest import SmtpRaw
        with SmtpRaw(k.port) as c:
            c.ehlo()
            for i in range(n):
                smtp_qid(c.mail("bob@other.test", ["r%d@relay.test" % i],
                                smtp_msg("conc-%d" % i), helo=False))
        assert kale_wait(lambda: len(s.txs) >= n and queue_idle(k), 60), k.log_text()[-3000:]
        assert s.max_active <= 20, s.max_active
        assert s.connections < n, s.connections
        assert sorted(s.delivered()) == sorted("r%d@relay.test" % i for i in range(n))
    finally:
        s.close()


def test_tls_require_with_starttls_delivers(kale_factory):
    k = kale_factory(start=False, extra_conf=FAST)
    k.start()           # makes the self-signed certificate
    k.stop()
    s = Sink(certfile=os.path.join(k.dir, "tls", "cert.pem"),
             keyfile=os.path.join(k.dir, "tls", "key.pem"))
    s.start()
    try:
        k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port, "--tls", "require")
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("tls-req")))
        assert kale_wait(lambda: len(s.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        assert s.txs[0].tls
        # after STARTTLS: EHLO again, and the pipelined group in one record
        assert s.txs[0].pipelined
    finally:
        s.close()


def test_dsn_parameters_passed_when_offered(kale_factory):
    """RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT (xtext-encoded) go to a next
    hop that offers DSN. The recipients' NOTIFY/ORCPT come from a queue file
    written here (smtpd does not store them yet)."""
    from test_relay_queue import queue_file
    import pwd
    s = Sink(ext=("PIPELINING", "DSN", "8BITMIME"))
    s.start()
    try:
        k = kale_factory(start=False, extra_conf=FAST)
        k.ctl("domain", "add", "relay.test", "--relay", "127.0.0.1:%d" % s.port)
        k.start()
        k.stop()
        qid = "0005F0000000000000005678"
        data = queue_file(qid, int(time.time()), "bob@other.test",
                          [("x@relay.test", "rfc822;X+Tag=1@Relay.test", 2 | 4),
                           ("y@relay.test", None, 1), ("z@relay.test", None, 0),
                           ("w@relay.test", None, 2 | 8)],
                          b"Subject: dsn-params\n\nbody\n")
        path = os.path.join(k.data, "queue", "incoming", qid)
        with open(path, "wb") as f:
            f.write(data)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        k.start()
        assert kale_wait(lambda: len(s.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        lines = {l.split(b"<")[1].split(b">")[0]: l for l in s.txs[0].rcpt_lines}
        assert lines[b"x@relay.test"].endswith(
            b" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;X+2BTag+3D1@Relay.test"), lines
        assert lines[b"y@relay.test"].endswith(b" NOTIFY=NEVER"), lines
        assert lines[b"z@relay.test"] == b"RCPT TO:<z@relay.test>", lines
        assert lines[b"w@relay.test"].endswith(b" NOTIFY=SUCCESS,DELAY"), lines
    finally:
        s.close()


def test_ret_envid_passed_when_offered(kale_factory):
    s = Sink(ext=("PIPELINING", "DSN"))
    s.start()
    try:
        k = relay_node(kale_factory, s)
        from conftest import SmtpRaw, smtp_expect
        with SmtpRaw(k.port) as c:
            c.ehlo()
            smtp_expect(c.cmd("MAIL FROM:<bob@other.test> RET=HDRS ENVID=env+3Did"), 250)
            smtp_expect(c.cmd("RCPT TO:<x@relay.test>"), 250)
            smtp_qid(c.data(smtp_msg("ret-envid")))
        assert kale_wait(lambda: len(s.txs) >= 1, WAIT), k.log_text()[-3000:]
        m = s.txs[0].mail
        assert b" RET=HDRS" in m and b" ENVID=env+3Did" in m, m
    finally:
        s.close()


def test_no_dsn_parameters_when_not_offered(kale_factory, sink):
    k = relay_node(kale_factory, sink)
    from conftest import SmtpRaw, smtp_expect
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> RET=FULL"), 250)
        smtp_expect(c.cmd("RCPT TO:<x@relay.test> NOTIFY=FAILURE"), 250)
        smtp_qid(c.data(smtp_msg("no-dsn")))
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    assert b"RET=" not in sink.txs[0].mail
    assert sink.txs[0].rcpt_lines == [b"RCPT TO:<x@relay.test>"]
