#!/bin/bash
# strata server (text and --json): listener URIs, exports with the read-only state NBD clients see, and connection counters that follow real clients.
. "$(dirname "$0")/functions.sh"
requires jq nbdinfo

F=$WORK/x.img
truncate -s 1M "$F"
cat >"$WORK/t.conf" <<CONF
[disk]
0 2048 file $F 0
[ro ro]
0 8 zero
[pat]
0 8 pattern
CONF
start_strata --table "$WORK/t.conf" --unix "$WORK/second.sock"

j=$(ctl server --json)
echo "$j"
jq -e --arg a "nbd+unix:///?socket=$SOCK" --arg b "nbd+unix:///?socket=$WORK/second.sock" \
  '.uris | index($a) != null and index($b) != null' <<<"$j" >/dev/null || die "uris: $j"
[ "$(jq -c '[.exports[].name]' <<<"$j")" = '["disk","ro","pat"]' ] || die "exports: $j"
# The read-only state agrees with what nbdinfo sees for each export.
for e in disk ro pat; do
  want=$(nbdinfo --json "$(uri "$e")" | jq '.exports[0].is_read_only')
  got=$(jq --arg e "$e" '.exports[] | select(.name == $e) | .read_only' <<<"$j")
  [ "$got" = "$want" ] || die "server --json says read_only=$got for '$e', NBD clients see is_read_only=$want"
done
# strata serve's start-up lines agree.
grep -q "export 'pat' (4096 bytes, read-only)" "$STRATA_LOG" || die "start-up line for 'pat': $(cat "$STRATA_LOG")"
grep -q "export 'disk' (1048576 bytes) at" "$STRATA_LOG" || die "start-up line for 'disk': $(cat "$STRATA_LOG")"
[ "$(jq .connections <<<"$j")" = 0 ] || die "connections before any client: $j"
[ "$(jq '.uptime_seconds >= 0' <<<"$j")" = true ] || die "uptime: $j"

# Counters follow clients (the nbdinfo calls above made 3 connections).
total0=$(ctl server --json | jq .connections_total)
[ "$total0" -ge 3 ] || die "connections_total after 3 clients: $total0"
$PYTHON -c "
import nbd, time
h = nbd.NBD(); h.connect_uri('$(uri disk)')
print('up', flush=True)
time.sleep(30)
" >"$WORK/client.out" 2>&1 &
client=$!
for i in $(seq 1 100); do grep -q up "$WORK/client.out" && break; sleep 0.1; done
j=$(ctl server --json)
[ "$(jq .connections <<<"$j")" = 1 ] || die "connections with one client connected: $j"
[ "$(jq .connections_total <<<"$j")" = $((total0 + 1)) ] || die "connections_total did not count the client: $j"
kill "$client"
wait "$client" 2>/dev/null || true
for i in $(seq 1 50); do [ "$(ctl server --json | jq .connections)" = 0 ] && break; sleep 0.1; done
[ "$(ctl server --json | jq .connections)" = 0 ] || die "connection still counted after the client went away"

# The text form shows the same facts.
t=$(ctl server)
grep -qF "$SOCK" <<<"$t" || die "strata server (text) lacks the socket: $t"
grep -q '"disk"' <<<"$t" || die "strata server (text) lacks the exports: $t"

# server_methods: every method with how the server runs it and one line of
# help; the same names as an unknown method's error.
CTL=$CTL $PYTHON - <<'PYEOF' || die "server_methods"
import json, os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(os.environ["CTL"])
s.sendall(b'{"method": "server_methods"}\n{"method": "nosuch"}\n')
buf = b""
while buf.count(b"\n") < 2:
    chunk = s.recv(65536)
    assert chunk, f"connection closed: {buf!r}"
    buf += chunk
a, b = [json.loads(line) for line in buf.decode().splitlines()]
assert a["ok"], a
names = [m["name"] for m in a["result"]]
kinds = {m["name"]: m["kind"] for m in a["result"]}
want = {"device_list": "read", "server_methods": "read", "device_create": "change",
        "device_snapshot": "change", "export_fuse_list": "change", "device_merge": "job", "job_wait": "wait"}
assert all(kinds.get(k) == v for k, v in want.items()), kinds
assert all(m["help"] and "\n" not in m["help"] for m in a["result"]), a
assert b["error"] == "unknown method 'nosuch' (known: %s)" % ", ".join(names), b
PYEOF
stop_strata
echo PASS
