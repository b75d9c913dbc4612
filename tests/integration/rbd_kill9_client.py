# rbd_kill9_client.py: writes for test-rbd-kill9-flushed.sh (run with Debian's python3 + libnbd).
#   run URI SIZE LOG     write 4 KiB blocks 0, 1, 2, ... once each, 16 in flight, a FLUSH every 32
#                        acknowledgements; log "A k" when block k's write is acknowledged and
#                        "F n" when a FLUSH completes that was sent after the first n "A" lines;
#                        until the connection dies (the server is killed)
#   check IMG LOG        every block of the first n "A" lines of the last "F n" holds its data
#                        in IMG; every block holds its data or zeros (nothing torn or foreign)
import struct, sys

BS = 4096


def data(k):
    return struct.pack("<QQ", k, 0x5354524154410000 | (k & 0xffff)) * (BS // 16)


def run(uri, size, log_path):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    log = open(log_path, "w", buffering=1)
    nblocks = size // BS
    state = {"next": 0, "inflight": 0, "acked": 0, "since_flush": 0}

    def on_write(k):
        def cb(err):
            state["inflight"] -= 1
            if err.value != 0:
                raise SystemExit(f"write {k} failed: {err}")
            state["acked"] += 1
            state["since_flush"] += 1
            log.write(f"A {k}\n")
            return 1
        return cb

    def on_flush(n):
        def cb(err):
            state["inflight"] -= 1
            if err.value == 0:
                log.write(f"F {n}\n")
            return 1
        return cb

    try:
        while True:
            while state["inflight"] < 16 and state["next"] < nblocks:
                k = state["next"]
                state["next"] += 1
                state["inflight"] += 1
                h.aio_pwrite(data(k), k * BS, completion=on_write(k))
            if state["since_flush"] >= 32:
                state["since_flush"] = 0
                state["inflight"] += 1
                h.aio_flush(completion=on_flush(state["acked"]))
            if state["next"] >= nblocks and state["inflight"] == 0:
                state["next"] = 0  # wrap: rewrite the same data
            h.poll(-1)
    except nbd.Error as e:
        print(f"connection ended: {e}; acked {state['acked']}")


def check(img, log_path):
    acks, durable_n = [], 0
    for line in open(log_path):
        t, v = line.split()
        if t == "A":
            acks.append(int(v))
        elif t == "F":
            durable_n = max(durable_n, int(v))
    durable = set(acks[:durable_n])
    zero = bytes(BS)
    bad = []
    with open(img, "rb") as f:
        k = 0
        while True:
            b = f.read(BS)
            if not b:
                break
            if k in durable and b != data(k):
                bad.append(f"block {k}: a flushed write is missing")
            elif b != zero and b != data(k):
                bad.append(f"block {k}: neither zeros nor its data")
            k += 1
    if bad:
        print("\n".join(bad[:20]))
        sys.exit(1)
    print(f"acked={len(acks)} durable={len(durable)} ok")
    if len(durable) < 100:
        sys.exit(f"only {len(durable)} durable writes: the test proves little")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        check(sys.argv[2], sys.argv[3])
