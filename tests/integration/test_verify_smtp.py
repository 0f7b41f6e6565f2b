"""Recipient verification at RCPT (issue 5), the smtpd side: a domain's
profile answers found -> 250, missing -> 550 5.1.1 with the profile in the
mail log, backend down -> 451 4.4.3 (never 5xx), and back up -> 250 again
(smtpd's pooled connections reconnect). Real MariaDB and slapd servers."""
import json

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect
from fixtures_db import mariadb, slapd, LDAP_READER, LDAP_READER_PW, SUFFIX  # noqa: F401

LOG_WAIT = 15.0
QUERY = "select email from mailusers where email='%m' and active=1"


def rcpt_codes(k, rcpts):
    """One session, one MAIL, a RCPT per address; returns the replies."""
    out = []
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<sender@other.test>"), 250, "2.1.0")
        for r in rcpts:
            out.append(c.cmd("RCPT TO:<%s>" % r))
        c.cmd("QUIT")
    return out


def log_rows(k, to):
    p = k.ctl("log", "search", "--json", "--to", to, "--limit", "100")
    return json.loads(p.stdout)


def wait_log(k, to, **want):
    def ok():
        rows = log_rows(k, to)
        m = [r for r in rows if r.get("to") == to and
             all(r.get(key) == v for key, v in want.items())]
        return m or None
    rows = kale_wait(ok, LOG_WAIT, 0.25)
    assert rows, "no log row %s for %s: %s" % (want, to, log_rows(k, to))
    return rows[0]


@pytest.fixture
def node(kale_factory):
    return kale_factory(start=False)


def test_mysql_profile_on_relay_domain(node, mariadb):
    mariadb.ensure()
    node.ctl("verify", "add", "sql", "--type", "mysql", "--url", mariadb.url(), "--query", QUERY)
    node.ctl("domain", "add", "corp.test", "--relay", "127.0.0.1:2", "--verify", "sql")
    node.start()
    r = rcpt_codes(node, ["alice@corp.test", "o'brien@corp.test", "nobody@corp.test",
                          "x'or'1'='1@corp.test", "gone@corp.test"])
    smtp_expect(r[0], 250)
    smtp_expect(r[1], 250)
    smtp_expect(r[2], 550, "5.1.1")
    smtp_expect(r[3], 550, "5.1.1")
    smtp_expect(r[4], 550, "5.1.1")
    row = wait_log(node, "nobody@corp.test", action="rejected")
    assert row.get("code") == "550 5.1.1" and row.get("profile") == "sql", row


def test_mysql_down_is_451_then_back(node, mariadb):
    mariadb.ensure()
    node.ctl("verify", "add", "sql", "--type", "mysql", "--url", mariadb.url(), "--query", QUERY)
    node.ctl("domain", "add", "corp.test", "--relay", "127.0.0.1:2", "--verify", "sql")
    node.start()
    smtp_expect(rcpt_codes(node, ["alice@corp.test"])[0], 250)
    mariadb.stop()
    try:
        r = rcpt_codes(node, ["bob@corp.test", "nobody@corp.test"])
        smtp_expect(r[0], 451, "4.4.3")
        smtp_expect(r[1], 451, "4.4.3")
        row = wait_log(node, "nobody@corp.test", action="rejected")
        assert row.get("code") == "451 4.4.3" and row.get("profile") == "sql", row
    finally:
        mariadb.start()
    r = rcpt_codes(node, ["bob@corp.test", "nobody@corp.test"])
    smtp_expect(r[0], 250)
    smtp_expect(r[1], 550, "5.1.1")


def test_mysql_then_localdb_on_local_domain(node, mariadb):
    """The seed case: MySQL first, then the local database."""
    mariadb.ensure()
    node.ctl("verify", "add", "local", "--type", "localdb")
    node.ctl("verify", "add", "seed", "--type", "mysql", "--url", mariadb.url(), "--query", QUERY,
             "--fallback", "local", "--mode", "cache")
    node.ctl("domain", "set", "example.test", "--verify", "seed")
    node.start()
    r = rcpt_codes(node, ["alice@example.test", "nobody@example.test", "nobody@example.test"])
    smtp_expect(r[0], 250)
    smtp_expect(r[1], 550, "5.1.1")
    smtp_expect(r[2], 550, "5.1.1")
    row = wait_log(node, "nobody@example.test", action="rejected")
    assert row.get("profile") == "local", row


def test_ldap_profile_on_relay_domain(node, slapd):
    slapd.ensure()
    node.ctl("verify", "add", "dir", "--type", "ldap", "--url", slapd.url(), "--base", SUFFIX,
             "--filter", "(|(mail=%m)(proxyAddresses=smtp:%m))", "--bind-dn", LDAP_READER,
             "--bind-password-stdin", input=LDAP_READER_PW + "\n")
    node.ctl("domain", "add", "corp.test", "--relay", "127.0.0.1:2", "--verify", "dir")
    node.start()
    r = rcpt_codes(node, ["alice@corp.test", "c.smith@corp.test", "nobody@corp.test",
                          "*@corp.test", "a)(|(objectClass=*)@corp.test"])
    smtp_expect(r[0], 250)
    smtp_expect(r[1], 250)
    for x in r[2:]:
        assert x.code in (550, 501, 553), x
    slapd.stop()
    try:
        smtp_expect(rcpt_codes(node, ["alice@corp.test"])[0], 451, "4.4.3")
    finally:
        slapd.start()
    smtp_expect(rcpt_codes(node, ["alice@corp.test"])[0], 250)
