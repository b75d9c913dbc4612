#!/bin/bash
# test-control-concurrent-clients at 2 GiB (STATUS_MIB=2048): 20 clients asking `device_status` in a loop get a p99
# under 50 ms while a merge and a sync each copy 2 GiB (issue 18: status once waited 4-5 s behind such jobs).
STATUS_MIB=2048 exec bash "$(dirname "$0")/test-control-concurrent-clients.sh"
