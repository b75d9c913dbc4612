#!/bin/bash
# cow: writes that are not chunk-aligned and straddle chunks (1000+70000, 4095+2, single bytes, the short last chunk, a second partial write into a chunk already copied up) read back intact, with every neighbouring byte still the lower layer's or the base's (copy-up), for chunk sizes 4096 and 65536; the copy_ups counter counts exactly the partial chunks the top did not hold; all of it survives a restart.
. "$(dirname "$0")/functions.sh"
requires jq

for CH in 4096 65536; do
  # Not a whole number of 64 KiB chunks: the last chunk is short.
  SIZE=$((4 * 1048576 + 3 * 4096))
  B=$WORK/base.img
  rm -f "$WORK"/*.layer "$B"
  head -c $SIZE /dev/urandom >"$B"
  BASE_SUM=$(sha256sum <"$B")
  "$STRATA" layer create "$WORK/l1.layer" --size $SIZE --chunk-size $CH >/dev/null
  "$STRATA" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" --chunk-size $CH >/dev/null
  cow_table "$WORK/t.conf" $SIZE "$B" "$WORK/l1.layer"
  # l1: random data over [1M, 2M) + 12345 (its last chunk partly: a copy-up in l1).
  head -c $((1048576 + 12345)) /dev/urandom >"$WORK/l1.data"
  start_strata --table "$WORK/t.conf"
  nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
h.pwrite(open('$WORK/l1.data', 'rb').read(), 1048576); h.flush()
" || die "writing l1"
  stop_strata
  sed -i "s|cow $WORK/l1.layer|cow $WORK/top.layer|" "$WORK/t.conf"
  start_strata --table "$WORK/t.conf"

  out=$(cd "$WORK" && $PYTHON - "$(uri d)" $CH $SIZE <<'PY' 2>&1
import nbd, os, sys, json
uri, CH, SIZE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
M = 1 << 20
want = bytearray(open('base.img', 'rb').read())
l1 = open('l1.data', 'rb').read()
want[M:M + len(l1)] = l1
writes = [
    (1000, 70000),                 # over the base, straddles one or more chunk boundaries
    (4095, 2),                     # two bytes across the first 4 KiB boundary
    (CH - 1, 2),                   # across the first chunk boundary
    (M - 7, 20),                   # across the base/l1 boundary
    (M + 100, 1),                  # one byte in l1's first chunk
    (M + 100 + 2, 1),              # one more byte in the same, now copied-up chunk
    (2 * M + 12345 - 50, 100),     # across l1's partial last chunk and the base
    (3 * M + 1, 3 * CH),           # several chunks, head and tail partial
    (SIZE - 3, 3),                 # the device's last bytes (the short last chunk)
    (SIZE - 4096 * 3 - 10, 20),    # into the short last chunk
    (500, 600),                    # again into the chunk of the first write
]
h = nbd.NBD(); h.connect_uri(uri)
held = set()                       # chunks the top holds
copy_ups = 0
for off, ln in writes:
    data = os.urandom(ln)
    h.pwrite(data, off)
    want[off:off + ln] = data
    for c in range(off // CH, (off + ln - 1) // CH + 1):
        cs, ce = c * CH, min(c * CH + CH, SIZE)
        if (off > cs or off + ln < ce) and c not in held:
            copy_ups += 1
        held.add(c)
    # Read-back of the write with a chunk of neighbours either side.
    lo, hi = max(0, off - CH - 17), min(SIZE, off + ln + CH + 17)
    got = h.pread(hi - lo, lo)
    if got != bytes(want[lo:hi]):
        i = next(i for i in range(hi - lo) if got[i] != want[lo + i])
        print(f'after write {off}+{ln}: byte {lo + i} differs'); sys.exit(1)
h.flush()
got = h.pread(SIZE, 0)
if got != bytes(want):
    i = next(i for i in range(SIZE) if got[i] != want[i])
    print(f'whole device: byte {i} (chunk {i // CH} +{i % CH}) differs'); sys.exit(1)
open('want.img', 'wb').write(want)
print(f'ok {copy_ups}')
PY
)
  case $out in "ok "*) ;; *) die "chunk $CH: $out" ;; esac
  want_copy_ups=${out#ok }
  got=$(ctl status d --json | jq '.[0].segments[0].info.copy_ups')
  [ "$got" = "$want_copy_ups" ] || die "chunk $CH: copy_ups $got, expected $want_copy_ups"
  stop_strata
  start_strata --table "$WORK/t.conf"
  nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri d)')
assert h.pread($SIZE, 0) == open('$WORK/want.img', 'rb').read(), 'differs after a restart'
" || die "chunk $CH: after a restart"
  stop_strata
  [ "$(sha256sum <"$B")" = "$BASE_SUM" ] || die "chunk $CH: the base was written"
  "$STRATA" layer check "$WORK/top.layer" >/dev/null || die "chunk $CH: layer check top"
done
echo PASS
