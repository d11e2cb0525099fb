#!/usr/bin/env bash
# Benchmark: the sidecar in front of the Bedrock emulator versus the emulator called directly, in
# one run, with nginx passing the same call through as the floor of any extra hop. Two cores hold
# three processes, so each proxy is measured in both placements: on core 0 with the emulator moved
# to wrk's core 1 (the emulator is also measured there, called directly with core 0 idle: the floor
# placed as that proxied call is), and beside wrk on core 1 with the emulator on core 0, where the
# direct call has it (the sidecar shares its app's cores; what differs from the direct call is the
# hop alone). Prints requests/s and latency p50/p99 at 1 and 16 connections (median of RUNS runs,
# all taking turns), the sidecar's RSS idle and under load, and its time to ready. The latencies are
# measured twice: with the cores as they are, and kept awake (see keep_cores_awake in lib.sh).
# wrk keeps its connections busy (closed loop), so at 16 connections every system runs flat out and
# its latency is mostly its own queue; the published figures of sidecars and gateways (Istio at
# 1,000 requests/s, TensorZero at 10,000) are at a fixed rate instead. So the same six are also
# measured at the fixed rates of RATES over 16 connections, with oha (open loop; see oha_once).
# Then its RSS as a pod runs it, in the test control plane (e2e/cluster.sh: started and stopped
# here unless it is up): configuration watched over TLS, credentials by IRSA, usage reported to its
# ModelUsage. BENCH_CLUSTER=0 skips that part.
# The sidecar measured is the image's build (static, musl, the `sidecar` profile).
# `make bench` (compare.sh) measures the same and more, side by side with LiteLLM.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
# The fixed rates the open-loop part sends at (requests/s, over 16 connections).
RATES=${RATES:-1000 10000}

need_commands wrk:wrk nginx:nginx-light
scripts/install-deps.sh >/dev/null
need_oha  # after install-deps.sh, which checks for cargo and installs the C toolchain oha needs
build_sidecar
build_release -p e2e --bin bedrock-emulator
work=$(mktemp -d)
pids=()
spinners=()
tenant=""
started_cluster=0
cleanup() {
  kill "${pids[@]}" "${spinners[@]}" 2>/dev/null || true
  if ((started_cluster)); then e2e/cluster.sh down || true; elif [[ -n $tenant ]]; then delete_cluster_tenant "$tenant"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# One run against base URL $1 of request $2 (direct, sidecar) at load $3, by the load generator in
# $load: wrk at $3 connections, or oha at 16 connections and $3 requests/s. Prints "rps p50 p99".
measure_once() {
  local out f
  if [[ $load == rate ]]; then
    oha_once "$1" "$work/$2.args" 16 "$3" "$SECONDS_PER_RUN"
    return
  fi
  out=$(wrk_once "$1" "$work/$2.lua" "$3" "$SECONDS_PER_RUN") || return 1
  read -r -a f <<<"$(wrk_figures "$out")"
  echo "${f[0]} ${f[2]} ${f[5]}"
}
# (Re)writes the direct call for wrk and oha: a Converse call signed now. A signature is good for
# 5 minutes (the emulator, like AWS, refuses older ones) and the whole comparison takes longer.
sign_direct() {
  "$cache/venv/bin/python" e2e/bench/clients.py lua direct "http://127.0.0.1:$eport" "$work/direct.lua"
  "$cache/venv/bin/python" e2e/bench/clients.py oha direct "http://127.0.0.1:$eport" "$work/direct.args" "$work/direct.body"
}
# Prints the median of each column of "rps p50 p99" lines on stdin.
medians() {
  local lines i
  lines=$(cat)
  for i in 1 2 3; do printf '%s ' "$(awk -v i="$i" '{print $i}' <<<"$lines" | median)"; done
  echo
}

# The emulator, on core 0 for the direct measurement.
eport=$(free_port)
taskset -c 0 "$emulator_bin" --listen "127.0.0.1:$eport" >/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$eport/_emulator/requests"

# The floor of any extra hop: nginx passing the signed Converse through to the emulator (one
# process, kept-alive upstream connections, no buffering), on core 0 like the sidecar.
nport=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream emulator { server 127.0.0.1:$eport; keepalive 32; }
  server {
    listen 127.0.0.1:$nport;
    location / {
      proxy_pass http://emulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The request is signed for the emulator's address.
      proxy_set_header Host 127.0.0.1:$eport;
      proxy_buffering off;
    }
  }
}
NGINX
taskset -c 0 nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx.conf" & pids+=($!)
wait_http "http://127.0.0.1:$nport/_emulator/requests"

# The sidecar: the seed's objects, limits lifted so the benchmark measures the path, not the limiter.
sidecar_config "$work/sidecar.yaml"
sport=$(free_port); aport=$(free_port)
sidecar_command "$work/sidecar.yaml" "$sport" "$aport" "http://127.0.0.1:$eport"
start_ns=$(date +%s%N)
taskset -c 0 "${sidecar_cmd[@]}" & spid=$!; pids+=("$spid")
wait_http "http://127.0.0.1:$aport/readyz"
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
idle_rss=$(rss_mib "$spid" VmRSS)
"$cache/venv/bin/python" e2e/bench/clients.py lua sidecar-invoke "http://127.0.0.1:$sport" "$work/sidecar.lua"
"$cache/venv/bin/python" e2e/bench/clients.py oha sidecar-invoke "http://127.0.0.1:$sport" "$work/sidecar.args" "$work/sidecar.body"
curl -sf -X POST -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"warm up"}]}' "http://127.0.0.1:$sport/invoke/ai-workloads/claude-haiku" >/dev/null
# Idle again, but with the request path's code mapped and its buffers allocated once.
sleep 0.5
served_rss=$(rss_mib "$spid" VmRSS)

echo "ai-sidecar benchmark: /invoke (seed body, seed guardrail) vs signed Converse straight to the emulator, and through nginx"
echo "machine: $(nproc) cores, $(uname -m); runs: $RUNS x ${SECONDS_PER_RUN}s, median; server on core 0, wrk or oha on core 1 (proxies beside wrk: on core 1 too)"
# All six at each load of $2 (connections for wrk, or requests/s for oha when $1 is `rate`; see
# measure_once); prints one table. They take turns run by run, so a noisy moment of the machine
# lands on all of them rather than on one. "added" is over the emulator on its own core; "over
# wrk's core" (or oha's) over the emulator placed as it is while a proxy on core 0 is measured;
# "beside wrk" is a proxy on core 1, over the direct call placed exactly as it is.
compare() {
  local load=$1 loads=$2 client=wrk at direct shared hop proxied hop_beside proxied_beside
  local drps dp50 dp99 erps ep50 ep99 nrps np50 np99 srps sp50 sp99 brps bp50 bp99 crps cp50 cp99
  if [[ $load == rate ]]; then
    client=oha; row target sent/s requests/s p50_ms p99_ms
  else
    row target conns requests/s p50_ms p99_ms
  fi
  for at in $loads; do
    direct=() shared=() hop=() proxied=() hop_beside=() proxied_beside=()
    for _ in $(seq "$RUNS"); do
      sign_direct
      direct+=("$(measure_once "http://127.0.0.1:$eport" direct "$at")")
      # nginx and the sidecar beside the load generator on core 1; the emulator stays on core 0.
      pin_tree "${pids[1]}" 1; pin_tree "$spid" 1
      hop_beside+=("$(measure_once "http://127.0.0.1:$nport" direct "$at")")
      proxied_beside+=("$(measure_once "http://127.0.0.1:$sport" sidecar "$at")")
      pin_tree "${pids[1]}" 0; pin_tree "$spid" 0
      # The emulator moves to core 1 (with the load generator): nginx and the sidecar get core 0.
      pin_tree "${pids[0]}" 1
      # The same call with the emulator where it is while a proxy is measured: nothing on core 0.
      shared+=("$(measure_once "http://127.0.0.1:$eport" direct "$at")")
      hop+=("$(measure_once "http://127.0.0.1:$nport" direct "$at")")
      proxied+=("$(measure_once "http://127.0.0.1:$sport" sidecar "$at")")
      pin_tree "${pids[0]}" 0
    done
    read -r drps dp50 dp99 <<<"$(printf '%s\n' "${direct[@]}" | medians)"
    read -r erps ep50 ep99 <<<"$(printf '%s\n' "${shared[@]}" | medians)"
    read -r nrps np50 np99 <<<"$(printf '%s\n' "${hop[@]}" | medians)"
    read -r srps sp50 sp99 <<<"$(printf '%s\n' "${proxied[@]}" | medians)"
    read -r brps bp50 bp99 <<<"$(printf '%s\n' "${hop_beside[@]}" | medians)"
    read -r crps cp50 cp99 <<<"$(printf '%s\n' "${proxied_beside[@]}" | medians)"
    row "emulator direct" "$at" "$drps" "$dp50" "$dp99"
    row "emulator on $client's core" "$at" "$erps" "$ep50" "$ep99"
    row "nginx -> emulator" "$at" "$nrps" "$np50" "$np99"
    row "sidecar -> emulator" "$at" "$srps" "$sp50" "$sp99"
    row "nginx beside $client" "$at" "$brps" "$bp50" "$bp99"
    row "sidecar beside $client" "$at" "$crps" "$cp50" "$cp99"
    row "added by nginx" "$at" "" "$(added "$np50" "$dp50")" "$(added "$np99" "$dp99")"
    row "added by the sidecar" "$at" "" "$(added "$sp50" "$dp50")" "$(added "$sp99" "$dp99")"
    row "nginx over $client's core" "$at" "" "$(added "$np50" "$ep50")" "$(added "$np99" "$ep99")"
    row "sidecar over $client's core" "$at" "" "$(added "$sp50" "$ep50")" "$(added "$sp99" "$ep99")"
    row "added by nginx beside $client" "$at" "" "$(added "$bp50" "$dp50")" "$(added "$bp99" "$dp99")"
    row "added by the sidecar beside $client" "$at" "" "$(added "$cp50" "$dp50")" "$(added "$cp99" "$dp99")"
  done
}
row() { printf '%-32s %6s %12s %10s %10s\n' "$@"; }
added() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%+.3f", a-b}'; }
echo "cores as they are (an idle vCPU halts; waking it is part of every hop):"
compare conns "1 16"
echo "at a fixed rate, 16 connections, oha instead of wrk (open loop; cores as they are):"
compare rate "$RATES"
keep_cores_awake
echo "cores kept awake (SCHED_IDLE spinners on every core; all alike):"
compare conns "1 16"
stop_keeping_awake
sleep 1
echo "sidecar RSS: idle ${idle_rss} MiB from start, ${served_rss} MiB after one request, $(rss_mib "$spid" VmRSS) MiB after the load; peak $(rss_mib "$spid" VmHWM) MiB; ready ${ready_ms} ms after start"

[[ ${BENCH_CLUSTER:-1} == 1 ]] || exit 0
e2e/cluster.sh status || started_cluster=1
e2e/cluster.sh up >&2
tenant="bench-sidecar-$$"
cluster_tenant "$tenant" bench-pod "$work"
iport=$(free_port)
"$emulator_bin" --listen "127.0.0.1:$iport" --config "$work/emulator-irsa.yaml" >/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$iport/_emulator/requests"
sport=$(free_port); aport=$(free_port)
env -i AI_SIDECAR_LISTEN="127.0.0.1:$sport" AI_SIDECAR_ADMIN_LISTEN="127.0.0.1:$aport" AI_SIDECAR_LOG=warn \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL="http://127.0.0.1:$iport" "${tenant_env[@]}" \
  "$sidecar_bin" & cpid=$!; pids+=("$cpid")
wait_http "http://127.0.0.1:$aport/readyz"
sleep 0.5
cluster_ready_rss=$(rss_mib "$cpid" VmRSS)
sidecar_calls "http://127.0.0.1:$sport" "$tenant"
sleep 3 # a usage report or two (every second here)
used=$(e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig get modelusage bench-pod.claude-haiku -n "$tenant" -o jsonpath='{.status.lifetime.invocations}')
[[ -n $used ]] || { echo "the sidecar in the cluster reported no usage to its ModelUsage" >&2; exit 1; }
echo "sidecar RSS in a cluster (watches over TLS, IRSA, every kind of call, $used reported to its ModelUsage): ${cluster_ready_rss} MiB ready, $(rss_mib "$cpid" VmRSS) MiB after calls and usage reports"
