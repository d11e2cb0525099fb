#!/usr/bin/env bash
# Runs `cargo test` with the given arguments and ends with one line totalling every test binary,
# e.g. "tests: 42 passed, 0 failed" (cargo's own last line is that of its last, often empty, target).
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
