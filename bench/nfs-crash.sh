#!/usr/bin/env bash
# bench/nfs-crash.sh: integrity under NFS server crashes, strata's nfs target
# against qemu-nbd's nfs:// driver (qemu-block-extra, libnfs), in the rig of
# tests/integration/test-nfs-crash.sh: nfs-ganesha (VFS FSAL) on XFS over a
# loop device in a private network + mount namespace (nfs-lib.sh); a libnbd
# client (nfs_crash_client.py run) writes unique 4 KiB blocks, 8 in flight,
# FLUSH about every 40 writes, 10% with FUA, while the server is crashed like
# a power cut (SIGKILL ganesha + `xfs_io -x -c shutdown` + remount + restart
# with a new -E epoch, so a new write verifier) CRASHES times per round, one
# of them with the server down for 12 s (> strata's timeout=10); then a final
# FLUSH, one more crash, and the file on the XFS mount is compared with the
# client's records (bench/nfs_crash_check.py: counts instead of failing).
#
#   bench/nfs-crash.sh [--rounds N] [--crashes N] [--servers qemu-nbd,strata]
#
# Servers, on a file of their own on the same export:
#   qemu-nbd  qemu-nbd --persistent --shared=8 --format=raw --cache=none
#             --socket=S nfs://127.0.0.1/<file>      (libnfs defaults)
#   strata    $STRATA serve --table T --unix S --control C, table line
#             "0 <sectors> nfs nfs://127.0.0.1/<file> 0 timeout=10"
# (the whole file is the device, 48 MiB: qemu-nbd exports whole files).
#
# Per round: writes issued, durable writes (acknowledged with FUA, or
# acknowledged before a FLUSH that then succeeded), lost durable writes
# (blocks whose content is older than their last durable write), blocks
# holding data never written to them, failed/never-completed requests and the
# slowest request.  Progress goes to stderr; stdout gets the per-round table
# and the per-server summary (Markdown).  Needs root (namespaces, mount,
# ganesha) and an idle machine: takes about 25 s per round and server.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ARGS=("$@")
ROUNDS=6
CRASHES=4
SERVERS=qemu-nbd,strata
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --crashes) CRASHES=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: a positive number" >&2; exit 2; }
[[ $CRASHES =~ ^[1-9][0-9]*$ ]] || { echo "--crashes: a positive number" >&2; exit 2; }

# functions.sh: set -euo pipefail, $WORK, die/running/start_strata/uri/ctl,
# STRATA (default build/strata); nfs-lib.sh: ganesha + XFS + crash, cleanup
# of everything it started on exit.
. "$ROOT/tests/integration/functions.sh"
. "$ROOT/tests/integration/nfs-lib.sh"
nfs_enter_netns "${ARGS[@]}"
requires mkfs.xfs xfs_io losetup jq qemu-nbd
[ -x "$STRATA" ] || die "no strata binary at $STRATA (make build, or set STRATA)"
$PYTHON -c 'import nbd' || die "$PYTHON cannot import nbd (python3-libnbd)"
CLIENT=$ROOT/tests/integration/nfs_crash_client.py
CHECK=$HERE/nfs_crash_check.py
{ [ -f "$CLIENT" ] && [ -f "$CHECK" ]; } || die "missing $CLIENT or $CHECK"

TIMEOUT=10 MARGIN=5
DEV=$((48 << 20)) OFF=0 TOTAL=$DEV
SERVER_PID='' SERVER_URI='' SERVER_NAME='' CPID=''

log() { echo "nfs-crash: $*" >&2; }

# Our own processes on the way out (by pid), then nfs-lib's cleanup (strata,
# ganesha, rpcbind, mounts, loop devices, $WORK), keeping the exit status.
bench_cleanup() {
  local rc=$? p
  set +e # (errexit holds in traps: "(exit $rc)" below would end the shell)
  for p in $CPID $SERVER_PID; do
    if running "$p"; then
      kill -KILL "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  (exit $rc)
  nfs_cleanup
}
trap bench_cleanup EXIT

server_start() { # NAME IMAGE: sets SERVER_PID, SERVER_URI
  local name=$1 img=$2 i
  SERVER_NAME=$name
  case $name in
    qemu-nbd)
      rm -f "$WORK/qemu.sock"
      qemu-nbd --persistent --shared=8 --format=raw --cache=none --socket="$WORK/qemu.sock" \
        "$(nfs_url "$img")" </dev/null >>"$WORK/qemu-nbd.log" 2>&1 &
      SERVER_PID=$!
      SERVER_URI="nbd+unix:///?socket=$WORK/qemu.sock"
      for i in $(seq 1 200); do
        running "$SERVER_PID" || die "qemu-nbd exited during start-up: $(tail -n3 "$WORK/qemu-nbd.log")"
        [ -S "$WORK/qemu.sock" ] && return 0
        sleep 0.05
      done
      die "qemu-nbd did not listen within 10 s" ;;
    strata)
      echo "0 $((DEV / 512)) nfs $(nfs_url "$img") $OFF timeout=$TIMEOUT" >"$WORK/t.conf"
      start_strata --table "$WORK/t.conf" --export d
      SERVER_PID=$STRATA_PID
      SERVER_URI=$(uri d) ;;
    *) die "unknown server $name (qemu-nbd, strata)" ;;
  esac
}

server_stop() {
  if [ "$SERVER_NAME" = strata ] && running "$STRATA_PID"; then
    stop_strata
  elif running "$SERVER_PID"; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$SERVER_PID" || break; sleep 0.1; done
    running "$SERVER_PID" && kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null || true
  else
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID='' STRATA_PID=''
}

# pause SECONDS: sleep; returns 1 at once when the client or the server has
# exited.
pause() {
  local end=$(($(now_ms) + $(awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }')))
  while [ "$(now_ms)" -lt $end ]; do
    running "$CPID" && running "$SERVER_PID" || return 1
    sleep 0.05
  done
}
rand_s() { awk -v a="$1" -v b="$2" -v r=$RANDOM 'BEGIN { printf "%.2f", a + (b - a) * r / 32767 }'; }
kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

ROWS=$WORK/rows.md SUMMARY=$WORK/summary.md
: >"$ROWS"
: >"$SUMMARY"

# run_server NAME: ROUNDS rounds against one server; rows to $ROWS, a summary
# line to $SUMMARY.
run_server() {
  local name=$1 img=$NFS_EXPORT/$1.img baseline=- r c seed long down t0 deadline rc out note
  local info prev_info='{}' n_rounds=0 n_bad=0 n_lost=0 n_lostw=0 n_never=0 n_writes=0 n_durable=0 n_unchecked=0 worst=0
  $PYTHON "$CLIENT" init "$img" $OFF $DEV $TOTAL || die "cannot write the initial image $img"
  server_start "$name" "$img"
  log "$name: serving $(nfs_url "$img") as $SERVER_URI (pid $SERVER_PID)"
  for r in $(seq 1 "$ROUNDS"); do
    seed=$((RANDOM * 32768 + RANDOM)) note=
    running "$SERVER_PID" || { log "$name: server gone before round $r, restarting it"; server_stop; server_start "$name" "$img"; }
    rm -f "$WORK/stop" "$WORK/started" "$WORK/records.json"
    $PYTHON "$CLIENT" run "$SERVER_URI" $DEV $seed "$WORK/stop" "$WORK/records.json" "$WORK/started" \
      --depth 8 --flush-every 40 --fua-pct 10 --drain $((TIMEOUT + MARGIN)) --final-flush 60 \
      >"$WORK/client.log" 2>&1 &
    CPID=$!
    deadline=$(($(now_ms) + 15000))
    until [ -e "$WORK/started" ]; do
      running "$CPID" || { cat "$WORK/client.log" >&2; die "$name round $r: the client failed to start"; }
      [ "$(now_ms)" -lt $deadline ] || die "$name round $r: the client did not connect within 15 s"
      sleep 0.05
    done
    long=$((RANDOM % CRASHES + 1))
    for c in $(seq 1 "$CRASHES"); do
      pause "$(rand_s 1 4)" || break
      down=0
      [ "$c" != "$long" ] || down=$((TIMEOUT + 2))
      t0=$(now_ms)
      nfs_crash $down
      log "$name round $r: crash $c, server down $(($(now_ms) - t0)) ms"
    done
    pause "$(rand_s 1 3)" || true
    running "$SERVER_PID" || note+="server exited; "
    touch "$WORK/stop"
    # Drain (<= timeout + margin) and the final FLUSH (<= 60 s) bound the
    # client; after that it is stuck in a request the server never answers.
    deadline=$(($(now_ms) + (TIMEOUT + MARGIN + 70) * 1000))
    while running "$CPID" && [ "$(now_ms)" -lt $deadline ]; do sleep 0.05; done
    if running "$CPID"; then
      note+="client hung after the stop, killed; "
      kill -KILL "$CPID" 2>/dev/null || true
    fi
    rc=0
    wait "$CPID" || rc=$?
    CPID=
    sed 's/^/  /' "$WORK/client.log" >&2
    [ $rc -eq 0 ] || note+="client exit $rc ($(grep -m1 -o 'no FLUSH succeeded\|still in flight' "$WORK/client.log" || echo "see log")); "
    # Only what is on stable storage counts: crash once more, then read the
    # file on the XFS mount directly.
    nfs_crash
    n_rounds=$((n_rounds + 1))
    if [ ! -s "$WORK/records.json" ]; then
      n_unchecked=$((n_unchecked + 1))
      echo "| $name | $r | - | - | - | - | - | - | ${note}no records, not checked |" >>"$ROWS"
      # The file still holds what it holds: the next round starts from it.
      cp "$img" "$WORK/baseline.$name.$r"
      baseline=$WORK/baseline.$name.$r
      continue
    fi
    out=$($PYTHON "$CHECK" "$img" $OFF $DEV $TOTAL "$WORK/records.json" "$baseline" "$WORK/baseline.$name.$r" 2>"$WORK/check.err") ||
      { cat "$WORK/check.err" >&2; die "$name round $r: the checker failed"; }
    sed 's/^/  /' "$WORK/check.err" >&2
    log "$name round $r (seed $seed): $out"
    [ "$(kv outside "$out")" = ok ] || note+="bytes outside the device changed; "
    [ "$(kv final_flush "$out")" = ok ] || note+="final FLUSH failed; "
    [ "$(kv pending "$out")" = 0 ] || note+="$(kv pending "$out") requests never completed; "
    if [ "$name" = strata ]; then # counters of this round (they are cumulative)
      info=$(ctl status d --json | jq -c '.[0].segments[0].info') || info='{}'
      note+=$(jq -rn --argjson a "$info" --argjson b "$prev_info" '
        "verifier changes \(($a.verifier_changes // 0) - ($b.verifier_changes // 0)), " +
        "rewritten \(((($a.rewritten_bytes // 0) - ($b.rewritten_bytes // 0)) / 1048576 * 10 | floor) / 10) MiB, " +
        "calls timed out \(($a.calls_timed_out // 0) - ($b.calls_timed_out // 0))"')
      prev_info=$info
    fi
    local w d fua f lost lostw never lat
    w=$(kv writes "$out") d=$(kv durable "$out") fua=$(kv fua "$out") f=$(kv failed "$out")
    lost=$(kv lost "$out") lostw=$(kv lost_writes "$out") never=$(kv never_written "$out") lat=$(kv maxlat_ms "$out")
    echo "| $name | $r | $w | $d ($fua FUA) | $lost ($lostw writes) | $never | $f | $(awk -v m="$lat" 'BEGIN { printf "%.2f s", m / 1000 }') | ${note%; } |" >>"$ROWS"
    n_writes=$((n_writes + w)) n_durable=$((n_durable + d)) n_lost=$((n_lost + lost)) n_lostw=$((n_lostw + lostw)) n_never=$((n_never + never))
    [ "$lost" = 0 ] || n_bad=$((n_bad + 1))
    [ "$lat" -le "$worst" ] || worst=$lat
    baseline=$WORK/baseline.$name.$r
  done
  server_stop
  rm -f "$img" "$WORK"/baseline."$name".*
  note=
  [ "$n_unchecked" = 0 ] || note="$n_unchecked rounds not checked"
  echo "| $name | $n_rounds | $n_bad | $n_lost ($n_lostw writes) | $n_never | $n_writes | $n_durable | $(awk -v m="$worst" 'BEGIN { printf "%.2f s", m / 1000 }') | $note |" >>"$SUMMARY"
}

nfs_xfs_setup
nfs_start_ganesha "$NFS_EXPORT"
T0=$(now_ms)
IFS=, read -ra LIST <<<"$SERVERS"
for s in "${LIST[@]}"; do
  run_server "$s"
done
log "done in $((($(now_ms) - T0) / 1000)) s"

echo "Per round ($CRASHES crashes + 1 before the check; one outage of $((TIMEOUT + 2)) s):"
echo
echo "| server | round | writes | durable | lost durable: blocks (writes) | never-written blocks | failed requests | max latency | notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
cat "$ROWS"
echo
echo "| server | rounds | rounds that lost durable writes | lost durable: blocks (writes) | never-written blocks | writes | durable writes | max latency | notes |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
cat "$SUMMARY"
