#!/bin/bash
# nfs target data path (ganesha, NFSv3): qemu-io patterns at several offsets and sizes (1-3 MiB requests above wsize, unaligned 512-byte ones, the last sector) read back and land in the server-side file at offset+pos with nothing else touched; nbdcopy in/out round trip and qemu-img compare; a table with a nonzero offset; 5 parallel libnbd clients.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires qemu-io qemu-img nbdcopy cmp od
source "$(dirname "$0")/nbd-lib.sh"

EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"

DEV=$((24 << 20))
F=$EXPORT/disk.img
bytes $((DEV + (2 << 20))) 0x5e >"$F"   # not zero: a misplaced or skipped write shows
URL=$(nfs_url "$F")

# ---- 1. patterns at offset 0
echo "0 $((DEV / 512)) nfs $URL 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d
U=$(uri d)
[ "$(nbdinfo --size "$U")" = $DEV ] || die "export size is $(nbdinfo --size "$U"), expected $DEV"

# offset length byte
PATTERNS=(
  "0 4096 0x11"
  "12288 65536 0x22"
  "$((1048576 + 512)) 512 0x33"
  "$((5 * 1048576 - 512)) 1536 0x44"
  "$((7 * 1048576)) $((3 * 1048576)) 0x55"
  "$((11 * 1048576 + 4096)) $((1048576 + 4096)) 0x66"
  "$((13 * 1048576 + 1536)) 2560 0x77"
  "$((DEV - 512)) 512 0x88"
)
cmds=() reads=()
for p in "${PATTERNS[@]}"; do
  read -r o l b <<<"$p"
  cmds+=("write -P $((b)) $o $l")
  reads+=("read -P $((b)) $o $l")
done
qio "$U" "${cmds[@]}" "flush"
qio "$U" "${reads[@]}"
# The untouched bytes between the patterns still read as the file's 0x5e.
qio "$U" "read -P 0x5e 4096 8192" "read -P 0x5e $((10 * 1048576)) 4096" "read -P 0x5e $((DEV - 1024)) 512"
# The server-side file holds each pattern at its offset and nothing else changed.
for p in "${PATTERNS[@]}"; do
  read -r o l b <<<"$p"
  expect_bytes "$F" "$o" "$l" "$b"
done
sorted=$(printf '%s\n' "${PATTERNS[@]}" | sort -n)
pos=0
while read -r o l b; do
  [ "$o" -le "$pos" ] || expect_bytes "$F" $pos $((o - pos)) 0x5e
  pos=$((o + l))
done <<<"$sorted"
expect_bytes "$F" $DEV $((2 << 20)) 0x5e
# od: one byte on each side of an unaligned pattern.
got=$(od -v -An -tx1 -j $((1048576 + 511)) -N 514 "$F" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
want="5e$(printf ' 33%.0s' $(seq 512)) 5e"
[ "$got" = "$want" ] || die "bytes around the 512-byte write at 1 MiB + 512: $got"
# And qemu-io's check can fail: a wrong pattern is reported.
out=$(qio_fails "$U" "read -P 0x12 0 4096")
grep -q "Pattern verification failed" <<<"$out" || die "qemu-io missed a wrong pattern: $out"

# ---- 2. nbdcopy round trip
SRC=$WORK/src.img
head -c $DEV /dev/urandom >"$SRC"
fill "$SRC" $((3 * 1048576)) $((2 * 1048576)) 0x00
fill "$SRC" $((9 * 1048576 + 100)) 777777 0xff
nbdcopy --flush "$SRC" "$U" || die "nbdcopy into the export failed"
cmp <(file_range "$F" 0 $DEV) "$SRC" || die "the server-side file does not hold the copied image"
expect_bytes "$F" $DEV $((2 << 20)) 0x5e
nbdcopy "$U" "$WORK/out.img" || die "nbdcopy out of the export failed"
cmp "$WORK/out.img" "$SRC" || die "the image copied out differs from the one copied in"
qemu-img compare -q -f raw -F raw "$SRC" "$U" || die "qemu-img compare: the export differs from the source"
last=$(file_range "$SRC" $((DEV - 1)) 1 | od -An -tu1)
qio "$U" "write -P $(((last + 1) % 256)) $((DEV - 1)) 1" "flush"
if qemu-img compare -q -f raw -F raw "$SRC" "$U"; then die "qemu-img compare missed a changed byte"; fi
stop_strata

# ---- 3. a nonzero offset: device byte 0 is file byte OFF
OFF=$((1048576 + 8192)) SZ=$((8 << 20))
bytes $((DEV + (2 << 20))) 0x5e >"$F"
fill "$F" $((OFF + 4096)) 4096 0xa1   # seen through the device at 4096
echo "0 $((SZ / 512)) nfs $URL $OFF" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d
[ "$(nbdinfo --size "$U")" = $SZ ] || die "export size with offset $OFF is $(nbdinfo --size "$U"), expected $SZ"
qio "$U" "read -P 0xa1 4096 4096" "read -P 0x5e 0 4096" "read -P 0x5e 8192 4096"
qio "$U" "write -P 0xb2 0 512" "write -P 0xb3 $((SZ - 2 * 1048576 - 512)) $((2 * 1048576))" \
  "write -P 0xb4 $((SZ - 512)) 512" "flush"
expect_bytes "$F" 0 $OFF 0x5e
expect_bytes "$F" $OFF 512 0xb2
expect_bytes "$F" $((OFF + 512)) 3584 0x5e
expect_bytes "$F" $((OFF + 4096)) 4096 0xa1
expect_bytes "$F" $((OFF + SZ - 2 * 1048576 - 512)) $((2 * 1048576)) 0xb3
expect_bytes "$F" $((OFF + SZ - 512)) 512 0xb4
expect_bytes "$F" $((OFF + SZ)) $((DEV + (2 << 20) - OFF - SZ)) 0x5e
stop_strata

# ---- 4. parallel clients, each with many requests in flight on its own region
echo "0 $((DEV / 512)) nfs $URL 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d
NCLI=5 REGION=$((4 << 20))
cat >"$WORK/worker.py" <<'PYEOF'
import random, sys, nbd
i, uri, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
REGION, CHUNK = 4 << 20, 64 << 10
rng = random.Random(i)
h = nbd.NBD()
h.connect_uri(uri)
want = {}
for rnd in range(2):
    cookies = []
    for c in range(REGION // CHUNK):
        off = i * REGION + c * CHUNK
        # mixed sizes: full chunks and unaligned pieces of them
        if rnd == 1 and c % 3 == 0:
            piece = rng.randrange(1, CHUNK)
            d = rng.randbytes(piece)
            want[off] = d + want[off][piece:]
        else:
            d = rng.randbytes(CHUNK)
            want[off] = d
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), off))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    bufs = {}
    for off in want:
        b = nbd.Buffer(CHUNK)
        bufs[h.aio_pread(b, off)] = (b, off)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c, (b, off) in bufs.items():
        assert h.aio_command_completed(c)
        assert bytes(b.to_bytearray()) == want[off], f"client {i} round {rnd}: bad data at {off}"
h.flush()
h.shutdown()
with open(out, "wb") as f:
    for off in sorted(want):
        f.write(want[off])
PYEOF
pids=()
for i in $(seq 0 $((NCLI - 1))); do
  $PYTHON "$WORK/worker.py" "$i" "$U" "$WORK/want.$i" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
[ $failed -eq 0 ] || die "$failed of $NCLI parallel clients failed"
for i in $(seq 0 $((NCLI - 1))); do
  cmp <(file_range "$F" $((i * REGION)) $REGION) "$WORK/want.$i" || die "server-side file: region of client $i differs"
done
expect_bytes "$F" $((NCLI * REGION)) $((DEV - NCLI * REGION)) 0x5e
finish
