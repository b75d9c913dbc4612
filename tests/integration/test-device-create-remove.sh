#!/bin/bash
# Devices at runtime on a server started with no device (--empty): `strata create` serves a device at once over NBD (a
# bad table creates nothing), `strata remove` is refused while an NBD client is connected or another device uses it
# and --force ends the client's connection; 100 devices created and removed leave the server's open fds as they were
# and its RSS within 4 MiB; 30 reloads leave no replaced table open; `strata dump` re-creates the devices.
source "$(dirname "$0")/functions.sh"
requires jq qemu-io
S="$STRATA"
rm -f "$SOCK"
"$S" serve --empty --unix "$SOCK" --control "$CTL" >>"$STRATA_LOG" 2>&1 &
STRATA_PID=$!
for i in $(seq 1 100); do [ -S "$CTL" ] && ctl list >/dev/null 2>&1 && break; sleep 0.05; done
[ "$(ctl list --json)" = "[]" ] || die "a server with no table has devices: $(ctl list --json)"
fds() { ls "/proc/$STRATA_PID/fd" | wc -l; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$STRATA_PID/status"; }

for i in $(seq 0 9); do head -c 1048576 /dev/urandom >"$WORK/f$i.img"; done
# A bad table changes nothing.
echo "0 2048 file $WORK/nope.img 0" | ctl create bad --table - 2>/dev/null && die "a table naming a missing file created a device"
printf '0 2048 file %s 0\n2048 2048 bogus\n' "$WORK/f0.img" | ctl create bad --table - 2>/dev/null && die "a bad target was accepted"
[ "$(ctl list --json)" = "[]" ] || die "a failed create left a device"

# Served at once; remove refused while a client is connected or a device uses it.
echo "0 2048 file $WORK/f0.img 0" | ctl create one --table - >/dev/null
qio "$(uri one)" "read -P $(od -An -tx1 -N1 "$WORK/f0.img" | tr -d ' ' | sed 's/^/0x/') 0 1"
echo "0 1024 linear one 1024" | ctl create half --table - >/dev/null
out=$(ctl remove one 2>&1) && die "removed a device another one uses"
grep -q "used by device 'half'" <<<"$out" || die "unclear refusal: $out"
ctl remove half >/dev/null
$PYTHON -c "
import nbd, os, time
h = nbd.NBD(); h.connect_uri('$(uri one)')
open('$WORK/connected', 'w').close()
try:
    while True:
        h.pread(4096, 0); time.sleep(0.01)
except nbd.Error as e:
    open('$WORK/ended', 'w').write(str(e))
" &
P=$!
for i in $(seq 1 100); do [ -e "$WORK/connected" ] && break; sleep 0.05; done
sleep 0.2
out=$(ctl remove one 2>&1) && die "removed a device with a client connected"
grep -q "1 NBD client" <<<"$out" || die "unclear refusal: $out"
ctl remove one --force >/dev/null
wait $P
[ -e "$WORK/ended" ] || die "the client of a force-removed device was not disconnected"
qemu-io -f raw "$(uri one)" -c "read 0 1" >/dev/null 2>&1 && die "a removed device is still served"

# 100 devices, then none: fds and RSS come back.
for i in 1 2 3; do echo "0 2048 file $WORK/f0.img 0" | ctl create warm$i --table - >/dev/null; done
for i in 1 2 3; do ctl remove warm$i >/dev/null; done
fd0=$(fds); rss0=$(rss)
for i in $(seq 1 100); do
  echo "0 2048 file $WORK/f$((i % 10)).img 0" | ctl create "dev$i" --table - >/dev/null
done
[ "$(ctl list --json | jq length)" = 100 ] || die "expected 100 devices"
fd1=$(fds)
[ "$fd1" -ge $((fd0 + 100)) ] || die "100 devices hold only $((fd1 - fd0)) more fds"
qio "$(uri dev57)" "read 0 4096"
ctl dump >"$WORK/dump.conf"
[ "$(grep -c '^\[dev' "$WORK/dump.conf")" = 100 ] || die "dump: $(head "$WORK/dump.conf")"
for i in $(seq 1 100); do ctl remove "dev$i" >/dev/null; done
fd2=$(fds); rss2=$(rss)
echo "fds $fd0 -> $fd1 -> $fd2; RSS $rss0 -> $rss2 KiB"
[ "$fd2" = "$fd0" ] || die "fds: $fd0 before, $fd2 after removing every device"
# Under the sanitizers freed memory waits in ASan's quarantine instead of being reused, so RSS says nothing there;
# LeakSanitizer's check at the server's exit (scripts/asan.sh) is the stricter test of the same thing.
if [ -z "${STRATA_SANITIZED:-}" ]; then
  [ "$rss2" -le $((rss0 + 4096)) ] || die "RSS grew from $rss0 to $rss2 KiB"
fi

# 30 reloads of a device no client reads: the tables they replaced are freed
# (within the control worker's idle tick), not kept until the server stops.
echo "0 2048 file $WORK/f0.img 0" | ctl create r --table - >/dev/null
fd3=$(fds)
for i in $(seq 1 30); do
  echo "0 2048 file $WORK/f$((i % 10)).img 0" | ctl reload r --table - >/dev/null
  ctl resume r >/dev/null
done
[ "$(ctl table r)" = "0 2048 file $WORK/f0.img 0" ] || die "after 30 reloads: $(ctl table r)"
for i in $(seq 1 50); do [ "$(fds)" -le "$fd3" ] && break; sleep 0.1; done
echo "fds after 30 reloads: $fd3 -> $(fds)"
[ "$(fds)" -le "$fd3" ] || die "30 reloads left $(( $(fds) - fd3 )) more fds open (retired tables never freed)"
ctl remove r >/dev/null

# The dump re-creates them on a fresh server.
stop_strata
start_strata --table "$WORK/dump.conf"
[ "$(ctl list --json | jq length)" = 100 ] || die "the dump did not re-create 100 devices"
[ "$(ctl table dev42)" = "0 2048 file $WORK/f2.img 0" ] || die "dev42: $(ctl table dev42)"
stop_strata
echo PASS
