"""A small authoritative DNS server for kale's tests (stdlib only, UDP on
loopback): answers A, AAAA and MX from a dict, NXDOMAIN for unknown names,
NOERROR/no data for known names without the type, SERVFAIL for names listed
in `servfail`. Every query is recorded in `queries` as (name, type)."""
import socket
import struct
import threading

TYPES = {1: "A", 28: "AAAA", 15: "MX"}


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


class DnsServer(threading.Thread):
    def __init__(self, zone, servfail=(), host="127.0.0.1"):
        super().__init__(daemon=True)
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.servfail = {n.lower().rstrip(".") for n in servfail}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stop = False

    def answer(self, q):
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        name, off = decode_name(q, 12)
        qtype, qclass = struct.unpack("!HH", q[off:off + 4])
        question = q[12:off + 4]
        key = name.lower().rstrip(".")
        self.queries.append((key, TYPES.get(qtype, str(qtype))))
        rd = flags & 0x0100
        rrs = []
        if key in self.servfail:
            rcode = 2
        elif key not in self.zone:
            rcode = 3
        else:
            rcode = 0
            for v in self.zone[key].get(TYPES.get(qtype, ""), []):
                if qtype == 1:
                    rdata = socket.inet_pton(socket.AF_INET, v)
                elif qtype == 28:
                    rdata = socket.inet_pton(socket.AF_INET6, v)
                else:
                    rdata = struct.pack("!H", v[0]) + encode_name(v[1])
                rrs.append(b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata)
        hdr = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(rrs), 0, 0)
        return hdr + question + b"".join(rrs)

    def run(self):
        while not self.stop:
            try:
                q, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(q), addr)
            except (ValueError, struct.error, IndexError, OSError):
                pass

    def close(self):
        self.stop = True
        self.sock.close()
