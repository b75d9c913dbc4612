#!/bin/bash
# durability: SIGTERM with a client still connected and unflushed writes makes the server exit 0 promptly; the data is in the file and a restarted server serves it.
. "$(dirname "$0")/functions.sh"

F=$WORK/d.img
truncate -s 4M "$F"
echo "0 8192 file $F 0" >"$WORK/t.conf"
start_strata --table "$WORK/t.conf" --export d

# A client writes without flushing, then stays connected (idle) until killed.
$PYTHON -c "
import nbd, time
h = nbd.NBD(); h.connect_uri('$(uri d)')
h.pwrite(b'\x7e' * 100000, 333333)
h.pwrite(b'\x7f' * 4096, 4190208)
print('written', flush=True)
time.sleep(60)
" >"$WORK/client.out" 2>&1 &
client=$!
for i in $(seq 1 100); do grep -q written "$WORK/client.out" && break; sleep 0.1; done
grep -q written "$WORK/client.out" || die "client did not write: $(cat "$WORK/client.out")"
[ "$(ctl server --json | jq .connections)" -ge 1 ] || die "the client is not connected"
[ "$(ctl status d --json | jq '.[0].segments[0].info.flushes')" = 0 ] || die "a flush happened before SIGTERM"

start=$(date +%s%N)
stop_strata    # SIGTERM; must exit 0 within 10 s
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "exited ${ms} ms after SIGTERM"
kill "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true
[ ! -e "$CTL" ] || die "the control socket was left behind"
grep -q "flush 'd' at exit" "$STRATA_LOG" && die "flush at exit failed: $(cat "$STRATA_LOG")"

expect_bytes "$F" 333333 100000 0x7e
expect_bytes "$F" 4190208 4096 0x7f
start_strata --table "$WORK/t.conf" --export d
qio "$(uri d)" "read -P 0x7e 333333 100000" "read -P 0x7f 4190208 4096" "read -P 0 0 333333"
stop_strata
echo PASS
