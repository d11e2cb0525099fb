#!/usr/bin/env bash
# Runs every test suite (Rust: unit, in-process and end-to-end; Python: independent clients) and
# ends with each phase's time and one line totalling all of them, e.g. "tests: 120 passed, 0 failed".
#
# The real node's suites (e2e/python/test_node*.py) mostly wait on its kubelet (a token rotation
# alone takes 8 minutes), and the Rust suites on their own control plane: the node's runs beside
# them. Everything is built first, so the node's suite needs no cargo lock while `cargo test`
# holds it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
venv="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}/venv"
logs=$(mktemp -d)
node_pid=
cleanup() {
  [[ -n $node_pid ]] && kill "$node_pid" 2>/dev/null
  rm -rf "$logs"
}
trap cleanup EXIT
started=$SECONDS
phase() { printf '[tests] %s: %d min %02d s\n' "$1" $(($2 / 60)) $(($2 % 60)) >>"$logs/times"; }

cargo test --workspace --locked --no-run 2>&1 | tail -n 3
PYTHON="$venv/bin/python" e2e/node/images.sh "$logs/images"
scripts/go-tool.sh helm >/dev/null && scripts/go-tool.sh actionlint >/dev/null
e2e/otelcol/build.sh >/dev/null
built=$SECONDS
phase "build" $((built - started))

# The real node's suites: the operator installed by kustomize, then by Helm, each on a fresh node.
node_suites=(e2e/python/test_node.py e2e/python/test_node_helm.py)
K8S_AI_NODE_IMAGES="$logs/images" "$venv/bin/python" -m pytest -q "${node_suites[@]}" >"$logs/node" 2>&1 &
node_pid=$!

cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$logs/cargo"
cargo_status=${PIPESTATUS[0]}
phase "Rust suites" $((SECONDS - built))

python_started=$SECONDS
K8S_AI_NODE_IMAGES="$logs/images" "$venv/bin/python" -m pytest -q e2e/python "${node_suites[@]/#/--ignore=}" 2>&1 | tee "$logs/pytest"
pytest_status=${PIPESTATUS[0]}
phase "Python suites" $((SECONDS - python_started))

wait "$node_pid"
node_status=$?
node_pid=
echo "== the real node's suite (ran beside the others)"
cat "$logs/node"
node_seconds=$(awk '/ in [0-9.]+s/ { match($0, / in [0-9.]+s/); print int(substr($0, RSTART + 4)) }' "$logs/node" | tail -n 1)
phase "real node suite (beside the others)" "${node_seconds:-0}"

awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
  END { print p + 0, f + 0 }' "$logs/cargo" >"$logs/cargo.sum"
awk '
  / passed| failed/ && /in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed,?$/) p += $i; if ($(i+1) ~ /^failed,?$/) f += $i } }
  END { print p + 0, f + 0 }' "$logs/pytest" "$logs/node" >"$logs/pytest.sum"
read -r cp cf <"$logs/cargo.sum"
read -r pp pf <"$logs/pytest.sum"
phase "all" $((SECONDS - started))
cat "$logs/times"
echo "tests: $((cp + pp)) passed, $((cf + pf)) failed"
((cargo_status == 0 && pytest_status == 0 && node_status == 0))
