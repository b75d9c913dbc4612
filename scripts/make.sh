#!/usr/bin/env bash
# The entry point of README.md: installs every dependency (Debian packages,
# as root, only those missing), then runs `make TARGET` (run, test, bench...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec make "$@"
