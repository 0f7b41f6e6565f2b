"""Private directory servers for the recipient verification tests: MariaDB,
PostgreSQL and OpenLDAP slapd, each started ONCE per test session in a temp
dir on a free loopback port, with a small data set. Each has stop() and
start() for the "backend down" tests. Import the fixtures into a test module:
    from fixtures_db import mariadb, pgsql, slapd  # noqa: F401
A server whose programs are not installed makes its tests skip."""
import os
import pwd
import shutil
import signal
import subprocess
import time

import pytest

from conftest import free_port, wait_port, make_traversable

# The data every backend holds (addresses that exist).
USERS = ["alice@corp.test", "o'brien@corp.test", "bob@corp.test"]
DB_USER, DB_PASS = "kale", "kale-pw-1"


def _run(cmd, **kw):
    kw.setdefault("timeout", 60)
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (cmd[0], p.returncode, p.stdout, p.stderr))
    return p


class _Server:
    stop_signal = signal.SIGTERM

    def __init__(self, name, directory):
        self.name = name
        self.dir = directory
        self.port = free_port()
        self.proc = None
        self.log = os.path.join(directory, "server.log")

    def _spawn(self, cmd, **kw):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, **kw)
        logf.close()
        if not wait_port(self.port, timeout=60):
            self.stop()
            with open(self.log, errors="replace") as f:
                raise AssertionError("%s did not start:\n%s" % (self.name, f.read()[-3000:]))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # until the port is closed
        end = time.time() + 10
        while time.time() < end and wait_port(self.port, timeout=0.1):
            time.sleep(0.1)

    def ensure(self):
        if self.proc is None or self.proc.poll() is not None:
            self.start()


class MariaDB(_Server):
    def __init__(self, directory):
        super().__init__("mariadb", directory)
        self.data = os.path.join(directory, "data")
        self.sock = os.path.join(directory, "mysqld.sock")
        self.user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        _run(["mariadb-install-db", "--no-defaults", "--datadir=" + self.data,
              "--user=" + self.user, "--auth-root-authentication-method=normal",
              "--skip-test-db"], timeout=180)
        self.start()
        sql = (
            "CREATE DATABASE kale;"
            "CREATE TABLE kale.mailusers (email VARCHAR(255) PRIMARY KEY, active INT NOT NULL);"
            "CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s';"
            "GRANT SELECT ON kale.* TO '%s'@'127.0.0.1';" % (DB_USER, DB_PASS, DB_USER))
        for u in USERS:
            sql += "INSERT INTO kale.mailusers VALUES ('%s', 1);" % u.replace("'", "''")
        sql += "INSERT INTO kale.mailusers VALUES ('gone@corp.test', 0);"
        self.sql(sql)

    def sql(self, text):
        return _run(["mariadb", "--no-defaults", "-S", self.sock, "-uroot", "-e", text])

    def url(self, password=DB_PASS):
        return "mysql://%s:%s@127.0.0.1:%d/kale" % (DB_USER, password, self.port)

    def start(self):
        self._spawn(["/usr/sbin/mariadbd", "--no-defaults", "--datadir=" + self.data,
                     "--socket=" + self.sock, "--port=%d" % self.port,
                     "--bind-address=127.0.0.1", "--user=" + self.user,
                     "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
                     "--skip-log-bin", "--innodb-buffer-pool-size=16M",
                     "--skip-name-resolve", "--log-error=" + os.path.join(self.dir, "err.log")])


class PostgreSQL(_Server):
    stop_signal = signal.SIGINT     # "fast" shutdown: does not wait for clients to leave

    def __init__(self, directory):
        super().__init__("postgresql", directory)
        bindir = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
        self.bin = os.path.join("/usr/lib/postgresql", bindir, "bin")
        self.data = os.path.join(directory, "data")
        # postgres refuses to run as root: use the postgres OS user then
        self.as_user = None
        if os.geteuid() == 0:
            self.as_user = pwd.getpwnam("postgres")
            make_traversable(directory)
            os.chown(directory, self.as_user.pw_uid, self.as_user.pw_gid)
        self._as([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-sync"], timeout=180)
        self.start()
        sql = ("CREATE ROLE %s LOGIN PASSWORD '%s';"
               "CREATE TABLE mailusers (email TEXT PRIMARY KEY, active INT NOT NULL);"
               "GRANT SELECT ON mailusers TO %s;" % (DB_USER, DB_PASS, DB_USER))
        for u in USERS:
            sql += "INSERT INTO mailusers VALUES ('%s', 1);" % u.replace("'", "''")
        sql += "INSERT INTO mailusers VALUES ('gone@corp.test', 0);"
        self.sql(sql)

    def _preexec(self):
        if self.as_user is not None:
            u = self.as_user
            os.setgroups([])
            os.setgid(u.pw_gid)
            os.setuid(u.pw_uid)

    def _as(self, cmd, **kw):
        return _run(cmd, preexec_fn=self._preexec, cwd=self.dir, **kw)

    def sql(self, text):
        return self._as([os.path.join(self.bin, "psql"), "-h", self.dir, "-p", str(self.port),
                         "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", text])

    def url(self, password=DB_PASS):
        return "postgresql://%s:%s@127.0.0.1:%d/postgres" % (DB_USER, password, self.port)

    def start(self):
        self._spawn([os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port),
                     "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                    preexec_fn=self._preexec, cwd=self.dir)
        # the port opens before the server accepts sessions (recovery)
        end = time.time() + 60
        while True:
            p = subprocess.run([os.path.join(self.bin, "pg_isready"), "-q", "-h", "127.0.0.1",
                                "-p", str(self.port)], capture_output=True, timeout=30)
            if p.returncode == 0:
                return
            if time.time() > end:
                raise AssertionError("postgresql not ready")
            time.sleep(0.1)


SLAPD_SCHEMA = """
attributetype ( 1.3.6.1.4.1.99999.7.1.1 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
"""

SUFFIX = "dc=corp,dc=test"
LDAP_ADMIN, LDAP_ADMIN_PW = "cn=admin," + SUFFIX, "admin-pw"
LDAP_READER, LDAP_READER_PW = "cn=reader,ou=system," + SUFFIX, "reader-pw-1"


def make_cert(directory, name, cn="127.0.0.1"):
    """A self-signed certificate for cn (also as an IP subjectAltName):
    returns (cert path, key path), world-readable (the tests' kale runs as nobody)."""
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-subj", "/CN=" + cn, "-addext", "subjectAltName=IP:" + cn,
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-keyout", key, "-out", cert])
    os.chmod(cert, 0o644)
    os.chmod(key, 0o644)
    return cert, key


class Slapd(_Server):
    """slapd on ldap://127.0.0.1:port (StartTLS offered) and
    ldaps://127.0.0.1:tls_port; self.cacert is the CA file that trusts it,
    self.wrong_cacert one that does not."""

    def __init__(self, directory):
        super().__init__("slapd", directory)
        self.conf = os.path.join(directory, "slapd.conf")
        self.tls_port = free_port()
        self.cacert, key = make_cert(directory, "slapd")
        self.wrong_cacert, _ = make_cert(directory, "other")
        os.mkdir(os.path.join(directory, "db"))
        with open(os.path.join(directory, "kale.schema"), "w") as f:
            f.write(SLAPD_SCHEMA)
        with open(self.conf, "w") as f:
            f.write("""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/misc.schema
include %(dir)s/kale.schema
pidfile %(dir)s/slapd.pid
TLSCertificateFile %(dir)s/slapd.crt
TLSCertificateKeyFile %(dir)s/slapd.key
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "%(suffix)s"
rootdn "%(admin)s"
rootpw %(adminpw)s
directory %(dir)s/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
""" % {"dir": directory, "suffix": SUFFIX, "admin": LDAP_ADMIN, "adminpw": LDAP_ADMIN_PW})
        self.start()
        entries = [
            "dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: corp\ndc: corp\n" % SUFFIX,
            "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n" % SUFFIX,
            "dn: ou=system,%s\nobjectClass: organizationalUnit\nou: system\n" % SUFFIX,
            "dn: %s\nobjectClass: person\ncn: reader\nsn: reader\nuserPassword: %s\n" % (
                LDAP_READER, LDAP_READER_PW),
            # alice: a mail attribute and a mailHost route
            "dn: uid=alice,ou=people,%s\nobjectClass: inetOrgPerson\n"
            "objectClass: inetLocalMailRecipient\nuid: alice\ncn: Alice\nsn: A\n"
            "mail: alice@corp.test\nmailHost: 127.0.0.1:2525\n" % SUFFIX,
            "dn: uid=obrien,ou=people,%s\nobjectClass: inetOrgPerson\nuid: obrien\n"
            "cn: O'Brien\nsn: O\nmail: o'brien@corp.test\n" % SUFFIX,
            "dn: uid=bob,ou=people,%s\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\n"
            "mail: bob@corp.test\n" % SUFFIX,
            # an Active Directory style entry: only proxyAddresses
            "dn: cn=carol,ou=people,%s\nobjectClass: person\nobjectClass: extensibleObject\n"
            "cn: carol\nsn: C\nproxyAddresses: SMTP:carol@corp.test\n"
            "proxyAddresses: smtp:c.smith@corp.test\n" % SUFFIX,
        ]
        _run(["ldapadd", "-x", "-H", self.url(), "-D", LDAP_ADMIN, "-w", LDAP_ADMIN_PW],
             input="\n".join(entries))

    def url(self):
        return "ldap://127.0.0.1:%d" % self.port

    def tls_url(self):
        return "ldaps://127.0.0.1:%d" % self.tls_port

    def start(self):
        uid = ["-u", "root"] if os.geteuid() == 0 else []
        self._spawn(["/usr/sbin/slapd", "-f", self.conf, "-h",
                     "%s/ %s/" % (self.url(), self.tls_url()), "-d", "0"] + uid)
        if not wait_port(self.tls_port, timeout=30):
            raise AssertionError("slapd did not listen on ldaps")


def _server_fixture(tmp_path_factory, cls, progs):
    for p in progs:
        if shutil.which(p) is None and not os.path.exists(p):
            pytest.skip("%s is not installed" % p)
    d = tmp_path_factory.mktemp(cls.__name__.lower())
    make_traversable(d)
    srv = cls(str(d))
    return srv


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    srv = _server_fixture(tmp_path_factory, MariaDB,
                          ["mariadb-install-db", "/usr/sbin/mariadbd", "mariadb"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pgsql(tmp_path_factory):
    if not os.path.isdir("/usr/lib/postgresql"):
        pytest.skip("postgresql is not installed")
    srv = _server_fixture(tmp_path_factory, PostgreSQL, [])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    srv = _server_fixture(tmp_path_factory, Slapd, ["/usr/sbin/slapd", "ldapadd", "openssl"])
    yield srv
    srv.stop()
