#!/bin/bash
# cow: a writable top is one process's: a second server on the same top fails at start with "in use by another process" (so does opening it read-only, or a layer below a served top as a writable top), and it can be served again once the first server is gone (SIGTERM or SIGKILL); two servers share a read-only lower layer, each with its own top over it, writing independently while the shared layer stays unchanged.
. "$(dirname "$0")/functions.sh"
requires jq

M=1048576
SIZE=$((4 * M))
B=$WORK/base.img
fill "$B" 0 $SIZE 0x11
"$STRATA" layer create "$WORK/shared.layer" --size $SIZE >/dev/null
conf() { # FILE TOP [ro]
  cat >"$1" <<CONF
[base]
0 $((SIZE / 512)) file $B 0 ro
[d]
0 $((SIZE / 512)) cow $2 base=base${3:+ $3}
CONF
}
# The shared layer gets data while it is a top, then two tops go over it.
conf "$WORK/shared.conf" "$WORK/shared.layer"
start_strata --table "$WORK/shared.conf"
qio "$(uri d)" "write -P 0x22 0 $M"
stop_strata
"$STRATA" layer create "$WORK/vm1.layer" --parent "$WORK/shared.layer" >/dev/null
"$STRATA" layer create "$WORK/vm2.layer" --parent "$WORK/shared.layer" >/dev/null
conf "$WORK/vm1.conf" "$WORK/vm1.layer"
conf "$WORK/vm2.conf" "$WORK/vm2.layer"
SHARED_SUM=$(sha256sum <"$WORK/shared.layer")

# A second server, on its own sockets: must fail at start. Prints its output.
second_fails() { # CONF
  local out=$WORK/second.out
  rm -f "$WORK/s2.sock" "$WORK/c2.sock"
  if timeout 20 "$STRATA" serve --unix "$WORK/s2.sock" --control "$WORK/c2.sock" --table "$1" >"$out" 2>&1; then
    die "a second server started on $1: $(cat "$out")"
  fi
  cat "$out"
}

start_strata --table "$WORK/vm1.conf"
out=$(second_fails "$WORK/vm1.conf")
grep -q "vm1.layer is in use by another process" <<<"$out" || die "second writable server: no clear message: $out"
# Read-only is refused too while another process writes it.
conf "$WORK/vm1-ro.conf" "$WORK/vm1.layer" ro
out=$(second_fails "$WORK/vm1-ro.conf")
grep -q "vm1.layer is in use by another process" <<<"$out" || die "read-only open of a written top: $out"
# The shared layer is below a served top: it cannot become a writable top.
out=$(second_fails "$WORK/shared.conf")
grep -q "shared.layer is in use by another process" <<<"$out" || die "writable open of a shared lower layer: $out"
# The first server is unaffected.
qio "$(uri d)" "write -P 0x31 $((2 * M)) 4096"

# vm2 over the same shared layer, in a second server at the same time.
S2=$WORK/vm2.sock
"$STRATA" serve --unix "$S2" --control "$WORK/vm2.ctl" --table "$WORK/vm2.conf" >>"$STRATA_LOG" 2>&1 &
SRV2=$!
for _ in $(seq 100); do "$STRATA" list --control "$WORK/vm2.ctl" >/dev/null 2>&1 && break; sleep 0.05; done
running $SRV2 || die "a second server on another top over the shared layer did not start"
U2="nbd+unix:///d?socket=$S2"
qio "$U2" "write -P 0x32 $((2 * M)) 4096" "write -P 0x42 100 200"
qio "$(uri d)" "write -P 0x41 100 200"
qio -r "$(uri d)" "read -P 0x22 0 100" "read -P 0x41 100 200" "read -P 0x22 300 $((M - 300))" "read -P 0x31 $((2 * M)) 4096"
qio -r "$U2" "read -P 0x22 0 100" "read -P 0x42 100 200" "read -P 0x22 300 $((M - 300))" "read -P 0x32 $((2 * M)) 4096"
# Both tops are busy now.
grep -q "vm2.layer is in use" <<<"$(second_fails "$WORK/vm2.conf")" || die "vm2: no lock"
kill -TERM $SRV2
wait $SRV2 || die "server 2 exited with an error"
stop_strata
[ "$(sha256sum <"$WORK/shared.layer")" = "$SHARED_SUM" ] || die "the shared layer was written"

# Gone with SIGKILL: the lock goes with the process.
start_strata --table "$WORK/vm1.conf"
kill9_strata
start_strata --table "$WORK/vm1.conf"
qio -r "$(uri d)" "read -P 0x41 100 200" "read -P 0x31 $((2 * M)) 4096"
grep -q "was not closed cleanly" "$STRATA_LOG" || die "no unclean-close warning after SIGKILL"
stop_strata
for l in shared vm1 vm2; do "$STRATA" layer check "$WORK/$l.layer" >/dev/null || die "layer check $l"; done
echo PASS
