"""Gateway behaviour (issue 11): LocalDB users of relay domains (recipients
kept in the gateway for a domain relayed to the internal server: verified at
RCPT, usable for SMTP AUTH, imported in bulk, never delivered locally), and
postmaster for every domain kale accepts mail for."""
import imaplib
import os
import poplib
import smtplib
import subprocess

import pytest

from conftest import (SmtpRaw, bin_path, kale_wait, smtp_expect, smtp_msg, smtp_qid,
                      smtp_tls_context as tls_ctx)
from relaysink import Sink

FAST = "[queue]\nretry = 1s,1s,2s\nmax_age = 60s\n"
WAIT = 30.0


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.close()


def gateway(kale_factory, sink, extra_conf=FAST):
    """fb.test relayed to the sink, verified by a localdb profile."""
    k = kale_factory(start=False, extra_conf=extra_conf,
                     listeners=("smtp", "submission", "pop3", "imap"))
    k.ctl("domain", "add", "fb.test", "--relay", "127.0.0.1:%d" % sink.port)
    k.ctl("verify", "add", "ldb", "--type", "localdb")
    k.ctl("domain", "set", "fb.test", "--verify", "ldb")
    return k


def test_localdb_users_of_a_relay_domain(kale_factory, sink):
    k = gateway(kale_factory, sink)
    k.ctl("user", "add", "local1@fb.test", "--password-stdin", input="l1-secret\n")
    csv = os.path.join(k.dir, "fb.csv")
    with open(csv, "w") as f:
        f.write("address,password\nlocal2@fb.test\nlocal3@fb.test,l3-secret\n")
    os.chmod(csv, 0o644)
    p = k.ctl("user", "import", csv)
    assert "imported 2 users, 0 bad lines" in p.stdout
    assert "local1@fb.test" in k.ctl("user", "list", "fb.test").stdout
    k.start()

    # verified at RCPT: the known ones are accepted, the others refused
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<someone@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<nobody@fb.test>"), 550, "5.1.1")
        smtp_expect(c.cmd("RCPT TO:<local1@fb.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("RCPT TO:<Local2@FB.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("for the internal server")))
    # relayed to the internal server, never delivered locally
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    assert sorted(a.lower() for a in sink.delivered()) == ["local1@fb.test", "local2@fb.test"]
    assert not os.path.exists(os.path.join(k.data, "mail", "fb.test"))

    # SMTP AUTH as a LocalDB user works (submission, STARTTLS)
    s = smtplib.SMTP("127.0.0.1", k.ports["submission"], timeout=15)
    s.starttls(context=tls_ctx())
    s.login("local3@fb.test", "l3-secret")
    s.quit()

    # but it has no mailbox: POP3 and IMAP refuse it
    p3 = poplib.POP3("127.0.0.1", k.ports["pop3"], timeout=15)
    p3.stls(context=tls_ctx())
    p3.user("local1@fb.test")
    with pytest.raises(poplib.error_proto):
        p3.pass_("l1-secret")
    im = imaplib.IMAP4("127.0.0.1", k.ports["imap"], timeout=15)
    im.starttls(ssl_context=tls_ctx())
    with pytest.raises(imaplib.IMAP4.error):
        im.login("local1@fb.test", "l1-secret")
    im.logout()
    # a local user still logs in to both
    im = imaplib.IMAP4("127.0.0.1", k.ports["imap"], timeout=15)
    im.starttls(ssl_context=tls_ctx())
    im.login("alice@example.test", "alice-secret")
    im.logout()


# ---- postmaster, root alias, double bounces ----

def pm_node(kale_factory, sink, postmaster="admin@example.test", root_alias="alice@example.test"):
    k = kale_factory(start=False, extra_conf=FAST,
                     users=("alice@example.test", "admin@example.test"))
    with open(k.conf) as f:
        text = f.read()
    extra = ""
    if postmaster:
        extra += "postmaster = %s\n" % postmaster
    if root_alias:
        extra += "root_alias = %s\n" % root_alias
    with open(k.conf, "w") as f:
        f.write(text.replace("[server]\n", "[server]\n" + extra, 1))
    k.ctl("domain", "add", "fb.test", "--relay", "127.0.0.1:%d" % sink.port)
    k.ctl("verify", "add", "ldb", "--type", "localdb")
    k.ctl("domain", "set", "fb.test", "--verify", "ldb")
    k.start()
    return k


def test_postmaster_of_every_domain_reaches_the_postmaster(kale_factory, sink):
    k = pm_node(kale_factory, sink)
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<someone@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
        smtp_expect(c.cmd("RCPT TO:<Postmaster@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("RCPT TO:<postmaster@mx.kale.test>"), 250, "2.1.5")
        # a relay domain's postmaster is not refused by its verification
        # profile: it goes to the internal server
        smtp_expect(c.cmd("RCPT TO:<postmaster@fb.test>"), 250, "2.1.5")
        # other names of this host are not for the MX
        r = c.cmd("RCPT TO:<root@mx.kale.test>")
        assert r.code == 554, r
        smtp_qid(c.data(smtp_msg("for the postmaster")))
    msgs = k.wait_messages("admin@example.test", 1)
    assert len(msgs) == 1 and b"Subject: for the postmaster" in msgs[0]
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    assert sink.delivered() == ["postmaster@fb.test"]
    assert k.messages("alice@example.test") == []


def test_root_and_local_names_go_to_the_root_alias(kale_factory, sink):
    k = pm_node(kale_factory, sink)
    # cron mails "root" through sendmail: root@mx.kale.test, the root alias
    p = subprocess.run([bin_path("kale-sendmail"), "-C", k.conf, "root"],
                       input=b"Subject: cron output\n\nsomething ran\n", capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"Subject: cron output" in msgs[0]
    # a trusted or authenticated client may write to LOCAL@hostname too;
    # an MX client may not (it gets the relay refusal)
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<someone@other.test>"), 250, "2.1.0")
        assert c.cmd("RCPT TO:<daemon@mx.kale.test>").code == 554


def test_double_bounce_goes_to_the_postmaster(kale_factory):
    s = Sink(rcpt_reply=lambda a, n: b"550 5.1.1 no such user")
    s.start()
    try:
        k = pm_node(kale_factory, s)
        k.ctl("user", "add", "gone@fb.test")
        smtp_qid(smtp_send_null(k.port, "gone@fb.test"))
        msgs = k.wait_messages("admin@example.test", 1, timeout=WAIT)
        assert len(msgs) == 1, k.log_text()[-3000:]
        assert b"Return-Path: <double-bounce@mx.kale.test>" in msgs[0]
        assert b"Undelivered Mail" in msgs[0] and b"gone@fb.test" in msgs[0]
    finally:
        s.close()


def test_failed_double_bounce_notice_is_dropped(kale_factory):
    """The postmaster is on the refusing server too: the notice fails and
    goes nowhere (no loop)."""
    s = Sink(rcpt_reply=lambda a, n: b"550 5.1.1 no such user")
    s.start()
    try:
        k = pm_node(kale_factory, s, postmaster="pm@fb.test")
        k.ctl("user", "add", "gone@fb.test")
        smtp_qid(smtp_send_null(k.port, "gone@fb.test"))
        assert kale_wait(lambda: "a failed double-bounce notice" in k.log_text(), WAIT), \
            k.log_text()[-3000:]
        incoming = os.path.join(k.data, "queue", "incoming")
        assert kale_wait(lambda: not [f for f in os.listdir(incoming) if not f.startswith(".")],
                         WAIT)
    finally:
        s.close()


def smtp_send_null(port, rcpt):
    with SmtpRaw(port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
        return c.data(smtp_msg("a bounce"))
