"""SMTP receive path, the mail log: every decision (accepted, rejected with
its code and reason, delivered) is a row in the store, and `kalectl log
search` filters it by --from, --to, --ip, --action, --since, --limit and
prints a table or --json (operator.md §4)."""
import json

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect, smtp_msg, smtp_qid

# The log is written in batches; the contract sets no delay, so poll generously.
LOG_WAIT = 15.0


def search(k, *args):
    p = k.ctl("log", "search", "--json", *args)
    rows = json.loads(p.stdout)
    assert isinstance(rows, list), p.stdout
    return rows


@pytest.fixture
def logged(kale):
    """A node with a known history: one accepted+delivered message from
    127.0.0.1, one unknown-user and one relay refusal from 127.0.0.2."""
    with SmtpRaw(kale.port) as c:
        qid = smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("logged")))
    with SmtpRaw(kale.port, source="127.0.0.2") as c:
        c.ehlo("evil.test")
        smtp_expect(c.cmd("MAIL FROM:<mallory@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        smtp_expect(c.cmd("RCPT TO:<victim@else.test>"), 554, "5.7.1")
    assert len(kale.wait_messages("alice@example.test", 1)) == 1

    def complete():
        rows = search(kale, "--limit", "1000")
        acts = {(r.get("action"), r.get("to")) for r in rows}
        return rows if {("accepted", "alice@example.test"), ("delivered", "alice@example.test"),
                        ("rejected", "nobody@example.test"),
                        ("rejected", "victim@else.test")} <= acts else None
    rows = kale_wait(complete, LOG_WAIT, 0.25)
    assert rows, "log incomplete after %ss: %s" % (LOG_WAIT, search(kale, "--limit", "1000"))
    kale.qid = qid
    return kale


def one(rows, **kv):
    m = [r for r in rows if all(r.get(k) == v for k, v in kv.items())]
    assert len(m) == 1, "want one row %s in %s" % (kv, json.dumps(rows, indent=1))
    return m[0]


def test_log_rows_for_each_decision(logged):
    rows = search(logged, "--limit", "1000")
    acc = one(rows, action="accepted", to="alice@example.test")
    assert acc["qid"] == logged.qid
    assert acc["from"] == "bob@other.test"
    assert acc["client"] == "127.0.0.1"
    dlv = one(rows, action="delivered", to="alice@example.test")
    assert dlv["qid"] == logged.qid
    rej = one(rows, action="rejected", to="nobody@example.test")
    assert rej["code"] == "550 5.1.1", rej
    assert rej["reason"], rej
    assert rej["client"] == "127.0.0.2" and rej["from"] == "mallory@other.test"
    relay = one(rows, action="rejected", to="victim@else.test")
    assert relay["code"] == "554 5.7.1", relay
    assert relay["reason"], relay


def test_log_filters(logged):
    k = logged
    rows = search(k, "--action", "rejected")
    assert len(rows) >= 2 and all(r["action"] == "rejected" for r in rows), rows
    rows = search(k, "--from", "bob@other.test")
    assert rows and all("bob@other.test" in (r["from"] or "") for r in rows), rows
    assert {r["action"] for r in rows} >= {"accepted", "delivered"}
    rows = search(k, "--to", "nobody@example.test")
    assert len(rows) == 1 and rows[0]["code"] == "550 5.1.1", rows
    rows = search(k, "--ip", "127.0.0.2")
    assert len(rows) >= 2 and all(r["client"] == "127.0.0.2" for r in rows), rows
    rows = search(k, "--ip", "127.0.0.2", "--action", "rejected", "--to", "victim@else.test")
    assert len(rows) == 1 and rows[0]["code"] == "554 5.7.1", rows
    rows = search(k, "--limit", "1")
    assert len(rows) == 1
    all_rows = search(k, "--limit", "1000")
    assert len(all_rows) >= 4
    # newest first
    assert [r["ts"] for r in all_rows] == sorted((r["ts"] for r in all_rows), reverse=True)


def test_log_since(logged):
    k = logged
    n = len(search(k, "--limit", "1000"))
    assert len(search(k, "--since", "1h", "--limit", "1000")) == n
    assert len(search(k, "--since", "2000-01-01", "--limit", "1000")) == n
    assert search(k, "--since", "2099-01-01T00:00") == []


def test_log_table(logged):
    p = logged.ctl("log", "search")
    out = p.stdout
    assert "ACTION" in out.splitlines()[0], out
    assert "alice@example.test" in out and "accepted" in out and "delivered" in out
    assert "550 5.1.1" in out and "rejected" in out


def test_log_bad_usage(kale):
    for args in (["--limit", "0"], ["--limit", "x"], ["--since", "yesterday-ish"],
                 ["--bogus"]):
        p = kale.ctl("log", "search", *args, check=False)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert p.stderr.strip(), args
