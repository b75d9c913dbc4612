#!/bin/bash
# control socket: created mode 0600 whatever the umask, owned by the server's user, removed on SIGTERM; a second server on the same control socket is refused while the first runs.
. "$(dirname "$0")/functions.sh"

truncate -s 1M "$WORK/x.img" "$WORK/y.img"
umask 0000   # the server must not rely on the caller's umask
start_strata --file "$WORK/x.img"
umask 0022
[ -S "$CTL" ] || die "control socket $CTL is not a socket"
[ "$(stat -c %a "$CTL")" = 600 ] || die "control socket mode is $(stat -c %a "$CTL"), want 600"
[ "$(stat -c %u "$CTL")" = "$(id -u)" ] || die "control socket owner is $(stat -c %u "$CTL")"

# A second server may not steal the live control socket (another image and
# state dir, so that their locks are not what refuses it).
rc=0
out=$(timeout 10 "$STRATA" serve --file "$WORK/y.img" --unix "$WORK/other.sock" --control "$CTL" \
  --state-dir "$WORK/state2" 2>&1) || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || die "second server on the same control socket: rc $rc"
grep -q "another server is running" <<<"$out" || die "second server: unclear error: $out"
ctl list >/dev/null || die "the first server lost its control socket"

stop_strata
[ ! -e "$CTL" ] || die "control socket left behind after SIGTERM"

# A stale socket (server killed) is replaced on the next start, again 0600.
start_strata --file "$WORK/x.img"
kill9_strata
[ -S "$CTL" ] || die "expected a stale socket after SIGKILL"
start_strata --file "$WORK/x.img"
[ "$(stat -c %a "$CTL")" = 600 ] || die "control socket mode after restart is $(stat -c %a "$CTL")"
ctl list >/dev/null || die "restarted server does not answer"
stop_strata
echo PASS
