"""Gateway behaviour (issue 11): LocalDB users of relay domains (recipients
kept in the gateway for a domain relayed to the internal server: verified at
RCPT, usable for SMTP AUTH, imported in bulk, never delivered locally), and
postmaster for every domain kale accepts mail for."""
import imaplib
import os
import poplib
import smtplib
import ssl

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid
from relaysink import Sink

FAST = "[queue]\nretry = 1s,1s,2s\nmax_age = 60s\n"
WAIT = 30.0


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
