"""A small authoritative DNS server for kale's tests (stdlib only, loopback
only), on UDP and on TCP at the same port number.

zone maps a name to {type: [values]}:
  A, AAAA   address strings
  MX        (preference, host) pairs
  TXT       each value one record: a str (or bytes), or a list of them, the
            character-strings of that record (one over 255 bytes is split)
  PTR       host names
  SPF       type 99 (RFC 4408's, obsolete): values as for TXT
(a single str may stand for a list of one, e.g. "TXT": "v=spf1 -all")
  CNAME     the target (a str, or a list of one); followed inside the answer
            like a real authoritative server when the target is in the zone
  SERVFAIL  True: a type without records at this name is answered SERVFAIL
            (the types with records are answered as usual)
  DROP      True: a type without records at this name gets no answer

Unknown names get NXDOMAIN, known names without the type NOERROR/no data,
names in `servfail` SERVFAIL, names in `drop` no answer at all (timeouts).
An answer over 512 bytes to a UDP query without EDNS (or over its EDNS size)
goes with TC set and no records, so that the client retries over TCP, where
the full answer is served.

raw={name: bytes_or_callable} serves hostile answers for a name, on both
transports: bytes are sent as they are, but for their first two bytes which
become the query's id; a callable is called as fn(query_bytes, tcp) and
returns the whole answer (bytes) or None for no answer.

Every query is recorded in `queries` as (name, type), TCP ones in
`tcp_queries` as well. close() stops both sockets."""
import socket
import struct
import threading

TYPES = {1: "A", 28: "AAAA", 15: "MX", 16: "TXT", 12: "PTR", 5: "CNAME", 99: "SPF"}
TYPE_CODES = {v: k for k, v in TYPES.items()}
T_OPT = 41
CNAME_HOPS = 16        # CNAMEs followed at most inside one answer
TCP_CONNS = 16         # TCP connections served at once
TCP_QUERIES = 64       # queries served on one TCP connection
IO_TIMEOUT = 2.0       # on a TCP connection's reads


def norm(name):
    return name.lower().rstrip(".")


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def decode_name(msg, off):
    labels = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0:
            raise ValueError("compressed question name")
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


def rr(owner, qtype, rdata, ttl=60):
    """One resource record; owner None is the question name (compressed)."""
    name = b"\xc0\x0c" if owner is None else encode_name(owner)
    return name + struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) + rdata


def txt_rdata(value):
    """The character-strings of one TXT record."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    out = b""
    for p in parts:
        b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
        chunks = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
        for c in chunks:
            out += bytes([len(c)]) + c
    return out


def rdata_of(qtype, v):
    if qtype == 1:
        return socket.inet_pton(socket.AF_INET, v)
    if qtype == 28:
        return socket.inet_pton(socket.AF_INET6, v)
    if qtype == 15:
        return struct.pack("!H", v[0]) + encode_name(v[1])
    if qtype in (16, 99):
        return txt_rdata(v)
    return encode_name(v)      # PTR, CNAME


def parse_query(q):
    """(id, flags, name, qtype, question bytes, EDNS payload size or 0)."""
    qid, flags, qd, _an, _ns, ar = struct.unpack("!HHHHHH", q[:12])
    if qd != 1:
        raise ValueError("not one question")
    name, off = decode_name(q, 12)
    qtype, _qclass = struct.unpack("!HH", q[off:off + 4])
    question = q[12:off + 4]
    edns = 0
    off += 4
    if ar and off + 11 <= len(q) and q[off] == 0:
        otype, osize = struct.unpack("!HH", q[off + 1:off + 5])
        if otype == T_OPT:
            edns = max(osize, 512)
    return qid, flags, name, qtype, question, edns


class DnsServer(threading.Thread):
    def __init__(self, zone, servfail=(), host="127.0.0.1", drop=(), raw=None):
        super().__init__(daemon=True)
        if not (host.startswith("127.") or host == "::1"):
            raise ValueError("loopback only")
        self.zone = {norm(k): v for k, v in zone.items()}
        self.servfail = {norm(n) for n in servfail}
        self.drop = {norm(n) for n in drop}
        self.raw = {norm(k): v for k, v in (raw or {}).items()}
        self.queries = []
        self.tcp_queries = []
        self.stop = False
        self.conns = set()
        self.lock = threading.Lock()
        self.sock, self.tsock = self._bind(host)
        self.port = self.sock.getsockname()[1]

    @staticmethod
    def _bind(host):
        """UDP on a free port, TCP on the same port number (a few tries)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50):
            u = socket.socket(fam, socket.SOCK_DGRAM)
            u.bind((host, 0))
            t = socket.socket(fam, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind((host, u.getsockname()[1]))
                t.listen(16)
            except OSError:
                u.close()
                t.close()
                continue
            u.settimeout(0.2)
            t.settimeout(0.2)
            return u, t
        raise OSError("no port free for both UDP and TCP")

    def load(self, zone, servfail=(), drop=(), raw=None):
        """Serves another zone from now on (and forgets the queries)."""
        self.zone = {norm(k): v for k, v in zone.items()}
        self.servfail = {norm(n) for n in servfail}
        self.drop = {norm(n) for n in drop}
        self.raw = {norm(k): v for k, v in (raw or {}).items()}
        self.queries = []
        self.tcp_queries = []

    def _records(self, key, qtype):
        """(rcode, answer records) for (key, qtype), CNAMEs followed; rcode
        None: no answer at all."""
        rrs = []
        cur, seen = key, set()
        for _ in range(CNAME_HOPS + 1):
            entry = self.zone.get(cur)
            if entry is None:
                return (3 if cur == key else 0), rrs
            cname = entry.get("CNAME")
            if cname and qtype != 5:
                target = norm(cname if isinstance(cname, str) else cname[0])
                rrs.append(rr(None if cur == key else cur, 5, encode_name(target)))
                seen.add(cur)
                if target in seen:
                    break          # a loop: each CNAME once
                cur = target
                continue
            values = entry.get(TYPES.get(qtype, ""), [])
            if isinstance(values, (str, bytes)):
                values = [values]          # a single value
            if not values and entry.get("DROP"):
                return None, []
            if not values and entry.get("SERVFAIL"):
                return 2, []
            for v in values:
                rrs.append(rr(None if cur == key else cur, qtype, rdata_of(qtype, v)))
            break
        return 0, rrs

    def answer(self, q, tcp=False):
        """The answer to query q, or None for no answer."""
        qid, flags, name, qtype, question, edns = parse_query(q)
        key = norm(name)
        self.queries.append((key, TYPES.get(qtype, str(qtype))))
        if tcp:
            self.tcp_queries.append((key, TYPES.get(qtype, str(qtype))))
        if key in self.raw:
            v = self.raw[key]
            if callable(v):
                return v(q, tcp)
            v = bytes(v)
            return q[:2] + v[2:] if len(v) >= 2 else v
        if key in self.drop:
            return None
        rd = flags & 0x0100
        rrs = []
        if key in self.servfail:
            rcode = 2
        else:
            rcode, rrs = self._records(key, qtype)
            if rcode is None:
                return None
        opt = b"\0" + struct.pack("!HHIH", T_OPT, 4096, 0, 0) if edns else b""
        body = question + b"".join(rrs) + opt
        tc = 0
        if not tcp and 12 + len(body) > (edns or 512):
            tc, rrs, body = 0x0200, [], question + opt
        hdr = struct.pack("!HHHHHH", qid, 0x8400 | tc | rd | rcode, 1, len(rrs), 0,
                          1 if opt else 0)
        return hdr + body

    def run(self):
        threading.Thread(target=self._tcp_loop, daemon=True).start()
        while not self.stop:
            try:
                q, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                a = self.answer(q)
                if a is not None:
                    self.sock.sendto(a, addr)
            except (ValueError, struct.error, IndexError, OSError):
                pass

    def _tcp_loop(self):
        while not self.stop:
            try:
                c, _ = self.tsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                if self.stop or len(self.conns) >= TCP_CONNS:
                    c.close()
                    continue
                self.conns.add(c)
            threading.Thread(target=self._tcp_conn, args=(c,), daemon=True).start()

    @staticmethod
    def _recv_exact(c, n):
        out = b""
        while len(out) < n:
            b = c.recv(n - len(out))
            if not b:
                raise EOFError
            out += b
        return out

    def _tcp_conn(self, c):
        c.settimeout(IO_TIMEOUT)
        try:
            for _ in range(TCP_QUERIES):
                if self.stop:
                    break
                n = struct.unpack("!H", self._recv_exact(c, 2))[0]
                q = self._recv_exact(c, n)
                try:
                    a = self.answer(q, tcp=True)
                except (ValueError, struct.error, IndexError):
                    continue
                if a is not None:
                    c.sendall(struct.pack("!H", len(a) & 0xFFFF) + a[:0xFFFF])
        except (EOFError, OSError, struct.error):
            pass
        finally:
            with self.lock:
                self.conns.discard(c)
            c.close()

    def close(self):
        self.stop = True
        self.sock.close()
        self.tsock.close()
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
