#!/bin/bash
# table target errors (missing file, directory, offset beyond EOF, file too small, unknown option, extra argument, bad offset, linear to an undefined device, direct=on unaligned): serve exits non-zero, names file:line, target, field and reason, and serves nothing.
. "$(dirname "$0")/functions.sh"

F=$WORK/f.img
truncate -s 1M "$F"
mkdir "$WORK/dir"
md5_before=$(md5sum <"$F")

bad_table missing-file "0 8 zero\n8 8 file $WORK/missing.img 0\n" \
  "@CONF@:2: file:" "$WORK/missing.img" "No such file or directory"
bad_table directory "0 8 file $WORK/dir 0\n" \
  "@CONF@:1: file:" "$WORK/dir" "not a regular file or block device"
bad_table offset-beyond-eof "0 8 file $F 2000000\n" \
  "@CONF@:1: file:" "offset 2000000 is beyond the end" "1048576 bytes"
bad_table file-too-small "0 4096 file $F 0\n" \
  "@CONF@:1: file:" "file too small: need 2097152 bytes from offset 0, file has 1048576"
bad_table file-too-small-at-offset "0 2048 file $F 4096\n" \
  "@CONF@:1: file:" "file too small: need 1048576 bytes from offset 4096, file has 1048576"
bad_table unknown-option "0 8 file $F 0 dirct=on\n" \
  "@CONF@:1: file:" "unknown option 'dirct'"
bad_table bad-option-value "0 8 file $F 0 direct=maybe\n" \
  "@CONF@:1: file:" "option direct" "'maybe' is not on or off"
bad_table extra-argument "0 8 file $F 0 extra\n" \
  "@CONF@:1: file:" "argument 3" "unexpected 'extra'"
bad_table extra-argument-after-ro "0 8 file $F 0 ro extra\n" \
  "@CONF@:1: file:" "argument 4" "unexpected 'extra'"
bad_table missing-offset "0 8 file $F\n" \
  "@CONF@:1: file:" "argument 2 (offset) is missing"
bad_table offset-not-a-number "0 8 file $F 4k\n" \
  "@CONF@:1: file:" "argument 2 (offset)" "'4k' is not a non-negative integer"
bad_table direct-unaligned-offset "0 8 file $F 512 direct=on\n" \
  "@CONF@:1: file:" "direct=on" "offset (512)" "multiples of 4096"
bad_table direct-unaligned-length "0 12 file $F 0 direct=on\n" \
  "@CONF@:1: file:" "direct=on" "segment length (6144)" "multiples of 4096"
bad_table zero-with-argument "0 8 zero 5\n" \
  "@CONF@:1: zero:" "unexpected '5'"
bad_table linear-undefined "[a]\n0 8 zero\n[b]\n0 8 linear nope 0\n" \
  "@CONF@:4: linear:" "argument 1 (device)" "no device named 'nope'"
bad_table linear-forward-reference "[b]\n0 8 linear a 0\n[a]\n0 8 zero\n" \
  "@CONF@:2: linear:" "argument 1 (device)" "no device named 'a'"
bad_table linear-too-small "[a]\n0 8 zero\n[b]\n0 8 linear a 4\n" \
  "@CONF@:4: linear:" "too small" "need 4096 bytes from offset 2048"
# An error on a later device: nothing of the earlier, valid ones is served.
bad_table later-device-bad "[good]\n0 8 file $F 0\n[bad]\n0 8 file $F 0 bogus=1\n" \
  "@CONF@:4: file:" "unknown option 'bogus'"

[ "$(md5sum <"$F")" = "$md5_before" ] || die "a rejected table modified the file"
echo PASS
