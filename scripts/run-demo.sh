#!/usr/bin/env bash
# The main job: serve a demo device over NBD from a sparse image under var/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
IMG=var/demo.img
SIZE=${STRATA_DEMO_SIZE:-1G}
# Another port when 10809 is taken (another NBD server): STRATA_DEMO_PORT=10810 make run.
PORT=${STRATA_DEMO_PORT:-10809}
[ -f "$IMG" ] || truncate -s "$SIZE" "$IMG"
SOCK=$PWD/var/nbd.sock
CTL=$PWD/var/control.sock
cat <<TXT
strata demo: serving $IMG ($(du -h --apparent-size "$IMG" | cut -f1), sparse) as export "demo".

  NBD over TCP:   nbd://127.0.0.1:$PORT/demo
  NBD over Unix:  nbd+unix:///demo?socket=$SOCK

Try, from another terminal:
  nbdinfo nbd://127.0.0.1:$PORT/demo
  nbdinfo --map nbd://127.0.0.1:$PORT/demo
  qemu-io -f raw nbd://127.0.0.1:$PORT/demo -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M'
  fio --name=demo --ioengine=nbd --uri=nbd+unix:///demo?socket=$SOCK --rw=randread --bs=4k --iodepth=32 --runtime=10 --time_based
  build/strata status --control $CTL

(STRATA_DEMO_PORT=N picks another port.) Ctrl-C stops the server (in-flight requests finish, the image is flushed).
TXT
exec build/strata serve --file "$IMG" --export demo --tcp "127.0.0.1:$PORT" --unix "$SOCK" --control "$CTL" --state-dir "$PWD/var/state"
