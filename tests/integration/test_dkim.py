"""DKIM (operator.md section 6): kalectl dkim keygen|list|del|sign|verify,
checked against an independent implementation, Debian's dkimpy
(python3-dkim). Messages dkimpy signs (rsa-sha256 and ed25519-sha256, with
keys made here by openssl and PyNaCl) must pass `kalectl dkim verify`,
which asks a loopback DNS server (dnsserver.py), and fail once tampered;
what `kalectl dkim sign` produced must pass dkimpy's verify with the TXT
record keygen printed. No command ever prints a private key; hostile
signatures get a clear result in bounded time."""
import base64
import json
import re
import subprocess
import time

import dkim
import nacl.signing
import pytest

from conftest import bin_path
from dnsserver import DnsServer

DOMAIN = "example.test"

MSG = (b"From: Alice <alice@example.test>\n"
       b"To: Bob <bob@other.test>\n"
       b"Cc: carol@other.test\n"
       b"Subject: quarterly figures\n"
       b"Date: Mon, 1 Jan 2024 10:00:00 +0000\n"
       b"Message-ID: <q1@example.test>\n"
       b"MIME-Version: 1.0\n"
       b"Content-Type: text/plain; charset=utf-8\n"
       b"\n"
       b"The figures are attached.\n"
       b"  Indented line with trailing spaces   \n"
       b"\n"
       b"-- \nAlice\n")


def rsa_keypair():
    """(PKCS#1 PEM for dkimpy, TXT value) made by the openssl command."""
    pem = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], check=True,
                         capture_output=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem,
                         check=True, capture_output=True).stdout
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed_keypair():
    """(base64 seed for dkimpy, TXT value) made by PyNaCl (RFC 8463)."""
    sk = nacl.signing.SigningKey.generate()
    return (base64.b64encode(bytes(sk)),
            "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(sk.verify_key)).decode())


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa_keypair(), "ed": ed_keypair()}


@pytest.fixture
def zone(keys):
    return {
        "rsa1._domainkey." + DOMAIN: {"TXT": [keys["rsa"][1]]},
        "ed1._domainkey." + DOMAIN: {"TXT": [keys["ed"][1]]},
    }


@pytest.fixture
def dns(zone):
    d = DnsServer(zone, servfail=["broken._domainkey." + DOMAIN])
    d.start()
    yield d
    d.close()


@pytest.fixture
def node(kale_factory):
    return kale_factory(start=False)


def dkimpy_sign(msg, selector, key, alg, canon=(b"relaxed", b"relaxed")):
    return dkim.sign(msg, selector.encode(), DOMAIN.encode(), key, canonicalize=canon,
                     signature_algorithm=alg.encode(),
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])


def kale_verify(k, tmp_path, msg, dns, name="m.eml", check=True):
    path = tmp_path / name
    path.write_bytes(msg)
    args = ["dkim", "verify", str(path), "--json"]
    if dns is not None:
        args += ["--dns", "127.0.0.1:%d" % dns.port]
    p = k.ctl(*args, check=check)
    assert "PRIVATE KEY" not in p.stdout + p.stderr
    return json.loads(p.stdout) if check else p


def ctl_bytes(k, *args):
    """kalectl with its stdout as bytes (Kale.ctl's text mode would turn
    CRLF into LF)."""
    p = subprocess.run([bin_path("kalectl"), "-c", k.conf] + list(args), capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert b"PRIVATE" not in p.stdout + p.stderr
    return p.stdout


def no_private(p):
    out = p.stdout + p.stderr
    assert "PRIVATE" not in out and "BEGIN" not in out, out


# ---- dkimpy signs, kale verifies ----

@pytest.mark.parametrize("selector,kind,alg", [("rsa1", "rsa", "rsa-sha256"),
                                               ("ed1", "ed", "ed25519-sha256")])
def test_dkimpy_signed_passes_and_tampered_fails(node, dns, keys, tmp_path, selector, kind, alg):
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")):
        signed = dkimpy_sign(MSG, selector, keys[kind][0], alg, canon) + MSG
        res = kale_verify(node, tmp_path, signed, dns)
        assert res == [{"result": "pass", "domain": DOMAIN, "selector": selector,
                        "algorithm": alg, "reason": ""}], (canon, res)
    signed = dkimpy_sign(MSG, selector, keys[kind][0], alg) + MSG
    # the body changed
    res = kale_verify(node, tmp_path, signed.replace(b"figures are", b"figures were"), dns)
    assert [r["result"] for r in res] == ["fail"]
    assert res[0]["reason"] == "body hash did not verify"
    # a signed header changed
    res = kale_verify(node, tmp_path, signed.replace(b"Subject: quarterly", b"Subject: yearly"), dns)
    assert [r["result"] for r in res] == ["fail"]
    assert res[0]["reason"] == "signature did not verify"
    # CRLF line ends verify as well (kale stores LF, the wire has CRLF)
    res = kale_verify(node, tmp_path, signed.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"),
                      dns)
    assert [r["result"] for r in res] == ["pass"]


def test_key_lookup_results(node, dns, keys, tmp_path):
    # no key at that selector
    signed = dkimpy_sign(MSG, "gone", keys["rsa"][0], "rsa-sha256") + MSG
    res = kale_verify(node, tmp_path, signed, dns)
    assert (res[0]["result"], res[0]["reason"]) == ("permerror", "no key published")
    # the DNS server fails: a temporary error, never a pass or a fail
    signed = dkimpy_sign(MSG, "broken", keys["rsa"][0], "rsa-sha256") + MSG
    res = kale_verify(node, tmp_path, signed, dns)
    assert res[0]["result"] == "temperror"
    # the wrong key: published under rsa1, signed with another
    other, _ = rsa_keypair()
    signed = dkimpy_sign(MSG, "rsa1", other, "rsa-sha256") + MSG
    res = kale_verify(node, tmp_path, signed, dns)
    assert res[0]["result"] == "fail"
    assert any(q[0] == "rsa1._domainkey." + DOMAIN for q in dns.queries)


def test_two_signatures_and_none(node, dns, keys, tmp_path):
    s1 = dkimpy_sign(MSG, "rsa1", keys["rsa"][0], "rsa-sha256")
    s2 = dkimpy_sign(s1 + MSG, "ed1", keys["ed"][0], "ed25519-sha256")
    res = kale_verify(node, tmp_path, s2 + s1 + MSG, dns)
    assert [(r["result"], r["selector"], r["algorithm"]) for r in res] == [
        ("pass", "ed1", "ed25519-sha256"), ("pass", "rsa1", "rsa-sha256")]
    res = kale_verify(node, tmp_path, MSG, dns)
    assert [r["result"] for r in res] == ["none"]
    # the text form: one Authentication-Results method per signature
    path = tmp_path / "two.eml"
    path.write_bytes(s2 + s1 + MSG)
    p = node.ctl("dkim", "verify", str(path), "--dns", "127.0.0.1:%d" % dns.port)
    assert p.stdout.splitlines() == [
        "dkim=pass header.d=example.test header.s=ed1 header.a=ed25519-sha256",
        "dkim=pass header.d=example.test header.s=rsa1 header.a=rsa-sha256"]


def test_verify_uses_config_dns(kale_factory, dns, keys, tmp_path):
    k = kale_factory(start=False, extra_conf="[dns]\nservers = 127.0.0.1:%d\n" % dns.port)
    signed = dkimpy_sign(MSG, "ed1", keys["ed"][0], "ed25519-sha256") + MSG
    res = kale_verify(k, tmp_path, signed, None)
    assert [r["result"] for r in res] == ["pass"]


def test_hostile_signatures(node, dns, keys, tmp_path):
    sig = dkimpy_sign(MSG, "rsa1", keys["rsa"][0], "rsa-sha256")
    # 100 signature fields: 16 evaluated (one key lookup), the rest "policy"
    t0 = time.time()
    res = kale_verify(node, tmp_path, sig * 100 + MSG, dns)
    assert len(res) == 64                    # what kalectl prints at most
    assert [r["result"] for r in res[:16]] == ["pass"] * 16
    assert {r["result"] for r in res[16:]} == {"policy"}
    assert time.time() - t0 < 20
    assert sum(1 for q in dns.queries if q[0].startswith("rsa1.")) == 1
    hostile = [
        sig.replace(b"v=1; ", b"v=1; l=999999999999999999999999; "),
        sig.replace(b"v=1; ", b"v=1; l=99999; "),
        sig.replace(b"v=1; ", b"v=1; h=" + b"from:" * 20000 + b"to; "),
        sig.replace(b"b=", b"b=!!!not base64***", 1),
        sig.replace(b"a=rsa-sha256", b"a=rsa-sha1"),
        b"DKIM-Signature: garbage;;;==\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=\"x(y); s=\n",
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.test; s=ed1; h=from; bh=AAAA; b=" +
        b"A" * 200000 + b"\n",
    ]
    for h in hostile:
        res = kale_verify(node, tmp_path, h + MSG, dns)
        assert len(res) == 1, h[:80]
        assert res[0]["result"] in ("fail", "neutral", "policy", "permerror"), (h[:80], res)
        assert re.fullmatch(r"[A-Za-z0-9._?-]*", res[0]["domain"]), res


# ---- kale signs, dkimpy verifies ----

def keygen(k, *args):
    p = k.ctl("dkim", "keygen", DOMAIN, "--json", *args)
    no_private(p)
    return json.loads(p.stdout)


@pytest.mark.parametrize("alg", ["rsa-sha256", "ed25519-sha256"])
def test_kale_signed_passes_dkimpy(node, tmp_path, alg):
    key = keygen(node, "--algorithm", alg, "--selector", "s" + alg[:3])
    assert key["name"] == "%s._domainkey.%s" % (key["selector"], DOMAIN)
    assert key["algorithm"] == alg

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        return key["txt"].encode() if n.rstrip(".").lower() == key["name"] else None

    for msg in (MSG, MSG.replace(b"\n", b"\r\n")):
        path = tmp_path / "in.eml"
        path.write_bytes(msg)
        out = ctl_bytes(node, "dkim", "sign", DOMAIN, str(path))
        assert out.startswith(b"DKIM-Signature: v=1; a=" + alg.encode())
        assert out.endswith(msg)
        # the field's line ends follow the message's
        head = out[:len(out) - len(msg)]
        assert (b"\r\n" in head) == (b"\r\n" in msg) and b"\r\r" not in head
        assert dkim.verify(out, dnsfunc=dnsfunc), out[:600]
        assert not dkim.verify(out.replace(b"attached", b"attacked"), dnsfunc=dnsfunc)
        # From is over-signed: a From added above the signed one breaks it
        evil = out.replace(b"From: Alice", b"From: Mallory <m@evil.test>\nFrom: Alice")
        assert not dkim.verify(evil, dnsfunc=dnsfunc)
        # and kale's own verifier agrees
        zone = {key["name"]: {"TXT": [key["txt"]]}}
        d = DnsServer(zone)
        d.start()
        try:
            res = kale_verify(node, tmp_path, out, d, name="out.eml")
        finally:
            d.close()
        assert [r["result"] for r in res] == ["pass"]


def test_keygen_list_del(node, tmp_path):
    p = node.ctl("dkim", "keygen", DOMAIN)
    no_private(p)
    m = re.search(r"^name:  (kale\d{6})\._domainkey\.example\.test$", p.stdout, re.M)
    assert m, p.stdout
    default_sel = m.group(1)
    assert default_sel == "kale" + time.strftime("%Y%m", time.gmtime())
    value = re.search(r"^value: (v=DKIM1; k=rsa; p=\S+)$", p.stdout, re.M).group(1)
    # the zone-file line splits the value into strings of at most 255 bytes
    zone = re.search(r"^zone:  \S+\. 3600 IN TXT \((.*)\)$", p.stdout, re.M).group(1)
    parts = re.findall(r'"([^"]*)"', zone)
    assert "".join(parts) == value and all(len(x) <= 255 for x in parts)
    # the same selector again is refused; so are bad arguments
    p = node.ctl("dkim", "keygen", DOMAIN, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    assert node.ctl("dkim", "keygen", "nowhere.test", check=False).returncode == 1
    assert node.ctl("dkim", "keygen", DOMAIN, "--algorithm", "rsa-sha1",
                    check=False).returncode == 2
    assert node.ctl("dkim", "keygen", DOMAIN, "--selector", "a;b", check=False).returncode == 2
    assert node.ctl("dkim", "keygen", check=False).returncode == 2
    time.sleep(1.1)
    keygen(node, "--selector", "Ed2", "--algorithm", "ed25519-sha256")
    # list: the newest key of a domain is the one it signs with
    p = node.ctl("dkim", "list")
    no_private(p)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["DOMAIN", "SELECTOR", "ALGORITHM", "CREATED", "SIGNS"]
    assert lines[1].split()[:3] == [DOMAIN, "ed2", "ed25519-sha256"] and lines[1].endswith("yes")
    assert lines[2].split()[:3] == [DOMAIN, default_sel, "rsa-sha256"] and lines[2].endswith("-")
    p = node.ctl("dkim", "list", "--json")
    no_private(p)
    rows = json.loads(p.stdout)
    assert [(r["selector"], r["active"]) for r in rows] == [("ed2", True), (default_sel, False)]
    assert rows[1]["txt"] == value
    assert all("private" not in json.dumps(r).lower() for r in rows)
    # sign uses the newest key unless told
    path = tmp_path / "in.eml"
    path.write_bytes(MSG)
    assert b"s=ed2;" in node.ctl("dkim", "sign", DOMAIN, str(path)).stdout.encode()
    assert ("s=" + default_sel) in node.ctl("dkim", "sign", DOMAIN, str(path), "--selector",
                                            default_sel).stdout
    # del one, then all
    assert "deleted DKIM key ed2" in node.ctl("dkim", "del", DOMAIN, "--selector", "ed2").stdout
    assert node.ctl("dkim", "del", DOMAIN, "--selector", "ed2", check=False).returncode == 1
    assert "deleted 1 DKIM key for" in node.ctl("dkim", "del", DOMAIN).stdout
    assert node.ctl("dkim", "del", DOMAIN, check=False).returncode == 1
    assert node.ctl("dkim", "list", "--json").stdout.strip() == "[]"
    p = node.ctl("dkim", "sign", DOMAIN, str(path), check=False)
    assert p.returncode == 1 and "no DKIM key" in p.stderr


def test_usage(node, tmp_path):
    for args in (["dkim"], ["dkim", "bogus"], ["dkim", "verify"],
                 ["dkim", "verify", "x", "--dns", "not-an-address"],
                 ["dkim", "sign", DOMAIN], ["dkim", "list", "extra"], ["dkim", "del"]):
        p = node.ctl(*args, check=False)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
    p = node.ctl("dkim", "verify", str(tmp_path / "missing.eml"), check=False)
    assert p.returncode == 1 and "cannot open" in p.stderr
