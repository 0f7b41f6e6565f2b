"""Submission (587-style STARTTLS and 465-style implicit TLS) with SMTP AUTH
against kale's local users: TLS-only AUTH, PLAIN and LOGIN, cancel and bad
base64, fake sender control for the envelope and the From: header, relaying
only after AUTH, and the brute-force brake."""
import base64
import re
import smtplib
import socket
import ssl

import pytest

from conftest import Kale, make_traversable


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def b64(s):
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def sub(tmp_path):
    make_traversable(tmp_path)
    k = Kale(tmp_path, listeners=("smtp", "submission", "submissions"))
    k.ctl("domain", "add", "example.test", "--local")
    k.ctl("user", "add", "bob@example.test", "--password-stdin", input="bob-pw\n")
    k.ctl("user", "add", "alice@example.test", "--password-stdin", input="alice-pw\n")
    k.ctl("alias", "add", "sales@example.test", "bob@example.test,alice@example.test")
    k.ctl("alias", "add", "info@example.test", "alice@example.test")
    k.start()
    yield k
    k.stop()


def submission(k):
    s = smtplib.SMTP("127.0.0.1", k.ports["submission"], timeout=15)
    s.ehlo()
    return s


def logged_in(k, user="bob@example.test", pw="bob-pw"):
    s = submission(k)
    s.starttls(context=tls_ctx())
    s.ehlo()
    s.login(user, pw)
    return s


def test_no_auth_before_tls(sub):
    s = submission(sub)
    assert "starttls" in s.esmtp_features
    assert "auth" not in s.esmtp_features
    assert s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0bob-pw"))[0] == 538
    code, msg = s.docmd("MAIL FROM:<bob@example.test>")
    assert code == 530 and msg.startswith(b"5.7.0"), (code, msg)
    s.quit()


def test_mail_needs_auth_even_after_tls(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
    code, msg = s.docmd("MAIL FROM:<bob@example.test>")
    assert code == 530, (code, msg)
    s.quit()


def test_plain_login_and_send(sub):
    s = logged_in(sub)
    s.sendmail("bob@example.test", ["alice@example.test"],
               "From: Bob <bob@example.test>\r\nSubject: t\r\n\r\nfrom bob\r\n")
    s.quit()
    msgs = sub.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"from bob" in msgs[0]


def test_wrong_password_535(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    code, msg = s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0nope"))
    assert code == 535 and msg.startswith(b"5.7.8"), (code, msg)
    s.close()


def test_empty_password_refused(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    code, _ = s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0"))
    assert code == 535
    s.close()


def test_login_challenge_and_cancel(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    code, msg = s.docmd("AUTH", "LOGIN")
    assert code == 334 and base64.b64decode(msg) == b"Username:"
    code, msg = s.docmd("*")
    assert code == 501, (code, msg)
    # the session goes on: a real LOGIN exchange works
    code, msg = s.docmd("AUTH", "LOGIN " + b64("bob@example.test"))
    assert code == 334 and base64.b64decode(msg) == b"Password:"
    code, msg = s.docmd(b64("bob-pw"))
    assert code == 235 and msg.startswith(b"2.7.0"), (code, msg)
    assert s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0bob-pw"))[0] == 503
    s.quit()


def test_bad_base64_501(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    assert s.docmd("AUTH", "PLAIN !!!notbase64")[0] == 501
    assert s.docmd("AUTH", "PLAIN")[0] == 334
    assert s.docmd("abc")[0] == 501
    assert s.docmd("AUTH", "CRAM-MD5")[0] == 504
    assert s.docmd("NOOP")[0] == 250
    s.quit()


def test_fake_sender_envelope(sub):
    s = logged_in(sub)
    code, msg = s.docmd("MAIL FROM:<alice@example.test>")
    assert code == 553 and msg.startswith(b"5.7.1"), (code, msg)
    code, msg = s.docmd("MAIL FROM:<>")
    assert code == 553, (code, msg)
    # an alias that delivers to bob is his to use; one that does not is not
    assert s.docmd("MAIL FROM:<sales@example.test>")[0] == 250
    s.docmd("RSET")
    assert s.docmd("MAIL FROM:<info@example.test>")[0] == 553
    s.quit()


def test_fake_sender_header(sub):
    s = logged_in(sub)
    with pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail("bob@example.test", ["alice@example.test"],
                   "From: Alice <alice@example.test>\r\nSubject: forged\r\n\r\nx\r\n")
    assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
    s.sendmail("bob@example.test", ["alice@example.test"],
               "From: \"Bob B.\" <BOB@example.test>\r\nSubject: ok\r\n\r\nreal\r\n")
    s.quit()
    msgs = sub.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"real" in msgs[0] and b"forged" not in msgs[0]


def test_relay_only_after_auth(sub):
    s = logged_in(sub)
    assert s.docmd("MAIL FROM:<bob@example.test>")[0] == 250
    assert s.docmd("RCPT TO:<someone@elsewhere.test>")[0] == 250
    s.quit()
    mx = smtplib.SMTP("127.0.0.1", sub.port, timeout=15)
    mx.ehlo()
    assert "auth" not in mx.esmtp_features
    assert mx.docmd("MAIL FROM:<bob@example.test>")[0] == 250
    assert mx.docmd("RCPT TO:<someone@elsewhere.test>")[0] == 554
    mx.quit()


def test_submissions_implicit_tls(sub):
    s = smtplib.SMTP_SSL("127.0.0.1", sub.ports["submissions"], context=tls_ctx(), timeout=15)
    s.ehlo()
    assert "starttls" not in s.esmtp_features
    s.login("alice@example.test", "alice-pw")
    s.sendmail("alice@example.test", ["bob@example.test"],
               "From: alice@example.test\r\nSubject: 465\r\n\r\nover 465\r\n")
    s.quit()
    assert len(sub.wait_messages("bob@example.test", 1)) == 1


def received_header(msg):
    """The first (our) Received: header of a stored message, unfolded."""
    head = msg.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"(?mi)^Received:(.*(?:\n[ \t].*)*)", head)
    assert m, head
    return " ".join(m.group(1).split())


def test_received_protocol_and_tls(sub):
    """RFC 3848 WITH protocol in Received: ESMTPSA after STARTTLS + AUTH (with
    the TLS version and cipher in a comment, as Postfix writes it), ESMTPSA
    on implicit TLS too, ESMTPS for TLS alone and ESMTP for plain SMTP."""
    s = logged_in(sub)
    s.sendmail("bob@example.test", ["alice@example.test"],
               "From: bob@example.test\r\nSubject: r1\r\n\r\nstarttls auth\r\n")
    s.quit()
    r = received_header(sub.wait_messages("alice@example.test", 1)[0])
    assert " with ESMTPSA id " in r, r
    assert re.search(r"\(using TLSv1\.[0-3] with cipher [A-Z0-9_-]+ \(\d+/\d+ bits\)\)", r), r
    assert r.index("(using TLSv1.") < r.index(" by "), r

    s = smtplib.SMTP_SSL("127.0.0.1", sub.ports["submissions"], context=tls_ctx(), timeout=15)
    s.login("alice@example.test", "alice-pw")
    s.sendmail("alice@example.test", ["bob@example.test"],
               "From: alice@example.test\r\nSubject: r2\r\n\r\nimplicit tls\r\n")
    s.quit()
    r = received_header(sub.wait_messages("bob@example.test", 1)[0])
    assert " with ESMTPSA id " in r and "(using TLSv1." in r, r

    mx = smtplib.SMTP("127.0.0.1", sub.port, timeout=15)
    mx.starttls(context=tls_ctx())
    mx.sendmail("carol@other.test", ["alice@example.test"],
                "From: carol@other.test\r\nSubject: r3\r\n\r\ntls only\r\n")
    mx.quit()
    mx = smtplib.SMTP("127.0.0.1", sub.port, timeout=15)
    mx.sendmail("dave@other.test", ["bob@example.test"],
                "From: dave@other.test\r\nSubject: r4\r\n\r\nplain\r\n")
    mx.quit()
    by_subject = {}
    for m in sub.wait_messages("alice@example.test", 2) + sub.wait_messages("bob@example.test", 2):
        subj = re.search(rb"(?m)^Subject: (\S+)", m).group(1).decode()
        by_subject[subj] = received_header(m)
    r = by_subject["r3"]
    assert " with ESMTPS id " in r and "(using TLSv1." in r, r
    r = by_subject["r4"]
    assert " with ESMTP id " in r and "using" not in r, r


def test_plaintext_on_submissions_port_dropped(sub):
    with socket.create_connection(("127.0.0.1", sub.ports["submissions"]), timeout=10) as c:
        c.sendall(b"EHLO x\r\n")
        try:
            data = c.recv(1024)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert b"250" not in data


def test_brute_force_brake(sub):
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    codes = []
    for i in range(3):
        code, msg = s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0bad%d" % i))
        codes.append(code)
        if code == 421:
            break
    # three failures in one session end it; the failures are in the mail log
    assert codes[:2] == [535, 535], codes
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, OSError)):
        for _ in range(3):
            s.docmd("NOOP")
    out = sub.ctl("log", "search", "--action", "auth-failed", "--json").stdout
    assert "bob@example.test" in out


def test_auth_needs_ehlo_and_not_in_transaction(sub):
    s = logged_in(sub)
    assert s.docmd("MAIL FROM:<bob@example.test>")[0] == 250
    assert s.docmd("AUTH", "PLAIN " + b64("\0bob@example.test\0bob-pw"))[0] == 503
    s.quit()


def test_overlong_line_ends_auth_exchange(sub):
    """An over-long line during AUTH left the session in AUTH state, and the
    next command was eaten as AUTH data."""
    s = submission(sub)
    s.starttls(context=tls_ctx())
    s.ehlo()
    code, msg = s.docmd("AUTH", "LOGIN")
    assert code == 334
    code, msg = s.docmd("x" * 5000)
    assert code == 500, (code, msg)
    code, msg = s.docmd("NOOP")
    assert code == 250, (code, msg)
    s.quit()


# ---- fake sender control for the header section, and the added headers ----
# (the From: check used to look at the first From: in the first 64 KiB with
# string hacks: each form below got through it)

from conftest import SmtpRaw, smtp_expect, smtp_qid  # noqa: E402

VICTIM = "alice@example.test"
ME = "bob@example.test"
PAD = "".join("X-Pad-%04d: %s\r\n" % (i, "p" * 60) for i in range(1100))   # > 64 KiB

BYPASSES = [
    ("two mailboxes", "From: <%s>, \"Me\" <%s>\r\n" % (VICTIM, ME)),
    ("angle address in a comment", "From: %s (<%s>)\r\n" % (VICTIM, ME)),
    ("two From: fields", "From: %s\r\nFrom: %s\r\n" % (ME, VICTIM)),
    ("two From: fields, victim first", "From: %s\r\nFrom: %s\r\n" % (VICTIM, ME)),
    ("obs whitespace before the colon", "From : %s\r\n" % VICTIM),
    ("obs tab before the colon", "From\t: %s\r\n" % VICTIM),
    ("lower case name", "from: %s\r\n" % VICTIM),
    ("From: after 64 KiB of headers", PAD + "From: %s\r\n" % VICTIM),
    ("From: after 64 KiB, own From: first", "From: %s\r\n" % ME + PAD + "From: %s\r\n" % VICTIM),
    ("folded second mailbox", "From: %s,\r\n\t%s\r\n" % (ME, VICTIM)),
    ("group with the victim", "From: friends: %s, %s;\r\n" % (ME, VICTIM)),
    ("quoted victim local part", "From: \"alice\"@example.test\r\n"),
    ("display name holding my address", "From: \"%s\" <%s>\r\n" % (ME, VICTIM)),
    ("obs route", "From: <@%s:%s>\r\n" % ("example.test", VICTIM)),
    ("unparseable", "From: %s (unterminated\r\n" % ME),
    ("empty From:", "From: \r\n"),
    ("empty group", "From: undisclosed-recipients:;\r\n"),
    ("Sender: not owned", "From: %s\r\nSender: %s\r\n" % (ME, VICTIM)),
    ("two Sender: fields", "From: %s\r\nSender: %s\r\nSender: %s\r\n" % (ME, ME, ME)),
    ("From: over 16 KiB", "From: %s (%s)\r\n" % (ME, "c" * 17000)),
]

HONEST = [
    ("display name", "From: \"Me\" <%s>\r\n" % ME),
    ("comment", "From: %s (Me)\r\n" % ME),
    ("group of me", "From: me only: %s;\r\n" % ME),
    ("obs spacing", "From :  Bob  < bob @ example.test >\r\n"),
    ("own alias and me", "From: sales@example.test, <%s>\r\n" % ME),
    ("Sender: me", "From: sales@example.test\r\nSender: %s\r\n" % ME),
    ("folded", "From: Bob\r\n <%s>\r\n" % ME),
    ("upper case", "FROM: %s\r\n" % ME.upper()),
]


def stored(msg):
    """A delivered message with LF line ends, split into (header lines, body)."""
    m = msg.replace(b"\r\n", b"\n")
    head, sep, body = m.partition(b"\n\n")
    return head.split(b"\n"), body, bool(sep)


def count_fields(lines, name):
    n = name.lower().encode()
    return sum(1 for l in lines if l.split(b":", 1)[0].rstrip(b" \t").lower() == n)


def test_fake_sender_header_bypasses_refused(sub):
    s = logged_in(sub)
    got = {}
    for what, hdrs in BYPASSES:
        try:
            s.sendmail(ME, [VICTIM], hdrs + "Subject: %s\r\n\r\nforged\r\n" % what)
            got[what] = 250
        except smtplib.SMTPDataError as e:
            assert e.smtp_error.startswith(b"5.7.1"), (what, e.smtp_error)
            got[what] = e.smtp_code
    s.quit()
    assert all(c == 550 for c in got.values()), got
    assert sub.messages(VICTIM) == []


def test_fake_sender_header_honest_forms_pass(sub):
    s = logged_in(sub)
    for what, hdrs in HONEST:
        try:
            s.sendmail(ME, [VICTIM], hdrs + "Subject: %s\r\n\r\nreal\r\n" % what)
        except smtplib.SMTPDataError as e:
            raise AssertionError("%s: %r" % (what, e))
    s.quit()
    msgs = sub.wait_messages(VICTIM, len(HONEST))
    assert len(msgs) == len(HONEST)
    for m in msgs:
        lines, body, _ = stored(m)
        assert body == b"real\n"
        assert count_fields(lines, "From") == 1, lines


def raw_logged_in(k, user=ME, pw="bob-pw"):
    c = SmtpRaw(k.ports["submission"])
    c.ehlo()
    c.starttls()
    c.ehlo()
    smtp_expect(c.cmd("AUTH PLAIN " + b64("\0%s\0%s" % (user, pw))), 235)
    return c


def bdat(c, chunks):
    """MAIL/RCPT done; sends the chunks (the last one with LAST)."""
    for i, ch in enumerate(chunks):
        if isinstance(ch, str):
            ch = ch.encode()
        last = " LAST" if i == len(chunks) - 1 else ""
        c.send(b"BDAT %d%s\r\n" % (len(ch), last.encode()) + ch)
        r = c.reply()
        if last:
            return r
        smtp_expect(r, 250)


def test_fake_sender_header_bdat(sub):
    """The header is tracked across BDAT chunks, even split inside a name."""
    with raw_logged_in(sub) as c:
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        r = bdat(c, ["From: %s\r\nFr" % ME, "om : %s\r\n\r\nforged\r\n" % VICTIM])
        smtp_expect(r, 550, "5.7.1")
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        smtp_qid(bdat(c, ["From: Bob <bo", "b@example.test>\r\n\r\nreal\r\n"]))
        c.cmd("QUIT")
    msgs = sub.wait_messages(VICTIM, 1)
    assert len(msgs) == 1 and msgs[0].endswith(b"\nreal\n"), msgs


def check_added(msg, qid, sender, body):
    lines, got_body, _ = stored(msg)
    for f in ("Date", "Message-ID", "From"):
        assert count_fields(lines, f) == 1, (f, lines)
    assert b"From: " + sender.encode() in lines, lines
    assert b"Message-ID: <%s@mx.kale.test>" % qid.encode() in lines, lines
    date = [l for l in lines if l.startswith(b"Date: ")][0].decode()
    assert re.fullmatch(r"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", date), date
    assert got_body == body, (got_body, body)
    return lines


def test_submission_adds_date_message_id_from(sub):
    """DATA and BDAT, with and without a body, headers only, an empty
    message: the missing fields end up in the header section, the body (dot
    lines included) is untouched."""
    qids = {}
    with raw_logged_in(sub) as c:
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["data"] = smtp_qid(c.data("Subject: data\r\n\r\n.dot line\r\n..two\r\nend\r\n"))
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["data-headers-only"] = smtp_qid(c.data("Subject: data-headers-only\r\n"))
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["bdat"] = smtp_qid(bdat(c, ["Subject: bdat\r\n\r\n", ".dot\r\nx"]))
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["bdat-headers-only"] = smtp_qid(bdat(c, ["Subject: bdat-he", "aders-only"]))
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["empty"] = smtp_qid(c.data(""))
        smtp_expect(c.cmd("MAIL FROM:<%s>" % ME), 250)
        smtp_expect(c.cmd("RCPT TO:<%s>" % VICTIM), 250)
        qids["no-header"] = smtp_qid(c.data("just a line of text\r\nFrom: %s\r\n" % VICTIM))
        c.cmd("QUIT")
    msgs = sub.wait_messages(VICTIM, len(qids))
    assert len(msgs) == len(qids)
    by_qid = {}
    for m in msgs:
        mid = re.search(rb"(?m)^Message-ID: <([0-9A-F]+)@", m)
        assert mid, m
        by_qid[mid.group(1).decode()] = m
    assert set(by_qid) == set(qids.values())
    check_added(by_qid[qids["data"]], qids["data"], ME, b".dot line\n..two\nend\n")
    check_added(by_qid[qids["data-headers-only"]], qids["data-headers-only"], ME, b"")
    check_added(by_qid[qids["bdat"]], qids["bdat"], ME, b".dot\nx\n")
    check_added(by_qid[qids["bdat-headers-only"]], qids["bdat-headers-only"], ME, b"")
    assert b"Subject: bdat-headers-only\n" in by_qid[qids["bdat-headers-only"]]
    check_added(by_qid[qids["empty"]], qids["empty"], ME, b"")
    # a first line that is no header field starts the body: the added
    # fields come before it, with an empty line, and the From: below is body
    check_added(by_qid[qids["no-header"]], qids["no-header"], ME,
                b"just a line of text\nFrom: %s\n" % VICTIM.encode())


def test_submission_keeps_complete_header(sub):
    """A message that has Date:, Message-ID: and From: is stored as sent."""
    msg = ("Date: Mon, 01 Jan 2024 10:00:00 +0100\r\nMessage-ID: <orig@client.test>\r\n"
           "From: Bob <%s>\r\nSubject: complete\r\n\r\nbody\r\n" % ME)
    s = logged_in(sub)
    s.sendmail(ME, [VICTIM], msg)
    s.quit()
    m = sub.wait_messages(VICTIM, 1)[0].replace(b"\r\n", b"\n")
    assert m.endswith(msg.replace("\r\n", "\n").encode()), m
    lines, _, _ = stored(m)
    for f in ("Date", "Message-ID", "From"):
        assert count_fields(lines, f) == 1, (f, lines)


def test_mx_mail_not_changed(sub):
    """Mail from the open MX port gets nothing added."""
    with SmtpRaw(sub.port) as c:
        smtp_qid(c.mail("carol@other.test", [VICTIM], "Subject: mx\r\n\r\nbody\r\n"))
        c.cmd("QUIT")
    m = sub.wait_messages(VICTIM, 1)[0]
    lines, body, _ = stored(m)
    assert body == b"body\n"
    for f in ("Date", "Message-ID", "From"):
        assert count_fields(lines, f) == 0, (f, lines)
