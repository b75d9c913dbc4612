#!/bin/bash
# FUSE export + dirty map: pages 0, 1 and 3 written through a MAP_SHARED mmap of /dev/loopN (direct I/O over the FUSE file) and msync(MS_SYNC)'ed are exactly what `dirty list` shows ("0 8192", "12288 4096"), with the bytes in the image and page 2 untouched.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires losetup jq cmp

IMG=$WORK/disk.img
truncate -s $((64 << 20)) "$IMG"
start_strata --file "$IMG" --export disk --fuse "$MNT" --state-dir "$WORK/state"
attach_loop "$MNT/disk"
# The map starts after losetup, so only what follows counts; it must be empty now.
ctl dirty start disk m --granularity 4096 >/dev/null || die "dirty start"
[ -z "$(ctl dirty list disk m)" ] || die "a fresh map is not empty: $(ctl dirty list disk m)"
w0=$(seg_counter disk writes)

out=$($PYTHON - "$LOOP" <<'PY' 2>&1
import mmap, os, sys
PAGE = 4096
assert mmap.PAGESIZE == PAGE, mmap.PAGESIZE
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4 * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for p in (0, 1, 3):
    m[p * PAGE:(p + 1) * PAGE] = bytes([0x40 + p]) * PAGE
m.flush()  # msync(MS_SYNC) of the whole mapping
m.close()
os.close(fd)
print("ok")
PY
) || die "mmap writer: $out"
[ "$out" = ok ] || die "mmap writer: $out"

want="0 8192
12288 4096"
got=$(ctl dirty list disk m)
[ "$got" = "$want" ] || die "dirty list after the mmap writes:
$got
want:
$want"
[ "$(ctl dirty list disk m --json | jq -c '[.granularity, .dirty_bytes, .extents]')" = '[4096,12288,[[0,8192],[12288,4096]]]' ] ||
  die "dirty list --json: $(ctl dirty list disk m --json)"
[ "$(seg_counter disk writes)" -gt "$w0" ] || die "no write reached the device"
[ "$(seg_counter disk write_bytes)" = 12288 ] || die "$(seg_counter disk write_bytes) bytes were written, want exactly 12288"

# The bytes are in the image; page 2 and what follows page 3 stay zero.
expect_bytes "$IMG" 0 4096 0x40
expect_bytes "$IMG" 4096 4096 0x41
expect_bytes "$IMG" 8192 4096 0x00
expect_bytes "$IMG" 12288 4096 0x43
expect_bytes "$IMG" 16384 65536 0x00

# Detaching the loop device adds nothing to the map.
losetup -d "$LOOP"
LOOP=
for _ in $(seq 50); do [ -z "$(losetup -j "$MNT/disk")" ] && break; sleep 0.1; done
[ "$(ctl dirty list disk m)" = "$want" ] || die "dirty list after losetup -d: $(ctl dirty list disk m)"
stop_strata
echo PASS
