"""SMTP AUTH method ldap:PROFILE through `kalectl auth test` against the
session's private slapd (fixtures_db): search with the profile's service
bind, then a bind as the entry found; empty passwords and filter injection
refused; a directory that is down is a temporary error."""
import pytest

from conftest import free_port
from fixtures_db import slapd, SUFFIX, LDAP_ADMIN, LDAP_ADMIN_PW, LDAP_READER, LDAP_READER_PW, _run  # noqa: F401

AUTH_PW = 'ldap-pw "q\\\\b'


@pytest.fixture
def node(kale_factory, slapd):
    slapd.ensure()
    # an entry with a password, once per slapd (the fixture is session-wide)
    p = _run(["ldapsearch", "-x", "-LLL", "-H", slapd.url(), "-D", LDAP_ADMIN, "-w",
              LDAP_ADMIN_PW, "-b", SUFFIX, "(uid=kaleauth)", "dn"])
    if "kaleauth" not in p.stdout:
        _run(["ldapadd", "-x", "-H", slapd.url(), "-D", LDAP_ADMIN, "-w", LDAP_ADMIN_PW],
             input="dn: uid=kaleauth,ou=people,%s\nobjectClass: inetOrgPerson\nuid: kaleauth\n"
                   "cn: Kale Auth\nsn: K\nmail: kaleauth@corp.test\nuserPassword: %s\n"
                   % (SUFFIX, AUTH_PW))
    k = kale_factory(start=False)
    k.ctl("verify", "add", "dir", "--type", "ldap", "--url", slapd.url(), "--base", SUFFIX,
          "--filter", "(mail=%m)", "--bind-dn", LDAP_READER, "--bind-password-stdin",
          input=LDAP_READER_PW + "\n")
    k.ctl("auth", "set", "--method", "ldap:dir")
    return k


def auth_test(k, user, password):
    return k.ctl("auth", "test", user, "--password-stdin", input=password + "\n", check=False)


def test_ldap_bind(node):
    p = auth_test(node, "kaleauth@corp.test", AUTH_PW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "accepted: kaleauth@corp.test" in p.stdout and "ldap:dir" in p.stdout
    p = auth_test(node, "kaleauth@corp.test", "wrong")
    assert p.returncode == 1, p.stdout
    p = auth_test(node, "kaleauth@corp.test", "")
    assert p.returncode == 1 and "empty password" in p.stdout
    # an entry without a password cannot log in
    p = auth_test(node, "bob@corp.test", "anything")
    assert p.returncode == 1, p.stdout
    p = auth_test(node, "nobody@corp.test", AUTH_PW)
    assert p.returncode == 1 and "no such user" in p.stdout


@pytest.mark.parametrize("login", ["*@corp.test", "kaleauth)(mail=*@corp.test",
                                   "*)(uid=kaleauth@corp.test"])
def test_ldap_filter_injection(node, login):
    p = auth_test(node, login, AUTH_PW)
    assert p.returncode == 1, p.stdout


def test_ldap_username_format(node):
    node.ctl("auth", "set", "--username-format", "username", "--default-domain", "corp.test")
    p = auth_test(node, "kaleauth", AUTH_PW)
    assert p.returncode == 0, p.stdout
    assert "accepted: kaleauth@corp.test" in p.stdout


def test_ldap_down_is_tempfail(node):
    node.ctl("verify", "add", "gone", "--type", "ldap", "--timeout", "2",
             "--url", "ldap://127.0.0.1:%d" % free_port(), "--base", SUFFIX,
             "--filter", "(mail=%m)")
    node.ctl("auth", "set", "--method", "ldap:gone", "--timeout", "3")
    p = auth_test(node, "kaleauth@corp.test", AUTH_PW)
    assert p.returncode == 2, p.stdout


def test_ldap_profile_not_ldap(node):
    node.ctl("verify", "add", "loc", "--type", "localdb")
    node.ctl("auth", "set", "--method", "ldap:loc")
    p = auth_test(node, "alice@example.test", "alice-secret")
    assert p.returncode == 2 and "not an ldap" in p.stdout
