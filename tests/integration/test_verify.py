"""Recipient verification (issue 5), backend side, through `kalectl verify`:
localdb, mysql (MariaDB), pgsql (PostgreSQL), ldap (slapd) against real
private servers; cache and TTLs, flush, fallback, injection attempts, backend
down -> error -> back up; configuration errors told apart from a backend
that is down."""
import time

import pytest

from conftest import SmtpRaw, kale_wait, smtp_expect
from fixtures_db import (mariadb, pgsql, slapd, LDAP_READER, LDAP_READER_PW,  # noqa: F401
                         SUFFIX)

FOUND, MISSING, ERROR = 0, 1, 2


@pytest.fixture
def node(kale_factory):
    return kale_factory(start=False)


def vtest(k, profile, address):
    p = k.ctl("verify", "test", profile, address, check=False)
    assert p.returncode in (0, 1, 2), p.stderr
    return p.returncode, p.stdout


def assert_verify(k, profile, address, want):
    rc, out = vtest(k, profile, address)
    assert rc == want, "verify test %s %s: rc %d, %s" % (profile, address, rc, out)
    return out


SQL_INJECTIONS = ["x'or'1'='1@corp.test", "x' OR '1'='1@corp.test", "x'--@corp.test",
                  "x\\'or 1=1 -- @corp.test", "%@corp.test", "_lice@corp.test"]


# ---- localdb and kalectl ----

def test_localdb_found_missing_alias(node):
    node.ctl("alias", "add", "sales@example.test", "alice@example.test")
    node.ctl("verify", "add", "local", "--type", "localdb")
    out = assert_verify(node, "local", "alice@example.test", FOUND)
    assert out.startswith("found profile=local time=")
    assert_verify(node, "local", "ALICE@Example.Test", FOUND)
    assert_verify(node, "local", "sales@example.test", FOUND)
    assert_verify(node, "local", "nobody@example.test", MISSING)
    assert_verify(node, "local", "alice@elsewhere.test", MISSING)
    assert_verify(node, "nosuchprofile", "alice@example.test", ERROR)


def test_kalectl_verify_add_list_del(node):
    node.ctl("verify", "add", "local", "--type", "localdb")
    p = node.ctl("verify", "add", "local", "--type", "localdb", check=False)
    assert p.returncode == 1 and "exists" in p.stderr
    for bad in (["--type", "nope"], ["--type", "mysql", "--url", "mysql://u:p@h/db"],
                ["--type", "mysql", "--url", "http://x/", "--query", "select 1 where a='%m'"],
                ["--type", "mysql", "--url", "mysql://u:p@h/db", "--query", "select 1; drop x"],
                ["--type", "mysql", "--url", "mysql://u:p@h/db", "--query", "select 1"],
                ["--type", "ldap", "--url", "ldap://h", "--base", "dc=x"],
                ["--type", "ldap", "--url", "ldap://h", "--base", "dc=x", "--filter", "mail=%m"],
                ["--type", "localdb", "--fallback", "missing"],
                ["--type", "localdb", "--mode", "sometimes"],
                ["--type", "localdb", "--ttl-found", "0"]):
        p = node.ctl("verify", "add", "bad", *bad, check=False)
        assert p.returncode in (1, 2), (bad, p.stdout, p.stderr)
    node.ctl("verify", "add", "sql", "--type", "mysql", "--url", "mysql://u:secretpw@127.0.0.1/db",
             "--query", "select email from mailusers where email='%m'", "--fallback", "local",
             "--mode", "cache", "--ttl-found", "60", "--ttl-missing", "5")
    out = node.ctl("verify", "list").stdout
    assert "sql" in out and "local" in out and "cache 60/5" in out
    assert "secretpw" not in out
    # in use: by another profile's fallback, by a domain
    p = node.ctl("verify", "del", "local", check=False)
    assert p.returncode == 1 and "fallback" in p.stderr
    node.ctl("domain", "set", "example.test", "--verify", "sql")
    p = node.ctl("verify", "del", "sql", check=False)
    assert p.returncode == 1 and "example.test" in p.stderr
    node.ctl("domain", "set", "example.test", "--verify", "none")
    node.ctl("verify", "del", "sql")
    node.ctl("verify", "del", "local")
    assert "local" not in node.ctl("verify", "list").stdout
    p = node.ctl("verify", "del", "local", check=False)
    assert p.returncode == 1


def test_cache_ttl_flush_and_local_changes(node):
    node.ctl("verify", "add", "c", "--type", "localdb", "--mode", "cache",
             "--ttl-found", "3600", "--ttl-missing", "2")
    out = assert_verify(node, "c", "alice@example.test", FOUND)
    assert " cached" not in out
    out = assert_verify(node, "c", "alice@example.test", FOUND)
    assert " cached" in out
    # missing answers are cached with their own TTL, then expire
    assert " cached" not in assert_verify(node, "c", "zed@example.test", MISSING)
    assert " cached" in assert_verify(node, "c", "zed@example.test", MISSING)
    time.sleep(2.5)
    assert " cached" not in assert_verify(node, "c", "zed@example.test", MISSING)
    # a local user change flushes the localdb cache
    node.ctl("user", "add", "zed@example.test")
    out = assert_verify(node, "c", "zed@example.test", FOUND)
    assert " cached" not in out
    node.ctl("user", "del", "alice@example.test")
    assert_verify(node, "c", "alice@example.test", MISSING)
    # flush by name and all
    assert " cached" in assert_verify(node, "c", "alice@example.test", MISSING)
    out = node.ctl("verify", "flush", "c").stdout
    assert "flushed" in out
    assert " cached" not in assert_verify(node, "c", "alice@example.test", MISSING)
    node.ctl("verify", "flush")
    assert node.ctl("verify", "flush", "nosuch", check=False).returncode == 1


# ---- mysql ----

def add_sql(node, name, kind, srv, query="select email from mailusers where email='%m' and active=1",
            password=None, extra=()):
    url = srv.url() if password is None else srv.url(password)
    node.ctl("verify", "add", name, "--type", kind, "--url", url, "--query", query, *extra)


@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
def test_sql_found_missing_injection(node, kind, request):
    srv = request.getfixturevalue("mariadb" if kind == "mysql" else "pgsql")
    srv.ensure()
    add_sql(node, "s", kind, srv)
    assert_verify(node, "s", "alice@corp.test", FOUND)
    assert_verify(node, "s", "o'brien@corp.test", FOUND)
    assert_verify(node, "s", "nobody@corp.test", MISSING)
    assert_verify(node, "s", "gone@corp.test", MISSING)
    for a in SQL_INJECTIONS:
        assert_verify(node, "s", a, MISSING)
    # %u and %d, a literal built of several placeholders, unquoted use
    add_sql(node, "s2", kind, srv, query="select 1 from mailusers where email = '%u@%d'")
    assert_verify(node, "s2", "bob@corp.test", FOUND)
    assert_verify(node, "s2", "x'or'1'='1@corp.test", MISSING)
    add_sql(node, "s3", kind, srv, query="select 1 from mailusers where email = %m")
    assert_verify(node, "s3", "o'brien@corp.test", FOUND)
    assert_verify(node, "s3", "x'or'1'='1@corp.test", MISSING)


@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
def test_sql_bad_credentials_and_down(node, kind, request):
    srv = request.getfixturevalue("mariadb" if kind == "mysql" else "pgsql")
    srv.ensure()
    add_sql(node, "badpw", kind, srv, password="wrong-password")
    rc, out = vtest(node, "badpw", "alice@corp.test")
    assert rc == ERROR, out
    add_sql(node, "s", kind, srv, extra=("--mode", "cache"))
    assert_verify(node, "s", "alice@corp.test", FOUND)
    srv.stop()
    try:
        # a cached answer still answers; anything else is an error, never missing
        assert_verify(node, "s", "alice@corp.test", FOUND)
        rc, out = vtest(node, "s", "bob@corp.test")
        assert rc == ERROR, out
        assert "detail=" in out
        rc, out = vtest(node, "s", "nobody@corp.test")
        assert rc == ERROR, out
    finally:
        srv.start()
    assert_verify(node, "s", "bob@corp.test", FOUND)
    # errors were not cached
    assert_verify(node, "s", "nobody@corp.test", MISSING)


def test_fallback_mysql_then_localdb(node, mariadb):
    mariadb.ensure()
    node.ctl("verify", "add", "local", "--type", "localdb")
    add_sql(node, "seed", "mysql", mariadb, extra=("--fallback", "local"))
    out = assert_verify(node, "seed", "alice@corp.test", FOUND)
    assert "profile=seed" in out
    out = assert_verify(node, "seed", "alice@example.test", FOUND)
    assert "profile=local" in out
    out = assert_verify(node, "seed", "nobody@example.test", MISSING)
    assert "profile=local" in out
    # the first profile down: an error, the fallback is not asked
    add_sql(node, "seedbad", "mysql", mariadb, password="wrong", extra=("--fallback", "local"))
    rc, out = vtest(node, "seedbad", "alice@example.test")
    assert rc == ERROR and "profile=seedbad" in out


# ---- ldap ----

def add_ldap(node, name, srv, filt="(mail=%m)", bind=True, extra=()):
    args = ["verify", "add", name, "--type", "ldap", "--url", srv.url(), "--base", SUFFIX,
            "--filter", filt] + list(extra)
    if bind:
        args += ["--bind-dn", LDAP_READER, "--bind-password-stdin"]
    node.ctl(*args, input=LDAP_READER_PW + "\n" if bind else None)


def test_ldap_found_missing_route_injection(node, slapd):
    slapd.ensure()
    add_ldap(node, "dir", slapd)
    out = assert_verify(node, "dir", "alice@corp.test", FOUND)
    assert "route=127.0.0.1:2525" in out
    out = assert_verify(node, "dir", "bob@corp.test", FOUND)
    assert "route=" not in out
    assert_verify(node, "dir", "o'brien@corp.test", FOUND)
    assert_verify(node, "dir", "nobody@corp.test", MISSING)
    for a in ("*@corp.test", "*)(uid=*@corp.test", "a)(|(objectClass=*)@corp.test",
              "*)(mail=*@corp.test", "alice\\2a@corp.test", "*"):
        assert_verify(node, "dir", a, MISSING)
    assert "bind-dn" not in node.ctl("verify", "list").stdout
    assert LDAP_READER_PW not in node.ctl("verify", "list").stdout


def test_ldap_ad_proxyaddresses_anonymous(node, slapd):
    slapd.ensure()
    add_ldap(node, "ad", slapd, filt="(|(mail=%m)(proxyAddresses=smtp:%m))", bind=False)
    assert_verify(node, "ad", "carol@corp.test", FOUND)
    assert_verify(node, "ad", "c.smith@corp.test", FOUND)
    assert_verify(node, "ad", "alice@corp.test", FOUND)
    assert_verify(node, "ad", "smith@corp.test", MISSING)
    assert_verify(node, "ad", "*)(proxyAddresses=*@corp.test", MISSING)
    add_ldap(node, "uid", slapd, filt="(uid=%u)", bind=False)
    assert_verify(node, "uid", "bob@anything.test", FOUND)
    assert_verify(node, "uid", "*@anything.test", MISSING)


def test_ldap_bad_credentials_and_down(node, slapd):
    slapd.ensure()
    node.ctl("verify", "add", "badbind", "--type", "ldap", "--url", slapd.url(), "--base",
             SUFFIX, "--filter", "(mail=%m)", "--bind-dn", LDAP_READER,
             "--bind-password-stdin", input="wrong\n")
    rc, out = vtest(node, "badbind", "alice@corp.test")
    assert rc == ERROR, out
    add_ldap(node, "dir", slapd)
    assert_verify(node, "dir", "alice@corp.test", FOUND)
    slapd.stop()
    try:
        rc, out = vtest(node, "dir", "alice@corp.test")
        assert rc == ERROR, out
        rc, out = vtest(node, "dir", "nobody@corp.test")
        assert rc == ERROR, out
    finally:
        slapd.start()
    assert_verify(node, "dir", "alice@corp.test", FOUND)


# ---- configuration errors are told apart from a backend that is down ----
# Both answer "error" (exit 2; 451 4.4.3 at RCPT), but a profile the server
# refuses (bad credentials, unknown column, no such base DN) is logged at
# error level as verify.config_error naming the profile.

def vtest_full(k, profile, address):
    p = k.ctl("verify", "test", profile, address, check=False)
    assert p.returncode in (0, 1, 2), p.stderr
    return p.returncode, p.stdout, p.stderr


def assert_config_error(k, profile, address="alice@corp.test"):
    rc, out, err = vtest_full(k, profile, address)
    assert rc == ERROR, out
    assert "event=verify.config_error" in err and "profile=%s" % profile in err, (out, err)
    assert "level=error" in err, err


def assert_temp_error(k, profile, address="alice@corp.test"):
    rc, out, err = vtest_full(k, profile, address)
    assert rc == ERROR, out
    assert "verify.config_error" not in err, err


@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
def test_sql_config_errors_apart_from_down(node, kind, request):
    srv = request.getfixturevalue("mariadb" if kind == "mysql" else "pgsql")
    srv.ensure()
    add_sql(node, "badpw", kind, srv, password="wrong-password")
    assert_config_error(node, "badpw")
    add_sql(node, "badcol", kind, srv, query="select nosuchcolumn from mailusers where email='%m'")
    assert_config_error(node, "badcol")
    add_sql(node, "badtable", kind, srv, query="select 1 from nosuchtable where email='%m'")
    assert_config_error(node, "badtable")
    add_sql(node, "good", kind, srv)
    assert_verify(node, "good", "alice@corp.test", FOUND)
    assert_config_error(node, "nosuchprofile")
    srv.stop()
    try:
        assert_temp_error(node, "good")
    finally:
        srv.start()
    assert_verify(node, "good", "alice@corp.test", FOUND)


def test_ldap_config_errors_apart_from_down(node, slapd):
    slapd.ensure()
    node.ctl("verify", "add", "badbind", "--type", "ldap", "--url", slapd.url(), "--base",
             SUFFIX, "--filter", "(mail=%m)", "--bind-dn", LDAP_READER,
             "--bind-password-stdin", input="wrong\n")
    assert_config_error(node, "badbind")
    node.ctl("verify", "add", "badbase", "--type", "ldap", "--url", slapd.url(), "--base",
             "ou=nosuch," + SUFFIX, "--filter", "(mail=%m)", "--bind-dn", LDAP_READER,
             "--bind-password-stdin", input=LDAP_READER_PW + "\n")
    assert_config_error(node, "badbase")
    add_ldap(node, "dir", slapd)
    assert_verify(node, "dir", "alice@corp.test", FOUND)
    slapd.stop()
    try:
        assert_temp_error(node, "dir")
    finally:
        slapd.start()
    assert_verify(node, "dir", "alice@corp.test", FOUND)


def test_config_error_at_rcpt_is_451_and_logged(kale_factory, slapd):
    """smtpd answers a profile's configuration error as it does a backend
    that is down (451 4.4.3, never 550), and kaled's log names the profile
    at error level."""
    slapd.ensure()
    k = kale_factory(start=False)
    k.ctl("verify", "add", "badbind", "--type", "ldap", "--url", slapd.url(), "--base",
          SUFFIX, "--filter", "(mail=%m)", "--bind-dn", LDAP_READER,
          "--bind-password-stdin", input="wrong\n")
    k.ctl("domain", "add", "corp.test", "--relay", "127.0.0.1:9", "--verify", "badbind")
    k.start()
    with SmtpRaw(k.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@corp.test>"), 451, "4.4.3")
        smtp_expect(c.cmd("RCPT TO:<nobody@corp.test>"), 451, "4.4.3")
    assert kale_wait(lambda: "event=verify.config_error" in k.log_text(), 10), k.log_text()[-3000:]
    line = [x for x in k.log_text().splitlines() if "event=verify.config_error" in x][0]
    assert "level=error" in line and "profile=badbind" in line, line


# ---- the lookup pool (kalectl verify test NAME -): pooled connections ----

class PoolClient:
    """`kalectl verify test NAME -`: one lookup pool in one process; the
    backend connections are kept between lines, as in smtpd."""

    def __init__(self, k, profile):
        import subprocess
        from conftest import bin_path
        self.p = subprocess.Popen([bin_path("kalectl"), "-c", k.conf, "verify", "test", profile,
                                   "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, address):
        self.p.stdin.write(address + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, "kalectl verify test - died: %s" % self.p.stderr.read()
        return line.split()[0], line

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(timeout=30)
        self.p.stdout.close()
        self.p.stderr.close()
        return rc


@pytest.mark.parametrize("kind", ["mysql", "pgsql", "ldap"])
def test_pool_reconnects_after_restart(node, kind, request):
    srv = request.getfixturevalue({"mysql": "mariadb", "pgsql": "pgsql", "ldap": "slapd"}[kind])
    srv.ensure()
    if kind == "ldap":
        add_ldap(node, "p", srv)
    else:
        add_sql(node, "p", kind, srv)
    c = PoolClient(node, "p")
    try:
        for _ in range(3):
            assert c.ask("alice@corp.test")[0] == "found"
            assert c.ask("nobody@corp.test")[0] == "missing"
        assert c.ask("x'or'1'='1@corp.test")[0] == "missing"
        srv.stop()
        try:
            word, line = c.ask("alice@corp.test")
            assert word == "error", line
            word, line = c.ask("nobody@corp.test")
            assert word == "error", line
        finally:
            srv.start()
        # the same process, a new connection
        word, line = c.ask("alice@corp.test")
        assert word == "found", line
        assert c.ask("nobody@corp.test")[0] == "missing"
    finally:
        rc = c.close()
    assert rc == ERROR    # the worst answer of the run


def test_pool_localdb_fallback_many(node, mariadb):
    mariadb.ensure()
    node.ctl("verify", "add", "local", "--type", "localdb", "--mode", "cache")
    add_sql(node, "seed", "mysql", mariadb, extra=("--fallback", "local", "--mode", "cache"))
    c = PoolClient(node, "seed")
    try:
        for i in range(20):
            assert c.ask("alice@corp.test")[0] == "found"
            word, line = c.ask("alice@example.test")
            assert word == "found" and "profile=local" in line, line
            word, line = c.ask("u%d@example.test" % i)
            assert word == "missing" and "profile=local" in line, line
    finally:
        rc = c.close()
    assert rc == MISSING


# ---- a backend that accepts connections but never answers ----

@pytest.fixture
def silent_port():
    """A loopback port that accepts TCP connections and never says a word."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns = []
    yield s.getsockname()[1]
    for x in conns:
        x.close()
    s.close()


def test_silent_backends_time_out_as_error(node, silent_port):
    port = silent_port
    node.ctl("verify", "add", "m", "--type", "mysql", "--timeout", "1",
             "--url", "mysql://u:p@127.0.0.1:%d/db" % port,
             "--query", "select 1 from t where e='%m'")
    node.ctl("verify", "add", "p", "--type", "pgsql", "--timeout", "1",
             "--url", "postgresql://u:p@127.0.0.1:%d/db" % port,
             "--query", "select 1 from t where e='%m'")
    node.ctl("verify", "add", "l", "--type", "ldap", "--timeout", "1",
             "--url", "ldap://127.0.0.1:%d" % port, "--base", "dc=x", "--filter", "(mail=%m)")
    assert "timeout 1s" in node.ctl("verify", "list").stdout
    for prof in ("m", "p", "l"):
        rc, out = vtest(node, prof, "alice@corp.test")
        assert rc == ERROR, (prof, out)
    # nothing listens at all: connection refused
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    node.ctl("verify", "add", "m2", "--type", "mysql",
             "--url", "mysql://u:p@127.0.0.1:%d/db" % dead,
             "--query", "select 1 from t where e='%m'")
    node.ctl("verify", "add", "l2", "--type", "ldap",
             "--url", "ldap://127.0.0.1:%d" % dead, "--base", "dc=x", "--filter", "(mail=%m)")
    node.ctl("verify", "add", "p2", "--type", "pgsql",
             "--url", "postgresql://u:p@127.0.0.1:%d/db" % dead,
             "--query", "select 1 from t where e='%m'")
    for prof in ("m2", "p2", "l2"):
        rc, out = vtest(node, prof, "alice@corp.test")
        assert rc == ERROR, (prof, out)


# ---- LDAP over TLS: ldaps:// and StartTLS ----
# libldap takes its trust anchors from /etc/ldap/ldap.conf or LDAPTLS_CACERT.

@pytest.mark.parametrize("how", ["ldaps", "starttls"])
def test_ldap_tls(node, slapd, monkeypatch, how):
    slapd.ensure()
    url = slapd.tls_url() if how == "ldaps" else slapd.url()
    extra = ["--starttls"] if how == "starttls" else []
    node.ctl("verify", "add", "tls", "--type", "ldap", "--url", url, "--base", SUFFIX,
             "--filter", "(mail=%m)", "--bind-dn", LDAP_READER, "--bind-password-stdin", *extra,
             input=LDAP_READER_PW + "\n")
    monkeypatch.setenv("LDAPTLS_CACERT", slapd.cacert)
    monkeypatch.setenv("LDAPTLS_REQCERT", "demand")
    out = assert_verify(node, "tls", "alice@corp.test", FOUND)
    assert "route=127.0.0.1:2525" in out
    assert_verify(node, "tls", "nobody@corp.test", MISSING)
    # a server certificate that is not trusted: an error, never "missing"
    monkeypatch.setenv("LDAPTLS_CACERT", slapd.wrong_cacert)
    rc, out = vtest(node, "tls", "alice@corp.test")
    assert rc == ERROR, out
    rc, out = vtest(node, "tls", "nobody@corp.test")
    assert rc == ERROR, out


def test_timed_out_backend_is_not_waited_for_again_at_once(node, silent_port):
    node.ctl("verify", "add", "m", "--type", "mysql", "--timeout", "2",
             "--url", "mysql://u:p@127.0.0.1:%d/db" % silent_port,
             "--query", "select 1 from t where e='%m'")
    c = PoolClient(node, "m")
    try:
        word, line = c.ask("alice@corp.test")
        assert word == "error", line
        word, line = c.ask("bob@corp.test")
        assert word == "error" and "not asked again yet" in line, line
    finally:
        c.close()


# ---- smtp: a probe session to the domain's next hop (another kale node) ----

def test_smtp_probe(kale_factory):
    hop = kale_factory(name="hop", start=False)
    hop.ctl("domain", "add", "corp.test", "--local")
    hop.ctl("user", "add", "alice@corp.test")
    hop.ctl("alias", "add", "sales@corp.test", "alice@corp.test")
    hop.start()
    k = kale_factory(name="edge", start=False)
    k.ctl("domain", "add", "corp.test", "--relay", "127.0.0.1:%d" % hop.port)
    k.ctl("domain", "add", "mx.test", "--relay", "mx")
    k.ctl("verify", "add", "probe", "--type", "smtp", "--mode", "cache", "--timeout", "5")
    assert_verify(k, "probe", "alice@corp.test", FOUND)
    assert_verify(k, "probe", "sales@corp.test", FOUND)
    out = assert_verify(k, "probe", "nobody@corp.test", MISSING)
    assert "5.1.1" in out
    assert " cached" in assert_verify(k, "probe", "nobody@corp.test", MISSING)
    # what cannot be sent in RCPT TO is never sent
    assert_verify(k, "probe", "alice@corp.test>\r\nRSET", MISSING)
    assert_verify(k, "probe", "a b@corp.test", MISSING)
    # no usable route: an error
    assert_verify(k, "probe", "alice@unknown.test", ERROR)
    assert_verify(k, "probe", "alice@mx.test", ERROR)
    assert_verify(k, "probe", "alice@example.test", ERROR)    # a local domain
    # the next hop down: an error (cached answers still answer)
    hop.stop()
    assert_verify(k, "probe", "sales@corp.test", FOUND)
    rc, out = vtest(k, "probe", "bob@corp.test")
    assert rc == ERROR, out
