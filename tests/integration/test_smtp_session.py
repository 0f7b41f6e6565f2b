"""SMTP receive path, the protocol itself (MX port): greeting, EHLO
capabilities, HELO, MAIL/RCPT/DATA, BDAT, RSET, NOOP, VRFY, HELP, QUIT,
command ordering, pipelining, STARTTLS (operator.md §5, RFC 5321/3463/2034)."""
import socket

from conftest import (SmtpRaw, smtp_expect, smtp_msg, smtp_qid, smtp_tls_context)


def data_no_rcpt(c):
    """DATA after MAIL but without a recipient: 503 5.5.1, or Postfix's
    554 5.5.1 "no valid recipients"."""
    r = c.cmd("DATA")
    assert r.code in (503, 554), r
    return smtp_expect(r, r.code, "5.5.1")


def test_greeting_names_host(kale):
    with SmtpRaw(kale.port) as c:
        smtp_expect(c.banner, 220)
        assert c.banner.lines[0].split()[0] == "mx.kale.test", c.banner


def test_ehlo_capabilities(kale):
    with SmtpRaw(kale.port) as c:
        r = c.ehlo("client.test")
        assert r.lines[0].split()[0] == "mx.kale.test", r
        for ext in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "CHUNKING",
                    "ENHANCEDSTATUSCODES", "STARTTLS"):
            assert ext in c.ext, "EHLO lacks %s: %r" % (ext, r)
        # default [limits] message_size is 25 MiB
        assert c.ext["SIZE"] == "26214400", r
        # no AUTH on the MX port unless [smtp] auth_on_mx = yes
        assert "AUTH" not in c.ext, r
        assert not any(l.upper().startswith("AUTH=") for l in r.lines), r


def test_ehlo_size_follows_config(kale_factory):
    k = kale_factory(extra_conf="[limits]\nmessage_size = 10000\n")
    with SmtpRaw(k.port) as c:
        c.ehlo()
        assert c.ext.get("SIZE") == "10000", c.ext


def test_helo_then_transaction(kale):
    with SmtpRaw(kale.port) as c:
        smtp_expect(c.cmd("HELO client.test"), 250)
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("helo-path")))
        smtp_expect(c.cmd("QUIT"), 221, "2.0.0")
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"helo-path" in msgs[0]


def test_simple_commands(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("VRFY alice@example.test"), 252, "2.x.x")
        smtp_expect(c.cmd("VRFY nobody@example.test"), 252, "2.x.x")
        smtp_expect(c.cmd("HELP"), 214, "2.0.0")
        r = c.cmd("FROBNICATE now")
        assert r.code in (500, 502), r
        smtp_expect(r, r.code, "5.5.x")
        # kale's XUID exists on sendmail.sock only: unknown on the network
        smtp_expect(c.cmd("XUID 0"), 500, "5.5.1")
        smtp_expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.wait_closed() == b""


def test_commands_case_insensitive(kale):
    with SmtpRaw(kale.port) as c:
        smtp_expect(c.cmd("ehlo client.test"), 250)
        smtp_expect(c.cmd("mail from:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("rcpt to:<Alice@EXAMPLE.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("case")))
    assert len(kale.wait_messages("alice@example.test", 1)) == 1


def test_bad_sequence(kale):
    with SmtpRaw(kale.port) as c:
        # MAIL before HELO/EHLO
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 503, "5.5.1")
        c.ehlo()
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 503, "5.5.1")
        smtp_expect(c.cmd("DATA"), 503, "5.5.1")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 503, "5.5.1")  # nested MAIL
        data_no_rcpt(c)                                                   # no RCPT yet
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 503, "5.5.1")  # RSET cleared MAIL
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_rset_discards_transaction(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("MAIL FROM:<carol@other.test>"), 250, "2.1.0")
        data_no_rcpt(c)
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("after-rset", sender="carol@other.test")))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    assert b"Return-Path: <carol@other.test>" in msgs[0]


def test_two_messages_one_session(kale):
    with SmtpRaw(kale.port) as c:
        q1 = smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("one")))
        q2 = smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("two"),
                             helo=False))
        assert q1 != q2
    msgs = kale.wait_messages("alice@example.test", 2)
    assert len(msgs) == 2


def test_pipelining(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        assert "PIPELINING" in c.ext
        c.send("MAIL FROM:<bob@other.test>\r\nRCPT TO:<alice@example.test>\r\n"
               "RCPT TO:<nobody@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        smtp_expect(c.reply(), 250, "2.1.0")
        smtp_expect(c.reply(), 250, "2.1.5")
        smtp_expect(c.reply(), 550, "5.1.1")
        smtp_expect(c.reply(), 250, "2.1.5")
        smtp_expect(c.reply(), 354)
        c.send(smtp_msg("pipelined").encode() + b".\r\nNOOP\r\nQUIT\r\n")
        smtp_qid(c.reply())
        smtp_expect(c.reply(), 250, "2.0.0")
        smtp_expect(c.reply(), 221, "2.0.0")
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) >= 1 and b"pipelined" in msgs[0]


def test_pipelined_data_refused_without_valid_rcpt(kale):
    """With PIPELINING a DATA after only failed RCPTs must be refused, and the
    text the client sends next (its message) must not run as commands."""
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        c.send("MAIL FROM:<bob@other.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n")
        smtp_expect(c.reply(), 250, "2.1.0")
        smtp_expect(c.reply(), 550, "5.1.1")
        r = c.reply()
        assert r.code in (503, 554), r
        smtp_expect(r, r.code, "5.x.x")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_message_content_and_dot_stuffing(kale):
    body = ("line one\r\n.leading dot\r\n..two dots\r\n.\tdot tab\r\nlast line\r\n")
    with SmtpRaw(kale.port) as c:
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("dots", body)))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    m = msgs[0].replace(b"\r\n", b"\n")
    assert b"\nline one\n.leading dot\n..two dots\n.\tdot tab\nlast line\n" in m, m


def test_empty_body_message(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_expect(c.cmd("DATA"), 354)
        c.send(b".\r\n")
        smtp_qid(c.reply())
    assert len(kale.wait_messages("alice@example.test", 1)) == 1


def test_8bitmime_and_smtputf8(kale):
    sender = "j\u00f6rg@ex\u00e4mple.test"
    body = "Subject: gr\u00fc\u00dfe\r\n\r\nk\u00e4se \u2603\r\n"
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<%s> BODY=8BITMIME SMTPUTF8" % sender), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(body.encode("utf-8")))
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    assert "k\u00e4se \u2603".encode("utf-8") in msgs[0]
    assert ("Return-Path: <%s>" % sender).encode("utf-8") in msgs[0]


def test_utf8_sender_without_smtputf8_refused(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<j\u00f6rg@other.test>")
        assert r.code in (501, 553, 555), r
        smtp_expect(r, r.code, "5.x.x")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_mail_size_param_within_limit(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test> SIZE=1000"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        smtp_qid(c.data(smtp_msg("sized")))


# ---- BDAT / CHUNKING (RFC 3030) ----

def test_bdat_chunks(kale):
    part1 = b"From: <bob@other.test>\r\nSubject: chunked\r\n\r\nfirst part "
    part2 = b"second part\r\n.a line that starts with a dot\r\n"
    part3 = b"third part\r\n"
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        assert "CHUNKING" in c.ext
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        smtp_expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT %d\r\n" % len(part2) + part2)
        smtp_expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT %d LAST\r\n" % len(part3) + part3)
        smtp_qid(c.reply())
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    m = msgs[0].replace(b"\r\n", b"\n")
    # BDAT data is taken as is: no dot-unstuffing
    assert b"first part second part\n.a line that starts with a dot\nthird part\n" in m, m


def test_bdat_zero_last(kale):
    part = b"Subject: bdat0\r\n\r\nbody\r\n"
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(part) + part)
        smtp_expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT 0 LAST\r\n")
        smtp_qid(c.reply())
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"bdat0" in msgs[0]


def test_bdat_reply_counts_octets_on_the_wire(kale):
    """The reply to a chunk counts its octets as sent, before CRLF -> LF: a
    20-octet chunk with one CRLF is "20 octets received", not 19."""
    part1 = b"Subject: wire\r\n\r\nabc"
    part2 = b"def\r\n"
    assert len(part1) == 20
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        r = smtp_expect(c.reply(), 250, "2.0.0")
        assert "20 octets received" in r.text, r
        c.send(b"BDAT %d\r\n" % len(part2) + part2)
        r = smtp_expect(c.reply(), 250, "2.0.0")
        assert "5 octets received" in r.text, r
        c.send(b"BDAT 0 LAST\r\n")
        smtp_qid(c.reply())
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and msgs[0].replace(b"\r\n", b"\n").endswith(b"\n\nabcdef\n")


def test_bdat_last_without_line_end_is_terminated(kale):
    """A LAST chunk that does not end with a line end: the stored message
    still ends with one (and nothing else is added)."""
    part1 = b"Subject: unterminated\r\n\r\nfirst line\r\n"
    part2 = b"no line end here"
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        smtp_expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        smtp_qid(c.reply())
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1
    m = msgs[0].replace(b"\r\n", b"\n")
    assert m.endswith(b"\n\nfirst line\nno line end here\n"), m[-60:]


def test_bdat_before_mail_is_503_and_chunk_is_skipped(kale):
    """BDAT before MAIL/RCPT is 503; its chunk must still be read and thrown
    away, never run as commands (the chunk here is two HELP commands: a
    214 reply would show they ran)."""
    chunk = b"HELP\r\nHELP\r\n"
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        smtp_expect(c.reply(), 503, "5.5.1")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")
        # and after MAIL but before any RCPT
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.code in (503, 554), r
        smtp_expect(r, r.code, "5.5.1")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_data_after_bdat_is_refused(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT 5\r\nhello")
        smtp_expect(c.reply(), 250, "2.0.0")
        smtp_expect(c.cmd("DATA"), 503, "5.5.1")
        smtp_expect(c.cmd("RSET"), 250, "2.0.0")
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


# ---- STARTTLS ----

def test_starttls_session(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        assert "STARTTLS" not in c.ext, c.ext
        assert "AUTH" not in c.ext, c.ext
        smtp_qid(c.mail("bob@other.test", ["alice@example.test"], smtp_msg("over-tls"),
                        helo=False))
        smtp_expect(c.cmd("QUIT"), 221, "2.0.0")
    msgs = kale.wait_messages("alice@example.test", 1)
    assert len(msgs) == 1 and b"over-tls" in msgs[0]


def test_starttls_forgets_ehlo(kale):
    """After TLS all earlier EHLO state is gone (RFC 3207 §4.2): MAIL without a
    new EHLO is a bad sequence."""
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        c.starttls()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 503, "5.5.1")
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")


def test_starttls_forgets_transaction(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        smtp_expect(c.cmd("MAIL FROM:<bob@other.test>"), 250, "2.1.0")
        r = c.cmd("STARTTLS")
        if r.code == 220:
            c.sock = smtp_tls_context().wrap_socket(c.sock)
            c.ehlo()
            smtp_expect(c.cmd("RCPT TO:<alice@example.test>"), 503, "5.5.1")
        else:
            # refusing STARTTLS inside a transaction is fine too
            smtp_expect(r, 503, "5.5.1")


def test_starttls_twice_refused(kale):
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.code in (454, 503, 502), r
        smtp_expect(c.cmd("NOOP"), 250, "2.0.0")


def test_quit_closes(kale):
    s = socket.create_connection(("127.0.0.1", kale.port), timeout=10)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221 2.0.0")
        assert f.readline() == b""
    finally:
        s.close()


def test_auth_refused_on_mx_port(kale):
    """No AUTH on the MX port (auth_on_mx = no): the command is refused and
    does not open relaying, even with a right password."""
    import base64
    cred = base64.b64encode(b"\0alice@example.test\0alice-secret").decode()
    with SmtpRaw(kale.port) as c:
        c.ehlo()
        r = c.cmd("AUTH PLAIN " + cred)
        assert r.code in (502, 503, 504), r
        smtp_expect(r, r.code, "5.x.x")
        c.starttls()
        c.ehlo()
        assert "AUTH" not in c.ext
        r = c.cmd("AUTH PLAIN " + cred)
        assert r.code in (502, 503, 504), r
        smtp_expect(c.cmd("MAIL FROM:<alice@example.test>"), 250, "2.1.0")
        smtp_expect(c.cmd("RCPT TO:<bob@other.test>"), 554, "5.7.1")
