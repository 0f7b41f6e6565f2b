"""A scriptable SMTP next hop for kale's relay tests (stdlib only): records
every connection and transaction exactly as it came over the wire, answers
per recipient from a callable, can offer STARTTLS, PIPELINING, SIZE."""
import socket
import ssl
import threading


class Tx:
    def __init__(self):
        self.mail = None          # the MAIL FROM line (bytes)
        self.rcpts = []           # RCPT TO lines that got 2xx (addresses, str)
        self.rcpt_lines = []      # every RCPT TO line
        self.data = None          # raw payload up to and including CRLF.CRLF
        self.tls = False
        self.pipelined = False    # RCPT/DATA were already buffered when MAIL was read


class Sink(threading.Thread):
    def __init__(self, host="127.0.0.1", ext=("PIPELINING", "8BITMIME", "SIZE 10485760"),
                 rcpt_reply=None, data_reply=None, certfile=None, keyfile=None,
                 greeting=b"220 sink.test ESMTP\r\n"):
        super().__init__(daemon=True)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.srv = socket.socket(fam)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((host, 0))
        self.srv.listen(64)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.ext = list(ext)
        self.rcpt_reply = rcpt_reply or (lambda addr, n: b"250 2.1.5 ok")
        self.data_reply = data_reply or (lambda tx: b"250 2.0.0 queued")
        self.tls_ctx = None
        if certfile:
            self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_ctx.load_cert_chain(certfile, keyfile)
        self.greeting = greeting
        self.lock = threading.Lock()
        self.txs = []             # completed transactions (DATA ended)
        self.all_txs = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.rcpt_seen = {}       # address -> RCPT count
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                s, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            threading.Thread(target=self.session, args=(s,), daemon=True).start()

    def session(self, s):
        s.settimeout(30)
        st = {"buf": b"", "sock": s, "tls": False}

        def line():
            while b"\r\n" not in st["buf"]:
                d = st["sock"].recv(65536)
                if not d:
                    raise EOFError
                st["buf"] += d
            l, st["buf"] = st["buf"].split(b"\r\n", 1)
            return l

        def send(b):
            st["sock"].sendall(b + b"\r\n")

        tx = None
        try:
            st["sock"].sendall(self.greeting)
            if not self.greeting.startswith(b"220"):
                return
            while True:
                l = line()
                v = l[:4].upper()
                if v in (b"EHLO", b"HELO"):
                    ext = list(self.ext)
                    if self.tls_ctx and not st["tls"]:
                        ext.append("STARTTLS")
                    if v == b"HELO" or not ext:
                        send(b"250 sink.test")
                    else:
                        out = [b"250-sink.test"] + [("250-" + e).encode() for e in ext[:-1]]
                        out.append(("250 " + ext[-1]).encode())
                        send(b"\r\n".join(out))
                elif v == b"STAR" and self.tls_ctx:
                    send(b"220 2.0.0 go ahead")
                    st["sock"] = self.tls_ctx.wrap_socket(st["sock"], server_side=True)
                    st["tls"] = True
                    st["buf"] = b""
                elif v == b"MAIL":
                    tx = Tx()
                    tx.mail = l
                    tx.tls = st["tls"]
                    tx.pipelined = b"RCPT" in st["buf"]
                    with self.lock:
                        self.all_txs.append(tx)
                    send(b"250 2.1.0 ok")
                elif v == b"RCPT":
                    addr = l.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    with self.lock:
                        n = self.rcpt_seen.get(addr, 0) + 1
                        self.rcpt_seen[addr] = n
                    tx.rcpt_lines.append(l)
                    r = self.rcpt_reply(addr, n)
                    if r.startswith(b"2"):
                        tx.rcpts.append(addr)
                    send(r)
                elif v == b"DATA":
                    if tx is None or not tx.rcpts:
                        send(b"554 5.5.1 no valid recipients")
                        continue
                    send(b"354 go")
                    while True:
                        buf = st["buf"]
                        idx = -2 if buf.startswith(b".\r\n") else buf.find(b"\r\n.\r\n")
                        if idx != -1:
                            break
                        d = st["sock"].recv(65536)
                        if not d:
                            raise EOFError
                        st["buf"] += d
                    tx.data = st["buf"][:idx + 5]
                    st["buf"] = st["buf"][idx + 5:]
                    r = self.data_reply(tx)
                    if r.startswith(b"2"):
                        with self.lock:
                            self.txs.append(tx)
                    send(r)
                    tx = None
                elif v == b"RSET":
                    tx = None
                    send(b"250 2.0.0 ok")
                elif v == b"QUIT":
                    # no longer active once QUIT is in: the client may open
                    # its next connection as soon as it reads the 221
                    with self.lock:
                        self.active -= 1
                    st["counted"] = False
                    send(b"221 2.0.0 bye")
                    return
                else:
                    send(b"250 2.0.0 ok")
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            if st.get("counted", True):
                with self.lock:
                    self.active -= 1
            try:
                st["sock"].close()
            except OSError:
                pass

    def delivered(self):
        """Addresses delivered (accepted in a transaction whose data got 2xx)."""
        with self.lock:
            return [a for t in self.txs for a in t.rcpts]

    def close(self):
        self.stop = True
        self.srv.close()
