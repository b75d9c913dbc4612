#!/bin/bash
# cow: a damaged layer, top or lower (wrong magic, a flipped header byte, an unknown incompatible feature bit, a wrong bitmap size, bitmap bits past the last chunk, a chunk in the invalid state 3, a data offset other than the format's, a parent UUID without a path or a path without a UUID, a NUL in the parent path, a truncated data region, a missing parent, a parent replaced by another layer, a parent that is a FIFO, a parent cycle, a parent whose geometry differs from its child's): `strata layer check` names the problem in one line and exits 1, `strata serve` of the stack fails at start with the same clear message, and neither changes a byte of any layer.
. "$(dirname "$0")/functions.sh"
requires jq

M=1048576
# 16 MiB + 4 KiB in 4 KiB chunks: 4097 chunks, so the last bitmap byte in
# use (byte 1024) holds one chunk and three unused slots, and the rest of the
# 4 KiB bitmap page is past the end.
SIZE=$((16 * M + 4096))
B=$WORK/base.img
truncate -s $SIZE "$B"
cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/top.layer"

# A healthy stack with data in both layers, closed cleanly.
fresh() {
  rm -rf "$WORK/good" && mkdir "$WORK/good"
  "$STRATA" layer create "$WORK/good/l1.layer" --size $SIZE >/dev/null
  sed -i "s|cow [^ ]* base|cow $WORK/good/l1.layer base|" "$WORK/t.conf"
  start_strata --table "$WORK/t.conf"
  qio "$(uri d)" "write -P 0x21 0 64k" "write -P 0x22 $((SIZE - 8192)) 8192"
  stop_strata
  "$STRATA" layer create "$WORK/good/top.layer" --parent "$WORK/good/l1.layer" >/dev/null
  sed -i "s|cow [^ ]* base|cow $WORK/good/top.layer base|" "$WORK/t.conf"
  start_strata --table "$WORK/t.conf"
  qio "$(uri d)" "write -P 0x31 4096 8192"
  stop_strata
  for l in l1 top; do "$STRATA" layer check "$WORK/good/$l.layer" >/dev/null || die "the fresh stack does not check clean ($l)"; done
}
fresh

# Header patch with the checksum made right again (FNV-1a 32 of bytes 0..4091 at 4092).
patch() { # FILE OFFSET FORMAT VALUE [nofix]
  $PYTHON - "$@" <<'PY'
import struct, sys
path, off, fmt, val = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fix = len(sys.argv) < 6
with open(path, 'r+b') as f:
    f.seek(off)
    if fmt == 'bytes': f.write(bytes.fromhex(val))
    else: f.write(struct.pack('<' + fmt, int(val, 0)))
    if fix:
        f.seek(0); b = f.read(4092); h = 2166136261
        for x in b: h = ((h ^ x) * 16777619) & 0xffffffff
        f.seek(4092); f.write(struct.pack('<I', h))
PY
}

# Regular files only: reading a FIFO would wait for a writer.
sums() { find "$WORK/case" -type f -name "*.layer*" -exec sha256sum {} + | sort | sed "s|$WORK/case/||"; }

# try NAME LAYER EXPECT CORRUPT-COMMAND...: corrupt a copy of the stack, then
# check LAYER and serve the stack.
try() {
  local name=$1 layer=$2 expect=$3
  shift 3
  rm -rf "$WORK/case"
  cp -a "$WORK/good" "$WORK/case"
  "$@"
  local before out rc
  before=$(sums)
  rc=0
  out=$("$STRATA" layer check "$WORK/case/$layer.layer" 2>&1) || rc=$?
  [ $rc = 1 ] || die "$name: layer check $layer exited $rc, not 1: $out"
  grep -qF -- "$expect" <<<"$out" || die "$name: layer check does not say '$expect': $out"
  grep -qF "$WORK/case/$layer.layer" <<<"$out" || die "$name: layer check does not name the layer: $out"
  [ "$(sums)" = "$before" ] || die "$name: layer check changed a file"
  sed "s|cow [^ ]* base|cow $WORK/case/top.layer base|" "$WORK/t.conf" >"$WORK/case.conf"
  rm -f "$WORK/case.ctl"
  "$STRATA" serve --unix "$WORK/case.sock" --control "$WORK/case.ctl" --table "$WORK/case.conf" \
    >"$WORK/serve.out" 2>&1 &
  local pid=$! i
  for i in $(seq 100); do
    running $pid || break
    if [ -S "$WORK/case.ctl" ] && "$STRATA" list --control "$WORK/case.ctl" >/dev/null 2>&1; then
      kill -9 $pid
      wait $pid || true
      die "$name: serve of the damaged stack started: $(cat "$WORK/serve.out")"
    fi
    sleep 0.1
  done
  running $pid && { kill -9 $pid; die "$name: serve neither failed nor started in 10 s"; }
  rc=0
  wait $pid || rc=$?
  [ $rc != 0 ] || die "$name: serve exited 0: $(cat "$WORK/serve.out")"
  grep -qF -- "$expect" "$WORK/serve.out" || die "$name: serve does not say '$expect': $(cat "$WORK/serve.out")"
  [ "$(sums)" = "$before" ] || die "$name: the failed serve changed a file"
  echo "$name: $(head -1 <<<"$out")" >&2
}

# The bitmap starts at 4096; chunk 4096 (the last) is bits 0-1 of its byte
# 1024. Set the three unused slots after it (chunks 4097..4099) and a byte
# further on (chunks 8000..8003).
past_end() { patch "$1" $((4096 + 1024)) bytes 55 nofix && patch "$1" $((4096 + 2000)) bytes ff nofix; }
for L in top l1; do
  F=$WORK/case/$L.layer
  try "$L wrong magic" $L "wrong magic" patch "$F" 0 bytes 5854524154434f57 nofix
  try "$L flipped header byte" $L "bad header checksum" patch "$F" 1000 bytes 5a nofix
  try "$L flipped size byte" $L "bad header checksum" patch "$F" 25 bytes ff nofix
  try "$L unknown incompatible bit" $L "unknown incompatible feature bits 0x100" patch "$F" 12 I 0x100
  try "$L bitmap size" $L "bitmap size mismatch" patch "$F" 80 Q 12288
  try "$L bits past the end" $L "bits set past the end" past_end "$F"
  try "$L invalid state" $L "invalid state" patch "$F" $((4096 + 1)) bytes 0c nofix
  # Derived fields are checked, not trusted: data 1 MiB further on would serve other bytes.
  try "$L data offset" $L "is not the 1048576 the format gives" patch "$F" 88 Q 2097152
  try "$L truncated data" $L "the data region is truncated" truncate -s $((M + SIZE - 4096)) "$F"
done
try "parent uuid without path" l1 "but no parent path" patch "$WORK/case/l1.layer" 48 bytes 0102030405060708090a0b0c0d0e0f10
try "parent path without uuid" top "a parent path but no parent UUID" patch "$WORK/case/top.layer" 48 bytes 00000000000000000000000000000000
try "NUL in parent path" top "the parent path holds a NUL byte" patch "$WORK/case/top.layer" 99 bytes 00
# l1's parent made the top (path and UUID right): top -> l1 -> top.
cycle() {
  local uuid
  uuid=$(od -An -tx1 -j32 -N16 "$WORK/case/top.layer" | tr -d ' \n')
  patch "$WORK/case/l1.layer" 48 bytes "$uuid" nofix
  patch "$WORK/case/l1.layer" 98 bytes "$(printf top.layer | od -An -tx1 | tr -d ' \n')" nofix
  patch "$WORK/case/l1.layer" 96 H 9
}
try "parent cycle" top "parent cycle" cycle
# A FIFO's open() would wait for a writer forever: it is refused, not opened.
fifo() { rm "$WORK/case/l1.layer" && mkfifo "$WORK/case/l1.layer"; }
try "parent is a FIFO" top "not a regular file" fifo
# The top claims 8 KiB chunks (its own header is consistent; its parent has 4 KiB).
try "parent geometry" top "from its child's" patch "$WORK/case/top.layer" 20 I 8192
# Broken parent links, seen from the top.
try "missing parent" top "broken parent link" mv "$WORK/case/l1.layer" "$WORK/case/l1.moved"
other() {
  rm "$WORK/case/l1.layer"
  "$STRATA" layer create "$WORK/case/l1.layer" --size $SIZE >/dev/null
}
try "parent replaced" top "broken parent link" other
# The healthy stack still serves after all that (the good copy was never touched).
sed -i "s|cow [^ ]* base|cow $WORK/good/top.layer base|" "$WORK/t.conf"
start_strata --table "$WORK/t.conf"
qio -r "$(uri d)" "read -P 0x21 0 4096" "read -P 0x31 4096 8192" "read -P 0x22 $((SIZE - 8192)) 8192"
stop_strata
echo PASS
