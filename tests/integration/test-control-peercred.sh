#!/bin/bash
# The control socket checks its peer's uid (SO_PEERCRED), not only the file mode: with the socket made 0666, a client running as uid 65534 (neither root nor the server's owner) is refused and the server logs "refused a client with uid 65534", while root still works; a server run as uid 65534 accepts its owner and root and refuses uid 65533.
source "$(dirname "$0")/functions.sh"
requires setpriv jq

[ "$(id -u)" = 0 ] || die "this test switches uids with setpriv: run it as root"
# Other uids must reach the binary and the sockets: a copy of the binary in
# $WORK, and $WORK traversable.
chmod 755 "$WORK"
cp "$STRATA" "$WORK/strata"
chmod 755 "$WORK/strata"
BIN=$WORK/strata
as_uid() { local u=$1; shift; setpriv --reuid="$u" --regid="$u" --clear-groups "$@"; }
as_uid 65534 test -x "$BIN" || die "uid 65534 cannot execute $BIN"

truncate -s 1M "$WORK/disk.img"
start_strata --file "$WORK/disk.img"
ctl list >/dev/null || die "root cannot use the control socket"

# Without the chmod the file mode already keeps uid 65534 out (no log line).
if out=$(as_uid 65534 "$BIN" list --control "$CTL" 2>&1); then die "uid 65534 used a 0600 control socket: $out"; fi
if grep -q "refused a client" "$STRATA_LOG"; then die "a connect the file mode forbids reached the server"; fi

chmod 0666 "$CTL"
as_uid 65534 test -w "$CTL" || die "the socket is still not writable for uid 65534 after chmod 0666"
if out=$(timeout 10 setpriv --reuid=65534 --regid=65534 --clear-groups "$BIN" list --control "$CTL" 2>&1); then
  die "uid 65534 was served by the control socket: $out"
fi
echo "uid 65534 refused: $out"
if grep -qE '"name"|^\[' <<<"$out"; then die "uid 65534 got device data: $out"; fi
for _ in $(seq 1 100); do
  grep -q "refused a client with uid 65534" "$STRATA_LOG" && break
  sleep 0.05
done
grep -q "refused a client with uid 65534" "$STRATA_LOG" || die "no 'refused a client with uid 65534' log line"
# Every method is refused, not just list.
if out=$(as_uid 65534 "$BIN" status --json --control "$CTL" 2>&1); then die "uid 65534 got status: $out"; fi
[ "$(grep -c "refused a client with uid 65534" "$STRATA_LOG")" -ge 2 ] || die "second refusal not logged"

# Root is still served, the server is alive.
[ "$(ctl list --json | jq length)" = 1 ] || die "root is no longer served after the refusals"
kill -0 "$STRATA_PID" || die "server died"
stop_strata

# A server owned by uid 65534: its owner and root are served, uid 65533 is not.
mkdir -m 0755 "$WORK/own"
chown 65534:65534 "$WORK/own" "$WORK/disk.img"
OSOCK=$WORK/own/nbd.sock OCTL=$WORK/own/control.sock
# Its dirty maps live in a directory it owns.
mkdir -p "$WORK/state-65534" && chown 65534:65534 "$WORK/state-65534"
setpriv --reuid=65534 --regid=65534 --clear-groups "$BIN" serve --file "$WORK/disk.img" --unix "$OSOCK" --control "$OCTL" --state-dir "$WORK/state-65534" >>"$STRATA_LOG" 2>&1 &
STRATA_PID=$!
for _ in $(seq 1 200); do
  [ -S "$OCTL" ] && as_uid 65534 "$BIN" list --control "$OCTL" >/dev/null 2>&1 && break
  kill -0 "$STRATA_PID" 2>/dev/null || die "the server run as uid 65534 exited"
  sleep 0.05
done
[ "$(as_uid 65534 "$BIN" list --json --control "$OCTL" | jq length)" = 1 ] || die "the owner (uid 65534) is not served"
[ "$(stat -c %u "$OCTL")" = 65534 ] || die "control socket not owned by 65534"
[ "$("$BIN" list --json --control "$OCTL" | jq length)" = 1 ] || die "root is not served by a server owned by 65534"
chmod 0666 "$OCTL"
if out=$(as_uid 65533 "$BIN" list --control "$OCTL" 2>&1); then die "uid 65533 was served by a server owned by 65534: $out"; fi
for _ in $(seq 1 100); do
  grep -q "refused a client with uid 65533" "$STRATA_LOG" && break
  sleep 0.05
done
grep -q "refused a client with uid 65533" "$STRATA_LOG" || die "no 'refused a client with uid 65533' log line"
if grep -q "refused a client with uid 0\b" "$STRATA_LOG"; then die "root was refused"; fi
if grep -q "refused a client with uid 65534" <(grep -A1000 "$OCTL" "$STRATA_LOG"); then die "the owner was refused"; fi
stop_strata
if grep -E "CHECK failed|terminate called|Sanitizer|runtime error:" "$STRATA_LOG"; then die "server log shows a crash"; fi
echo "PASS: $(basename "$0")"
