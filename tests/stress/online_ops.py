#!/usr/bin/python3
"""online_ops.py: randomized concurrency test of online operations on a cow device.

Run by Debian's /usr/bin/python3 (it has the libnbd bindings, `import nbd`).

It starts its own `strata serve` on a table of a random base file and a cow stack
(l1.layer under top.layer) and drives device `d` over NBD with many requests in
flight (writes, write-zeroes, trims of 1 byte .. 1 MiB at random alignments, mostly
small and straddling chunk boundaries, some FUA; FLUSH now and then; reads). An
in-memory reference of the device stays exact because no request is issued whose
byte range overlaps one still in flight. Every read is checked against it. TRIM is
modelled as zeros: on cow it is WRITE_ZEROES (whole chunks marked zero, the partial
chunks at its ends written with zeros; docs/targets/cow.md states the whole-chunk
part), and every later read checks that.

While the I/O runs, online operations run one after another through the CLI (a
subprocess, so the I/O goes on meanwhile): snapshot, merge of the top, merge --layer
of a middle layer, flatten --to, and a dirty map (start, checkpoint, sync, sync
--final). After each: drain, read the whole device, compare every byte.

  * flatten and `sync --final` must produce a point-in-time copy: the device as it
    was at ONE moment T between the command's start and its reply. At T every
    request acknowledged before T is applied, none issued after T is, and each one
    in flight at T is applied entirely or not at all (see PointInTime).
  * a non-final sync followed by one more sync at a quiet point leaves a replica
    equal to the device; at every quiet point, the blocks where the replica differs
    from the device must be dirty in the map (the map misses no write).
  * at the end: FLUSH, a burst of unflushed writes (some FUA), maybe a merge or a
    snapshot, then `kill -9` with requests in flight, restart, and check the crash
    rules (check_crash), finish an interrupted merge, and that the dirty map still
    covers every change.

Exit status 0 when every check passes, 1 on the first failure (the seed and the
command line to rerun it are printed), 2 on a usage error. The last line is a
one-line summary of key=value fields (scripts/soak.sh sums them).
`--selftest` checks the checkers themselves (a fuzzy copy must be caught).
"""

import argparse
import bisect
import collections
import json
import os
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

try:
    import nbd
except ImportError:  # --selftest needs no server
    nbd = None

MiB = 1 << 20
WRITE_KINDS = ("write", "zero", "trim")
MAP = "m"                   # the dirty map's name
MAP_GRANULARITY = 4096
OP_TIMEOUT = 120.0          # an operation (or a drain) taking longer is a hang
REQ_TIMEOUT = 60.0          # a request in flight longer than this is a hang
ALL_OPS = ("snapshot", "merge", "merge_layer", "flatten", "dirty_start", "checkpoint", "sync", "sync_final")


class Failure(Exception):
    pass


def hexs(b, n=16):
    return bytes(b[:n]).hex(" ") + (" ..." if len(b) > n else "")


# ----------------------------------------------------------------- comparing

def first_diff(a, b, start=0, end=None):
    """Offset of the first byte where a and b differ in [start, end), or None."""
    end = len(a) if end is None else end
    step = MiB
    pos = start
    while pos < end:
        e = min(end, pos + step)
        if a[pos:e] != b[pos:e]:
            if e - pos <= 64:
                for i in range(pos, e):
                    if a[i] != b[i]:
                        return i
            step = max(64, (e - pos) // 16)
            end = e
            continue
        pos = e
    return None


def diff_runs(expected, got, limit=4):
    """Runs of differing bytes: [(offset, length)] (a run ends at 512 equal bytes),
    the first `limit` of them, and the number of 4 KiB blocks that differ."""
    runs, bad_blocks = [], 0
    n = len(expected)
    for p in range(0, n, MiB):
        if expected[p:p + MiB] == got[p:p + MiB]:
            continue
        for b in range(p, min(n, p + MiB), 4096):
            if expected[b:b + 4096] != got[b:b + 4096]:
                bad_blocks += 1
    pos = 0
    while len(runs) < limit:
        s = first_diff(expected, got, pos)
        if s is None:
            break
        e = s + 1  # extend while the next 512 bytes still hold a difference
        while True:
            d = first_diff(expected, got, e, min(n, e + 512))
            if d is None:
                break
            e = d + 1
        runs.append((s, e - s))
        pos = e
    return runs, bad_blocks


# ----------------------------------------------------------- point in time

class PointInTime:
    """Whether `image` equals the device at one moment T of a recorded window.

    c0: the reference at the window's start (requests completed so far applied);
    start_inflight: write requests in flight then; events: ('I'|'C', req) in order.
    A req has off, len and new() (the bytes it writes).

    Candidates T: the start and just after each event. At T, with C = requests
    completed applied and F = requests in flight, the image fits iff for some
    choice of applied/not-applied per request of F it equals C with the applied
    ones laid over it. Requests in flight never overlap, so the best choice is
    per request: applied iff image[r] == r.new (else image[r] must equal C[r]).
    So one candidate state X(T) per T; X changes only on r's range at each event
    (issue: laid over if the image holds r.new; completion: r.new). We keep the
    set D of blocks where X differs from the image, updated per event: T fits iff
    D is empty.
    """

    def __init__(self, c0, start_inflight, events, block=4096):
        self.c0, self.start_inflight, self.events, self.block = c0, start_inflight, events, block

    def _recheck(self, x, image, d, a, e):
        bs = self.block
        for b in range(a // bs, (e - 1) // bs + 1):
            s = b * bs
            if x[s:s + bs] == image[s:s + bs]:
                d.discard(b)
            else:
                d.add(b)

    def check(self, image):
        """(index of the first fitting T or None, details on failure)."""
        if len(image) != len(self.c0):
            return None, "size %d, expected %d" % (len(image), len(self.c0))
        bs = self.block
        x = bytearray(self.c0)
        for r in self.start_inflight:
            if image[r.off:r.off + r.len] == r.new():
                x[r.off:r.off + r.len] = r.new()
        d = set()
        n = len(x)
        for p in range(0, n, MiB):
            if x[p:p + MiB] != image[p:p + MiB]:
                self._recheck(x, image, d, p, min(n, p + MiB))
        if not d:
            return 0, None
        best = (len(d), 0, min(d), bytes(x[min(d) * bs:(min(d) + 1) * bs]))
        for i, (kind, r) in enumerate(self.events):
            if r.len == 0:
                continue
            new = r.new()
            if kind == "I":
                if image[r.off:r.off + r.len] != new:
                    continue
            x[r.off:r.off + r.len] = new
            self._recheck(x, image, d, r.off, r.off + r.len)
            if not d:
                return i + 1, None
            if len(d) < best[0]:
                b = min(d)
                best = (len(d), i + 1, b, bytes(x[b * bs:(b + 1) * bs]))
        nbad, t, b, xb = best
        got = image[b * bs:(b + 1) * bs]
        off = next(i for i in range(len(xb)) if xb[i] != got[i])
        return None, ("no moment fits: %d candidate moments (%d write events); the closest, after "
                      "event %d, still differs in %d block(s) of %d bytes; first at offset %d: "
                      "expected %s got %s"
                      % (len(self.events) + 1, len(self.events), t, nbad, bs, b * bs + off,
                         hexs(xb[off:]), hexs(got[off:])))


def naive_point_in_time(c0, start_inflight, events, image):
    """Brute force (for --selftest): every T, every subset of the requests in flight."""
    cur = bytearray(c0)
    inflight = list(start_inflight)

    def fits():
        for mask in range(1 << len(inflight)):
            s = bytearray(cur)
            for j, r in enumerate(inflight):
                if mask >> j & 1:
                    s[r.off:r.off + r.len] = r.new()
            if s == image:
                return True
        return False

    if fits():
        return True
    for kind, r in events:
        if kind == "I":
            inflight.append(r)
        else:
            inflight.remove(r)
            cur[r.off:r.off + r.len] = r.new()
        if fits():
            return True
    return False


# ------------------------------------------------------------------ crash rules

def check_crash(flushed, got, burst):
    """After kill -9: burst = the write requests issued after the last FLUSH, in
    issue order, each with off, len, new(), fua, acked. Returns None or a message.

      - a byte no burst request touched equals the flushed reference;
      - a byte of an acknowledged FUA write equals its data, unless a later burst
        write covered it (then that write's data is allowed too);
      - any other burst byte equals the flushed value or the data of a burst
        write covering it.
    Checked in pieces cut at every request edge and every 4 KiB (a write may be
    torn at page or chunk boundaries); a piece matching no candidate as a whole is
    checked byte by byte."""
    n = len(flushed)
    if len(got) != n:
        return "size %d, expected %d" % (len(got), n)
    spans = sorted((r.off, r.off + r.len) for r in burst if r.len)
    cover = []
    for s, e in spans:
        if cover and s <= cover[-1][1]:
            cover[-1][1] = max(cover[-1][1], e)
        else:
            cover.append([s, e])
    prev = 0
    for s, e in cover + [[n, n]]:
        p = first_diff(flushed, got, prev, s)
        if p is not None:
            return ("offset %d, untouched by the burst, is not the flushed value: expected %s got %s"
                    % (p, hexs(flushed[p:s]), hexs(got[p:s])))
        prev = e
    cuts = set()
    for s, e in cover:
        cuts.update(range(s, e, 4096))
        cuts.add(s - s % 4096)
        cuts.add(e)
    for r in burst:
        cuts.add(r.off)
        cuts.add(r.off + r.len)
    cuts = sorted(cuts)
    covering = collections.defaultdict(list)  # piece index -> burst indexes
    for i, r in enumerate(burst):
        a = bisect.bisect_left(cuts, r.off)
        e = bisect.bisect_left(cuts, r.off + r.len)
        for k in range(a, e):
            covering[k].append(i)
    for k in sorted(covering):
        a, e = cuts[k], cuts[k + 1]
        idx = covering[k]
        last_fua = None
        for i in idx:
            if burst[i].fua and burst[i].acked:
                last_fua = i
        if last_fua is None:
            srcs = [("flushed", flushed[a:e])] + [("#%d" % burst[i].id, burst[i].new()[a - burst[i].off:e - burst[i].off]) for i in idx]
        else:
            srcs = [("#%d" % burst[i].id, burst[i].new()[a - burst[i].off:e - burst[i].off]) for i in idx if i >= last_fua]
        g = got[a:e]
        if any(g == s for _, s in srcs):
            continue
        for p in range(e - a):
            if not any(g[p] == s[p] for _, s in srcs):
                what = ("acknowledged FUA write #%d (%d+%d)" % (burst[last_fua].id, burst[last_fua].off, burst[last_fua].len)
                        if last_fua is not None else "no acknowledged FUA write")
                return ("offset %d (covered by %s; %s): got %s, allowed: %s"
                        % (a + p, ", ".join("#%d %s %d+%d%s%s" % (burst[i].id, burst[i].kind, burst[i].off, burst[i].len,
                                                                 " FUA" if burst[i].fua else "", " acked" if burst[i].acked else "")
                                            for i in idx), what, hexs(g[p:]),
                           "; ".join("%s %s" % (nm, hexs(s[p:])) for nm, s in srcs)))
    return None


# ----------------------------------------------------------------- the server

def power_cut(path):
    """A power cut of the filesystem holding `path` (XFS): `xfs_io -x -c shutdown`
    without a log flush, so every write not yet on stable storage (not fsynced,
    or metadata not in the log) is lost; then unmount and mount it again."""
    def findmnt(col):
        return subprocess.run(["findmnt", "-n", "-o", col, "-T", path], capture_output=True, text=True,
                              check=True).stdout.strip()
    mnt, dev, fstype = findmnt("TARGET"), findmnt("SOURCE"), findmnt("FSTYPE")
    if fstype != "xfs":
        raise Failure("--powercut needs the working directory on XFS; %s is on %s (%s)" % (path, fstype, mnt))
    for cmd in (["xfs_io", "-x", "-c", "shutdown", mnt], ["umount", mnt], ["mount", dev, mnt]):
        # The killed server's io_uring lets go of its files a moment after the
        # process is gone: umount is busy until then.
        deadline = time.time() + 20
        while True:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode == 0 or cmd[0] != "umount" or time.time() > deadline:
                break
            time.sleep(0.1)
        if p.returncode:
            raise Failure("power cut: %s: %s" % (" ".join(cmd), (p.stdout + p.stderr).strip()))


class Server:
    def __init__(self, strata, workdir, table):
        self.strata, self.dir, self.table = strata, workdir, table
        self.sock = os.path.join(workdir, "nbd.sock")
        self.ctl = os.path.join(workdir, "control.sock")
        self.log = os.path.join(workdir, "strata.log")
        self.proc = None

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        with open(self.log, "a") as lf:
            lf.write("==== strata serve (%s)\n" % time.strftime("%H:%M:%S"))
            lf.flush()
            self.proc = subprocess.Popen(
                [self.strata, "serve", "--unix", self.sock, "--control", self.ctl, "--allow-path", self.dir,
                 "--state-dir", os.path.join(self.dir, "state"), "--table", self.table],
                stdout=lf, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Failure("strata serve exited during start-up (status %s); see %s" % (self.proc.returncode, self.log))
            if os.path.exists(self.ctl) and os.path.exists(self.sock) and subprocess.run(
                    self.cli("list"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.05)
        raise Failure("strata serve did not start within 10 s")

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise Failure("strata did not exit within 10 s of SIGTERM")
        self.proc = None
        if rc != 0:
            raise Failure("strata exited with status %d after SIGTERM" % rc)

    def cli(self, *args):
        return [self.strata] + list(args) + ["--control", self.ctl]

    def run(self, *args, timeout=OP_TIMEOUT):
        """A CLI command run to completion (I/O quiet meanwhile): its JSON reply."""
        try:
            p = subprocess.run(self.cli(*args, "--json"), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("`strata %s` did not finish within %d s" % (" ".join(args), timeout))
        if p.returncode != 0:
            raise Failure("`strata %s` failed (status %d): %s" % (" ".join(args), p.returncode, p.stderr.strip()))
        return json.loads(p.stdout)

    def spawn(self, *args):
        """A CLI command in the background (the I/O goes on): Popen, output in files."""
        out = open(os.path.join(self.dir, "cli.out"), "w+")
        err = open(os.path.join(self.dir, "cli.err"), "w+")
        p = subprocess.Popen(self.cli(*args, "--json"), stdout=out, stderr=err)
        p.files = (out, err)
        p.what = "strata " + " ".join(args)
        return p

    @staticmethod
    def finish(p):
        """(status, stdout, stderr) of a spawned command that has exited."""
        out, err = p.files
        out.seek(0)
        err.seek(0)
        res = (p.returncode, out.read(), err.read())
        out.close()
        err.close()
        return res

    def died(self):
        """'' while the server runs, else how it ended (for failure messages)."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        rc = self.proc.returncode
        if rc < 0:
            return "; strata DIED: killed by %s" % signal.Signals(-rc).name
        return "; strata EXITED with status %d" % rc

    def log_tail(self, n=30):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def stack_paths(top):
    """Layer paths of the stack, top first, by following the parent links in the
    layer headers (docs/format.md). `strata status` gives only the count."""
    paths, p = [], top
    while True:
        with open(p, "rb") as f:
            hdr = f.read(4096)
        if hdr[:8] != b"STRATCOW":
            raise Failure("%s: not a layer (magic %r)" % (p, hdr[:8]))
        paths.append(p)
        if hdr[48:64] == bytes(16):
            return paths
        n = struct.unpack_from("<H", hdr, 96)[0]
        p = os.path.normpath(os.path.join(os.path.dirname(p), hdr[98:98 + n].decode()))
        if len(paths) > 64:
            raise Failure("layer stack loops at %s" % p)


# --------------------------------------------------------------------- requests

class Req:
    __slots__ = ("id", "kind", "off", "len", "data", "fua", "flags", "buf", "rbuf", "err", "acked", "t_issue")

    def __init__(self, rid, kind, off, length, data=None, fua=False):
        self.id, self.kind, self.off, self.len, self.data, self.fua = rid, kind, off, length, data, fua
        self.flags, self.buf, self.rbuf, self.err, self.acked, self.t_issue = 0, None, None, None, False, 0.0

    def new(self):
        """The bytes this request leaves on the device (write-zeroes and trim: zeros)."""
        return self.data if self.kind == "write" else bytes(self.len)

    def __repr__(self):
        return "#%d %s %d+%d%s" % (self.id, self.kind, self.off, self.len, " FUA" if self.fua else "")


class Recorder:
    """Write events during an operation, for PointInTime."""

    def __init__(self, io):
        self.c0 = bytes(io.ref)
        self.start_inflight = [r for r in io.inflight.values() if r.kind in WRITE_KINDS]
        self.events = []

    def checker(self):
        return PointInTime(self.c0, self.start_inflight, self.events)


class IO:
    """One NBD connection to device d with many requests in flight, and the reference."""

    def __init__(self, t, uri, ref, chunk):
        self.t = t
        self.rng = t.rng
        self.ref = ref
        self.size = len(ref)
        self.chunk = chunk
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        if self.h.get_size() != self.size:
            raise Failure("device size %d, expected %d" % (self.h.get_size(), self.size))
        self.inflight = {}
        self.done = []
        self.recorders = []
        self.burst = None          # the crash phase's write log
        self.dead = False
        self.history = collections.deque(maxlen=2000)  # completed writes, for diagnostics
        self.hot, self.hot_len, self.hot_left = 0, 0, 0

    def close(self):
        self.dead = True
        try:
            self.h.close()
        except Exception:
            pass

    # ---- choosing requests
    def _move_hot(self):
        c = self.chunk
        self.hot_len = min(self.size // 4, 64 * c) // c * c
        self.hot = self.rng.randrange(0, (self.size - self.hot_len) // c + 1) * c
        self.hot_left = self.rng.randint(200, 1500)

    def pick_range(self):
        """(offset, length): mostly small and unaligned, often a sub-chunk piece
        straddling a chunk boundary; half of them in a hot window (rewrites of chunks
        the top already holds)."""
        rng, c, size = self.rng, self.chunk, self.size
        r = rng.random()
        if r < 0.35:            # sub-chunk, straddling a chunk boundary
            ln = rng.randint(2, c)
            off = rng.randrange(1, size // c) * c - rng.randint(1, ln - 1)
        elif r < 0.55:          # tiny or small, any alignment
            ln = rng.randint(1, 64) if rng.random() < 0.3 else rng.randint(1, 4096)
            off = rng.randrange(0, size - ln + 1)
        elif r < 0.68:          # sector-aligned
            ln = 512 * rng.randint(1, 128)
            off = 512 * rng.randrange(0, (size - ln) // 512 + 1)
        elif r < 0.83:          # whole chunks, sometimes shifted off alignment
            nmax = max(1, min(MiB // c, 16))
            ln = c * rng.randint(1, nmax)
            off = c * rng.randrange(0, (size - ln) // c + 1)
            if rng.random() < 0.3:
                off = min(size - ln, off + rng.randint(1, c - 1))
        elif r < 0.97:          # medium, unaligned
            ln = rng.randint(4097, 128 << 10)
            off = rng.randrange(0, size - ln + 1)
        else:                   # large, up to 1 MiB
            ln = rng.randint(128 << 10, MiB)
            off = rng.randrange(0, size - ln + 1)
        if rng.random() < 0.5:
            if self.hot_left <= 0:
                self._move_hot()
            self.hot_left -= 1
            off = self.hot + off % self.hot_len  # keeps the offset within a chunk
            if off + ln > size:
                off = size - ln
        return off, ln

    def overlaps(self, off, ln):
        end = off + ln
        for r in self.inflight.values():
            if off < r.off + r.len and r.off < end:
                return True
        return False

    def issue_random(self, kinds=None, fua_p=0.05):
        """Issue one random request (None when every range tried overlaps one in flight)."""
        rng = self.rng
        if kinds is None:
            x = rng.random()
            kind = "read" if x < 0.25 else "write" if x < 0.78 else "zero" if x < 0.88 else "trim" if x < 0.99 else "flush"
        else:
            kind = rng.choice(kinds)
        if kind == "flush":
            return self.issue(Req(self.t.next_id(), "flush", 0, 0))
        for _ in range(6):
            off, ln = self.pick_range()
            if not self.overlaps(off, ln):
                break
        else:
            return None
        fua = kind != "read" and rng.random() < fua_p
        data = self.t.data(ln) if kind == "write" else None
        req = Req(self.t.next_id(), kind, off, ln, data, fua)
        if kind == "zero" and rng.random() < 0.3:
            req.flags |= nbd.CMD_FLAG_NO_HOLE
        return self.issue(req)

    # ---- issuing and completing
    def issue(self, r):
        cb = lambda err, r=r: self._complete(r, err)
        flags = r.flags | (nbd.CMD_FLAG_FUA if r.fua else 0)
        r.t_issue = time.time()
        try:
            if r.kind == "write":
                r.buf = nbd.Buffer.from_buffer(r.data)
                self.h.aio_pwrite(r.buf, r.off, completion=cb, flags=flags)
            elif r.kind == "read":
                r.rbuf = bytearray(r.len)
                r.buf = nbd.Buffer.from_buffer(r.rbuf)
                self.h.aio_pread(r.buf, r.off, completion=cb)
            elif r.kind == "zero":
                self.h.aio_zero(r.len, r.off, completion=cb, flags=flags)
            elif r.kind == "trim":
                self.h.aio_trim(r.len, r.off, completion=cb, flags=flags)
            else:
                self.h.aio_flush(completion=cb)
        except nbd.Error as e:
            raise Failure("could not issue %r: %s" % (r, e))
        self.inflight[r.id] = r
        self.t.count_request(r)
        if r.kind in WRITE_KINDS:
            for rec in self.recorders:
                rec.events.append(("I", r))
            if self.burst is not None:
                self.burst.append(r)
        return r

    def _complete(self, r, err):
        if not self.dead:
            r.err = err.value
            self.done.append(r)
        return 1

    def pump(self, timeout_ms=10):
        """Wait (at most timeout_ms) for completions and process them."""
        if self.inflight:
            try:
                self.h.poll(timeout_ms)
            except nbd.Error as e:
                raise Failure("NBD connection, during %s: %s%s" % (self.t.activity(), e, self.t.srv.died()))
        elif timeout_ms > 0:
            time.sleep(timeout_ms / 1000.0)
        done, self.done = self.done, []
        for r in done:
            del self.inflight[r.id]
            if r.err:
                raise Failure("request %r failed during %s: %s (errno %d)%s" % (
                    r, self.t.activity(), os.strerror(r.err), r.err, self.t.srv.died()))
            r.acked = True
            if r.kind in WRITE_KINDS:
                self.ref[r.off:r.off + r.len] = r.new()
                self.history.append(r)
                for rec in self.recorders:
                    rec.events.append(("C", r))
                r.buf = None
            elif r.kind == "read":
                if r.rbuf != self.ref[r.off:r.off + r.len]:
                    p = first_diff(bytes(self.ref[r.off:r.off + r.len]), r.rbuf)
                    raise Failure("read %r during %s returned wrong data at offset %d: expected %s got %s\n%s"
                                  % (r, self.t.activity(), r.off + p, hexs(self.ref[r.off + p:r.off + r.len]),
                                     hexs(r.rbuf[p:]), self.t.explain(r.off + p, r.rbuf[p:p + 16])))
                r.buf = r.rbuf = None
        if self.inflight:
            oldest = min(r.t_issue for r in self.inflight.values())
            if time.time() - oldest > REQ_TIMEOUT:
                raise Failure("a request has been in flight for %d s (during %s): %s" % (
                    REQ_TIMEOUT, self.t.activity(), sorted(self.inflight.values(), key=lambda r: r.t_issue)[:3]))

    def fill(self, depth, **kw):
        """Issue requests until `depth` are in flight."""
        tries = 0
        while len(self.inflight) < depth and tries < depth:
            tries += 1
            self.issue_random(**kw)

    def drain(self):
        deadline = time.time() + OP_TIMEOUT
        while self.inflight:
            self.pump(100)
            if time.time() > deadline:
                raise Failure("requests still in flight after %d s: %s" % (OP_TIMEOUT, list(self.inflight.values())[:4]))

    def flush(self):
        self.issue(Req(self.t.next_id(), "flush", 0, 0))
        self.drain()

    def read_all(self):
        """The whole device (no request in flight)."""
        assert not self.inflight
        out = bytearray(self.size)
        piece = 4 * MiB
        for p in range(0, self.size, piece):
            n = min(piece, self.size - p)
            try:
                out[p:p + n] = self.h.pread(n, p)
            except nbd.Error as e:
                raise Failure("reading the device at %d+%d: %s" % (p, n, e))
        return out


# ------------------------------------------------------------------- the test

class Test:
    def __init__(self, a):
        self.a = a
        self.seed = a.seed
        self.rng = random.Random(self.seed)
        self.drng = random.Random(self.seed * 7919 + 1)   # data bytes
        self.size = a.size * MiB
        self.chunk = a.chunk_size
        self.depth = a.depth
        self.skip = set(a.skip)
        self.counts = collections.Counter()
        self.req_id = 0
        self.current = "I/O only"
        self.current_t0 = time.time()
        self.oplog = []
        self.have_map = False
        self.t0 = time.time()

    # ---- bookkeeping
    def next_id(self):
        self.req_id += 1
        return self.req_id

    def data(self, n):
        return self.drng.randbytes(n)

    def count_request(self, r):
        self.counts["requests"] += 1
        self.counts[r.kind + ("es" if r.kind == "flush" else "s")] += 1
        self.counts["bytes"] += r.len
        if r.fua:
            self.counts["fua"] += 1

    def activity(self):
        if self.current == "I/O only":
            return "I/O only (after %s)" % (self.oplog[-1] if self.oplog else "no operation yet")
        return "%s (running for %.0f ms)" % (self.current, 1000 * (time.time() - self.current_t0))

    def explain(self, off, got):
        """What the bytes got at off match: the base, zeros, a recent write."""
        out = []
        base = self.base[off:off + len(got)]
        if got == base:
            out.append("got = the base file's bytes there")
        if got == bytes(len(got)):
            out.append("got = zeros")
        hits = 0
        for r in reversed(self.io.history):
            if r.off <= off < r.off + r.len:
                d = r.new()[off - r.off:off - r.off + len(got)]
                out.append("  %r (issued %.3f s into the run): wrote %s%s" % (
                    r, r.t_issue - self.t0, hexs(d), "  <= got" if d == got[:len(d)] else ""))
                hits += 1
                if hits == 6:
                    break
        if not hits:
            out.append("no recent write covers offset %d" % off)
        return "\n".join(out)

    def compare(self, got, expected, what):
        if got == expected:
            return
        runs, nblocks = diff_runs(expected, got)
        s, ln = runs[0]
        raise Failure("%s: the device differs from the reference in %d block(s) of 4 KiB; first bad run at "
                      "offset %d, %d bytes (chunk %d); other runs: %s\n  expected %s\n  got      %s\n%s"
                      % (what, nblocks, s, ln, s // self.chunk, runs[1:], hexs(expected[s:s + ln], 24),
                         hexs(got[s:s + ln], 24), self.explain(s, bytes(got[s:s + 16]))))

    def check_device(self, what):
        self.io.drain()
        self.compare(self.io.read_all(), self.io.ref, what)

    # ---- set-up
    def setup(self):
        d = self.dir
        self.base = self.drng.randbytes(self.size)
        with open(os.path.join(d, "base.img"), "wb") as f:
            f.write(self.base)
        s = self.a.strata
        self.top = os.path.join(d, "top.layer")
        for args in (["layer", "create", os.path.join(d, "l1.layer"), "--size", str(self.size),
                      "--chunk-size", str(self.chunk)],
                     ["layer", "create", self.top, "--parent", os.path.join(d, "l1.layer")]):
            p = subprocess.run([s] + args, capture_output=True, text=True)
            if p.returncode:
                raise Failure("strata %s: %s" % (" ".join(args), p.stderr.strip()))
        self.table = os.path.join(d, "t.conf")
        sectors = self.size // 512
        with open(self.table, "w") as f:
            f.write("[base]\n0 %d file %s 0 ro\n[d]\n0 %d cow %s base=base\n"
                    % (sectors, os.path.join(d, "base.img"), sectors, self.top))
        self.srv = Server(s, d, self.table)
        self.srv.start()
        self.connect(bytearray(self.base))
        self.replica = os.path.join(d, "replica.raw")

    def connect(self, ref):
        self.io = IO(self, "nbd+unix:///d?socket=" + self.srv.sock, ref, self.chunk)

    def layers(self):
        """The stack (top first), checked against the count `strata status` reports."""
        paths = stack_paths(self.top)
        st = self.srv.run("status", "d")
        n = st[0]["segments"][0]["info"]["layers"]
        if n != len(paths):
            raise Failure("strata status says %d layers, the headers link %d: %s" % (n, len(paths), paths))
        return paths

    # ---- running an operation with I/O going on
    def run_op(self, name, args, record=False):
        io = self.io
        rec = Recorder(io) if record else None
        if rec:
            io.recorders.append(rec)
        self.current, self.current_t0 = name + " (`strata %s`)" % " ".join(args), time.time()
        p = self.srv.spawn(*args)
        t0 = time.time()
        while p.poll() is None:
            io.fill(self.depth)
            io.pump(5)
            if time.time() - t0 > OP_TIMEOUT:
                p.kill()
                p.wait()
                raise Failure("%s did not finish within %d s" % (p.what, OP_TIMEOUT))
        if rec:
            io.recorders.remove(rec)
        ms = 1000 * (time.time() - t0)
        rc, out, err = Server.finish(p)
        self.oplog.append("%s (%.0f ms)" % (name, ms))
        self.current = "I/O only"
        if rc != 0:
            raise Failure("`%s` failed (status %d) with I/O going on: %s%s" % (p.what, rc, err.strip(), self.srv.died()))
        self.counts[name] += 1
        self.vlog("%-12s %6.0f ms  %s" % (name, ms, out.strip().replace("\n", " ")[:150]))
        return json.loads(out), rec

    def vlog(self, msg):
        if self.a.verbose:
            print("  [%6.2f s] %s" % (time.time() - self.t0, msg), flush=True)

    def check_pit(self, rec, path, what):
        with open(path, "rb") as f:
            image = f.read()
        t, why = rec.checker().check(image)
        if t is None:
            raise Failure("%s is not a point-in-time copy of the device: %s\n(requests in flight at the start: %d, "
                          "write events during the command: %d)" % (what, why, len(rec.start_inflight), len(rec.events)))
        self.vlog("  point in time: fits at moment %d of %d" % (t, len(rec.events) + 1))

    # ---- the dirty map and its replica
    def dirty_start(self):
        self.io.drain()
        with open(self.replica, "wb") as f:   # the replica starts as the device now
            f.write(self.io.ref)
        self.srv.run("dirty", "start", "d", MAP, "--granularity", str(MAP_GRANULARITY))
        self.have_map = True
        self.counts["dirty_start"] += 1
        self.oplog.append("dirty_start")

    def check_map_covers(self, device, what):
        """Quiet point: every block where the replica differs from the device is dirty."""
        with open(self.replica, "rb") as f:
            rep = f.read()
        if len(rep) < self.size:
            raise Failure("%s: the replica is %d bytes, the device %d" % (what, len(rep), self.size))
        lst = self.srv.run("dirty", "list", "d", MAP)
        if not lst["consistent"]:
            raise Failure("%s: the dirty map is reported inconsistent" % what)
        g = lst["granularity"]
        dirty = set()
        for off, ln in lst["extents"]:
            dirty.update(range(off // g, (off + ln + g - 1) // g))
        for p in range(0, self.size, MiB):
            if rep[p:p + MiB] == device[p:p + MiB]:
                continue
            for b in range(p, min(self.size, p + MiB), g):
                if rep[b:b + g] != device[b:b + g] and b // g not in dirty:
                    q = first_diff(device, rep, b, b + g)
                    raise Failure("%s: block %d (offset %d) differs between the replica and the device but the "
                                  "map does not have it dirty (a write the map missed): expected %s got %s; "
                                  "dirty extents: %d" % (what, b // g, q, hexs(device[q:b + g]), hexs(rep[q:b + g]),
                                                         len(lst["extents"])))

    def quiet_sync(self, device, what):
        """Drained: one more sync, then the replica must equal the device."""
        r = self.srv.run("sync", "d", "--map", MAP, "--to", self.replica)
        if not r["converged"] or r["dirty_bytes_left"]:
            raise Failure("%s: a sync with no I/O did not converge: %s" % (what, r))
        with open(self.replica, "rb") as f:
            rep = f.read()
        if len(rep) != self.size:
            raise Failure("%s: replica size %d, device %d" % (what, len(rep), self.size))
        self.compare(rep, device, what + ": the replica after a quiet sync")

    # ---- one random operation
    def choose_op(self, paths):
        n = len(paths)
        w = {}
        if n < 5:
            w["snapshot"] = 3
        if n >= 2:
            w["merge"] = 3 if n <= 4 else 6
        if n >= 3:
            w["merge_layer"] = 2 if n <= 4 else 4
        w["flatten"] = 2
        if not self.have_map:
            w["dirty_start"] = 2
        else:
            w["checkpoint"] = 1
            w["sync"] = 2
            w["sync_final"] = 1
        for k in list(w):
            if k in self.skip:
                del w[k]
        if n > 4:   # keep the stack bounded: only merges (or nothing)
            w = {k: v for k, v in w.items() if k.startswith("merge")}
        if not w:
            return None
        ks = sorted(w)
        return self.rng.choices(ks, [w[k] for k in ks])[0]

    def one_op(self):
        paths = self.layers()
        op = self.choose_op(paths)
        if op is None:
            return False
        n = len(paths)
        expect_n = n
        if op == "snapshot":
            self.run_op(op, ["snapshot", "d"])
            expect_n = n + 1
        elif op == "merge":
            self.run_op(op, ["merge", "d"])
            expect_n = n - 1
        elif op == "merge_layer":
            layer = self.rng.choice(paths[1:-1])   # read-only, with a layer below it
            self.run_op(op, ["merge", "d", "--layer", layer])
            expect_n = n - 1
            if os.path.exists(layer):
                raise Failure("merge --layer %s: the layer file is still there" % layer)
        elif op == "flatten":
            flat = os.path.join(self.dir, "flat.raw")
            r, rec = self.run_op(op, ["flatten", "d", "--to", flat], record=True)
            if r.get("bytes") != self.size:
                raise Failure("flatten reply %s, expected %d bytes" % (r, self.size))
            self.check_pit(rec, flat, "the flatten file")
            os.unlink(flat)
        elif op == "dirty_start":
            self.dirty_start()
        elif op == "checkpoint":
            r, _ = self.run_op(op, ["dirty", "checkpoint", "d", MAP])
            self.io.drain()
            # A backup tool copies the handed-back extents; do it from the reference
            # (drained: it is the device now) so the replica stays comparable.
            with open(self.replica, "r+b") as f:
                for off, ln in r["extents"]:
                    ln = min(ln, self.size - off)
                    f.seek(off)
                    f.write(self.io.ref[off:off + ln])
        elif op in ("sync", "sync_final"):
            args = ["sync", "d", "--map", MAP, "--to", self.replica, "--max-rounds", str(self.rng.randint(2, 4))]
            args += ["--final"] if op == "sync_final" else []
            r, rec = self.run_op(op, args, record=op == "sync_final")
            if op == "sync_final":
                if not r["converged"]:
                    raise Failure("sync --final did not converge: %s" % r)
                self.check_pit(rec, self.replica, "the replica after sync --final")
        self.check_device("after %s" % op)
        if self.have_map and op != "dirty_start":
            self.check_map_covers(self.io.ref, "after %s" % op)
            if op in ("sync", "sync_final"):
                self.quiet_sync(self.io.ref, "after %s" % op)
        got_n = len(self.layers())
        if got_n != expect_n:
            raise Failure("after %s the stack has %d layers, expected %d" % (op, got_n, expect_n))
        return True

    def io_for(self, seconds):
        t_end = time.time() + seconds
        while time.time() < t_end:
            self.io.fill(self.depth)
            self.io.pump(5)

    # ---- the crash phase
    def crash(self):
        io, rng = self.io, self.rng
        self.check_device("before the crash phase")
        io.flush()
        flushed = bytes(io.ref)
        paths = self.layers()
        n0 = len(paths)
        choices = [None]
        if n0 >= 2 and "merge" not in self.skip:
            choices.append("merge")
        if n0 < 6 and "snapshot" not in self.skip:
            choices.append("snapshot")
        op = rng.choice(choices)
        if self.a.crash_op:
            op = None if self.a.crash_op == "none" else self.a.crash_op
            if op == "merge" and n0 < 2:   # something to merge: a snapshot first
                self.srv.run("snapshot", "d")
                self.oplog.append("snapshot (for the crash burst's merge)")
                n0 = len(self.layers())
        if self.a.powercut:
            os.sync()   # the files the test wrote itself (base.img, the table): stable before the cut
        nreq = rng.randint(50, 400)
        depth = rng.randint(16, 64)
        op_at = rng.randint(0, nreq // 2)
        kill_at = rng.randint(op_at + 1, nreq)
        kill_delay = rng.uniform(0, 0.05)
        kill_by = rng.uniform(0.2, 1.0)   # seconds into the burst at the latest (FUA writes are slow)
        self.current = "the crash burst"
        self.vlog("crash: %d writes, depth %d, %s at request %d, kill at request %d + %.0f ms"
                  % (nreq, depth, op or "no operation", op_at, kill_at, 1000 * kill_delay))
        io.burst = []
        p = None
        issued = 0
        t_kill = None
        t_burst = time.time()
        while True:
            if issued < nreq and len(io.inflight) < depth:
                if io.issue_random(kinds=["write", "write", "write", "write", "zero", "trim"], fua_p=0.15):
                    issued += 1
            else:
                io.pump(2)
            if op and p is None and issued >= op_at:
                p = self.srv.spawn(op, "d")
            if t_kill is None and (issued >= kill_at or time.time() - t_burst >= kill_by):
                t_kill = time.time() + kill_delay
            if t_kill is not None and time.time() >= t_kill and io.inflight:
                break
            if t_kill is not None and time.time() >= t_kill + 1 and issued >= nreq:
                break   # nothing left in flight: kill anyway
        pre_rc = p.poll() if p is not None else None
        if pre_rc is not None and pre_rc != 0:
            raise Failure("`%s` failed (status %d) before the kill: %s" % (p.what, pre_rc, Server.finish(p)[2].strip()))
        op_done = pre_rc == 0
        in_flight = len(io.inflight)
        io.pump(0)  # completions already here count as acknowledged (conservative either way)
        self.srv.kill9()
        io.close()
        self.counts["kill9"] += 1
        acked = sum(1 for r in io.burst if r.acked)
        if p is not None:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise Failure("`%s` did not end after strata was killed" % p.what)
            Server.finish(p)
            self.vlog("crash: %s %s before the kill" % (op, "finished" if op_done else "was interrupted"))
        if self.a.powercut:
            power_cut(self.dir)
            self.counts["powercut"] += 1
        self.vlog("crash: killed with %d requests in flight; %d issued, %d acknowledged"
                  % (in_flight, len(io.burst), acked))
        self.oplog.append("kill -9%s during a burst of %d writes%s" % (
            " and a power cut" if self.a.powercut else "", len(io.burst), " and a " + op if op else ""))

        self.srv.start()
        self.connect(bytearray(self.size))
        got = self.io.read_all()
        why = check_crash(flushed, got, io.burst)
        if why:
            raise Failure("after kill -9%s and restart (%s%s): %s" % (" and a power cut" if self.a.powercut else "",
                "%s started in the burst, %s; " % (op, "finished" if op_done else "interrupted") if op else "",
                "%d burst writes, %d acknowledged" % (len(io.burst), acked), why))
        self.io.ref = got
        n = len(self.layers())
        if op == "merge":
            ok = {n0 - 1} if op_done else {n0, n0 - 1}
        elif op == "snapshot":
            ok = {n0 + 1} if op_done else {n0, n0 + 1}
        else:
            ok = {n0}
        if n not in ok:
            raise Failure("after kill -9 and restart the stack has %d layers, expected %s (%s)" % (n, sorted(ok), op))
        if op == "merge" and n == n0:
            self.vlog("crash: finishing the interrupted merge")
            self.srv.run("merge", "d")
            self.counts["merge_resumed"] += 1
            self.oplog.append("merge (resumed after the restart)")
            self.check_device("after the interrupted merge was run again")
            if len(self.layers()) != n0 - 1:
                raise Failure("the resumed merge left %d layers, expected %d" % (len(self.layers()), n0 - 1))
        if self.have_map:
            self.check_map_covers(self.io.ref, "after kill -9 and restart")
            self.quiet_sync(self.io.ref, "after kill -9 and restart")
        # The restarted stack works: more I/O, then a clean stop, check, reopen.
        self.current = "I/O only"
        self.io_for(0.5)
        self.check_device("I/O after the restart")
        self.io.close()
        paths = stack_paths(self.top)
        self.srv.stop()
        for lp in paths:
            pr = subprocess.run([self.a.strata, "layer", "check", lp], capture_output=True, text=True)
            if pr.returncode:
                raise Failure("layer check %s after a clean stop: %s%s" % (lp, pr.stdout, pr.stderr))
        self.srv.start()
        self.connect(self.io.ref)
        self.check_device("after a clean stop and restart")
        self.io.close()
        self.srv.stop()

    # ---- the whole run
    def run(self):
        self.setup()
        deadline = self.t0 + self.a.seconds if self.a.seconds else None
        while True:
            if self.a.ops is not None and sum(self.counts[k] for k in ALL_OPS) >= self.a.ops:
                break
            if deadline and time.time() >= deadline:
                break
            self.io_for(self.rng.uniform(0.05, 0.4))
            if not self.one_op():
                self.io_for(0.2)
        self.check_device("at the end of the online phase")
        if not self.a.no_crash:
            self.crash()
        else:
            self.io.close()
            self.srv.stop()

    def summary(self, result):
        c = self.counts
        fields = [("seed", self.seed), ("result", result), ("requests", c["requests"]), ("bytes", c["bytes"]),
                  ("reads", c["reads"]), ("writes", c["writes"]), ("zeros", c["zeros"]), ("trims", c["trims"]),
                  ("flushes", c["flushes"]), ("fua", c["fua"])]
        fields += [(k, c[k]) for k in ALL_OPS + ("merge_resumed", "kill9", "powercut")]
        fields.append(("seconds", "%.1f" % (time.time() - self.t0)))
        return "online_ops: " + " ".join("%s=%s" % kv for kv in fields)


# ------------------------------------------------------------------- self-test

class FakeReq:
    def __init__(self, rid, off, data):
        self.id, self.kind, self.off, self.len, self.data = rid, "write", off, len(data), data
        self.fua, self.acked = False, False

    def new(self):
        return self.data


def selftest():
    """The checkers against brute force and hand-made cases: a fuzzy copy is caught."""
    rng = random.Random(1)
    fails = 0
    caught = 0
    # 1. Random histories on a tiny device: the incremental checker agrees with
    #    brute force on real states (must fit) and on fuzzy mixes of two states.
    for trial in range(400):
        size = rng.choice([64, 96, 128])
        c0 = bytearray(rng.randbytes(size))
        cur = bytearray(c0)
        inflight, events, rid = [], [], 0
        start_inflight = []
        states = []   # (cur copy, inflight copy) at each candidate moment
        for _ in range(rng.randint(2, 6)):   # some requests already in flight at the start
            off = rng.randrange(size - 8)
            r = FakeReq(rid, off, rng.randbytes(rng.randint(1, 8)))
            rid += 1
            if not any(off < q.off + q.len and q.off < off + r.len for q in inflight):
                inflight.append(r)
        start_inflight = list(inflight)
        states.append((bytes(cur), list(inflight)))
        for _ in range(rng.randint(1, 12)):
            if inflight and (len(inflight) >= 4 or rng.random() < 0.5):
                r = inflight.pop(rng.randrange(len(inflight)))
                cur[r.off:r.off + r.len] = r.data
                events.append(("C", r))
            else:
                ln = rng.randint(1, 24)
                off = rng.randrange(size - ln)
                if any(off < q.off + q.len and q.off < off + ln for q in inflight):
                    continue
                r = FakeReq(rid, off, rng.randbytes(ln) if rng.random() < 0.8 else bytes(ln))
                rid += 1
                inflight.append(r)
                events.append(("I", r))
            states.append((bytes(cur), list(inflight)))
        pit = PointInTime(bytes(c0), start_inflight, events, block=16)

        def state(k):
            s, fl = states[k]
            s = bytearray(s)
            for r in fl:
                if rng.random() < 0.5:
                    s[r.off:r.off + r.len] = r.data
            return s
        good = state(rng.randrange(len(states)))
        if pit.check(good)[0] is None or not naive_point_in_time(c0, start_inflight, events, good):
            print("selftest: trial %d: a real state was rejected" % trial)
            fails += 1
        a, b = state(0), state(len(states) - 1)
        cut = rng.randrange(size)
        fuzzy = a[:cut] + b[cut:] if rng.random() < 0.5 else b[:cut] + a[cut:]
        fast = pit.check(fuzzy)[0] is not None
        slow = naive_point_in_time(c0, start_inflight, events, fuzzy)
        if fast != slow:
            print("selftest: trial %d: fast checker says %s, brute force %s" % (trial, fast, slow))
            fails += 1
        if not slow:
            caught += 1
    if caught < 50:
        print("selftest: only %d of 400 fuzzy copies were fuzzy" % caught)
        fails += 1
    # 2. The flatten of today: the device copied in pieces while writes go on.
    #    Write A (low half) completes, then write B (high half) is issued and
    #    completes. A copy that took the low half before A and the high half after
    #    B matches no single moment.
    size = 8 * MiB
    c0 = bytes(random.Random(2).randbytes(size))
    A = FakeReq(1, 1000, b"\xaa" * 5000)
    B = FakeReq(2, 6 * MiB + 17, b"\xbb" * 3000)
    events = [("I", A), ("C", A), ("I", B), ("C", B)]
    pit = PointInTime(c0, [], events)
    after = bytearray(c0)
    after[A.off:A.off + A.len] = A.data
    after[B.off:B.off + B.len] = B.data
    fuzzy = c0[:4 * MiB] + bytes(after[4 * MiB:])
    if pit.check(fuzzy)[0] is not None:
        print("selftest: the piecewise (fuzzy) copy was accepted")
        fails += 1
    else:
        print("selftest: fuzzy copy caught: %s" % pit.check(fuzzy)[1])
    if pit.check(bytes(after))[0] is None or pit.check(c0)[0] is None:
        print("selftest: a real state was rejected")
        fails += 1
    torn = bytearray(c0)      # B half applied while in flight: no moment fits
    torn[B.off:B.off + 1000] = B.data[:1000]
    torn[A.off:A.off + A.len] = A.data
    if pit.check(bytes(torn))[0] is not None:
        print("selftest: a torn write was accepted")
        fails += 1
    # 3. The crash rules.
    flushed = bytes(random.Random(3).randbytes(64 * 1024))
    w1 = FakeReq(1, 100, b"\x11" * 9000)                  # not FUA
    w2 = FakeReq(2, 20000, b"\x22" * 5000)
    w2.fua = w2.acked = True                              # acknowledged FUA
    w3 = FakeReq(3, 22000, b"\x33" * 100)                 # later, over w2
    burst = [w1, w2, w3]

    def img(parts):
        s = bytearray(flushed)
        for off, data in parts:
            s[off:off + len(data)] = data
        return bytes(s)
    cases = [
        ("nothing survived but the FUA write", img([(w2.off, w2.data)]), True),
        ("all survived", img([(w1.off, w1.data), (w2.off, w2.data), (w3.off, w3.data)]), True),
        ("a write torn at 4 KiB", img([(w1.off, w1.data[:4096 - 100]), (w2.off, w2.data)]), True),
        ("the FUA write lost", img([(w1.off, w1.data)]), False),
        ("a byte nobody wrote", img([(w2.off, w2.data), (50000, b"\x99")]), False),
        ("a burst byte that is nothing allowed", img([(w2.off, w2.data), (200, b"\x77")]), False),
    ]
    for name, image, ok in cases:
        why = check_crash(flushed, image, burst)
        if (why is None) != ok:
            print("selftest: crash case '%s': %s" % (name, why or "accepted"))
            fails += 1
    # 4. The mismatch report finds the first bad byte and the run.
    e = bytearray(3 * MiB)
    g = bytearray(e)
    g[MiB + 5:MiB + 700] = b"\x01" * 695
    runs, nb = diff_runs(e, g)
    if runs[0] != (MiB + 5, 695) or nb != 1:
        print("selftest: diff_runs gave %s, %d blocks" % (runs, nb))
        fails += 1
    print("selftest: %s (%d fuzzy copies caught of 400 random mixes)" % ("PASS" if not fails else "FAIL", caught))
    return 1 if fails else 0


# ------------------------------------------------------------------------ main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="random seed (default: random)")
    ap.add_argument("--seconds", type=float, help="run online operations for this long (default 20 unless --ops)")
    ap.add_argument("--ops", type=int, help="stop after this many operations")
    ap.add_argument("--size", type=int, help="device size in MiB (default: 32, 48 or 64 by seed)")
    ap.add_argument("--chunk-size", type=int, help="chunk size in bytes (default: 4096, 1 seed in 4: 65536)")
    ap.add_argument("--depth", type=int, help="requests in flight (default: 16..32 by seed)")
    ap.add_argument("--skip", default="", help="comma-separated operations never to run: " + ",".join(ALL_OPS))
    ap.add_argument("--no-crash", action="store_true", help="skip the kill -9 phase")
    ap.add_argument("--crash-op", choices=["none", "merge", "snapshot"],
                    help="the operation started in the crash burst (default: one at random)")
    ap.add_argument("--powercut", action="store_true",
                    help="after the kill -9, a power cut of the working directory's filesystem (XFS: "
                         "xfs_io shutdown, then mount again): what was not on stable storage is lost")
    ap.add_argument("--strata", default=os.environ.get("STRATA", os.path.join(here, "..", "..", "build", "strata")))
    ap.add_argument("--tmpdir", help="make the working directory under this one")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--selftest", action="store_true", help="check the checkers and exit")
    a = ap.parse_args()
    if a.selftest:
        return selftest()
    if nbd is None:
        print("online_ops: needs the libnbd Python bindings: run it with /usr/bin/python3", file=sys.stderr)
        return 2
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    a.skip = [s for s in a.skip.split(",") if s]
    bad = [s for s in a.skip if s not in ALL_OPS]
    if bad:
        ap.error("unknown operation(s) in --skip: %s" % ",".join(bad))
    if a.seconds is None and a.ops is None:
        a.seconds = 20
    prng = random.Random(a.seed ^ 0x5eed)   # parameters, independent of the run's draws
    a.size = a.size or prng.choice([32, 48, 64])
    chunk = prng.choice([4096, 4096, 4096, 65536])
    a.chunk_size = a.chunk_size or chunk
    a.depth = a.depth or prng.randint(16, 32)
    a.strata = os.path.abspath(a.strata)
    # The command line that reruns this seed.
    argv = list(sys.argv[1:])
    for opt in ("--seed", "--tmpdir"):   # --tmpdir: a CI wrapper's directory is gone by then
        for i, x in enumerate(argv):
            if x == opt or x.startswith(opt + "="):
                del argv[i:i + (1 if "=" in x else 2)]
                break
    rerun = " ".join(shlex.quote(x) for x in ["/usr/bin/python3", os.path.abspath(__file__), "--seed", str(a.seed)] + argv)
    print("online_ops: seed=%d size=%dMiB chunk=%d depth=%d%s" % (
        a.seed, a.size, a.chunk_size, a.depth, " skip=" + ",".join(a.skip) if a.skip else ""), flush=True)
    workdir = tempfile.mkdtemp(prefix="strata-online.", dir=a.tmpdir)
    t = Test(a)
    t.dir = workdir
    rc = 0
    try:
        t.run()
        result = "PASS"
    except Failure as e:
        rc, result = 1, "FAIL"
        print("FAIL: %s" % e, file=sys.stderr)
        print("  seed %d; operations so far: %s" % (a.seed, "; ".join(t.oplog[-8:]) or "none"), file=sys.stderr)
        srv = getattr(t, "srv", None)
        if srv:
            print("---- strata log (last lines, %s) ----\n%s" % (srv.log, srv.log_tail()), file=sys.stderr)
        print("rerun: %s" % rerun, file=sys.stderr)
    except KeyboardInterrupt:
        rc, result = 130, "INTERRUPTED"
    except Exception:   # a bug here, or an unexpected reply: a failure too, with the rerun line
        rc, result = 1, "FAIL"
        traceback.print_exc()
        print("rerun: %s" % rerun, file=sys.stderr)
    finally:
        srv = getattr(t, "srv", None)
        if srv and srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    print(t.summary(result), flush=True)
    if a.keep or rc == 1:
        print("online_ops: working directory kept: %s" % workdir, file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
