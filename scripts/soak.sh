#!/bin/bash
# soak.sh: run the randomized online-operations test (tests/stress/online_ops.py) with
# random seeds until MINUTES elapse. Prints each seed as it starts and its summary; stops
# at the first failure with the seed and the command that reruns it; at the end (or on a
# failure) prints the totals: seeds run, requests, bytes, operations of each kind.
#
#   bash scripts/soak.sh [MINUTES] [online_ops.py options...]    (MINUTES: default $MINUTES, else 10)
#
# Environment: STRATA (the binary; default build/strata), RUN_SECONDS (operations per
# seed, default 30; each seed also runs its kill -9 phase).
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then MINUTES=$1; shift; fi
MINUTES=${MINUTES:-10}
STRATA=${STRATA:-$SRC/build/strata}
RUN_SECONDS=${RUN_SECONDS:-30}
PY=/usr/bin/python3   # Debian's python3: it has the libnbd bindings
OPS=$SRC/tests/stress/online_ops.py

[ -x "$STRATA" ] || { echo "soak: no strata binary at $STRATA (build first)" >&2; exit 2; }
"$PY" -c 'import nbd' 2>/dev/null || { echo "soak: $PY has no libnbd bindings (scripts/install-deps.sh)" >&2; exit 2; }
"$PY" "$OPS" --selftest >/dev/null || { echo "soak: online_ops.py --selftest failed" >&2; exit 1; }

LOGDIR=$(mktemp -d /tmp/strata-soak.XXXXXX)
SUMS=$LOGDIR/summaries
: >"$SUMS"
end=$(($(date +%s) + $(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')))

totals() {
  # Sum every numeric key=value field of the summary lines (seed, result excepted).
  awk '{ n++; for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "seed" || kv[1] == "result") continue;
           if (!(kv[1] in sum)) order[++k] = kv[1]; sum[kv[1]] += kv[2] } }
       END { printf "soak: %d seed(s) run\n", n;
             for (i = 1; i <= k; i++) { key = order[i]; printf "  %-14s %.0f\n", key, sum[key] } }' "$SUMS"
}

rc=0
while :; do
  now=$(date +%s)
  left=$((end - now))
  [ $left -gt 0 ] || break
  secs=$((left < RUN_SECONDS ? left : RUN_SECONDS))
  [ $secs -ge 5 ] || secs=5
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  seed=$((seed % 2147483647 + 1))
  echo "soak: seed $seed ($secs s)"
  log=$LOGDIR/seed-$seed.log
  "$PY" "$OPS" --seed "$seed" --seconds "$secs" --strata "$STRATA" "$@" >"$log" 2>&1
  rc=$?
  line=$(grep '^online_ops: seed=.* result=' "$log" | tail -1)
  [ -n "$line" ] && { echo "$line" >>"$SUMS"; echo "  ${line#online_ops: }"; }
  if [ $rc -ne 0 ]; then
    echo "soak: FAILED at seed $seed (status $rc); its output:" >&2
    cat "$log" >&2
    echo "soak: rerun with: $(grep '^rerun: ' "$log" | tail -1 | sed 's/^rerun: //')" >&2
    echo "soak: logs in $LOGDIR" >&2
    break
  fi
  rm -f "$log"
done
totals
[ $rc -eq 0 ] && rm -rf "$LOGDIR"
exit $rc
