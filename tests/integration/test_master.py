"""The master process as an attacker on the run_as account or an operator
would meet it: links planted in data_dir, kill -9 of the master, a second
instance, kalectl reload."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (Kale, bin_path, children_of, free_port, kale_wait, make_traversable, pid_alive,
                      wait_port)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: kaled drops to run_as")


@pytest.fixture
def node(tmp_path):
    d = tmp_path / "n1"
    d.mkdir()
    make_traversable(d)
    k = Kale(d)
    k.ctl("domain", "add", "example.test", "--local")
    yield k
    if k.proc is not None:
        k.stop()


def plant_link(k, rel, target):
    """Starts and stops the node once (data_dir made), then replaces rel in
    data_dir with a symbolic link to target, as the run_as user could."""
    k.start()
    k.stop()
    path = os.path.join(k.data, rel)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.symlink(str(target), path)


def start_fails(k, timeout=15):
    p = subprocess.run([bin_path("kaled"), "-c", k.conf], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode != 0
    return p.stderr


@root_only
@pytest.mark.parametrize("planted", ["queue/tmp", "queue/hold", "mail"])
def test_planted_folder_link_is_not_followed(node, tmp_path, planted):
    victim = tmp_path / "rootdir"
    victim.mkdir(mode=0o700)
    (victim / "secret").write_text("root's\n")
    os.chmod(victim / "secret", 0o600)
    plant_link(node, planted, victim)
    err = start_fails(node)
    assert planted in err and "refusing to start" in err
    st = os.stat(victim)
    assert st.st_uid == 0 and (victim / "secret").exists()
    assert os.stat(victim / "secret").st_uid == 0


@root_only
@pytest.mark.parametrize("name", ["kale.db-shm", "kale.db-wal", "kale.db-journal"])
def test_planted_store_link_is_not_followed(node, tmp_path, name):
    victim = tmp_path / "rootfile"
    victim.write_text("root only\n")
    os.chmod(victim, 0o600)
    plant_link(node, name, victim)
    err = start_fails(node)
    assert name in err
    st = os.stat(victim)
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    assert victim.read_text() == "root only\n"


@root_only
def test_control_socket_is_not_the_childrens(node):
    node.start()
    st = os.stat(os.path.join(node.data, "control.sock"))
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0
    node.stop()


def test_children_die_with_the_master(node):
    node.start()
    kids = children_of(node.proc.pid)
    assert kids
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait()
    node.log.close()
    node.proc = None
    end = time.time() + 10
    while time.time() < end and any(pid_alive(p) for p in kids):
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in kids), "children outlived the master"
    # and the node starts again cleanly afterwards
    node.start()
    node.stop()


def test_second_instance_on_same_data_dir_refused(node):
    node.start()
    other = Kale(os.path.dirname(node.conf))      # same folder, same data_dir, new ports
    err = start_fails(other)
    assert "another kaled" in err
    assert node.proc.poll() is None
    node.stop()


def test_second_instance_on_same_ports_refused(node, tmp_path):
    node.start()
    d2 = tmp_path / "n2"
    d2.mkdir()
    other = Kale(d2)
    with open(other.conf) as f:
        conf = f.read()
    conf = conf.replace("smtp = 127.0.0.1:%d" % other.port, "smtp = 127.0.0.1:%d" % node.port)
    with open(other.conf, "w") as f:
        f.write(conf)
    err = start_fails(other)
    assert "cannot listen" in err
    node.stop()


def test_reload_reports_success_and_keeps_listening(node):
    node.start()
    end = time.time() + 10
    while time.time() < end and "child.start" not in node.log_text():
        time.sleep(0.05)
    t0 = time.time()
    p = node.ctl("reload", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert time.time() - t0 < 8
    # a reload that changes a listener keeps the unchanged one bound
    with open(node.conf) as f:
        conf = f.read()
    port2 = free_port()
    conf = conf.replace("submission =\n", "submission = 127.0.0.1:%d\n" % port2)
    with open(node.conf, "w") as f:
        f.write(conf)
    p = node.ctl("reload", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_port(port2)
    assert wait_port(node.port)
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    assert s.recv(100).startswith(b"220")
    s.close()
    node.stop()


@root_only
def test_unreachable_data_dir_is_named(tmp_path):
    """run_as must pass through every folder on the way to data_dir; a
    closed one (a clone under /root) is named at start instead of a bare
    'unable to open database file'."""
    make_traversable(tmp_path)
    closed = tmp_path / "closed"
    closed.mkdir()
    k = Kale(closed)
    os.chmod(closed, 0o700)
    err = start_fails(k)
    assert "cannot pass through %s" % closed in err, err


def sanitized_build():
    cache = os.path.join(os.environ.get("KALE_BUILD", "build"), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return "KALE_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0 or not sanitized_build(),
                    reason="needs root and the ASan/UBSan tree")
def test_sanitizer_report_of_a_child_after_the_drop(kale_factory, tmp_path, monkeypatch):
    """With log_path in ASAN_OPTIONS pointing at a root-only folder, a
    child's report (it runs as run_as) lands in <data_dir>/sanitizer/."""
    logdir = tmp_path / "rootonly"
    logdir.mkdir(mode=0o700)
    monkeypatch.setenv("ASAN_OPTIONS", "log_path=%s/asan:detect_leaks=0:abort_on_error=0" % logdir)
    monkeypatch.setenv("KALE_SANITIZER_SELFTEST", "pickup")
    k = kale_factory()
    sdir = os.path.join(k.data, "sanitizer")

    def reports():
        return [n for n in os.listdir(sdir) if n.startswith("pickup.")] if os.path.isdir(sdir) else []
    assert kale_wait(reports, 20), (os.listdir(k.data), k.log_text()[-2000:])
    with open(os.path.join(sdir, reports()[0])) as f:
        assert "ERROR: AddressSanitizer: heap-buffer-overflow" in f.read()
    assert os.stat(sdir).st_uid != 0
    # the rest of the node runs on
    from conftest import smtp_msg, smtp_qid, smtp_send
    smtp_qid(smtp_send(k.port, "a@other.test", ["alice@example.test"], smtp_msg("still up")))
    assert len(k.wait_messages("alice@example.test", 1)) == 1
    k.stop()
