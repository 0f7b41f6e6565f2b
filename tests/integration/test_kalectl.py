"""kalectl against a node that is not running: exit codes (0 ok, 1 refused,
2 usage), passwords only from stdin, bulk import with per-line errors, log
search (table and JSON), status/reload with and without a control socket."""
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import Kale, bin_path, make_traversable


@pytest.fixture
def node(tmp_path):
    make_traversable(tmp_path)
    return Kale(tmp_path)


def usage_error(p):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "usage: kalectl" in p.stderr


def refused(p, text=None):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.strip(), "no message on stderr"
    if text is not None:
        assert text in p.stderr, p.stderr


def test_usage_errors(node):
    for args in ([], ["bogus"], ["domain"], ["domain", "frob"],
                 ["domain", "add", "a.test"],
                 ["domain", "add", "a.test", "--local", "--relay", "mx"],
                 ["domain", "add", "a.test", "--local", "--tls", "sometimes"],
                 ["domain", "add", "a.test", "--local", "extra"],
                 ["domain", "set", "a.test"],
                 ["user", "passwd", "a@a.test"],
                 ["alias", "add", "a@a.test"],
                 ["network", "add"],
                 ["log", "search", "--limit", "0"],
                 ["log", "search", "--limit", "x"],
                 ["log", "search", "--since", "yesterday"],
                 ["log", "search", "--colour"],
                 ["queue", "show", "../../etc/passwd"],
                 ["queue", "list", "--json=yes"],
                 ["status", "now"]):
        usage_error(node.ctl(*args, check=False))
    p = subprocess.run([bin_path("kalectl")], capture_output=True, text=True)
    usage_error(p)
    p = subprocess.run([bin_path("kalectl"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: kalectl" in p.stdout


def test_password_never_on_argv(node):
    node.ctl("domain", "add", "example.test", "--local")
    for args in (["user", "add", "bob@example.test", "--password", "hunter2"],
                 ["user", "add", "bob@example.test", "--password=hunter2"],
                 ["user", "add", "bob@example.test", "hunter2"],
                 ["user", "passwd", "bob@example.test", "hunter2"]):
        p = node.ctl(*args, check=False)
        usage_error(p)
    assert "stdin" in node.ctl("user", "add", "b@example.test", "--password", "x",
                               check=False).stderr
    assert node.ctl("user", "list").stdout == ""

    node.ctl("user", "add", "bob@example.test", "--password-stdin", input="hunter2\n")
    node.ctl("user", "add", "nopw@example.test")
    refused(node.ctl("user", "passwd", "bob@example.test", "--password-stdin", input="", check=False),
            "empty password")
    refused(node.ctl("user", "passwd", "bob@example.test", "--password-stdin",
                     input="x" * 2000, check=False), "too long")
    refused(node.ctl("user", "passwd", "ghost@example.test", "--password-stdin", input="pw\n", check=False),
            "no such user")
    node.ctl("user", "passwd", "bob@example.test", "--password-stdin", input="n3w pass\n")
    db = sqlite3.connect(os.path.join(node.data, "kale.db"))
    try:
        rows = dict(db.execute("SELECT address, password_hash FROM users").fetchall())
    finally:
        db.close()
    assert rows["nopw@example.test"] is None
    assert rows["bob@example.test"].startswith("$y$")
    assert "hunter2" not in rows["bob@example.test"]


def test_refused_actions_exit_1(node):
    node.ctl("domain", "add", "example.test", "--local")
    refused(node.ctl("domain", "add", "Example.TEST", "--local", check=False), "already exists")
    refused(node.ctl("domain", "add", "bad_name.test", "--local", check=False))
    refused(node.ctl("domain", "add", "r.test", "--relay", "host:99999", check=False), "port")
    refused(node.ctl("domain", "add", "r.test", "--relay", "a b", check=False))
    for relay in ("mx", "smtp.example.org", "smtp.example.org:2525", "192.0.2.1:25",
                  "[2001:db8::1]", "[2001:db8::1]:2525", "ldap:corp"):
        name = "r%d.test" % abs(hash(relay) % 100000)
        node.ctl("domain", "add", name, "--relay", relay, "--tls", "require",
                 *(["--verify", "none"] if relay.startswith("ldap:") else []))
    # ldap:PROFILE verifies with PROFILE by default: it must exist
    refused(node.ctl("domain", "add", "l.test", "--relay", "ldap:nope", check=False),
            "no verification profile 'nope'")
    refused(node.ctl("user", "add", "a@nowhere.test", check=False), "does not exist")
    node.ctl("user", "add", "a@example.test")
    refused(node.ctl("user", "add", "A@example.test", check=False), "already exists")
    refused(node.ctl("domain", "del", "example.test", check=False),
            "domain has 1 user; delete them first")
    refused(node.ctl("network", "add", "10.0.0.1/8", check=False), "10.0.0.0/8")
    refused(node.ctl("network", "del", "10.0.0.0/8", check=False), "no such network")
    refused(node.ctl("alias", "del", "x@example.test", check=False))
    refused(node.ctl("user", "del", "zz@example.test", check=False))
    refused(node.ctl("domain", "set", "nowhere.test", "--verify", "p", check=False))
    # nothing changed by the refused commands
    assert node.ctl("user", "list").stdout == "a@example.test\n"


def test_policy_round_trip(node):
    node.ctl("domain", "add", "example.test", "--local", "--verify", "none")
    node.ctl("domain", "add", "relay.test", "--relay", "[::1]:2525")
    refused(node.ctl("domain", "set", "relay.test", "--verify", "corp", check=False),
            "no verification profile")
    node.ctl("verify", "add", "corp", "--type", "localdb")
    node.ctl("domain", "set", "relay.test", "--verify", "corp")
    out = node.ctl("domain", "list").stdout.splitlines()
    assert out[0].split() == ["DOMAIN", "TYPE", "ROUTE", "TLS", "VERIFY", "FILTER"]
    assert out[1].split() == ["example.test", "local", "-", "opportunistic", "-", "default"]
    assert out[2].split() == ["relay.test", "relay", "[::1]:2525", "opportunistic", "corp", "default"]
    # columns are aligned
    assert out[0].index("TYPE") == out[1].index("local") == out[2].index("relay ")

    node.ctl("user", "add", "alice@example.test")
    node.ctl("alias", "add", "info@example.test", "alice@example.test, o'brien@other.test")
    out = node.ctl("alias", "list").stdout
    assert "info@example.test" in out and "alice@example.test,o'brien@other.test" in out
    refused(node.ctl("alias", "add", "x@relay.test", "alice@example.test", check=False),
            "not a local domain")
    node.ctl("network", "add", "192.168.0.0/16")
    node.ctl("network", "add", "2001:DB8::/32")
    assert node.ctl("network", "list").stdout == "192.168.0.0/16\n2001:db8::/32\n"
    node.ctl("network", "del", "2001:db8::/32")
    node.ctl("alias", "del", "info@example.test")
    node.ctl("user", "del", "alice@example.test")
    node.ctl("domain", "del", "example.test")
    assert "example.test" not in node.ctl("domain", "list").stdout

    # $KALE_CONF is used when -c is absent
    env = dict(os.environ, KALE_CONF=node.conf)
    p = subprocess.run([bin_path("kalectl"), "domain", "list"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0 and "relay.test" in p.stdout


def test_import_with_bad_lines(node):
    node.ctl("domain", "add", "example.test", "--local")
    node.ctl("domain", "add", "relay.test", "--relay", "mx")
    csv = os.path.join(node.dir, "users.csv")
    with open(csv, "w") as f:
        f.write("address,password\n"            # 1
                "# comment\n"                    # 2
                "one@example.test,pw1\n"         # 3
                "\n"                             # 4
                "two@example.test\n"             # 5
                "bad address@example.test\n"     # 6
                "three@relay.test,pw\n"          # 7
                "one@example.test,again\n"       # 8
                "x'or'1'='1@example.test\n"      # 9
                "four@example.test,p,w\n")       # 10
    os.chmod(csv, 0o644)
    p = node.ctl("user", "import", csv, check=False)
    assert p.returncode == 1
    assert "imported 4 users, 3 bad lines" in p.stdout
    lines = [l for l in p.stderr.splitlines() if l.startswith("line ")]
    assert [l.split(":")[0] for l in lines] == ["line 6", "line 8", "line 9"]
    assert "already exists" in lines[1]
    # three@relay.test is a LocalDB user of the relay domain
    assert node.ctl("user", "list").stdout.split() == [
        "four@example.test", "one@example.test", "two@example.test", "three@relay.test"]
    refused(node.ctl("user", "import", os.path.join(node.dir, "missing.csv"), check=False),
            "cannot open")

    good = os.path.join(node.dir, "good.csv")
    with open(good, "w") as f:
        for i in range(2000):
            f.write("u%d@example.test\n" % i)
    os.chmod(good, 0o644)
    p = node.ctl("user", "import", good)
    assert "imported 2000 users, 0 bad lines" in p.stdout


def add_log_rows(node, rows):
    db = sqlite3.connect(os.path.join(node.data, "kale.db"))
    try:
        db.executemany(
            "INSERT INTO maillog(ts, qid, client, helo, sender, rcpt, action, code, reason, "
            "profile, relay, size, delay_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.commit()
    finally:
        db.close()


def test_log_search(node):
    node.ctl("domain", "list")            # creates the store
    now = int(time.time())
    add_log_rows(node, [
        (now - 10, "AAAA", "192.0.2.1", "h", "alice@example.org", "bob@example.test",
         "accepted", "250 2.0.0", "queued", None, None, 100, 5),
        (now - 7200, "BBBB", "2001:db8::1", "h", "", "carol@example.test",
         "rejected", "550 5.1.1", "unknown user", "local", None, 0, 0),
        (now - 86400 * 3, "CCCC", "192.0.2.1", "h", "x'or'1'='1@evil.test",
         "bob@example.test", "delivered", "250", "ok \x1b[31m", None, "mail/x", 10, 20),
    ])
    rows = json.loads(node.ctl("log", "search", "--json").stdout)
    assert [r["qid"] for r in rows] == ["AAAA", "BBBB", "CCCC"]
    assert rows[0]["from"] == "alice@example.org" and rows[0]["to"] == "bob@example.test"
    assert rows[0]["size"] == 100 and rows[0]["ts"] == now - 10
    assert rows[1]["from"] == "" and rows[1]["action"] == "rejected"

    def qids(*args):
        return [r["qid"] for r in json.loads(node.ctl("log", "search", "--json", *args).stdout)]
    assert qids("--to", "bob@") == ["AAAA", "CCCC"]
    assert qids("--from", "x'or'1'='1") == ["CCCC"]
    assert qids("--from", "' OR 1=1 --") == []
    assert qids("--ip", "2001:db8::1") == ["BBBB"]
    assert qids("--action", "rejected") == ["BBBB"]
    assert qids("--since", "1h") == ["AAAA"]
    assert qids("--since", "1d") == ["AAAA", "BBBB"]
    assert qids("--since", "2000-01-01") == ["AAAA", "BBBB", "CCCC"]
    assert qids("--since", "2999-01-01T00:00:00Z") == []
    assert qids("--limit", "1") == ["AAAA"]

    out = node.ctl("log", "search").stdout.splitlines()
    assert out[0].split() == ["TIME", "QID", "ACTION", "FROM", "TO", "CLIENT", "CODE", "REASON"]
    assert len(out) == 4
    assert "<>" in out[2]
    assert "\x1b" not in "".join(out)        # control characters are not passed through
    assert out[0].index("QID") == out[1].index("AAAA") == out[3].index("CCCC")


def test_status_and_reload_without_daemon(node):
    p = node.ctl("status")
    assert p.stdout.splitlines() == ["daemon: not running", "queue: 0 queued, 0 held"]
    refused(node.ctl("reload", check=False), "daemon not running")
    assert json.loads(node.ctl("queue", "list", "--json").stdout) == []
    refused(node.ctl("queue", "show", "0" * 24, check=False), "no message")


def serve_once(path, reply, got):
    """A stand-in for kaled's control socket: one connection, one reply."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.getcwd()
    os.chdir(os.path.dirname(path))          # sun_path is short; bind relative
    try:
        srv.bind(os.path.basename(path))
    finally:
        os.chdir(old)
    os.chmod(path, 0o777)                    # kalectl may run as run_as
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            got.append(data)
            conn.sendall(reply)
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_status_and_reload_with_socket(node):
    node.ctl("status")                        # creates data_dir
    sock = os.path.join(node.data, "control.sock")
    got = []
    t = serve_once(sock, b"ok\ndaemon: running\nlisten: smtp 127.0.0.1:2525\n", got)
    p = node.ctl("status")
    t.join(10)
    assert got == [b"status\n"]
    assert p.stdout == "daemon: running\nlisten: smtp 127.0.0.1:2525\n"
    os.unlink(sock)

    got = []
    t = serve_once(sock, b"error config broken: line 3\n", got)
    p = node.ctl("reload", check=False)
    t.join(10)
    assert got == [b"reload\n"]
    refused(p, "config broken: line 3")
    os.unlink(sock)

    got = []
    t = serve_once(sock, b"ok\n", got)
    p = node.ctl("reload")
    t.join(10)
    assert got == [b"reload\n"]
    os.unlink(sock)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_files_owned_by_run_as(node):
    import pwd
    node.ctl("domain", "add", "example.test", "--local")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert os.stat(node.data).st_uid == nobody
    assert os.stat(os.path.join(node.data, "kale.db")).st_uid == nobody
    assert os.stat(node.data).st_mode & 0o777 == 0o750
