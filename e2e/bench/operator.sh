#!/usr/bin/env bash
# Benchmark of the operator (release build):
#  1. the admission webhook: AdmissionReviews/s over TLS from wrk (a Deployment's pod that opts
#     in, the golden file deployment-pod), the webhook on core 0 and wrk on core 1; latency as wrk
#     sees it and the handler's own p99 from the webhook's histogram;
#  2. the time to reconcile N ModelEndpoints (default 1000) to Ready against the real API server
#     and the Bedrock/STS emulator.
# Prints two Markdown tables. Targets: >= 5,000 AdmissionReviews/s on one core, handler p99 <= 2 ms.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ENDPOINTS=${ENDPOINTS:-1000}
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
echo "building (release)..." >&2
cargo build --release --locked -q -p k8s-ai-operator -p e2e --bin k8s-ai-operator --bin bedrock-emulator
operator_bin="$CARGO_TARGET_DIR/release/k8s-ai-operator"
emulator_bin="$CARGO_TARGET_DIR/release/bedrock-emulator"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_http() { for _ in $(seq 600); do curl -ks -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }

# 1. The webhook alone (no cluster needed: files mode).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
wport=$(free_port); mport=$(free_port)
KUBECONFIG=/nonexistent taskset -c 0 "$operator_bin" webhook --cert-mode files --tls-cert-file "$work/tls.crt" \
  --tls-key-file "$work/tls.key" --webhook-listen "127.0.0.1:$wport" --metrics-listen "127.0.0.1:$mport" \
  --log warn >/dev/null 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$mport/readyz"
python3 - "$work/review.lua" <<'PY'
import json, sys
body = json.dumps(json.load(open("operator/tests/golden/deployment-pod/request.json")), separators=(",", ":"))
with open(sys.argv[1], "w") as f:
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    f.write("wrk.body = " + json.dumps(body) + "\n")
PY
curl -ksf -X POST -H 'content-type: application/json' --data @operator/tests/golden/deployment-pod/request.json \
  "https://127.0.0.1:$wport/mutate" | grep -q '"patch"' || { echo "the webhook did not inject" >&2; exit 1; }

declare -A rps p50 p99
for conns in 1 16; do
  r=(); a=(); b=()
  for _ in $(seq "$RUNS"); do
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN}s" --latency -s "$work/review.lua" "https://127.0.0.1:$wport/mutate")
    if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers:" >&2; echo "$out" >&2; exit 1; fi
    r+=("$(awk '/Requests\/sec/ {print $2}' <<<"$out")")
    a+=("$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms)")
    b+=("$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms)")
  done
  rps[$conns]=$(printf '%s\n' "${r[@]}" | median)
  p50[$conns]=$(printf '%s\n' "${a[@]}" | median)
  p99[$conns]=$(printf '%s\n' "${b[@]}" | median)
done
# The handler's p99: the smallest histogram bucket holding 99% of all observations.
handler_p99=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '
  /^k8s_ai_operator_webhook_admission_duration_seconds_bucket/ {
    match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; counts[n] = $NF }
  /^k8s_ai_operator_webhook_admission_duration_seconds_count/ { total = $NF }
  END { for (i = 1; i <= n; i++) if (counts[i] >= 0.99 * total) { printf "%s", (les[i] == "+Inf" ? "inf" : les[i] * 1000); exit } }')
rss=$(awk '$1 == "VmHWM:" {printf "%.1f", $2/1024}' "/proc/${pids[0]}/status")
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

echo "## Admission webhook (one core, TLS, wrk on the other core; median of $RUNS x ${SECONDS_PER_RUN}s)"
echo
echo "| connections | AdmissionReviews/s | p50 ms | p99 ms |"
echo "|---:|---:|---:|---:|"
for conns in 1 16; do echo "| $conns | ${rps[$conns]} | ${p50[$conns]} | ${p99[$conns]} |"; done
echo
echo "Handler p99 (histogram bucket bound, all runs): <= ${handler_p99} ms; webhook peak RSS ${rss} MiB."
awk -v r="${rps[16]}" -v p="$handler_p99" 'BEGIN {
  printf "Targets: >= 5,000/s on one core: %s; handler p99 <= 2 ms: %s.\n", (r >= 5000 ? "met" : "MISSED"), (p != "inf" && p <= 2 ? "met" : "MISSED") }'
echo

# 2. N ModelEndpoints to Ready on the real API server.
e2e/cluster.sh up >&2
kubectl="e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig"
$kubectl apply --server-side -k manifests/crds >/dev/null
$kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=k8s-ai-operator >/dev/null
eport=$(free_port)
taskset -c 1 "$emulator_bin" --listen "127.0.0.1:$eport" >/dev/null 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$eport/_emulator/requests"
ns="bench-reconcile-$$"
$kubectl create namespace "$ns" >/dev/null
$kubectl create namespace "$ns-operator" >/dev/null
sed "s/namespace: ai-workloads/namespace: $ns/" manifests/samples/guardrailpolicy.yaml | sed "s/name: pii-and-safety/name: $ns/" | $kubectl apply -f - >/dev/null
python3 - "$ns" "$ENDPOINTS" >"$work/endpoints.yaml" <<'PY'
import sys
ns, n = sys.argv[1], int(sys.argv[2])
seed = open("manifests/samples/modelendpoint.yaml").read()
seed = seed.replace("namespace: ai-workloads", f"namespace: {ns}").replace("guardrailPolicyRef: pii-and-safety", f"guardrailPolicyRef: {ns}")
for i in range(n):
    print("---")
    print(seed.replace("name: claude-haiku", f"name: endpoint-{i:04d}", 1))
PY
oport=$(free_port); omport=$(free_port)
start=$(date +%s%N)
KUBECONFIG=e2e/.run/kubeconfig AWS_ENDPOINT_URL="http://127.0.0.1:$eport" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY \
  taskset -c 0 "$operator_bin" run --namespace "$ns-operator" --leader-election=false --log warn \
  --webhook-listen "127.0.0.1:$oport" --metrics-listen "127.0.0.1:$omport" --webhook-configuration "$ns-none" \
  >"$work/operator.log" 2>&1 & pids+=($!)
$kubectl apply --server-side -f "$work/endpoints.yaml" >/dev/null
applied=$(date +%s%N)
ready=0
for _ in $(seq 1200); do
  ready=$($kubectl get modelendpoints -n "$ns" -o jsonpath='{range .items[*]}{.status.available}{"\n"}{end}' | grep -c true || true)
  [ "$ready" -ge "$ENDPOINTS" ] && break
  sleep 0.5
done
done_ns=$(date +%s%N)
orss=$(awk '$1 == "VmHWM:" {printf "%.1f", $2/1024}' "/proc/${pids[-1]}/status")
# The test control plane runs no namespace controller: delete the objects themselves.
$kubectl delete modelendpoints --all -n "$ns" --wait=false >/dev/null
$kubectl delete namespace "$ns" "$ns-operator" --wait=false >/dev/null
$kubectl delete guardrailpolicy "$ns" --wait=false >/dev/null
echo "## $ENDPOINTS ModelEndpoints to Ready (real API server + emulator; operator on one core)"
echo
echo "| endpoints | applied in s | all Ready after s (from apply start) | per second | operator peak RSS MiB |"
echo "|---:|---:|---:|---:|---:|"
awk -v n="$ENDPOINTS" -v ready="$ready" -v s="$start" -v a="$applied" -v d="$done_ns" -v rss="$orss" 'BEGIN {
  t = (d - s) / 1e9; printf "| %d (%d Ready) | %.1f | %.1f | %.0f | %s |\n", n, ready, (a - s) / 1e9, t, ready / t, rss }'
[ "$ready" -ge "$ENDPOINTS" ] || { echo "only $ready of $ENDPOINTS became Ready; operator log:" >&2; tail -20 "$work/operator.log" >&2; exit 1; }
