#!/bin/bash
# The same partial-chunk write during an online merge as test-cow-merge-partial-nbd.sh, made through the FUSE export (an O_DIRECT pwrite of 120 bytes on the device file): the rest of the chunk keeps the top's data, TRIM or zeros, after the merge and after a restart.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fuse-lib.sh"
requires truncate
S="$STRATA"
for v in data trim zero; do
  rm -f "$WORK"/*.layer* "$WORK/base.img"
  truncate -s 256M "$WORK/base.img"
  "$S" layer create "$WORK/l1.layer" --size 256M >/dev/null
  "$S" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" >/dev/null
  cow_table "$WORK/t.conf" $((256 << 20)) "$WORK/base.img" "$WORK/top.layer"
  start_strata --table "$WORK/t.conf" --fuse "$MNT"
  for _ in $(seq 100); do [ -e "$MNT/d" ] && break; sleep 0.05; done
  [ -e "$MNT/d" ] || die "no FUSE device file $MNT/d"
  $PYTHON "$STRATA_SRC/tests/integration/cow_partial_merge.py" write "$S" "$CTL" "$SOCK" "$STRATA_LOG" "$v" fuse "$MNT/d" ||
    die "variant $v: wrong data after the merge"
  stop_strata
  start_strata --table "$WORK/t.conf"
  $PYTHON "$STRATA_SRC/tests/integration/cow_partial_merge.py" check "$SOCK" "$v" ||
    die "variant $v: wrong data after a restart"
  stop_strata
done
echo PASS
