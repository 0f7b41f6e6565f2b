"""IMAP server (imapd): login over TLS, the read/flag/move/expunge cycle,
UIDs that persist, IDLE notification of new mail, two sessions on one
mailbox, and hostile input (huge literals, NUL, deep nesting, commands
before login). Mail is delivered by SMTP through the running node."""
import imaplib
import os
import re
import smtplib
import socket
import ssl
import time

import pytest

from conftest import Kale, make_traversable

USER = "bob@example.test"
PASS = "bob-pw"


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def node(tmp_path):
    make_traversable(tmp_path)
    k = Kale(tmp_path, listeners=("smtp", "imap", "imaps"))
    k.ctl("domain", "add", "example.test", "--local")
    k.ctl("user", "add", USER, "--password-stdin", input=PASS + "\n")
    k.start()
    yield k
    if k.proc is not None:
        k.stop()


def deliver(k, subject, body="hello\r\n", count=None):
    before = len(k.messages(USER))
    s = smtplib.SMTP("127.0.0.1", k.ports["smtp"], timeout=30)
    s.sendmail("alice@sender.test", [USER],
               "From: Alice <alice@sender.test>\r\nTo: Bob <%s>\r\nSubject: %s\r\n"
               "Date: Mon, 02 Feb 2026 10:00:00 +0000\r\nMessage-ID: <%s@sender.test>\r\n\r\n%s"
               % (USER, subject, subject.replace(" ", "."), body))
    s.quit()
    got = k.wait_messages(USER, before + 1)
    assert len(got) >= before + 1, "message was not delivered"


def imaps(k):
    m = imaplib.IMAP4_SSL("127.0.0.1", k.ports["imaps"], ssl_context=tls_ctx(), timeout=30)
    m.login(USER, PASS)
    return m


def raw(k, port_name="imap"):
    s = socket.create_connection(("127.0.0.1", k.ports[port_name]), timeout=30)
    f = s.makefile("rb")
    greeting = f.readline()
    assert greeting.startswith(b"* OK")
    return s, f


def raw_selected(k, rcvbuf=None):
    """A raw IMAPS session, logged in, INBOX selected."""
    s = tls_ctx().wrap_socket(socket.create_connection(("127.0.0.1", k.ports["imaps"]), timeout=30),
                              server_hostname="kale")
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN %s %s\r\n" % (USER.encode(), PASS.encode()))
    read_tagged(f, b"a")
    s.sendall(b"b SELECT INBOX\r\n")
    read_tagged(f, b"b")
    return s, f


def read_tagged(f, tag):
    lines = []
    while True:
        line = f.readline()
        assert line, "connection closed; got %r" % lines
        lines.append(line)
        if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
            return lines


def test_plaintext_login_refused_then_starttls(node):
    m = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in m.capabilities
    assert "STARTTLS" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error) as e:
        m.login(USER, PASS)
    assert "PRIVACYREQUIRED" in str(e.value)
    m.starttls(ssl_context=tls_ctx())
    assert "STARTTLS" not in m.capabilities
    assert "AUTH=PLAIN" in m.capabilities
    typ, _ = m.login(USER, PASS)
    assert typ == "OK"
    m.logout()


def test_starttls_discards_injected_plaintext(node):
    s, f = raw(node)
    # the injected LOGIN behind STARTTLS must never be executed
    s.sendall(b"a STARTTLS\r\nb LOGIN bob@example.test bob-pw\r\n")
    assert f.readline().startswith(b"a OK")
    tls = tls_ctx().wrap_socket(s, server_hostname="kale")
    tf = tls.makefile("rb")
    tls.sendall(b"c CAPABILITY\r\n")
    lines = read_tagged(tf, b"c")
    assert lines[-1].startswith(b"c OK")
    assert not any(l.startswith(b"b ") for l in lines)
    tls.sendall(b"d SELECT INBOX\r\n")
    assert read_tagged(tf, b"d")[-1].startswith(b"d BAD")  # still not logged in
    tls.close()


def test_authenticate_plain_and_bad_password(node):
    m = imaplib.IMAP4_SSL("127.0.0.1", node.ports["imaps"], ssl_context=tls_ctx(), timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        m.login(USER, "wrong")
    typ, _ = m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, PASS)).encode())
    assert typ == "OK"
    m.logout()
    node.stop()
    out = node.ctl("log", "search").stdout
    assert "login-failed" in out
    assert re.search(r"\blogin\b.*bob@example.test.*127.0.0.1", out)


def test_read_flag_move_expunge_cycle(node):
    deliver(node, "first message")
    deliver(node, "second message", body="the body text\r\n")
    m = imaps(node)
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"2"]
    typ, data = m.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    assert len(uids) == 2
    typ, data = m.fetch("1", "(FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert typ == "OK"
    meta = data[0][0]
    assert b"ENVELOPE" in meta and b'"first message"' in meta
    assert b"BODYSTRUCTURE (\"text\" \"plain\"" in meta
    assert b"\\Seen" not in meta
    assert data[0][1] == b"Subject: first message\r\n\r\n"
    size = int(re.search(rb"RFC822.SIZE (\d+)", meta).group(1))
    typ, data = m.fetch("1", "(BODY[])")
    assert len(data[0][1]) == size
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    typ, data = m.fetch("2", "(BODY.PEEK[TEXT]<4.4>)")
    assert data[0][1] == b"body"
    typ, data = m.search(None, "BODY", "\"body text\"")
    assert data[0] == b"2"
    typ, data = m.search(None, "UNSEEN")
    assert data[0] == b"2"
    m.store("1", "+FLAGS", "(\\Flagged)")
    typ, data = m.uid("MOVE", uids[1].decode(), "Archive")
    assert typ == "NO"  # no such folder
    m.create("Archive")
    typ, data = m.uid("MOVE", uids[1].decode(), "Archive")
    assert typ == "OK"
    typ, data = m.select("INBOX")
    assert data == [b"1"]
    typ, data = m.status("Archive", "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 1" in data[0]
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert data == [b"1"]
    typ, data = m.select("INBOX")
    assert data == [b"0"]
    m.logout()
    # flags live in the file name in the Archive folder
    names = os.listdir(os.path.join(node.mailbox(USER), ".Archive", "cur"))
    assert len(names) == 1 and names[0].endswith(":2,")


def test_uids_persist_and_uidplus(node):
    deliver(node, "one")
    m = imaps(node)
    typ, data = m.select("INBOX")
    uv1 = m.untagged_responses.get("UIDVALIDITY", [b"?"])[0]
    typ, data = m.uid("FETCH", "1:*", "(UID)")
    uid1 = re.search(rb"UID (\d+)", data[0]).group(1)
    typ, data = m.append("INBOX", "(\\Seen)", None, b"Subject: appended\r\n\r\nx\r\n")
    assert typ == "OK"
    assert b"APPENDUID" in data[0]
    m.logout()
    node.stop()
    node.start()
    m = imaps(node)
    m.select("INBOX")
    assert m.untagged_responses.get("UIDVALIDITY", [b"!"])[0] == uv1
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS)")
    got = [re.search(rb"UID (\d+)", d).group(1) for d in data if isinstance(d, bytes)]
    assert got[0] == uid1 and len(got) == 2
    assert b"\\Seen" in data[1]
    m.logout()
    uidlist = os.path.join(node.mailbox(USER), "kale-uidlist")
    with open(uidlist) as f:
        first = f.readline().split()
    assert first[0] == uv1.decode()


def test_idle_sees_new_mail(node):
    deliver(node, "before idle")
    s = tls_ctx().wrap_socket(socket.create_connection(("127.0.0.1", node.ports["imaps"]), timeout=30),
                              server_hostname="kale")
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    s.sendall(b"a LOGIN %s %s\r\n" % (USER.encode(), PASS.encode()))
    assert read_tagged(f, b"a")[-1].startswith(b"a OK")
    s.sendall(b"b SELECT INBOX\r\n")
    assert read_tagged(f, b"b")[-1].startswith(b"b OK")
    s.sendall(b"c IDLE\r\n")
    assert f.readline().startswith(b"+")
    deliver(node, "during idle")
    line = f.readline()
    assert line == b"* 2 EXISTS\r\n"
    s.sendall(b"DONE\r\n")
    lines = read_tagged(f, b"c")
    assert lines[-1].startswith(b"c OK")
    s.close()


def test_two_sessions_one_mailbox(node):
    deliver(node, "shared")
    a = imaps(node)
    b = imaps(node)
    a.select("INBOX")
    b.select("INBOX")
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    deliver(node, "new one")
    b.noop()
    typ, data = b.search(None, "ALL")
    assert data == [b"1"]
    typ, data = b.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"new one" in data[0][1]
    a.noop()
    typ, data = a.uid("SEARCH", None, "ALL")
    typ2, data2 = b.uid("SEARCH", None, "ALL")
    assert data == data2
    a.logout()
    b.logout()


def test_hostile_literals_and_syntax(node):
    s, f = raw(node)
    # commands before login
    s.sendall(b"a1 SELECT INBOX\r\n")
    assert read_tagged(f, b"a1")[-1].startswith(b"a1 BAD")
    # huge literals: refused without waiting for (or allocating) the data
    s.sendall(b"a2 LOGIN {4294967296}\r\n")
    assert read_tagged(f, b"a2")[-1].startswith(b"a2 BAD")
    s.sendall(b"a3 LOGIN {18446744073709551616}\r\n")
    assert read_tagged(f, b"a3")[-1].startswith(b"a3 BAD")
    # unbalanced and deeply nested parentheses
    s.sendall(b"a4 ID ((\"a\" \"b\")\r\n")
    assert read_tagged(f, b"a4")[-1].startswith(b"a4 BAD")
    s.sendall(b"a5 ID " + b"(" * 10000 + b"\r\n")
    assert read_tagged(f, b"a5")[-1].startswith(b"a5 BAD")
    # NUL in a quoted string and in a literal
    s.sendall(b"a6 LOGIN \"bob\0x\" pw\r\n")
    assert read_tagged(f, b"a6")[-1].startswith(b"a6 BAD")
    s.sendall(b"a7 ID {3}\r\n")
    assert f.readline().startswith(b"+")
    s.sendall(b"a\0b\r\n")
    r = read_tagged(f, b"a7")[-1]
    assert r.startswith(b"a7 BAD") or r.startswith(b"a7 OK")
    s.sendall(b"a8 NOOP\r\n")
    assert read_tagged(f, b"a8")[-1].startswith(b"a8 OK")
    s.close()
    # a non-synchronising huge literal ends the connection
    s, f = raw(node)
    s.sendall(b"b1 LOGIN {18446744073709551615+}\r\n")
    assert read_tagged(f, b"b1")[-1].startswith(b"* BYE")
    s.close()
    # a million parentheses before login: bounded, and the server lives on
    s, f = raw(node)
    try:
        s.sendall(b"c1 ID " + b"(" * 1000000 + b"\r\n")
    except OSError:
        pass
    line = f.readline()
    assert line.startswith(b"* BYE") or line.startswith(b"c1 BAD") or line == b""
    s.close()
    m = imaps(node)
    m.logout()


def test_hostile_after_login(node):
    deliver(node, "target")
    s, f = raw_selected(node)
    s.sendall(b"c APPEND INBOX {4294967296}\r\n")
    assert read_tagged(f, b"c")[-1].startswith(b"c NO [TOOBIG]")
    s.sendall(b"d FETCH 1 (BODY[p)\r\n")      # Cyrus CVE-2004-1013 shape
    assert read_tagged(f, b"d")[-1].startswith(b"d BAD")
    s.sendall(b"e FETCH 1 BODY[HEADER.FIELDS (Subject]\r\n")
    assert read_tagged(f, b"e")[-1].startswith(b"e BAD")
    s.sendall(b"f FETCH 1:* (BODY.PEEK[1.2.3.4.5] BODY.PEEK[]<0.5>)\r\n")
    lines = read_tagged(f, b"f")
    assert lines[-1].startswith(b"f OK")
    s.sendall(b"g SEARCH " + b"NOT " * 5000 + b"ALL\r\n")
    assert read_tagged(f, b"g")[-1].startswith(b"g BAD")
    s.sendall(b"h FETCH 99 FLAGS\r\n")
    assert read_tagged(f, b"h")[-1].startswith(b"h BAD")
    s.sendall(b"h2 SELECT {5}\r\n")
    assert f.readline().startswith(b"+")
    s.sendall(b"IN\0OX\r\n")
    assert read_tagged(f, b"h2")[-1].startswith(b"h2 BAD")
    s.sendall(b"i LOGOUT\r\n")
    assert read_tagged(f, b"i")[-1].startswith(b"* BYE")
    s.close()


def test_sigterm_says_bye(node):
    m = imaps(node)
    m.select("INBOX")
    rc = node.stop()
    assert rc == 0
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        m.noop()
        m.noop()


def test_long_command_then_next_command_no_crash(node):
    """A command near 64 KiB used to free the command buffer and crash imapd
    (memchr on NULL) at the next command, dropping every IMAP session."""
    s = tls_ctx().wrap_socket(socket.create_connection(("127.0.0.1", node.ports["imaps"]), timeout=30),
                              server_hostname="kale")
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN %s %s\r\n" % (USER.encode(), PASS.encode()))
    assert read_tagged(f, b"a")[-1].startswith(b"a OK")
    s.sendall(b"b NOOP " + b"x" * 65529 + b"\r\n")
    read_tagged(f, b"b")
    s.sendall(b"c NOOP\r\n")
    assert read_tagged(f, b"c")[-1].startswith(b"c OK")
    s.close()
    m = imaps(node)          # imapd still serves new sessions
    m.logout()


def test_append_over_one_mib(node):
    """APPEND of a message of 1 MiB or more was refused: the limit was taken
    before the command's first line was in the buffer."""
    m = imaps(node)
    body = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 20000      # ~1.5 MiB
    typ, data = m.append("INBOX", None, None, body)
    assert typ == "OK", data
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    assert typ == "OK" and len(data[0].split()) == 1
    m.logout()


def imapd_pid(k):
    m = re.findall(r"event=child\.start role=imapd worker=\S+ child=(\d+)", k.log_text())
    assert m, "no imapd in the log"
    return int(m[-1])


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_pipelined_fetch_without_reading_stays_bounded(node):
    """A logged-in client that pipelines big FETCHes and reads nothing used to
    make imapd build every reply in memory (+503 MB for 20 x 25 MB)."""
    deliver(node, "big", body=("z" * 998 + "\r\n") * 8000)        # ~8 MB
    pid = imapd_pid(node)
    s, f = raw_selected(node, rcvbuf=4096)
    before = rss_kb(pid)
    s.sendall(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(20)))
    time.sleep(3)
    grown = rss_kb(pid) - before
    s.close()
    assert grown < 80 * 1024, "imapd grew by %d KB" % grown
    m = imaps(node)          # and it still serves others
    m.logout()


def test_preauth_trickle_is_cut(tmp_path):
    """One byte every second kept a not-logged-in IMAP session alive forever
    under an idle timer; the login phase now has a deadline of 2 x
    command_timeout."""
    from conftest import kale_set_limits
    make_traversable(tmp_path)
    k = Kale(tmp_path, listeners=("smtp", "imap"))
    kale_set_limits(k, command_timeout=2)
    k.ctl("domain", "add", "example.test", "--local")
    k.start()
    try:
        s, f = raw(k)
        t0 = time.time()
        closed = False
        while time.time() - t0 < 15:
            try:
                s.sendall(b"x")
            except OSError:
                closed = True
                break
            s.settimeout(1.0)
            try:
                if s.recv(4096) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
        assert closed and time.time() - t0 < 9, "pre-auth session lived %.1fs" % (time.time() - t0)
        s.close()
    finally:
        k.stop()


# ---- big messages: FETCH streams bodies from the file; MIME structure cache ----

_planted = [0]


def plant(k, data):
    """Puts a message file straight into the user's Maildir new/ (quicker than
    SMTP for tens of MB, and lets a test plant bare-LF files)."""
    box = k.mailbox(USER)
    st = os.stat(box)
    _planted[0] += 1
    name = "%d.M%06dP%dQ%d.plant" % (int(time.time()), _planted[0], os.getpid(), _planted[0])
    tmp = os.path.join(box, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, os.path.join(box, "new", name))


def crlf(data):
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def big_message(mb, lf=False):
    eol = b"\n" if lf else b"\r\n"
    line = b"".join(bytes([65 + (i * 7) % 26]) for i in range(76))
    head = (b"From: Alice <alice@sender.test>" + eol + b"To: " + USER.encode() + eol +
            b"Subject: big" + eol + b"MIME-Version: 1.0" + eol +
            b'Content-Type: multipart/mixed; boundary="BB"' + eol + eol)
    n = mb * 1024 * 1024 // (len(line) + len(eol))
    body = b"".join(line[i % 50:] + line[:i % 50] + eol for i in range(n))
    return (head + b"--BB" + eol + b"Content-Type: text/plain" + eol + eol + b"small part" + eol +
            b"--BB" + eol + b"Content-Type: application/octet-stream" + eol + eol + body +
            b"--BB--" + eol)


def read_literal_reply(f, tag):
    """Reads '* n FETCH (NAME {len}' + bytes + ')' and the tagged line; the
    literal's bytes, its declared size and the lines."""
    head = f.readline()
    m = re.match(rb"\* \d+ FETCH \(.*\{(\d+)\}\r\n$", head)
    assert m, head[:200]
    n = int(m.group(1))
    data = f.read(n)
    rest = read_tagged(f, tag)
    return head, data, rest


def sanitized(pid):
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


@pytest.fixture
def bignode(tmp_path):
    from conftest import assert_no_sanitizer_report
    make_traversable(tmp_path)
    k = Kale(tmp_path, listeners=("smtp", "imap", "imaps"),
             extra_conf="[mailbox]\nplaintext_auth = yes\n")
    k.ctl("domain", "add", "example.test", "--local")
    k.ctl("user", "add", USER, "--password-stdin", input=PASS + "\n")
    k.start()
    m = imaps(k)             # the first login creates the Maildir
    m.logout()
    yield k
    if k.proc is not None:
        k.stop()
    assert_no_sanitizer_report(k)


def test_concurrent_big_fetches_stay_bounded(bignode):
    """FETCH BODY[] built each reply whole in memory: 5 clients each reading a
    25 MB message cost imapd +179 MB. Bodies are now streamed from the file
    as each client reads."""
    msg = big_message(20)
    plant(bignode, msg)
    pid = imapd_pid(bignode)
    # about 1.5 MB in a release build; ASan keeps freed chunks in quarantine.
    # The old code held every reply whole: 5 x 20 MB and more.
    limit = (80 if sanitized(pid) else 16) * 1024
    sessions = [raw_selected(bignode, rcvbuf=16384) for _ in range(5)]
    before = rss_kb(pid)
    for i, (s, f) in enumerate(sessions):
        s.sendall(b"f%d FETCH 1 BODY.PEEK[]\r\nn%d NOOP\r\n" % (i, i))
    heads = [f.readline() for s, f in sessions]        # every stream has started
    for h in heads:
        assert re.match(rb"\* 1 FETCH \(BODY\[\] \{%d\}\r\n$" % len(msg), h), h[:200]
    time.sleep(0.5)
    peak = rss_kb(pid) - before
    assert peak < limit, "imapd grew by %d KB" % peak
    for _ in range(4):                                 # slow readers
        time.sleep(0.5)
        peak = max(peak, rss_kb(pid) - before)
        for s, f in sessions:
            f.read(256 * 1024)
    assert peak < limit, "imapd grew by %d KB" % peak
    for i, (s, f) in enumerate(sessions):
        rest = f.read(len(msg) - 4 * 256 * 1024)
        assert rest == msg[4 * 256 * 1024:]
        assert f.readline() == b")\r\n"
        assert f.readline().startswith(b"f%d OK" % i)
        assert read_tagged(f, b"n%d" % i)[-1].startswith(b"n%d OK" % i)   # in order
        s.close()
    if not sanitized(pid):   # ASan's quarantine keeps every freed chunk for a while
        assert rss_kb(pid) - before < limit


def login_plain(k):
    m = imaplib.IMAP4("127.0.0.1", k.ports["imap"], timeout=60)
    m.login(USER, PASS)
    return m


def login_starttls(k):
    m = imaplib.IMAP4("127.0.0.1", k.ports["imap"], timeout=60)
    m.starttls(ssl_context=tls_ctx())
    m.login(USER, PASS)
    return m


def login_imaps(k):
    m = imaplib.IMAP4_SSL("127.0.0.1", k.ports["imaps"], ssl_context=tls_ctx(), timeout=60)
    m.login(USER, PASS)
    return m


@pytest.mark.parametrize("lf", [False, True], ids=["crlf-file", "lf-file"])
def test_big_fetch_exact_over_plain_starttls_imaps(bignode, lf):
    raw_msg = big_message(6, lf=lf)
    plant(bignode, raw_msg)
    msg = crlf(raw_msg)
    text_off = msg.index(b"\r\n\r\n") + 4
    part2 = msg[msg.index(b"application/octet-stream\r\n\r\n") + 28:msg.rindex(b"\r\n--BB--")]
    for login in (login_plain, login_starttls, login_imaps):
        m = login(bignode)
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        assert int(re.search(rb"RFC822.SIZE (\d+)", data[0][0]).group(1)) == len(msg)
        assert data[0][1] == msg, login.__name__
        typ, data = m.fetch("1", "(RFC822)")
        assert data[0][1] == msg
        typ, data = m.fetch("1", "(BODY.PEEK[]<0.100>)")
        assert data[0][1] == msg[:100]
        big = len(msg) - 500
        typ, data = m.fetch("1", "(BODY.PEEK[]<%d.100000>)" % big)
        assert data[0][1] == msg[big:]
        typ, data = m.fetch("1", "(BODY.PEEK[]<%d.10>)" % (len(msg) + 10))
        assert b"{0}" in data[0][0] or data[0][1] == b""
        typ, data = m.fetch("1", "(BODY.PEEK[TEXT])")
        assert data[0][1] == msg[text_off:]
        typ, data = m.fetch("1", "(BODY.PEEK[2]<3000000.5000>)")
        assert data[0][1] == part2[3000000:3005000]
        typ, data = m.fetch("1", "(BODY.PEEK[2] BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (Subject)])")
        assert data[0][1] == part2
        assert data[1][1] == b"small part"
        assert data[2][1] == b"Subject: big\r\n\r\n"
        typ, data = m.fetch("1", "(RFC822.HEADER BODYSTRUCTURE)")
        assert data[0][1] == msg[:text_off]
        assert b'"application" "octet-stream" NIL NIL NIL "7bit" %d' % len(part2) in data[1]
        m.logout()


def test_pipelined_after_big_fetch_answers_in_order(bignode):
    msg = big_message(4)
    plant(bignode, msg)
    s, f = raw_selected(bignode)
    s.sendall(b"a FETCH 1 (UID BODY.PEEK[] FLAGS)\r\nb NOOP\r\nc FETCH 1 BODY.PEEK[]<1.2>\r\n")
    head = f.readline()
    assert re.match(rb"\* 1 FETCH \(UID \d+ BODY\[\] \{%d\}\r\n$" % len(msg), head), head[:100]
    assert f.read(len(msg)) == msg
    assert f.readline() == b" FLAGS (\\Recent))\r\n"
    assert f.readline().startswith(b"a OK")
    assert read_tagged(f, b"b")[-1].startswith(b"b OK")
    lines = read_tagged(f, b"c")
    assert lines[0] == b"* 1 FETCH (BODY[]<1> {2}\r\n"
    assert lines[1].startswith(msg[1:3])
    s.close()


def test_starttls_slow_reader_big_fetch_in_order(bignode):
    """After STARTTLS the TLS filter sits on the socket bufferevent: the
    stream must still follow the client's pace, stay bounded and keep the
    pipelined NOOP behind the literal."""
    msg = big_message(12)
    plant(bignode, msg)
    pid = imapd_pid(bignode)
    limit = (80 if sanitized(pid) else 16) * 1024
    s = socket.create_connection(("127.0.0.1", bignode.ports["imap"]), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a STARTTLS\r\n")
    assert f.readline().startswith(b"a OK")
    t = tls_ctx().wrap_socket(s, server_hostname="kale")
    tf = t.makefile("rb")
    t.sendall(b"b LOGIN %s %s\r\nc SELECT INBOX\r\n" % (USER.encode(), PASS.encode()))
    assert read_tagged(tf, b"c")[-1].startswith(b"c OK")
    before = rss_kb(pid)
    t.sendall(b"d FETCH 1 BODY.PEEK[]\r\ne NOOP\r\n")
    assert tf.readline() == b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg)
    got = b""
    for _ in range(4):
        time.sleep(0.3)
        got += tf.read(200000)
        assert rss_kb(pid) - before < limit
    got += tf.read(len(msg) - len(got))
    assert got == msg
    assert tf.readline() == b")\r\n"
    assert tf.readline().startswith(b"d OK")
    assert read_tagged(tf, b"e")[-1].startswith(b"e OK")
    t.close()


def test_close_during_big_fetch_keeps_serving(bignode):
    """A client that leaves in the middle of a streamed literal: the stream
    and its file go with the session (ASan run checks no use after free)."""
    plant(bignode, big_message(8))
    for _ in range(3):
        s, f = raw_selected(bignode, rcvbuf=8192)
        s.sendall(b"a FETCH 1 BODY.PEEK[]\r\n")
        f.readline()
        f.read(100000)
        s.close()
    m = imaps(bignode)
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[]<0.4>)")
    assert data[0][1] == b"From"
    m.logout()


def test_bodystructure_many_parts_repeated(bignode, monkeypatch):
    """A message of 9,000 parts with long Content-Types: BODYSTRUCTURE and
    sections are served from one parse (the cache), with the same answers
    every time and for every session."""
    parts = []
    for i in range(9000):
        parts.append(b"--p\r\nContent-Type: text/plain; charset=us-ascii; name=\"%s-%d\"\r\n\r\n"
                     b"part %d\r\n" % (b"n" * 300, i, i))
    msg = (b"Subject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n" +
           b"".join(parts) + b"--p--\r\n")
    plant(bignode, msg)
    monkeypatch.setattr(imaplib, "_MAXLINE", 64 * 1024 * 1024)   # one BODYSTRUCTURE line is ~3 MB
    answers = []
    for _ in range(2):
        m = imaps(bignode)
        m.select("INBOX", readonly=True)
        for _ in range(2):
            typ, data = m.fetch("1", "(BODYSTRUCTURE)")
            assert typ == "OK"
            answers.append(data[0] if isinstance(data[0], bytes) else data[0][0])
        typ, data = m.fetch("1", "(BODY BODYSTRUCTURE ENVELOPE BODY.PEEK[8999] BODY.PEEK[9000.MIME])")
        assert typ == "OK"
        assert data[0][1] == b"part 8998"
        assert data[1][1].startswith(b"Content-Type: text/plain; charset=us-ascii; name=")
        assert data[1][1].endswith(b"-8999\"\r\n\r\n")
        m.logout()
    assert all(a == answers[0] for a in answers)
    assert answers[0].count(b'("text" "plain"') == 9000
