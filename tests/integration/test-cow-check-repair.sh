#!/bin/bash
# `strata layer check --repair`: a header whose checksum alone is wrong (fields consistent), bitmap bits past the end and a chunk in the invalid state 3 are repaired (each fix named; check is clean afterwards; the stack serves its data, the state-3 chunk reading from the parent); a flipped size byte, a wrong magic and an unknown incompatible bit are not "repaired" (exit 1, file unchanged); a layer locked by another process is refused; without --repair nothing changes.
. "$(dirname "$0")/functions.sh"
requires qemu-io flock sha256sum
M=1048576
SIZE=$((16 * M + 4096))
B=$WORK/base.img
truncate -s $SIZE "$B"
cat >"$WORK/t.conf" <<CONF
[base]
0 $((SIZE / 512)) file $B 0 ro
[d]
0 $((SIZE / 512)) cow $WORK/case/top.layer base=base
CONF
mkdir "$WORK/good"
"$STRATA" layer create "$WORK/good/l1.layer" --size $SIZE >/dev/null
"$STRATA" layer create "$WORK/good/top.layer" --parent "$WORK/good/l1.layer" >/dev/null
sed "s|$WORK/case/top.layer|$WORK/good/l1.layer|" "$WORK/t.conf" >"$WORK/l1.conf"
start_strata --table "$WORK/l1.conf"
qio "$(uri d)" "write -P 0x21 0 64k"
stop_strata
sed "s|$WORK/case/top.layer|$WORK/good/top.layer|" "$WORK/t.conf" >"$WORK/top.conf"
start_strata --table "$WORK/top.conf"
qio "$(uri d)" "write -P 0x31 4096 8192" "write -P 0x32 20480 4096"
stop_strata

patch() { # FILE OFFSET HEXBYTES [fix]: write bytes; with "fix", make the header checksum right again
  $PYTHON - "$@" <<'PY'
import struct, sys
path, off, val = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, 'r+b') as f:
    f.seek(off); f.write(bytes.fromhex(val))
    if len(sys.argv) > 4:
        f.seek(0); b = f.read(4092); h = 2166136261
        for x in b: h = ((h ^ x) * 16777619) & 0xffffffff
        f.seek(4092); f.write(struct.pack('<I', h))
PY
}
case_() { rm -rf "$WORK/case"; cp -a "$WORK/good" "$WORK/case"; }
T=$WORK/case/top.layer
sum() { sha256sum <"$T"; }

# repairable NAME EXPECT-PROBLEM EXPECT-FIX: the damage is already done to $T
repairable() {
  local out rc=0 before
  before=$(sum)
  out=$("$STRATA" layer check "$T" 2>&1) && die "$1: check passed a damaged layer"
  grep -qF -- "$2" <<<"$out" || die "$1: check does not say '$2': $out"
  [ "$(sum)" = "$before" ] || die "$1: check without --repair changed the layer"
  out=$("$STRATA" layer check --repair "$T" 2>&1) || rc=$?
  [ $rc = 0 ] || die "$1: --repair exited $rc: $out"
  grep -qF -- "repaired: $T: $3" <<<"$out" || die "$1: --repair does not report '$3': $out"
  grep -qF "ok after repair" <<<"$out" || die "$1: --repair did not end clean: $out"
  "$STRATA" layer check "$T" >/dev/null || die "$1: check after repair still fails: $("$STRATA" layer check "$T" 2>&1)"
}
# unrepairable NAME EXPECT: --repair exits 1, names the problem, changes nothing
unrepairable() {
  local out rc=0 before
  before=$(sum)
  out=$("$STRATA" layer check --repair "$T" 2>&1) || rc=$?
  [ $rc = 1 ] || die "$1: --repair exited $rc, not 1: $out"
  grep -qF -- "$2" <<<"$out" || die "$1: --repair does not say '$2': $out"
  [ "$(sum)" = "$before" ] || die "$1: --repair changed a layer it could not repair"
}
serves() { # the repaired stack serves the expected data
  start_strata --table "$WORK/t.conf"
  qio -r "$(uri d)" "read -P 0x21 0 4096" "read -P 0x31 4096 8192" "read -P 0x21 12288 8192" "$@"
  stop_strata
}

case_; patch "$T" 4092 deadbeef
repairable "checksum only" "bad header checksum" "header checksum rewritten"
serves "read -P 0x32 20480 4096"

# The bitmap starts at 4096; the last chunk (4096) is bits 0-1 of byte 1024.
case_; patch "$T" $((4096 + 1024)) 54; patch "$T" $((4096 + 2000)) ff
repairable "bits past the end" "bits set past the end" "cleared 7 bits past the end"
serves "read -P 0x32 20480 4096"

# Chunk 5 (20480, written 0x32 in the top) gets state 3: after repair it is
# absent in the top and reads the parent's 0x21.
case_; patch "$T" $((4096 + 1)) 0c
repairable "invalid state" "invalid state" "1 chunks in the invalid state 3 marked absent"
serves "read -P 0x21 20480 4096"

case_; patch "$T" 25 ff
unrepairable "flipped size byte" "cannot repair"
case_; patch "$T" 0 5854524154434f57
unrepairable "wrong magic" "wrong magic"
case_; patch "$T" 12 00010000 fix
unrepairable "unknown incompatible bit" "unknown incompatible feature bits"

# Another process holds the layer: refused, unchanged.
case_; patch "$T" 4092 deadbeef
flock -x "$T" sleep 30 &
LOCKER=$!
for _ in $(seq 100); do flock -n -x "$T" true 2>/dev/null || break; sleep 0.02; done
unrepairable "locked layer" "in use by another process"
kill $LOCKER; wait $LOCKER 2>/dev/null || true
echo PASS
