# Shared by the benchmark scripts of e2e/bench (sourced, not run). Sets the repository root as the
# working directory, the cache and target directories, and defines the helpers below.
# shellcheck shell=bash disable=SC2034  # variables used by the scripts that source this
# Failures inside $(...) stop the script too: assign command substitutions before parsing them.
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
emulator_bin="$CARGO_TARGET_DIR/release/bedrock-emulator"
# The sidecar as its image ships it (Dockerfile.sidecar): static, musl, the `sidecar` profile.
# SIDECAR_BIN measures another build instead.
sidecar_target="$(uname -m)-unknown-linux-musl"
sidecar_bin="${SIDECAR_BIN:-$CARGO_TARGET_DIR/$sidecar_target/sidecar/ai-sidecar}"
# The static test credentials the emulator accepts (AWS's documented example pair).
test_key_id=AKIAIOSFODNN7EXAMPLE
test_secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
# The seed's model through its US profile: Bedrock (and the emulator) serve it only that way.
model_id=us.anthropic.claude-haiku-4-5-20251001-v1:0

# Installs the Debian packages behind COMMAND:PACKAGE pairs whose command is missing.
need_commands() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  ((${#missing[@]})) || return 0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Builds the release binaries named as cargo arguments, e.g. `-p e2e --bin bedrock-emulator`.
build_release() { cargo build --release --locked -q "$@"; }
# Builds the sidecar as its image does (unless SIDECAR_BIN names another build). Apart from other
# binaries: built together, features would unify and it would carry their TLS stack.
build_sidecar() {
  [[ -n "${SIDECAR_BIN:-}" ]] && return 0
  cargo build --profile sidecar --locked -q -p ai-sidecar --bin ai-sidecar --target "$sidecar_target"
  check_symbol_order
}
# Fails, saying what to run, when most names of sidecar/symbol-order.txt no longer resolve in the
# sidecar's last build (its link map). The names are those of the x86_64 build.
check_symbol_order() {
  local map="$CARGO_TARGET_DIR/$sidecar_target/sidecar/ai-sidecar.map"
  [[ $sidecar_target == x86_64-* ]] || return 0
  python3 e2e/bench/symbol_order.py check "$map" sidecar/symbol-order.txt >&2
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (up to ~20 s) until URL answers at all.
wait_http() { for _ in $(seq 4000); do curl -s -o /dev/null "$1" && return 0; sleep 0.005; done; return 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# wrk's latency ("812.00us", "1.20ms", "2.01s") in milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000}}'; }
# A /proc/PID/status field (VmRSS, VmHWM) of one process, in MiB.
rss_mib() { awk -v k="$2" '$1 == k":" {printf "%.1f", $2/1024}' "/proc/$1/status"; }
# PID and all its descendants, one a line.
process_tree() {
  echo "$1"
  local child
  # shellcheck disable=SC2013  # the children files hold PIDs separated by spaces
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do process_tree "$child"; done
}
# A /proc/PID/status field summed over the process tree of PID, in MiB.
tree_mib() {
  local pid total=0
  for pid in $(process_tree "$1"); do
    total=$((total + $(awk -v k="$2" '$1 == k":" {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  awk -v kb="$total" 'BEGIN {printf "%.1f", kb/1024}'
}
# CPU time (user + system, children reaped included) of the process tree of PID, in clock ticks.
tree_cpu_ticks() {
  local pid total=0
  for pid in $(process_tree "$1"); do
    total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13 + $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# Keeps every core busy at the lowest priority (SCHED_IDLE spinners: anything else runs first) until
# stop_keeping_awake. A VM's idle vCPU halts and waking it costs tens of microseconds a time: a
# proxy's extra hops pay that twice a request, which says more about the VM than about the proxy.
keep_cores_awake() {
  local core
  spinners=()
  for core in $(seq 0 $(($(nproc) - 1))); do
    chrt --idle 0 taskset -c "$core" sh -c 'while :; do :; done' & spinners+=($!)
  done
}
stop_keeping_awake() { ((${#spinners[@]})) && kill "${spinners[@]}" 2>/dev/null; spinners=(); }

# Pins every thread of the process tree of PID to CORES (new threads inherit it).
pin_tree() {
  local pid
  for pid in $(process_tree "$1"); do taskset -a -p -c "$2" "$pid" >/dev/null 2>&1 || true; done
}

# Runs wrk once from core 1: URL, Lua script, connections, seconds. Prints wrk's output; fails on
# any non-2xx answer or socket error, which would make the figures meaningless.
wrk_once() {
  local out
  out=$(taskset -c 1 wrk -t1 -c"$3" -d"$4s" --latency -s "$2" "$1")
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
    echo "errors while measuring $1 with $3 connections:" >&2; echo "$out" >&2; return 1
  fi
  echo "$out"
}
# oha, the open-loop load generator (crates.io), built once into the cache: wrk keeps N requests
# outstanding, so a slower system is also sent fewer; oha sends at a fixed rate, whatever the
# answers.
oha_version=1.16.0
oha_bin="$cache/tools/bin/oha"
need_oha() {
  [[ -x $oha_bin ]] && [[ $("$oha_bin" --version) == "oha $oha_version" ]] && return 0
  CARGO_TARGET_DIR="$cache/tools-target" cargo install -q --locked oha --version "$oha_version" --root "$cache/tools"
  rm -rf "$cache/tools-target"
}
# Runs oha once from core 1 at a fixed rate: base URL, the request's arguments file (clients.py
# oha), connections, requests/s, seconds. Latency counts from when oha released each request, so a
# request waiting for a free connection counts its wait. oha releases them on tokio's millisecond
# timer: at 1,000 requests/s one a millisecond, at 10,000 bursts of ~10. Prints "requests/s p50
# p99" (ms); fails on any non-2xx answer or error, which would make the figures meaningless.
oha_once() {
  local args path out
  mapfile -t args <"$2"
  path=${args[-1]}; unset 'args[-1]'
  out=$(taskset -c 1 "$oha_bin" --no-tui --output-format json --worker-threads 1 --latency-correction -w \
    -c "$3" -q "$4" -z "$5s" "${args[@]}" "$1$path")
  python3 -c '
import json, sys
run = json.load(sys.stdin)
bad = {code: n for code, n in run["statusCodeDistribution"].items() if not code.startswith("2")}
errors = run["errorDistribution"]
if bad or errors:
    sys.exit(f"errors while measuring {sys.argv[1]}: {bad} {errors}")
rps = run["summary"]["requestsPerSec"]
p50, p99 = run["latencyPercentiles"]["p50"], run["latencyPercentiles"]["p99"]
print(f"{rps:.0f} {p50 * 1000:.3f} {p99 * 1000:.3f}")
' "$1" <<<"$out"
}
# From wrk's output: "requests/s requests p50 p75 p90 p99 mean" (latencies in ms).
wrk_figures() {
  local p
  printf '%s %s' "$(awk '/Requests\/sec/ {print $2}' <<<"$1")" "$(awk '/requests in/ {print $1}' <<<"$1")"
  for p in 50% 75% 90% 99%; do printf ' %s' "$(awk -v p="$p" '$1 == p {print $2}' <<<"$1" | to_ms)"; done
  printf ' %s\n' "$(awk '$1 == "Latency" && $2 != "Distribution" {print $2; exit}' <<<"$1" | to_ms)"
}

# Writes the sidecar's standalone configuration to FILE: the seed's ModelEndpoint and
# GuardrailPolicy, static keys instead of IRSA, the geographic profile named (no operator resolves
# it), limits lifted so a benchmark measures the path, not the limiter.
sidecar_config() {
  cat manifests/samples/guardrailpolicy.yaml <(echo ---) manifests/samples/modelendpoint.yaml \
    | sed -e '/irsaRoleArn/d' -e 's/requestsPerMinute: 60/requestsPerMinute: 100000000/' \
          -e 's/^  modelId: .*/&\n  inferenceProfile: geographic/' \
          -e 's/daily: "10.00"/daily: "1000000000"/' -e 's/monthly: "200.00"/monthly: "1000000000"/' >"$1"
}
# Sets the array sidecar_cmd to the command running the sidecar: config file, data port, admin
# port, emulator URL. Run it as `taskset -c 0 "${sidecar_cmd[@]}" &`.
sidecar_command() {
  sidecar_cmd=(env AI_SIDECAR_NAMESPACE=ai-workloads AI_SIDECAR_LISTEN="127.0.0.1:$2"
    AI_SIDECAR_ADMIN_LISTEN="127.0.0.1:$3" AI_SIDECAR_LOG=warn AWS_ENDPOINT_URL="$4" AWS_REGION=us-east-1
    AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID="$test_key_id" AWS_SECRET_ACCESS_KEY="$test_secret"
    "$sidecar_bin" --standalone --config "$1")
}

# Plays the platform team and the operator in the test control plane (e2e/cluster.sh, up): the
# seed's objects in namespace NS (IRSA included; the GuardrailPolicy named NS), a service account
# `app` with the least-privilege access a sidecar needs, the ModelUsage of pod POD, and in DIR:
# `kubeconfig` (the account's token), `irsa-token` (its projected token for STS) and
# `emulator-irsa.yaml` (an emulator that trusts it). Sets tenant_env to the sidecar's environment
# for that pod. Usage: NS POD DIR
cluster_tenant() {
  local kubectl=(e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig) issuer api_token sample
  issuer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["issuer"])' e2e/.run/cluster.json)
  "${kubectl[@]}" apply --server-side -k manifests/crds >/dev/null
  "${kubectl[@]}" wait --for=condition=Established crd -l app.kubernetes.io/part-of=k8s-ai-operator >/dev/null
  "${kubectl[@]}" create namespace "$1" >/dev/null
  # GuardrailPolicies are cluster-wide: the tenant's is named after it, not the seed's. No operator
  # runs to resolve the model's inference profile: the endpoint names it.
  for sample in guardrailpolicy modelendpoint prompttemplate; do
    echo ---
    sed -e "s/namespace: ai-workloads/namespace: $1/" -e "s/name: pii-and-safety/name: $1/" \
      -e "s/guardrailPolicyRef: pii-and-safety/guardrailPolicyRef: $1/" \
      -e 's/^  modelId: .*/&\n  inferenceProfile: geographic/' "manifests/samples/$sample.yaml"
  done | "${kubectl[@]}" apply -f - >/dev/null
  # The service account, and exactly the access a pod's sidecar needs.
  "${kubectl[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: $1}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ai-sidecar, namespace: $1}
rules:
- {apiGroups: [ai.kernelpanic09.io], resources: [modelendpoints], resourceNames: [claude-haiku], verbs: [get, list, watch]}
- {apiGroups: [ai.kernelpanic09.io], resources: [prompttemplates], verbs: [get, list, watch]}
- {apiGroups: [ai.kernelpanic09.io], resources: [modelusages], resourceNames: [$2.claude-haiku], verbs: [get, list, watch]}
- {apiGroups: [ai.kernelpanic09.io], resources: [modelusages/status], resourceNames: [$2.claude-haiku], verbs: [get, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ai-sidecar, namespace: $1}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ai-sidecar}
subjects: [{kind: ServiceAccount, name: app, namespace: $1}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ai-sidecar-$1}
rules:
- {apiGroups: [ai.kernelpanic09.io], resources: [guardrailpolicies], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ai-sidecar-$1}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ai-sidecar-$1}
subjects: [{kind: ServiceAccount, name: app, namespace: $1}]
---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelUsage
metadata: {name: $2.claude-haiku, namespace: $1}
spec: {podName: $2, podUid: 00000000-0000-0000-0000-000000000001, endpoint: claude-haiku}
EOF
  api_token=$("${kubectl[@]}" create token app -n "$1")
  "${kubectl[@]}" config view --raw --minify >"$3/kubeconfig"
  e2e/.bin/kubectl --kubeconfig "$3/kubeconfig" config set-credentials app --token "$api_token" >/dev/null
  e2e/.bin/kubectl --kubeconfig "$3/kubeconfig" config set-context --current --user app --namespace "$1" >/dev/null
  "${kubectl[@]}" create token app -n "$1" --audience sts.amazonaws.com >"$3/irsa-token"
  cat >"$3/emulator-irsa.yaml" <<EOF
oidc: {issuer: "$issuer", caFile: "$PWD/e2e/.run/pki/ca.crt", audience: sts.amazonaws.com}
roles:
- {arn: "arn:aws:iam::123456789012:role/bedrock-invoker", trustedSubjects: ["system:serviceaccount:$1:app"], allowedModels: ["*"]}
EOF
  tenant_env=(KUBECONFIG="$3/kubeconfig" AI_SIDECAR_NAMESPACE="$1" AI_SIDECAR_POD_NAME="$2"
    AI_SIDECAR_ENDPOINTS=claude-haiku AI_SIDECAR_TOKEN_FILE="$3/irsa-token" AI_SIDECAR_REPORT_INTERVAL=1s)
}
# Every kind of call a pod makes to its sidecar at URL, for the endpoint and template of the seed in
# namespace NS; fails, saying which, unless each is answered 2xx.
sidecar_calls() {
  local url=$1 ns=$2
  post() {
    local answer
    answer=$(curl -sS -w '\n%{http_code}' -X POST -H 'content-type: application/json' -d "$2" "$url$1")
    [[ ${answer##*$'\n'} == 2* ]] || { echo "POST $1 answered ${answer//$'\n'/ }" >&2; return 1; }
  }
  for _ in 1 2 3; do
    post "/invoke/$ns/claude-haiku" '{"messages":[{"role":"user","content":"Hello"}]}'
    post "/invoke/$ns/claude-haiku" '{"messages":[{"role":"user","content":"Mail jane@example.com"}],"stream":true}'
    post "/render/$ns/code-review" '{"variables":{"Diff":"- a\n+ b"}}'
    post "/v1/chat/completions" '{"model":"claude-haiku","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":64}'
    post "/v1/chat/completions" '{"model":"claude-haiku","messages":[{"role":"user","content":"Hi"}],"stream":true,"stream_options":{"include_usage":true}}'
    curl -sfS -o /dev/null "$url/v1/models"
  done
}
# Deletes what cluster_tenant NS made (without waiting for the namespace to go).
delete_cluster_tenant() {
  e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig delete namespace "$1" --wait=false >/dev/null 2>&1 || true
  e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig delete clusterrole,clusterrolebinding "ai-sidecar-$1" >/dev/null 2>&1 || true
  e2e/.bin/kubectl --kubeconfig e2e/.run/kubeconfig delete guardrailpolicy "$1" >/dev/null 2>&1 || true
}

# Makes the virtualenv DIR hold REQUIREMENTS (a pip requirements file); reinstalls only when the
# file changed since the last install, so a changed pin takes effect and an unchanged one costs
# nothing.
ensure_venv() {
  local dir=$1 requirements=$2
  if [[ ! -x "$dir/bin/python" ]] && ! python3 -m venv "$dir" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf "$dir" && python3 -m venv "$dir"
  fi
  cmp -s "$requirements" "$dir/.installed-requirements" && return 0
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$dir/.installed-requirements"
}
