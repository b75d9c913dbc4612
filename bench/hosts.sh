#!/usr/bin/env bash
# bench/hosts.sh: the boot storm. Three hosts read the same golden image from one NFS server at once.
#
#   bench/hosts.sh [--size 512M] [--runs 1] [--cache-tmpfs]
#
# Network namespaces as in the multi-host test (tests/integration/hosts-lib.sh): a storage namespace runs ganesha
# exporting golden.img (SIZE random bytes, in the server's page cache), three host namespaces on a bridge, each with
# its own strata. Per run and configuration, on fresh servers:
#   nfs    each host exports the nfs device (`[golden ro] nfs nfs://10.77.0.1/... ro`) itself
#   cache  each host exports a cache device over it (`[gc] cache golden FILE`, FILE local and empty at the start)
# (in this order on odd runs, the other way round on even ones)
# two passes, cold then warm (the cache's fills finished in between): the three hosts read the whole export at once
# (`nbdcopy URI null:`, run in the host's namespace, NBD over the host's unix socket). Per pass: bytes sent by the
# storage side on the wire (tx_bytes of the storage ends of the three veth pairs), bytes the hosts' nfs segments read
# (`strata status --json`: read_bytes) and READ calls, ganesha's and the three stratas' CPU seconds (/proc/PID/stat
# utime+stime), each host's MiB/s and
# the pass's wall time (the slowest host). The issue's targets: the warm pass with the cache reads <= 5% of its
# bytes from the server; the cold pass with the cache takes <= 10% longer than without it.
# --cache-tmpfs puts the hosts' cache files on a tmpfs (no disk writes for the fills).
# Needs root; everything (namespaces, processes, files) is removed on exit, pass or fail.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export STRATA_SRC=${STRATA_SRC:-$(cd "$HERE/.." && pwd)}
. "$STRATA_SRC/tests/integration/functions.sh"
. "$STRATA_SRC/tests/integration/nfs-lib.sh"
. "$STRATA_SRC/tests/integration/hosts-lib.sh"
ARGS=("$@")
SIZE=512M
RUNS=1
CACHE_TMPFS=0
while [ $# -gt 0 ]; do
  case $1 in
    --size) SIZE=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --cache-tmpfs) CACHE_TMPFS=1 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
nfs_enter_netns "${ARGS[@]}"
requires jq nbdcopy numfmt lscpu getconf
bytes=$(numfmt --from=iec "$SIZE")
[ $((bytes % 65536)) = 0 ] || die "--size $SIZE: expected a multiple of 64 KiB"
HOSTS=3
TCK=$(getconf CLK_TCK)
hosts_setup $HOSTS
EXPORT=$WORK/export
mkdir -p "$EXPORT"
nfs_start_ganesha "$EXPORT"
G=$EXPORT/golden.img
head -c "$bytes" /dev/urandom >"$G"
CDIR=$WORK # the hosts' cache files: $CDIR/hostX.cache
if [ $CACHE_TMPFS = 1 ]; then
  CDIR=$WORK/cachefs
  mkdir -p "$CDIR"
  mount -t tmpfs -o size=$((HOSTS * bytes + 64 * 1048576)) strata-bench-cache "$CDIR" || die "cannot mount a tmpfs on $CDIR"
fi

ganesha_ticks() { awk '{print $14 + $15}' "/proc/$GANESHA_PID/stat"; }
strata_ticks() { # utime+stime of the three hosts' strata
  local x s=0
  for x in $(seq 1 $HOSTS); do s=$((s + $(awk '{print $14 + $15}' "/proc/${HOST_PID[$x]}/stat"))); done
  echo $s
}
nfs_read_bytes() { # the sum over the hosts of their nfs segment's read_bytes
  local x s=0 v
  for x in $(seq 1 $HOSTS); do
    v=$(host_ctl "$x" status golden --json | jq '.[0].segments[0].read_bytes // .[0].segments[0].info.read_bytes // .[0].read_bytes')
    [ "$v" != null ] || die "no read_bytes counter in host $x's status of golden"
    s=$((s + v))
  done
  echo $s
}
cache_info() { host_ctl "$1" status gc --json | jq -c '.[0].segments[0].info'; }
nfs_read_calls() { # the sum over the hosts of their nfs segment's READ calls
  local x s=0
  for x in $(seq 1 $HOSTS); do s=$((s + $(host_ctl "$x" status golden --json | jq '.[0].segments[0].info.read_calls'))); done
  echo $s
}
wait_cache_settled() { # every host's cache has written the chunks it is going to (the count holds still for 1 s)
  local x i prev=-1 cur
  for x in $(seq 1 $HOSTS); do
    for i in $(seq 1 600); do
      cur=$(cache_info "$x" | jq .cache_used_slots)
      [ "$cur" = "$prev" ] && [ $((i % 10)) = 0 ] && continue 2
      [ $((i % 10)) = 0 ] && prev=$cur
      sleep 0.1
    done
    die "host $x's cache still filling 60 s after the cold pass ($cur chunks)"
  done
  for x in $(seq 1 $HOSTS); do
    echo "# run $run: host $x's cache after the cold pass: $(cache_info "$x" | jq -r '"\(.cache_used_slots) of \(.cache_slots) chunks, fills \(.fills), fills_skipped \(.fills_skipped)"')" >>"$WORK/notes"
  done
}

echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) vCPU; strata $("$STRATA" --version 2>/dev/null | head -1)"
echo "# bench/hosts.sh --size $SIZE --runs $RUNS$([ $CACHE_TMPFS = 0 ] || echo ' --cache-tmpfs'); $HOSTS hosts each read $SIZE twice, all at once; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| run | device | pass | from the server, wire MiB | nfs segments read MiB | NFS READ calls | % of the bytes read | ganesha CPU s | strata CPU s (3 hosts) | host 1 MiB/s | host 2 MiB/s | host 3 MiB/s | wall s | load (1 min) |"
echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A WALL=() WIRE=()
for run in $(seq 1 "$RUNS"); do
  order="nfs cache"
  [ $((run % 2)) = 1 ] || order="cache nfs" # alternate, so neither always runs under the load the other left
  for cfg in $order; do
    for x in $(seq 1 $HOSTS); do
      d=$WORK/host$x
      rm -f "$CDIR/host$x.cache" "$d/t.conf"
      echo "[golden ro]" >>"$d/t.conf"
      echo "0 $((bytes / 512)) nfs $(hosts_nfs_url "$G") 0 ro timeout=60" >>"$d/t.conf"
      if [ $cfg = cache ]; then
        printf '[gc]\n0 %d cache golden %s\n' $((bytes / 512)) "$CDIR/host$x.cache" >>"$d/t.conf"
      fi
      host_strata "$x" --table "$d/t.conf"
    done
    dev=golden
    [ $cfg = nfs ] || dev=gc
    for pass in cold warm; do
      [ $cfg = nfs ] || [ $pass = cold ] || wait_cache_settled
      tx0=$(storage_tx_bytes)
      nr0=$(nfs_read_bytes)
      nc0=$(nfs_read_calls)
      g0=$(ganesha_ticks)
      c0=$(strata_ticks)
      t0=$(now_ms)
      pids=()
      for x in $(seq 1 $HOSTS); do
        (
          s=$(now_ms)
          host_exec "$x" nbdcopy "$(host_uri "$x" $dev)" null: || exit 1
          echo $(($(now_ms) - s)) >"$WORK/ms.$x"
        ) &
        pids+=($!)
        hosts_bg $!
      done
      for p in "${pids[@]}"; do wait "$p" || die "an nbdcopy of $cfg ($pass) failed"; done
      wall=$(($(now_ms) - t0))
      tx=$(($(storage_tx_bytes) - tx0))
      nr=$(($(nfs_read_bytes) - nr0))
      nc=$(($(nfs_read_calls) - nc0))
      g=$(($(ganesha_ticks) - g0))
      c=$(($(strata_ticks) - c0))
      rates=()
      for x in $(seq 1 $HOSTS); do
        rates+=("$(awk -v b="$bytes" -v ms="$(cat "$WORK/ms.$x")" 'BEGIN {printf "%.0f", b / 1048576 / (ms / 1000)}')")
      done
      WALL[$run.$cfg.$pass]=$wall
      WIRE[$run.$cfg.$pass]=$tx
      awk -v r="$run" -v cf="$cfg" -v p="$pass" -v tx="$tx" -v nr="$nr" -v nc="$nc" -v tot=$((HOSTS * bytes)) -v g="$g" -v c="$c" -v tck="$TCK" \
        -v h1="${rates[0]}" -v h2="${rates[1]}" -v h3="${rates[2]}" -v w="$wall" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN {printf "| %d | %s | %s | %.1f | %.1f | %d | %.1f | %.2f | %.2f | %s | %s | %s | %.2f | %s |\n",
          r, cf, p, tx / 1048576, nr / 1048576, nc, 100 * tx / tot, g / tck, c / tck, h1, h2, h3, w / 1000, l}'
    done
    for x in $(seq 1 $HOSTS); do host_stop "$x"; done
  done
done
echo
for run in $(seq 1 "$RUNS"); do
  awk -v r="$run" -v warm="${WIRE[$run.cache.warm]}" -v tot=$((HOSTS * bytes)) -v cc="${WALL[$run.cache.cold]}" \
    -v nc="${WALL[$run.nfs.cold]}" 'BEGIN {
      printf "run %d: warm pass with the cache: %.2f%% of its bytes from the server (target <= 5%%): %s\n", r,
        100 * warm / tot, (warm <= 0.05 * tot ? "met" : "NOT met")
      printf "run %d: cold pass with the cache: %+.1f%% time against the nfs device alone (target <= +10%%): %s\n", r,
        100 * (cc - nc) / nc, (cc <= 1.10 * nc ? "met" : "NOT met") }'
done
[ ! -f "$WORK/notes" ] || cat "$WORK/notes"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
