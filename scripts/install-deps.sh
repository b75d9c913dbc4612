#!/usr/bin/env bash
# Installs every Debian package strata needs to build, test and benchmark.
# Idempotent: packages already present are left alone; apt runs only when
# something is missing.
set -euo pipefail

PKGS=(
  # build
  build-essential make cmake pkg-config
  liburing-dev libfmt-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgnutls28-dev
  # the lock contracts, checked by clang's -Wthread-safety (scripts/check-thread-safety.sh)
  clang-14
  # libFuzzer and the sanitizer runtimes for clang (make fuzz, the fuzz-* tests)
  libclang-rt-14-dev
  # test clients and peers
  fuse3 e2fsprogs xfsprogs libnbd-bin libnbd-dev python3-libnbd nbdkit qemu-utils fio jq xxd util-linux procps gnutls-bin
  # nfs target: libnfs, and an NFSv3 server for its tests (test-nfs-*.sh)
  libnfs-dev libnfs-utils nfs-ganesha nfs-ganesha-vfs rpcbind qemu-block-extra iproute2
  # rbd target: librbd/librados (no pkg-config files), and a one-node Ceph
  # cluster for its tests (test-rbd-*.sh: 1 mon, 1 mgr, 1 memstore OSD)
  librbd-dev libradospp-dev ceph-mon ceph-mgr ceph-osd ceph-common uuid-runtime
  # service: socket activation and sd_notify (libsystemd), its tests and unit checks
  # (systemd-socket-activate, systemd-analyze), the metrics endpoint (libmicrohttpd) and its format check
  libsystemd-dev systemd libmicrohttpd-dev curl python3-prometheus-client
  # man pages (pandoc from docs/man/*.md) and their check (groff, man, col)
  pandoc groff-base man-db bsdextrautils
  # make deb and its check
  debhelper dpkg-dev lintian
  # strata top's test runs it in a terminal
  tmux
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || apt-get update
apt-get install -y -qq --no-install-recommends "${missing[@]}"
