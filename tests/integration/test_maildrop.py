"""kale-sendmail while kaled is down (issue 11): the message goes into
<data_dir>/maildrop (durably, exit 0) and kaled's pickup hands it to smtpd
when it runs again, with the file owner's identity (XUID): the same sender
rules and Received uid as a live injection. Malformed or planted files are
set aside, never followed."""
import os
import socket
import subprocess

import pytest

from conftest import bin_path, kale_wait

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")

WAIT = 20.0


def sendmail(k, args, stdin, user=None):
    cmd = [bin_path("kale-sendmail"), "-C", k.conf] + list(args)
    return subprocess.run(cmd, input=stdin.encode(), capture_output=True, timeout=60, user=user)


def maildrop(k):
    return os.path.join(k.data, "maildrop")


def files(k):
    return sorted(os.listdir(maildrop(k)))


@pytest.fixture
def down(kale_factory):
    """A node that ran once (so its data_dir exists) and is stopped."""
    k = kale_factory()
    k.stop()
    return k


def test_maildrop_folder_mode(down):
    st = os.stat(maildrop(down))
    assert st.st_mode & 0o7777 == 0o1733
    assert st.st_uid == os.stat(os.path.join(down.data, "queue")).st_uid != 0


def test_sendmail_while_down_is_delivered_after_start(down):
    k = down
    p = sendmail(k, ["alice@example.test"], "Subject: while down\n\nfrom cron\n", user="daemon")
    assert p.returncode == 0, p.stderr
    p = sendmail(k, ["-f", "ceo@example.test", "alice@example.test"],
                 "Subject: root while down\n\nx\n")
    assert p.returncode == 0, p.stderr
    names = files(k)
    assert len(names) == 2 and not any(n.startswith(".") for n in names), names
    k.start()
    msgs = k.wait_messages("alice@example.test", 2, timeout=WAIT)
    assert len(msgs) == 2, k.log_text()[-3000:]
    by_subject = {b"Subject: while down" in m: m for m in msgs}
    user_msg, root_msg = by_subject[True], by_subject[False]
    assert b"Return-Path: <daemon@mx.kale.test>" in user_msg
    assert b"(uid 1 daemon)" in user_msg, user_msg[:600]
    assert b"Return-Path: <ceo@example.test>" in root_msg   # root is trusted with -f
    assert kale_wait(lambda: files(k) == [], WAIT), files(k)
    assert "pickup.queued" in k.log_text()


def test_forged_sender_in_maildrop_is_refused(down):
    """The file's owner is the identity, not what the file says."""
    k = down
    p = sendmail(k, ["-f", "ceo@example.test", "alice@example.test"], "Subject: forged\n\nx\n",
                 user="daemon")
    assert p.returncode == 0, p.stderr
    k.start()
    assert kale_wait(lambda: any(n.startswith("refused.") for n in files(k)), WAIT), \
        k.log_text()[-3000:]
    assert "pickup.refused" in k.log_text()
    assert k.messages("alice@example.test") == []


def test_planted_files_are_set_aside_not_followed(down):
    k = down
    secret = os.path.join(k.dir, "secret")
    with open(secret, "w") as f:
        f.write("KALE-MAILDROP 1\nS root@mx.kale.test\nR alice@example.test\n\nSubject: x\n\nx\n")
    os.chmod(secret, 0o600)
    os.symlink(secret, os.path.join(maildrop(k), "link"))
    with open(os.path.join(maildrop(k), "garbage"), "w") as f:
        f.write("not a maildrop file\n")
    os.chown(os.path.join(maildrop(k), "garbage"), 1, 1)
    k.start()
    assert kale_wait(lambda: files(k) == ["bad.garbage"], WAIT), files(k)
    assert os.path.exists(secret)
    assert k.messages("alice@example.test") == []


def test_xuid_only_for_the_pickup(kale_factory):
    """XUID on sendmail.sock: refused to an ordinary user."""
    k = kale_factory()
    code = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO x\r\n")
while True:
    l = f.readline()
    if l[3:4] == b" ":
        break
s.sendall(b"XUID 0\r\n")
print(f.readline().decode().strip())
"""
    sock = os.path.join(k.data, "public", "sendmail.sock")
    p = subprocess.run(["/usr/bin/python3", "-c", code, sock], capture_output=True, text=True,
                       timeout=30, user="daemon")
    assert p.stdout.startswith("550"), (p.stdout, p.stderr)
