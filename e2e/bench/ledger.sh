#!/usr/bin/env bash
# `make bench-ledger`: the ledger at scale. BENCH_LEDGERS ModelUsages (default 5,000) across
# BENCH_ENDPOINTS ModelEndpoints (default 100) on a real API server, simulated sidecars reporting
# every BENCH_INTERVAL seconds (default 5, the sidecar's AI_SIDECAR_REPORT_INTERVAL), and the
# operator (release build) summing them into the endpoints' status. Prints:
#  - the time for a change of one ledger to reach its endpoint's status (costThisMonth): BENCH_PROBES
#    probes (default 20) under load, each adding $1 to one ledger and polling the endpoint, p50 / p99
#    / max; a few at idle too;
#  - the operator's RSS (VmRSS, and VmHWM over the run) after one report from every ledger and
#    under load;
#  - API writes per second: the sidecars' (offered and achieved), the operator's own, by kind, from
#    the API server's apiserver_request_total; the operator's reconciles from its /metrics;
#  - CPU used by the operator, the API server (etcd included) and the simulated sidecars;
#  - how long setting up took: Pods created, ledgers created by the operator, shares written.
#
# Phases: endpoints → Pods (the fold controller deletes a ledger whose Pod is gone, so the Pods must
# exist; nothing schedules them here) → the operator creates the ledgers → first report of every
# ledger → BENCH_IDLE_SECONDS idle → BENCH_WARMUP + BENCH_LOAD_SECONDS of reports → drain (until
# every endpoint equals, exactly, the sums of its ledgers).
#
# The control plane is e2e/cluster.sh's, but its own instance in a temporary directory, stopped and
# removed at the end: the operator watches every namespace, so on the shared one (e2e/.run) any
# operator a test run starts would act on these 5,000 Pods and ledgers too, and theirs on its. Set
# BENCH_RUN_DIR=e2e/.run to use the shared one anyway (left running if it was; the namespace's
# objects are deleted).
#
# Other knobs (defaults): BENCH_IDLE_SECONDS (20), BENCH_WARMUP (15), BENCH_LOAD_SECONDS (100: the
# measured load lasts that long and until the last probe is answered, each waiting up to 120 s),
# BENCH_IDLE_PROBES (5), BENCH_WRITER_PROCESSES (2) x BENCH_WRITER_THREADS (32): writes in flight at
# most, BENCH_PARALLEL (4 kubectl create), BENCH_BUILD (1; 0 uses the last release build),
# BENCH_MIN_FREE_MIB (3072: below it the operator is stopped and the run fails), BENCH_KEEP=1,
# BENCH_OPERATOR_LOG (warn: the operator's --log filter).
# Develop with small numbers, e.g. BENCH_LEDGERS=200 BENCH_ENDPOINTS=4 BENCH_PAGE=: the full size
# takes many minutes on 2 cores and gigabytes of memory at the API server's peak (hence
# BENCH_MIN_FREE_MIB; docs/benchmarks.md has the last run's figures).
#
# The Markdown summary goes to stdout; unless BENCH_PAGE is empty, it also replaces the section
# "Ledger at scale" of docs/benchmarks.md. With BENCH_FORMAT=markdown (make bench's hook) only the
# Markdown is printed. Raw figures: ~/.cache/k8s-ai-operator/bench-ledger-last/.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "$0")/lib.sh"
LEDGERS=${BENCH_LEDGERS:-5000}
ENDPOINTS=${BENCH_ENDPOINTS:-100}
INTERVAL=${BENCH_INTERVAL:-5}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-15}
LOAD_SECONDS=${BENCH_LOAD_SECONDS:-100}
PROBES=${BENCH_PROBES:-20}
IDLE_PROBES=${BENCH_IDLE_PROBES:-5}
PROCESSES=${BENCH_WRITER_PROCESSES:-2}
THREADS=${BENCH_WRITER_THREADS:-32}
PARALLEL=${BENCH_PARALLEL:-4}
PAGE=${BENCH_PAGE-docs/benchmarks.md}
((LEDGERS % ENDPOINTS == 0)) || { echo "BENCH_LEDGERS must be a multiple of BENCH_ENDPOINTS" >&2; exit 2; }
per_endpoint=$((LEDGERS / ENDPOINTS))

log() { printf '[bench-ledger] %s\n' "$*" >&2; }
now() { date +%s%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", (b - a) / 1e9}'; }
need_commands curl:curl python3:python3
py="$cache/venv/bin/python"
if ! "$py" -c 'import yaml' 2>/dev/null; then scripts/install-deps.sh >/dev/null; fi
operator_bin="$CARGO_TARGET_DIR/release/k8s-ai-operator"
if [[ ${BENCH_BUILD:-1} == 1 || ! -x $operator_bin || ! -x $emulator_bin ]]; then
  log "building the release binaries (BENCH_BUILD=0 uses the last ones)"
  nice -n 10 cargo build --release --locked -q -p k8s-ai-operator --bin k8s-ai-operator -p e2e --bin bedrock-emulator
fi

work=$(mktemp -d)
pids=()
run_dir=${BENCH_RUN_DIR:-$work/cluster}
run_dir=$(realpath -m "$run_dir")
export K8S_AI_RUN_DIR=$run_dir
kubeconfig=$run_dir/kubeconfig
kubectl() { e2e/.bin/kubectl --kubeconfig "$kubeconfig" "$@"; }
started_cluster=0
e2e/cluster.sh status || started_cluster=1
ns="bench-ledger-$$"
cleanup() {
  local status=$?
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n ${BENCH_RUN_DIR:-} && -f $work/created-namespace ]]; then
    log "deleting the benchmark's objects"
    "$py" e2e/bench/ledger.py cleanup "$kubeconfig" "$ns" || true
    kubectl delete namespace "$ns" "$ns-operator" --wait=false >/dev/null 2>&1 || true
  fi
  if ((started_cluster)); then
    e2e/cluster.sh down || true
    [[ -n ${BENCH_RUN_DIR:-} ]] || rm -rf "$run_dir"
  fi
  if [[ ${BENCH_KEEP:-} == 1 ]]; then log "logs and raw figures kept in $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
e2e/cluster.sh up >&2
apiserver_pid=$(cat "$run_dir/pid")
kubectl apply --server-side -k manifests/crds >/dev/null
kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=k8s-ai-operator >/dev/null
kubectl create namespace "$ns" >/dev/null
touch "$work/created-namespace"
kubectl create namespace "$ns-operator" >/dev/null
# The ServiceAccount admission plugin needs the default account (no controller manager makes it).
kubectl create serviceaccount default -n "$ns" >/dev/null
"$py" e2e/bench/ledger.py manifests "$work" "$ns" "$ENDPOINTS" "$per_endpoint" 250

eport=$(free_port)
"$emulator_bin" --listen "127.0.0.1:$eport" >"$work/emulator.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$eport/_emulator/requests"
mport=$(free_port)
KUBECONFIG=$kubeconfig AWS_ENDPOINT_URL="http://127.0.0.1:$eport" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_ACCESS_KEY_ID="$test_key_id" AWS_SECRET_ACCESS_KEY="$test_secret" \
  "$operator_bin" run --namespace "$ns-operator" --leader-election=false --log "${BENCH_OPERATOR_LOG:-warn}" --log-format text \
  --webhook-listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$mport" --webhook-configuration none \
  >"$work/operator.log" 2>&1 & operator_pid=$!; pids+=("$operator_pid")
wait_http "http://127.0.0.1:$mport/healthz"
# The machine is shared: should memory run short (the operator's or the API server's growing), the
# operator is stopped and the run fails rather than the machine swapping or killing other work.
min_free_mib=${BENCH_MIN_FREE_MIB:-3072}
(
  while kill -0 "$operator_pid" 2>/dev/null; do
    if (($(awk '$1 == "MemAvailable:" {print int($2 / 1024)}' /proc/meminfo) < min_free_mib)); then
      log "less than $min_free_mib MiB of memory available: stopping the operator (RSS $(rss_mib "$operator_pid" VmRSS) MiB)"
      kill -9 "$operator_pid"
    fi
    sleep 1
  done
) & pids+=($!)

log "$ENDPOINTS ModelEndpoints"
t=$(now)
kubectl apply --server-side -f "$work/endpoints.yaml" >/dev/null
"$py" e2e/bench/ledger.py wait "$kubeconfig" "$ns" ready "$ENDPOINTS" 300
endpoints_ready=$(since "$t")

log "$LEDGERS Pods, $PARALLEL kubectl create in parallel; the operator creates their ledgers"
t=$(now)
printf '%s\n' "$work"/pods-*.yaml | xargs -P "$PARALLEL" -I{} e2e/.bin/kubectl --kubeconfig "$kubeconfig" create -f {} -o name >/dev/null
pods_created=$(since "$t")
"$py" e2e/bench/ledger.py wait "$kubeconfig" "$ns" ledgers "$LEDGERS" 900
ledgers_created=$(since "$t")
"$py" e2e/bench/ledger.py wait "$kubeconfig" "$ns" allocated "$LEDGERS" 900
allocated=$(since "$t")
log "  Pods in ${pods_created}s, ledgers after ${ledgers_created}s, all allocated after ${allocated}s"

"$py" e2e/bench/ledger.py bench "$kubeconfig" "$ns" --endpoints "$ENDPOINTS" --per-endpoint "$per_endpoint" \
  --interval "$INTERVAL" --idle-seconds "$IDLE_SECONDS" --warmup "$WARMUP" --seconds "$LOAD_SECONDS" \
  --probes "$PROBES" --idle-probes "$IDLE_PROBES" --processes "$PROCESSES" --threads "$THREADS" \
  --operator-pid "$operator_pid" --apiserver-pid "$apiserver_pid" \
  --operator-metrics "http://127.0.0.1:$mport/metrics" --out "$work/results.json"
kill -0 "$operator_pid" || { log "the operator died; its log:"; tail -30 "$work/operator.log" >&2; exit 1; }

cat >"$work/setup.json" <<JSON
{"date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "cores": $(nproc), "loadavg": "$load_before",
 "warmup": $WARMUP, "parallel": $PARALLEL, "endpoints_ready_s": $endpoints_ready,
 "pods_created_s": $pods_created, "ledgers_created_s": $ledgers_created, "allocated_s": $allocated}
JSON
last="$cache/bench-ledger-last"
rm -rf "$last" && mkdir -p "$last" && cp "$work/results.json" "$work/setup.json" "$last/"
cp "$work/operator.log" "$last/"
log "the operator logged $(grep -ciE 'warn|error' "$work/operator.log" || true) warnings or errors (log: $last/operator.log)"
if [[ ${BENCH_FORMAT:-} == markdown ]]; then
  "$py" e2e/bench/ledger.py report "$last/results.json" "$last/setup.json" --markdown
else
  "$py" e2e/bench/ledger.py report "$last/results.json" "$last/setup.json" ${PAGE:+--page "$PAGE"}
  [[ -z $PAGE ]] || log "wrote the section \"Ledger at scale\" of $PAGE"
fi
