"""LDAP routes (issue 5): `domain add DOMAIN --relay ldap:PROFILE` takes the
next hop of each recipient from its directory entry (the profile's
--route-attribute, mailHost by default), against a real slapd and a real
next hop on loopback. A recipient the directory does not know bounces; one
whose entry has no usable route is deferred, never bounced."""
from conftest import SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid, smtp_send
from fixtures_db import (LDAP_ADMIN, LDAP_ADMIN_PW, LDAP_READER, LDAP_READER_PW, SUFFIX,  # noqa: F401
                         _run, slapd)
from relaysink import Sink
from test_relay import FAST, WAIT, log_rows, wait_log

import pytest


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.close()


def test_ldap_route_per_recipient(kale_factory, slapd, sink):  # noqa: F811
    slapd.ensure()
    tag = "p%d" % sink.port
    entries = [
        "dn: uid=routed-%s,ou=people,%s\nobjectClass: inetOrgPerson\n"
        "objectClass: inetLocalMailRecipient\nuid: routed-%s\ncn: R\nsn: R\n"
        "mail: routed-%s@route.test\nmailHost: 127.0.0.1:%d\n" % (tag, SUFFIX, tag, tag, sink.port),
        "dn: uid=noroute-%s,ou=people,%s\nobjectClass: inetOrgPerson\nuid: noroute-%s\n"
        "cn: N\nsn: N\nmail: noroute-%s@route.test\n" % (tag, SUFFIX, tag, tag),
    ]
    _run(["ldapadd", "-x", "-H", slapd.url(), "-D", LDAP_ADMIN, "-w", LDAP_ADMIN_PW],
         input="\n".join(entries))
    k = kale_factory(start=False, extra_conf=FAST)
    k.ctl("verify", "add", "routes", "--type", "ldap", "--url", slapd.url(), "--base", SUFFIX,
          "--filter", "(mail=%m)", "--bind-dn", LDAP_READER, "--bind-password-stdin",
          input=LDAP_READER_PW + "\n")
    # without verification at RCPT, to see what qmgr does with each
    k.ctl("domain", "add", "route.test", "--relay", "ldap:routes", "--verify", "none")
    k.start()
    routed = "routed-%s@route.test" % tag
    noroute = "noroute-%s@route.test" % tag
    unknown = "unknown-%s@route.test" % tag
    smtp_qid(smtp_send(k.port, "bob@other.test", [routed, noroute, unknown],
                       smtp_msg("ldap-route", to=routed)))
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    tx = sink.txs[0]
    assert tx.rcpts == [routed], tx.rcpts
    assert b"Subject: ldap-route" in tx.data
    rows = wait_log(k, routed, "delivered")
    assert any(r["action"] == "delivered" for r in rows)
    rows = wait_log(k, noroute, "deferred")
    assert all(r["action"] != "bounced" for r in rows), rows
    assert any((r.get("code") or "").startswith("451 4.4.4") for r in rows), rows
    rows = wait_log(k, unknown, "bounced")
    assert any((r.get("code") or "").startswith("550 5.1.1") for r in rows), rows


def test_ldap_routed_domain_verifies_at_rcpt_by_default(kale_factory, slapd, sink):  # noqa: F811
    """A domain routed by ldap:PROFILE asks PROFILE at RCPT unless --verify
    says otherwise: the unknown recipient is refused at once, not bounced
    later (backscatter)."""
    slapd.ensure()
    tag = "v%d" % sink.port
    _run(["ldapadd", "-x", "-H", slapd.url(), "-D", LDAP_ADMIN, "-w", LDAP_ADMIN_PW],
         input="dn: uid=known-%s,ou=people,%s\nobjectClass: inetOrgPerson\n"
               "objectClass: inetLocalMailRecipient\nuid: known-%s\ncn: K\nsn: K\n"
               "mail: known-%s@rt.test\nmailHost: 127.0.0.1:%d\n" % (tag, SUFFIX, tag, tag, sink.port))
    k = kale_factory(start=False, extra_conf=FAST)
    k.ctl("verify", "add", "routes", "--type", "ldap", "--url", slapd.url(), "--base", SUFFIX,
          "--filter", "(mail=%m)", "--bind-dn", LDAP_READER, "--bind-password-stdin",
          input=LDAP_READER_PW + "\n")
    k.ctl("domain", "add", "rt.test", "--relay", "ldap:routes")
    assert k.ctl("domain", "list").stdout.splitlines()[-1].split()[-2] == "routes"
    k.start()
    known = "known-%s@rt.test" % tag
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<nobody-%s@rt.test>" % tag), 550, "5.1.1")
        smtp_expect(c.cmd("RCPT TO:<%s>" % known), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("verified", to=known)))
    assert kale_wait(lambda: len(sink.txs) >= 1, WAIT), k.log_text()[-3000:]
    assert sink.delivered() == [known]


class SilentDirectory:
    """A loopback 'directory' that accepts connections, reads what it is
    sent and never answers, until release() closes every connection."""

    def __init__(self):
        import socket
        import threading
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.conns = []
        self.got = 0              # bytes received (the bind, then the search)
        self.stop = False
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        import select
        import socket
        while not self.stop:
            try:
                s, _ = self.srv.accept()
                with self.lock:
                    self.conns.append(s)
            except socket.timeout:
                pass
            except OSError:
                return
            with self.lock:
                conns = list(self.conns)
            r = select.select(conns, [], [], 0)[0] if conns else []
            for s in r:
                try:
                    n = len(s.recv(4096))
                except OSError:
                    n = 0
                with self.lock:
                    self.got += n

    def release(self):
        with self.lock:
            for s in self.conns:
                s.close()
            self.conns = []

    def close(self):
        self.stop = True
        self.release()
        self.srv.close()
        self.t.join(2)


def test_slow_directory_does_not_delay_other_mail(kale_factory, sink):
    """qmgr asks the directory off its event loop: while an ldap:PROFILE
    lookup hangs, the rest of the queue is still delivered; the waiting
    recipient is decided when the answer comes (here: the directory goes
    away, so it is deferred 451 4.4.3, never bounced)."""
    d = SilentDirectory()
    try:
        k = kale_factory(start=False, extra_conf=FAST)
        k.ctl("verify", "add", "slow", "--type", "ldap", "--timeout", "60",
              "--url", "ldap://127.0.0.1:%d" % d.port, "--base", "dc=x", "--filter", "(mail=%m)")
        k.ctl("domain", "add", "slow.test", "--relay", "ldap:slow", "--verify", "none")
        k.ctl("domain", "add", "fast.test", "--relay", "127.0.0.1:%d" % sink.port)
        k.start()
        waiting = "waiting@slow.test"
        smtp_qid(smtp_send(k.port, "bob@other.test", [waiting], smtp_msg("slow", to=waiting)))
        # qmgr has asked: the directory holds the connection and says nothing
        assert kale_wait(lambda: d.got > 0, WAIT), k.log_text()[-3000:]
        smtp_qid(smtp_send(k.port, "bob@other.test", ["other@fast.test"],
                           smtp_msg("fast", to="other@fast.test")))
        assert kale_wait(lambda: len(sink.txs) >= 1, 20.0), k.log_text()[-3000:]
        assert sink.delivered() == ["other@fast.test"]
        # ... while the lookup still hangs: no decision for the waiting one yet
        assert d.conns, "the directory connection was dropped"
        decided = [r for r in log_rows(k, "--to", waiting)
                   if r["action"] in ("deferred", "bounced", "delivered")]
        assert not decided, decided
        d.release()
        rows = wait_log(k, waiting, "deferred")
        assert all(r["action"] != "bounced" for r in rows), rows
        assert any((r.get("code") or "").startswith("451 4.4.3") for r in rows), rows
    finally:
        d.close()
