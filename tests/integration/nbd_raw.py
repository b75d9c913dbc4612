"""nbd_raw: a raw NBD client for the protocol tests (imported by test-nbd-*.sh).

It speaks the protocol byte by byte (NetworkBlockDevice/nbd doc/proto.md) so a
test can send what libnbd refuses to: unknown options and commands, bad
magic, oversized payloads, half-sent requests. It also has small libnbd
helpers to check that another client is still served.

Run with Debian's /usr/bin/python3 (the one with `import nbd`); the socket
path comes from $SOCK.
"""
import os
import socket
import struct
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR | 1
REP_ERR_POLICY = REP_ERR | 2
REP_ERR_INVALID = REP_ERR | 3
REP_ERR_UNKNOWN = REP_ERR | 6
REP_ERR_TOO_BIG = REP_ERR | 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_BLOCK_SIZE = 3

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_SEND_DF = 1 << 7
TFLAG_CAN_MULTI_CONN = 1 << 8
TFLAG_SEND_CACHE = 1 << 10
TFLAG_SEND_FAST_ZERO = 1 << 11

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1
REPLY_NONE = 0
REPLY_OFFSET_DATA = 1
REPLY_OFFSET_HOLE = 2
REPLY_BLOCK_STATUS = 5
REPLY_ERROR = (1 << 15) | 1
REPLY_ERROR_OFFSET = (1 << 15) | 2

EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95


class Closed(Exception):
    """The server closed the connection."""


class Raw:
    def __init__(self, path=None, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path or os.environ["SOCK"])
        self.structured = False
        self.pending = {}  # cookie -> (type, length)
        self.next_cookie = 1
        self.size = None
        self.tflags = None

    def close(self):
        self.s.close()

    # ------------------------------------------------------------ bytes
    def send(self, b):
        self.s.sendall(b)

    def recvn(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.s.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise Closed(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def wait_closed(self, timeout):
        """True when the server closes the connection within timeout
        seconds (anything it sends first is discarded)."""
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.s.settimeout(left)
                try:
                    if not self.s.recv(65536):
                        return True
                except socket.timeout:
                    return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    # -------------------------------------------------------- handshake
    def greet(self, client_flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
        magic, optmagic, hflags = struct.unpack(">QQH", self.recvn(18))
        assert magic == NBDMAGIC, hex(magic)
        assert optmagic == IHAVEOPT, hex(optmagic)
        assert hflags & FLAG_FIXED_NEWSTYLE, hflags
        self.send(struct.pack(">I", client_flags))
        self.no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        return hflags

    def send_option(self, opt, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length) + data)

    def option_reply(self):
        magic, opt, typ, length = struct.unpack(">QIII", self.recvn(20))
        assert magic == REPMAGIC, hex(magic)
        return opt, typ, self.recvn(length)

    def option(self, opt, data=b""):
        """Sends an option and reads replies up to the final one.
        Returns (final_type, [(type, data), ...informational replies])."""
        self.send_option(opt, data)
        infos = []
        while True:
            ropt, typ, rdata = self.option_reply()
            assert ropt == opt, (ropt, opt)
            if typ == REP_ACK or typ & REP_ERR:
                return typ, infos, rdata
            infos.append((typ, rdata))

    def negotiate_structured(self):
        typ, _, _ = self.option(OPT_STRUCTURED_REPLY)
        assert typ == REP_ACK, hex(typ)
        self.structured = True

    @staticmethod
    def info_go_data(name, requests=()):
        n = name.encode()
        return struct.pack(">I", len(n)) + n + struct.pack(">H", len(requests)) + b"".join(
            struct.pack(">H", r) for r in requests)

    @staticmethod
    def meta_data(name, queries):
        n = name.encode()
        d = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
        for q in queries:
            d += struct.pack(">I", len(q)) + q.encode()
        return d

    @staticmethod
    def parse_infos(infos):
        """NBD_REP_INFO replies -> dict info type -> decoded value."""
        out = {}
        for typ, d in infos:
            assert typ == REP_INFO, typ
            itype = struct.unpack(">H", d[:2])[0]
            if itype == INFO_EXPORT:
                out[INFO_EXPORT] = struct.unpack(">QH", d[2:])
            elif itype == INFO_BLOCK_SIZE:
                out[INFO_BLOCK_SIZE] = struct.unpack(">III", d[2:])
            elif itype == INFO_NAME:
                out[INFO_NAME] = d[2:].decode()
        return out

    def go(self, name="", structured=True, meta=None):
        """Full handshake up to transmission with NBD_OPT_GO. meta: list of
        meta context queries to SET first (needs structured)."""
        self.greet()
        if structured:
            self.negotiate_structured()
        if meta is not None:
            typ, _, _ = self.option(OPT_SET_META_CONTEXT, self.meta_data(name, meta))
            assert typ == REP_ACK, hex(typ)
        typ, infos, _ = self.option(OPT_GO, self.info_go_data(name))
        assert typ == REP_ACK, hex(typ)
        self.size, self.tflags = self.parse_infos(infos)[INFO_EXPORT]
        return self

    # ----------------------------------------------------- transmission
    def request(self, typ, offset=0, length=0, flags=0, payload=b"", cookie=None):
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        self.pending[cookie] = (typ, length)
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, offset, length) + payload)
        return cookie

    def reply(self):
        """Reads one whole reply. Returns a dict: cookie, error (0 when
        none), data (bytes read), extents (list of (length, flags)),
        structured (bool), chunks (list of chunk types)."""
        magic = struct.unpack(">I", self.recvn(4))[0]
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recvn(12))
            typ, length = self.pending.pop(cookie)
            data = b""
            if typ == CMD_READ and err == 0:
                data = self.recvn(length)
            return dict(cookie=cookie, error=err, data=data, extents=[], structured=False, chunks=[])
        assert magic == STRUCTURED_MAGIC, f"bad reply magic {magic:#x}"
        out = dict(error=0, data=b"", extents=[], structured=True, chunks=[], message="")
        while True:
            if out["chunks"]:
                m = struct.unpack(">I", self.recvn(4))[0]
                assert m == STRUCTURED_MAGIC, f"bad chunk magic {m:#x}"
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recvn(16))
            body = self.recvn(length)
            out["cookie"] = cookie
            out["chunks"].append(ctype)
            if ctype == REPLY_OFFSET_DATA:
                out["data"] += body[8:]
            elif ctype == REPLY_OFFSET_HOLE:
                out["data"] += bytes(struct.unpack(">QI", body)[1])
            elif ctype == REPLY_BLOCK_STATUS:
                out["context"] = struct.unpack(">I", body[:4])[0]
                for i in range(4, len(body), 8):
                    out["extents"].append(struct.unpack(">II", body[i:i + 8]))
            elif ctype & (1 << 15):
                err, mlen = struct.unpack(">IH", body[:6])
                out["error"] = err
                out["message"] = body[6:6 + mlen].decode(errors="replace")
            if flags & REPLY_FLAG_DONE:
                break
        self.pending.pop(out["cookie"])
        return out

    def cmd(self, typ, offset=0, length=0, flags=0, payload=b""):
        cookie = self.request(typ, offset, length, flags, payload)
        r = self.reply()
        assert r["cookie"] == cookie, (r["cookie"], cookie)
        return r

    def disconnect(self):
        self.request(CMD_DISC)
        self.pending.clear()
        self.close()


# -------------------------------------------------------------- libnbd
def handle(export="", structured=True, meta=True):
    import nbd
    h = nbd.NBD()
    h.set_export_name(export)
    if not structured:
        h.set_request_structured_replies(False)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(os.environ["SOCK"])
    return h


def check_other_client(export="", offset=None, write=True):
    """A fresh libnbd connection can still read (and write, then read back)
    the export: the server is alive and serving."""
    h = handle(export)
    size = h.get_size()
    if offset is None:
        offset = size - 4096
    if write and not h.is_read_only():
        data = os.urandom(4096)
        h.pwrite(data, offset)
        assert h.pread(4096, offset) == data, "second client read back other data"
    else:
        assert len(h.pread(4096, offset)) == 4096
    h.shutdown()


def nbd_errno(fn, *args, **kw):
    """Runs a libnbd call that must fail; returns its errno number."""
    import nbd
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        return e.errnum
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} succeeded, expected an error")
