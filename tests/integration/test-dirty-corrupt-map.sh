#!/bin/bash
# A dirty map file with a bad header (magic, checksum, truncated or empty, short bitmaps, version, granularity) makes `strata serve` fail at start-up with a message naming the file and the fault, serving nothing and leaving the file as it was; `dirty list --offline` reports the same error; a map made for a device of another size is replaced by an inconsistent one (the server serves; the old file kept aside); the intact file loads again afterwards.
. "$(dirname "$0")/functions.sh"
requires qemu-io cmp jq

IMG=$WORK/d.img
truncate -s 16M "$IMG"
ST=$WORK/state
MAP=$ST/d/m.dmap
start_strata --file "$IMG" --export d --state-dir "$ST"
ctl dirty start d m >/dev/null
ctl dirty start d good >/dev/null
qio "$(uri d)" "write 0 4096" "write 1048576 8192"
want=$(ctl dirty list d m)
stop_strata
cp "$MAP" "$WORK/pristine.dmap"

# corrupt KIND: rewrites $MAP from the pristine copy with one fault.
corrupt() {
  cp "$WORK/pristine.dmap" "$MAP"
  "$PYTHON" - "$MAP" "$1" <<'PY'
import os, struct, sys
path, kind = sys.argv[1], sys.argv[2]
b = bytearray(open(path, "rb").read())
def fnv(d):
    h = 2166136261
    for x in d:
        h = ((h ^ x) * 16777619) & 0xffffffff
    return h
def reseal():  # a valid checksum over a changed header
    struct.pack_into("<I", b, 4092, fnv(b[:4092]))
if kind == "magic":
    b[0:8] = b"XTRDMAP1"
elif kind == "checksum":
    b[200] ^= 0x40            # inside the name field: only the checksum notices
elif kind == "truncated":
    del b[100:]
elif kind == "empty":
    del b[:]
elif kind == "short-bitmaps":
    del b[4096 + 10:]
elif kind == "version":
    struct.pack_into("<I", b, 8, 2); reseal()
elif kind == "granularity":
    struct.pack_into("<Q", b, 16, 1000); reseal()
elif kind == "size":
    struct.pack_into("<Q", b, 24, 8 << 20); reseal()
else:
    raise SystemExit(f"unknown corruption {kind}")
open(path, "wb").write(b)
PY
}

serve_fails() { # KIND MESSAGE: the server refuses to start, naming the file
  rm -f "$SOCK" "$CTL"
  cp "$MAP" "$WORK/corrupt.dmap"
  local rc=0
  timeout 10 "$STRATA" serve --unix "$SOCK" --control "$CTL" --file "$IMG" --export d --state-dir "$ST" \
    >"$WORK/serve.out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || die "$1: strata serve exited 0 with a corrupt map: $(cat "$WORK/serve.out")"
  [ $rc -ne 124 ] || die "$1: strata serve started (killed by timeout) with a corrupt map"
  grep -qF "$2" "$WORK/serve.out" || die "$1: expected '$2' in: $(cat "$WORK/serve.out")"
  grep -qi "error" "$WORK/serve.out" || die "$1: the message is not an error: $(cat "$WORK/serve.out")"
  [ ! -e "$SOCK" ] && [ ! -e "$CTL" ] || die "$1: strata serve created its sockets"
  grep -q "export 'd'" "$WORK/serve.out" && die "$1: strata serve announced the export"
  cmp -s "$MAP" "$WORK/corrupt.dmap" || die "$1: the failed start modified the map file"
  return 0
}

offline_fails() { # KIND MESSAGE
  local rc=0 out
  out=$(ctl dirty list --offline --state-dir "$ST" d m 2>"$WORK/off.err") || rc=$?
  [ $rc -ne 0 ] || die "$1: dirty list --offline succeeded on a corrupt map: $out"
  [ -z "$out" ] || die "$1: dirty list --offline printed extents: $out"
  grep -qxF "strata: $2" "$WORK/off.err" || die "$1: offline: expected 'strata: $2', got: $(cat "$WORK/off.err")"
}

check() { # KIND MESSAGE
  corrupt "$1"
  serve_fails "$1" "$2"
  offline_fails "$1" "$2"
}
check magic "dirty map $MAP: bad magic"
check checksum "dirty map $MAP: header checksum mismatch"
check truncated "dirty map $MAP: header is truncated"
check empty "dirty map $MAP: header is truncated"
check short-bitmaps "dirty map $MAP: file is shorter than its bitmaps"
check version "dirty map $MAP: unsupported version 2"
check granularity "dirty map $MAP: bad granularity, size or slot in the header"
# A map made for a device of another size (another server's, a device since
# resized): only the server can tell. It serves, with the map replaced by an
# empty one of the right size marked inconsistent (a full copy is needed), the
# old file kept aside, the other map intact.
corrupt size
cp "$MAP" "$WORK/corrupt.dmap"
start_strata --file "$IMG" --export d --state-dir "$ST"
grep -qF "dirty map d/m: made for a device of 8388608 bytes, this one has 16777216: replaced by an empty map marked INCONSISTENT (a full copy is needed); the old file is $MAP.wrong-size" "$STRATA_LOG" ||
  die "size: no warning naming the map: $(cat "$STRATA_LOG")"
[ "$(ctl dirty status d --json | jq -c 'sort_by(.name) | map([.name, .consistent])')" = '[["good",true],["m",false]]' ] ||
  die "size: status: $(ctl dirty status d --json)"
[ "$(ctl dirty list d good)" = "$want" ] || die "size: the other map: $(ctl dirty list d good)"
qio "$(uri d)" "read 0 4096" >/dev/null
stop_strata
cmp -s "$MAP.wrong-size" "$WORK/corrupt.dmap" || die "size: the old map file was changed"
rm -f "$MAP.wrong-size"

# The intact file loads again, with its bits.
cp "$WORK/pristine.dmap" "$MAP"
[ "$(ctl dirty list --offline --state-dir "$ST" d m)" = "$want" ] || die "offline list of the intact map"
start_strata --file "$IMG" --export d --state-dir "$ST"
[ "$(ctl dirty list d m)" = "$want" ] || die "the intact map after the failed starts: $(ctl dirty list d m)"
[ "$(ctl dirty list d good)" = "$want" ] || die "the other map: $(ctl dirty list d good)"
stop_strata
echo PASS
