#!/usr/bin/env bash
# test-service-watchdog.sh: with WATCHDOG_USEC set (systemd's WatchdogSec), strata sends WATCHDOG=1 at half the
# period while its I/O queues answer, and keeps serving.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/service-lib.sh"
requires nbdinfo
notify_listen
WATCHDOG_USEC=400000   # pings every 200 ms
PORT=$(free_port)
activate -l "127.0.0.1:$PORT" --fdname=nbd -- --empty --control "$CTL"
wait_port "$PORT"
# Start strata with a first connection (the server has no export: the client is refused).
timeout 20 nbdinfo --list "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 || true
wait_notify '^READY=1'
start=$(notify_count '^WATCHDOG=1$')
sleep 2
n=$(($(notify_count '^WATCHDOG=1$') - start))
# 10 expected in 2 s; a loaded machine may delay some, none may be missed for a whole period.
[ "$n" -ge 6 ] && [ "$n" -le 14 ] || die "$n WATCHDOG=1 in 2 s at a 400 ms WatchdogSec"
kill -0 "$STRATA_PID" || die "strata exited"
stop_strata
wait_notify '^STOPPING=1'
