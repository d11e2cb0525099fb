#!/usr/bin/env bash
# The seed README's quick start, end to end, on a one-node cluster where pods run (`make demo`):
#   a real kube-apiserver + etcd, kubelet, containerd + runc, kube-proxy, scheduler and
#   controller-manager (e2e/node.sh, in a network namespace of their own); the images of the
#   operator, the sidecar and an app, built here and imported; the Bedrock/STS emulator on the
#   host; the operator installed with `kubectl apply -k` (manifests/default plus an overlay that
#   sets the images and the emulator's address); the seed's objects applied unchanged; the
#   README's app Deployment, injected by the webhook and started 2/2; the seed's two curl calls
#   run inside the app's container; and the cost they add up to in `kubectl get modelendpoints`.
#
#   scripts/demo.sh          run it and clean up (KEEP=1 leaves everything running)
#   scripts/demo.sh down     stop what a KEEP=1 run left running
#
# Environment: KEEP=1; DEMO_DIR (state: the node, logs, answers; default e2e/.demo). The demo's
# node is its own (DEMO_DIR/node), independent of the one `make test` uses. Needs root: the node
# makes network namespaces, mounts and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${DEMO_DIR:-$root/e2e/.demo}
export K8S_AI_NODE_DIR=$state/node
keep=${KEEP:-0}
kubectl=$root/e2e/.bin/kubectl
target=${CARGO_TARGET_DIR:-$root/target}/debug

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' red=$'\e[31m' reset=$'\e[0m'; else bold='' dim='' red='' reset=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
show() { printf '%s$ %s%s\n' "$dim" "$*" "$reset"; }
fail() { printf '%sdemo: %s%s\n' "$red" "$*" "$reset" >&2; exit 1; }
k() { "$kubectl" --kubeconfig "$K8S_AI_NODE_DIR/kubeconfig" "$@"; }
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

stop_all() {
  if [[ -f "$state/emulator.pid" ]]; then
    kill -TERM "$(cat "$state/emulator.pid")" 2>/dev/null || true
    rm -f "$state/emulator.pid"
  fi
  e2e/node.sh down >/dev/null 2>&1 || true
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
    printf '%sdemo failed; last lines of the logs in %s/logs and %s/logs:%s\n' "$red" "$state" "$K8S_AI_NODE_DIR" "$reset" >&2
    for f in "$state"/logs/*.log "$K8S_AI_NODE_DIR"/logs/kubelet.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
    k get pods -A -o wide >&2 2>/dev/null || true
  fi
  if [[ "$keep" != 1 ]]; then
    stop_all
    ((status != 0)) || rm -rf "$state"
  fi
  exit "$status"
}

[[ -f "$state/emulator.pid" ]] && fail "a demo is already running (state in $state): stop it with 'make demo-down'"
rm -rf "$state"
mkdir -p "$state/logs"
trap on_exit EXIT

step "Building the Bedrock/STS emulator and the images: the operator, the sidecar, an app with curl"
cargo build --locked --bin bedrock-emulator
e2e/node/images.sh "$state/images"

step "Starting a one-node cluster where pods run (built from the Kubernetes Go modules; the first time takes minutes)"
e2e/node.sh up
e2e/node.sh import "$state"/images/*.tar
node_json=$K8S_AI_NODE_DIR/node.json
echo "API server $(jq -r .server "$node_json"), node $(jq -r .node "$node_json") at $(jq -r .nodeIp "$node_json")"
kshow get nodes

step "Starting the Bedrock/STS emulator (it verifies SigV4 and the pods' IRSA tokens against the cluster's OIDC issuer)"
sed -e "s|ISSUER|$(jq -r .issuer "$node_json")|" -e "s|CA_FILE|$(jq -r .caFile "$node_json")|" \
  e2e/node/emulator.yaml >"$state/emulator.yaml"
emulator_address=$(jq -r .emulatorHostAddress "$node_json")
"$target/bedrock-emulator" --listen "$emulator_address" --config "$state/emulator.yaml" >"$state/logs/emulator.log" 2>&1 </dev/null &
echo $! >"$state/emulator.pid"
disown
emulator_url=http://$emulator_address
wait_for 30 "the emulator" curl -sf "$emulator_url/_emulator/config"
echo "emulator on $emulator_url; pods reach it at $(jq -r .emulatorUrl "$node_json")"

step "Installing the operator as users do: kubectl apply -k (manifests/default; e2e/node/overlay sets images and the emulator)"
# A new CRD takes a moment to be served: apply again if the first pass came too early.
kshow apply -k e2e/node/overlay >/dev/null || { sleep 2; k apply -k e2e/node/overlay >/dev/null; }
kshow -n ai-operator-system rollout status deployment/k8s-ai-operator --timeout=180s
wait_for 60 "the webhook's CA bundle" \
  bash -c "[[ -n \$('$kubectl' --kubeconfig '$K8S_AI_NODE_DIR/kubeconfig' get mutatingwebhookconfiguration k8s-ai-operator -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]"
kshow get pods -n ai-operator-system -o wide

step "Applying the seed README's quick start, unchanged (manifests/samples/)"
kshow create namespace ai-workloads
kshow apply -f manifests/samples/guardrailpolicy.yaml
kshow apply -f manifests/samples/modelendpoint.yaml
kshow apply -f manifests/samples/prompttemplate.yaml
wait_for 60 "the GuardrailPolicy to sync to Bedrock" k wait --for=condition=Synced --timeout=5s guardrailpolicy/pii-and-safety
wait_for 60 "the ModelEndpoint to become Ready" k wait --for=condition=Ready --timeout=5s modelendpoint/claude-haiku -n ai-workloads
kshow get guardrailpolicies
kshow get modelendpoints -n ai-workloads

step "The README's app Deployment: the webhook injects the sidecar, the kubelet starts it before the app"
# The README's YAML as it is: its image names the local busybox + curl image (no registry here).
app_yaml=$(
  cat <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-app
  namespace: ai-workloads
spec:
  selector:
    matchLabels:
      app: my-app
  template:
    metadata:
      labels:
        app: my-app
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
printf '%s\n' "$app_yaml"
printf '%s\n' "$app_yaml" | kshow apply -f -
kshow -n ai-workloads rollout status deployment/my-app --timeout=120s
kshow get pods -n ai-workloads -l app=my-app
pod=$(k get pods -n ai-workloads -l app=my-app -o jsonpath='{.items[0].metadata.name}')
show "kubectl get pod $pod -n ai-workloads -o json | jq ..."
k get pod "$pod" -n ai-workloads -o json | tee "$state/pod.json" | jq '{initContainers: [.spec.initContainers[]? | {name, image, restartPolicy}],
  containers: [.spec.containers[] | {name, image}], volumes: [.spec.volumes[].name]}'
# Where everything is, for KEEP=1 users and for the test that asserts this demo (e2e/python).
cat >"$state/demo.env" <<EOF
KUBECONFIG=$K8S_AI_NODE_DIR/kubeconfig
EMULATOR_URL=$emulator_url
POD=$pod
EOF

invoke_body='{"messages":[{"role":"user","content":"Explain Kubernetes operators in two sentences."}]}'
render_body='{"variables":{"Diff":"- password = \"hunter2\"\n+ password = os.getenv(\"PASSWORD\")","Focus":"security"}}'
step "The seed's invoke call, from the app's container"
show "kubectl exec -n ai-workloads deploy/my-app -c app -- curl -s -X POST http://localhost:8090/invoke/ai-workloads/claude-haiku -H 'Content-Type: application/json' -d '$invoke_body' | jq ."
k exec -n ai-workloads deploy/my-app -c app -- \
  curl -s -X POST http://localhost:8090/invoke/ai-workloads/claude-haiku \
  -H "Content-Type: application/json" -d "$invoke_body" | tee "$state/invoke.json" | jq .

step "The seed's render call"
show "kubectl exec -n ai-workloads deploy/my-app -c app -- curl -s -X POST http://localhost:8090/render/ai-workloads/code-review -H 'Content-Type: application/json' -d '$render_body' | jq .content"
k exec -n ai-workloads deploy/my-app -c app -- \
  curl -s -X POST http://localhost:8090/render/ai-workloads/code-review \
  -H "Content-Type: application/json" -d "$render_body" | tee "$state/render.json" | jq .content
jq -e '.costUSD' "$state/invoke.json" >/dev/null || fail "the invoke call did not answer as the seed does"
jq -e '.content' "$state/render.json" >/dev/null || fail "the render call did not answer as the seed does"

step "What it cost: the sidecar's ledger, folded into the endpoint's status by the operator"
wait_for 60 "both calls to reach the endpoint's status" bash -c "[[ \$('$kubectl' --kubeconfig '$K8S_AI_NODE_DIR/kubeconfig' get modelendpoint claude-haiku -n ai-workloads -o jsonpath='{.status.invocationsThisMonth}') == 2 ]]"
kshow get modelusages -n ai-workloads
kshow get modelendpoints -n ai-workloads | tee "$state/modelendpoints.txt"
# The logs as `kubectl logs` shows them (the test checks no secret or prompt reaches them).
k logs -n ai-operator-system -l app.kubernetes.io/name=k8s-ai-operator --tail=-1 >"$state/logs/operator.log"
k logs -n ai-workloads "$pod" -c ai-sidecar >"$state/logs/sidecar.log"

if [[ "$keep" == 1 ]]; then
  cat <<EOF

${bold}Everything is still running (KEEP=1).${reset}
  export KUBECONFIG=$K8S_AI_NODE_DIR/kubeconfig PATH=$root/e2e/.bin:\$PATH
  kubectl get pods,modelendpoints,prompttemplates,modelusages -n ai-workloads
  kubectl exec -n ai-workloads deploy/my-app -c app -- curl -s -X POST \\
    http://localhost:8090/invoke/ai-workloads/claude-haiku -H 'Content-Type: application/json' \\
    -d '{"messages":[{"role":"user","content":"Hello"}]}'
  kubectl logs -n ai-workloads deploy/my-app -c ai-sidecar       # the sidecar's log
  kubectl logs -n ai-operator-system deploy/k8s-ai-operator      # the operator's
  K8S_AI_NODE_DIR=$K8S_AI_NODE_DIR e2e/node.sh shell   # inside the node: ctr, nft, ip
  logs: $state/logs/emulator.log, $K8S_AI_NODE_DIR/logs/ (kubelet, containerd, ...)
Stop it all with: make demo-down
EOF
else
  step "Cleaning up (make demo KEEP=1 leaves it running)"
fi
