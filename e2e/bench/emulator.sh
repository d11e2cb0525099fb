#!/usr/bin/env bash
# Benchmark: non-streaming Converse through the emulator with SigV4 verification on.
# The emulator is pinned to core 0 (a single-threaded runtime), wrk to core 1. Prints requests/s
# and latency for 1 and 16 connections, the median of RUNS runs of SECONDS seconds each, and RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
scripts/install-deps.sh >/dev/null
cargo build --release --locked -q -p e2e --bin bedrock-emulator
bin="$CARGO_TARGET_DIR/release/bedrock-emulator"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 "$bin" --listen "127.0.0.1:$port" >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/_emulator/requests" && break; sleep 0.1; done

lua=$(mktemp --suffix=.lua)
"$cache/venv/bin/python" e2e/bench/sign_converse.py "http://127.0.0.1:$port" anthropic.claude-haiku-4-5-20251001-v1:0 "$lua"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }

echo "bedrock-emulator benchmark: Converse, SigV4 verified, emulator on 1 core ($(nproc) cores, $(uname -m))"
printf '%-12s %12s %10s %10s %8s\n' connections requests/s p50_ms p99_ms non2xx
for conns in 1 16; do
  rps=(); p50=(); p99=(); bad=0
  for _ in $(seq "$RUNS"); do
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN}s" --latency -s "$lua" "http://127.0.0.1:$port")
    rps+=("$(awk '/Requests\/sec/ {print $2}' <<<"$out")")
    p50+=("$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)")
    p99+=("$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); bad=$((bad + ${non2xx:-0}))
  done
  printf '%-12s %12s %10s %10s %8s\n' "$conns" "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)" "$bad"
done
echo "emulator RSS after the runs: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$pid/status)"
