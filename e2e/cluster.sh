#!/usr/bin/env bash
# The test control plane: a real kube-apiserver + embedded etcd built from the Kubernetes Go
# modules pinned in e2e/controlplane/go.mod, plus a kubectl of the same release.
#
#   e2e/cluster.sh build   build both binaries once per go.sum (cached in $K8S_AI_CACHE)
#   e2e/cluster.sh up      build if needed, start in the background, wait until ready (idempotent)
#   e2e/cluster.sh down    stop it
#   e2e/cluster.sh status  exit 0 when it is up
#
# State lives in e2e/.run/: kubeconfig, cluster.json, apiserver.log. Binaries are linked into e2e/.bin/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# K8S_AI_RUN_DIR gives a second, independent control plane (make demo uses e2e/.demo).
run_dir="${K8S_AI_RUN_DIR:-$here/.run}"
bin_dir="$here/.bin"
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"

log() { printf '[cluster] %s\n' "$*" >&2; }

build() {
  command -v go >/dev/null || { log "Go is required to build the test control plane"; exit 1; }
  # Stamp the pinned release into both binaries (a module build has no git tree to read it from).
  local version ldflags key
  version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/controlplane/go.mod")
  local minor=${version#v1.}; minor=${minor%%.*}
  ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  key=$( (cat "$here/controlplane/go.mod" "$here/controlplane/go.sum" "$here/controlplane/"*.go; echo "$ldflags") | sha256sum | cut -c1-16)
  local out="$cache/controlplane-$key"
  if [[ ! -x "$out/controlplane" || ! -x "$out/kubectl" ]]; then
    log "building kube-apiserver + etcd and kubectl from Go modules (first time: several minutes)..."
    mkdir -p "$out.tmp"
    local start=$SECONDS
    (cd "$here/controlplane" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/controlplane" . \
      && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl)
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "built in $((SECONDS - start))s into $out"
  fi
  mkdir -p "$bin_dir"
  ln -sfn "$out/controlplane" "$bin_dir/controlplane"
  ln -sfn "$out/kubectl" "$bin_dir/kubectl"
}

pid_alive() { [[ -f "$run_dir/pid" ]] && kill -0 "$(cat "$run_dir/pid")" 2>/dev/null; }

status() {
  pid_alive && [[ -f "$run_dir/cluster.json" ]] \
    && "$bin_dir/kubectl" --kubeconfig "$run_dir/kubeconfig" get --raw /readyz >/dev/null 2>&1
}

up() {
  build
  if status; then
    log "already running ($(grep -o '"server": "[^"]*"' "$run_dir/cluster.json"))"
    return 0
  fi
  down quiet
  mkdir -p "$run_dir"
  rm -f "$run_dir/cluster.json"
  log "starting kube-apiserver..."
  setsid nohup "$bin_dir/controlplane" --run-dir "$run_dir" >"$run_dir/apiserver.log" 2>&1 </dev/null &
  echo $! >"$run_dir/pid"
  local deadline=$((SECONDS + 180))
  until [[ -f "$run_dir/cluster.json" ]]; do
    if ! pid_alive; then
      log "kube-apiserver exited; last lines of $run_dir/apiserver.log:"
      tail -n 30 "$run_dir/apiserver.log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "kube-apiserver not ready after 180s; see $run_dir/apiserver.log"
      exit 1
    fi
    sleep 0.5
  done
  log "ready: KUBECONFIG=$run_dir/kubeconfig (kubectl: $bin_dir/kubectl)"
}

down() {
  if pid_alive; then
    local pid
    pid=$(cat "$run_dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    [[ "${1:-}" == quiet ]] || log "stopped"
  fi
  rm -f "$run_dir/pid" "$run_dir/cluster.json"
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 build|up|down|status" >&2; exit 2 ;;
esac
