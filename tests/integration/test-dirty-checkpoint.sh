#!/bin/bash
# dirty checkpoint: hands back the blocks written so far and starts an empty map atomically; writes after it land only in the new map; under a concurrent writer with checkpoints every few ms, the checkpoints plus the final list hold every block written, no block never written, and respect the time order of writes and checkpoints.
. "$(dirname "$0")/functions.sh"
requires qemu-io jq

IMG=$WORK/d.img
truncate -s 256M "$IMG"
start_strata --file "$IMG" --export d --state-dir "$WORK/state"
ctl dirty start d m >/dev/null

# ---- sequential: what a checkpoint returns, and what follows it
qio "$(uri d)" "write 0 4096" "write 1048576 10000"
got=$(ctl dirty checkpoint d m)
[ "$got" = "0 4096
1048576 12288" ] || die "first checkpoint returned: $got"
[ -z "$(ctl dirty list d m)" ] || die "the map is not empty after a checkpoint: $(ctl dirty list d m)"
[ "$(ctl dirty status d --json | jq '.[0].dirty_blocks')" = 0 ] || die "status after checkpoint: $(ctl dirty status d --json)"
# A checkpoint of an empty map is empty (and does not return the old bits again).
[ -z "$(ctl dirty checkpoint d m)" ] || die "second checkpoint was not empty"
qio "$(uri d)" "write 8192 4096" "write -z 2097152 65536"
[ "$(ctl dirty list d m)" = "8192 4096
2097152 65536" ] || die "after new writes: $(ctl dirty list d m)"
j=$(ctl dirty checkpoint d m --json)
[ "$(jq -c . <<<"$j")" = '{"consistent":true,"dirty_bytes":69632,"extents":[[8192,4096],[2097152,65536]],"granularity":4096}' ] ||
  die "checkpoint --json: $j"
[ -z "$(ctl dirty list d m)" ] || die "not empty after checkpoint --json"
# clear forgets without printing.
qio "$(uri d)" "write 4096 4096"
[ -z "$(ctl dirty clear d m)" ] || die "clear printed something"
[ -z "$(ctl dirty list d m)" ] || die "not empty after clear"

# ---- concurrent: a writer thread writes distinct 4 KiB blocks (QD1, in a
# known order, each timed) while checkpoints are taken every few ms straight
# over the control socket.
"$PYTHON" - "$(uri d)" "$CTL" >"$WORK/concurrent.out" 2>&1 <<'PY' || { cat "$WORK/concurrent.out"; die "concurrent checkpoints"; }
import bisect, json, random, socket, sys, threading, time, nbd

uri, ctl = sys.argv[1], sys.argv[2]
G = 4096
NBLOCKS = (256 << 20) // G

def call(method, **params):
    s = socket.socket(socket.AF_UNIX)
    s.connect(ctl)
    s.sendall((json.dumps({"method": method, "params": params}) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(1 << 20)
        assert c, "control connection closed"
        buf += c
    s.close()
    r = json.loads(buf)
    assert r["ok"], r
    return r["result"]

def blocks_of(res):
    assert res["granularity"] == G and res["consistent"], res
    out = set()
    for off, ln in res["extents"]:
        assert off % G == 0 and ln % G == 0, res
        out.update(range(off // G, (off + ln) // G))
    return out

order = list(range(NBLOCKS))
random.Random(7).shuffle(order)
writes = []          # (block, t_start, t_acked) in issue order
errors = []
stop = threading.Event()

def writer():
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        for b in order:
            if stop.is_set():
                break
            t0 = time.monotonic()
            h.pwrite(b.to_bytes(8, "little") * (G // 8), b * G)
            writes.append((b, t0, time.monotonic()))
        h.shutdown()
    except Exception as e:
        errors.append(repr(e))

th = threading.Thread(target=writer)
th.start()
ckpts = []           # (t_sent, t_returned, blocks)
deadline = time.monotonic() + 4
while time.monotonic() < deadline and th.is_alive():
    t0 = time.monotonic()
    res = call("dirty_checkpoint", device="d", name="m")
    ckpts.append((t0, time.monotonic(), blocks_of(res)))
    time.sleep(random.uniform(0.001, 0.006))
stop.set()
th.join()
assert not errors, errors
final = blocks_of(call("dirty_list", device="d", name="m"))

written = [w[0] for w in writes]
wset = set(written)
assert len(written) > 2000, f"the writer managed only {len(written)} writes"
nonempty = [c for c in ckpts if c[2]]
assert len(nonempty) >= 20, f"only {len(nonempty)} of {len(ckpts)} checkpoints returned blocks"

union = set(final)
for c in ckpts:
    union |= c[2]
missing = wset - union
assert not missing, f"{len(missing)} written blocks are in no checkpoint, e.g. {sorted(missing)[:5]}"
extra = union - wset
assert not extra, f"{len(extra)} blocks never written were handed back, e.g. {sorted(extra)[:5]}"

# Time order. Index k = checkpoint k; len(ckpts) = the final list.
sets = [c[2] for c in ckpts] + [final]
first_in = {}
for k, s in enumerate(sets):
    for b in s:
        first_in.setdefault(b, k)
sent = [c[0] for c in ckpts]
returned = [c[1] for c in ckpts]
for b, t0, t1 in writes:
    k = first_in[b]
    # A write acknowledged before checkpoint j was requested is in j or earlier.
    j = bisect.bisect_right(sent, t1)
    if j < len(ckpts):
        assert k <= j, f"block {b} acked before checkpoint {j} was sent, first seen in {k}"
    # A write started after checkpoint j returned is in none of 0..j.
    j = bisect.bisect_left(returned, t0) - 1
    if j >= 0:
        assert k > j, f"block {b} written after checkpoint {j} returned, but seen in {k}"
# The writer is sequential: each checkpoint holds a contiguous run of the
# write order, and runs follow one another.
pos = {b: i for i, b in enumerate(written)}
prev_hi = -1
for k, s in enumerate(sets):
    if not s:
        continue
    idx = sorted(pos[b] for b in s)
    lo, hi = idx[0], idx[-1]
    assert lo >= prev_hi, f"set {k} holds write #{lo}, before write #{prev_hi} of an earlier set"
    assert hi - lo + 1 == len(idx), f"set {k} is not a contiguous run of writes ({lo}..{hi}, {len(idx)} blocks)"
    prev_hi = hi
print(f"ok: {len(written)} writes, {len(ckpts)} checkpoints ({len(nonempty)} non-empty), final list {len(final)} blocks")
PY
grep -q '^ok: ' "$WORK/concurrent.out" || die "concurrent: $(cat "$WORK/concurrent.out")"
cat "$WORK/concurrent.out"
stop_strata
echo PASS
