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
