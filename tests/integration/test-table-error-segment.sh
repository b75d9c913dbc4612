#!/bin/bash
# error target inside a table: reads/writes touching its sector range fail with EIO, everything outside it (even one byte away) works, and the server keeps serving.
. "$(dirname "$0")/functions.sh"
requires qemu-io

F=$WORK/f.img
bytes 2097152 0x66 >"$F"
cat >"$WORK/t.conf" <<CONF
0    2048 file $F 0
2048 8    error
2056 2040 file $F 1048576
CONF
start_strata --table "$WORK/t.conf" --export e
E0=1048576 E1=$((1048576 + 4096))   # the error range in bytes

out=$(nbdsh_py "
import errno
h = nbd.NBD()
h.connect_uri('$(uri e)')
def rd(off, n):
    try:
        h.pread(n, off); return 'ok'
    except nbd.Error as e:
        return 'EIO' if e.errnum == errno.EIO else 'errno %s' % e.errnum
def wr(off, n):
    try:
        h.pwrite(b'\x01' * n, off); return 'ok'
    except nbd.Error as e:
        return 'EIO' if e.errnum == errno.EIO else 'errno %s' % e.errnum
cases = [
    ('read just before', rd($E0 - 4096, 4096), 'ok'),
    ('read last byte before', rd($E0 - 1, 1), 'ok'),
    ('read first error byte', rd($E0, 1), 'EIO'),
    ('read inside', rd($E0 + 1000, 2000), 'EIO'),
    ('read last error byte', rd($E1 - 1, 1), 'EIO'),
    ('read first byte after', rd($E1, 1), 'ok'),
    ('read just after', rd($E1, 65536), 'ok'),
    ('read spanning into it', rd($E0 - 100, 200), 'EIO'),
    ('read spanning out of it', rd($E1 - 100, 200), 'EIO'),
    ('read spanning all of it', rd($E0 - 512, 4096 + 1024), 'EIO'),
    ('write inside', wr($E0 + 512, 512), 'EIO'),
    ('write just before', wr($E0 - 512, 512), 'ok'),
    ('write just after', wr($E1, 512), 'ok'),
    ('read after errors', rd(0, 1048576), 'ok'),
]
bad = [c for c in cases if c[1] != c[2]]
for name, got, want in bad:
    print('%s: got %s, want %s' % (name, got, want))
if not bad:
    print('ok')
" 2>&1)
[ "$out" = ok ] || die "error segment: $out"

# qemu-io sees the same: EIO inside, data outside.
out=$(qio_fails "$(uri e)" "read $((E0 + 512)) 512")
grep -q "Input/output error" <<<"$out" || die "qemu-io read in the error range: $out"
qio "$(uri e)" "read -P 0x66 0 $((E0 - 512))" "read -P 0x01 $((E0 - 512)) 512" \
  "read -P 0x01 $E1 512" "read -P 0x66 $((E1 + 512)) 4096"

# The errors went to the error target, not to the files; the server is still up.
[ "$(ctl status e --json | jq '.[0].segments[0].info.errors')" = 0 ] || die "file segment counted errors"
ctl list >/dev/null || die "server gone after I/O errors"
running "$STRATA_PID" || die "server exited after I/O errors"
# The error segment must not make the device-wide flush at exit fail.
stop_strata
echo PASS
