#!/usr/bin/env bash
# Benchmark: what each of the sidecar's machine-specific tunings saves. The image's build is
# measured beside builds that leave one tuning out (AI_SIDECAR_BENCH_WITHOUT, sidecar/build.rs):
#   symbol-order  sidecar/symbol-order.txt, the layout of the code a sidecar runs (resident memory)
# (A timer kept due before each request's own, against tokio-rs/tokio#5207's extra wake-up, was
# measured here too: the sidecar was no faster with it, so it went.)
# Beside them, the shipped build with traces on (docs/traces.md): a span per call exported over
# OTLP/HTTP to the tests' OpenTelemetry Collector (e2e/otelcol, on core 1, writing to /dev/null),
# with the default batching: what tracing every call costs.
# Each build serves the standalone benchmark configuration in front of the emulator (sidecar on
# core 0; emulator and wrk on core 1), started afresh for each run, the builds taking turns run by
# run: RSS when ready, after one call, and at its peak after load; requests/s and latency p50/p99 at
# 1 and 16 connections. Medians of RUNS runs. A tuning a run of this does not justify goes.
# The Markdown table goes to stdout; unless BENCH_FORMAT=markdown (`make bench`'s hook) or
# BENCH_PAGE is empty, it also replaces the section "Tuning" of docs/benchmarks.md.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
PAGE=${BENCH_PAGE-docs/benchmarks.md}
[[ ${BENCH_FORMAT:-} == markdown ]] && PAGE=""
log() { printf '[tuning] %s\n' "$*" >&2; }

need_commands wrk:wrk
scripts/install-deps.sh >/dev/null
build_release -p e2e --bin bedrock-emulator
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The image's build last, so the target directory is left holding it.
variants=(symbol-order traces shipped)
for variant in symbol-order shipped; do
  without=""
  [[ $variant == shipped ]] || without=$variant
  log "building the sidecar${without:+ without $without}"
  AI_SIDECAR_BENCH_WITHOUT=$without cargo build --profile sidecar --locked -q -p ai-sidecar --bin ai-sidecar \
    --target "$sidecar_target"
  cp "$CARGO_TARGET_DIR/$sidecar_target/sidecar/ai-sidecar" "$work/ai-sidecar-$variant"
done
check_symbol_order
cp "$work/ai-sidecar-shipped" "$work/ai-sidecar-traces"

collector=$(e2e/otelcol/build.sh)
cport=$(free_port)
printf '%s\n' "receivers: {otlp: {protocols: {http: {endpoint: 127.0.0.1:$cport}}}}" \
  "exporters: {file: {path: /dev/null}}" \
  "service: {telemetry: {metrics: {level: none}}, pipelines: {traces: {receivers: [otlp], exporters: [file]}}}" \
  >"$work/collector.yaml"
taskset -c 1 "$collector" --config "$work/collector.yaml" >/dev/null 2>"$work/collector.log" & pids+=($!)
for _ in $(seq 100); do grep -q "Everything is ready" "$work/collector.log" && break; sleep 0.1; done
grep -q "Everything is ready" "$work/collector.log" || { cat "$work/collector.log" >&2; exit 1; }

eport=$(free_port)
taskset -c 1 "$emulator_bin" --listen "127.0.0.1:$eport" >/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$eport/_emulator/requests"
sidecar_config "$work/sidecar.yaml"

# One run of the build VARIANT: appends "idle served peak rps1 p50_1 p99_1 rps16 p50_16 p99_16" to
# $work/VARIANT.runs.
measure() {
  local variant=$1 sport aport spid idle served out f1 f16
  sport=$(free_port) aport=$(free_port)
  sidecar_bin="$work/ai-sidecar-$variant" sidecar_command "$work/sidecar.yaml" "$sport" "$aport" "http://127.0.0.1:$eport"
  local traces=()
  [[ $variant == traces ]] && traces=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$cport")
  taskset -c 0 env "${traces[@]}" "${sidecar_cmd[@]}" & spid=$!
  pids+=("$spid")
  wait_http "http://127.0.0.1:$aport/readyz"
  idle=$(rss_mib "$spid" VmRSS)
  "$cache/venv/bin/python" e2e/bench/clients.py lua sidecar-invoke "http://127.0.0.1:$sport" "$work/sidecar.lua"
  curl -sf -X POST -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"warm up"}]}' \
    "http://127.0.0.1:$sport/invoke/ai-workloads/claude-haiku" >/dev/null
  sleep 0.5
  served=$(rss_mib "$spid" VmRSS)
  out=$(wrk_once "http://127.0.0.1:$sport" "$work/sidecar.lua" 1 "$SECONDS_PER_RUN")
  read -r -a f1 <<<"$(wrk_figures "$out")"
  out=$(wrk_once "http://127.0.0.1:$sport" "$work/sidecar.lua" 16 "$SECONDS_PER_RUN")
  read -r -a f16 <<<"$(wrk_figures "$out")"
  echo "$idle $served $(rss_mib "$spid" VmHWM) ${f1[0]} ${f1[2]} ${f1[5]} ${f16[0]} ${f16[2]} ${f16[5]}" >>"$work/$variant.runs"
  if [[ $variant == traces ]]; then
    # The spans of the load reached the collector (not dropped: that would flatter the figures).
    sleep 6
    curl -sf "http://127.0.0.1:$aport/metrics" | awk '
      /^k8s_ai_operator_sidecar_trace_spans_total\{outcome="exported"\}/ { ok += $2 }
      /^k8s_ai_operator_sidecar_trace_spans_total\{outcome="(queue_full|export_failed|rejected)"\}/ { lost += $2 }
      END { printf "[tuning] traces: %d spans exported, %d lost\n", ok, lost > "/dev/stderr"; exit !(ok > 0 && lost == 0) }'
  fi
  kill -TERM "$spid"
  wait "$spid" || true
}
for run in $(seq "$RUNS"); do
  log "run $run of $RUNS"
  # Each build takes each place in the order in turn: a noisy moment lands on all of them.
  for i in "${!variants[@]}"; do measure "${variants[(i + run) % ${#variants[@]}]}"; done
done

table=$(python3 - "$work" "${variants[@]}" <<'PY'
import statistics, sys
work, variants = sys.argv[1], sys.argv[2:]
label = {"shipped": "as shipped", "symbol-order": "without the symbol order",
         "traces": "as shipped, traces on (every call a span, OTLP to a collector)"}
print("| build | RSS ready MiB | RSS after a call MiB | RSS peak MiB | req/s, 1 conn | p50 / p99 ms, 1 conn | req/s, 16 conns | p50 / p99 ms, 16 conns |")
print("|---|---|---|---|---|---|---|---|")
for v in variants:
    runs = [list(map(float, line.split())) for line in open(f"{work}/{v}.runs")]
    m = [statistics.median(column) for column in zip(*runs)]
    print(f"| {label[v]} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:,.0f} | {m[4]:.3f} / {m[5]:.3f} "
          f"| {m[6]:,.0f} | {m[7]:.3f} / {m[8]:.3f} |")
PY
)
text="Each of the sidecar's tunings that only a benchmark justifies, left out of one build at a time
(\`AI_SIDECAR_BENCH_WITHOUT\`, sidecar/build.rs), and the shipped build with traces on (a span per
call to an OpenTelemetry Collector on core 1, docs/traces.md): standalone in front of the emulator, sidecar on
core 0, emulator and wrk on core 1; medians of $RUNS runs of ${SECONDS_PER_RUN} s, $(date -u '+%Y-%m-%d'), $(nproc) cores, $(uname -m).

$table"
echo "$text"
if [[ -n $PAGE ]]; then
  python3 - "$PAGE" "$text" <<'PY'
import sys
path, text = sys.argv[1], sys.argv[2]
heading = "### Tuning (`e2e/bench/tuning.sh`)"
section = f"{heading}\n\nWritten by `make bench-sidecar-tuning`; run it again to refresh this section.\n\n{text}\n"
page = open(path).read()
start = page.find(heading)
if start >= 0:
    ends = [i for i in (page.find("\n### ", start + 3), page.find("\n## ", start + 3)) if i >= 0]
    page = page[:start] + section + ("\n" + page[min(ends) + 1:] if ends else "")
else:
    raw = page.find("\n## Raw figures")
    page = page[:raw + 1] + section + "\n" + page[raw + 1:] if raw >= 0 else page.rstrip("\n") + "\n\n" + section
open(path, "w").write(page)
PY
  log "wrote the section \"Tuning\" of $PAGE"
fi
