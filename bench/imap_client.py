#!/usr/bin/python3
"""bench/imap_client.py: the Maildir generator and the IMAP load client of
bench/imap.sh. Standard library only (imaplib, multiprocessing).
Not a test. See docs/performance.md, section "IMAP: kale vs Dovecot".

  imap_client.py gen MAILDIR M [SEED]
      writes M messages (2-50 KB, LF line ends, about a third multipart) into
      MAILDIR/new, as a delivery agent would; prints "count crlf_bytes"
  imap_client.py warm --port P --user U --pass-file F
      one session: LOGIN, SELECT INBOX (the server's first look at the
      Maildir: new/ -> cur/, UIDs, indexes), LOGOUT; prints seconds and EXISTS
  imap_client.py run --port P --user U --pass-file F --clients N
                     --expect-msgs M --expect-bytes B [--chunk 100]
                     [--server-pid PID] [--timeout 600]
      N processes, released together, each: LOGIN, SELECT INBOX,
      (barrier: all clients wait until every one has selected)
      FETCH 1:* (BODY.PEEK[HEADER]), FETCH a:b (BODY.PEEK[]) in chunks,
      LOGOUT. Checks every client got M headers and M bodies totalling B bytes.
      Prints one line of key=value figures; exit 1 if any client failed.
"""
import argparse
import base64
import imaplib
import multiprocessing
import os
import random
import re
import socket
import sys
import threading
import time

WORDS = ("the of and to in is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "mail queue server relay message header body kale dovecot maildir folder "
         "invoice meeting report quarterly schedule attached please review thanks "
         "regards tomorrow project budget draft update status network storage").split()


# ---------------------------------------------------------------- generator
def _text(rng, nbytes, width=72):
    """Plain-text paragraphs of about nbytes, LF line ends."""
    out, line, size = [], [], 0
    while size < nbytes:
        w = rng.choice(WORDS)
        if sum(len(x) + 1 for x in line) + len(w) > width:
            s = " ".join(line)
            out.append(s)
            size += len(s) + 1
            line = []
            if rng.random() < 0.12:
                out.append("")
                size += 1
        line.append(w)
    if line:
        out.append(" ".join(line))
    return "\n".join(out) + "\n"


def _size(rng):
    """Message size in bytes: mostly small, a tail up to 50 KB."""
    r = rng.random()
    if r < 0.40:
        return rng.randint(2000, 5000)
    if r < 0.70:
        return rng.randint(5000, 15000)
    if r < 0.90:
        return rng.randint(15000, 30000)
    return rng.randint(30000, 50000)


def make_message(rng, i):
    target = _size(rng)
    day = 1 + i % 28
    hdr = [
        "Return-Path: <sender%d@client.test>" % (i % 37),
        "Received: from client.test (client.test [127.0.0.1])\n\tby mx.bench.test with ESMTP"
        " id %08X\n\tfor <user@bench.test>; Mon, %d Nov 2026 10:%02d:%02d +0000"
        % (i * 7919 & 0xFFFFFFFF, day, i % 60, (i * 7) % 60),
        "From: Sender %d <sender%d@client.test>" % (i % 37, i % 37),
        "To: User <user@bench.test>",
        "Subject: %s %s %s #%d" % (rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS), i),
        "Date: Mon, %d Nov 2026 10:%02d:%02d +0000" % (day, i % 60, (i * 7) % 60),
        "Message-ID: <%d.%d@client.test>" % (i, rng.randint(0, 1 << 30)),
        "MIME-Version: 1.0",
    ]
    kind = rng.random()
    if kind < 0.67:  # plain text
        hdr.append("Content-Type: text/plain; charset=us-ascii")
        hdr.append("Content-Transfer-Encoding: 7bit")
        head = "\n".join(hdr) + "\n\n"
        body = _text(rng, max(200, target - len(head)))
    else:  # multipart/mixed: text + base64 attachment (sometimes + html)
        b = "=_bench_%d_%d" % (i, rng.randint(0, 1 << 30))
        hdr.append('Content-Type: multipart/mixed; boundary="%s"' % b)
        head = "\n".join(hdr) + "\n\n"
        text = _text(rng, rng.randint(300, 1500))
        parts = ["This is a multi-part message in MIME format.\n",
                 "--%s\nContent-Type: text/plain; charset=us-ascii\n\n%s" % (b, text)]
        if kind < 0.80:
            html = "<html><body><p>%s</p></body></html>\n" % _text(rng, 600).replace("\n\n", "</p><p>")
            parts.append("--%s\nContent-Type: text/html; charset=us-ascii\n\n%s" % (b, html))
        used = len(head) + sum(len(p) for p in parts) + 200
        raw = rng.randbytes(max(300, (target - used) * 3 // 4))
        enc = base64.encodebytes(raw).decode("ascii")
        parts.append("--%s\nContent-Type: application/octet-stream; name=\"file%d.bin\"\n"
                     "Content-Disposition: attachment; filename=\"file%d.bin\"\n"
                     "Content-Transfer-Encoding: base64\n\n%s" % (b, i, i, enc))
        parts.append("--%s--\n" % b)
        body = "\n".join(parts)
    return (head + body).encode("ascii")


def cmd_gen(args):
    rng = random.Random(args.seed)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(args.maildir, sub), exist_ok=True)
    total_crlf = 0
    base = 1795000000
    for i in range(args.count):
        data = make_message(rng, i)
        total_crlf += len(data) + data.count(b"\n")
        name = "%d.M%dP4242Q%d.mx.bench.test" % (base + i, 100000 + i, i)
        path = os.path.join(args.maildir, "new", name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (base + i, base + i))
    print(args.count, total_crlf)


# ---------------------------------------------------------------- client
def _password(path):
    with open(path) as f:
        return f.readline().rstrip("\n")


def _connect(port, timeout):
    return imaplib.IMAP4("127.0.0.1", port, timeout=timeout)


def _literal_sizes(data):
    """Sizes of the literals in an imaplib FETCH answer, in order."""
    return [len(x[1]) for x in data if isinstance(x, tuple)]


_EXISTS = re.compile(rb"(\d+)")


def session(port, user, pw, chunk, timeout, barrier):
    """One client's work; returns a dict of figures (raises on any error).
    Waits on barrier (with every other client and the parent) between SELECT
    and the first FETCH, so the login phase and the fetch phase are timed
    apart."""
    r = {}
    t0 = time.monotonic()
    m = _connect(port, timeout)
    try:
        m.login(user, pw)
        t1 = time.monotonic()
        typ, dat = m.select("INBOX")
        if typ != "OK":
            raise RuntimeError("SELECT: %s %r" % (typ, dat))
        exists = int(_EXISTS.match(dat[0]).group(1))
        t2 = time.monotonic()
        barrier.wait(timeout)
        t2b = time.monotonic()
        hb = 0
        nh = 0
        if exists:
            typ, dat = m.fetch("1:*", "(BODY.PEEK[HEADER])")
            if typ != "OK":
                raise RuntimeError("FETCH headers: %s %r" % (typ, dat[:1]))
            sizes = _literal_sizes(dat)
            nh, hb = len(sizes), sum(sizes)
        t3 = time.monotonic()
        bb = 0
        nb = 0
        for lo in range(1, exists + 1, chunk):
            hi = min(exists, lo + chunk - 1)
            typ, dat = m.fetch("%d:%d" % (lo, hi), "(BODY.PEEK[])")
            if typ != "OK":
                raise RuntimeError("FETCH %d:%d: %s %r" % (lo, hi, typ, dat[:1]))
            sizes = _literal_sizes(dat)
            if len(sizes) != hi - lo + 1:
                raise RuntimeError("FETCH %d:%d: %d bodies" % (lo, hi, len(sizes)))
            nb += len(sizes)
            bb += sum(sizes)
            del dat
        t4 = time.monotonic()
        m.logout()
        t5 = time.monotonic()
    except BaseException:
        try:
            m.shutdown()
        except OSError:
            pass
        raise
    r.update(exists=exists, headers=nh, header_bytes=hb, bodies=nb, body_bytes=bb,
             t_login=t1 - t0, t_select=t2 - t1, t_headers=t3 - t2b, t_bodies=t4 - t3,
             t_logout=t5 - t4, t_total=t5 - t0)
    return r


def _worker(idx, go, barrier, results, port, user, pw, chunk, timeout):
    go.wait()
    try:
        r = session(port, user, pw, chunk, timeout, barrier)
        r["ok"] = True
    except Exception as e:  # reported, not raised: the parent counts failures
        barrier.abort()  # no-op once the barrier has been passed
        r = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    r["idx"] = idx
    r["end"] = time.monotonic()
    results.put(r)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid):
    """CPU seconds (user+sys, own + reaped children) of pid and its live
    children, like bench/accept.sh's tree_cpu."""
    if pid is None:
        return 0.0
    pids = [pid]
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            pids.append(int(d))
    t = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        t += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return t / CLK_TCK


def cmd_run(args):
    pw = _password(args.pass_file)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    barrier = ctx.Barrier(args.clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, go, barrier, results, args.port, args.user, pw,
                                               args.chunk, args.io_timeout))
             for i in range(args.clients)]
    for p in procs:
        p.start()
    time.sleep(0.2)  # let every process reach go.wait()
    c0 = os.times()
    s0 = tree_cpu(args.server_pid)
    t0 = time.monotonic()
    go.set()
    try:  # every client logged in and selected INBOX
        barrier.wait(args.timeout)
        t_mid = time.monotonic()
        s_mid = tree_cpu(args.server_pid)
    except threading.BrokenBarrierError:
        t_mid = None
        s_mid = 0.0
    got = []
    deadline = t0 + args.timeout
    while len(got) < len(procs):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            got.append(results.get(timeout=min(left, 1.0)))
        except Exception:  # queue.Empty
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    t_last = max((r["end"] for r in got), default=time.monotonic())
    s1 = tree_cpu(args.server_pid)
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(5)
    c1 = os.times()
    wall = t_last - t0
    fails = [r for r in got if not r["ok"]]
    missing = len(procs) - len(got)
    bad = []
    for r in got:
        if not r["ok"]:
            continue
        if (r["exists"] != args.expect_msgs or r["headers"] != args.expect_msgs
                or r["bodies"] != args.expect_msgs or r["body_bytes"] != args.expect_bytes):
            bad.append("client %d: exists %d headers %d bodies %d body_bytes %d (want %d msgs, %d bytes)"
                       % (r["idx"], r["exists"], r["headers"], r["bodies"], r["body_bytes"],
                          args.expect_msgs, args.expect_bytes))
    for r in fails:
        print("imap_client: client %d failed: %s" % (r["idx"], r["error"]), file=sys.stderr)
    if missing:
        print("imap_client: %d clients did not finish within %ds" % (missing, args.timeout),
              file=sys.stderr)
    for b in bad[:5]:
        print("imap_client: wrong answer: " + b, file=sys.stderr)
    ok = [r for r in got if r["ok"]]
    msgs = sum(r["bodies"] for r in ok)
    mbytes = sum(r["body_bytes"] + r["header_bytes"] for r in ok) / 1e6

    def med(k):
        v = sorted(r[k] for r in ok)
        return v[len(v) // 2] if v else 0.0

    ccpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    if t_mid is None:
        t_mid, s_mid = t0, s0
    fwall = t_last - t_mid
    print("wall=%.3f msgs=%d msgs_per_s=%.1f mb=%.1f mb_per_s=%.1f srv_cpu=%.2f cli_cpu=%.2f "
          "login_wall=%.3f login_cpu=%.2f fetch_wall=%.3f fetch_cpu=%.2f fetch_msgs_per_s=%.1f "
          "ok=%d failed=%d missing=%d wrong=%d login=%.3f select=%.3f headers=%.3f bodies=%.3f"
          % (wall, msgs, msgs / wall if wall > 0 else 0, mbytes, mbytes / wall if wall > 0 else 0,
             s1 - s0, ccpu, t_mid - t0, s_mid - s0, fwall, s1 - s_mid,
             msgs / fwall if fwall > 0 else 0, len(ok), len(fails), missing, len(bad),
             med("t_login"), med("t_select"), med("t_headers"), med("t_bodies")))
    return 0 if not fails and not missing and not bad else 1


def cmd_warm(args):
    pw = _password(args.pass_file)
    t0 = time.monotonic()
    m = _connect(args.port, args.io_timeout)
    m.login(args.user, pw)
    typ, dat = m.select("INBOX")
    t1 = time.monotonic()
    if typ != "OK":
        print("imap_client: warm SELECT: %s %r" % (typ, dat), file=sys.stderr)
        return 1
    m.logout()
    print("%.3f %d" % (t1 - t0, int(_EXISTS.match(dat[0]).group(1))))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("maildir")
    g.add_argument("count", type=int)
    g.add_argument("seed", type=int, nargs="?", default=1)
    for name in ("warm", "run"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--user", required=True)
        p.add_argument("--pass-file", required=True)
        p.add_argument("--io-timeout", type=float, default=120.0,
                       help="seconds per socket operation")
        if name == "run":
            p.add_argument("--clients", type=int, default=20)
            p.add_argument("--chunk", type=int, default=100)
            p.add_argument("--expect-msgs", type=int, required=True)
            p.add_argument("--expect-bytes", type=int, required=True)
            p.add_argument("--server-pid", type=int)
            p.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    socket.setdefaulttimeout(None)
    if args.cmd == "gen":
        cmd_gen(args)
        return 0
    if args.cmd == "warm":
        return cmd_warm(args)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
