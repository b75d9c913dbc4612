#!/bin/bash
# Randomized online operations on a cow device (tests/stress/online_ops.py): with many
# NBD requests in flight, snapshot, merge (top and --layer), flatten, dirty checkpoint
# and sync (--final) run again and again; every read, every full-device compare after an
# operation, the point-in-time copies (flatten, sync --final), the dirty map's coverage and
# the kill -9 crash rules must hold. A fixed set of seeds (4 KiB and 64 KiB chunks), 40-55 s
# in all on 2 cores; scripts/soak.sh runs random seeds for longer.
source "$(dirname "$0")/functions.sh"
"$PYTHON" -c 'import nbd' 2>/dev/null || die "$PYTHON has no libnbd bindings (run scripts/install-deps.sh)"
OPS="$STRATA_SRC/tests/stress/online_ops.py"
"$PYTHON" "$OPS" --selftest >"$WORK/selftest.log" 2>&1 || { cat "$WORK/selftest.log"; die "online_ops.py --selftest"; }
# seed:chunk size. Each run: 9 s of operations (one started near the end may run over),
# then the kill -9 phase (2-4 s). Every seed runs; the failed ones are listed at the end.
failed=()
for run in 1001:4096 1002:65536 1003:4096; do
  seed=${run%%:*} chunk=${run#*:}
  "$PYTHON" "$OPS" --seed "$seed" --chunk-size "$chunk" --size 32 --seconds 9 --strata "$STRATA" --tmpdir "$WORK" ||
    failed+=("$seed")
done
[ ${#failed[@]} -eq 0 ] || die "online_ops.py failed for seed(s) ${failed[*]}; rerun with the commands printed above"
echo PASS
