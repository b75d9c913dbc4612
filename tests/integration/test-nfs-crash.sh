#!/bin/bash
# nfs target integrity under server crashes: a libnbd client writes unique 4 KiB blocks (FLUSHes, FUA writes, 8 in flight) while the NFS server (ganesha on XFS) is crashed like a power cut several times per round, once for longer than the timeout; after each round (final FLUSH, another crash) the file on the server holds for every block its old content or a write issued to it, every durable write or a later one, no request took longer than timeout + 5 s, requests failed (EIO) only around outages.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/nfs-lib.sh"
nfs_enter_netns "$@"
requires mkfs.xfs xfs_io losetup jq

CLIENT=$STRATA_SRC/tests/integration/nfs_crash_client.py
[ -f "$CLIENT" ] || die "missing $CLIENT"
$PYTHON -c 'import nbd' || die "/usr/bin/python3 cannot import nbd (python3-libnbd)"

ROUNDS=${NFS_CRASH_ROUNDS:-3}
CRASHES=${NFS_CRASH_CRASHES:-4}   # per round, one of them longer than the timeout
TIMEOUT=10 MARGIN=5
DEV=$((48 << 20)) OFF=$((1 << 20)) TOTAL=$(((48 + 2) << 20))

nfs_xfs_setup
nfs_start_ganesha "$NFS_EXPORT"

# The harness's crash drops what is not on stable storage (else this test
# would prove nothing): an unsynced overwrite is lost, an fsynced one kept.
bytes 65536 0x01 >"$NFS_EXPORT/probe-synced"
bytes 65536 0x01 >"$NFS_EXPORT/probe-unsynced"
sync "$NFS_EXPORT/probe-synced" "$NFS_EXPORT/probe-unsynced"
fill "$NFS_EXPORT/probe-synced" 0 4096 0x02
fill "$NFS_EXPORT/probe-unsynced" 0 4096 0x02
sync "$NFS_EXPORT/probe-synced"
nfs_crash
expect_bytes "$NFS_EXPORT/probe-synced" 0 4096 0x02
expect_bytes "$NFS_EXPORT/probe-unsynced" 0 4096 0x01
rm -f "$NFS_EXPORT"/probe-*
IMG=$NFS_EXPORT/disk.img
$PYTHON "$CLIENT" init "$IMG" $OFF $DEV $TOTAL || die "cannot write the initial image"
echo "0 $((DEV / 512)) nfs $(nfs_url "$IMG") $OFF timeout=$TIMEOUT" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d

# pause SECONDS: sleep, failing at once when the client or strata has died.
pause() {
  local end=$(($(now_ms) + $(awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }')))
  while [ "$(now_ms)" -lt $end ]; do
    running "$CPID" || { cat "$WORK/client.log" >&2; die "round $r: the client exited early"; }
    running "$STRATA_PID" || die "round $r: strata exited"
    sleep 0.05
  done
}
rand_s() { awk -v a="$1" -v b="$2" -v r=$RANDOM 'BEGIN { printf "%.2f", a + (b - a) * r / 32767 }'; }

baseline=-
total_w=0 total_f=0
for r in $(seq 1 "$ROUNDS"); do
  seed=$((RANDOM * 32768 + RANDOM))
  rm -f "$WORK/stop" "$WORK/started"
  : >"$WORK/outages.$r"
  $PYTHON "$CLIENT" run "$(uri d)" $DEV $seed "$WORK/stop" "$WORK/records.$r.json" "$WORK/started" \
    --depth 8 --flush-every 40 --fua-pct 10 --drain $((TIMEOUT + MARGIN)) --final-flush 60 \
    >"$WORK/client.log" 2>&1 &
  CPID=$!
  deadline=$(($(now_ms) + 15000))
  until [ -e "$WORK/started" ]; do
    running "$CPID" || { cat "$WORK/client.log" >&2; die "round $r: the client failed to start"; }
    [ "$(now_ms)" -lt $deadline ] || die "round $r: the client did not connect within 15 s"
    sleep 0.05
  done
  long=$((RANDOM % CRASHES + 1))
  for c in $(seq 1 "$CRASHES"); do
    pause "$(rand_s 1 4)"
    down=0
    [ "$c" != "$long" ] || down=$((TIMEOUT + 2))
    t0=$(now_ms)
    nfs_crash $down
    echo "$t0 $(now_ms)" >>"$WORK/outages.$r"
    echo "round $r: crash $c at +$((t0 - ${T_START:=$t0})) ms, server down $(($(now_ms) - t0)) ms"
  done
  pause "$(rand_s 1 3)"
  touch "$WORK/stop"
  # Drain (<= timeout + margin) and the final FLUSH (<= 60 s) bound the wait.
  deadline=$(($(now_ms) + (TIMEOUT + MARGIN + 70) * 1000))
  while running "$CPID"; do
    [ "$(now_ms)" -lt $deadline ] || { cat "$WORK/client.log" >&2; die "round $r: the client did not finish after the stop"; }
    sleep 0.05
  done
  rc=0
  wait "$CPID" || rc=$?
  cat "$WORK/client.log"
  [ $rc -eq 0 ] || die "round $r: the client failed (exit status $rc)"
  # Only what is on stable storage counts: crash once more, then read the
  # file on the XFS mount directly.
  t0=$(now_ms)
  nfs_crash
  echo "$t0 $(now_ms)" >>"$WORK/outages.$r"
  out=$($PYTHON "$CLIENT" check "$IMG" $OFF $DEV $TOTAL "$WORK/records.$r.json" "$baseline" \
    "$WORK/baseline.$r" "$WORK/outages.$r" --max-latency $((TIMEOUT + MARGIN)) --reconnect 3 2>&1) || {
    printf '%s\n' "$out" >&2
    die "round $r (seed $seed): the server-side file breaks the guarantees (above)"
  }
  echo "round $r (seed $seed, $CRASHES+1 crashes): $out"
  # Not vacuous: the round wrote, made writes durable both ways, and the
  # long outage made requests fail.
  w=$(sed -n 's/.*writes=\([0-9]*\) .*/\1/p' <<<"$out")
  d=$(sed -n 's/.* durable=\([0-9]*\) .*/\1/p' <<<"$out")
  fua=$(sed -n 's/.*(fua \([0-9]*\)).*/\1/p' <<<"$out")
  f=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' <<<"$out")
  [ "${w:-0}" -ge 1000 ] || die "round $r: only ${w:-0} writes"
  [ "${fua:-0}" -ge 1 ] && [ "${d:-0}" -gt "${fua:-0}" ] || die "round $r: no FUA-durable or no flush-durable write"
  [ "${f:-0}" -ge 1 ] || die "round $r: no write failed, though the server was down for $((TIMEOUT + 2)) s > timeout"
  total_w=$((total_w + w)) total_f=$((total_f + f))
  echo "round $r: strata counters: $(ctl status d --json | jq -c '.[0].segments[0].info |
    {commits, verifier_changes, rewritten_bytes, calls_resent, calls_timed_out, reconnects, connect_failures}')"
  baseline=$WORK/baseline.$r
done
echo "total: $total_w writes, $total_f failed, $ROUNDS rounds of $((CRASHES + 1)) crashes"
# The crashes did lose unstable data that strata had to write again (the
# path under test ran; a crash that drops nothing would prove nothing).
info=$(ctl status d --json | jq -c '.[0].segments[0].info')
[ "$(jq .verifier_changes <<<"$info")" -ge "$ROUNDS" ] || die "strata saw fewer write-verifier changes than rounds: $info"
[ "$(jq .rewritten_bytes <<<"$info")" -gt 0 ] || die "strata never rewrote data after a server restart: $info"
running "$STRATA_PID" || die "strata exited"
stop_strata
echo PASS
