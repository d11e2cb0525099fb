#!/usr/bin/env bash
# Benchmark: non-streaming Converse through the emulator with SigV4 verification on.
# The emulator is pinned to core 0 (a single-threaded runtime), wrk to core 1. Prints requests/s
# and latency for 1 and 16 connections, the median of RUNS runs of SECONDS_PER_RUN seconds each,
# and RSS.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"

need_commands wrk:wrk
scripts/install-deps.sh >/dev/null
build_release -p e2e --bin bedrock-emulator

port=$(free_port)
taskset -c 0 "$emulator_bin" --listen "127.0.0.1:$port" >/dev/null &
pid=$!
lua=$(mktemp --suffix=.lua)
trap 'kill $pid 2>/dev/null || true; rm -f "$lua"' EXIT
wait_http "http://127.0.0.1:$port/_emulator/requests"
"$cache/venv/bin/python" e2e/bench/clients.py lua direct "http://127.0.0.1:$port" "$lua"

echo "bedrock-emulator benchmark: Converse, SigV4 verified, emulator on 1 core ($(nproc) cores, $(uname -m))"
printf '%-12s %12s %10s %10s\n' connections requests/s p50_ms p99_ms
for conns in 1 16; do
  rps=(); p50=(); p99=()
  for _ in $(seq "$RUNS"); do
    out=$(wrk_once "http://127.0.0.1:$port" "$lua" "$conns" "$SECONDS_PER_RUN")
    read -r -a f <<<"$(wrk_figures "$out")"
    rps+=("${f[0]}"); p50+=("${f[2]}"); p99+=("${f[5]}")
  done
  printf '%-12s %12s %10s %10s\n' "$conns" "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)"
done
echo "emulator RSS after the runs: $(rss_mib $pid VmRSS) MiB"
