#!/bin/bash
# --sched: the I/O threads (strata-qN) run under SCHED_BATCH by default and SCHED_OTHER with --sched normal, other threads keep SCHED_OTHER, I/O works either way, and a bad value is refused with a message naming the option.
. "$(dirname "$0")/functions.sh"
requires qemu-io

truncate -s 8M "$WORK/x.img"

# policies PID: "NAME=POLICY" for each thread (field 41 of /proc/TID/stat:
# 0 SCHED_OTHER, 3 SCHED_BATCH), sorted.
policies() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm")=$(sed 's/.*) //' "$t/stat" | awk '{print $39}')"
  done | sort
}

check() {  # check WANT_QUEUE_POLICY [serve args...]
  local want=$1
  shift
  start_strata --file "$WORK/x.img" --queues 2 "$@"
  local p
  p=$(policies "$STRATA_PID")
  echo "threads: $(echo $p)"
  [ "$(grep -c '^strata-q[0-9]*=' <<<"$p")" -eq 2 ] || die "expected 2 queue threads: $p"
  grep '^strata-q' <<<"$p" | grep -qv "=$want\$" && die "a queue thread is not under policy $want: $p"
  grep -v '^strata-q' <<<"$p" | grep -v '^iou-' | grep -qv '=0$' && die "a non-queue thread changed policy: $p"
  qio "$(uri)" "write -P 0x5a 0 1M" "flush" "read -P 0x5a 0 1M"  # dies on an error or a pattern mismatch
  stop_strata
}

check 3
check 3 --sched batch
check 0 --sched normal

if out=$("$STRATA" serve --file "$WORK/x.img" --unix "$WORK/bad.sock" --control "$WORK/bad.ctl" --sched fast 2>&1); then
  die "--sched fast was accepted"
fi
grep -q -- "--sched" <<<"$out" || die "the error does not name --sched: $out"
echo "refused: $out"
[ ! -S "$WORK/bad.sock" ] || die "a server started with a bad --sched"
echo "PASS: queue threads under SCHED_BATCH by default, SCHED_OTHER with --sched normal"
