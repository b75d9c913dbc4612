#!/bin/bash
# default listener: `strata serve --file X --control C` with no --unix/--tcp listens on TCP 127.0.0.1:10809 only, and NBD clients work there.
. "$(dirname "$0")/functions.sh"
requires nbdinfo qemu-io jq

truncate -s 4M "$WORK/x.img"
# tcp_listeners [PID]: "ADDR:PORT" (hex, as in /proc/net/tcp*) of listening TCP
# sockets, of one process when PID is given.
tcp_listeners() {
  local inodes=""
  if [ -n "${1:-}" ]; then
    inodes=$(find /proc/"$1"/fd -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | paste -sd' ')
    [ -n "$inodes" ] || return 0
  fi
  awk -v want=" $inodes " 'FNR > 1 && $4 == "0A" && (want == "  " || index(want, " " $10 " ")) { print $2 }' \
    /proc/net/tcp /proc/net/tcp6
}
# 127.0.0.1:10809 is 0100007F:2A39 in /proc/net/tcp.
if tcp_listeners | grep -q ':2A39$'; then die "port 10809 is already in use"; fi

# Not start_strata: that always adds --unix.
"$STRATA" serve --file "$WORK/x.img" --control "$CTL" >>"$STRATA_LOG" 2>&1 &
STRATA_PID=$!
for i in $(seq 1 200); do
  running "$STRATA_PID" || die "strata exited during start-up: $(cat "$STRATA_LOG")"
  ctl list >/dev/null 2>&1 && break
  sleep 0.05
done
ctl list >/dev/null || die "strata did not start"

lst=$(tcp_listeners "$STRATA_PID")
[ "$lst" = "0100007F:2A39" ] || die "expected one TCP listener on 127.0.0.1:10809 (0100007F:2A39), got: $lst"
# No Unix NBD socket: the only listening Unix socket of the process is the control socket.
inodes=$(find /proc/"$STRATA_PID"/fd -lname 'socket:*' -printf '%l\n' | tr -dc '0-9\n' | paste -sd' ')
mine=$(awk -v want=" $inodes " 'FNR > 1 && $4 == "00010000" && index(want, " " $7 " ") { printf " %s", $8 }' /proc/net/unix)
[ "$mine" = " $CTL" ] || die "Unix listeners of the server: '$mine', want only the control socket"
[ "$(ctl server --json | jq -r '.uris[]')" = "nbd://127.0.0.1:10809" ] || die "server uris: $(ctl server --json)"
grep -q "at nbd://127.0.0.1:10809" "$STRATA_LOG" || die "start-up line does not give the URI: $(cat "$STRATA_LOG")"

info=$(nbdinfo --json nbd://127.0.0.1:10809)
[ "$(jq '.exports[0]."export-size"' <<<"$info")" = 4194304 ] || die "nbdinfo over TCP: $info"
qio nbd://127.0.0.1:10809 "write -P 0x10 4096 8192" "read -P 0x10 4096 8192"
expect_bytes "$WORK/x.img" 4096 8192 0x10

stop_strata
tcp_listeners | grep -q ':2A39$' && die "port 10809 still listening after SIGTERM"
echo PASS
