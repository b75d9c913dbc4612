#!/bin/bash
# Strings a control client supplies (device names, paths, map names, table text, methods, job ids) with a newline, escape sequences, NUL (JSON \u0000), C1 controls or invalid UTF-8 reach error replies, the CLI's messages and the server's log only escaped (\n, \xNN): no raw control byte, no forged line; the server keeps serving.
source "$(dirname "$0")/functions.sh"

cat >"$WORK/table" <<CONF
[disk]
0 2048 pattern
CONF
start_strata --table "$WORK/table" -v
ctl dirty start disk m >/dev/null

# Raw requests on the control socket: each answered {"ok": false} with an
# error holding no control byte, and the escaped form of what was sent.
CTL=$CTL WORK=$WORK $PYTHON - <<'PYEOF'
import json, os, socket

def request(line: bytes):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(os.environ["CTL"])
    s.sendall(line + b"\n")
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed without a reply to {line!r}"
        buf += chunk
    s.close()
    reply, _, rest = buf.partition(b"\n")
    assert rest == b"", f"more than one line in the reply to {line!r}: {buf!r}"
    return reply

def check(req, expect_escaped=None):
    line = json.dumps(req).encode() if not isinstance(req, bytes) else req
    raw = request(line)
    # The line itself: printable ASCII or valid UTF-8, no control byte.
    text = raw.decode("utf-8")  # raises on invalid UTF-8
    r = json.loads(text)
    assert r["ok"] is False, f"{line!r} succeeded: {r}"
    err = r["error"]
    bad = [c for c in err if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f]
    assert not bad, f"raw control characters {bad!r} in the error for {line!r}: {err!r}"
    if expect_escaped is not None:
        assert expect_escaped in err, f"{expect_escaped!r} not in the error for {line!r}: {err!r}"
    print(f"ok: {line[:70]!r} -> {err[:100]!r}")

forge = "x\nstrata: error: forged"
work = os.environ["WORK"]
check({"method": "device_status", "params": {"name": forge}}, r"x\nstrata: error: forged")
check({"method": "device_table", "params": {"name": "\x1b[2J\x1b]0;pwned\x07"}}, r"\x1b[2J\x1b]0;pwned\x07")
check({"method": "device_remove", "params": {"name": "a\u0000b"}}, r"a\x00b")
check({"method": "device_suspend", "params": {"name": "c1\u009bcsi"}}, r"c1\xc2\x9bcsi")
check({"method": "device_create", "params": {"name": "bad\nname", "table": "0 8 zero\n"}})
check({"method": "device_create", "params": {"name": "t1", "table": "0 8 ze\u001b[31mro\n"}}, r"ze\x1b[31mro")
check({"method": "device_create", "params": {"name": "t2", "table": "0 8 file /nonexistent/a\nb\u0000\n"}})
check({"method": "device_create", "params": {"name": "t3", "table": "0 8 file " + work + "/no\u001bsuch.img 0\n"}},
      r"no\x1bsuch.img")
check({"method": "x\u001b]0;title\u0007_list"}, r"x\x1b]0;title\x07_list")
check({"method": "dirty_status", "params": {"device": "disk\r\nforged"}}, r"disk\x0d\nforged")
check({"method": "dirty_clear", "params": {"device": "disk", "name": "m\n\u001b[1mforged"}}, r"m\n\x1b[1mforged")
check({"method": "device_sync", "params": {"device": "disk", "map": "m\u0000x", "to": work + "/r.img"}}, r"m\x00x")
check({"method": "device_flatten", "params": {"device": "disk", "to": "/outside\n\u001b[31m.img"}},
      r"/outside\n\x1b[31m.img")
check({"method": "device_merge", "params": {"device": "di\u0007sk"}}, r"di\x07sk")
check({"method": "job_wait", "params": {"id": "1\n2"}})
check({"method": "job_cancel", "params": {"id": 99999}})
# Raw bytes: invalid UTF-8 and control bytes outside JSON strings.
check(b'{"method":"device_status","params":{"name":"\xff\xfe\xc3"}}')
check(b'{"method":"device_status","params":{"name":"\x1b[31m"}}')
check(b'\x1b[2J\xff')
PYEOF

# The CLI prints the same escaped errors.
for name in $'x\nstrata: error: forged' $'\e[31mred' $'inv\xff\xfe'; do
  rc=0
  ctl status "$name" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [ $rc -ne 0 ] || die "status of a hostile name succeeded"
  [ "$(wc -l <"$WORK/err")" -eq 1 ] || die "the CLI's error is not one line: $(cat -A "$WORK/err")"
  if LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$WORK/err"; then die "raw control byte in the CLI's error: $(cat -A "$WORK/err")"; fi
  iconv -f UTF-8 -t UTF-8 "$WORK/err" >/dev/null || die "the CLI's error is not valid UTF-8: $(cat -A "$WORK/err")"
  grep -qE "no device named|is not valid UTF-8" "$WORK/err" || die "unclear error: $(cat "$WORK/err")"
done
ctl status $'\e[31mred' 2>"$WORK/err" >/dev/null && die "status of a hostile name succeeded"
grep -qxF "strata: no device named '\\x1b[31mred'" "$WORK/err" || die "the CLI does not show the escaped name: $(cat -A "$WORK/err")"

# The server still serves: a device made, listed, read.
$PYTHON -c "
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect('$CTL')
s.sendall(json.dumps({'method': 'device_create', 'params': {'name': 'ok', 'table': '0 8 zero'}}).encode() + b'\\n')
r = json.loads(s.makefile().readline()); assert r['ok'], r
"
ctl status ok >/dev/null || die "the server no longer serves control requests"
nbdsh_py "
h = nbd.NBD()
h.connect_uri('$(uri disk)')
assert h.pread(8, 4096) == (4096).to_bytes(8, 'big'), 'wrong data after the hostile requests'
"

# The log: valid UTF-8, no raw control byte but the newlines that end lines,
# no forged line; the hostile strings that reached it escaped.
$PYTHON - "$STRATA_LOG" <<'PYEOF'
import re, sys
data = open(sys.argv[1], "rb").read()
text = data.decode("utf-8")
bad = sorted({c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f})
assert not bad, f"raw control characters {bad!r} in the server's log"
lines = text.splitlines()
for line in lines:  # each line one log line (or serve's own start-up lines): nothing forged a line of its own
    if line.startswith("strata: ") and not re.search("forged|pwned|red", line):
        continue
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z strata: (debug|info|warn|error): ", line), f"not a log line: {line!r}"
assert any("\\x1b" in l for l in lines), "no hostile string reached the log (escaped): the check above proves nothing"
print(f"log: {len(text.splitlines())} lines, no raw control byte")
PYEOF
stop_strata
echo PASS
