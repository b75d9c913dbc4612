"""nfs_crash_client: load and checks for test-nfs-crash.sh (run with /usr/bin/python3, libnbd).

  init IMAGE OFFSET DEVSIZE TOTAL
      create IMAGE (TOTAL bytes) holding the initial pattern: every 4 KiB
      block of the device (at OFFSET) says "INIT <block>", the bytes outside
      the device are 0x5e; fsync it
  run URI DEVSIZE SEED STOPFILE RECORDS STARTED [--depth N] [--flush-every N]
      [--fua-pct P] [--drain S] [--final-flush S]
      write 4 KiB blocks with unique content ("WRIT", block, sequence, seed,
      then bytes derived from them) at random blocks (half of them in a hot
      set of 256 blocks, so blocks are rewritten often), DEPTH requests in
      flight, a FLUSH after about every FLUSH_EVERY writes and some writes
      with FUA, until STOPFILE exists; never two writes to one block in
      flight at once, so the writes to a block are ordered.  A request that
      fails is recorded and the client goes on.  Then wait for the requests
      still in flight (at most DRAIN s), send FLUSHes until one succeeds (at
      most FINAL_FLUSH s) and write RECORDS (JSON): every write (sequence,
      block, FUA, result, durable, submit and completion times) and every
      flush.  A write is durable when it was acknowledged with FUA, or
      acknowledged before a FLUSH was sent that then succeeded.
  check IMAGE OFFSET DEVSIZE TOTAL RECORDS BASELINE_OR_- SAVE OUTAGES
      [--max-latency S] [--reconnect S]
      IMAGE is the server-side file (after a crash, so only stable data
      counts); BASELINE the device's content before this round (- for the
      initial pattern).  Checks: (a) every block holds the baseline or one of
      the writes issued to it; (b) a block with a durable write holds that
      durable write (the last one) or a write to it issued later; (c) no
      request took longer than MAX_LATENCY s; (d) every failed request was in
      flight while the server was down (OUTAGES: "down_ms up_ms" lines) or
      within RECONNECT s after it came back; bytes outside the device are
      untouched.  Saves the device's content in SAVE (next round's baseline).
"""
import errno
import hashlib
import json
import os
import random
import struct
import sys
import time

BS = 4096
HOT = 256


def now_ms():
    return time.time() * 1000.0


def init_block(block):
    unit = b"INIT %010d|" % block
    return (unit * (BS // len(unit) + 1))[:BS]


def write_block(block, seq, seed):
    head = b"WRIT" + struct.pack("<QQQ", block, seq, seed)
    return head + hashlib.shake_128(head).digest(BS - len(head))


def parse_write(data):
    """(block, seq, seed) when data is an intact write block, else None."""
    if data[:4] != b"WRIT":
        return None
    block, seq, seed = struct.unpack("<QQQ", data[4:28])
    if write_block(block, seq, seed) != data:
        return None
    return block, seq, seed


def cmd_init(image, offset, devsize, total):
    with open(image, "wb") as f:
        f.write(b"\x5e" * offset)
        for b in range(devsize // BS):
            f.write(init_block(b))
        f.write(b"\x5e" * (total - offset - devsize))
        f.flush()
        os.fsync(f.fileno())
    d = os.open(os.path.dirname(os.path.abspath(image)), os.O_RDONLY)
    os.fsync(d)
    os.close(d)


def opt(args, name, default):
    if name in args:
        i = args.index(name)
        v = args[i + 1]
        del args[i:i + 2]
        return type(default)(v)
    return default


def cmd_run(args):
    import nbd

    depth = opt(args, "--depth", 8)
    flush_every = opt(args, "--flush-every", 40)
    fua_pct = opt(args, "--fua-pct", 10)
    drain_s = opt(args, "--drain", 20.0)
    final_flush_s = opt(args, "--final-flush", 60.0)
    uri, devsize, seed, stopfile, records, started = args
    devsize, seed = int(devsize), int(seed)
    nblocks = devsize // BS
    rng = random.Random(seed)

    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.get_size() == devsize, f"export size {h.get_size()} != {devsize}"
    assert h.can_flush(), "the export does not offer FLUSH"
    assert h.can_fua(), "the export does not offer FUA"
    open(started, "w").close()

    writes = {}   # seq -> record
    flushes = []
    inflight = {}  # cookie -> (kind, record, buffer)
    busy = set()
    acked_not_durable = set()
    seq = 0
    since_flush = 0
    next_flush = rng.randint(1, 2 * flush_every)

    def submit_write():
        nonlocal seq, since_flush
        while True:
            if rng.random() < 0.5:
                block = rng.randrange(min(HOT, nblocks))
            else:
                block = rng.randrange(nblocks)
            if block not in busy:
                break
        seq += 1
        fua = rng.randrange(100) < fua_pct
        rec = {"seq": seq, "block": block, "fua": fua, "result": "pending",
               "durable": False, "t0": now_ms(), "t1": None}
        buf = nbd.Buffer.from_bytearray(bytearray(write_block(block, seq, seed)))
        cookie = h.aio_pwrite(buf, block * BS, flags=nbd.CMD_FLAG_FUA if fua else 0)
        writes[seq] = rec
        busy.add(block)
        inflight[cookie] = ("write", rec, buf)
        since_flush += 1

    def submit_flush(final=False):
        nonlocal since_flush, next_flush
        rec = {"covers": sorted(acked_not_durable), "result": "pending",
               "t0": now_ms(), "t1": None, "final": final}
        cookie = h.aio_flush()
        flushes.append(rec)
        inflight[cookie] = ("flush", rec, None)
        since_flush = 0
        next_flush = rng.randint(1, 2 * flush_every)
        return rec

    def complete(kind, rec, err):
        rec["t1"] = now_ms()
        rec["result"] = "ok" if err is None else err
        if kind == "write":
            busy.discard(rec["block"])
            if err is None:
                if rec["fua"]:
                    rec["durable"] = True
                else:
                    acked_not_durable.add(rec["seq"])
        elif err is None:
            for s in rec["covers"]:
                writes[s]["durable"] = True
                acked_not_durable.discard(s)

    def reap():
        for cookie in list(inflight):
            kind, rec, _ = inflight[cookie]
            try:
                done = h.aio_command_completed(cookie)
                err = None
            except nbd.Error as e:
                done, err = True, (e.errno or str(e.errnum) or e.string)
            if done:
                del inflight[cookie]
                complete(kind, rec, err)

    while not os.path.exists(stopfile):
        while len(inflight) < depth:
            if since_flush >= next_flush:
                submit_flush()
            else:
                submit_write()
        h.poll(100)
        reap()

    deadline = time.monotonic() + drain_s
    while inflight and time.monotonic() < deadline:
        h.poll(100)
        reap()
    drained = not inflight

    final_ok = False
    deadline = time.monotonic() + final_flush_s
    while drained and time.monotonic() < deadline:
        rec = submit_flush(final=True)
        while rec["result"] == "pending" and time.monotonic() < deadline:
            h.poll(100)
            reap()
        if rec["result"] == "ok":
            final_ok = True
            break
        time.sleep(0.2)

    with open(records, "w") as f:
        json.dump({"seed": seed, "writes": list(writes.values()), "flushes": flushes,
                   "drained": drained, "final_flush_ok": final_ok}, f)
    print(f"client: {seq} writes, {len(flushes)} flushes, drained={drained}, final flush ok={final_ok}")
    if not drained:
        print(f"client: {len(inflight)} requests still in flight {drain_s} s after the stop", file=sys.stderr)
        os._exit(1)
    if not final_ok:
        print(f"client: no FLUSH succeeded within {final_flush_s} s after the stop", file=sys.stderr)
        sys.exit(1)
    h.shutdown()


def cmd_check(args):
    max_lat = opt(args, "--max-latency", 15.0) * 1000
    reconnect = opt(args, "--reconnect", 3.0) * 1000
    image, offset, devsize, total, records, baseline, save, outages = args
    offset, devsize, total = int(offset), int(devsize), int(total)
    nblocks = devsize // BS
    r = json.load(open(records))
    seed = r["seed"]
    writes = r["writes"]
    flushes = r["flushes"]
    down = []
    for line in open(outages):
        a, b = line.split()
        down.append((float(a), float(b)))

    errors = []

    def err(msg):
        if len(errors) < 30:
            errors.append(msg)
        else:
            errors.append(None)

    data = open(image, "rb").read()
    if len(data) != total:
        err(f"the image has {len(data)} bytes, expected {total}")
    if data[:offset] != b"\x5e" * offset:
        err("bytes before the table offset changed")
    if data[offset + devsize:total] != b"\x5e" * (total - offset - devsize):
        err("bytes after the device changed")
    dev = data[offset:offset + devsize]
    base = open(baseline, "rb").read() if baseline != "-" else None

    issued = {}   # block -> set of seqs
    last_durable = {}  # block -> seq
    for w in writes:
        issued.setdefault(w["block"], set()).add(w["seq"])
        if w["durable"] and w["seq"] > last_durable.get(w["block"], 0):
            last_durable[w["block"]] = w["seq"]

    counts = {"intact-old": 0, "new": 0, "durable-blocks": len(last_durable), "durable-held": 0,
              "later-than-durable": 0}
    for b in range(nblocks):
        got = dev[b * BS:(b + 1) * BS]
        old = base[b * BS:(b + 1) * BS] if base is not None else init_block(b)
        pw = parse_write(got)
        if got == old:
            kind, seq = "old", None
            counts["intact-old"] += 1
        elif pw is not None and pw[2] == seed:
            if pw[0] != b:
                err(f"block {b}: holds write #{pw[1]}, issued to block {pw[0]}")
                continue
            if pw[1] not in issued.get(b, ()):
                err(f"block {b}: holds write #{pw[1]}, which was never issued to it")
                continue
            kind, seq = "new", pw[1]
            counts["new"] += 1
        else:
            what = "an intact write of another round" if pw else \
                f"garbage (first bytes {got[:32]!r})"
            err(f"(a) block {b}: holds neither its old content nor a write issued to it: {what}")
            continue
        d = last_durable.get(b)
        if d is not None:
            if kind == "old" or seq < d:
                held = "its old content" if kind == "old" else f"write #{seq}"
                err(f"(b) block {b}: write #{d} was durable but the block holds {held}")
            elif seq == d:
                counts["durable-held"] += 1
            else:
                counts["later-than-durable"] += 1

    pending = [w for w in writes if w["result"] == "pending"] + [f for f in flushes if f["result"] == "pending"]
    if pending:
        err(f"(c) {len(pending)} requests never completed")
    slow = sorted(((x["t1"] - x["t0"]), f"write #{x['seq']}" if "seq" in x else "flush")
                  for x in writes + flushes if x["t1"] is not None)
    maxl = slow[-1][0] if slow else 0
    for lat, what in slow:
        if lat > max_lat:
            err(f"(c) {what} took {lat / 1000:.1f} s (limit {max_lat / 1000:.1f} s)")

    failed = [x for x in writes + flushes if x["result"] not in ("ok", "pending")]
    unexplained = []
    for x in failed:
        if not any(x["t0"] <= u + reconnect and x["t1"] >= d for d, u in down):
            unexplained.append(x)
    for x in unexplained[:5]:
        what = f"write #{x['seq']}" if "seq" in x else "flush"
        err(f"(d) {what} failed ({x['result']}) while the server was up: "
            f"in flight {x['t0']:.0f}..{x['t1']:.0f} ms, outages {[(int(a), int(b)) for a, b in down]}")
    errnos = sorted({x["result"] for x in failed})
    if any(e != "EIO" for e in errnos):
        err(f"failed requests must fail with EIO, got {errnos}")

    nw = len(writes)
    acked = sum(w["result"] == "ok" for w in writes)
    durable = sum(w["durable"] for w in writes)
    fua = sum(w["durable"] and w["fua"] for w in writes)
    fwrites = sum(w["result"] not in ("ok", "pending") for w in writes)
    fflush = sum(f["result"] not in ("ok", "pending") for f in flushes)
    print(f"writes={nw} acked={acked} durable={durable} (fua {fua}) failed={fwrites} "
          f"flushes={len(flushes)} failed-flushes={fflush} max-latency={maxl / 1000:.2f}s "
          f"blocks: old={counts['intact-old']} new={counts['new']} with-durable={counts['durable-blocks']} "
          f"holding-last-durable={counts['durable-held']} holding-later={counts['later-than-durable']}")
    if not r["final_flush_ok"]:
        err("the final FLUSH did not succeed")
    with open(save, "wb") as f:
        f.write(dev)
    if errors:
        for e in errors:
            if e is not None:
                print("FAIL: " + e, file=sys.stderr)
        if None in errors:
            print(f"FAIL: ... and {errors.count(None)} more", file=sys.stderr)
        sys.exit(1)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "init":
        cmd_init(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "run":
        cmd_run(args)
    elif cmd == "check":
        cmd_check(args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
