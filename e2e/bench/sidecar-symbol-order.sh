#!/usr/bin/env bash
# `make sidecar-symbol-order`: rewrites sidecar/symbol-order.txt, the functions the sidecar runs,
# which sidecar/build.rs has the linker (rust-lld) lay out first and together in the image's binary.
#
# Why: the kernel maps a program's code 64 KiB or more at a time around each page it runs. Laid out
# as the compiler leaves it, the small part of its code a sidecar runs is spread over all of it, so
# most of the binary stays resident; laid out together, only the part it runs does.
#
# How: a build with symbols (same profile, AI_SIDECAR_KEEP_SYMBOLS=1, its own target directory) runs
# under valgrind's callgrind through what a pod's sidecar does:
#  1. in a cluster: the configuration watched from the test control plane (e2e/cluster.sh) over TLS,
#     credentials by IRSA (AssumeRoleWithWebIdentity at the emulator's STS with a service account
#     token), calls of every kind, usage written to its ModelUsage, shutdown on SIGTERM;
#  2. standalone (`--standalone --config`, the benchmarks' mode): the same calls, and a few seconds
#     of concurrent load.
# Every function either run executes is listed: those only the cluster run needs, then those both
# need, then those only the standalone run needs, so that each run's code lies together; within
# each group most instructions first.
#
# Regenerate after a toolchain or dependency update, or a large change to the sidecar: symbol names
# carry hashes of their crate's version and build settings, and names that no longer exist are
# skipped silently (the binary then links partly in the default order; `make bench-sidecar` shows
# the resident code growing back). The names are those of the x86_64 build; an arm64 build finds
# none of them and links in the default order. SYMBOL_ORDER_LOG=info shows the sidecar's log.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log() { printf '[symbol-order] %s\n' "$*" >&2; }

need_commands valgrind:valgrind wrk:wrk nm:binutils
scripts/install-deps.sh >/dev/null
symbols_target="$cache/target-sidecar-symbols"
log "building the sidecar with symbols into $symbols_target and the emulator"
CARGO_TARGET_DIR=$symbols_target AI_SIDECAR_KEEP_SYMBOLS=1 \
  cargo build --profile sidecar --locked -q -p ai-sidecar --bin ai-sidecar --target "$sidecar_target"
build_release -p e2e --bin bedrock-emulator
bin="$symbols_target/$sidecar_target/sidecar/ai-sidecar"

work=$(mktemp -d)
pids=()
ns="symbol-order-$$"
started_cluster=0
e2e/cluster.sh status || started_cluster=1
kubeconfig=e2e/.run/kubeconfig
kubectl() { e2e/.bin/kubectl --kubeconfig "$kubeconfig" "$@"; }
cleanup() {
  local status=$? p
  ((status == 0)) || { log "the sidecar's log:"; grep -v '^==' "$work/valgrind.log" | tail -20 >&2 || true; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if ((started_cluster)); then
    e2e/cluster.sh down || true
  else
    delete_cluster_tenant "$ns"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs the sidecar under callgrind with the environment given as arguments, until stop_profiled.
profiled() {
  local port=$1 admin=$2
  shift 2
  env -i PATH="$PATH" AI_SIDECAR_LISTEN="127.0.0.1:$port" AI_SIDECAR_ADMIN_LISTEN="127.0.0.1:$admin" \
    AI_SIDECAR_LOG="${SYMBOL_ORDER_LOG:-warn}" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true "$@" \
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$profile" \
    "$bin" "${sidecar_args[@]}" 2>>"$work/valgrind.log" &
  sidecar_pid=$!
  pids+=("$sidecar_pid")
  # Slow under valgrind: up to a minute to be ready.
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && return 0; sleep 0.1; done
  log "the sidecar did not become ready under valgrind:"; tail -20 "$work/valgrind.log" >&2; return 1
}
stop_profiled() {
  kill -TERM "$sidecar_pid"
  wait "$sidecar_pid" || { log "the sidecar exited with $? under valgrind"; tail -20 "$work/valgrind.log" >&2; return 1; }
}
log "1/2: in a cluster, with IRSA"
e2e/cluster.sh up >&2
cluster_tenant "$ns" profile-pod "$work"
eport=$(free_port)
url="http://127.0.0.1:$eport"
"$emulator_bin" --listen "127.0.0.1:$eport" --config "$work/emulator-irsa.yaml" >"$work/emulator.log" 2>&1 & pids+=($!)
wait_http "$url/_emulator/requests"
sport=$(free_port) aport=$(free_port)
sidecar_args=() profile=callgrind.cluster
profiled "$sport" "$aport" "${tenant_env[@]}" AWS_ENDPOINT_URL="$url"
sidecar_calls "http://127.0.0.1:$sport" "$ns"
curl -sfS -o /dev/null "http://127.0.0.1:$aport/metrics"
sleep 3 # a usage report or two
stop_profiled
[[ -n $(kubectl get modelusage profile-pod.claude-haiku -n "$ns" -o jsonpath='{.status.lifetime.invocations}') ]] \
  || { log "the sidecar wrote no usage: the in-cluster run did not do what a pod does"; exit 1; }

log "2/2: standalone, with load"
# The emulator as the benchmarks run it: the static test credentials.
eport=$(free_port)
url="http://127.0.0.1:$eport"
"$emulator_bin" --listen "127.0.0.1:$eport" >"$work/emulator-standalone.log" 2>&1 & pids+=($!)
wait_http "$url/_emulator/requests"
sidecar_config "$work/sidecar.yaml"
{ echo ---; cat manifests/samples/prompttemplate.yaml; } >>"$work/sidecar.yaml"
sport=$(free_port) aport=$(free_port)
sidecar_args=(--standalone --config "$work/sidecar.yaml") profile=callgrind.standalone
profiled "$sport" "$aport" AI_SIDECAR_NAMESPACE=ai-workloads AWS_ENDPOINT_URL="$url" \
  AWS_ACCESS_KEY_ID="$test_key_id" AWS_SECRET_ACCESS_KEY="$test_secret"
sidecar_calls "http://127.0.0.1:$sport" ai-workloads
"$cache/venv/bin/python" e2e/bench/clients.py lua sidecar-invoke "http://127.0.0.1:$sport" "$work/sidecar.lua"
wrk -t1 -c16 -d3s -s "$work/sidecar.lua" "http://127.0.0.1:$sport" >/dev/null
stop_profiled

python3 e2e/bench/symbol_order.py "$bin" "$work/callgrind.cluster" "$work/callgrind.standalone" >sidecar/symbol-order.txt
log "wrote sidecar/symbol-order.txt: $(grep -vc '^#' sidecar/symbol-order.txt) functions"
