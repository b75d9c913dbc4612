#!/bin/bash
# A write smaller than a chunk during an online merge, over NBD, to a chunk the top holds newer data, a TRIM or WRITE_ZEROES for (older 'A' below it): the rest of the chunk keeps the top's bytes, after the merge and after a restart. Variants: data/trim/zero in the top with 120 B of data written during the merge, and data in the top with an unaligned 120 B WRITE_ZEROES during the merge (cow_partial_merge.py).
source "$(dirname "$0")/functions.sh"
requires truncate
S="$STRATA"
for v in data trim zero zero-tail; do
  rm -f "$WORK"/*.layer* "$WORK/base.img"
  truncate -s 256M "$WORK/base.img"
  "$S" layer create "$WORK/l1.layer" --size 256M >/dev/null
  "$S" layer create "$WORK/top.layer" --parent "$WORK/l1.layer" >/dev/null
  cow_table "$WORK/t.conf" $((256 << 20)) "$WORK/base.img" "$WORK/top.layer"
  start_strata --table "$WORK/t.conf"
  $PYTHON "$STRATA_SRC/tests/integration/cow_partial_merge.py" write "$S" "$CTL" "$SOCK" "$STRATA_LOG" "$v" nbd ||
    die "variant $v: wrong data after the merge"
  stop_strata
  start_strata --table "$WORK/t.conf"
  $PYTHON "$STRATA_SRC/tests/integration/cow_partial_merge.py" check "$SOCK" "$v" ||
    die "variant $v: wrong data after a restart"
  stop_strata
  "$S" layer check "$WORK/top.layer" >/dev/null || die "variant $v: layer check after the merge"
done
echo PASS
