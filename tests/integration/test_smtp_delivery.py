"""SMTP receive path, local delivery: Maildir layout, Received / Return-Path /
Delivered-To headers, aliases, the null sender, unqualified postmaster, mbox."""
import json
import os
import re

from conftest import (SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid, smtp_send)


def header_block(msg):
    """The header section of a stored message, LF endings, as text."""
    m = msg.replace(b"\r\n", b"\n")
    return m.split(b"\n\n", 1)[0].decode("utf-8", "replace")


def headers(msg):
    """[(name, value)] with folded lines joined."""
    out = []
    for line in header_block(msg).split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        elif ":" in line:
            n, v = line.split(":", 1)
            out.append((n, v.strip()))
    return out


def test_maildir_layout(kale):
    smtp_qid(smtp_send(kale.port, "bob@other.test", ["alice@example.test"], smtp_msg("layout")))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    box = os.path.join(kale.data, "mail", "example.test", "alice")
    for sub in ("tmp", "new", "cur"):
        assert os.path.isdir(os.path.join(box, sub)), sub
    assert len(os.listdir(os.path.join(box, "new"))) == 1
    assert os.listdir(os.path.join(box, "tmp")) == []


def test_trace_headers(kale):
    r = smtp_send(kale.port, "bob@other.test", ["alice@example.test"],
                  smtp_msg("trace-test", "body text\r\n"))
    qid = smtp_qid(r)
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    hs = headers(msgs[0])
    names = [n.lower() for n, _ in hs]
    # Return-Path and Delivered-To are added at delivery, Received at receipt;
    # all of them come before the message's own headers.
    assert "return-path" in names and "delivered-to" in names and "received" in names, hs
    first_own = names.index("from")
    assert names.index("return-path") < first_own
    assert names.index("delivered-to") < first_own
    assert names.index("received") < first_own
    assert names.count("return-path") == 1 and names.count("delivered-to") == 1
    assert dict((n.lower(), v) for n, v in hs)["return-path"] == "<bob@other.test>"
    assert dict((n.lower(), v) for n, v in hs)["delivered-to"] == "alice@example.test"
    received = [v for n, v in hs if n.lower() == "received"]
    assert len(received) == 1, received
    assert "mx.kale.test" in received[0], received
    assert "127.0.0.1" in received[0], received
    assert qid in received[0], "queue id %s not in Received: %s" % (qid, received[0])
    assert msgs[0].replace(b"\r\n", b"\n").endswith(b"\n\nbody text\n")


def test_received_prepended_to_existing_trace(kale):
    own = "Received: from far.away (far.away [192.0.2.1]) by relay.other.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    with SmtpRaw(kale.port) as c:
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"],
                        own + smtp_msg("trace2")))
    msgs = kale.wait_messages("alice@example.test", 1)
    rec = [v for n, v in headers(msgs[0]) if n.lower() == "received"]
    assert len(rec) == 2, rec
    assert "mx.kale.test" in rec[0] and "relay.other.test" in rec[1], rec


def test_unknown_recipient_550(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("mixed")))
    assert len(kale.wait_messages("alice@example.test", 1)) == 1
    assert not os.path.exists(kale.mailbox("nobody@example.test"))


def test_recipient_case_insensitive_domain(kale):
    smtp_qid(smtp_send(kale.port, "bob@other.test", ["alice@EXAMPLE.TEST"], smtp_msg("case")))
    assert len(kale.wait_messages("alice@example.test", 1)) == 1


def test_null_sender_to_local_user(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("bounce-like", sender="MAILER-DAEMON@other.test")))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    assert dict((n.lower(), v) for n, v in headers(msgs[0]))["return-path"] == "<>"


def test_alias_expansion(kale_factory):
    k = kale_factory(users=("alice@example.test", "bob@example.test"),
                     aliases={"sales@example.test": "alice@example.test,bob@example.test",
                              "boss@example.test": "sales@example.test"})
    smtp_qid(smtp_send(k.port, "cust@other.test", ["sales@example.test"], smtp_msg("alias1")))
    a = k.wait_messages("alice@example.test", 1)
    b = k.wait_messages("bob@example.test", 1)
    assert len(a) == 1 and len(b) == 1
    assert dict((n.lower(), v) for n, v in headers(a[0]))["delivered-to"] == "alice@example.test"
    assert dict((n.lower(), v) for n, v in headers(b[0]))["delivered-to"] == "bob@example.test"
    assert not os.path.exists(k.mailbox("sales@example.test"))
    # nested alias
    smtp_qid(smtp_send(k.port, "cust@other.test", ["boss@example.test"], smtp_msg("alias2")))
    assert len(k.wait_messages("alice@example.test", 2)) == 2
    assert len(k.wait_messages("bob@example.test", 2)) == 2


def test_alias_and_user_in_one_message_deduplicated(kale_factory):
    k = kale_factory(aliases={"info@example.test": "alice@example.test"})
    smtp_qid(smtp_send(k.port, "cust@other.test", ["info@example.test", "alice@example.test"],
                       smtp_msg("dedup")))
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    # a second copy must not arrive
    smtp_qid(smtp_send(k.port, "cust@other.test", ["alice@example.test"], smtp_msg("marker")))
    msgs = k.wait_messages("alice@example.test", 2)
    assert len(msgs) == 2 and sum(b"dedup" in m for m in msgs) == 1, msgs


def test_postmaster_unqualified(kale_factory):
    k = kale_factory(aliases={"postmaster@example.test": "alice@example.test"})
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("to-postmaster", to="postmaster")))
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"to-postmaster" in msgs[0]


def test_postmaster_unqualified_as_user(kale_factory):
    k = kale_factory(users=("alice@example.test", "postmaster@example.test"))
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("pm-user", to="postmaster")))
    assert len(k.wait_messages("postmaster@example.test", 1)) == 1


def test_plus_extension(kale):
    """A local part with +ext that is not itself known goes to the base user."""
    smtp_qid(smtp_send(kale.port, "bob@other.test", ["alice+lists@example.test"],
                       smtp_msg("plus")))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"plus" in msgs[0]


def test_many_recipients_one_message(kale_factory):
    users = ["u%d@example.test" % i for i in range(5)]
    k = kale_factory(users=["alice@example.test"] + users)
    smtp_qid(smtp_send(k.port, "bob@other.test", users, smtp_msg("fanout")))
    for u in users:
        msgs = k.wait_messages(u, 1)
        assert len(msgs) == 1, u
        assert ("Delivered-To: %s" % u).encode() in msgs[0]


def mbox_messages(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = re.split(rb"(?m)^(?=From )", data)
    return [p for p in parts if p.startswith(b"From ")]


def test_mbox_delivery(kale_factory):
    k = kale_factory(extra_conf="[delivery]\nmailbox_format = mbox\n")
    path = os.path.join(k.data, "mail", "example.test", "alice")
    body1 = "first\r\nFrom the start of a line\r\n"
    smtp_qid(smtp_send(k.port, "bob@other.test", ["alice@example.test"],
                       smtp_msg("mbox-one", body1)))
    smtp_qid(smtp_send(k.port, "carol@other.test", ["alice@example.test"],
                       smtp_msg("mbox-two", "second\r\n", sender="carol@other.test")))
    ok = kale_wait(lambda: os.path.isfile(path) and len(mbox_messages(path)) >= 2, 15)
    assert ok, "mbox %s not written (is a dir: %s)" % (path, os.path.isdir(path))
    msgs = mbox_messages(path)
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith(b"From bob@other.test ")
    assert msgs[1].startswith(b"From carol@other.test ")
    m1 = msgs[0].replace(b"\r\n", b"\n")
    assert b"mbox-one" in m1
    assert b"\n>From the start of a line\n" in m1, m1        # mboxrd/o quoting
    assert b"Return-Path: <bob@other.test>" in m1
    assert b"Delivered-To: alice@example.test" in m1
    assert m1.endswith(b"\n\n"), m1[-40:]                    # blank line between messages


def test_queue_empty_after_delivery(kale):
    smtp_qid(smtp_send(kale.port, "bob@other.test", ["alice@example.test"], smtp_msg("q")))
    assert len(kale.wait_messages("alice@example.test", 1)) == 1

    def queue_files():
        n = 0
        for sub in ("incoming", "tmp"):
            d = os.path.join(kale.data, "queue", sub)
            if os.path.isdir(d):
                n += len([f for f in os.listdir(d) if not f.startswith(".")])
        return n
    # the delivered message leaves the queue (give qmgr a moment to clean up)
    assert kale_wait(lambda: queue_files() == 0, 10), os.listdir(
        os.path.join(kale.data, "queue", "incoming"))


def test_postmaster_unqualified_without_postmaster(kale):
    """RFC 5321 4.5.1: "postmaster" (any case) is accepted even with no
    postmaster user or alias; it is queued for postmaster@ the first local
    domain (delivered once that user exists, bounced by the queue before)."""
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("pm-none", to="postmaster")))
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        # postmaster@ a local domain is accepted too (it must reach someone;
        # without [server] postmaster it is queued as it is, with a warning)
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<postmaster@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")

    def queued_for():
        p = kale.ctl("log", "search", "--json", "--limit", "1000")
        rows = json.loads(p.stdout)
        return [r for r in rows if r.get("to") == "postmaster@example.test"
                and r.get("action") != "rejected"]
    assert kale_wait(queued_for, 15), kale.ctl("log", "search", "--json").stdout
