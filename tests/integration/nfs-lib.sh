# shellcheck shell=bash
# nfs-lib.sh: an NFS server for the nfs target tests (test-nfs-*.sh), sourced
# right after functions.sh; the test then calls nfs_enter_netns "$@" at once.
#
#   nfs_enter_netns "$@"   re-run the test (bash "$0" "$@") inside a private
#                          network + mount namespace (unshare, marker
#                          $STRATA_NFS_NETNS); there: lo up, a tmpfs on /run
#                          (rpcbind's socket), so our rpcbind and ganesha
#                          reach only loopback and never meet a host's.  The
#                          outer process removes its own $WORK before exec.
#   nfs_start_rpcbind      start rpcbind -f, wait until rpcinfo answers
#   nfs_start_ganesha DIR [squash]
#                          start nfs-ganesha (FSAL VFS, NFSv3+4, TCP) exporting
#                          DIR (No_Root_Squash; with "squash": Root_Squash to
#                          uid/gid 65534), each start with a new -E epoch so
#                          the NFSv3 write verifier changes; wait until
#                          `nfs-ls nfs://127.0.0.1DIR` works; sets GANESHA_PID.
#                          The export admits the clients in $NFS_CLIENTS
#                          (ganesha's Clients list; default 127.0.0.1 only;
#                          hosts-lib.sh adds the hosts' subnet)
#   nfs_stop_ganesha       SIGTERM by pid, wait (SIGKILL after 20 s)
#   nfs_kill_ganesha       SIGKILL by pid, wait
#   nfs_xfs_setup          512M sparse image in $WORK -> mkfs.xfs -> loop ->
#                          mounted at $NFS_XFS ($WORK/xfs); export dir
#                          $NFS_EXPORT ($NFS_XFS/export); sets NFS_LOOP
#   nfs_crash [DOWN]       a power cut of the server: SIGKILL ganesha,
#                          `xfs_io -x -c shutdown` (every write not yet on
#                          stable storage is lost), umount, mount, then (after
#                          DOWN seconds, default 0) ganesha again, new epoch
#   nfs_url FILE           nfs://127.0.0.1/<path of FILE> (FILE an absolute
#                          path under the exported directory)
#   now_ms                 monotonic-enough wall clock in milliseconds
#
# On exit, pass or fail, before functions.sh's cleanup: strata, ganesha and
# rpcbind are killed by pid, every mount under $WORK is unmounted and every
# loop device over a file under $WORK is detached.

NFS_HOST=127.0.0.1
GANESHA_PID=
RPCBIND_PID=
NFS_LOOP=
NFS_XFS=
NFS_EXPORT=
NFS_DIR=
NFS_SQUASH=
NFS_STARTS=0
NFS_EPOCH0=
: "${NFS_CLIENTS:=127.0.0.1}"

nfs_enter_netns() {
  if [ -z "${STRATA_NFS_NETNS:-}" ]; then
    [ "$(id -u)" = 0 ] || die "needs root (network + mount namespaces, rpcbind, ganesha, mount)"
    requires unshare
    # exec runs no EXIT trap: remove this process's $WORK by hand; the inner
    # run makes its own.
    trap - EXIT
    rm -rf "$WORK"
    STRATA_NFS_NETNS=1 exec unshare --net --mount --propagation private -- bash "$0" "$@"
    echo "FAIL: unshare failed" >&2
    exit 1
  fi
  trap nfs_cleanup EXIT
  requires ip rpcbind rpcinfo ganesha.nfsd nfs-ls timeout
  ip link set lo up || die "cannot bring up lo in the new network namespace"
  mount -t tmpfs -o mode=0755,size=16m strata-nfs-run /run || die "cannot mount a private /run"
  mkdir -p /run/rpcbind /run/lock
  NFS_EPOCH0=$(date +%s)
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

nfs_url() { echo "nfs://$NFS_HOST$1"; }

_nfs_stop_pid() { # PID SIGNAL SECONDS: signal our child, wait until it is gone
  local pid=$1 sig=$2 secs=$3 i
  [ -n "$pid" ] || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  if [ "$sig" = KILL ]; then
    wait "$pid" 2>/dev/null || true # (here, not later: no "Killed" job notice)
    return 0
  fi
  for ((i = 0; i < secs * 20; i++)); do
    running "$pid" || break
    sleep 0.05
  done
  if running "$pid"; then
    echo "nfs-lib: pid $pid still running $secs s after SIG$sig, SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

nfs_start_rpcbind() {
  requires rpcbind rpcinfo
  rpcbind -f </dev/null >>"$WORK/rpcbind.log" 2>&1 &
  RPCBIND_PID=$!
  local deadline=$(($(now_ms) + 10000))
  until rpcinfo -p $NFS_HOST >/dev/null 2>&1; do
    running "$RPCBIND_PID" || die "rpcbind exited: $(tail -n3 "$WORK/rpcbind.log")"
    [ "$(now_ms)" -lt $deadline ] || die "rpcbind did not answer within 10 s"
    sleep 0.02
  done
}

nfs_start_ganesha() {
  local dir=$1 squash=${2:-}
  [ -d "$dir" ] || die "nfs_start_ganesha: no directory $dir"
  [ -z "$GANESHA_PID" ] || die "nfs_start_ganesha: ganesha (pid $GANESHA_PID) is already running"
  [ -n "$RPCBIND_PID" ] || nfs_start_rpcbind
  NFS_DIR=$dir NFS_SQUASH=$squash
  local sq='Squash = No_Root_Squash;'
  [ "$squash" = squash ] && sq='Squash = Root_Squash; Anonymous_Uid = 65534; Anonymous_Gid = 65534;'
  mkdir -p "$WORK/ganesha-recov"
  # Bind_addr is left unset: in a namespace with only "lo" ganesha exits
  # with "No IP address found" when it is 127.0.0.1.
  cat >"$WORK/ganesha.conf" <<EOF
NFS_CORE_PARAM {
	Protocols = 3, 4;
	NFS_Port = 2049;
	MNT_Port = 20048;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Enable_UDP = false;
}
NFSV4 {
	Graceless = true;
	RecoveryRoot = $WORK/ganesha-recov;
}
EXPORT {
	Export_Id = 1;
	Path = $dir;
	Pseudo = /export;
	Protocols = 3, 4;
	Transports = TCP;
	SecType = sys;
	$sq
	Access_Type = None;
	CLIENT { Clients = $NFS_CLIENTS; Access_Type = RW; }
	FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
EOF
  # A distinct epoch for every start: the write verifier must change even
  # when two starts fall in the same second.
  NFS_STARTS=$((NFS_STARTS + 1))
  local epoch=$((NFS_EPOCH0 + NFS_STARTS)) now
  now=$(date +%s)
  if [ "$epoch" -le "$now" ]; then
    NFS_EPOCH0=$((now - NFS_STARTS + 1))
    epoch=$((NFS_EPOCH0 + NFS_STARTS))
  fi
  echo "==== start $NFS_STARTS, epoch $epoch, export $dir ${squash:+(root squash)}" >>"$WORK/ganesha.log"
  ganesha.nfsd -F -f "$WORK/ganesha.conf" -L "$WORK/ganesha.log" -p "$WORK/ganesha.pid" \
    -N NIV_EVENT -E "$epoch" </dev/null >>"$WORK/ganesha.stdout" 2>&1 &
  GANESHA_PID=$!
  local deadline=$(($(now_ms) + 30000))
  until timeout 5 nfs-ls "$(nfs_url "$dir")" >/dev/null 2>&1; do
    if ! running "$GANESHA_PID"; then
      wait "$GANESHA_PID" 2>/dev/null || true
      GANESHA_PID=
      die "ganesha exited during start-up: $(grep -E 'FATAL|CRIT :Error' "$WORK/ganesha.log" | tail -n3)"
    fi
    [ "$(now_ms)" -lt $deadline ] || die "ganesha did not serve $dir within 30 s (nfs-ls $(nfs_url "$dir"))"
    sleep 0.02
  done
}

# nfs_serve_disk SIZE BYTE TIMEOUT: ganesha exporting $WORK/export (EXPORT),
# a file of SIZE bytes of BYTE there (F), and strata serving it as export "d"
# through an nfs target with timeout=TIMEOUT.
nfs_serve_disk() {
  EXPORT=$WORK/export
  mkdir -p "$EXPORT"
  nfs_start_ganesha "$EXPORT"
  F=$EXPORT/disk.img
  bytes "$1" "$2" >"$F"
  echo "0 $(($1 / 512)) nfs $(nfs_url "$F") 0 timeout=$3" >"$WORK/t.conf"
  start_strata --table "$WORK/t.conf" --export d
}

nfs_stop_ganesha() {
  [ -n "$GANESHA_PID" ] || die "nfs_stop_ganesha: ganesha is not running"
  _nfs_stop_pid "$GANESHA_PID" TERM 20
  GANESHA_PID=
}

nfs_kill_ganesha() {
  [ -n "$GANESHA_PID" ] || die "nfs_kill_ganesha: ganesha is not running"
  _nfs_stop_pid "$GANESHA_PID" KILL 20
  GANESHA_PID=
}

nfs_xfs_setup() {
  requires mkfs.xfs xfs_io losetup mount umount
  truncate -s 512M "$WORK/xfs.img"
  mkfs.xfs -q "$WORK/xfs.img" || die "mkfs.xfs failed"
  NFS_LOOP=$(losetup -f --show "$WORK/xfs.img") || die "losetup -f --show $WORK/xfs.img failed"
  [ -b "$NFS_LOOP" ] || die "losetup printed '$NFS_LOOP', not a block device"
  NFS_XFS=$WORK/xfs
  mkdir -p "$NFS_XFS"
  mount -t xfs "$NFS_LOOP" "$NFS_XFS" || die "mount $NFS_LOOP $NFS_XFS failed"
  NFS_EXPORT=$NFS_XFS/export
  mkdir -p "$NFS_EXPORT"
  sync -f "$NFS_EXPORT"
}

nfs_crash() {
  local down=${1:-0} out
  [ -n "$NFS_XFS" ] || die "nfs_crash needs nfs_xfs_setup"
  nfs_kill_ganesha
  out=$(xfs_io -x -c shutdown "$NFS_XFS" 2>&1) || die "xfs_io shutdown $NFS_XFS failed: $out"
  umount "$NFS_XFS" || die "umount $NFS_XFS after the shutdown failed"
  mount -t xfs "$NFS_LOOP" "$NFS_XFS" || die "mount $NFS_LOOP $NFS_XFS after the shutdown failed"
  [ "$down" = 0 ] || sleep "$down"
  nfs_start_ganesha "$NFS_DIR" $NFS_SQUASH
}

_nfs_work_mounts() { # every mountpoint under $WORK, deepest first
  awk -v w="$WORK/" 'index($2, w) == 1 { print length($2), $2 }' /proc/mounts | sort -rn | cut -d' ' -f2-
}

nfs_cleanup() {
  local rc=$? m l
  set +e
  if [ -n "$STRATA_PID" ] && kill -0 "$STRATA_PID" 2>/dev/null; then
    kill -9 "$STRATA_PID" 2>/dev/null
    wait "$STRATA_PID" 2>/dev/null
  fi
  STRATA_PID=
  [ -z "$GANESHA_PID" ] || _nfs_stop_pid "$GANESHA_PID" KILL 20
  GANESHA_PID=
  [ -z "$RPCBIND_PID" ] || _nfs_stop_pid "$RPCBIND_PID" TERM 10
  RPCBIND_PID=
  if [ $rc -ne 0 ] && [ -f "$WORK/ganesha.log" ]; then
    echo "---- ganesha log (errors, last 20) ----" >&2
    grep -E ':(CRIT|MAJ|FATAL|WARN) :' "$WORK/ganesha.log" | grep -viE 'dbus|kerberos|krb5|gssd|RADOS|credentials for principal|realm' | tail -20 >&2
  fi
  for m in $(_nfs_work_mounts); do
    timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "cleanup: cannot unmount $m" >&2
  done
  for l in $(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 { print $1 }'); do
    timeout 20 losetup -d "$l" 2>/dev/null || echo "cleanup: cannot detach $l" >&2
  done
  (exit $rc)
  cleanup
}
