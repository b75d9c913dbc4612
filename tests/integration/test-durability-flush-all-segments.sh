#!/bin/bash
# durability across segments: an NBD FLUSH reaches every file segment of a table (flush counters of all of them move), even when a segment before them (an error segment) fails its flush.
. "$(dirname "$0")/functions.sh"

A=$WORK/a.img B=$WORK/b.img C=$WORK/c.img
truncate -s 1M "$A" "$B" "$C"
cat >"$WORK/t.conf" <<CONF
[ok]
0    2048 file $A 0
2048 2048 file $B 0
[witherr]
0    2048 file $C 0
2048 8    error
2056 2040 zero
4096 2048 file $B 0
CONF
start_strata --table "$WORK/t.conf"

flushes() { ctl status "$1" --json | jq ".[0].segments[$2].info.flushes"; }

# A flush of a table of two file segments syncs both.
a0=$(flushes ok 0) b0=$(flushes ok 1)
out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri ok)')
h.pwrite(b'a' * 4096, 0)
h.pwrite(b'b' * 4096, 1048576)
h.flush()
print('ok')
" 2>&1) && [ "$out" = ok ] || die "flush on 'ok': $out"
[ "$(flushes ok 0)" -gt "$a0" ] || die "the flush did not reach segment 0 (file A)"
[ "$(flushes ok 1)" -gt "$b0" ] || die "the flush did not reach segment 1 (file B)"

# With an error segment between them: the file segments before and after it
# are both flushed, whatever the flush reports for the whole device.
c0=$(flushes witherr 0) b0=$(flushes witherr 3)
out=$(nbdsh_py "
h = nbd.NBD(); h.connect_uri('$(uri witherr)')
h.pwrite(b'c' * 4096, 0)
h.pwrite(b'B' * 4096, 2097152)
try:
    h.flush()
    print('flush ok')
except nbd.Error as e:
    print('flush failed', e.errnum)
" 2>&1) || die "python: $out"
echo "witherr: $out"
[ "$(flushes witherr 0)" -gt "$c0" ] || die "the flush did not reach segment 0 (file C)"
[ "$(flushes witherr 3)" -gt "$b0" ] || die "the flush did not reach segment 3 (file B, after the error segment)"
echo PASS
