# shellcheck shell=bash
# hosts-lib.sh: a small cluster on this machine for the multi-host tests and
# benches (test-hosts-*.sh, bench/hosts.sh), sourced after functions.sh and
# nfs-lib.sh; the script calls nfs_enter_netns "$@" first, then hosts_setup N.
#
#   The test's own private network namespace (nfs_enter_netns) is the
#   *storage* namespace: rpcbind and ganesha run there, and a bridge
#   (strbr0, $HOSTS_STORAGE_IP = 10.77.0.1/24) joins it to N *host*
#   namespaces (`ip netns add`, named hosts$$-hX; /run is the test's private
#   tmpfs, so the names are seen by nobody else and vanish with the test),
#   each by a veth pair: strvX on the storage side (on the bridge), eth0 in
#   host X with 10.77.0.1X/24. Hosts reach the NFS server and each other over
#   TCP; unix sockets (files under $WORK) work from any namespace.
#
#   hosts_setup N          build the bridge and N host namespaces (N <= 9),
#                          start rpcbind, check each host connects to it
#   host_ip X              10.77.0.1X
#   host_ns X              the name of host X's namespace
#   host_exec X CMD...     run CMD in host X's network namespace
#   host_strata X ARGS...  start `strata serve ARGS` in host X: control
#                          $WORK/hostX/control.sock, NBD on the unix socket
#                          $WORK/hostX/nbd.sock and on TCP host_ip:10809,
#                          --state-dir $WORK/hostX/state, --allow-path $WORK,
#                          log $WORK/hostX/strata.log; waits until it answers;
#                          sets HOST_PID[X]
#   host_stop X            SIGTERM host X's strata, wait (exit status 0)
#   host_ctl X ARGS...     the strata CLI against host X's control socket
#   host_uri X [EXPORT]    nbd+unix URI of an export of host X (unix socket)
#   host_tcp_uri X EXPORT  nbd://10.77.0.1X:10809/EXPORT
#   hosts_nfs_url FILE     nfs://10.77.0.1/FILE: FILE (an absolute path under
#                          the exported directory) as the hosts reach it
#   hosts_bg PID           a background process of the script (a writer, a
#                          reader): killed by pid on exit if still running
#   storage_tx_bytes [X]   bytes the storage side sent towards host X (the tx
#                          counter of strvX), or towards all hosts (sum)
#
# The export must accept the hosts: hosts_setup sets NFS_CLIENTS (read by
# nfs_start_ganesha) to 127.0.0.1 and the hosts' subnet, so start ganesha
# after it.
#
# On exit, pass or fail: every host's strata is killed by pid, the host
# namespaces are deleted, then nfs-lib.sh's cleanup (ganesha, rpcbind,
# mounts, $WORK) runs.

HOSTS_N=0
HOSTS_STORAGE_IP=10.77.0.1
HOSTS_BRIDGE=strbr0
HOSTS_NS_PREFIX=hosts$$-h
declare -a HOST_PID=()
declare -a HOSTS_BG=()
hosts_bg() { HOSTS_BG+=("$1"); }

host_ip() { echo "10.77.0.1$1"; }
host_ns() { echo "$HOSTS_NS_PREFIX$1"; }
host_exec() {
  local x=$1
  shift
  ip netns exec "$(host_ns "$x")" "$@"
}
host_uri() { echo "nbd+unix:///${2:-}?socket=$WORK/host$1/nbd.sock"; }
host_tcp_uri() { echo "nbd://$(host_ip "$1"):10809/$2"; }
host_ctl() {
  local x=$1
  shift
  "$STRATA" "$@" --control "$WORK/host$x/control.sock"
}
hosts_nfs_url() { echo "nfs://$HOSTS_STORAGE_IP$1"; }

storage_tx_bytes() {
  local x sum=0 v
  for x in ${1:-$(seq 1 "$HOSTS_N")}; do
    v=$(ip -j -s link show dev "strv$x" | jq '.[0].stats64.tx.bytes') || die "cannot read the counters of strv$x"
    sum=$((sum + v))
  done
  echo $sum
}

hosts_setup() {
  local n=$1 x ns i
  [ -n "${STRATA_NFS_NETNS:-}" ] || die "hosts_setup: call nfs_enter_netns \"\$@\" first"
  [ "$n" -ge 1 ] && [ "$n" -le 9 ] || die "hosts_setup: between 1 and 9 hosts, not $n"
  requires ip jq
  trap hosts_cleanup EXIT
  NFS_CLIENTS="127.0.0.1, 10.77.0.0/24"
  ip link add "$HOSTS_BRIDGE" type bridge || die "cannot create the bridge $HOSTS_BRIDGE"
  ip addr add "$HOSTS_STORAGE_IP/24" dev "$HOSTS_BRIDGE"
  ip link set "$HOSTS_BRIDGE" up
  for x in $(seq 1 "$n"); do
    ns=$(host_ns "$x")
    ip netns add "$ns" || die "ip netns add $ns failed"
    HOSTS_N=$x
    ip link add "strv$x" type veth peer name eth0 netns "$ns" || die "cannot create the veth pair of host $x"
    ip link set "strv$x" master "$HOSTS_BRIDGE"
    ip link set "strv$x" up
    host_exec "$x" ip link set lo up
    host_exec "$x" ip addr add "$(host_ip "$x")/24" dev eth0
    host_exec "$x" ip link set eth0 up
    mkdir -p "$WORK/host$x"
  done
  # Every host reaches the storage over TCP (rpcbind's port 111).
  [ -n "$RPCBIND_PID" ] || nfs_start_rpcbind
  for x in $(seq 1 "$n"); do
    for i in $(seq 1 100); do
      host_exec "$x" timeout 2 bash -c "exec 3<>/dev/tcp/$HOSTS_STORAGE_IP/111" 2>/dev/null && continue 2
      sleep 0.1
    done
    die "host $x cannot connect to $HOSTS_STORAGE_IP:111 (rpcbind in the storage namespace) within 10 s"
  done
}

host_strata() {
  local x=$1 d i
  shift
  d=$WORK/host$x
  mkdir -p "$d/state"
  rm -f "$d/nbd.sock" "$d/control.sock"
  [ -z "${HOST_PID[$x]:-}" ] || die "host_strata $x: strata (pid ${HOST_PID[$x]}) is already running there"
  # ip netns exec execs strata: the pid is strata's.
  ip netns exec "$(host_ns "$x")" "$STRATA" serve --unix "$d/nbd.sock" --tcp "$(host_ip "$x"):10809" \
    --control "$d/control.sock" --state-dir "$d/state" --allow-path "$WORK" "$@" >>"$d/strata.log" 2>&1 &
  HOST_PID[$x]=$!
  for i in $(seq 1 200); do
    if ! running "${HOST_PID[$x]}"; then
      wait "${HOST_PID[$x]}" 2>/dev/null || true
      HOST_PID[$x]=
      tail -20 "$d/strata.log" >&2
      die "the strata of host $x exited during start-up"
    fi
    if [ -S "$d/control.sock" ] && host_ctl "$x" list >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  die "the strata of host $x did not answer within 10 s"
}

host_stop() {
  local x=$1 pid=${HOST_PID[$1]:-} rc=0 i
  [ -n "$pid" ] || die "host_stop $x: no strata running there"
  kill -TERM "$pid"
  for i in $(seq 1 100); do
    running "$pid" || break
    sleep 0.1
  done
  if running "$pid"; then
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    HOST_PID[$x]=
    die "the strata of host $x did not exit within 10 s of SIGTERM"
  fi
  wait "$pid" || rc=$?
  HOST_PID[$x]=
  [ $rc -eq 0 ] || die "the strata of host $x exited with status $rc after SIGTERM"
}

hosts_cleanup() {
  local rc=$? x pid
  set +e
  for pid in "${HOSTS_BG[@]}"; do
    kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  HOSTS_BG=()
  for x in "${!HOST_PID[@]}"; do
    pid=${HOST_PID[$x]}
    [ -n "$pid" ] || continue
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  HOST_PID=()
  for x in $(seq 1 "$HOSTS_N"); do
    if [ $rc -ne 0 ] && [ -f "$WORK/host$x/strata.log" ]; then
      echo "---- host $x: strata log (last 30 lines) ----" >&2
      tail -30 "$WORK/host$x/strata.log" >&2
    fi
  done
  for x in $(seq 1 "$HOSTS_N"); do
    ip netns del "$(host_ns "$x")" 2>/dev/null || echo "cleanup: cannot delete the namespace $(host_ns "$x")" >&2
  done
  ip link del "$HOSTS_BRIDGE" 2>/dev/null
  (exit $rc)
  nfs_cleanup
}
