"""Shared fixtures for kale's integration tests: each test gets its own kale
node in a temp dir, on free loopback ports, started from the build tree named
by $KALE_BUILD (default: build/)."""
import os
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("KALE_BUILD", "build"))


def bin_path(name):
    return os.path.join(BUILD, name)


def _port_range():
    """Ports below the kernel's ephemeral range: a port that bind(0) handed
    out and that was closed again can be taken by any outgoing connection
    (a DNS query, a relay, kalectl) before the daemon it was meant for binds
    it, which made "Address already in use" flakes; no connect() ever picks
    a port outside that range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - 1024 >= 8000:
        return max(1024, low - 12000), low
    return high + 1, 65536


_PORTS = _port_range()
_next_port = [_PORTS[0] + (os.getpid() * 7919) % (_PORTS[1] - _PORTS[0])]


def free_port():
    """A loopback TCP port nobody uses now, outside the ephemeral range, and
    not handed out before by this test run (bounded: one pass over the range)."""
    lo, hi = _PORTS
    for _ in range(hi - lo):
        port = _next_port[0]
        _next_port[0] = lo + (port + 1 - lo) % (hi - lo)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise AssertionError("no free port in %d-%d" % (lo, hi))


_quiet_dns = None


def quiet_dns_port():
    """A DNS server on loopback that knows no name (NXDOMAIN for every
    question), shared by the nodes whose test brings no DNS of its own: the
    default filter policy checks SPF, and no test may ask the real DNS."""
    global _quiet_dns
    if _quiet_dns is None:
        from dnsserver import DnsServer
        _quiet_dns = DnsServer({})
        _quiet_dns.start()
    return _quiet_dns.port


def wait_port(port, host="127.0.0.1", timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Kale:
    """One kale node: config, data dir, daemon process, kalectl."""

    def __init__(self, tmp_path, extra_conf="", listeners=("smtp",)):
        self.dir = str(tmp_path)
        self.data = os.path.join(self.dir, "var")
        self.conf = os.path.join(self.dir, "kale.conf")
        self.logfile = os.path.join(self.dir, "kaled.log")
        self.ports = {}
        self.proc = None
        listen = []
        for name in ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps"):
            if name in listeners:
                self.ports[name] = free_port()
                listen.append("%s = 127.0.0.1:%d" % (name, self.ports[name]))
            else:
                listen.append("%s =" % name)
        listen.append("admin =")
        self.port = self.ports.get("smtp")
        run_as = "run_as = nobody\n" if os.geteuid() == 0 else ""
        if "[dns]" not in extra_conf:
            extra_conf += "\n[dns]\nservers = 127.0.0.1:%d\n" % quiet_dns_port()
        with open(self.conf, "w") as f:
            f.write(
                "[server]\nhostname = mx.kale.test\ndata_dir = var\n%s\n"
                "[listen]\n%s\n\n"
                "[limits]\ncommand_timeout = 30\n\n"
                "%s\n" % (run_as, "\n".join(listen), extra_conf))

    def ctl(self, *args, input=None, check=True):
        env = dict(os.environ)
        p = subprocess.run([bin_path("kalectl"), "-c", self.conf] + list(args),
                           input=input, capture_output=True, text=True, timeout=60, env=env)
        if check and p.returncode != 0:
            raise AssertionError("kalectl %s failed (%d): %s%s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def start(self, wait=True):
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([bin_path("kaled"), "-c", self.conf],
                                     stdout=self.log, stderr=self.log)
        if wait:
            for name, port in self.ports.items():
                if not wait_port(port):
                    raise AssertionError("kaled did not listen on %s:%d\n%s" % (
                        name, port, self.log_text()))
        return self

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("kaled did not stop within %ds" % timeout)
        finally:
            self.log.close()
            self.proc = None
        return rc

    def kill9(self):
        """kill -9 the whole process group of kaled: master and children."""
        if self.proc is None:
            return
        pids = [self.proc.pid] + children_of(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()
        self.proc = None
        # children re-parented to init may take a moment to die
        end = time.time() + 5
        while time.time() < end and any(pid_alive(p) for p in pids[1:]):
            time.sleep(0.05)

    def log_text(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def mailbox(self, address):
        local, domain = address.split("@")
        return os.path.join(self.data, "mail", domain.lower(), local.lower())

    def messages(self, address):
        """Contents (bytes) of every message in the Maildir's new/ and cur/.
        A POP3/IMAP session may move a message from new/ to cur/ while we
        list: such a pass is started again (bounded)."""
        box = self.mailbox(address)
        for _attempt in range(50):
            out = []
            try:
                for sub in ("new", "cur"):
                    d = os.path.join(box, sub)
                    if os.path.isdir(d):
                        for name in sorted(os.listdir(d)):
                            with open(os.path.join(d, name), "rb") as f:
                                out.append(f.read())
                return out
            except FileNotFoundError:
                time.sleep(0.02)
        raise AssertionError("maildir %s kept changing under the listing" % box)

    def wait_messages(self, address, count, timeout=15.0):
        end = time.time() + timeout
        while time.time() < end:
            msgs = self.messages(address)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        return self.messages(address)


def children_of(pid):
    out = []
    try:
        p = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)],
                           capture_output=True, text=True)
        for line in p.stdout.split():
            out.append(int(line))
    except OSError:
        pass
    return out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def make_traversable(path):
    """As root, kaled's children run as nobody: pytest's private temp folders
    (0700) must let them through to the node's data_dir. SQLite opens its
    database by absolute path, so every ancestor needs the x bit."""
    if os.geteuid() != 0:
        return
    p = os.path.abspath(str(path))
    while p not in ("/", "/tmp"):
        st = os.stat(p)
        os.chmod(p, (st.st_mode & 0o7777) | 0o755)
        p = os.path.dirname(p)


@pytest.fixture
def kale_node(tmp_path):
    """A configured, not yet started node with example.test and alice."""
    make_traversable(tmp_path)
    k = Kale(tmp_path)
    k.ctl("domain", "add", "example.test", "--local")
    k.ctl("user", "add", "alice@example.test", "--password-stdin", input="alice-secret\n")
    yield k
    if k.proc is not None:
        k.stop()
    assert_no_sanitizer_report(k)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer")


def assert_no_sanitizer_report(k):
    """A child that crashed under ASan/UBSan is restarted by the master, so a
    test could pass anyway: the daemon's log is checked after every test."""
    text = k.log_text()
    for mark in SANITIZER_MARKS:
        assert mark not in text, "sanitizer report in kaled log:\n" + text[-6000:]


@pytest.fixture
def kale(kale_node):
    """A running node: SMTP on kale.port, example.test local, alice@example.test."""
    kale_node.start()
    return kale_node


# ---------------------------------------------------------------------------
# Helpers for the SMTP receive tests (tests/integration/test_smtp_*.py).
# Appended by H9; nothing above is changed.
# ---------------------------------------------------------------------------
import re as _re
import ssl as _ssl

SMTP_TIMEOUT = 10.0


class SmtpReply:
    """One (possibly multi-line) SMTP reply."""

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines          # text after "NNN-" / "NNN " of each line

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enh(self):
        """The RFC 3463 enhanced code of the last line, or None."""
        m = _re.match(r"(\d\.\d{1,3}\.\d{1,3})(\s|$)", self.lines[-1] if self.lines else "")
        return m.group(1) if m else None

    def __repr__(self):
        return "<%d %r>" % (self.code, self.lines)


def smtp_expect(reply, code, enh=None):
    """Asserts reply has this code and, if given, this enhanced code; in enh an
    'x' matches any number (e.g. "4.x.x")."""
    assert reply.code == code, "expected %d %s, got %r" % (code, enh or "", reply)
    if enh is not None:
        pat = _re.escape(enh).replace("x", r"\d{1,3}")
        assert reply.enh is not None and _re.fullmatch(pat, reply.enh), \
            "expected %d %s, got %r" % (code, enh, reply)
    return reply


def smtp_tls_context():
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = _ssl.CERT_NONE
    return ctx


class SmtpRaw:
    """A raw SMTP client over a socket: sends exactly the bytes it is given."""

    def __init__(self, port, host="127.0.0.1", timeout=SMTP_TIMEOUT, source=None,
                 read_banner=True):
        src = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=src)
        self.buf = b""
        self.banner = self.reply() if read_banner else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; unread: %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self):
        lines = []
        while True:
            raw = self.readline()
            text = raw.decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit():
                raise AssertionError("malformed reply line %r" % raw)
            lines.append(text[4:])
            if len(text) == 3 or text[3] != "-":
                return SmtpReply(int(text[:3]), lines)

    def cmd(self, line):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.test"):
        r = smtp_expect(self.cmd("EHLO " + name), 250)
        self.ext = {}
        for l in r.lines[1:]:
            parts = l.split(None, 1)
            if parts:
                self.ext[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
        return r

    def starttls(self):
        smtp_expect(self.cmd("STARTTLS"), 220)
        assert self.buf == b"", "plaintext after the 220 to STARTTLS: %r" % self.buf
        self.sock = smtp_tls_context().wrap_socket(self.sock)
        return self

    def data(self, body):
        """DATA with body (bytes with CRLF lines, dot-stuffed here); returns the
        reply after the end of data."""
        smtp_expect(self.cmd("DATA"), 354)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        stuffed = b"\r\n".join((b"." + l if l.startswith(b".") else l)
                               for l in body.split(b"\r\n"))
        self.send(stuffed + b".\r\n")
        return self.reply()

    def mail(self, sender, rcpts, body, helo=True):
        """A full transaction; returns the reply after the end of data."""
        if helo:
            self.ehlo()
        smtp_expect(self.cmd("MAIL FROM:<%s>" % sender), 250, "2.1.0")
        for r in rcpts:
            smtp_expect(self.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")
        return self.data(body)

    def wait_closed(self, timeout=SMTP_TIMEOUT):
        """Reads until EOF; returns all bytes read (raises on timeout)."""
        self.sock.settimeout(timeout)
        out = self.buf
        self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return out
            out += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def smtp_msg(subject, body="hello\r\n", sender="sender@other.test",
             to="alice@example.test", extra_headers=""):
    """A small RFC 5322 message with CRLF line endings (str)."""
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n%s\r\n%s" % (
        sender, to, subject, extra_headers, body))


QUEUED_RE = _re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$")


def smtp_qid(reply):
    """Asserts the reply is '250 2.0.0 Ok: queued as QID'; returns QID."""
    smtp_expect(reply, 250, "2.0.0")
    m = QUEUED_RE.match(reply.lines[-1])
    assert m, "not a 'queued as' reply: %r" % reply
    return m.group(1)


def smtp_send(port, sender, rcpts, body, **kw):
    """Connects, sends one message, QUITs; returns the end-of-data reply."""
    with SmtpRaw(port, **kw) as c:
        r = c.mail(sender, rcpts, body)
        try:
            c.cmd("QUIT")
        except (OSError, EOFError):
            pass
        return r


def kale_set_limits(k, **limits):
    """Rewrites the [limits] section the Kale constructor wrote (keys as in
    operator.md §3; command_timeout defaults to 30 as there)."""
    with open(k.conf) as f:
        text = f.read()
    old = "[limits]\ncommand_timeout = 30\n"
    assert old in text, "conftest's [limits] section changed; update kale_set_limits"
    vals = {"command_timeout": 30}
    vals.update(limits)
    new = "[limits]\n" + "".join("%s = %s\n" % kv for kv in vals.items())
    with open(k.conf, "w") as f:
        f.write(text.replace(old, new, 1))


def kale_wait(pred, timeout=5.0, step=0.1):
    """Polls pred() until it returns a true value or timeout; returns the last value."""
    end = time.time() + timeout
    while True:
        v = pred()
        if v or time.time() >= end:
            return v
        time.sleep(step)


@pytest.fixture
def kale_factory(tmp_path):
    """make(limits={}, extra_conf="", users=[...], aliases={}, before_ctl=fn,
    start=True, listeners=("smtp",), name="n") -> a Kale node with example.test
    local and the given users (default alice@example.test / alice-secret);
    before_ctl(k) runs before the first kalectl call. Stopped at teardown."""
    nodes = []

    def make(limits=None, extra_conf="", users=("alice@example.test",), aliases=None,
             before_ctl=None, start=True, listeners=("smtp",), name="n"):
        d = tmp_path / name
        d.mkdir()
        make_traversable(d)
        k = Kale(d, extra_conf=extra_conf, listeners=listeners)
        if limits:
            kale_set_limits(k, **limits)
        nodes.append(k)
        if before_ctl:
            before_ctl(k)
        k.ctl("domain", "add", "example.test", "--local")
        for u in users:
            pw = "alice-secret\n" if u == "alice@example.test" else "secret-%s\n" % u
            k.ctl("user", "add", u, "--password-stdin", input=pw)
        for a, t in (aliases or {}).items():
            k.ctl("alias", "add", a, t)
        if start:
            k.start()
        return k

    yield make
    for k in nodes:
        if k.proc is not None:
            k.stop()
