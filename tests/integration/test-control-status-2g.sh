#!/bin/bash
# test-control-concurrent-clients at the size the live-operations issue names: while a 2 GiB merge and a 2 GiB sync
# run, 20 control clients asking `device_status` in a loop (with an idle, a half-line and a never-reading client
# connected) get a p99 under 50 ms.
STATUS_MIB=2048 exec bash "$(dirname "$0")/test-control-concurrent-clients.sh"
