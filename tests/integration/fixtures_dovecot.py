"""A private Dovecot (imapd + pop3d) for the SMTP AUTH "servers" method tests:
its own base_dir in a temp folder, plain/implicit-TLS listeners for IMAP and
POP3 on 127.0.0.1 free ports, a passwd-file passdb, a self-signed cert made
with openssl. Needs dovecot-imapd and dovecot-pop3d (scripts/deps.sh TEST).
Usage: `from fixtures_dovecot import dovecot  # noqa: F401` in a test file."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, wait_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

# user -> password; one password has a quote and a backslash (IMAP literal)
DOVECOT_USERS = {
    "alice@example.test": "alice-imap-pw",
    "bob@example.test": "bob-pop-pw",
    "carol@example.test": 'pa"ss\\word',
    "dave@corp.test": "dave-pw",
}


class Dovecot:
    def __init__(self):
        # not under pytest's 0700 tmp_path: the login processes run as dovenull
        self.dir = tempfile.mkdtemp(prefix="kale-dovecot-")
        os.chmod(self.dir, 0o755)
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        self.users = dict(DOVECOT_USERS)
        self.proc = None
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log = os.path.join(self.dir, "dovecot.log")

    def write(self):
        d = self.dir
        for sub in ("run", "state", "mail"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(os.path.join(d, "mail"), 0o1777)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
        with open(os.path.join(d, "passwd"), "w") as f:
            for u, p in self.users.items():
                f.write("%s:{PLAIN}%s::::::\n" % (u, p))
        dh = "/usr/share/dovecot/dh.pem"
        p = self.ports
        with open(self.conf, "w") as f:
            f.write("""\
base_dir = {d}/run
state_dir = {d}/state
instance_name = kale-test-{pid}
log_path = {d}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
# no growing anvil auth penalty for the many wrong passwords of the tests
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{dhline}
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
""".format(d=d, pid=os.getpid(), cert=cert, key=key,
           dhline=("ssl_dh = <%s" % dh) if os.path.exists(dh) else "",
           imap=p["imap"], imaps=p["imaps"], pop3=p["pop3"], pop3s=p["pop3s"]))

    def start(self):
        self.write()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name, port in self.ports.items():
            if not wait_port(port, timeout=15):
                self.stop()
                raise AssertionError("dovecot did not listen on %s:%d\n%s" % (
                    name, port, self.log_text()))
        return self

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def dovecot_available():
    return os.path.exists(DOVECOT) and os.path.exists("/usr/lib/dovecot/imap") \
        and os.path.exists("/usr/lib/dovecot/pop3") and os.geteuid() == 0


@pytest.fixture(scope="module")
def dovecot():
    """A running private Dovecot; .ports has imap imaps pop3 pop3s."""
    if not dovecot_available():
        pytest.skip("dovecot-imapd/dovecot-pop3d not installed or not root")
    dv = Dovecot().start()
    yield dv
    dv.stop()
