"""Gateway relay with DNS (issue 4): next hops found by MX lookup (with the
A/AAAA fallback of RFC 5321 5.1) or by resolving a static route's host name,
against a small authoritative DNS server on loopback (dnsserver.py)."""
import os

import pytest

from conftest import kale_wait, smtp_msg, smtp_qid, smtp_send
from dnsserver import DnsServer
from relaysink import Sink
from test_relay import FAST, WAIT, log_rows, queue_idle, wait_log


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.close()


def dns_node(kale_factory, sink, zone, servfail=()):
    dns = DnsServer(zone, servfail)
    dns.start()
    conf = FAST + "[dns]\nservers = 127.0.0.1:%d\n\n[delivery]\nremote_port = %d\n" % (
        dns.port, sink.port)
    k = kale_factory(start=False, extra_conf=conf)
    k.dns = dns
    return k


def test_mx_two_hosts_first_down(kale_factory, sink):
    zone = {
        "mxdom.test": {"MX": [(20, "mx2.mxdom.test"), (10, "mx1.mxdom.test")]},
        # mx1 only on ::1, where nothing listens on the sink's port
        "mx1.mxdom.test": {"AAAA": ["::1"]},
        "mx2.mxdom.test": {"A": ["127.0.0.1"]},
    }
    k = dns_node(kale_factory, sink, zone)
    try:
        k.ctl("network", "add", "127.0.0.1/32")     # may relay to any domain
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@mxdom.test", "y@mxdom.test"],
                           smtp_msg("mx")))
        assert kale_wait(lambda: len(sink.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        assert len(sink.txs) == 1 and sorted(sink.txs[0].rcpts) == ["x@mxdom.test", "y@mxdom.test"]
        rows = wait_log(k, "x@mxdom.test", "delivered")
        assert any("mx2.mxdom.test" in (r.get("relay") or "") for r in rows), rows
        q = k.dns.queries
        assert ("mxdom.test", "MX") in q
        # preference order: mx1 (10) was looked up before mx2 (20)
        assert q.index(("mx1.mxdom.test", "AAAA")) < q.index(("mx2.mxdom.test", "A"))
    finally:
        k.dns.close()


def test_relay_mx_route_a_fallback(kale_factory, sink):
    zone = {"amx.test": {"A": ["127.0.0.1"]}}
    k = dns_node(kale_factory, sink, zone)
    try:
        k.ctl("domain", "add", "amx.test", "--relay", "mx")
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@amx.test"], smtp_msg("fallback")))
        assert kale_wait(lambda: len(sink.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        assert ("amx.test", "MX") in k.dns.queries and ("amx.test", "A") in k.dns.queries
    finally:
        k.dns.close()


def test_static_route_host_name(kale_factory, sink):
    zone = {"smarthost.test": {"A": ["127.0.0.1"]}}
    k = dns_node(kale_factory, sink, zone)
    try:
        k.ctl("domain", "add", "relay.test", "--relay", "smarthost.test:%d" % sink.port)
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("byname")))
        assert kale_wait(lambda: len(sink.txs) >= 1 and queue_idle(k), WAIT), k.log_text()[-3000:]
        assert ("relay.test", "MX") not in k.dns.queries
    finally:
        k.dns.close()


def test_dns_failure_defers_never_bounces(kale_factory, sink):
    k = dns_node(kale_factory, sink, {}, servfail=["broken.test"])
    try:
        k.ctl("domain", "add", "broken.test", "--relay", "mx")
        k.start()
        smtp_qid(smtp_send(k.port, "alice@example.test", ["x@broken.test"],
                           smtp_msg("servfail", sender="alice@example.test")))
        rows = wait_log(k, "x@broken.test", "deferred")
        assert all(r["action"] != "bounced" for r in rows), rows
        assert any((r.get("code") or "").startswith("451 4.4.3") for r in rows), rows
        assert not queue_idle(k)
        assert k.messages("alice@example.test") == []
    finally:
        k.dns.close()


def test_unreachable_dns_server_defers(kale_factory, sink):
    # a DNS "server" that never answers: c-ares times out -> 4xx
    import socket
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    conf = FAST + "[dns]\nservers = 127.0.0.1:%d\n" % dead.getsockname()[1]
    k = kale_factory(start=False, extra_conf=conf)
    try:
        k.ctl("domain", "add", "relay.test", "--relay", "mx")
        # with no DNS, SPF would answer 451 at RCPT and DMARC at the end of
        # DATA: this test is about the relay
        k.ctl("filter", "set", "spf", "--action", "off")
        k.ctl("filter", "set", "dmarc", "--action", "off")
        k.start()
        smtp_qid(smtp_send(k.port, "bob@other.test", ["x@relay.test"], smtp_msg("timeout")))
        rows = wait_log(k, "x@relay.test", "deferred", timeout=40)
        assert all(r["action"] != "bounced" for r in rows), rows
    finally:
        dead.close()


def test_nxdomain_bounces(kale_factory, sink):
    k = dns_node(kale_factory, sink, {})
    try:
        k.ctl("domain", "add", "nowhere.test", "--relay", "mx")
        k.start()
        smtp_qid(smtp_send(k.port, "alice@example.test", ["x@nowhere.test"],
                           smtp_msg("nx", sender="alice@example.test")))
        assert kale_wait(lambda: queue_idle(k) and k.messages("alice@example.test"), WAIT), \
            k.log_text()[-3000:]
        d = k.messages("alice@example.test")[0].decode("utf-8", "replace")
        assert "Status: 5.1.2" in d
    finally:
        k.dns.close()


def test_failing_destination_with_many_messages_settles(kale_factory, sink):
    """Several messages to a domain that does not exist: each connection
    that fails takes its job down with it, so lookups stay bounded (no
    endless respawning of connections) and every message bounces once."""
    k = dns_node(kale_factory, sink, {})
    try:
        k.ctl("domain", "add", "gone.test", "--relay", "mx")
        k.start()
        n = 6
        for i in range(n):
            smtp_qid(smtp_send(k.port, "alice@example.test", ["x%d@gone.test" % i],
                               smtp_msg("gone-%d" % i, sender="alice@example.test")))
        assert kale_wait(lambda: queue_idle(k) and len(k.messages("alice@example.test")) >= n,
                         WAIT), k.log_text()[-3000:]
        import time
        time.sleep(1)
        mx = [q for q in k.dns.queries if q == ("gone.test", "MX")]
        assert len(mx) <= 2 * n, len(mx)
        assert len(k.messages("alice@example.test")) == n
    finally:
        k.dns.close()
