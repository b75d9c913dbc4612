#!/bin/bash
# cow: TRIM and WRITE_ZEROES on the top over data in a lower layer, in the top itself and in the base read back as zeros, for whole chunks and partial ones (neighbouring bytes of a partly zeroed chunk keep the lower layer's data), with chunk sizes 4096 and 65536; whole chunks show as hole,zero in base:allocation; all of it survives a restart, and the lower layer and the base are not written.
. "$(dirname "$0")/functions.sh"
requires nbdinfo jq

for CH in 4096 65536; do
  SIZE=$((64 * CH))
  B=$WORK/base.img
  rm -f "$WORK"/*.layer "$B"
  fill "$B" 0 $SIZE 0x11
  "$STRATA" layer create "$WORK/l1.layer" --size $SIZE --chunk-size $CH >/dev/null
  "$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" --chunk-size $CH >/dev/null
  cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/l1.layer"
  # l1 holds 0x22 over chunks [16, 48); then the top is served over it.
  start_strata --table "$WORK/t.conf"
  nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
h.pwrite(b'\x22' * (32 * $CH), 16 * $CH); h.flush()
" || die "writing l1"
  stop_strata
  sed -i "s|cow $WORK/l1.layer|cow $WORK/top.layer|" "$WORK/t.conf"
  L1_SUM=$(sha256sum <"$WORK/l1.layer")
  BASE_SUM=$(sha256sum <"$B")
  start_strata --table "$WORK/t.conf"

  # Each op: (name, kind, offset, length); whole = chunk-aligned ranges
  # that must read back as hole,zero.
  cat >"$WORK/ops.py" <<PY
U, CH, SIZE = $CH, $CH, $SIZE
# The top first holds 0x33 over chunks [40, 44): the punch path.
pre = [('top data', 'write', 40 * U, 4 * U)]
ops = [
    ('trim whole over l1', 'trim', 16 * U, 4 * U),
    ('trim partial over l1', 'trim', 24 * U + 1000, U + 100),
    ('zero NO_HOLE whole over l1', 'zero_nohole', 28 * U, 2 * U),
    ('zero partial over l1', 'zero', 32 * U + 100, 200),
    ('trim whole over the top', 'trim', 40 * U, 2 * U),
    ('zero whole over the base', 'zero', 50 * U, 3 * U),
    ('trim head+whole+tail over the base', 'trim', 54 * U + 2048, 4 * U),
    ('zero a chunk, then data in it', 'zero', 60 * U, U),
]
post = [('data into the zero chunk', 'write', 60 * U + 100, 50),
        ('data into a trimmed chunk', 'write', 16 * U + U // 2, 10)]
# Whole chunks zeroed (and not written again): hole,zero.
whole = [(17 * U, 3 * U), (40 * U, 2 * U), (50 * U, 3 * U), (55 * U, 3 * U)]
nohole = (28 * U, 2 * U)
# Bytes that keep their data: neighbours of partial ops, the rest of the top.
data = [(24 * U, 1000), (25 * U + 1100, U - 1100), (32 * U, 100), (32 * U + 300, U - 300),
        (42 * U, 2 * U), (54 * U, 2048), (58 * U + 2048, U - 2048), (16 * U, U), (60 * U, U)]

def expected():
    e = bytearray(b'\x11' * SIZE)
    e[16 * U:48 * U] = b'\x22' * (32 * U)
    for name, kind, off, ln in pre + ops + post:
        e[off:off + ln] = (b'\x33' if name == 'top data' else b'\x44') * ln if kind == 'write' else bytes(ln)
    return bytes(e)
PY
  out=$(cd "$WORK" && $PYTHON -c "
import nbd
from ops import *
h = nbd.NBD(); h.connect_uri('$(uri d)')
def run(lst):
    for name, kind, off, ln in lst:
        if kind == 'write': h.pwrite((b'\x33' if name == 'top data' else b'\x44') * ln, off)
        elif kind == 'trim': h.trim(ln, off)
        elif kind == 'zero': h.zero(ln, off)
        elif kind == 'zero_nohole': h.zero(ln, off, nbd.CMD_FLAG_NO_HOLE)
run(pre); h.flush(); run(ops); run(post); h.flush()
print('ok')
" 2>&1) && [ "$out" = ok ] || die "chunk $CH: ops: $out"

  check() {
    nbdinfo --map --json "$(uri d)" >"$WORK/map.json"
    out=$(cd "$WORK" && $PYTHON -c "
import nbd, json
from ops import *
h = nbd.NBD(); h.connect_uri('$(uri d)')
want = expected()
got = h.pread(SIZE, 0)
bad = []
if got != want:
    i = next(i for i in range(SIZE) if got[i] != want[i])
    bad.append(f'byte {i} (chunk {i // CH} +{i % CH}) reads {got[i]:#x}, expected {want[i]:#x}')
flags = bytearray(SIZE // 512)
for e in json.load(open('map.json')):
    for s in range(e['offset'] // 512, (e['offset'] + e['length']) // 512): flags[s] = e['type']
    if e['type'] & 2 and got[e['offset']:e['offset'] + e['length']].count(0) != e['length']:
        bad.append(f'zero flag over data at {e[\"offset\"]}+{e[\"length\"]}')
for off, ln in whole:
    t = set(flags[off // 512:(off + ln) // 512])
    if t != {3}: bad.append(f'{off}+{ln}: types {t}, expected hole,zero (3)')
for off, ln in data:
    t = set(flags[off // 512:(off + ln + 511) // 512])
    if t & {2, 3}: bad.append(f'{off}+{ln} holds data but has types {t}')
# NO_HOLE whole chunks: zero, however allocated.
t = set(flags[nohole[0] // 512:(nohole[0] + nohole[1]) // 512])
if not all(x & 2 for x in t): bad.append(f'NO_HOLE zeroed chunks: types {t}')
print('\n'.join(bad) if bad else 'ok')
" 2>&1) && [ "$out" = ok ] || die "chunk $CH ($1): $out"
  }
  check "served"
  stop_strata
  # The zero chunks are in the top's bitmap: 3 + 2 (NO_HOLE) + 2 + 3 + 3.
  info=$("$STRATA" layer info "$WORK/top.layer" --json)
  [ "$(jq .zero_chunks <<<"$info")" = 13 ] || die "chunk $CH: layer info does not show 13 zero chunks: $info"
  start_strata --table "$WORK/t.conf"
  check "after a restart"
  stop_strata
  [ "$(sha256sum <"$WORK/l1.layer")" = "$L1_SUM" ] || die "chunk $CH: the lower layer l1 was written"
  [ "$(sha256sum <"$B")" = "$BASE_SUM" ] || die "chunk $CH: the base was written"
  "$STRATA" layer check "$WORK/top.layer" >/dev/null || die "chunk $CH: layer check: $("$STRATA" layer check "$WORK/top.layer")"
done
echo PASS
