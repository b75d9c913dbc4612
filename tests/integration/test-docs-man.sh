#!/usr/bin/env bash
# test-docs-man.sh: the man pages build from docs/man/*.md with pandoc and render without a groff warning;
# strata(1) names every verb and sub-verb `strata --help` lists and every serve option; strata-targets(5)
# describes every target `strata serve --help-targets` knows.
source "$(dirname "$0")/functions.sh"
requires pandoc groff man
M=$STRATA_SRC/docs/man
for page in strata.1 strata-targets.5; do
  pandoc -s -t man "$M/$page.md" -o "$WORK/$page" || die "pandoc $page"
  warn=$(LC_ALL=C groff -ww -z -man "$WORK/$page" 2>&1) || die "groff $page: $warn"
  [ -z "$warn" ] || die "groff warns on $page: $warn"
  MANWIDTH=100 man -l "$WORK/$page" 2>/dev/null | col -bx >"$WORK/$page.txt"
  [ -s "$WORK/$page.txt" ] || die "man -l $page rendered nothing"
done
T=$WORK/strata.1.txt
flat=$(tr -s ' \n' '  ' <"$T")   # the page as one line: an entry may wrap
verbs() { "$STRATA" "$@" --help | sed -n '/^Subcommands:/,$p' | sed -nE 's/^  ([a-z-]+) .*/\1/p'; }
all=$(verbs) || die "strata --help failed"
[ "$(wc -w <<<"$all")" -ge 15 ] || die "strata --help lists too few verbs: $all"
for v in $all; do
  # An entry's term line (indented 7; descriptions are indented more) names it.
  grep -qE "^ {7}([^ ].*[ ,])?$v( |,|$)" "$T" || die "strata(1) lacks the verb $v"
  for s in $(verbs "$v"); do
    grep -qE "\b$v $s\b" <<<"$flat" || die "strata(1) lacks '$v $s'"
  done
done
opts=$("$STRATA" serve --help | grep -oE -- '--[a-z][a-z-]+' | sort -u) || die "serve --help failed"
[ "$(wc -w <<<"$opts")" -ge 20 ] || die "serve --help lists too few options: $opts"
for o in $opts; do
  [ "$o" = --help ] && continue
  grep -qF -- "$o" "$T" || die "strata(1) lacks the serve option $o"
done
targets=$("$STRATA" serve --help-targets | grep -oE '^[a-z]+') || die "--help-targets failed"
[ "$(wc -w <<<"$targets")" -ge 9 ] || die "too few targets: $targets"
for t in $targets; do
  grep -qE "^ {7}$t( |$)" "$WORK/strata-targets.5.txt" || die "strata-targets(5) lacks the target $t"
done
grep -q 'strata-targets(5)' "$T" || die "strata(1) does not point at strata-targets(5)"
