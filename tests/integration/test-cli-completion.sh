#!/usr/bin/env bash
# test-cli-completion.sh: the bash completion (packaging/bash-completion/strata) completes verbs, sub-verbs,
# a verb's options (from its --help), the devices of the running server named by --control, a device's dirty
# maps, option values, and nothing wrong when no server answers.
source "$(dirname "$0")/functions.sh"
requires bash
C=$STRATA_SRC/packaging/bash-completion/strata
head -c 1M /dev/zero >"$WORK/a.img"
cat >"$WORK/t.conf" <<EOT
[alpha]
0 2048 file $WORK/a.img 0
[beta]
0 2048 zero
EOT
start_strata --table "$WORK/t.conf"
ctl dirty start alpha backup1 >/dev/null
ctl dirty start alpha backup2 >/dev/null

# complete WORDS...: the completions of the last word (may be empty) of `WORDS`, one per line, sorted.
complete_() {
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _strata
           printf "%s\n" "${COMPREPLY[@]}" | sort' _ "$C" "$STRATA" "$@"
}
expect() { # WANT WORDS...: the completions are exactly WANT (space separated)
  local want=$1 got
  shift
  got=$(complete_ "$@" | tr '\n' ' ' | sed 's/ $//')
  [ "$got" = "$want" ] || die "completing '$*': got '$got', want '$want'"
}
expect "serve server snapshot status suspend sync" s
expect "dirty dump" d
expect "--help --version" --
expect "checkpoint clear" dirty c
expect "check create" layer c
expect "cancel" job ca
expect "alpha" status --control "$CTL" al
expect "alpha beta" remove --control "$CTL" ""
expect "backup1 backup2" dirty list --control "$CTL" alpha ""
expect "backup1 backup2" sync alpha --control "$CTL" --map ""
expect "--final" sync --fi
expect "off on require" serve --tls ""
expect "--max-connections --max-handshakes --max-memory --metrics" serve --m
got=$(complete_ serve --metrics "")
[ -z "$got" ] || die "a HOST:PORT value completed as '$got'"
# No server: devices complete to nothing (no error text among the candidates).
expect "" status --control "$WORK/nosuch.sock" ""
# Files where a path goes.
touch "$WORK/disk.conf"
expect "$WORK/disk.conf" serve --table "$WORK/disk.c"
stop_strata
