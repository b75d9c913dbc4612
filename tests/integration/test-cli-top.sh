#!/usr/bin/env bash
# test-cli-top.sh: `strata top` in a terminal (tmux) shows each device with its IOPS, MiB/s and latency moving
# while a client writes, a finished job with its progress, and quits on `q` leaving the terminal usable;
# without a terminal, --iterations N prints N frames and exits 0.
source "$(dirname "$0")/functions.sh"
requires tmux fio
TM=strata-top-$$
trap 'rc=$?; tmux -L "$TM" kill-server 2>/dev/null || true; (exit $rc); cleanup' EXIT
head -c 64M /dev/zero >"$WORK/disk.img"
cat >"$WORK/t.conf" <<EOT
[disk]
0 131072 file $WORK/disk.img 0
[idle]
0 2048 zero
EOT
start_strata --table "$WORK/t.conf"
ctl flatten idle --to "$WORK/idle.raw" >/dev/null 2>&1 || die "flatten"

tmux -L "$TM" new-session -d -x 160 -y 30 "$STRATA top --control $CTL --interval 0.5"
fio --name=w --ioengine=nbd --uri="$(uri disk)" --rw=randwrite --bs=4k --size=32M --time_based --runtime=4 \
  >"$WORK/fio.log" 2>&1 &
FIO=$!
# While fio writes: the disk row shows writes per second above 0 and a write latency.
ok=
for _ in $(seq 1 60); do
  sleep 0.1
  screen=$(tmux -L "$TM" capture-pane -p)
  row=$(grep -E '^disk ' <<<"$screen" || true)
  # DEVICE r/s w/s rMiB/s wMiB/s r_lat w_lat f_lat inflight
  if [ -n "$row" ] && awk '{ exit !($3 != "-" && $3 > 0 && $5 > 0 && $7 ~ /[0-9](us|ms)$/) }' <<<"$row"; then
    ok=1
    break
  fi
done
[ -n "$ok" ] || die "no write rate on the disk row: $screen"
grep -qE '^idle +(-|0\.0) +(-|0\.0) ' <<<"$screen" || die "the idle device is not idle: $screen"
grep -qE '^JOB +KIND +DEVICE' <<<"$screen" || die "no job table: $screen"
grep -qE '^[0-9]+ +flatten +idle +done +100%' <<<"$screen" || die "the flatten job: $screen"
wait $FIO || die "fio failed: $(cat "$WORK/fio.log")"

tmux -L "$TM" send-keys q
for _ in $(seq 1 40); do
  tmux -L "$TM" has-session 2>/dev/null || break
  sleep 0.05
done
if tmux -L "$TM" has-session 2>/dev/null; then die "q did not quit: $(tmux -L "$TM" capture-pane -p)"; fi

# Without a terminal: N frames, exit 0.
out=$("$STRATA" top --control "$CTL" --interval 0.2 --iterations 3) || die "top --iterations failed"
[ "$(grep -c '^strata top: 2 device(s)' <<<"$out")" = 3 ] || die "frames: $out"
if grep -q $'\e' <<<"$out"; then die "escape codes without a terminal"; fi
# A server that is not there: an error, exit 1.
rc=0; "$STRATA" top --control "$WORK/nosuch.sock" --iterations 1 >/dev/null 2>&1 || rc=$?
[ $rc = 1 ] || die "top without a server: exit $rc"
stop_strata
