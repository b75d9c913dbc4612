#!/bin/bash
# The cache target over a read-only file device: every byte read through it equals the file (whole passes, 2,000
# random reads of random size and alignment); a second pass reads nothing from the device; a cache smaller than the
# device evicts and stays within its size; after kill -9 the cache file is used again and still returns the right
# bytes; a device changed while stopped empties the cache, one changed while served turns it off (new bytes at once,
# never stale ones); a writable device is refused; a cow stack over the cache reads
# and writes as over the file.
source "$(dirname "$0")/functions.sh"
requires jq nbdcopy cmp
S="$STRATA"
M=1048576
SIZE=$((64 * M))
head -c $SIZE /dev/urandom >"$WORK/golden.img"
cat >"$WORK/t.conf" <<EOT
[golden ro]
0 $((SIZE / 512)) file $WORK/golden.img 0 ro
[gc]
0 $((SIZE / 512)) cache golden $WORK/full.cache
[small]
0 $((SIZE / 512)) cache golden $WORK/small.cache size=16M chunk=64K
EOT
start_strata --table "$WORK/t.conf"
info() { ctl status "$1" --json | jq ".[0].segments[0].info.$2"; }

# Two whole passes: the second is served from the cache file.
nbdcopy "$(uri gc)" "$WORK/pass1.img"
cmp "$WORK/golden.img" "$WORK/pass1.img" || die "pass 1 through the cache differs from the file"
miss1=$(info gc miss_bytes)
[ "$miss1" -ge $SIZE ] || die "pass 1 read only $miss1 bytes from the device"
# nbdcopy's reads are whole chunks: each is filled before its reply, none skipped, so the cache is full at once.
[ "$(info gc cache_used_slots)" = $((SIZE / 65536)) ] || die "after pass 1 the cache holds $(info gc cache_used_slots) chunks"
[ "$(info gc fills_skipped)" = 0 ] || die "pass 1 skipped $(info gc fills_skipped) fills"
nbdcopy "$(uri gc)" "$WORK/pass2.img"
cmp "$WORK/golden.img" "$WORK/pass2.img" || die "pass 2 (from the cache file) differs from the file"
miss2=$(info gc miss_bytes)
hit2=$(info gc hit_bytes)
echo "full cache: pass 1 read $miss1 bytes from the device, pass 2 $((miss2 - miss1)) ($hit2 bytes from the cache)"
[ "$miss2" = "$miss1" ] || die "pass 2 read $((miss2 - miss1)) bytes from the device"
[ "$hit2" -ge $SIZE ] || die "pass 2 served only $hit2 bytes from the cache"

# Random reads of random size and alignment, from both caches, against the file.
$PYTHON - "$(uri gc)" "$(uri small)" "$WORK/golden.img" <<'PY'
import nbd, random, sys
ref = open(sys.argv[3], "rb").read()
rng = random.Random(7)
for u in sys.argv[1:3]:
    h = nbd.NBD(); h.connect_uri(u)
    cookies = {}
    for i in range(2000):
        n = rng.choice([1, 511, 4096, 65536, 65537, 300000, 1 << 20])
        off = rng.randrange(0, len(ref) - n)
        buf = nbd.Buffer(n)
        cookies[h.aio_pread(buf, off)] = (off, n, buf)
        while h.aio_in_flight() >= 16:
            h.poll(-1)
        for c in [c for c in cookies if h.aio_command_completed(c)]:
            o, l, b = cookies.pop(c)
            assert b.to_bytearray() == ref[o:o + l], "%s: read %d+%d differs" % (u, o, l)
    while cookies:
        h.poll(-1)
        for c in [c for c in cookies if h.aio_command_completed(c)]:
            o, l, b = cookies.pop(c)
            assert b.to_bytearray() == ref[o:o + l], "%s: read %d+%d differs" % (u, o, l)
print("random reads: 2 x 2000 matched")
PY
[ $? = 0 ] || die "random reads differ"
# The small cache stayed within its 16 MiB and evicted.
nbdcopy "$(uri small)" "$WORK/small1.img"
cmp "$WORK/golden.img" "$WORK/small1.img" || die "a pass through the small cache differs"
[ "$(info small cache_used_slots)" -le 256 ] || die "the small cache holds $(info small cache_used_slots) chunks of 256"
[ "$(info small evictions)" -gt 0 ] || die "the small cache never evicted"
sz=$(stat -c %s "$WORK/small.cache")
[ "$sz" -le $((17 * M)) ] || die "the small cache file is $sz bytes"
ctl status gc | grep -q "hit_bytes" || die "status shows no cache counters: $(ctl status gc)"

# kill -9 in the middle of a pass, restart: the cache file is used again, and right.
nbdcopy "$(uri small)" "$WORK/small2.img" 2>/dev/null &
P=$!
sleep 0.3
kill9_strata
wait $P || true
start_strata --table "$WORK/t.conf"
[ "$(info gc cache_used_slots)" -ge $((SIZE / 65536 * 9 / 10)) ] || die "after kill -9 the full cache holds $(info gc cache_used_slots) chunks"
nbdcopy "$(uri gc)" "$WORK/pass3.img"
cmp "$WORK/golden.img" "$WORK/pass3.img" || die "after kill -9 the cache returned wrong bytes"
[ "$(info gc miss_bytes)" -le $((SIZE / 10)) ] || die "after kill -9 the cache read $(info gc miss_bytes) bytes from the device"
nbdcopy "$(uri small)" "$WORK/small3.img"
cmp "$WORK/golden.img" "$WORK/small3.img" || die "after kill -9 the small cache returned wrong bytes"

# The file changes while strata is stopped: the cache is emptied at load.
stop_strata
printf 'changed while stopped' | dd of="$WORK/golden.img" bs=1 seek=12345 conv=notrunc status=none
start_strata --table "$WORK/t.conf"
grep -q "full.cache: emptied: the device's identity changed" "$STRATA_LOG" || die "no log line for the emptied cache"
[ "$(info gc cache_used_slots)" = 0 ] || die "a cache over a changed file kept $(info gc cache_used_slots) chunks"
nbdcopy "$(uri gc)" "$WORK/pass4.img"
cmp "$WORK/golden.img" "$WORK/pass4.img" || die "after the change the cache returned old bytes"

# The file changes while served: from then on every read goes to the file.
printf 'changed while served!' | dd of="$WORK/golden.img" bs=1 seek=99999 conv=notrunc status=none
sleep 1.2
nbdcopy "$(uri gc)" "$WORK/pass5.img"
cmp "$WORK/golden.img" "$WORK/pass5.img" || die "a cache over a file changed while served returned stale bytes"
[ "$(info gc bypass)" = 1 ] || die "the cache did not notice the change"
stop_strata

# Refused: a writable device, a device with no identity.
printf '[w]\n0 2048 file %s 0\n[c]\n0 2048 cache w %s\n' "$WORK/golden.img" "$WORK/x.cache" >"$WORK/bad.conf"
out=$("$S" serve --table "$WORK/bad.conf" --unix "$WORK/bad.sock" 2>&1) && die "a cache over a writable device started"
grep -q "device w is writable" <<<"$out" || die "unclear refusal: $out"
# (A read-only device with no identity, e.g. an rbd image that is no snapshot: refused too, CacheTarget unit test.)

# A cow stack over the cache: the golden image's chunks come from the cache.
cp "$WORK/golden.img" "$WORK/expect.img"
"$S" layer create "$WORK/top.layer" --size $SIZE >/dev/null
cat >"$WORK/cow.conf" <<EOT
[golden ro]
0 $((SIZE / 512)) file $WORK/golden.img 0 ro
[gc]
0 $((SIZE / 512)) cache golden $WORK/full.cache
[vm]
0 $((SIZE / 512)) cow $WORK/top.layer base=gc
EOT
start_strata --table "$WORK/cow.conf"
qio "$(uri vm)" "write -P 0x5a $((3 * M + 512)) 8192"
fill "$WORK/expect.img" $((3 * M + 512)) 8192 0x5a
nbdcopy "$(uri vm)" "$WORK/vm.img"
cmp "$WORK/expect.img" "$WORK/vm.img" || die "a cow stack over the cache reads wrongly"
cmp "$WORK/golden.img" "$WORK/pass5.img" || die "the golden image was written"
stop_strata
echo PASS
