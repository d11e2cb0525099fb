#!/usr/bin/env bash
# `make bench`: the sidecar side by side with LiteLLM's proxy, both in front of the Bedrock
# emulator, in one run on this machine, then docs/benchmarks.md and its plot (e2e/bench/report.py).
#
# Systems (targets): the emulator called directly (the floor: signed Converse), the sidecar's
# /invoke and /v1/chat/completions, LiteLLM's /v1/chat/completions and its Bedrock pass-through
# /bedrock/model/{model}/converse (the same Converse body as the floor). The requests are defined
# once, in clients.py. The server measured is pinned to core 0; wrk, the other clients and the
# emulator (when a proxy is measured) to core 1; idle servers wait on core 1 too. The emulator is
# also measured on core 1 with core 0 idle (direct-shared): where it is while a proxy is measured.
# And /invoke once more with the sidecar beside wrk on core 1 and the emulator alone on core 0
# (sidecar-beside): where the direct call has it, as a sidecar shares its app's cores.
#
# Figures: requests/s and latency percentiles (wrk) at 1 and 16 connections, RUNS runs of
# SECONDS_PER_RUN seconds, interleaved across the systems; p50 and p99 at fixed rates over 16
# connections (oha, open loop): RATE_ALL requests/s for every system (one that LiteLLM's single
# worker can serve) and RATE for the emulator and the sidecar; the server's CPU time per request and
# both cores' load during each run; time to first token and to the end of a streamed answer of
# STREAM_TOKENS tokens (TTFT_SAMPLES samples); cold start to the first successful answer (RUNS
# starts); RSS idle and peak, summed over the server's process tree. Raw figures go to a TSV,
# kept in ~/.cache/k8s-ai-operator/bench-last (with the logs too when BENCH_KEEP=1); the page is
# written from it.
#
# Other benchmarks join the page through a hook: for NAME in operator, webhook, ledger, tuning, if
# e2e/bench/NAME.sh exists it runs with BENCH_FORMAT=markdown (and RUNS, SECONDS_PER_RUN) and its
# standard output, Markdown (a table and its notes), becomes the page's section NAME.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
TTFT_SAMPLES=${TTFT_SAMPLES:-20}
RATE_ALL=${RATE_ALL:-50}
RATE=${RATE:-1000}
STREAM_TOKENS=${STREAM_TOKENS:-200}
TOKEN_MS=${TOKEN_MS:-1}
PAGE=${BENCH_PAGE:-docs/benchmarks.md}
started=$(date +%s)

log() { printf '[bench] %s\n' "$*" >&2; }
need_commands wrk:wrk taskset:util-linux curl:curl python3:python3 lscpu:util-linux
scripts/install-deps.sh >/dev/null   # toolchain, the project venv (botocore signs the floor's requests)
need_oha                             # its build needs what install-deps.sh checks and installs
py="$cache/venv/bin/python"
ensure_venv "$cache/bench-venv" e2e/bench/requirements.txt
litellm_venv="$cache/litellm-venv"
ensure_venv "$litellm_venv" e2e/bench/litellm-requirements.txt
log "building the release binaries"
build_sidecar
build_release -p e2e --bin bedrock-emulator

work=$(mktemp -d)
results="$work/results.tsv"
declare -A pid=()
cleanup() {
  local p
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ ${BENCH_KEEP:-} == 1 ]]; then log "logs and raw figures kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }
meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$results"; }
clients() { taskset -c 1 "$py" e2e/bench/clients.py "$@"; }

# The emulator everything calls, idle on core 1 until measured.
eport=$(free_port)
emulator_url="http://127.0.0.1:$eport"
taskset -c 1 "$emulator_bin" --listen "127.0.0.1:$eport" >"$work/emulator.log" 2>&1 & pid[emulator]=$!
wait_http "$emulator_url/_emulator/requests"

# LiteLLM: one worker, the model through the Converse route, pointed at the emulator with static
# keys. The pass-through needs a second deployment without `converse/` in its model: with it,
# LiteLLM forwards /bedrock/model/NAME/converse to /model/converse/MODEL/converse, which Bedrock
# does not serve. REPEATED_STREAMING_CHUNK_LIMIT: LiteLLM aborts a stream after 100 identical
# chunks, and the emulator's filler answer is one token repeated.
litellm_config() {
  local name model
  echo "model_list:"
  for name in claude-haiku claude-haiku-passthrough; do
    model="bedrock/converse/$model_id"; [[ $name == claude-haiku ]] || model="bedrock/$model_id"
    cat <<YAML
  - model_name: $name
    litellm_params:
      model: $model
      aws_bedrock_runtime_endpoint: $emulator_url
      aws_access_key_id: $test_key_id
      aws_secret_access_key: $test_secret
      aws_region_name: us-east-1
YAML
  done
}
litellm_config >"$work/litellm.yaml"
litellm_command() {
  litellm_cmd=(env LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true LITELLM_LOCAL_MODEL_COST_MAP=True
    LITELLM_LOG=WARNING REPEATED_STREAMING_CHUNK_LIMIT=1000000
    "$litellm_venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$1" --num_workers 1)
}
sidecar_config "$work/sidecar.yaml"

# Cold start: from exec to the first 2xx answer to the benchmark's request, the server on core 0.
log "cold starts ($RUNS of each server)"
cport=$(free_port); caport=$(free_port)
coldstart() {
  local server=$1 target=$2; shift 2
  local ms
  ms=$(clients coldstart "$target" "http://127.0.0.1:$cport" "$RUNS" "$work/coldstart-$server.log" -- taskset -c 0 "$@")
  for v in $ms; do record coldstart_ms "$server" - "$v"; done
}
coldstart emulator direct "$emulator_bin" --listen "127.0.0.1:$cport"
sidecar_command "$work/sidecar.yaml" "$cport" "$caport" "$emulator_url"
coldstart sidecar sidecar-invoke "${sidecar_cmd[@]}"
litellm_command "$cport"
coldstart litellm litellm-openai "${litellm_cmd[@]}"

# The servers measured, idle on core 1 until their turn.
sport=$(free_port); saport=$(free_port); lport=$(free_port)
sidecar_command "$work/sidecar.yaml" "$sport" "$saport" "$emulator_url"
taskset -c 1 "${sidecar_cmd[@]}" >"$work/sidecar.log" 2>&1 & pid[sidecar]=$!
litellm_command "$lport"
taskset -c 1 "${litellm_cmd[@]}" >"$work/litellm.log" 2>&1 & pid[litellm]=$!
wait_http "http://127.0.0.1:$saport/readyz"
for _ in $(seq 1800); do curl -sf -o /dev/null "http://127.0.0.1:$lport/health/liveliness" && break; sleep 0.1; done

targets=(direct direct-shared sidecar-invoke sidecar-beside sidecar-openai litellm-bedrock litellm-openai)
declare -A server=([direct]=emulator [direct-shared]=emulator [sidecar-invoke]=sidecar [sidecar-beside]=sidecar [sidecar-openai]=sidecar [litellm-bedrock]=litellm [litellm-openai]=litellm)
declare -A base=([emulator]="$emulator_url" [sidecar]="http://127.0.0.1:$sport" [litellm]="http://127.0.0.1:$lport")
# The request clients.py makes for target T (the floor's and /invoke's are measured twice).
request_of() {
  case $1 in direct-shared) echo direct ;; sidecar-beside) echo sidecar-invoke ;; *) echo "$1" ;; esac
}
# (Re)writes target T's wrk script. The floor's is signed, and a signature is good for 5 minutes
# (the emulator, like AWS, refuses older ones): it is signed again before each of its runs.
write_lua() { clients lua "$(request_of "$1")" "${base[${server[$1]}]}" "$work/$1.lua"; }
# The same for oha (the fixed-rate runs): its arguments and body.
write_oha() { clients oha "$(request_of "$1")" "${base[${server[$1]}]}" "$work/$1.args" "$work/$1.body"; }
for t in "${targets[@]}"; do write_lua "$t"; write_oha "$t"; done
# The measured server alone on core 0, everything else on core 1 (`place none`: all on core 1).
place() { local s; for s in "${!pid[@]}"; do pin_tree "${pid[$s]}" "$([[ $s == "$1" ]] && echo 0 || echo 1)"; done; }
# Where target T is measured: its server on core 0, but direct-shared with core 0 idle and
# sidecar-beside on core 1 with the emulator on core 0.
place_for() {
  case $1 in direct-shared) place none ;; sidecar-beside) place emulator ;; *) place "${server[$1]}" ;; esac
}
# Busy and total clock ticks of core N so far (/proc/stat; guest time is already in user time).
core_ticks() { awk -v c="cpu$1" '$1 == c {t=0; for (i=2; i<=9; i++) t+=$i; print t-$5-$6, t}' /proc/stat; }
clk_tck=$(getconf CLK_TCK)
# "sum count" of the sidecar's own histogram of its calls to Bedrock (from its preparation done to
# the answer parsed: its Bedrock client and the emulator), over every label; empty if it has none.
sidecar_upstream() {
  curl -sf "http://127.0.0.1:$saport/metrics" | awk '
    $1 ~ /^k8s_ai_operator_bedrock_invocation_duration_seconds_sum/ {s += $2; n++}
    $1 ~ /^k8s_ai_operator_bedrock_invocation_duration_seconds_count/ {c += $2}
    END {if (n) printf "%.9f %d\n", s, c}' || true
}

# What else keeps the machine busy: both cores' load over 2 s with every server idle.
read -r a0 t0 <<<"$(core_ticks 0)"; read -r a1 t1 <<<"$(core_ticks 1)"
sleep 2
read -r a0e t0e <<<"$(core_ticks 0)"; read -r a1e t1e <<<"$(core_ticks 1)"
background=$(awk -v b=$((a0e - a0 + a1e - a1)) -v t=$((t0e - t0 + t1e - t1)) 'BEGIN {printf "%.0f%%", 100 * b / t}')

log "warming up"
for t in "${targets[@]}"; do
  place_for "$t"
  wrk_once "${base[${server[$t]}]}" "$work/$t.lua" 16 2 >/dev/null
done
for s in emulator sidecar litellm; do record rss_idle_mib "$s" - "$(tree_mib "${pid[$s]}" VmRSS)"; done

# Throughput and latency, RUNS runs interleaved across the systems.
for conns in 1 16; do
  for run in $(seq "$RUNS"); do
    for t in "${targets[@]}"; do
      log "$t, $conns connection(s), run $run of $RUNS"
      s=${server[$t]}
      place_for "$t"
      [[ $s != emulator ]] || write_lua "$t"
      up0=""; [[ $s != sidecar ]] || up0=$(sidecar_upstream)
      cpu0=$(tree_cpu_ticks "${pid[$s]}"); read -r b0 t0 <<<"$(core_ticks 0)"; read -r b1 t1 <<<"$(core_ticks 1)"
      out=$(wrk_once "${base[$s]}" "$work/$t.lua" "$conns" "$SECONDS_PER_RUN")
      cpu1=$(tree_cpu_ticks "${pid[$s]}"); read -r b0e t0e <<<"$(core_ticks 0)"; read -r b1e t1e <<<"$(core_ticks 1)"
      if [[ -n $up0 ]] && up1=$(sidecar_upstream) && [[ -n $up1 ]]; then
        mean=$(awk -v a="$up0" -v b="$up1" 'BEGIN {split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.4f", 1000 * (y[1] - x[1]) / (y[2] - x[2])}')
        [[ -z $mean ]] || record upstream_mean_ms "$t" "$conns" "$mean"
      fi
      read -r rps requests p50 p75 p90 p99 mean <<<"$(wrk_figures "$out")"
      record rps "$t" "$conns" "$rps"; record mean_ms "$t" "$conns" "$mean"
      record p50 "$t" "$conns" "$p50"; record p75 "$t" "$conns" "$p75"
      record p90 "$t" "$conns" "$p90"; record p99 "$t" "$conns" "$p99"
      record cpu_us_per_request "$t" "$conns" "$(awk -v c=$((cpu1 - cpu0)) -v n="$requests" -v hz="$clk_tck" 'BEGIN {printf "%.2f", c * 1e6 / hz / n}')"
      record core0_busy_pct "$t" "$conns" "$(awk -v b=$((b0e - b0)) -v t=$((t0e - t0)) 'BEGIN {printf "%.1f", 100 * b / t}')"
      record core1_busy_pct "$t" "$conns" "$(awk -v b=$((b1e - b1)) -v t=$((t1e - t1)) 'BEGIN {printf "%.1f", 100 * b / t}')"
    done
  done
done

# Latency at fixed rates, RUNS runs interleaved across the systems: LiteLLM only at RATE_ALL.
for rate in "$RATE_ALL" "$RATE"; do
  for run in $(seq "$RUNS"); do
    for t in "${targets[@]}"; do
      s=${server[$t]}
      [[ $s != litellm || $rate == "$RATE_ALL" ]] || continue
      log "$t, $rate requests/s, run $run of $RUNS"
      place_for "$t"
      [[ $s != emulator ]] || write_oha "$t"
      out=$(oha_once "${base[$s]}" "$work/$t.args" 16 "$rate" "$SECONDS_PER_RUN")
      read -r rps p50 p99 <<<"$out"
      record fixed_rps "$t" "$rate" "$rps"; record fixed_p50 "$t" "$rate" "$p50"; record fixed_p99 "$t" "$rate" "$p99"
    done
  done
done

# Time to first token: the emulator streams STREAM_TOKENS filler tokens, TOKEN_MS apart.
config=$(curl -sf "$emulator_url/_emulator/config" | python3 -c '
import json, sys
c = json.load(sys.stdin)
c["output"] = {"mode": "filler", "tokens": int(sys.argv[1])}
c["latency"] = {"fixedMs": 0, "perOutputTokenMs": int(sys.argv[2])}
print(json.dumps(c))' "$STREAM_TOKENS" "$TOKEN_MS")
curl -sf -X PUT -H 'content-type: application/json' --data-binary "$config" "$emulator_url/_emulator/config"
for t in "${targets[@]}"; do
  # Streams in one placement: the servers on core 0, the emulator on its own core as the floor.
  [[ $t != direct-shared && $t != sidecar-beside ]] || continue
  log "$t, time to first token ($TTFT_SAMPLES streams)"
  place "${server[$t]}"
  clients ttft "$t" "${base[${server[$t]}]}" 2 "$STREAM_TOKENS" >/dev/null
  samples=$(clients ttft "$t" "${base[${server[$t]}]}" "$TTFT_SAMPLES" "$STREAM_TOKENS")
  while read -r first all; do record ttft_ms "$t" - "$first"; record stream_ms "$t" - "$all"; done <<<"$samples"
done
for s in emulator sidecar litellm; do
  record rss_peak_mib "$s" - "$(tree_mib "${pid[$s]}" VmHWM)"
  record processes "$s" - "$(process_tree "${pid[$s]}" | wc -l)"
done
kill "${pid[@]}" 2>/dev/null || true
pid=()

# The other issues' benchmarks, when they exist.
for name in operator webhook ledger tuning; do
  if [[ -f e2e/bench/$name.sh ]]; then
    log "e2e/bench/$name.sh"
    BENCH_FORMAT=markdown RUNS=$RUNS SECONDS_PER_RUN=$SECONDS_PER_RUN bash "e2e/bench/$name.sh" >"$work/section-$name.md"
  fi
done

meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta cpu "$(lscpu | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2; exit}')"
meta cores "$(nproc)"
meta background_busy "$background"
meta memory "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
meta os "$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r) $(uname -m)"
meta commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ -z $(git status --porcelain 2>/dev/null) ]] || echo ' (with uncommitted changes)')"
meta rustc "$(rustc --version)"
meta sidecar "$("$sidecar_bin" --version)"
meta litellm "$("$litellm_venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("litellm", "uvicorn", "uvloop")))')"
meta litellm_python "$("$litellm_venv/bin/python" --version)"
meta wrk "$(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}')"
meta oha "$("$oha_bin" --version)"
meta rate_all "$RATE_ALL"
meta rate "$RATE"
meta runs "$RUNS"
meta seconds_per_run "$SECONDS_PER_RUN"
meta ttft_samples "$TTFT_SAMPLES"
meta stream_tokens "$STREAM_TOKENS"
meta token_ms "$TOKEN_MS"
meta duration_s "$(($(date +%s) - started))"
# The raw figures stay in the cache, so the page can be written again without measuring:
#   ~/.cache/k8s-ai-operator/bench-venv/bin/python e2e/bench/report.py ~/.cache/k8s-ai-operator/bench-last docs/benchmarks.md
last="$cache/bench-last"
rm -rf "$last" && mkdir -p "$last" && cp "$results" "$last/"
for f in "$work"/section-*.md; do if [[ -e $f ]]; then cp "$f" "$last/"; fi; done
"$cache/bench-venv/bin/python" e2e/bench/report.py "$last" "$PAGE"
