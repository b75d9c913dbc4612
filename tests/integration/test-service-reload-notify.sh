#!/usr/bin/env bash
# test-service-reload-notify.sh: SIGHUP under a service manager says RELOADING=1 (with MONOTONIC_USEC), applies
# the table and then says READY=1; the server goes on serving (the NBD Unix socket it was passed, unnamed, is an
# NBD listener). A broken table on SIGHUP changes nothing and still ends with READY=1. No WatchdogSec: no WATCHDOG=1.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/service-lib.sh"
requires nbdinfo jq
head -c 1M /dev/urandom >"$WORK/a.img"
head -c 1M /dev/urandom >"$WORK/b.img"
cat >"$WORK/t.conf" <<EOT
[a]
0 2048 file $WORK/a.img 0
EOT
notify_listen
activate -l "$SOCK" -- --table "$WORK/t.conf" --control "$CTL"
for i in $(seq 1 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
timeout 20 nbdinfo --size "$(uri a)" | grep -qx 1048576 || die "a through the passed Unix socket"
wait_notify '^READY=1'

cat >>"$WORK/t.conf" <<EOT
[b]
0 2048 file $WORK/b.img 0
EOT
kill -HUP "$STRATA_PID"
wait_notify '^RELOADING=1\|MONOTONIC_USEC=[0-9]+$'
wait_notify '^READY=1' 2
# RELOADING came between the two READY.
[ "$(grep -E '^(READY|RELOADING)' "$NOTIFY_LOG" | cut -d'|' -f1 | tr '\n' ' ')" = "READY=1 RELOADING=1 READY=1 " ] ||
  die "order: $(cat "$NOTIFY_LOG")"
grep -q '^READY=1|STATUS=2 devices, ' "$NOTIFY_LOG" || die "STATUS after reload: $(cat "$NOTIFY_LOG")"
kill -0 "$STRATA_PID" || die "SIGHUP killed the server"
[ "$(ctl list --json | jq -c '[.[].name]')" = '["a","b"]' ] || die "after SIGHUP: $(ctl list --json)"
cmp <(nbdcopy "$(uri b)" - ) "$WORK/b.img" || die "b does not read as b.img"

# A broken table: nothing changes, READY=1 all the same.
echo "0 2048 nosuchtarget x" >>"$WORK/t.conf"
kill -HUP "$STRATA_PID"
wait_notify '^RELOADING=1' 2
wait_notify '^READY=1' 3
[ "$(ctl list --json | jq -c '[.[].name]')" = '["a","b"]' ] || die "a broken table changed: $(ctl list --json)"
timeout 20 nbdinfo --size "$(uri a)" | grep -qx 1048576 || die "a after a failed reload"
[ "$(notify_count WATCHDOG)" = 0 ] || die "WATCHDOG=1 without WATCHDOG_USEC"
stop_strata
wait_notify '^STOPPING=1'
