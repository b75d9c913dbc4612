#!/bin/bash
# `sync --move` of a disk no one writes: the copy converges in a round that holds no writes, and the move must still
# end with the round under held writes that puts up the fence (a move that said "moved" while host A kept accepting
# writes lost every write A took after it). Then A fails writes and reads of the device with ESHUTDOWN, says it
# moved, B holds the bytes, and A stops cleanly on SIGTERM (exit 0: the moved device's local copy is flushed below
# the fence, not reported as an error).
source "$(dirname "$0")/functions.sh"
requires jq qemu-io cmp nbdcopy
M=1048576
SIZE=$((16 * M))
start_replica_strata $SIZE

ctl dirty start vm move --full >/dev/null
# The whole 16 MiB is dirty: the first round copies it with writes flowing (more than 1 MiB left, no rate known
# yet) and leaves nothing dirty, as nothing writes.
out=$(ctl sync vm --map move --to "$B_URI" --move --json)
[ "$(jq .moved <<<"$out")" = true ] || die "the sync did not move the device: $out"
[ "$(jq .converged <<<"$out")" = true ] || die "the move did not converge: $out"
[ "$(ctl status vm --json | jq '.[0].moved')" = true ] || die "A does not say the device moved after: $out"
qio_fails "$(uri vm)" "write -P 0x5a 0 65536"
cmp "$WORK/a.img" <(nbdcopy "$B_URI" -) ||
  die "B does not hold A's bytes after the move"
stop_strata
echo "PASS: an idle sync --move fences A: $(jq -c '{rounds, held_us, moved}' <<<"$out")"
