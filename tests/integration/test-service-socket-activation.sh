#!/usr/bin/env bash
# test-service-socket-activation.sh: under systemd-socket-activate, strata serves NBD on the TCP socket it is
# passed (named "nbd") and its control socket on the Unix socket named "control", binds no listener of its own
# (no default 127.0.0.1:10809), says READY=1 with a STATUS= once serving, and STOPPING=1 on SIGTERM, then exits 0.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/service-lib.sh"
requires nbdinfo qemu-io ss
head -c 4M /dev/urandom >"$WORK/disk.img"
cat >"$WORK/t.conf" <<EOT
[disk]
0 8192 file $WORK/disk.img 0
EOT
notify_listen
PORT=$(free_port)
activate -l "127.0.0.1:$PORT" -l "$CTL" --fdname=nbd:control -- --table "$WORK/t.conf"
wait_port "$PORT"
[ "$(notify_count .)" = 0 ] || die "strata started before the first connection"

# systemd-socket-activate starts strata on the first connection, as systemd does: this client is that one.
out=$(timeout 20 nbdinfo "nbd://127.0.0.1:$PORT/disk") || die "nbdinfo through the passed socket failed"
grep -q 'export-size: 4194304' <<<"$out" || die "nbdinfo: $out"
wait_notify '^READY=1'
grep -qE '^READY=1\|STATUS=1 device, [0-9]+ connections?$' "$NOTIFY_LOG" || die "READY without STATUS: $(cat "$NOTIFY_LOG")"

# Data through the passed socket, checked against the file.
qio "nbd://127.0.0.1:$PORT/disk" "write -P 0xa5 65536 131072" "flush"
expect_bytes "$WORK/disk.img" 65536 131072 0xa5
# The control socket is the one passed, and strata listens on nothing else.
[ "$(ctl list --json | jq -r '.[0].name')" = disk ] || die "control socket: $(ctl list --json)"
ctl server --json | jq -e --arg u "nbd://127.0.0.1:$PORT" '.uris == [$u]' >/dev/null ||
  die "listeners: $(ctl server --json | jq -c .uris)"
if ss -ltnp | grep "pid=$STRATA_PID," | grep -v ":$PORT " >&2; then die "strata bound a TCP listener of its own"; fi
[ "$(notify_count STOPPING)" = 0 ] || die "STOPPING before SIGTERM"

stop_strata
wait_notify '^STOPPING=1'
# Order: READY before STOPPING, and nothing said READY after STOPPING.
[ "$(grep -nE '^(READY|STOPPING)' "$NOTIFY_LOG" | tail -1 | cut -d: -f2-)" = "STOPPING=1" ] ||
  die "messages out of order: $(cat "$NOTIFY_LOG")"
# The passed control socket file is the service manager's: left in place.
[ -S "$CTL" ] || die "strata removed the control socket it was passed"
