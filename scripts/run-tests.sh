#!/usr/bin/env bash
# Runs every test suite (Rust: unit, in-process and end-to-end; Python: independent clients) and
# ends with one line totalling all of them, e.g. "tests: 120 passed, 0 failed".
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}/venv"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$logs/cargo"
cargo_status=${PIPESTATUS[0]}

"$venv/bin/python" -m pytest -q e2e/python 2>&1 | tee "$logs/pytest"
pytest_status=${PIPESTATUS[0]}

awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
  END { print p + 0, f + 0 }' "$logs/cargo" >"$logs/cargo.sum"
awk '
  / passed| failed/ && /in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed,?$/) p += $i; if ($(i+1) ~ /^failed,?$/) f += $i } }
  END { print p + 0, f + 0 }' "$logs/pytest" >"$logs/pytest.sum"
read -r cp cf <"$logs/cargo.sum"
read -r pp pf <"$logs/pytest.sum"
echo "tests: $((cp + pp)) passed, $((cf + pf)) failed"
((cargo_status == 0 && pytest_status == 0))
