#!/bin/bash
# file target reads from the mapped page cache (read_view): a range in the page cache is sent straight from the mapping (mapped_reads counts it), a cold range goes through io_uring read instead (so the queue thread never waits on the disk); both return the file's bytes at an unaligned table offset, see writes made through NBD and by another process at once, and a file truncated under the server gives the client an error (the server and a second client carry on). A client that leaves with 64 MiB of replies unread does not hurt the next. A zero segment reads as zeros from the zero page, next to a file segment.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires qemu-io nbdcopy jq cmp truncate

F=$WORK/t.img
OFF=4097                   # not page aligned: the mapping starts at the page below
SIZE=$((16 * 1048576))
head -c $((OFF + SIZE)) /dev/urandom >"$F"
sync "$F"
drop_cache() { $PYTHON -c "import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)" "$1"; }
drop_cache "$F"
echo "0 $((SIZE / 512)) file $F $OFF" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export t

mapped() { ctl status t --json | jq '.[0].segments[0].info.mapped_reads'; }
reads() { ctl status t --json | jq '.[0].segments[0].info.reads'; }
# read_at DEV_OFF LEN OUT: one NBD read of LEN bytes at DEV_OFF into OUT.
read_at() {
  $PYTHON -c "import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[4], 'wb').write(h.pread(int(sys.argv[3]), int(sys.argv[2])))
h.shutdown()" "$(uri t)" "$1" "$2" "$3"
}

# A cold range: read through io_uring, not the mapping.
[ "$(mapped)" = 0 ] || die "mapped reads before any read"
read_at $((8 * 1048576)) 4096 "$WORK/a"
cmp "$WORK/a" <(file_range "$F" $((OFF + 8 * 1048576)) 4096) || die "cold read returned the wrong bytes"
[ "$(reads)" = 1 ] || die "reads counter is $(reads), expected 1"
[ "$(mapped)" = 0 ] || die "a range not in the page cache was read from the mapping (mapped_reads=$(mapped))"

# The same range again: now in the page cache, so from the mapping.
read_at $((8 * 1048576)) 4096 "$WORK/b"
cmp "$WORK/b" "$WORK/a" || die "second read differs from the first"
[ "$(mapped)" = 1 ] || die "a cached range was not read from the mapping (mapped_reads=$(mapped))"

# The whole device, cached: byte-identical to the file range, mostly mapped.
cat "$F" >/dev/null
before=$(mapped)
nbdcopy "$(uri t)" "$WORK/out.img"
cmp "$WORK/out.img" <(file_range "$F" $OFF $SIZE) || die "nbdcopy out differs from the file range"
[ "$(mapped)" -gt "$before" ] || die "a cached whole-device copy made no mapped reads"

# Unaligned reads across page boundaries, after writes through NBD and by
# another process: the mapping is the page cache, so both show at once.
qio "$(uri t)" "write -P 0x5a 4095 8194" "read -P 0x5a 4095 8194"
fill "$F" $((OFF + 1048576 + 100)) 5000 0x3c
before=$(mapped)
qio "$(uri t)" "read -P 0x3c $((1048576 + 100)) 5000" "read -P 0x5a 4095 8194"
[ "$(mapped)" -gt "$before" ] || die "the re-reads were not mapped"
expect_bytes "$F" $((OFF + 4095)) 8194 0x5a

# A client that does not read its replies: once 4 MiB of replies wait to be
# sent, further reads copy through a buffer (a mapped page is copied only
# when its reply is sent, and must still be cached then). 64 reads of 1 MiB
# in one send, no reply read until all are in; every one correct.
cat "$F" >/dev/null
before_m=$(mapped) before_r=$(reads)
py "$F" $OFF <<'PY' || die "backlogged reads"
import struct, sys
from nbd_raw import *
M = 1 << 20
c = Raw().go("t")
reqs = b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, i + 1, (i % 16) * M, M) for i in range(64))
for i in range(64):
    c.pending[i + 1] = (CMD_READ, M)
c.send(reqs)
want = open(sys.argv[1], 'rb').read()[int(sys.argv[2]):]
for _ in range(64):
    r = c.reply()
    i = r["cookie"] - 1
    assert r["error"] == 0, r
    assert r["data"] == want[(i % 16) * M:(i % 16 + 1) * M], "read %d differs" % i
c.disconnect()
PY
nm=$(($(mapped) - before_m)) nr=$(($(reads) - before_r))
[ "$nr" = 64 ] || die "expected 64 reads, counted $nr"
[ "$nm" -ge 1 ] || die "no read was mapped before the backlog built up"
[ "$nm" -le 5 ] || die "$nm of 64 backlogged 1 MiB reads were mapped (at most 4 MiB of replies may wait as views)"

# A client that asks for 64 MiB and leaves without reading a byte (replies
# stuck in the pipe and the socket): the server drops it, serves the next.
py <<'PY' || die "a client leaving with replies unread"
import struct
from nbd_raw import *
M = 1 << 20
c = Raw().go("t")
c.send(b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, i + 1, (i % 16) * M, M) for i in range(64)))
c.close()
PY
sleep 0.5
server_alive
read_at $((3 * 1048576)) 65536 "$WORK/e"
cmp "$WORK/e" <(file_range "$F" $((OFF + 3 * 1048576)) 65536) || die "a read after a client left with replies unread"

# The file shrinks under the server (the last 4 MiB of the segment go): a
# read there fails for the client; a second client, reading the rest, is
# unaffected; the server stays up.
truncate -s $((OFF + 12 * 1048576)) "$F"
if read_at $((14 * 1048576)) 4096 "$WORK/c" 2>"$WORK/err"; then die "a read beyond the truncated file succeeded"; fi
read_at $((2 * 1048576)) 65536 "$WORK/d"
cmp "$WORK/d" <(file_range "$F" $((OFF + 2 * 1048576)) 65536) || die "a read inside the file failed after the truncation"
kill -0 "$STRATA_PID" || die "strata died after the file was truncated"
# Grown back (a hole now): the range reads as zeros again.
truncate -s $((OFF + SIZE)) "$F"
qio "$(uri t)" "read -P 0 $((14 * 1048576)) 4096" "read -P 0x5a 4095 8194"

stop_strata

# A zero segment reads from the zero page (no buffer); a read across the
# zero|file boundary is split as before. 1 MiB zero + 1 MiB of the file.
cat >"$WORK/z.conf" <<CONF
0 2048 zero
2048 2048 file $F 0
CONF
start_strata --table "$WORK/z.conf" --export z
qio "$(uri z)" "read -P 0 0 1048576" "read -P 0 4097 5000"
nbdcopy "$(uri z)" "$WORK/z.img"
cmp <(head -c 1048576 "$WORK/z.img") <(head -c 1048576 /dev/zero) || die "the zero segment did not read as zeros"
cmp <(tail -c 1048576 "$WORK/z.img") <(file_range "$F" 0 1048576) || die "the file segment after the zero segment differs"
stop_strata
echo PASS
