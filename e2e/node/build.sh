#!/usr/bin/env bash
# Builds the test node's binaries once per pinned version, into $K8S_AI_CACHE/node-<key>/:
#   kubelet, kube-proxy, kube-scheduler, kube-controller-manager, netfwd and pause (static) from
#   the module in e2e/controlplane (the same Kubernetes release as the API server);
#   containerd, ctr and containerd-shim-runc-v2 (CGO off, no btrfs), and the CNI plugins bridge,
#   host-local, loopback and portmap, each from its own module at the version pinned below.
# runc and nftables come from Debian (scripts/install-deps.sh). Prints the directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
containerd_version=v2.4.2
cni_version=v1.10.0

log() { printf '[node] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "Go is required to build the test node"; exit 1; }
version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/controlplane/go.mod")
minor=${version#v1.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
key=$( (cat "$here/controlplane/go.mod" "$here/controlplane/go.sum" "$here/controlplane/cmd/"*/*.go
  echo "$ldflags $containerd_version $cni_version") \
  | sha256sum | cut -c1-16)
out="$cache/node-$key"
if [[ ! -f "$out/.complete" ]]; then
  log "building the node's binaries (first time: 10-15 minutes on 2 cores)..."
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  start=$SECONDS
  (
    cd "$here/controlplane"
    for cmd in kubelet kube-proxy kube-scheduler kube-controller-manager; do
      log "  $cmd"
      go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
    CGO_ENABLED=0 go build -trimpath -o "$out.tmp/netfwd" ./cmd/netfwd
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp/pause" ./cmd/pause
  )
  log "  containerd $containerd_version"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    GOBIN="$out.tmp" CGO_ENABLED=0 GOFLAGS=-trimpath go install -tags no_btrfs \
      "github.com/containerd/containerd/v2/cmd/$cmd@$containerd_version"
  done
  log "  CNI plugins $cni_version"
  mkdir -p "$out.tmp/cni"
  for plugin in main/bridge main/loopback ipam/host-local meta/portmap; do
    GOBIN="$out.tmp/cni" CGO_ENABLED=0 GOFLAGS=-trimpath go install \
      "github.com/containernetworking/plugins/plugins/$plugin@$cni_version"
  done
  touch "$out.tmp/.complete"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "built in $((SECONDS - start))s into $out"
fi
echo "$out"
