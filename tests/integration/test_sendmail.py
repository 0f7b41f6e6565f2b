"""kale-sendmail: options, -t recipient extraction (Bcc stripped), LF->CRLF,
dot-stuffing, exit codes; first against a tiny SMTP server on the unix
socket, then end to end through a running kaled."""
import os
import socket
import subprocess
import threading

import pytest

from conftest import bin_path


class FakeSmtp:
    """A one-connection-at-a-time SMTP server on <data_dir>/sendmail.sock.
    replies: command verb (EHLO MAIL RCPT DATA END) -> reply line."""

    def __init__(self, path, replies=None, greeting="220 fake ESMTP"):
        self.path = path
        self.replies = replies or {}
        self.greeting = greeting
        self.sessions = []
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(5)
        self.sock.settimeout(30)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(30)
        sess = {"cmds": [], "data": None}
        self.sessions.append(sess)
        f = conn.makefile("rb")
        try:
            conn.sendall(self.greeting.encode() + b"\r\n")
            while True:
                line = f.readline()
                if not line:
                    break
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                sess["cmds"].append(cmd)
                verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
                if verb == "EHLO":
                    conn.sendall(self.replies.get("EHLO", "250-fake\r\n250 8BITMIME").encode()
                                 + b"\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    break
                elif verb == "DATA":
                    r = self.replies.get("DATA", "354 go")
                    conn.sendall(r.encode() + b"\r\n")
                    if not r.startswith("354"):
                        continue
                    data = b""
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                        data += l
                    sess["data"] = data
                    conn.sendall(self.replies.get("END", "250 2.0.0 Ok: queued as X1").encode()
                                 + b"\r\n")
                else:
                    conn.sendall(self.replies.get(verb, "250 ok").encode() + b"\r\n")
        finally:
            f.close()
            conn.close()

    def close(self):
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def node(kale_factory):
    k = kale_factory(start=False)
    os.makedirs(k.data, exist_ok=True)
    return k


def sendmail(k, args, stdin, conf=True, env=None, user=None):
    cmd = [bin_path("kale-sendmail")] + (["-C", k.conf] if conf else []) + list(args)
    e = dict(os.environ)
    e.update(env or {})
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, env=e, user=user)


def fake(k, **kw):
    os.makedirs(os.path.join(k.data, "public"), exist_ok=True)
    return FakeSmtp(os.path.join(k.data, "public", "sendmail.sock"), **kw)


def test_recipients_as_arguments(node):
    srv = fake(node)
    p = sendmail(node, ["-oem", "-odi", "-F", "Some Name", "-oi", "-f", "me@example.test",
                        "bob@example.test", "carol@example.test, Dave <dave@x.test>"],
                 "Subject: hi\n\nline1\n.dot line\n.\nlast")
    srv.close()
    assert p.returncode == 0, p.stderr
    s = srv.sessions[0]
    assert s["cmds"][0] == "EHLO mx.kale.test"
    assert s["cmds"][1] == "MAIL FROM:<me@example.test>"
    assert s["cmds"][2:5] == ["RCPT TO:<bob@example.test>", "RCPT TO:<carol@example.test>",
                              "RCPT TO:<dave@x.test>"]
    # LF -> CRLF, dot-stuffed; with -oi a lone "." line is data
    assert s["data"] == b"Subject: hi\r\n\r\nline1\r\n..dot line\r\n..\r\nlast\r\n"
    assert s["cmds"][-1] == "QUIT"


def test_dot_line_ends_message_without_i(node):
    srv = fake(node)
    p = sendmail(node, ["bob@example.test"], "Subject: x\r\n\r\nbody\r\n.\r\nnot sent\r\n")
    srv.close()
    assert p.returncode == 0, p.stderr
    assert srv.sessions[0]["data"] == b"Subject: x\r\n\r\nbody\r\n"


def test_default_sender_and_local_recipient(node):
    import pwd
    srv = fake(node)
    p = sendmail(node, ["root"], "hello\n")
    srv.close()
    assert p.returncode == 0, p.stderr
    user = pwd.getpwuid(os.getuid()).pw_name
    assert "MAIL FROM:<%s@mx.kale.test>" % user in srv.sessions[0]["cmds"]
    assert "RCPT TO:<root@mx.kale.test>" in srv.sessions[0]["cmds"]


def test_null_sender(node):
    srv = fake(node)
    p = sendmail(node, ["-f", "<>", "bob@example.test"], "hello\n")
    srv.close()
    assert p.returncode == 0, p.stderr
    assert "MAIL FROM:<>" in srv.sessions[0]["cmds"]


def test_extract_recipients_strips_bcc(node):
    srv = fake(node)
    msg = ("From: me@example.test\n"
           "To: \"Smith, John\" <john@example.test>, jane@example.test (Jane)\n"
           "Cc: team: a@example.test, b@example.test;,\n"
           "  folded@example.test\n"
           "Bcc: secret@example.test,\n"
           "\thidden@example.test\n"
           "Subject: extract\n"
           "\n"
           "To: notaheader@example.test\n"
           "Bcc: stays-in-body@example.test\n")
    p = sendmail(node, ["-t", "-i", "extra@example.test"], msg)
    srv.close()
    assert p.returncode == 0, p.stderr
    s = srv.sessions[0]
    rcpts = sorted(c[len("RCPT TO:<"):-1] for c in s["cmds"] if c.startswith("RCPT"))
    assert rcpts == sorted(["extra@example.test", "john@example.test", "jane@example.test",
                            "a@example.test", "b@example.test", "folded@example.test",
                            "secret@example.test", "hidden@example.test"])
    data = s["data"]
    assert b"Bcc: secret" not in data and b"hidden@" not in data
    assert data.startswith(b"From: me@example.test\r\nTo: ")
    assert b"Subject: extract\r\n\r\nTo: notaheader@example.test\r\n" \
           b"Bcc: stays-in-body@example.test\r\n" in data


def test_extract_bcc_last_header_without_body(node):
    srv = fake(node)
    p = sendmail(node, ["-t"], "To: a@example.test\nBcc: b@example.test")
    srv.close()
    assert p.returncode == 0, p.stderr
    s = srv.sessions[0]
    assert "RCPT TO:<b@example.test>" in s["cmds"]
    assert s["data"] == b"To: a@example.test\r\n"


def test_no_recipients(node):
    p = sendmail(node, ["-t"], "Subject: nobody\n\nx\n")
    assert p.returncode == 1
    assert b"no recipients" in p.stderr


@pytest.mark.parametrize("replies,code,text", [
    ({"MAIL": "550 5.7.1 go away"}, 1, b"550 5.7.1 go away"),
    ({"RCPT": "450 4.2.0 try later"}, 75, b"450 4.2.0 try later"),
    ({"END": "554 5.6.0 bad message"}, 1, b"554 5.6.0 bad message"),
    ({"DATA": "451 4.3.0 no"}, 75, b"451 4.3.0 no"),
])
def test_server_errors(node, replies, code, text):
    srv = fake(node, replies=replies)
    p = sendmail(node, ["bob@example.test"], "hello\n")
    srv.close()
    assert p.returncode == code, p.stderr
    assert text in p.stderr


def test_greeting_refused(node):
    srv = fake(node, greeting="554 no service")
    p = sendmail(node, ["bob@example.test"], "hello\n")
    srv.close()
    assert p.returncode == 1
    assert b"554 no service" in p.stderr


def test_no_daemon_is_tempfail(node):
    p = sendmail(node, ["bob@example.test"], "hello\n")
    assert p.returncode == 75
    assert b"cannot reach kaled" in p.stderr


def test_config_from_env(node):
    srv = fake(node)
    p = sendmail(node, ["bob@example.test"], "hi\n", conf=False, env={"KALE_CONF": node.conf})
    srv.close()
    assert p.returncode == 0, p.stderr


def test_bad_options(node):
    p = sendmail(node, ["-bp"], "")
    assert p.returncode == 1
    p = sendmail(node, ["-f"], "")
    assert p.returncode == 1
    p = sendmail(node, ["bo\x01b@example.test"], "x\n")
    assert p.returncode == 1


# ---- end to end through kaled's sendmail.sock ----

def test_inject_through_kaled(kale_factory):
    k = kale_factory()
    assert os.path.exists(os.path.join(k.data, "public", "sendmail.sock"))
    p = sendmail(k, ["-f", "robot@example.test", "alice@example.test"],
                 "Subject: via sendmail\n\n.leading dot\nbody\n")
    assert p.returncode == 0, p.stderr.decode() + k.log_text()[-3000:]
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1, k.log_text()[-3000:]
    assert b"Subject: via sendmail" in msgs[0]
    assert b"\n.leading dot\n" in msgs[0].replace(b"\r\n", b"\n")
    # -t with Bcc: delivered, Bcc not in the stored message
    p = sendmail(k, ["-t"], "To: alice@example.test\nBcc: alice@example.test\nSubject: t2\n\nx\n")
    assert p.returncode == 0, p.stderr
    msgs = k.wait_messages("alice@example.test", 2)
    assert len(msgs) == 2
    assert not any(b"Bcc:" in m for m in msgs)
    # an unknown local recipient is refused: exit 1 with the server's reply
    p = sendmail(k, ["nobody@example.test"], "x\n")
    assert p.returncode in (1, 75)
    assert b"nobody@example.test" in p.stderr or b"5" in p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_ordinary_user_sends_only_as_itself(kale_factory):
    """sendmail.sock is reachable by every local user (public/, under a 0751
    data_dir), and a user other than root and run_as may send only as
    itself: a shell account cannot forge mail through the trusted socket."""
    k = kale_factory()
    st = os.stat(os.path.join(k.data, "public"))
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o755
    assert not os.path.exists(os.path.join(k.data, "sendmail.sock"))
    p = sendmail(k, ["-f", "ceo@example.test", "alice@example.test"], "Subject: forged\n\nx\n",
                 user="daemon")
    assert p.returncode != 0
    assert b"553" in p.stderr or b"itself" in p.stderr, p.stderr
    p = sendmail(k, ["alice@example.test"], "Subject: from cron\n\nx\n", user="daemon")
    assert p.returncode == 0, p.stderr.decode() + k.log_text()[-3000:]
    msgs = k.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"Subject: from cron" in msgs[0]
    assert b"daemon@mx.kale.test" in msgs[0]
    assert b"(uid 1 daemon)" in msgs[0], msgs[0][:600]
    p = sendmail(k, ["-f", "ceo@example.test", "alice@example.test"], "Subject: as root\n\nx\n")
    assert p.returncode == 0, p.stderr     # root is trusted with -f


# ---- header fields added to locally injected mail ----

def _header(msg):
    head = msg.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.split(b"\n")


def _count(lines, name):
    n = name.lower().encode()
    return sum(1 for l in lines if l.split(b":", 1)[0].rstrip(b" \t").lower() == n)


def _one_each(msg):
    lines = _header(msg)
    for f in ("Date", "Message-ID", "From"):
        assert _count(lines, f) == 1, (f, msg[:800])
    assert any(l.startswith(b"Message-ID: <") and l.endswith(b"@mx.kale.test>") for l in lines), lines
    return lines


def test_local_injection_adds_missing_headers(kale_factory):
    """Like Postfix's cleanup for local submission: a missing Date:,
    Message-ID: (<QID@hostname>) and From: (the envelope sender) are added
    to the header section; a message that has them is left alone."""
    k = kale_factory()
    p = sendmail(k, ["-f", "robot@example.test", "alice@example.test"],
                 "Subject: bare\n\n.leading dot\nbody\n")
    assert p.returncode == 0, p.stderr.decode() + k.log_text()[-3000:]
    msgs = k.wait_messages("alice@example.test", 1)
    lines = _one_each(msgs[0])
    assert b"From: robot@example.test" in lines, lines
    assert msgs[0].replace(b"\r\n", b"\n").endswith(b"\n\n.leading dot\nbody\n")
    # root without -f: the default sender root@HOSTNAME
    p = sendmail(k, ["alice@example.test"], "no header at all\n")
    assert p.returncode == 0, p.stderr
    msgs = k.wait_messages("alice@example.test", 2)
    m = [x for x in msgs if b"no header at all" in x][0]
    lines = _one_each(m)
    assert b"From: root@mx.kale.test" in lines, lines
    assert m.replace(b"\r\n", b"\n").endswith(b"\n\nno header at all\n"), m
    # complete header: stored exactly as given
    full = ("From: Robot <robot@example.test>\nDate: Mon, 01 Jan 2024 10:00:00 +0000\n"
            "Message-ID: <given@example.test>\nSubject: complete\n\nbody\n")
    p = sendmail(k, ["alice@example.test"], full)
    assert p.returncode == 0, p.stderr
    msgs = k.wait_messages("alice@example.test", 3)
    m = [x for x in msgs if b"Subject: complete" in x][0].replace(b"\r\n", b"\n")
    assert m.endswith(b"\n" + full.encode()), m
    lines = _header(m)
    for f in ("Date", "Message-ID", "From"):
        assert _count(lines, f) == 1, (f, lines)
    assert b"Message-ID: <given@example.test>" in lines


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_local_injection_from_is_login(kale_factory):
    k = kale_factory()
    p = sendmail(k, ["alice@example.test"], "Subject: from cron\n\nx\n", user="daemon")
    assert p.returncode == 0, p.stderr.decode() + k.log_text()[-3000:]
    msgs = k.wait_messages("alice@example.test", 1)
    lines = _one_each(msgs[0])
    assert b"From: daemon@mx.kale.test" in lines, lines
