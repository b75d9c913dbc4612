#!/bin/bash
# SIGHUP re-reads the --table file and applies the difference: a device added is created, a device whose lines
# changed is reloaded (its NBD client stays connected and reads the new bytes), a device gone is removed, an
# unchanged one is left alone. A broken file changes nothing.
source "$(dirname "$0")/functions.sh"
requires jq
S="$STRATA"
for f in a b b2 d; do head -c 1048576 /dev/urandom >"$WORK/$f.img"; done
cat >"$WORK/t.conf" <<EOT
[a]
0 2048 file $WORK/a.img 0
[b]
0 2048 file $WORK/b.img 0
[c]
0 1024 linear a 1024
EOT
start_strata --table "$WORK/t.conf"
names() { ctl list --json | jq -c '[.[].name] | sort'; }
[ "$(names)" = '["a","b","c"]' ] || die "start: $(names)"
# hup_and_wait PATTERN: send SIGHUP and wait for the log line it ends with.
hup_and_wait() {
  local n i
  n=$(grep -c "SIGHUP" "$STRATA_LOG" || true)
  kill -HUP "$STRATA_PID"
  for i in $(seq 1 100); do
    [ "$(grep -c "SIGHUP" "$STRATA_LOG" || true)" -gt "$n" ] && break
    sleep 0.05
  done
  tail -1 "$STRATA_LOG" | grep -q "$1" || die "after SIGHUP: $(tail -3 "$STRATA_LOG")"
}

# A client on b, reading through the change.
$PYTHON - "$(uri b)" "$WORK/b.img" "$WORK/b2.img" "$WORK/go" "$WORK/b.out" <<'PY' &
import nbd, os, sys, time
uri, old, new, go, out = sys.argv[1:6]
h = nbd.NBD(); h.connect_uri(uri)
assert h.pread(1048576, 0) == open(old, "rb").read()
open(go + ".ready", "w").close()
while not os.path.exists(go): time.sleep(0.01)
assert h.pread(1048576, 0) == open(new, "rb").read(), "the client does not read the reloaded table"
open(out, "w").write("ok\n")
PY
P=$!
for i in $(seq 1 100); do [ -e "$WORK/go.ready" ] && break; sleep 0.05; done

cat >"$WORK/t.conf" <<EOT
[a]
0 2048 file $WORK/a.img 0
[b]
0 2048 file $WORK/b2.img 0
[d]
0 2048 file $WORK/d.img 0
EOT
hup_and_wait '"created":\["d"\].*"reloaded":\["b"\].*"removed":\["c"\]'
[ "$(names)" = '["a","b","d"]' ] || die "after SIGHUP: $(names)"
[ "$(ctl table b)" = "0 2048 file $WORK/b2.img 0" ] || die "b: $(ctl table b)"
touch "$WORK/go"
wait $P || die "the client of b failed"
[ "$(cat "$WORK/b.out")" = ok ] || die "client of b"

# A broken file: nothing changes.
cat >"$WORK/t.conf" <<EOT
[a]
0 2048 file $WORK/a.img 0
[e]
0 2048 file $WORK/missing.img 0
EOT
hup_and_wait "nothing changed"
[ "$(names)" = '["a","b","d"]' ] || die "a broken file changed the devices: $(names)"
[ "$(ctl table b)" = "0 2048 file $WORK/b2.img 0" ] || die "a broken file changed b: $(ctl table b)"
stop_strata
echo PASS
