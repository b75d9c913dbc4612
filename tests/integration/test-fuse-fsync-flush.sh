#!/bin/bash
# FUSE export durability: a write alone is no FLUSH, but fsync, fdatasync and close of the FUSE file each raise the device's flushes counter, dd conv=fsync too; after kill -9 of the server every byte written is in the backing image.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/fuse-lib.sh"
requires jq cmp

IMG=$WORK/disk.img
truncate -s $((16 << 20)) "$IMG"
start_strata --file "$IMG" --export disk --fuse "$MNT"
head -c $((1 << 20)) /dev/urandom >"$WORK/a.bin"
head -c $((2 << 20)) /dev/urandom >"$WORK/b.bin"

# The counter is read over the control socket from inside the process that
# holds the file open: running `strata status` would fork, and the child's
# exec closes its copy of the descriptor, which is a FLUSH too.
out=$($PYTHON - "$MNT/disk" "$WORK/a.bin" "$CTL" <<'PY' 2>&1
import json, os, socket, sys
path, src, ctl = sys.argv[1:4]
def flushes():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(ctl)
        s.sendall(b'{"method": "device_status", "params": {"name": "disk"}}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    r = json.loads(buf)
    assert r["ok"], r
    return r["result"][0]["segments"][0]["info"]["flushes"]
data = open(src, "rb").read()
fd = os.open(path, os.O_RDWR)
c0 = flushes()
assert os.pwrite(fd, data, 3 << 20) == len(data)
c1 = flushes()
os.fsync(fd)
c2 = flushes()
os.pwrite(fd, data[:4096], 12 << 20)
os.fdatasync(fd)
c3 = flushes()
os.close(fd)
c4 = flushes()
errs = []
if c1 != c0: errs.append("a write alone flushed: %d -> %d" % (c0, c1))
if c2 <= c1: errs.append("fsync did not flush: %d -> %d" % (c1, c2))
if c3 <= c2: errs.append("fdatasync did not flush: %d -> %d" % (c2, c3))
if c4 <= c3: errs.append("close did not flush: %d -> %d" % (c3, c4))
print("; ".join(errs) if errs else "ok")
PY
) || die "python: $out"
[ "$out" = ok ] || die "$out"

f0=$(flushes disk)
dd if="$WORK/b.bin" of="$MNT/disk" bs=256K seek=20 conv=notrunc,fsync status=none || die "dd conv=fsync"
f1=$(flushes disk)
[ "$f1" -gt "$f0" ] || die "dd conv=fsync did not raise flushes ($f0 -> $f1)"
w=$(seg_counter disk write_bytes)
[ "$w" -ge $(((3 << 20) + 4096)) ] || die "only $w bytes were written to the device"

# kill -9: nothing is lost, whatever the server held.
kill9_strata
cmp <(file_range "$IMG" $((3 << 20)) $((1 << 20))) "$WORK/a.bin" || die "the fsync'ed range is not in the image"
cmp <(file_range "$IMG" $((12 << 20)) 4096) <(head -c 4096 "$WORK/a.bin") || die "the fdatasync'ed block is not in the image"
cmp <(file_range "$IMG" $((5 << 20)) $((2 << 20))) "$WORK/b.bin" || die "the dd conv=fsync range is not in the image"
expect_bytes "$IMG" 0 $((3 << 20)) 0x00
expect_bytes "$IMG" $((4 << 20)) $((1 << 20)) 0x00
echo PASS
