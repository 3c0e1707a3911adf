#!/usr/bin/env bash
# test_config_base.sh: hax-train refuses a config whose base is missing, a
# cycle or too deep with one line naming the file and line, and exit status
# 1; a based config with a bad override is refused the same way.
# (tests/test_config.c covers how bases resolve and every message.)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
T=$BIN/hax-train
tmp=$(mktemp -d /tmp/hax_test_config_base.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# refused NAME MESSAGE CMD...: exit status 1 and stderr exactly "hax: MESSAGE"
refused() {
    local name=$1 want="hax: $2" err rc; shift 2
    err=$("$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -eq 1 ] && [ "$err" = "$want" ]; then ok "$name"
    else fail "$name (exit $rc, stderr: $err; expected: $want)"; fi
}

printf 'base: nope.yaml\n' >"$tmp/x.yaml"
refused "missing base" "$tmp/x.yaml:1: base: cannot read 'nope.yaml': No such file or directory" "$T" "$tmp/x.yaml"
printf 'base: b.yaml\n' >"$tmp/a.yaml"
printf 'train:\n  lr: 0.1\nbase: a.yaml\n' >"$tmp/b.yaml"
refused "include cycle" "$tmp/b.yaml:3: base: include cycle through 'a.yaml'" "$T" "$tmp/a.yaml"
for i in 0 1 2 3 4 5 6 7 8; do printf 'base: d%d.yaml\n' $((i + 1)) >"$tmp/d$i.yaml"; done
printf 'train:\n  seed: 2\n' >"$tmp/d9.yaml"
refused "9 nested bases" "$tmp/d8.yaml:1: base: expected at most 8 nested base files, found more at 'd9.yaml'" \
    "$T" "$tmp/d0.yaml"
printf 'base: [a.yaml]\n' >"$tmp/list.yaml"
refused "base not a file name" "$tmp/list.yaml:1: base: expected a file name, found a list" "$T" "$tmp/list.yaml"
refused "based config, bad override" "override 'train.lr=abc': expected a number, found 'abc'" \
    "$T" configs/mamba2_hax.yaml train.lr=abc
finish
