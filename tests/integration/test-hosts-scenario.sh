#!/bin/bash
# Many hosts, one golden image (docs/cluster.md), on network namespaces: a storage namespace runs ganesha exporting
# golden-v1.img (64 MiB of random bytes); three hosts, each its own strata with [golden ro] nfs (over TCP to the
# storage) -> [gc] cache (a local file) -> two cow VM disks with local tops. Six verifying writers (hosts_writer.py: a
# model of every byte, golden bytes first, 16 requests in flight, random sizes and offsets, reads checked) drive the
# six disks at once for $SECS s. Meanwhile: golden-v2.img is published on the server and host 3 creates a new trio
# over it at runtime (`strata create`), whose writer starts from v2's bytes; and vm1a moves from host 1 to host 2
# (dirty map --full, sync passes to host 2's NBD TCP export, `sync --move`), its writer following it and sending again
# what failed with ESHUTDOWN. Every writer ends with 0 mismatches, the golden files on the server are unchanged,
# every cache served hits, host 1 reports vm1a moved and removes it, every strata exits 0 on SIGTERM.
# The b disks stack on a shared read-only cow layer on the server (nfs:// parent link, over the cached v1 base):
# while the hosts read it, the publisher's merge into it (on the server) and a host's merge into it are refused; it
# is unchanged at the end, and once every host has stopped the publisher's merge goes through.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
. "$(dirname "$0")/hosts-lib.sh"
nfs_enter_netns "$@"
requires jq sha256sum qemu-io nbdcopy
[ -x "$PYTHON" ] || die "no $PYTHON (Debian's python3 with libnbd)"
$PYTHON -c 'import nbd' || die "$PYTHON cannot import nbd (python3-libnbd)"

M=1048576
SIZE=$((64 * M))
SECS=30
WRITER="$PYTHON $(dirname "$0")/hosts_writer.py"
hosts_setup 3
EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"
V1=$EXPORT/golden-v1.img
head -c $SIZE /dev/urandom >"$V1"
SUM1=$(sha256sum <"$V1")

# A shared read-only cow layer on the server over v1 (a "v1.1" patch of its first 8 MiB): made by the publisher, a
# strata of the storage server serving a stack on the exported files, then snapshotted: golden.layer.snap1 is the
# shared layer the hosts' b disks stack on (nfs:// parent link), each host holding a lease on it.
head -c $((8 * M)) /dev/urandom >"$WORK/patch.bin"
{ cat "$WORK/patch.bin"; tail -c $((SIZE - 8 * M)) "$V1"; } >"$WORK/golden-b.img"
"$STRATA" layer create "$EXPORT/golden.layer" --size $SIZE >/dev/null
printf '[pubbase ro]\n0 %d file %s 0 ro\n[pub]\n0 %d cow %s base=pubbase\n' $((SIZE / 512)) "$V1" $((SIZE / 512)) \
  "$EXPORT/golden.layer" >"$WORK/pub.conf"
start_strata --table "$WORK/pub.conf"
nbdcopy "$WORK/patch.bin" "$(uri pub)"
ctl snapshot pub >/dev/null
SHARED=$EXPORT/golden.layer.snap1
[ -f "$SHARED" ] || die "the publisher's snapshot did not make $SHARED"
SUMS=$(sha256sum <"$SHARED")

for x in 1 2 3; do
  d=$WORK/host$x
  "$STRATA" layer create "$d/vm${x}a.layer" --size $SIZE >/dev/null
  "$STRATA" layer create "$d/vm${x}b.layer" --parent "$(hosts_nfs_url "$SHARED")" >/dev/null
  cat >"$d/t.conf" <<CONF
[golden ro]
0 $((SIZE / 512)) nfs $(hosts_nfs_url "$V1") 0 ro timeout=20
[gc]
0 $((SIZE / 512)) cache golden $d/golden-v1.cache
[vm${x}a]
0 $((SIZE / 512)) cow $d/vm${x}a.layer base=gc
[vm${x}b]
0 $((SIZE / 512)) cow $d/vm${x}b.layer base=gc lease=10
CONF
  host_strata $x --table "$d/t.conf"
done
# Each host reads the golden image over the bridge, not over a loopback of its own.
[ "$(host_ctl 1 status golden --json | jq -r '.[0].segments[0].info.server')" = "10.77.0.1:2049" ] ||
  die "host 1's nfs segment talks to $(host_ctl 1 status golden --json | jq -r '.[0].segments[0].info.server'), expected 10.77.0.1:2049"

# ---- six writers at once -------------------------------------------------------------------------------------
declare -A WPID=()
seed=0
for x in 1 2 3; do
  for v in a b; do
    seed=$((seed + 1))
    move=()
    [ "$x$v" = 1a ] && move=(--move-to "$(host_tcp_uri 2 vm1a)" --after 5)
    golden=$V1
    [ $v = b ] && golden=$WORK/golden-b.img
    $WRITER --uri "$(host_uri $x vm$x$v)" --golden "$golden" --seconds $SECS --seed $seed --name "vm$x$v" \
      --out "$WORK/w-vm$x$v.json" "${move[@]}" >/dev/null 2>"$WORK/w-vm$x$v.err" &
    WPID[vm$x$v]=$!
    hosts_bg $!
  done
done
t0=$(now_ms)
sleep 3

# ---- mid-run: golden-v2 published, a new disk over it on host 3 ---------------------------------------------
V2=$EXPORT/golden-v2.img
head -c $SIZE /dev/urandom >"$EXPORT/.golden-v2.tmp"
mv "$EXPORT/.golden-v2.tmp" "$V2"
SUM2=$(sha256sum <"$V2")
"$STRATA" layer create "$WORK/host3/vm3c.layer" --size $SIZE >/dev/null
echo "0 $((SIZE / 512)) nfs $(hosts_nfs_url "$V2") 0 ro timeout=20" | host_ctl 3 create golden2 --table - --read-only >/dev/null ||
  die "host 3 could not create golden2 (nfs over golden-v2.img)"
echo "0 $((SIZE / 512)) cache golden2 $WORK/host3/golden-v2.cache" | host_ctl 3 create gc2 --table - --read-only >/dev/null ||
  die "host 3 could not create gc2 (a cache over golden2)"
echo "0 $((SIZE / 512)) cow $WORK/host3/vm3c.layer base=gc2" | host_ctl 3 create vm3c --table - >/dev/null ||
  die "host 3 could not create vm3c (a cow over gc2)"
$WRITER --uri "$(host_uri 3 vm3c)" --golden "$V2" --seconds 10 --seed 99 --name vm3c --out "$WORK/w-vm3c.json" \
  >/dev/null 2>"$WORK/w-vm3c.err" &
WPID[vm3c]=$!
hosts_bg $!
echo "golden-v2.img published and vm3c created over it on host 3, $(($(now_ms) - t0)) ms into the run"
sleep 1

# ---- mid-run: vm1a moves from host 1 to host 2 ---------------------------------------------------------------
"$STRATA" layer create "$WORK/host2/vm1a.layer" --size $SIZE >/dev/null
echo "0 $((SIZE / 512)) cow $WORK/host2/vm1a.layer base=gc" | host_ctl 2 create vm1a --table - >/dev/null ||
  die "host 2 could not create vm1a (the move's destination)"
host_ctl 1 dirty start vm1a move --full >/dev/null
B_URI=$(host_tcp_uri 2 vm1a)
tm0=$(now_ms)
host_ctl 1 sync vm1a --map move --to "$B_URI" --max-rounds 3 >/dev/null || true # may end unconverged: the writes go on
out=$(host_ctl 1 sync vm1a --map move --to "$B_URI" --move --json) || die "sync --move of vm1a to $B_URI failed: $out"
tm1=$(now_ms)
echo "move: $(jq -c . <<<"$out")"
[ "$(jq .moved <<<"$out")" = true ] || die "sync --move did not move vm1a: $out"
# The fence must be up once the sync says moved: host 1 fails every request on vm1a from now on.
[ "$(host_ctl 1 status vm1a --json | jq '.[0].moved')" = true ] ||
  die "sync --move reported moved ($out), but host 1's status of vm1a says moved=$(host_ctl 1 status vm1a --json | jq '.[0].moved'): host 1 still serves vm1a, so writes acknowledged there from now on never reach host 2"
held_us=$(jq .held_us <<<"$out")
echo "vm1a moved host 1 -> host 2 in $((tm1 - tm0)) ms, $(($(now_ms) - t0)) ms into the run; writes held for the last pass: $((held_us / 1000)) ms"

# ---- mid-run: the shared layer is never written while the hosts read it -------------------------------------
# Every host holds a lease on it; the publisher's merge into it (on the server) is refused naming the three hosts,
# and a host's merge of its b disk into it is refused outright (a host never writes a shared layer).
n=$(find "$EXPORT" -maxdepth 1 -name 'golden.layer.snap1.lease-*' | wc -l)
[ "$n" = 3 ] || die "expected 3 hosts' leases beside the shared layer, found $n: $(ls "$EXPORT")"
out=$(ctl merge pub 2>&1) && die "the publisher's merge into the shared layer went through while 3 hosts read it: $out"
echo "$out" | grep -q "is shared: 3 host(s) read it" || die "the publisher's merge was refused for the wrong reason: $out"
out=$(host_ctl 1 merge vm1b 2>&1) && die "host 1 merged vm1b's top into the shared layer: $out"
echo "$out" | grep -q "shared layer on remote storage" || die "host 1's merge into the shared layer refused for the wrong reason: $out"
[ "$(host_ctl 2 status vm2b --json | jq -r '.[0].segments[0].layers[0].path')" = "$(hosts_nfs_url "$SHARED")" ] ||
  die "host 2's vm2b does not stack on the shared layer: $(host_ctl 2 status vm2b --json | jq -c '.[0].segments[0].layers')"
echo "merges into the shared layer refused while 3 hosts read it, $(($(now_ms) - t0)) ms into the run"

# ---- every writer: 0 mismatches -----------------------------------------------------------------------------
failed=
for w in vm1a vm1b vm2a vm2b vm3a vm3b vm3c; do
  rc=0
  wait "${WPID[$w]}" || rc=$?
  line=$(cat "$WORK/w-$w.json" 2>/dev/null || true)
  echo "writer $w: ${line:-no result} (exit $rc)"
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    failed="$failed $w"
    sed 's/^/    /' "$WORK/w-$w.err" | tail -5 >&2
    continue
  fi
  [ "$(jq .final_mismatch_bytes <<<"$line")" = 0 ] || failed="$failed $w"
  [ "$(jq .read_mismatches <<<"$line")" = 0 ] || failed="$failed $w"
  [ "$(jq .writes <<<"$line")" -gt 100 ] || die "writer $w made only $(jq .writes <<<"$line") writes: expected > 100 in $SECS s"
done
[ -z "$failed" ] || die "writers with mismatches or errors:$failed (expected none)"
vm1a=$(cat "$WORK/w-vm1a.json")
[ "$(jq .moved <<<"$vm1a")" = true ] || die "the writer of vm1a did not follow the move: $vm1a"
echo "vm1a's writer: $(jq .shutdowns <<<"$vm1a") requests failed with ESHUTDOWN, $(jq .resent <<<"$vm1a") writes sent again to host 2, reconnected $(jq .move_gap_ms <<<"$vm1a") ms after the first ESHUTDOWN"

# ---- host 1 serves vm1a no more; the caches served; the server's files are unchanged -----------------------
[ "$(host_ctl 1 status vm1a --json | jq '.[0].moved')" = true ] || die "host 1 does not report vm1a moved"
qio_fails "$(host_uri 1 vm1a)" "read 0 4096" >/dev/null
for x in 1 2 3; do
  c=$(host_ctl $x status gc --json | jq -c '.[0].segments[0].info | {hit_bytes, miss_bytes, cache_used_slots, bypass}')
  n=$(host_ctl $x status golden --json | jq -c '.[0].segments[0].info | {read_calls, write_calls, reconnects}')
  echo "host $x: cache $c, nfs $n"
  [ "$(jq .hit_bytes <<<"$c")" -gt 0 ] || die "host $x's cache served no hits (expected the two VMs to share it): $c"
  [ "$(jq .bypass <<<"$c")" = 0 ] || die "host $x's cache turned itself off (bypass): $c"
  [ "$(jq .write_calls <<<"$n")" = 0 ] || die "host $x wrote to the golden image on the server: $n"
done
[ "$(sha256sum <"$V1")" = "$SUM1" ] || die "golden-v1.img on the server changed during the run (sha256 differs)"
[ "$(sha256sum <"$V2")" = "$SUM2" ] || die "golden-v2.img on the server changed during the run (sha256 differs)"
[ "$(sha256sum <"$SHARED")" = "$SUMS" ] || die "the shared layer on the server changed during the run (sha256 differs)"
# After a move the old host drops the device (it serves nothing from it any more), then every strata stops cleanly.
# (qemu-io's connection above may take a moment to be gone: remove is refused while a client is connected.)
for _ in $(seq 1 50); do
  if err=$(host_ctl 1 remove vm1a 2>&1 >/dev/null); then err=; break; fi
  sleep 0.1
done
[ -z "$err" ] || die "host 1 refused to remove the moved vm1a for 5 s: $err"
for x in 1 2 3; do host_stop $x; done
# The hosts gone (their leases removed as they stopped), the publisher may fold its top into the layer.
n=$(find "$EXPORT" -maxdepth 1 -name 'golden.layer.snap1.lease-*' | wc -l)
[ "$n" = 0 ] || die "the stopped hosts left $n lease files: $(ls "$EXPORT")"
ctl merge pub >/dev/null || die "the publisher's merge was refused after every host stopped"
echo PASS
