#!/usr/bin/env bash
# The seed README's quick start, end to end, on this machine (`make demo`):
#   a real kube-apiserver + etcd, the Bedrock/STS emulator, the operator as a local process that the
#   API server calls as its webhook, the seed's objects applied unchanged, an annotated pod mutated by
#   the webhook, the sidecar run as that pod would run it (its env, its ports, tokens bound to the
#   pod), the seed's two curl calls, and the cost they add up to in `kubectl get modelendpoints`.
#
#   scripts/demo.sh          run it and clean up (KEEP=1 leaves everything running)
#   scripts/demo.sh down     stop what a KEEP=1 run left running
#
# Environment: KEEP=1; DEMO_PORT (the sidecar's data port, default 8090; admin port = DEMO_PORT+1);
# DEMO_DIR (state: logs, tokens, answers; default e2e/.demo). The demo's control plane is its own
# (DEMO_DIR/cluster), independent of the one `make test` uses.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${DEMO_DIR:-$root/e2e/.demo}
export K8S_AI_RUN_DIR=$state/cluster
keep=${KEEP:-0}
data_port=${DEMO_PORT:-8090}
admin_port=$((data_port + 1))
kubectl=$root/e2e/.bin/kubectl
target=${CARGO_TARGET_DIR:-$root/target}/debug

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' red=$'\e[31m' reset=$'\e[0m'; else bold='' dim='' red='' reset=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
show() { printf '%s$ %s%s\n' "$dim" "$*" "$reset"; }
fail() { printf '%sdemo: %s%s\n' "$red" "$*" "$reset" >&2; exit 1; }
k() { "$kubectl" --kubeconfig "$K8S_AI_RUN_DIR/kubeconfig" "$@"; }
# Runs a kubectl command and shows it as a user would type it.
kshow() { show "kubectl $*"; k "$@"; }

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.5
  done
}

start() { # name, command...: a background process with its log and pid in $state
  local name=$1
  shift
  "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name"
  disown
}

stop_all() {
  local f
  for f in "$state"/pids/*; do
    [[ -f "$f" ]] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$state"/pids/*; do
    [[ -f "$f" ]] || continue
    # The operator and the sidecar finish in-flight work on SIGTERM; give them a moment.
    for _ in $(seq 1 20); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  e2e/cluster.sh down >/dev/null 2>&1 || true
}

if [[ "${1:-}" == down ]]; then
  stop_all
  rm -rf "$state"
  echo "demo: stopped and removed $state"
  exit 0
fi

on_exit() {
  local status=$?
  if ((status != 0)); then
    printf '%sdemo failed; last lines of each log in %s/logs:%s\n' "$red" "$state" "$reset" >&2
    for f in "$state"/logs/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  if [[ "$keep" != 1 ]]; then
    stop_all
    ((status != 0)) || rm -rf "$state"
  fi
  exit "$status"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[[ -d "$state/pids" ]] && ls "$state"/pids/* >/dev/null 2>&1 \
  && fail "a demo is already running (state in $state): stop it with 'make demo-down'"
for port in "$data_port" "$admin_port"; do
  port_busy "$port" && fail "port $port is in use: free it or run with DEMO_PORT=<another port>"
done
rm -rf "$state"
mkdir -p "$state/logs" "$state/pids" "$state/pod"
trap on_exit EXIT

step "Building the operator, the sidecar and the Bedrock/STS emulator"
cargo build --locked --bin k8s-ai-operator --bin ai-sidecar --bin bedrock-emulator

step "Starting a real kube-apiserver + etcd (built from the Kubernetes Go modules; the first time takes minutes)"
e2e/cluster.sh up
cluster_json=$K8S_AI_RUN_DIR/cluster.json
issuer=$(jq -r .issuer "$cluster_json")
ca_file=$(jq -r .caFile "$cluster_json")
echo "API server $(jq -r .server "$cluster_json"), Kubernetes $(jq -r .kubernetesVersion "$cluster_json")"

step "Starting the Bedrock/STS emulator (it verifies SigV4 and the pods' IRSA tokens against the cluster's OIDC issuer)"
emulator_port=$(free_port)
cat >"$state/emulator.yaml" <<EOF
oidc: { issuer: "$issuer", caFile: "$ca_file", audience: sts.amazonaws.com }
roles:
- arn: arn:aws:iam::123456789012:role/bedrock-invoker
  trustedSubjects: ["system:serviceaccount:ai-workloads:default"]
  trustedPrincipals: ["*"]
  allowedModels: ["*"]
output:
  mode: fixed
  text: "A Kubernetes operator is a controller that extends the Kubernetes API with custom resources, encoding operational knowledge about a specific application. Operators watch those custom resources and take action to reconcile the actual state of the system toward the desired state you've declared."
EOF
start emulator "$target/bedrock-emulator" --listen "127.0.0.1:$emulator_port" --config "$state/emulator.yaml"
emulator_url=http://127.0.0.1:$emulator_port
wait_for 30 "the emulator" curl -sf "$emulator_url/_emulator/config"
echo "emulator on $emulator_url"

step "Installing the CRDs, the sidecar's RBAC and the ledger's admission policy (manifests/)"
kshow apply --server-side -k manifests/crds
# A brand-new CRD has no conditions for a moment, and `kubectl wait` errors on that: retry.
wait_for 60 "the CRDs" k wait --for=condition=Established --timeout=5s crd -l app.kubernetes.io/part-of=k8s-ai-operator
kshow apply -f manifests/rbac/sidecar-clusterroles.yaml
kshow apply -k manifests/ledger
kshow create namespace ai-operator-system

step "Starting the operator (a local process; the API server calls its webhook on 127.0.0.1)"
webhook_port=$(free_port)
metrics_port=$(free_port)
# The webhook configuration of manifests/default, pointed at this process instead of the Service.
k create --dry-run=client -o json -f manifests/default/mutating-webhook-configuration.yaml \
  | jq --arg url "https://127.0.0.1:$webhook_port/mutate" '.webhooks[0].clientConfig = {url: $url}' \
  | k apply -f - >/dev/null
start operator env KUBECONFIG="$K8S_AI_RUN_DIR/kubeconfig" \
  AWS_ENDPOINT_URL="$emulator_url" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY \
  "$target/k8s-ai-operator" run --namespace ai-operator-system \
  --webhook-listen "127.0.0.1:$webhook_port" --metrics-listen "127.0.0.1:$metrics_port" \
  --cert-extra-names 127.0.0.1 --sidecar-image ghcr.io/kernelpanic09/ai-sidecar:dev --log-format text
wait_for 60 "the operator to become ready" curl -sf "http://127.0.0.1:$metrics_port/readyz"
wait_for 60 "the webhook's CA bundle" \
  bash -c "[[ -n \$('$kubectl' --kubeconfig '$K8S_AI_RUN_DIR/kubeconfig' get mutatingwebhookconfiguration k8s-ai-operator -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]"
echo "operator ready: webhook https://127.0.0.1:$webhook_port/mutate, metrics http://127.0.0.1:$metrics_port/metrics"

step "Applying the seed README's quick start, unchanged (manifests/samples/)"
kshow create namespace ai-workloads
# No controller-manager runs here to create it, and pods need one.
k create serviceaccount default -n ai-workloads >/dev/null
kshow apply -f manifests/samples/guardrailpolicy.yaml
kshow apply -f manifests/samples/modelendpoint.yaml
kshow apply -f manifests/samples/prompttemplate.yaml
wait_for 60 "the GuardrailPolicy to sync to Bedrock" k wait --for=condition=Synced --timeout=5s guardrailpolicy/pii-and-safety
wait_for 60 "the ModelEndpoint to become Ready" k wait --for=condition=Ready --timeout=5s modelendpoint/claude-haiku -n ai-workloads
kshow get guardrailpolicies
kshow get modelendpoints -n ai-workloads

step "Creating an annotated pod: the webhook injects the sidecar"
pod_yaml=$(
  cat <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: demo-app
  namespace: ai-workloads
  annotations:
    ai.kernelpanic09.io/inject: "true"
    ai.kernelpanic09.io/endpoints: claude-haiku
spec:
  containers:
  - name: app
    image: curlimages/curl:8.11.1
    command: ["sleep", "infinity"]
EOF
)
printf '%s\n' "$pod_yaml"
printf '%s\n' "$pod_yaml" | kshow create -f -
k get pod demo-app -n ai-workloads -o json >"$state/pod/pod.json"
sidecar_json=$(jq -c '[.spec.initContainers[]?, .spec.containers[]] | map(select(.name == "ai-sidecar")) | first' "$state/pod/pod.json")
[[ "$sidecar_json" != null ]] || fail "the pod was not mutated: no ai-sidecar container"
show "kubectl get pod demo-app -n ai-workloads -o json | jq ..."
jq '{annotations: .metadata.annotations, initContainers: [.spec.initContainers[]? | {name, image, restartPolicy}],
     containers: [.spec.containers[] | {name, image}], volumes: [.spec.volumes[].name]}' "$state/pod/pod.json"

step "Running the sidecar as that pod would: its env and ports, tokens bound to the pod"
# Two tokens, both bound to the pod (they die with it): one for STS (IRSA), one for the API server.
k create token default -n ai-workloads --bound-object-kind Pod --bound-object-name demo-app \
  --audience sts.amazonaws.com --duration 1h >"$state/pod/irsa-token"
api_token=$(k create token default -n ai-workloads --bound-object-kind Pod --bound-object-name demo-app --duration 1h)
cat >"$state/pod/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$(jq -r .server "$cluster_json")", certificate-authority: "$ca_file"}}]
users: [{name: demo-app, user: {token: "$api_token"}}]
contexts: [{name: demo-app, context: {cluster: demo, user: demo-app, namespace: ai-workloads}}]
current-context: demo-app
EOF
# The mutated spec's env, with its field references resolved as the kubelet would.
mapfile -t pod_env < <(jq -r --slurpfile pod "$state/pod/pod.json" '.env[] |
  if .value != null then "\(.name)=\(.value)"
  elif .valueFrom.fieldRef.fieldPath == "metadata.name" then "\(.name)=\($pod[0].metadata.name)"
  elif .valueFrom.fieldRef.fieldPath == "metadata.namespace" then "\(.name)=\($pod[0].metadata.namespace)"
  else empty end' <<<"$sidecar_json")
printf '  %s\n' "${pod_env[@]}"
start sidecar env "${pod_env[@]}" \
  AI_SIDECAR_TOKEN_FILE="$state/pod/irsa-token" KUBECONFIG="$state/pod/kubeconfig" \
  AI_SIDECAR_LISTEN="127.0.0.1:$data_port" AI_SIDECAR_ADMIN_LISTEN="127.0.0.1:$admin_port" \
  AI_SIDECAR_LOG_FORMAT=text "$target/ai-sidecar"
wait_for 30 "the sidecar to become ready" curl -sf "http://127.0.0.1:$admin_port/readyz"
echo "sidecar ready on http://localhost:$data_port (admin and metrics on :$admin_port)"
# Where everything is, for KEEP=1 users and for the test that asserts this demo (e2e/python).
cat >"$state/demo.env" <<EOF
KUBECONFIG=$K8S_AI_RUN_DIR/kubeconfig
EMULATOR_URL=$emulator_url
OPERATOR_METRICS_URL=http://127.0.0.1:$metrics_port/metrics
SIDECAR_URL=http://localhost:$data_port
SIDECAR_ADMIN_URL=http://127.0.0.1:$admin_port
EOF

step "The seed's invoke call"
show "curl -s -X POST http://localhost:$data_port/invoke/ai-workloads/claude-haiku -H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Explain Kubernetes operators in two sentences.\"}]}' | jq ."
curl -s -X POST \
  "http://localhost:$data_port/invoke/ai-workloads/claude-haiku" \
  -H "Content-Type: application/json" \
  -d '{"messages":[{"role":"user","content":"Explain Kubernetes operators in two sentences."}]}' \
  | tee "$state/invoke.json" | jq .

step "The seed's render call"
show "curl -s -X POST http://localhost:$data_port/render/ai-workloads/code-review -H 'Content-Type: application/json' -d '{\"variables\":{\"Diff\":...,\"Focus\":\"security\"}}' | jq .content"
curl -s -X POST \
  "http://localhost:$data_port/render/ai-workloads/code-review" \
  -H "Content-Type: application/json" \
  -d '{"variables":{"Diff":"- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")","Focus":"security"}}' \
  | tee "$state/render.json" | jq .content
jq -e '.costUSD' "$state/invoke.json" >/dev/null || fail "the invoke call did not answer as the seed does"
jq -e '.content' "$state/render.json" >/dev/null || fail "the render call did not answer as the seed does"

step "What it cost: the sidecar's ledger, folded into the endpoint's status by the operator"
wait_for 60 "both calls to reach the endpoint's status" bash -c "[[ \$('$kubectl' --kubeconfig '$K8S_AI_RUN_DIR/kubeconfig' get modelendpoint claude-haiku -n ai-workloads -o jsonpath='{.status.invocationsThisMonth}') == 2 ]]"
kshow get modelusages -n ai-workloads
kshow get modelendpoints -n ai-workloads | tee "$state/modelendpoints.txt"

if [[ "$keep" == 1 ]]; then
  cat <<EOF

${bold}Everything is still running (KEEP=1).${reset}
  export KUBECONFIG=$K8S_AI_RUN_DIR/kubeconfig PATH=$root/e2e/.bin:\$PATH
  kubectl get modelendpoints,prompttemplates,modelusages -n ai-workloads
  curl -s -X POST http://localhost:$data_port/invoke/ai-workloads/claude-haiku -H 'Content-Type: application/json' \\
    -d '{"messages":[{"role":"user","content":"Hello"}]}' | jq .
  curl -s http://127.0.0.1:$admin_port/metrics        # the sidecar's metrics
  curl -s http://127.0.0.1:$metrics_port/metrics      # the operator's (cost per endpoint, availability)
  logs: $state/logs/{operator,sidecar,emulator}.log
Stop it all with: make demo-down
EOF
else
  step "Cleaning up (make demo KEEP=1 leaves it running)"
fi
