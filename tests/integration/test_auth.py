"""SMTP AUTH backends through `kalectl auth ...` (issue 6): settings, the
server list, localdb, and the "servers" method against a private Dovecot
(POP3 and IMAP over plain, implicit TLS and STARTTLS)."""
import re

import pytest

from conftest import free_port
from fixtures_dovecot import dovecot  # noqa: F401  (fixture)


@pytest.fixture
def node(kale_factory):
    return kale_factory(start=False)


def auth_test(k, user, password):
    return k.ctl("auth", "test", user, "--password-stdin", input=password + "\n", check=False)


def add_server(k, proto, tls, port, host="127.0.0.1", disabled=False):
    args = ["auth", "server", "add", "--proto", proto, "--tls", tls, "--host", host,
            "--port", str(port)]
    if disabled:
        args.append("--disabled")
    p = k.ctl(*args)
    m = re.search(r"added auth server (\d+)", p.stdout)
    assert m, p.stdout
    return int(m.group(1))


def dovecot_port(dv, proto, tls):
    if tls == "ssl":
        return dv.ports[proto + "s"]
    return dv.ports[proto]


# ---- settings and server list ----

def test_show_defaults_and_set(node):
    out = node.ctl("auth", "show").stdout
    assert "enable: yes" in out
    assert "tls-only: yes" in out
    assert "fake-sender-control: yes" in out
    assert "timeout: 15" in out
    assert "username-format: address" in out
    assert "method: localdb" in out
    node.ctl("auth", "set", "--enable", "no", "--tls-only", "no", "--fake-sender-control", "no",
             "--timeout", "7", "--username-format", "username", "--default-domain", "Example.TEST",
             "--method", "servers")
    out = node.ctl("auth", "show").stdout
    assert "enable: no" in out
    assert "tls-only: no" in out
    assert "fake-sender-control: no" in out
    assert "timeout: 7" in out
    assert "username-format: username" in out
    assert "default-domain: example.test" in out
    assert "method: servers" in out
    node.ctl("auth", "set", "--method", "ldap:corp-dir")
    assert "method: ldap:corp-dir" in node.ctl("auth", "show").stdout


@pytest.mark.parametrize("args", [
    ["--enable", "maybe"], ["--timeout", "0"], ["--timeout", "301"], ["--timeout", "x"],
    ["--username-format", "uid"], ["--default-domain", "bad domain"], ["--method", "pam"],
    ["--method", "ldap:"], ["--method", "ldap:a b"], [],
])
def test_set_bad_values(node, args):
    p = node.ctl("auth", "set", *args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "method: localdb" in node.ctl("auth", "show").stdout


def test_server_add_list_move_del(node):
    a = add_server(node, "pop3", "plain", 110, host="pop.example.test")
    b = add_server(node, "imap", "ssl", 993, host="::1")
    c = add_server(node, "imap", "starttls", 143, host="10.0.0.1", disabled=True)
    rows = [l.split() for l in node.ctl("auth", "server", "list").stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [a, b, c]
    assert rows[0][1:] == ["1", "pop3", "plain", "pop.example.test", "110", "yes"]
    assert rows[1][4] == "::1"
    assert rows[2][6] == "no"
    node.ctl("auth", "server", "move", str(c), "1")
    rows = [l.split() for l in node.ctl("auth", "server", "list").stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [c, a, b]
    assert [r[1] for r in rows] == ["1", "2", "3"]
    node.ctl("auth", "server", "move", str(c), "99")
    rows = [l.split() for l in node.ctl("auth", "server", "list").stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [a, b, c]
    node.ctl("auth", "server", "del", str(a))
    rows = [l.split() for l in node.ctl("auth", "server", "list").stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [b, c]
    assert [r[1] for r in rows] == ["1", "2"]
    p = node.ctl("auth", "server", "del", str(a), check=False)
    assert p.returncode == 1 and "does not exist" in p.stderr


@pytest.mark.parametrize("args", [
    ["--proto", "smtp", "--tls", "plain", "--host", "h", "--port", "1"],
    ["--proto", "pop3", "--tls", "tls", "--host", "h", "--port", "1"],
    ["--proto", "pop3", "--tls", "plain", "--host", "bad host", "--port", "1"],
    ["--proto", "pop3", "--tls", "plain", "--host", "h", "--port", "0"],
    ["--proto", "pop3", "--tls", "plain", "--host", "h", "--port", "65536"],
    ["--proto", "pop3", "--tls", "plain", "--host", "h"],
])
def test_server_add_bad(node, args):
    p = node.ctl("auth", "server", "add", *args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(node.ctl("auth", "server", "list").stdout.splitlines()) == 1


# ---- localdb ----

def test_localdb(node):
    p = auth_test(node, "alice@example.test", "alice-secret")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted: alice@example.test" in p.stdout
    assert "localdb" in p.stdout
    p = auth_test(node, "ALICE@Example.Test", "alice-secret")
    assert p.returncode == 0 and "accepted: alice@example.test" in p.stdout
    p = auth_test(node, "alice@example.test", "wrong")
    assert p.returncode == 1 and "refused" in p.stdout
    p = auth_test(node, "alice@example.test", "")
    assert p.returncode == 1 and "empty password" in p.stdout
    p = auth_test(node, "nobody@example.test", "alice-secret")
    assert p.returncode == 1
    # the default username format wants a full address
    p = auth_test(node, "alice", "alice-secret")
    assert p.returncode == 1 and "full address" in p.stdout


def test_localdb_username_format(node):
    node.ctl("auth", "set", "--username-format", "username", "--default-domain", "example.test")
    p = auth_test(node, "alice", "alice-secret")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted: alice@example.test" in p.stdout
    p = auth_test(node, "alice", "wrong")
    assert p.returncode == 1
    # a full address is still accepted in username mode
    p = auth_test(node, "alice@example.test", "alice-secret")
    assert p.returncode == 0


def test_ldap_unknown_profile(node):
    node.ctl("auth", "set", "--method", "ldap:corp")
    p = auth_test(node, "alice@example.test", "alice-secret")
    assert p.returncode == 2, p.stdout
    assert "no such verification profile" in p.stdout
    p = auth_test(node, "alice@example.test", "")
    assert p.returncode == 1


# ---- servers (Dovecot) ----

@pytest.mark.parametrize("proto", ["pop3", "imap"])
@pytest.mark.parametrize("tls", ["plain", "ssl", "starttls"])
def test_servers_proto_tls(node, dovecot, proto, tls):
    node.ctl("auth", "set", "--method", "servers")
    sid = add_server(node, proto, tls, dovecot_port(dovecot, proto, tls))
    p = auth_test(node, "alice@example.test", "alice-imap-pw")
    assert p.returncode == 0, p.stdout + p.stderr + dovecot.log_text()[-2000:]
    assert "accepted: alice@example.test" in p.stdout
    assert "server %d %s" % (sid, proto) in p.stdout
    p = auth_test(node, "alice@example.test", "wrong-pw")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "refused" in p.stdout
    p = auth_test(node, "alice@example.test", "")
    assert p.returncode == 1


@pytest.mark.parametrize("proto,tls", [("imap", "plain"), ("imap", "starttls"),
                                       ("imap", "ssl"), ("pop3", "plain")])
def test_servers_password_with_quote_and_backslash(node, dovecot, proto, tls):
    node.ctl("auth", "set", "--method", "servers")
    add_server(node, proto, tls, dovecot_port(dovecot, proto, tls))
    p = auth_test(node, "carol@example.test", 'pa"ss\\word')
    assert p.returncode == 0, p.stdout + p.stderr + dovecot.log_text()[-2000:]
    p = auth_test(node, "carol@example.test", 'pa"ss\\wor')
    assert p.returncode == 1, p.stdout
    p = auth_test(node, "carol@example.test", "pa\"ss\\word\u00e9")
    assert p.returncode == 1, p.stdout


def test_servers_order_skip_down(node, dovecot):
    node.ctl("auth", "set", "--method", "servers", "--timeout", "20")
    down = add_server(node, "imap", "plain", free_port())         # closed port
    off = add_server(node, "imap", "plain", free_port(), disabled=True)
    pop = add_server(node, "pop3", "starttls", dovecot.ports["pop3"])
    imap = add_server(node, "imap", "ssl", dovecot.ports["imaps"])
    p = auth_test(node, "bob@example.test", "bob-pop-pw")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "server %d imap" % down in p.stdout and "no answer" in p.stdout
    assert "server %d " % off not in p.stdout
    assert "server %d pop3" % pop in p.stdout
    assert "server %d " % imap not in p.stdout          # the first definite answer wins
    # a definite refusal from the first server that answers ends the check
    p = auth_test(node, "bob@example.test", "nope")
    assert p.returncode == 1, p.stdout
    assert "server %d " % imap not in p.stdout
    # order changed: IMAPS answers first
    node.ctl("auth", "server", "move", str(imap), "1")
    p = auth_test(node, "bob@example.test", "bob-pop-pw")
    assert p.returncode == 0 and "server %d imap" % imap in p.stdout
    assert "server %d " % down not in p.stdout
    # all down: temporary failure
    node.ctl("auth", "server", "del", str(imap))
    node.ctl("auth", "server", "del", str(pop))
    p = auth_test(node, "bob@example.test", "bob-pop-pw")
    assert p.returncode == 2, p.stdout
    # none enabled
    node.ctl("auth", "server", "del", str(down))
    p = auth_test(node, "bob@example.test", "bob-pop-pw")
    assert p.returncode == 2 and "no enabled auth servers" in p.stdout


def test_servers_username_format(node, dovecot):
    node.ctl("auth", "set", "--method", "servers", "--username-format", "username",
             "--default-domain", "corp.test")
    add_server(node, "imap", "starttls", dovecot.ports["imap"])
    p = auth_test(node, "dave", "dave-pw")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted: dave@corp.test" in p.stdout
    p = auth_test(node, "dave", "dave-pw-wrong")
    assert p.returncode == 1
    node.ctl("auth", "set", "--username-format", "address")
    p = auth_test(node, "dave", "dave-pw")
    assert p.returncode == 1 and "full address" in p.stdout
    p = auth_test(node, "dave@corp.test", "dave-pw")
    assert p.returncode == 0


def test_servers_tls_to_plain_port_is_no_answer(node, dovecot):
    """Implicit TLS to a plaintext port fails the handshake: no answer."""
    node.ctl("auth", "set", "--method", "servers", "--timeout", "5")
    add_server(node, "pop3", "ssl", dovecot.ports["pop3"])
    p = auth_test(node, "bob@example.test", "bob-pop-pw")
    assert p.returncode == 2, p.stdout
