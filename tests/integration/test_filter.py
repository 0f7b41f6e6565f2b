"""Filtering I (issue 13): the check pipeline during the SMTP dialogue,
operator.md §6. Each check against a real DNS server on loopback
(dnsserver.py): pass, fail with the policy's action, error -> 451 unless
--on-error pass, per-domain policies, allow-list bypass, greylisting with a
retry after the delay; authenticated/trusted clients skip the inbound checks;
every decision is a mail-log row."""
import json
import time

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid
from dnsserver import DnsServer
from test_relay import log_rows

# the client of every test is 127.0.0.1
BL = "1.0.0.127"
ZONE = {
    BL + ".bl.test": {"A": ["127.0.0.2"], "TXT": ["listed: see https://bl.test/q?127.0.0.1"]},
    BL + ".weak.test": {"A": ["127.0.0.4"]},
    BL + ".refused.test": {"A": ["127.255.255.254"]},
    "good.client.test": {"A": ["127.0.0.1"]},
    "other.client.test": {"A": ["192.0.2.10"]},
    "1.0.0.127.in-addr.arpa": {"PTR": ["good.client.test"]},
    # SPF (RFC 7208) records of sender domains
    "spf-pass.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "spf-fail.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "spf-soft.test": {"TXT": ["v=spf1 ~all"]},
    "spf-perm.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all", "v=spf1 -all"]},   # two records
    "spf-split.test": {"TXT": [["v=spf1 ip4:192.0.2.1", " ip4:127.0.0.1 -all"]]},
    "spf-helo.test": {"TXT": ["v=spf1 -all"], "A": ["127.0.0.1"]},
}


@pytest.fixture
def dns():
    d = DnsServer(dict(ZONE), servfail=[BL + ".broken.test", "broken.client.test", "spf-temp.test"])
    d.start()
    yield d
    d.close()


@pytest.fixture
def node(kale_factory, dns):
    k = kale_factory(extra_conf="[dns]\nservers = 127.0.0.1:%d\n" % dns.port)
    k.ctl("domain", "add", "other.test", "--local")
    k.ctl("user", "add", "bob@other.test", "--password-stdin", input="bob-secret\n")
    return k


def rcpt(k, to="alice@example.test", sender="sender@remote.test", helo="good.client.test"):
    """One session up to RCPT: the RCPT reply."""
    with SmtpRaw(k.port) as c:
        smtp_expect(c.cmd("EHLO " + helo), 250)
        smtp_expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
        r = c.cmd("RCPT TO:<%s>" % to)
        c.cmd("QUIT")
        return r


def until(k, pred, timeout=5.0, **kw):
    """A policy change is obeyed within 2 s: polls (bounded) until pred(RCPT reply)."""
    last = []

    def ok():
        r = rcpt(k, **kw)
        last[:] = [r]
        return pred(r)
    assert kale_wait(ok, timeout, 0.3), last
    settle()
    return last[0]


def settle():
    """One worker has obeyed a policy change: the others do within a
    second (each looks at the store's version at most once a second)."""
    time.sleep(1.2)


def changed(pred, timeout=5.0):
    assert kale_wait(pred, timeout, 0.3)
    settle()


def rows_with(k, action, to="alice@example.test", timeout=5.0):
    """The mail-log rows for `to` with this action, once there are some (the
    log is written in batches)."""
    got = []

    def ok():
        got[:] = [x for x in log_rows(k, "--to", to) if x["action"] == action]
        return got
    kale_wait(ok, timeout, 0.2)
    return got


def test_default_policy_accepts(node):
    r = rcpt(node)
    smtp_expect(r, 250)


def test_dnsbl_reject_with_code_and_txt(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--action", "reject")
    r = until(node, lambda r: r.code == 554)
    smtp_expect(r, 554, "5.7.1")
    assert "bl.test" in r.text and "127.0.0.2" in r.text and "listed" in r.text, r
    rows = rows_with(node, "rejected")
    assert rows and "dnsbl" in rows[0]["reason"] and "bl.test" in rows[0]["reason"], rows


def test_dnsbl_weights_and_threshold(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "weak.test=1,bl.test=1", "--threshold", "3",
             "--action", "reject")
    # 2 < 3: not enough; weak.test listed alone is logged, not refused
    time.sleep(2.2)
    smtp_expect(rcpt(node), 250)
    node.ctl("filter", "set", "dnsbl", "--zones", "weak.test=2,bl.test=1", "--threshold", "3")
    until(node, lambda r: r.code == 554)


def test_dnsbl_error_codes_are_not_listings(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "refused.test", "--action", "reject")
    time.sleep(2.2)
    smtp_expect(rcpt(node), 250)


def test_dnsbl_error_tempfails_unless_on_error_pass(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "broken.test", "--action", "reject")
    r = until(node, lambda r: r.code == 451)
    smtp_expect(r, 451, "4.7.1")
    node.ctl("filter", "set", "dnsbl", "--on-error", "pass")
    until(node, lambda r: r.code == 250)


def test_dnsbl_tempfail_and_score_actions(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--action", "tempfail")
    r = until(node, lambda r: r.code == 451)
    smtp_expect(r, 451, "4.7.1")
    node.ctl("filter", "set", "dnsbl", "--action", "score", "--score", "20")
    r = until(node, lambda r: r.code == 554)
    assert "score" in r.text, r        # 20 >= the reject threshold 15
    node.ctl("filter", "set", "dnsbl", "--action", "log")
    until(node, lambda r: r.code == 250)
    rows = rows_with(node, "checked")
    assert rows and rows[0]["reason"].startswith("dnsbl: bl.test"), rows


def test_per_domain_policy(node):
    node.ctl("filter", "add", "strict")
    node.ctl("filter", "set", "--policy", "strict", "dnsbl", "--zones", "bl.test",
             "--action", "reject")
    node.ctl("domain", "set", "other.test", "--filter", "strict")
    until(node, lambda r: r.code == 554, to="bob@other.test")
    smtp_expect(rcpt(node), 250)        # example.test keeps "default"


def test_block_and_allow_lists(node):
    node.ctl("list", "add", "block", "sender", "@spam.test")
    changed(lambda: rcpt(node, sender="x@mx.spam.test").code == 554)
    r = rcpt(node, sender="x@spam.test")
    smtp_expect(r, 554, "5.7.1")
    assert "lists" in r.text, r
    smtp_expect(rcpt(node, sender="x@ham.test"), 250)
    node.ctl("list", "add", "block", "client", "127.0.0.0/8")
    changed(lambda: rcpt(node, sender="x@ham.test").code == 554)
    # an allow hit wins, and skips the other checks (dnsbl here)
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--action", "reject")
    node.ctl("list", "add", "allow", "recipient", "alice@example.test")
    changed(lambda: rcpt(node, sender="x@spam.test").code == 250)
    # bob has no allow entry: the client block list applies
    smtp_expect(rcpt(node, to="bob@other.test", sender="x@ham.test"), 554)


def test_helo_checks(node):
    node.ctl("filter", "set", "helo", "--action", "reject")
    changed(lambda: rcpt(node, helo="localhost").code == 554)
    r = rcpt(node, helo="localhost")
    assert "invalid HELO" in r.text, r
    r = rcpt(node, helo="mx.kale.test")
    smtp_expect(r, 554, "5.7.1")
    assert "claims to be us" in r.text, r
    r = rcpt(node, helo="[192.0.2.1]")
    assert r.code == 554 and "not the client" in r.text, r
    smtp_expect(rcpt(node, helo="[127.0.0.1]"), 250)
    smtp_expect(rcpt(node, helo="good.client.test"), 250)
    r = rcpt(node, helo="nowhere.client.test")
    assert r.code == 554 and "does not resolve" in r.text, r
    smtp_expect(rcpt(node, helo="broken.client.test"), 451, "4.7.1")


def test_rdns_and_fcrdns(node, dns):
    node.ctl("filter", "set", "rdns", "--action", "reject")
    node.ctl("filter", "set", "fcrdns", "--action", "reject")
    time.sleep(2.2)
    smtp_expect(rcpt(node), 250)        # 127.0.0.1 -> good.client.test -> 127.0.0.1
    dns.zone["1.0.0.127.in-addr.arpa"] = {"PTR": ["other.client.test"]}
    r = rcpt(node)
    smtp_expect(r, 554, "5.7.1")
    assert "fcrdns" in r.text, r
    del dns.zone["1.0.0.127.in-addr.arpa"]
    r = rcpt(node)
    assert r.code == 554 and "rdns" in r.text and "no PTR" in r.text, r


def test_greylist_then_retry(node):
    node.ctl("filter", "set", "greylist", "--action", "tempfail", "--delay", "4")
    r = until(node, lambda r: r.code == 451)
    t0 = time.time()            # the triplet was first seen at or before t0
    smtp_expect(r, 451, "4.7.1")
    assert "greylist" in r.text, r
    rows = rows_with(node, "greylisted")
    assert rows, log_rows(node)
    p = node.ctl("greylist", "list", "--json")
    entries = json.loads(p.stdout)
    assert any(e["rcpt"] == "alice@example.test" and e["net"] == "127.0.0.0/24" for e in entries), entries
    # too early: still 451; after the delay: 250, and the message goes through
    if time.time() < t0 + 3.5:
        smtp_expect(rcpt(node), 451)
    time.sleep(max(0.0, t0 + 4.5 - time.time()))
    with SmtpRaw(node.port) as c:
        smtp_expect(c.cmd("EHLO good.client.test"), 250)
        smtp_expect(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250)
        smtp_qid(c.data(smtp_msg("after greylisting")))
    assert node.wait_messages("alice@example.test", 1)
    # another sender is a new triplet
    smtp_expect(rcpt(node, sender="new@remote.test"), 451)
    # a client network that passed --auto-allow times passes without triplets
    node.ctl("filter", "set", "greylist", "--auto-allow", "1")
    until(node, lambda r: r.code == 250, sender="other@remote.test")
    node.ctl("greylist", "flush")
    assert json.loads(node.ctl("greylist", "list", "--json").stdout) == []


def test_authenticated_and_trusted_skip_inbound_checks(node):
    node.ctl("list", "add", "block", "client", "127.0.0.1")
    changed(lambda: rcpt(node).code == 554)
    node.ctl("network", "add", "127.0.0.0/8")
    changed(lambda: rcpt(node).code == 250)


def test_spf_default_actions(node):
    """Default policy: -all refused with 5.7.23, ~all and a broken record
    only logged, DNS trouble 451; pass and none go through."""
    smtp_expect(rcpt(node, sender="a@spf-pass.test"), 250)
    smtp_expect(rcpt(node, sender="a@nospf.test"), 250)           # NXDOMAIN: none
    r = rcpt(node, sender="a@spf-fail.test")
    smtp_expect(r, 554, "5.7.23")
    assert "spf" in r.text, r
    smtp_expect(rcpt(node, sender="a@spf-soft.test"), 250)
    smtp_expect(rcpt(node, sender="a@spf-perm.test"), 250)
    smtp_expect(rcpt(node, sender="a@spf-temp.test"), 451, "4.7.1")
    # the character-strings of one record are joined
    smtp_expect(rcpt(node, sender="a@spf-split.test"), 250)
    # the null sender: the HELO identity
    smtp_expect(rcpt(node, sender="", helo="spf-helo.test"), 554, "5.7.23")
    rows = rows_with(node, "checked")
    assert any(r["reason"].startswith("spf") and "softfail" in r["reason"] or
               r["reason"].startswith("spf") for r in rows), rows
    rows = rows_with(node, "rejected")
    assert any((r["reason"] or "").startswith("spf") for r in rows), rows


def test_spf_actions_per_result(node):
    node.ctl("filter", "set", "spf", "--permerror", "reject", "--softfail", "tempfail")
    r = until(node, lambda r: r.code == 554, sender="a@spf-perm.test")
    smtp_expect(r, 554, "5.7.24")
    # each smtpd worker reloads within 2 s: every check after a change polls
    smtp_expect(until(node, lambda r: r.code == 451, sender="a@spf-soft.test"), 451, "4.7.1")
    node.ctl("filter", "set", "spf", "--on-error", "pass")
    until(node, lambda r: r.code == 250, sender="a@spf-temp.test")
    # --action sets every result's action
    node.ctl("filter", "set", "spf", "--action", "log")
    until(node, lambda r: r.code == 250, sender="a@spf-fail.test")
    until(node, lambda r: r.code == 250, sender="a@spf-perm.test")
    node.ctl("filter", "set", "spf", "--action", "off")
    out = node.ctl("filter", "show", "--json").stdout
    spf = [c for c in json.loads(out)["checks"] if c["name"] == "spf"][0]
    assert spf["action"] == "off" and spf["options"]["fail"] == "log", spf
    # bad values are refused with usage
    p = node.ctl("filter", "set", "spf", "--fail", "explode", check=False)
    assert p.returncode == 2 and "--fail takes" in p.stderr, p.stderr


def policy_test(k, *args):
    p = k.ctl("policy", "test", "--json", *args)
    return json.loads(p.stdout)


def test_policy_test_matches_the_session(node):
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--action", "reject")
    real = until(node, lambda r: r.code == 554)
    j = policy_test(node, "--ip", "127.0.0.1", "--helo", "good.client.test",
                    "--from", "sender@remote.test", "--to", "alice@example.test")
    assert j["verdict"] == "reject", j
    assert j["reply"] == "%d %s" % (real.code, real.text), (j, real)
    dnsbl = [s for s in j["steps"] if s["check"] == "dnsbl"]
    assert dnsbl and dnsbl[0]["phase"] == "connect" and dnsbl[0]["result"] == "fail", j
    # SPF: its RFC 7208 result word
    j = policy_test(node, "--ip", "192.0.2.7", "--from", "a@spf-fail.test", "--to",
                    "alice@example.test")
    spf = [s for s in j["steps"] if s["check"] == "spf"]
    assert spf and spf[0]["result"] == "pass", j          # 192.0.2.0/24 is permitted
    j = policy_test(node, "--ip", "198.51.100.1", "--from", "a@spf-fail.test", "--to",
                    "alice@example.test")
    assert j["verdict"] == "reject" and j["reply"].startswith("554 5.7.23"), j
    assert [s for s in j["steps"] if s["check"] == "spf"][0]["result"] == "fail", j
    # recipients: unknown user, relay refused, accepted with its route
    j = policy_test(node, "--ip", "198.51.100.1", "--from", "a@x.test", "--to", "nobody@example.test")
    assert j["verdict"] == "reject" and j["reply"].startswith("550 5.1.1"), j
    j = policy_test(node, "--ip", "198.51.100.1", "--from", "a@x.test", "--to", "x@elsewhere.test")
    assert j["reply"] == "554 5.7.1 Relay access denied", j
    j = policy_test(node, "--ip", "198.51.100.1", "--from", "<>", "--to", "bob@other.test")
    assert j["verdict"] == "accept" and j["reply"].startswith("250"), j
    assert "bob@other.test" in j["route"], j
    # bad arguments: usage, exit 2
    p = node.ctl("policy", "test", "--ip", "not-an-ip", "--from", "a@b.test", "--to", "c@d.test",
                 check=False)
    assert p.returncode == 2 and "not an IP address" in p.stderr, p.stderr


def test_policy_test_writes_no_greylist_state(node):
    node.ctl("filter", "set", "greylist", "--action", "tempfail", "--delay", "60")
    j = policy_test(node, "--ip", "198.51.100.1", "--from", "a@x.test", "--to", "alice@example.test")
    assert j["verdict"] == "tempfail" and j["reply"].startswith("451 4.7.1"), j
    assert json.loads(node.ctl("greylist", "list", "--json").stdout) == []
    assert node.ctl("policy", "test", "--ip", "198.51.100.1", "--from", "a@x.test", "--to",
                    "alice@example.test").stdout.count("greylist") >= 1


def test_rate_messages_and_recipients(node):
    node.ctl("filter", "set", "rate", "--messages", "3", "--per", "1h")
    settle()
    # the dry run counts nothing
    for _ in range(4):
        p = node.ctl("policy", "test", "--ip", "127.0.0.1", "--from", "s@remote.test", "--to",
                     "alice@example.test", "--json")
        assert json.loads(p.stdout)["verdict"] == "accept", p.stdout
    codes = [rcpt(node).code for _ in range(4)]
    assert codes == [250, 250, 250, 451], codes
    r = rcpt(node)
    smtp_expect(r, 451, "4.7.1")
    assert "rate" in r.text and "limit 3" in r.text, r
    assert rows_with(node, "rejected")
    # a trusted client (outbound mail) is counted too, and refused the same
    node.ctl("network", "add", "127.0.0.0/8")
    changed(lambda: "rate" in rcpt(node).text)
    # recipients per window: the 3rd recipient of a transaction is refused
    node.ctl("network", "del", "127.0.0.0/8")
    node.ctl("filter", "set", "rate", "--messages", "0", "--recipients", "2", "--per", "10m")
    node.ctl("user", "add", "carol@example.test", "--password-stdin", input="c-secret\n")
    node.ctl("user", "add", "dave@example.test", "--password-stdin", input="d-secret\n")
    settle()

    def rcpts():
        with SmtpRaw(node.port) as c:
            smtp_expect(c.cmd("EHLO good.client.test"), 250)
            smtp_expect(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
            got = [c.cmd("RCPT TO:<%s@example.test>" % u).code for u in ("alice", "carol", "dave")]
            c.cmd("QUIT")
            return got
    # the counters of the old window (messages) go on; recipients are over
    # their limit of 2 once more than 2 were counted in the window
    got = rcpts()
    assert got[-1] == 451, got


def test_dnsbl_at_connect(node):
    """--at connect: a listed client gets 554 instead of 220 (RFC 5321 3.1),
    every command but QUIT a 503; a zone that fails is 421 and close; an
    allow-listed client address is greeted."""
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--at", "connect")

    def greeting():
        with SmtpRaw(node.port) as c:
            g = c.banner
            if g.code == 421:
                return g, None, None
            r = c.cmd("EHLO good.client.test")
            q = c.cmd("QUIT")
            return g, r, q
    assert kale_wait(lambda: greeting()[0].code == 554, 5.0, 0.3)
    settle()
    g, r, q = greeting()
    smtp_expect(g, 554, "5.7.1")
    assert "bl.test" in g.text, g
    smtp_expect(r, 503)
    smtp_expect(q, 221)
    # the dry run decides the connection first too, with the same reply
    p = node.ctl("policy", "test", "--ip", "127.0.0.1", "--from", "s@remote.test", "--to",
                 "alice@example.test", "--json")
    out = json.loads(p.stdout)
    assert out["verdict"] == "reject" and out["reply"] == "554 " + g.lines[-1], (out, g)
    assert [s["phase"] for s in out["steps"] if s["check"] == "dnsbl"] == ["connect"], out
    rows = [x for x in log_rows(node) if x["action"] == "rejected" and "dnsbl" in x["reason"]]
    assert rows and not rows[0].get("rcpt"), rows
    # the client allow list is asked at connect too
    node.ctl("list", "add", "allow", "client", "127.0.0.1")
    assert kale_wait(lambda: greeting()[0].code == 220, 5.0, 0.3)
    settle()
    node.ctl("list", "del", "allow", "client", "127.0.0.1")
    # a zone that cannot answer: 421, and the connection is closed
    node.ctl("filter", "set", "dnsbl", "--zones", "broken.test")
    assert kale_wait(lambda: greeting()[0].code == 421, 20.0, 0.5)
    settle()
    # back to RCPT: greeted, refused at RCPT
    node.ctl("filter", "set", "dnsbl", "--zones", "bl.test", "--at", "rcpt")
    assert kale_wait(lambda: greeting()[0].code == 220, 5.0, 0.3)
    settle()
    smtp_expect(rcpt(node), 554, "5.7.1")
