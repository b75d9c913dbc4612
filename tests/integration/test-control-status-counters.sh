#!/bin/bash
# strata status (text and --json): sizes, segments and the file target's counters (reads, read_bytes, writes, write_bytes, flushes, trims, zeros) go up by exactly what qemu-io and libnbd did.
. "$(dirname "$0")/functions.sh"
requires jq qemu-io

F=$WORK/x.img
truncate -s 2M "$F"
cat >"$WORK/t.conf" <<CONF
[disk]
0 2048 file $F 0
2048 2048 memory
CONF
start_strata --table "$WORK/t.conf"

st=$(ctl status disk --json)
[ "$(jq '.[0].size' <<<"$st")" = 2097152 ] || die "size: $st"
[ "$(jq '.[0].read_only' <<<"$st")" = false ] || die "read_only: $st"
[ "$(jq -c '[.[0].segments[] | [.start_sector, .num_sectors, .table]]' <<<"$st")" = \
  "[[0,2048,\"file $F 0\"],[2048,2048,\"memory\"]]" ] || die "segments: $st"
[ "$(jq -r '.[0].segments[0].info.path' <<<"$st")" = "$F" ] || die "path: $st"
for k in reads read_bytes writes write_bytes flushes trims trim_bytes zeros zero_bytes errors in_flight; do
  [ "$(jq ".[0].segments[0].info.$k" <<<"$st")" = 0 ] || die "counter $k is not 0 before any I/O: $st"
done

c() { ctl status disk --json | jq ".[0].segments[0].info.$1"; }

out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri disk)')
h.pwrite(b'w' * 10000, 1000)
h.pwrite(b'w' * 512, 0)
h.pread(4096, 65536)
h.pread(1, 7)
h.pread(3, 8)
h.flush()
h.trim(65536, 131072)
h.zero(4096, 262144)
h.shutdown()
print('ok')
" 2>&1) && [ "$out" = ok ] || die "libnbd I/O: $out"
[ "$(c writes)" = 2 ] || die "writes: $(c writes)"
[ "$(c write_bytes)" = 10512 ] || die "write_bytes: $(c write_bytes)"
[ "$(c reads)" = 3 ] || die "reads: $(c reads)"
[ "$(c read_bytes)" = 4100 ] || die "read_bytes: $(c read_bytes)"
[ "$(c flushes)" = 1 ] || die "flushes: $(c flushes)"
[ "$(c trims)" = 1 ] || die "trims: $(c trims)"
[ "$(c trim_bytes)" = 65536 ] || die "trim_bytes: $(c trim_bytes)"
[ "$(c zeros)" = 1 ] || die "zeros: $(c zeros)"
[ "$(c zero_bytes)" = 4096 ] || die "zero_bytes: $(c zero_bytes)"
[ "$(c errors)" = 0 ] || die "errors: $(c errors)"
[ "$(c in_flight)" = 0 ] || die "in_flight after the client left: $(c in_flight)"

# qemu-io I/O moves them further; a request crossing into the memory segment counts only its file part.
w0=$(c write_bytes) r0=$(c read_bytes)
qio "$(uri disk)" "write -P 0x42 $((1048576 - 1000)) 3000" "read -P 0x42 $((1048576 - 1000)) 3000"
[ "$(c write_bytes)" = $((w0 + 1000)) ] || die "write_bytes after a split write: $(c write_bytes), want $((w0 + 1000))"
[ "$(c read_bytes)" -ge $((r0 + 1000)) ] || die "read_bytes after a split read: $(c read_bytes)"
alloc=$(ctl status disk --json | jq '.[0].segments[1].info.allocated_bytes')
[ "$alloc" -gt 0 ] || die "memory segment allocated_bytes after a write: $alloc"

# The text form.
t=$(ctl status disk)
echo "$t"
grep -qF "device 'disk': 2.0 MiB (2097152 bytes), read-write" <<<"$t" || die "status text header: $t"
grep -qE "^  0 2048 file $F 0\$" <<<"$t" || die "status text segment 0: $t"
grep -qE "^  2048 2048 memory\$" <<<"$t" || die "status text segment 1: $t"
grep -qE "writes=3( |\$)" <<<"$t" || die "status text counters: $t"
# Without a name: every device.
[ "$(ctl status --json | jq length)" = 1 ] || die "status without a name"
stop_strata
echo PASS
