#!/usr/bin/python3
"""bench/verify_client.py: the data and the load for bench/verify.sh
(recipient verification at RCPT). Python standard library only.

  verify_client.py gen --users N --dir DIR
      writes DIR/users.tsv (one address a line, for LOAD DATA LOCAL INFILE)
      and DIR/users.ldif (suffix, ou=people and one inetOrgPerson per user,
      for slapadd)
  verify_client.py run --port P --count R [--sessions C] [--per-txn K]
                       [--users N] [--missing 0.10] [--seed S] [--timeout T]
                       [--label NAME] [--json FILE]
      C SMTP sessions, each: EHLO, then transactions of MAIL FROM + K RCPT TO
      + RSET until the session's share of R recipients is sent, QUIT. Each
      RCPT is timed from send to the end of its reply. The R addresses are
      distinct (drawn without replacement; a fraction --missing of them do not
      exist), chosen by --seed: the same seed gives the same addresses, which
      is how a second pass finds a warm cache. Prints one table row; --json
      appends the figures as one JSON line.

Users are user000000@corp.test .. user(N-1)@corp.test; missing addresses are
nosuch000000@corp.test ...; sessions run in separate processes (no GIL in the
latencies)."""
import argparse
import json
import multiprocessing
import os
import random
import resource
import signal
import socket
import sys
import threading
import time

DOMAIN = "corp.test"
SUFFIX = "dc=corp,dc=test"


def user_addr(i):
    return "user%06d@%s" % (i, DOMAIN)


def missing_addr(i):
    return "nosuch%06d@%s" % (i, DOMAIN)


def cmd_gen(args):
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "users.tsv"), "w") as f:
        for i in range(args.users):
            f.write(user_addr(i) + "\n")
    with open(os.path.join(args.dir, "users.ldif"), "w") as f:
        f.write("dn: %s\nobjectClass: dcObject\nobjectClass: organization\n"
                "o: corp\ndc: corp\n\n" % SUFFIX)
        f.write("dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n" % SUFFIX)
        for i in range(args.users):
            f.write("dn: uid=user%06d,ou=people,%s\nobjectClass: inetOrgPerson\n"
                    "uid: user%06d\ncn: User %d\nsn: U%d\nmail: %s\n\n"
                    % (i, SUFFIX, i, i, i, user_addr(i)))
    return 0


def addresses(count, users, missing, seed):
    """count distinct addresses, a share `missing` of them absent, shuffled."""
    rng = random.Random(seed)
    nmiss = int(round(count * missing))
    nfound = count - nmiss
    if nfound > users:
        raise SystemExit("verify_client: --count needs more than --users existing addresses")
    found = [user_addr(i) for i in rng.sample(range(users), nfound)]
    absent = [missing_addr(i) for i in rng.sample(range(max(users, nmiss)), nmiss)]
    out = [(a, True) for a in found] + [(a, False) for a in absent]
    rng.shuffle(out)
    return out


class Conn:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        """One (possibly multi-line) reply: returns its code."""
        while True:
            nl = self.buf.find(b"\r\n")
            while nl < 0:
                if len(self.buf) > 65536:
                    raise RuntimeError("reply line too long")
                data = self.sock.recv(65536)
                if not data:
                    raise RuntimeError("connection closed by the server")
                self.buf += data
                nl = self.buf.find(b"\r\n")
            line, self.buf = self.buf[:nl], self.buf[nl + 2:]
            if len(line) < 3 or not line[:3].isdigit():
                raise RuntimeError("bad reply line %r" % line[:80])
            if len(line) == 3 or line[3:4] == b" ":
                return int(line[:3]), line.decode("ascii", "replace")

    def cmd(self, text):
        self.sock.sendall(text.encode("ascii") + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def expect(got, code, what):
    if got[0] != code:
        raise RuntimeError("%s: expected %d, got %s" % (what, code, got[1][:200]))


def session(port, rcpts, per_txn, timeout, barrier, deadline):
    """Returns (latencies in seconds, {code: count}, first odd reply, error)."""
    lat = []
    codes = {}
    odd = None
    c = None
    try:
        c = Conn(port, timeout)
        expect(c.reply(), 220, "greeting")
        expect(c.cmd("EHLO client.bench.test"), 250, "EHLO")
        barrier.wait(timeout)
        i = 0
        while i < len(rcpts):
            if time.monotonic() > deadline:
                raise RuntimeError("run deadline passed")
            expect(c.cmd("MAIL FROM:<sender@client.bench.test>"), 250, "MAIL")
            for addr, _exists in rcpts[i:i + per_txn]:
                t0 = time.perf_counter()
                code, text = c.cmd("RCPT TO:<%s>" % addr)
                lat.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1
                if odd is None and code not in (250, 550):
                    odd = "%s -> %s" % (addr, text[:200])
                if code == 421:
                    raise RuntimeError("server closed the session: " + text[:200])
            i += per_txn
            expect(c.cmd("RSET"), 250, "RSET")
        c.cmd("QUIT")
        return lat, codes, odd, None
    except (OSError, RuntimeError, threading.BrokenBarrierError) as e:
        return lat, codes, odd, "%s: %s" % (type(e).__name__, e)
    finally:
        if c is not None:
            c.close()


def worker(idx, port, rcpts, per_txn, timeout, barrier, deadline, conn):
    res = session(port, rcpts, per_txn, timeout, barrier, deadline)
    conn.send(res)
    conn.close()


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def cmd_run(args):
    allr = addresses(args.count, args.users, args.missing, args.seed)
    shares = [allr[i::args.sessions] for i in range(args.sessions)]
    shares = [s for s in shares if s]
    ctx = multiprocessing.get_context("fork")
    # the parent waits at the barrier too: the clock starts when every
    # session is past EHLO
    barrier = ctx.Barrier(len(shares) + 1)
    deadline = time.monotonic() + args.timeout
    procs = []
    for i, share in enumerate(shares):
        rd, wr = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker, args=(i, args.port, share, args.per_txn,
                                             args.io_timeout, barrier, deadline, wr))
        p.start()
        wr.close()
        procs.append((p, rd))
    def on_term(signum, frame):
        for p, _rd in procs:
            if p.is_alive():
                p.kill()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        barrier.wait(args.io_timeout + 5)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    lat = []
    codes = {}
    errors = []
    odd = []
    for p, rd in procs:
        left = max(1.0, deadline + 10 - time.monotonic())
        if rd.poll(left):
            try:
                l, c, o, e = rd.recv()
            except EOFError:
                l, c, o, e = [], {}, None, "worker died"
        else:
            l, c, o, e = [], {}, None, "worker did not finish in time"
            p.kill()
        lat.extend(l)
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
        if o:
            odd.append(o)
        if e:
            errors.append(e)
        p.join(5)
    wall = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    lat.sort()
    n = len(lat)
    n4 = sum(v for k, v in codes.items() if 400 <= k < 500)
    other = sum(v for k, v in codes.items() if k not in (250, 550) and not 400 <= k < 500)
    res = {
        "label": args.label, "count": args.count, "sent": n, "sessions": len(shares),
        "wall_s": round(wall, 3), "rate": round(n / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(1000 * pct(lat, 50), 3), "p99_ms": round(1000 * pct(lat, 99), 3),
        "max_ms": round(1000 * lat[-1], 3) if lat else None,
        "c250": codes.get(250, 0), "c550": codes.get(550, 0), "c4xx": n4, "cother": other,
        "expect250": sum(1 for a, e in allr if e), "expect550": sum(1 for a, e in allr if not e),
        "client_cpu": round(ru.ru_utime + ru.ru_stime, 1),
        "errors": errors[:5], "odd": odd[:5],
    }
    print("%-22s %7d %8.1f %9.2f %9.2f %9.2f %7d %7d %5d %5d" % (
        args.label, n, res["rate"], res["p50_ms"], res["p99_ms"], res["max_ms"] or 0,
        res["c250"], res["c550"], n4, other))
    sys.stdout.flush()
    for e in errors[:5]:
        print("  session error: " + e, file=sys.stderr)
    for o in odd[:5]:
        print("  unexpected reply: " + o, file=sys.stderr)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    ok = (not errors and n == args.count and n4 == 0 and other == 0
          and res["c250"] == res["expect250"] and res["c550"] == res["expect550"])
    return 0 if ok else 1


def cmd_probe(args):
    """One session, one RCPT: prints the reply code."""
    c = Conn(args.port, args.io_timeout)
    try:
        expect(c.reply(), 220, "greeting")
        expect(c.cmd("EHLO client.bench.test"), 250, "EHLO")
        expect(c.cmd("MAIL FROM:<sender@client.bench.test>"), 250, "MAIL")
        print(c.cmd("RCPT TO:<%s>" % args.addr)[0])
        c.cmd("QUIT")
    finally:
        c.close()
    return 0


HEAD = ("%-18s %6s %8s %7s %7s %8s %6s %6s %4s %8s %7s %7s %6s %6s"
        % ("run", "rcpts", "lookup/s", "p50_ms", "p99_ms", "max_ms", "250", "550", "4xx",
           "kale_cpu", "db_cpu", "cli_cpu", "load1", "mlog_s"))


def cmd_report(args):
    """The table: JSON lines of `run` joined with the shell's TSV
    (label, kale CPU s, backend CPU s, load average at the start, mail log lag)."""
    extra = {}
    if os.path.exists(args.tsv):
        with open(args.tsv) as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) == 5:
                    extra[p[0]] = p[1:]
    print(HEAD)
    with open(args.json) as f:
        for line in f:
            r = json.loads(line)
            k, d, load, lag = extra.get(r["label"], ["-", "-", "-", "-"])
            n4 = r["c4xx"] + r["cother"]
            print("%-18s %6d %8.1f %7.2f %7.2f %8.1f %6d %6d %4s %8s %7s %7s %6s %6s" % (
                r["label"], r["sent"], r["rate"], r["p50_ms"], r["p99_ms"], r["max_ms"] or 0,
                r["c250"], r["c550"], n4 if not r["cother"] else "%d!" % n4, k, d, r.get("client_cpu", "-"), load, lag))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--users", type=int, default=100000)
    g.add_argument("--dir", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, default=20000)
    r.add_argument("--sessions", type=int, default=20)
    r.add_argument("--per-txn", type=int, default=500)
    r.add_argument("--users", type=int, default=100000)
    r.add_argument("--missing", type=float, default=0.10)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    r.add_argument("--io-timeout", type=float, default=60, help="seconds for one reply")
    r.add_argument("--label", default="run")
    r.add_argument("--json")
    r.add_argument("--header", action="store_true", help="print the table header first")
    pr = sub.add_parser("probe")
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--addr", required=True)
    pr.add_argument("--io-timeout", type=float, default=30)
    rep = sub.add_parser("report")
    rep.add_argument("--json", required=True)
    rep.add_argument("--tsv", required=True)
    args = ap.parse_args()
    if args.cmd == "gen":
        return cmd_gen(args)
    if args.cmd == "probe":
        return cmd_probe(args)
    if args.cmd == "report":
        return cmd_report(args)
    for v in ("count", "sessions", "per_txn", "users"):
        if getattr(args, v) <= 0:
            ap.error("--%s must be positive" % v.replace("_", "-"))
    if not 0 <= args.missing <= 1:
        ap.error("--missing must be in [0, 1]")
    if args.header:
        print("%-22s %7s %8s %9s %9s %9s %7s %7s %5s %5s" % (
            "run", "rcpts", "lookup/s", "p50_ms", "p99_ms", "max_ms", "250", "550", "4xx", "other"))
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
