#!/usr/bin/env bash
# Benchmark: the sidecar in front of the Bedrock emulator versus the emulator called directly, in
# one run. The measured server is pinned to core 0, wrk to core 1 (with the emulator, when the
# sidecar is measured). Prints requests/s and latency p50/p99 at 1 and 16 connections (median of
# RUNS runs), the sidecar's RSS idle and under load, and its time to ready.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
scripts/install-deps.sh >/dev/null
cargo build --release --locked -q -p e2e --bin bedrock-emulator -p ai-sidecar --bin ai-sidecar
emulator_bin="$CARGO_TARGET_DIR/release/bedrock-emulator"
sidecar_bin="$CARGO_TARGET_DIR/release/ai-sidecar"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_http() { for _ in $(seq 400); do curl -s -o /dev/null "$1" && return 0; sleep 0.005; done; return 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }
rss_mib() { awk -v k="$2" '$1 == k":" {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# Measures URL with the wrk script $2 at $3 connections; prints "rps p50 p99".
measure() {
  local rps=() p50=() p99=() out
  for _ in $(seq "$RUNS"); do
    out=$(taskset -c 1 wrk -t1 -c"$3" -d"${SECONDS_PER_RUN}s" --latency -s "$2" "$1")
    if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers while measuring $1:" >&2; echo "$out" >&2; exit 1; fi
    rps+=("$(awk '/Requests\/sec/ {print $2}' <<<"$out")")
    p50+=("$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)")
    p99+=("$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)")
  done
  echo "$(printf '%s\n' "${rps[@]}" | median) $(printf '%s\n' "${p50[@]}" | median) $(printf '%s\n' "${p99[@]}" | median)"
}

# The emulator, on core 0 for the direct measurement.
eport=$(free_port)
taskset -c 0 "$emulator_bin" --listen "127.0.0.1:$eport" >/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$eport/_emulator/requests"
"$cache/venv/bin/python" e2e/bench/sign_converse.py "http://127.0.0.1:$eport" anthropic.claude-haiku-4-5-20251001-v1:0 "$work/direct.lua"

# The sidecar: the seed's objects, limits lifted so the benchmark measures the path, not the limiter.
cat manifests/samples/guardrailpolicy.yaml <(echo ---) manifests/samples/modelendpoint.yaml \
  | sed -e '/irsaRoleArn/d' -e 's/requestsPerMinute: 60/requestsPerMinute: 100000000/' \
        -e 's/daily: "10.00"/daily: "1000000000"/' -e 's/monthly: "200.00"/monthly: "1000000000"/' >"$work/sidecar.yaml"
sport=$(free_port); aport=$(free_port)
start_ns=$(date +%s%N)
AI_SIDECAR_NAMESPACE=ai-workloads AI_SIDECAR_LISTEN="127.0.0.1:$sport" AI_SIDECAR_ADMIN_LISTEN="127.0.0.1:$aport" \
  AI_SIDECAR_LOG=warn AWS_ENDPOINT_URL="http://127.0.0.1:$eport" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY \
  taskset -c 0 "$sidecar_bin" --standalone --config "$work/sidecar.yaml" & spid=$!; pids+=($spid)
wait_http "http://127.0.0.1:$aport/readyz"
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
idle_rss=$(rss_mib "$spid" VmRSS)
cat >"$work/sidecar.lua" <<LUA
wrk.method = "POST"
wrk.path = "/invoke/ai-workloads/claude-haiku"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages":[{"role":"user","content":"Explain Kubernetes operators in two sentences."}],"maxTokens":256}'
LUA
curl -sf -X POST -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"warm up"}]}' "http://127.0.0.1:$sport/invoke/ai-workloads/claude-haiku" >/dev/null

echo "ai-sidecar benchmark: /invoke (seed body, seed guardrail) vs signed Converse straight to the emulator"
echo "machine: $(nproc) cores, $(uname -m); runs: $RUNS x ${SECONDS_PER_RUN}s, median; server on core 0, wrk on core 1"
printf '%-26s %6s %12s %10s %10s\n' target conns requests/s p50_ms p99_ms
for conns in 1 16; do
  read -r drps dp50 dp99 < <(measure "http://127.0.0.1:$eport" "$work/direct.lua" "$conns")
  # The emulator moves to core 1 (with wrk) so the sidecar has core 0 to itself.
  taskset -a -p -c 1 "${pids[0]}" >/dev/null
  read -r srps sp50 sp99 < <(measure "http://127.0.0.1:$sport" "$work/sidecar.lua" "$conns")
  taskset -a -p -c 0 "${pids[0]}" >/dev/null
  printf '%-26s %6s %12s %10s %10s\n' "emulator direct" "$conns" "$drps" "$dp50" "$dp99"
  printf '%-26s %6s %12s %10s %10s\n' "sidecar -> emulator" "$conns" "$srps" "$sp50" "$sp99"
  printf '%-26s %6s %12s %10s %10s\n' "added by the sidecar" "$conns" "" "$(awk -v a="$sp50" -v b="$dp50" 'BEGIN{printf "%+.3f", a-b}')" "$(awk -v a="$sp99" -v b="$dp99" 'BEGIN{printf "%+.3f", a-b}')"
done
echo "sidecar RSS: idle ${idle_rss} MiB, peak under load $(rss_mib "$spid" VmHWM) MiB; ready ${ready_ms} ms after start"
