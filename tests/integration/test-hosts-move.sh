#!/bin/bash
# Moving a live disk between hosts: host A (one strata) serves vm while a verifying client writes without pause (16
# requests in flight, random sizes and offsets); host B (another strata, TCP on loopback) serves an empty vm.
# `dirty start --full` + `sync` passes copy the disk to B over NBD while the client writes; `sync --move` holds the
# writes for the last pass, then fails them and everything after with ESHUTDOWN; the client reconnects to B, sends
# again what failed, writes on, and finds every byte it wrote on B (0 mismatches, 0 lost acknowledged writes). A
# reports the device moved and serves nothing more from it. The time writes were held is printed.
source "$(dirname "$0")/functions.sh"
requires jq
M=1048576
SIZE=$((64 * M))
start_replica_strata $SIZE

ctl dirty start vm move --full >/dev/null
$PYTHON - "$(uri vm)" "$B_URI" "$WORK/a.img" "$WORK" <<'PY' &
import errno, nbd, os, random, sys, time
a_uri, b_uri, img, work = sys.argv[1:5]
model = bytearray(open(img, "rb").read())
size = len(model)
rng = random.Random(5)
SLOTS = 16
slot = size // SLOTS
h = nbd.NBD(); h.connect_uri(a_uri)
inflight = {}   # cookie -> (slot, off, data)
free = list(range(SLOTS))
failed = []     # writes that failed with ESHUTDOWN: sent again to B
acked = shutdowns = 0
moved = False
def issue():
    s = free.pop()
    n = rng.randint(1, 65536)
    off = s * slot + rng.randrange(0, slot - n)
    data = rng.randbytes(n)
    inflight[h.aio_pwrite(data, off)] = (s, off, data)
def reap():
    global acked, shutdowns, moved
    for c in list(inflight):
        try:
            if not h.aio_command_completed(c):
                continue
            s, off, data = inflight.pop(c)
            model[off:off + len(data)] = data
            acked += 1
        except nbd.Error as e:
            s, off, data = inflight.pop(c)
            if e.errnum != errno.ESHUTDOWN:
                sys.exit("write failed with %s, not ESHUTDOWN" % e)
            failed.append((off, data))
            shutdowns += 1
            moved = True
        free.append(s)
t0 = time.time()
while not moved and time.time() - t0 < 120:
    while free and not moved:
        issue()
    h.poll(-1)
    reap()
while inflight:
    h.poll(-1)
    reap()
assert moved, "the device never moved"
# On B: what failed first, then more writes, then every byte.
h = nbd.NBD(); h.connect_uri(b_uri)
for off, data in failed:
    h.pwrite(data, off)
    model[off:off + len(data)] = data
for _ in range(300):
    n = rng.randint(1, 65536); off = rng.randrange(0, size - n); data = rng.randbytes(n)
    h.pwrite(data, off); model[off:off + len(data)] = data
h.flush()
bad = 0
for off in range(0, size, 4 * 1024 * 1024):
    if h.pread(4 * 1024 * 1024, off) != model[off:off + 4 * 1024 * 1024]:
        bad += 1
print("client: %d writes acknowledged on A, %d failed with ESHUTDOWN and were sent to B; %d of %d 4 MiB "
      "blocks differ on B" % (acked, shutdowns, bad, size // (4 * 1024 * 1024)))
sys.exit(1 if bad else 0)
PY
C=$!
sleep 1
# Passes while the client writes (the first copies the whole disk), then the move.
set +e
ctl sync vm --map move --to "$B_URI" --max-rounds 3 >/dev/null
set -e
out=$(ctl sync vm --map move --to "$B_URI" --move --json)
echo "$out" | jq -c .
[ "$(jq .moved <<<"$out")" = true ] || die "the sync did not move the device: $out"
held_us=$(jq .held_us <<<"$out")
echo "writes held for the last pass: $((held_us / 1000)) ms"
wait $C || die "the client lost or failed writes"
[ "$(ctl status vm --json | jq '.[0].moved')" = true ] || die "A does not say the device moved"
qio_fails "$(uri vm)" "read 0 4096" >/dev/null
kill $B_PID; wait $B_PID || true
echo PASS
