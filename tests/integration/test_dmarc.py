"""The end of DATA (issue 13, operator.md §6): DKIM verification of inbound
mail in the daemon, DMARC over libopendmarc with the SPF and DKIM results,
one Authentication-Results field on top (RFC 8601), forged ones in our name
removed, the published p= / pct= obeyed (reject is 550 5.7.26, quarantine is
tagged until the quarantine exists), DNS trouble a 451 unless --on-error pass;
outbound mail of authenticated users DKIM-signed with the sender domain's key.
Messages are signed and verified by an independent implementation, Debian's
dkimpy; the DNS is a loopback server (dnsserver.py)."""
import base64
import json
import smtplib
import ssl
import struct
import time

import dkim
import nacl.signing
import pytest

from conftest import SmtpRaw, smtp_expect
from dnsserver import DnsServer
from test_dkim import rsa_keypair
from test_relay import log_rows

HOST = b"mx.kale.test"


@pytest.fixture(scope="module")
def keys():
    sk = nacl.signing.SigningKey.generate()
    return {"rsa": rsa_keypair(),
            "ed": (base64.b64encode(bytes(sk)),
                   "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(sk.verify_key)).decode())}


def zone_of(keys):
    z = {}
    for dom, rec in (("signer.test", "v=DMARC1; p=reject"),
                     ("quar.test", "v=DMARC1; p=quarantine"),
                     ("mon.test", "v=DMARC1; p=none"),
                     ("sample.test", "v=DMARC1; p=reject; pct=0"),
                     ("org.test", "v=DMARC1; p=reject; sp=reject")):
        z["_dmarc." + dom] = {"TXT": [rec]}
        z["s1._domainkey." + dom] = {"TXT": [keys["rsa"][1]]}
        z["e1._domainkey." + dom] = {"TXT": [keys["ed"][1]]}
    z["s1._domainkey.nodmarc.test"] = {"TXT": [keys["rsa"][1]]}
    z["s1._domainkey.sub.org.test"] = {"TXT": [keys["rsa"][1]]}
    return z


@pytest.fixture
def dns(keys):
    d = DnsServer(zone_of(keys), servfail=["_dmarc.broken.test"])
    d.start()
    yield d
    d.close()


@pytest.fixture
def node(kale_factory, dns):
    return kale_factory(extra_conf="[dns]\nservers = 127.0.0.1:%d\n" % dns.port,
                        listeners=("smtp", "submission"),
                        users=("alice@example.test", "bob@example.test"))


def message(frm, subject="figures", body=b"The figures are attached.\r\n", extra=b""):
    return (extra + b"From: Alice <" + frm.encode() + b">\r\n"
            b"To: alice@example.test\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
            b"Message-ID: <" + subject.encode() + b"@x.test>\r\n"
            b"\r\n" + body)


def signed(keys, frm, selector=b"s1", kind="rsa", **kw):
    msg = message(frm, **kw)
    dom = frm.split("@")[1].encode()
    if kind == "rsa":
        sig = dkim.sign(msg, selector, dom, keys["rsa"][0],
                        include_headers=[b"from", b"to", b"subject", b"date"])
    else:
        sig = dkim.sign(msg, b"e1", dom, keys["ed"][0], signature_algorithm=b"ed25519-sha256",
                        include_headers=[b"from", b"to", b"subject", b"date"])
    return sig + msg


def send(node, msg, sender="alice@remote.test"):
    with SmtpRaw(node.port) as c:
        r = c.mail(sender, ["alice@example.test"], msg)
        c.cmd("QUIT")
    return r


def delivered(node, n=1):
    msgs = node.wait_messages("alice@example.test", n)
    assert len(msgs) >= n, msgs
    return msgs[n - 1]


def top(msg):
    """The message as queued: without the Return-Path: and Delivered-To:
    that local delivery puts on top."""
    while msg.startswith((b"Return-Path:", b"Delivered-To:")):
        msg = msg.split(b"\n", 1)[1]
    return msg


def ar_of(msg):
    """The Authentication-Results field kale put on top (unfolded)."""
    msg = top(msg)
    assert msg.startswith(b"Authentication-Results: " + HOST + b";"), msg[:300]
    head = msg.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\n")
    field = [lines[0]]
    for l in lines[1:]:
        if l[:1] in (b" ", b"\t"):
            field.append(l.strip())
        else:
            break
    return b" ".join(field).decode()


def test_dkim_pass_aligned_dmarc_pass(node, keys):
    r = send(node, signed(keys, "alice@signer.test"))
    smtp_expect(r, 250)
    ar = ar_of(delivered(node))
    assert "dkim=pass" in ar and "header.d=signer.test" in ar and "header.s=s1" in ar, ar
    assert "dmarc=pass header.from=signer.test" in ar, ar
    assert "spf=none smtp.mailfrom=alice@remote.test" in ar, ar


def test_ed25519_passes(node, keys):
    smtp_expect(send(node, signed(keys, "alice@signer.test", kind="ed")), 250)
    ar = ar_of(delivered(node))
    assert "dkim=pass" in ar and "header.a=ed25519-sha256" in ar and "dmarc=pass" in ar, ar


def test_tampered_body_fails_and_dmarc_rejects(node, keys):
    msg = signed(keys, "alice@signer.test").replace(b"attached", b"attacked")
    r = send(node, msg)
    smtp_expect(r, 550, "5.7.26")
    assert "dmarc" in r.text, r
    assert node.messages("alice@example.test") == []
    rows = []
    for _ in range(50):
        rows = [x for x in log_rows(node) if x["action"] == "rejected" and "dmarc" in
                (x.get("reason") or "")]
        if rows:
            break
        time.sleep(0.1)
    assert rows, log_rows(node)


def test_unsigned_under_reject_policy_is_refused(node):
    smtp_expect(send(node, message("alice@signer.test")), 550, "5.7.26")


def test_quarantine_and_none_are_delivered_with_the_result(node, keys):
    smtp_expect(send(node, message("alice@quar.test", subject="q")), 250)
    ar = ar_of(delivered(node, 1))
    assert "dmarc=fail (p=quarantine) header.from=quar.test" in ar, ar
    smtp_expect(send(node, message("alice@mon.test", subject="m")), 250)
    ar = ar_of(delivered(node, 2))
    assert "dmarc=fail (p=none) header.from=mon.test" in ar, ar


def test_pct_zero_softens_reject(node):
    smtp_expect(send(node, message("alice@sample.test")), 250)
    ar = ar_of(delivered(node))
    assert "dmarc=fail (p=quarantine)" in ar, ar


def test_no_record_and_org_domain(node, keys):
    smtp_expect(send(node, signed(keys, "alice@nodmarc.test", subject="n")), 250)
    assert "dmarc=none" in ar_of(delivered(node, 1))
    # the organizational domain's record covers its subdomains; DKIM of the
    # subdomain is aligned under relaxed alignment
    smtp_expect(send(node, signed(keys, "alice@sub.org.test", subject="o")), 250)
    assert "dmarc=pass header.from=sub.org.test" in ar_of(delivered(node, 2))
    smtp_expect(send(node, message("alice@sub.org.test", subject="u")), 550, "5.7.26")


def test_forged_results_in_our_name_are_removed(node, keys):
    forged = (b"Authentication-Results: mx.kale.test; dkim=pass header.d=signer.test\r\n"
              b"Authentication-Results: (comment) MX.KALE.TEST;\r\n dmarc=pass\r\n"
              b"Authentication-Results: other.test; spf=pass\r\n")
    forged += b"X-Spam-Flag: NO\r\nx-spam-score: -100\r\nX-Spamd-Bar: kept\r\n"
    msg = forged + message("alice@nodmarc.test")
    smtp_expect(send(node, msg), 250)
    got = delivered(node)
    assert got.count(b"Authentication-Results:") == 2, got[:600]
    # the spam verdict fields are ours alone: any from outside is removed
    assert b"X-Spam-Flag" not in got and b"x-spam-score" not in got, got[:600]
    assert b"X-Spamd-Bar: kept" in got
    assert b"Authentication-Results: other.test; spf=pass" in got
    assert "dkim=none" in ar_of(got)


def test_dns_failure_is_451_unless_on_error_pass(node):
    smtp_expect(send(node, message("alice@broken.test")), 451, "4.7.1")
    node.ctl("filter", "set", "dmarc", "--on-error", "pass")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@broken.test")), 250)
    assert "dmarc=temperror" in ar_of(delivered(node))


def test_action_overrides_policy_and_back(node):
    node.ctl("filter", "set", "dmarc", "--action", "log")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test", subject="a")), 250)
    assert "dmarc=fail (p=reject)" in ar_of(delivered(node))
    show = json.loads(node.ctl("filter", "show", "--json").stdout)
    d = [c for c in show["checks"] if c["name"] == "dmarc"][0]
    assert d["options"]["p-reject"] == "log", d
    node.ctl("filter", "set", "dmarc", "--action", "policy")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test", subject="b")), 550, "5.7.26")
    p = node.ctl("filter", "set", "spf", "--action", "policy", check=False)
    assert p.returncode == 2 and "dmarc" in p.stderr, p


def test_per_domain_policy_off(node):
    node.ctl("filter", "add", "lax")
    node.ctl("filter", "set", "--policy", "lax", "dmarc", "--action", "off")
    node.ctl("filter", "set", "--policy", "lax", "dkim", "--action", "off")
    node.ctl("domain", "set", "example.test", "--filter", "lax")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test")), 250)
    # no end-of-DATA phase ran: nothing was added
    assert not top(delivered(node)).startswith(b"Authentication-Results:")


def test_many_signatures_bounded(node, keys):
    sig = signed(keys, "alice@signer.test")
    one = sig.split(b"From: ", 1)[0]
    msg = one * 100 + sig[len(one):]
    t = time.time()
    smtp_expect(send(node, msg), 250)
    assert time.time() - t < 60
    ar = ar_of(delivered(node))
    # at most KDKIM_MAX_SIGS (16) signatures are evaluated and reported
    assert 1 <= ar.count("dkim=") <= 16 and "dmarc=pass" in ar, ar[:400]


# ---- outbound: kale signs ----

def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("alg", ["rsa-sha256", "ed25519-sha256"])
def test_authenticated_mail_is_signed(node, alg):
    key = json.loads(node.ctl("dkim", "keygen", "example.test", "--json", "--algorithm", alg,
                              "--selector", "k1").stdout)

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        return key["txt"].encode() if n.rstrip(".").lower() == key["name"] else None

    s = smtplib.SMTP("127.0.0.1", node.ports["submission"], timeout=15)
    s.ehlo()
    s.starttls(context=tls_ctx())
    s.ehlo()
    s.login("bob@example.test", "secret-bob@example.test")
    body = message("bob@example.test").replace(b"Alice <bob", b"Bob <bob")
    r = s.sendmail("bob@example.test", ["alice@example.test"], body)
    assert r == {}
    s.quit()
    got = delivered(node)
    assert top(got).startswith(b"DKIM-Signature: v=1; a=" + alg.encode()), got[:300]
    assert b"Authentication-Results:" not in got
    assert dkim.verify(got, dnsfunc=dnsfunc), got[:800]
    assert not dkim.verify(got.replace(b"attached", b"attacked"), dnsfunc=dnsfunc)


def test_unauthenticated_mail_is_not_signed(node):
    node.ctl("dkim", "keygen", "example.test")
    smtp_expect(send(node, message("alice@nodmarc.test")), 250)
    assert b"DKIM-Signature" not in delivered(node)


# ---- the dry run sees the same ----

def test_policy_test_message_matches_the_session(node, keys, tmp_path):
    good = tmp_path / "good.eml"
    good.write_bytes(signed(keys, "alice@signer.test"))
    bad = tmp_path / "bad.eml"
    bad.write_bytes(good.read_bytes().replace(b"attached", b"attacked"))
    before = bad.read_bytes()
    for path, verdict, code in ((good, "accept", "250"), (bad, "reject", "550")):
        p = node.ctl("policy", "test", "--ip", "127.0.0.1", "--helo", "good.client.test",
                     "--from", "alice@remote.test", "--to", "alice@example.test",
                     "--message", str(path), "--json")
        out = json.loads(p.stdout)
        assert out["verdict"] == verdict and out["reply"].startswith(code), out
        steps = {s["check"]: s for s in out["steps"] if s["phase"] == "data"}
        assert steps["dmarc"]["result"] == ("pass" if verdict == "accept" else "fail"), out
        assert steps["dkim"]["result"] == ("pass" if verdict == "accept" else "fail"), out
        assert steps["header"]["reason"].startswith("Authentication-Results: mx.kale.test;")
        # and the real session gives the same reply
        r = send(node, path.read_bytes())
        assert str(r.code) == code, r
        if code == "550":
            assert out["reply"].split()[1] == r.enh, (out, r)
    assert bad.read_bytes() == before      # the dry run changed nothing
    p = node.ctl("policy", "test", "--ip", "127.0.0.1", "--from", "a@remote.test", "--to",
                 "alice@example.test", "--message", str(tmp_path / "missing.eml"), check=False)
    assert p.returncode != 0 and "missing.eml" in p.stderr, p


# ---- hostile DNS at the end of DATA ----

def garbage(q, tcp):
    """An answer that is no DNS message (its id kept)."""
    body = q[:2] + b"\x84\x00\x00\x01\x00\x05" + b"\xff" * 300
    return struct.pack("!H", len(body)) + body if tcp else body


def truncated(q, tcp):
    """TC over UDP, and a TCP server that hangs up."""
    if tcp:
        return b""
    return q[:2] + b"\x86\x00" + q[4:6] + b"\x00\x00\x00\x00\x00\x00" + q[12:]


HOSTILE = {
    # a DMARC record behind a CNAME loop, too many records, garbage, a
    # truncated answer; DKIM keys that are malformed, huge or looping
    "_dmarc.loop.test": {"CNAME": "_dmarc2.loop.test"},
    "_dmarc2.loop.test": {"CNAME": "_dmarc.loop.test"},
    "_dmarc.huge.test": {"TXT": ["v=DMARC1; p=reject; x=" + "y" * 230] * 60},
    "_dmarc.twice.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
    "_dmarc.junk.test": {"TXT": ["v=DMARC1; p=bogus; pct=9999"]},
    "bad._domainkey.hk.test": {"TXT": ["v=DKIM1; k=rsa; p=!!!not*base64"]},
    "huge._domainkey.hk.test": {"TXT": [["v=DKIM1; k=rsa; p=" + "A" * 250] + ["A" * 250] * 200]},
    "loop._domainkey.hk.test": {"CNAME": "loop2._domainkey.hk.test"},
    "loop2._domainkey.hk.test": {"CNAME": "loop._domainkey.hk.test"},
}


@pytest.fixture
def hostile_node(kale_factory, keys):
    z = zone_of(keys)
    z.update(HOSTILE)
    d = DnsServer(z, raw={"_dmarc.garbage.test": garbage, "_dmarc.cut.test": truncated})
    d.start()
    k = kale_factory(extra_conf="[dns]\nservers = 127.0.0.1:%d\n" % d.port)
    yield k
    d.close()


@pytest.mark.parametrize("frm,selector,expect", [
    ("alice@loop.test", None, "dmarc=temperror"),
    ("alice@huge.test", None, "dmarc=temperror"),
    ("alice@garbage.test", None, "dmarc=temperror"),
    ("alice@cut.test", None, "dmarc=temperror"),
    ("alice@twice.test", None, "dmarc=none"),       # several records: none (RFC 7489 6.6.3)
    ("alice@junk.test", None, "dmarc=permerror"),
    ("alice@hk.test", b"bad", "dkim=permerror"),
    ("alice@hk.test", b"huge", ("dkim=temperror", "dkim=permerror")),
    ("alice@hk.test", b"loop", "dkim=temperror"),
])
def test_hostile_dns_bounded(hostile_node, keys, frm, selector, expect):
    hostile_node.ctl("filter", "set", "dmarc", "--on-error", "pass")
    time.sleep(1.2)
    msg = signed(keys, frm, selector=selector) if selector else message(frm)
    t = time.time()
    r = send(hostile_node, msg)
    assert time.time() - t < 45, "the end of DATA took too long"
    smtp_expect(r, 250)
    ar = ar_of(delivered(hostile_node))
    assert any(e in ar for e in ((expect,) if isinstance(expect, str) else expect)), ar
    # the node goes on serving
    smtp_expect(send(hostile_node, message("alice@nodmarc.test")), 250)


def test_quarantine_and_tag_mark_the_message(node, keys):
    """tag (and quarantine, until the quarantine exists) add X-Spam-Flag:
    YES and prefix the Subject, at RCPT (a check's action) and at the end of
    DATA (p=quarantine); a prefix already there is not doubled."""
    smtp_expect(send(node, message("alice@quar.test", subject="quarterly")), 250)
    got = top(delivered(node, 1))
    head = got.split(b"\n\n", 1)[0]
    assert b"\nX-Spam-Flag: YES\n" in head, head
    assert b"\nSubject: [SPAM] quarterly\r\n" in head or b"\nSubject: [SPAM] quarterly\n" in head, head
    # a check tagging at RCPT (helo scored as tag), a Subject tagged already
    node.ctl("filter", "set", "helo", "--action", "tag")
    time.sleep(2.2)
    with SmtpRaw(node.port) as c:
        c.ehlo("not-a-dotted-name")
        smtp_expect(c.cmd("MAIL FROM:<alice@remote.test>"), 250)
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250)
        smtp_expect(c.data(message("alice@nodmarc.test", subject="[SPAM] again")), 250)
        c.cmd("QUIT")
    got = top(delivered(node, 2))
    head = got.split(b"\n\n", 1)[0]
    assert b"X-Spam-Flag: YES" in head and b"[SPAM] [SPAM]" not in head, head
    assert b"dmarc=none" in head, head
    # untagged mail has neither
    node.ctl("filter", "set", "helo", "--action", "off")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@nodmarc.test", subject="plain")), 250)
    head = top(delivered(node, 3)).split(b"\n\n", 1)[0]
    assert b"X-Spam-Flag" not in head and b"[SPAM]" not in head, head


def test_allow_list_skips_the_end_of_data_checks(node):
    """An allow hit skips the checks it names at the end of DATA too: by
    default every check, so a partner's unsigned mail under p=reject is
    taken; --skip spf alone leaves DMARC to refuse it."""
    node.ctl("list", "add", "allow", "sender", "alice@remote.test", "--skip", "spf")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test", subject="s")), 550, "5.7.26")
    node.ctl("list", "del", "allow", "sender", "alice@remote.test")
    node.ctl("list", "add", "allow", "sender", "alice@remote.test", "--skip", "dmarc,dkim")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test", subject="d")), 250)
    node.ctl("list", "del", "allow", "sender", "alice@remote.test")
    node.ctl("list", "add", "allow", "sender", "alice@remote.test")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@signer.test", subject="a")), 250)
    # nothing was checked for the allow-listed mail: no Authentication-Results
    for m in node.messages("alice@example.test"):
        assert not top(m).startswith(b"Authentication-Results:"), m[:200]
    p = node.ctl("list", "add", "allow", "sender", "x@remote.test", "--skip", "nosuch", check=False)
    assert p.returncode == 2 and "nosuch" in p.stderr, p


def test_trace_shows_the_end_of_data(node):
    r = send(node, message("alice@mon.test", subject="traced"))
    smtp_expect(r, 250)
    qid = r.text.split()[-1]
    steps = []
    for _ in range(50):
        p = node.ctl("trace", qid, "--json", check=False)
        if p.returncode == 0:
            steps = json.loads(p.stdout)["steps"]
            if any(s["check"] == "dmarc" for s in steps):
                break
        time.sleep(0.1)
    d = [s for s in steps if s["check"] == "dmarc"]
    assert d and d[0]["phase"] == "data" and "p=none" in d[0]["reason"], steps


def test_spam_score_field(node):
    """A score action at RCPT (helo) and one at the end of DATA (dmarc)
    add up into X-Spam-Score:, and the policy's thresholds see the sum."""
    node.ctl("filter", "set", "helo", "--action", "score", "--score", "2.5")
    node.ctl("filter", "set", "dmarc", "--action", "score", "--score", "1.5")
    node.ctl("filter", "set", "score", "--tag", "3.5", "--quarantine", "100", "--reject", "100")
    time.sleep(2.2)
    smtp_expect(send(node, message("alice@nodmarc.test", subject="one")), 250)   # helo only
    head = top(delivered(node, 1)).split(b"\n\n", 1)[0]
    assert b"\nX-Spam-Score: 2.5\n" in head and b"X-Spam-Flag" not in head, head
    smtp_expect(send(node, message("alice@signer.test", subject="two")), 250)   # both: 4.0
    head = top(delivered(node, 2)).split(b"\n\n", 1)[0]
    assert b"\nX-Spam-Score: 4.0\n" in head and b"X-Spam-Flag: YES" in head, head
    assert b"[SPAM] two" in head, head
