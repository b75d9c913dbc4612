# shellcheck shell=bash
# ceph-lib.sh: a throwaway one-node Ceph cluster for the rbd target tests
# (test-rbd-*.sh), sourced right after functions.sh. Debian's Ceph 16.2:
# one monitor, one manager and one memstore OSD on 127.0.0.1, ports of their
# own, everything (config, keyrings, data, logs) under $WORK/ceph. Daemons run
# as the caller (root in CI) and are stopped by their pids on exit.
#
#   ceph_start              start the cluster, create and `rbd pool init` the
#                           pool "rbd"; sets CEPH_DIR, CEPH_CONF (exported, so
#                           `ceph`/`rbd`/`rados` and qemu find it), CEPH_KEYRING
#                           (client.admin), CEPH_MON (the monitor's v1 address)
#   ceph_kill_osd           SIGKILL the OSD, wait until it is gone
#   ceph_start_osd          start the OSD again (same id and data dir: memstore
#                           keeps its data on a clean stop only, so a killed
#                           one comes back empty; see ceph_restart_osd)
#   ceph_restart_osd        SIGTERM the OSD (memstore saves its content), start
#                           it again, wait until it is up
#   ceph_wait_osd_up        wait (60 s) until the OSD is up and the pool's PGs active
#   rbd_create NAME SIZE [ARGS...]   `rbd create` in pool rbd
#   rbd_table OUT SPEC SIZE [OPTS...] write a table: device "d" of SIZE bytes,
#                           one rbd segment `rbd SPEC conf=$CEPH_CONF OPTS...`
#   rbd_export_file SPEC OUT  `rbd export` an image (or @snap) to a file
#
# CEPH_KEEP_LOGS=DIR: on failure, the cluster's and strata's logs are copied there.
# On exit, pass or fail: strata, then the OSD, mgr and mon are killed by pid,
# then functions.sh's cleanup runs (which removes $WORK).

CEPH_DIR=
CEPH_CONF=
CEPH_KEYRING=
CEPH_MON=
CEPH_OSD_PID=
CEPH_MGR_PID=
CEPH_MON_PID=
CEPH_OSD_ID=0

_ceph_free_port() {
  $PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# _ceph CMD...: the ceph CLI on our cluster, bounded in time.
_ceph() { timeout 60 ceph --conf "$CEPH_CONF" --connect-timeout 30 "$@"; }

ceph_start() {
  requires ceph-mon ceph-mgr ceph-osd ceph ceph-authtool monmaptool rbd rados uuidgen timeout
  trap ceph_cleanup EXIT
  CEPH_DIR=$WORK/ceph
  mkdir -p "$CEPH_DIR"/{run,log}
  CEPH_CONF=$CEPH_DIR/ceph.conf
  CEPH_KEYRING=$CEPH_DIR/ceph.client.admin.keyring
  export CEPH_CONF
  local p2 p1 fsid
  p2=$(_ceph_free_port)
  p1=$(_ceph_free_port)
  [ "$p1" != "$p2" ] || p1=$((p2 + 1))
  CEPH_MON=127.0.0.1:$p1
  fsid=$(uuidgen)
  cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$cluster-\$name.\$pid.asok
log_file = $CEPH_DIR/log/\$cluster-\$name.log
mon_cluster_log_file = $CEPH_DIR/log/\$cluster.log
log_to_stderr = false
err_to_stderr = true
crash_dir = $CEPH_DIR/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_max_pg_per_osd = 1000
# a one-node test cluster commits maps fast (start-up 9 s -> 3 s on 2 cores)
paxos_propose_interval = 0.1
paxos_min_wait = 0.01
mon_tick_interval = 1
osd_heartbeat_interval = 1

[mon]
mon_data = $CEPH_DIR/mon.\$id
mon_initial_members = a
mon_cluster_log_to_file = true

[mgr]
mgr_data = $CEPH_DIR/mgr.\$id
keyring = \$mgr_data/keyring
mgr_initial_modules = iostat
mgr_disabled_modules = diskprediction_local cephadm influx insights prometheus restful selftest snap_schedule stats test_orchestrator zabbix nfs dashboard k8sevents mirroring osd_perf_query osd_support rook alerts localpool mds_autoscaler telegraf
mgr_tick_period = 2

[osd]
osd_data = $CEPH_DIR/osd.\$id
keyring = \$osd_data/keyring
osd_objectstore = memstore
# a SIGTERM'ed memstore OSD saves its content only on a full shutdown
osd_fast_shutdown = false
memstore_device_bytes = $((4 << 30))
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64

[client]
keyring = $CEPH_KEYRING
EOF
  ceph-authtool --create-keyring "$CEPH_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$CEPH_KEYRING" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$CEPH_DIR/mon.keyring" --import-keyring "$CEPH_KEYRING" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]" "$CEPH_DIR/monmap" >/dev/null
  ceph-mon --conf "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/mon.keyring" ||
    die "ceph-mon --mkfs failed"
  ceph-mon --conf "$CEPH_CONF" -i a -f >>"$CEPH_DIR/log/mon.stderr" 2>&1 &
  CEPH_MON_PID=$!
  _ceph mon stat >/dev/null || die "the monitor did not answer: $(tail -n5 "$CEPH_DIR/log/mon.stderr")"

  mkdir -p "$CEPH_DIR/mgr.x"
  _ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' >"$CEPH_DIR/mgr.x/keyring"
  ceph-mgr --conf "$CEPH_CONF" -i x -f >>"$CEPH_DIR/log/mgr.stderr" 2>&1 &
  CEPH_MGR_PID=$!

  local uuid key
  uuid=$(uuidgen)
  key=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}\n' "$key" >"$CEPH_DIR/osd-secret.json"
  CEPH_OSD_ID=$(_ceph osd new "$uuid" -i "$CEPH_DIR/osd-secret.json") || die "ceph osd new failed"
  rm -f "$CEPH_DIR/osd-secret.json"
  mkdir -p "$CEPH_DIR/osd.$CEPH_OSD_ID"
  ceph-osd --conf "$CEPH_CONF" -i "$CEPH_OSD_ID" --mkfs --key "$key" --osd-uuid "$uuid" \
    >>"$CEPH_DIR/log/osd.stderr" 2>&1 || die "ceph-osd --mkfs failed: $(tail -n5 "$CEPH_DIR/log/osd.stderr")"
  printf '[osd.%s]\n\tkey = %s\n' "$CEPH_OSD_ID" "$key" >"$CEPH_DIR/osd.$CEPH_OSD_ID/keyring"
  ceph_start_osd
  _ceph osd pool create rbd 8 8 replicated >/dev/null 2>&1 || die "ceph osd pool create rbd failed"
  timeout 60 rbd pool init rbd || die "rbd pool init failed"
  ceph_wait_osd_up
  echo "ceph: cluster up in $CEPH_DIR (mon $CEPH_MON, osd.$CEPH_OSD_ID pid $CEPH_OSD_PID)"
}

ceph_start_osd() {
  [ -z "$CEPH_OSD_PID" ] || die "ceph_start_osd: the OSD (pid $CEPH_OSD_PID) is already running"
  ceph-osd --conf "$CEPH_CONF" -i "$CEPH_OSD_ID" -f >>"$CEPH_DIR/log/osd.stderr" 2>&1 &
  CEPH_OSD_PID=$!
}

ceph_wait_osd_up() {
  local end=$((SECONDS + 60)) s
  while [ $SECONDS -lt $end ]; do
    running "$CEPH_OSD_PID" || die "the OSD exited: $(tail -n5 "$CEPH_DIR/log/osd.stderr")"
    s=$(_ceph pg stat 2>/dev/null || true)
    if _ceph osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1' &&
      grep -qE '^([0-9]+) pgs: \1 active\+clean;' <<<"$s"; then
      return 0
    fi
    sleep 0.2
  done
  die "the OSD did not come up (pg stat: $s)"
}

ceph_kill_osd() {
  [ -n "$CEPH_OSD_PID" ] || die "ceph_kill_osd: the OSD is not running"
  kill -KILL "$CEPH_OSD_PID" 2>/dev/null || true
  wait "$CEPH_OSD_PID" 2>/dev/null || true
  CEPH_OSD_PID=
}

ceph_restart_osd() {
  [ -n "$CEPH_OSD_PID" ] || die "ceph_restart_osd: the OSD is not running"
  kill -TERM "$CEPH_OSD_PID"
  local i
  for i in $(seq 1 600); do
    running "$CEPH_OSD_PID" || break
    sleep 0.05
  done
  running "$CEPH_OSD_PID" && die "the OSD did not stop within 30 s of SIGTERM"
  wait "$CEPH_OSD_PID" 2>/dev/null || true
  CEPH_OSD_PID=
  ceph_start_osd
}

rbd_create() {
  local name=$1 size=$2
  shift 2
  timeout 60 rbd create "rbd/$name" --size "$size" "$@" || die "rbd create rbd/$name failed"
}

rbd_table() {
  local out=$1 spec=$2 size=$3
  shift 3
  echo "0 $((size / 512)) rbd $spec conf=$CEPH_CONF $*" >"$out"
}

rbd_export_file() {
  rm -f "$2"
  timeout 120 rbd export "$1" "$2" >/dev/null 2>&1 || die "rbd export $1 failed"
}

_ceph_stop_pid() { # PID SIGNAL: signal our child, wait (SIGKILL after 20 s)
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill "-$2" "$pid" 2>/dev/null || true
  if [ "$2" = KILL ]; then
    wait "$pid" 2>/dev/null || true # (here: no "Killed" job notice)
    return 0
  fi
  for ((i = 0; i < 400; i++)); do
    running "$pid" || break
    sleep 0.05
  done
  running "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

ceph_cleanup() {
  local rc=$?
  set +e
  if [ -n "$STRATA_PID" ] && kill -0 "$STRATA_PID" 2>/dev/null; then
    kill -9 "$STRATA_PID" 2>/dev/null
    wait "$STRATA_PID" 2>/dev/null
  fi
  STRATA_PID=
  # memstore would write its whole content to disk on a clean stop: SIGKILL.
  _ceph_stop_pid "$CEPH_OSD_PID" KILL
  _ceph_stop_pid "$CEPH_MGR_PID" TERM
  _ceph_stop_pid "$CEPH_MON_PID" TERM
  CEPH_OSD_PID= CEPH_MGR_PID= CEPH_MON_PID=
  if [ $rc -ne 0 ] && [ -n "$CEPH_DIR" ]; then
    echo "---- ceph osd log (last 10 lines) ----" >&2
    tail -n10 "$CEPH_DIR/log/osd.stderr" 2>/dev/null >&2
    if [ -n "${CEPH_KEEP_LOGS:-}" ]; then
      mkdir -p "$CEPH_KEEP_LOGS" && cp -r "$CEPH_DIR/log" "$STRATA_LOG" "$CEPH_KEEP_LOGS/" 2>/dev/null
      echo "ceph and strata logs copied to $CEPH_KEEP_LOGS" >&2
    fi
  fi
  (exit $rc)
  cleanup
}
