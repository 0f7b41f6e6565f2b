"""kalectl trace QID [--json] (operator.md §9, the JSON shape of §6): every
decision about one message in order, from the mail log: the session's
connect, the checks that failed without deciding, each RCPT (refused and
taken), queued, each delivery attempt, the outcome. Rows of another message
of the same session stay out. An unknown QID is exit 1, bad arguments exit 2."""
import json
import re

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid
from dnsserver import DnsServer
from test_filter import ZONE

WAIT = 15.0
KEYS = {"phase", "check", "result", "reason", "time", "node"}


@pytest.fixture
def node(kale_factory):
    d = DnsServer(dict(ZONE))
    d.start()
    k = kale_factory(extra_conf="[dns]\nservers = 127.0.0.1:%d\n" % d.port, start=False)
    # HELO with our own name fails the helo check; scored, not refused
    k.ctl("filter", "set", "helo", "--action", "score", "--score", "1")
    k.start()
    yield k
    d.close()


def trace(k, qid):
    p = k.ctl("trace", qid, "--json")
    return json.loads(p.stdout)


def trace_until(k, qid, pred):
    """The trace once pred(trace) holds (the log is written in batches)."""
    last = []

    def ok():
        p = k.ctl("trace", qid, "--json", check=False)
        if p.returncode != 0:
            return None
        last[:] = [json.loads(p.stdout)]
        return pred(last[0])
    assert kale_wait(ok, WAIT, 0.25), last
    return last[0]


def delivered(j):
    return j["steps"] and j["steps"][-1]["result"] == "delivered"


def session(k):
    """One session, two messages: the first with a refused and a taken
    RCPT, the second with one taken RCPT. Returns both queue ids."""
    with SmtpRaw(k.port) as c:
        smtp_expect(c.cmd("EHLO mx.kale.test"), 250)
        smtp_expect(c.cmd("MAIL FROM:<sender@remote.test>"), 250)
        smtp_expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250)
        q1 = smtp_qid(c.data(smtp_msg("one", sender="sender@remote.test")))
        smtp_expect(c.cmd("MAIL FROM:<second@remote.test>"), 250)
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250)
        q2 = smtp_qid(c.data(smtp_msg("two", sender="second@remote.test")))
        c.cmd("QUIT")
    assert len(k.wait_messages("alice@example.test", 2)) == 2
    return q1, q2


def test_trace_json_in_order(node):
    q1, q2 = session(node)
    j = trace_until(node, q1, delivered)
    assert set(j) >= {"verdict", "reply", "steps"}, j
    assert j["verdict"] == "accept", j
    assert j["reply"] == "250 2.0.0 Ok: queued as %s" % q1, j
    steps = j["steps"]
    for s in steps:
        assert KEYS <= set(s), s
        assert s["node"] == "mx.kale.test", s
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", s["time"]), s
    got = [(s["phase"], s["check"], s["result"], s.get("rcpt")) for s in steps]
    want = [
        ("connect", "connect", "pass", None),
        ("rcpt", "rcpt", "fail", "nobody@example.test"),
        ("helo", "helo", "fail", "alice@example.test"),
        ("rcpt", "rcpt", "pass", "alice@example.test"),
        ("queue", "queued", "pass", "alice@example.test"),
        ("delivery", "delivery", "pass", "alice@example.test"),
        ("outcome", "queue", "delivered", None),
    ]
    assert got == want, json.dumps(steps, indent=1)
    assert "127.0.0.1" in steps[0]["reason"], steps[0]
    assert steps[1]["code"] == "550 5.1.1" and "unknown" in steps[1]["reason"].lower(), steps[1]
    assert "claims to be us" in steps[2]["reason"], steps[2]
    assert steps[3]["code"] == "250 2.1.5", steps[3]
    assert q1 in steps[4]["reason"], steps[4]
    assert steps[5]["code"].startswith("250"), steps[5]
    assert "1 delivered" in steps[6]["reason"], steps[6]
    times = [s["time"] for s in steps]
    assert times == sorted(times), times

    # the second message of the session: its own RCPT, the session's connect,
    # none of the first message's rows
    j2 = trace_until(node, q2, delivered)
    got2 = [(s["phase"], s["check"], s["result"], s.get("rcpt")) for s in j2["steps"]]
    assert got2 == [
        ("connect", "connect", "pass", None),
        ("helo", "helo", "fail", "alice@example.test"),
        ("rcpt", "rcpt", "pass", "alice@example.test"),
        ("queue", "queued", "pass", "alice@example.test"),
        ("delivery", "delivery", "pass", "alice@example.test"),
        ("outcome", "queue", "delivered", None),
    ], json.dumps(j2["steps"], indent=1)
    assert j2["reply"] == "250 2.0.0 Ok: queued as %s" % q2, j2
    assert steps[0]["time"] == j2["steps"][0]["time"]


def test_trace_human(node):
    q1, _ = session(node)
    trace_until(node, q1, delivered)
    out = node.ctl("trace", q1).stdout
    lines = out.splitlines()
    assert lines[0] == "qid: %s" % q1, out
    assert lines[1].split() == ["TIME", "NODE", "PHASE", "CHECK", "RESULT", "REASON"], out
    body = "\n".join(lines[2:])
    assert body.index("connect") < body.index("nobody@example.test") < body.index("claims to be us")
    assert body.index("claims to be us") < body.index("queued as") < body.index("delivered")
    assert "verdict: accept" in lines, out
    assert "reply: 250 2.0.0 Ok: queued as %s" % q1 in lines, out


def test_trace_unknown_qid_and_bad_arguments(node):
    p = node.ctl("trace", "0123456789ABCDEF01234567", check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "no message 0123456789ABCDEF01234567 in the mail log" in p.stderr, p.stderr
    assert p.stdout == ""
    for args in ([], ["not-a-qid"], ["0123456789abcdef01234567"],
                 ["0123456789ABCDEF01234567", "extra"],
                 ["0123456789ABCDEF01234567", "--bogus"],
                 ["0123456789ABCDEF01234567", "--json=yes"]):
        p = node.ctl("trace", *args, check=False)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "usage:" in p.stderr, (args, p.stderr)
