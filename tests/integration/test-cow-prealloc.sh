#!/bin/bash
# cow prealloc=: the writable top's space is allocated a region at a time. A 4 KiB write into an empty top allocates
# its whole region (1 MiB by default, prealloc=256K: 256 KiB) and prealloc=0 only the chunk; bad values are refused
# with the option named; the table dump keeps a non-default value. Data is never changed by it: random writes of
# random size and alignment, 16 in flight, racing the fallocates of the regions they land in (prealloc=64K over 4 KiB
# chunks), read back equal to an in-memory reference, and again after a FLUSH and kill -9.
. "$(dirname "$0")/functions.sh"
requires jq cmp qemu-io nbdcopy

M=1048576
SIZE=$((32 * M))
head -c $SIZE /dev/urandom >"$WORK/base.img"
table() { # PREALLOC-OPTION...
  cat >"$WORK/t.conf" <<CONF
[base]
0 $((SIZE / 512)) file $WORK/base.img 0 ro
[d]
0 $((SIZE / 512)) cow $WORK/top.layer base=base $*
CONF
}
blocks_kib() { echo $(($(stat -c %b "$WORK/top.layer") / 2)); }

# How much one 4 KiB write allocates.
for opt in "" "prealloc=256K" "prealloc=0"; do
  rm -f "$WORK/top.layer"
  "$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
  table $opt
  start_strata --table "$WORK/t.conf"
  before=$(blocks_kib)
  qio "$(uri d)" "write -P 0x5a $((5 * M + 8192)) 4096" flush
  after=$(blocks_kib)
  qio "$(uri d)" "read -P 0x5a $((5 * M + 8192)) 4096"
  dump=$(ctl table d)
  stop_strata
  grown=$((after - before))
  echo "cow ${opt:-(default)}: a 4 KiB write allocated $grown KiB; table: $dump"
  case $opt in
    "") [ $grown -ge 1024 ] || die "the default allocated $grown KiB for a write into an empty region (1 MiB expected)"
        case $dump in *prealloc=*) die "the dump names the default prealloc: $dump" ;; esac ;;
    prealloc=256K) [ $grown -ge 256 ] && [ $grown -lt 1024 ] || die "prealloc=256K allocated $grown KiB"
        case $dump in *prealloc=262144*) ;; *) die "the dump lost prealloc=256K: $dump" ;; esac ;;
    prealloc=0) [ $grown -lt 64 ] || die "prealloc=0 allocated $grown KiB for one 4 KiB chunk"
        case $dump in *prealloc=0*) ;; *) die "the dump lost prealloc=0: $dump" ;; esac ;;
  esac
done

# Bad values: refused at start, naming the option.
for bad in prealloc=5 prealloc=abc prealloc=2G prealloc=6000; do
  table $bad
  out=$("$STRATA" serve --table "$WORK/t.conf" --unix "$WORK/x.sock" --control "$WORK/x.ctl" 2>&1) &&
    die "$bad was accepted"
  case $out in *"option prealloc="*) ;; *) die "$bad: unclear error: $out" ;; esac
done

# Random writes in flight against a reference, then FLUSH, kill -9, restart.
rm -f "$WORK/top.layer"
"$STRATA" layer create "$WORK/top.layer" --size $SIZE >/dev/null
table prealloc=64K
start_strata --table "$WORK/t.conf"
$PYTHON - "$(uri d)" "$WORK/base.img" "$WORK/ref.img" <<'PY' || die "random writes differ from the reference"
import nbd, random, sys
uri, base, out = sys.argv[1:4]
ref = bytearray(open(base, "rb").read())
size = len(ref)
rng = random.Random(7)
h = nbd.NBD()
h.connect_uri(uri)
pending = {}
def reap():
    for c in [c for c in pending if h.aio_command_completed(c)]:
        del pending[c]
for i in range(3000):
    n = rng.choice([1, 511, 4096, 4097, 65536, 70000, 200000])
    off = rng.randrange(0, size - n)
    data = bytes([rng.randrange(256)]) * n if i % 3 else rng.randbytes(n)
    ref[off:off + n] = data
    # Overlapping writes in flight complete in any order: wait for those that overlap this one.
    while any(o < off + n and off < o + l for (o, l) in pending.values()):
        h.poll(-1); reap()
    pending[h.aio_pwrite(data, off)] = (off, n)
    while len(pending) >= 16:
        h.poll(-1); reap()
while pending:
    h.poll(-1); reap()
h.flush()
for off in range(0, size, 1 << 20):
    assert h.pread(1 << 20, off) == ref[off:off + (1 << 20)], "block at %d differs" % off
open(out, "wb").write(ref)
PY
kill9_strata
start_strata --table "$WORK/t.conf"
nbdcopy "$(uri d)" "$WORK/after.img"
cmp "$WORK/ref.img" "$WORK/after.img" || die "after FLUSH and kill -9 the device differs from the reference"
stop_strata
"$STRATA" layer check "$WORK/top.layer" >/dev/null || die "layer check fails after the run"
echo PASS
