#!/usr/bin/env bash
# The test cluster with a real node: the control plane of e2e/cluster.sh plus containerd + runc,
# a kubelet, kube-proxy (nftables), kube-scheduler and kube-controller-manager, all built from
# their Go modules (e2e/node/build.sh) and run in a network namespace of their own, so node and pod
# addresses exist only there. The host reaches the API server on 127.0.0.1 through a forwarder;
# pods reach the host's Bedrock emulator on $NODE_IP:4566 through another, its EKS Pod Identity
# agent on 169.254.170.23:80, where EKS's agent listens on every node, and an OpenTelemetry
# Collector the tests start on the host (node.json's collectorHostAddress) on $NODE_IP:4318, where
# a collector DaemonSet's hostPort would be.
#
#   e2e/node.sh build          build the node's binaries once per pinned version (cached)
#   e2e/node.sh up             build if needed, start, wait until the node is Ready (idempotent)
#   e2e/node.sh down           stop it: no process, mount, cgroup or namespace is left behind
#   e2e/node.sh status         exit 0 when it is up
#   e2e/node.sh import TAR...  import OCI image tarballs (e2e/node/images.sh) into the node
#   e2e/node.sh tag IMAGE NAME another name for an imported image (a "new release" of it)
#   e2e/node.sh shell          a shell in the node's namespaces (crictl-free debugging: ctr, nft, ip)
#
# State lives in e2e/.node/ (K8S_AI_NODE_DIR): kubeconfig, node.json (addresses, the emulator's
# host port), logs/. Processes inside the namespace: e2e/.node/pids/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir="${K8S_AI_NODE_DIR:-$here/.node}"
run_dir=$(mkdir -p "$run_dir" && cd "$run_dir" && pwd)
id=$(printf '%s' "$run_dir" | sha256sum | cut -c1-8)
netns="k8sai-$id"
netns_path="/run/netns/$netns"
cgroup_root="/k8sai-$id"
node_name=k8sai-node
node_ip=10.200.0.2
pod_cidr=10.244.0.0/24
apiserver_port=6443
emulator_node_port=4566
collector_node_port=4318
pod_identity_agent=169.254.170.23
kubectl="$here/.bin/kubectl"
# Set by the kubelet on every node (vm.overcommit_memory=1, kernel.panic=10, ...): restored on down.
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { printf '[node] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

bin=""
build() {
  bin=$("$here/node/build.sh")
  "$here/cluster.sh" build
}

pid_of() { [[ -f "$run_dir/pids/$1" ]] && cat "$run_dir/pids/$1"; }
alive() { local pid; pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null; }

# Runs a command in the node's network and mount namespaces.
in_node() { nsenter -t "$(pid_of holder)" -n -m -- "$@"; }

# Starts a named process in the node's namespaces, in the background, logging to logs/NAME.log.
start() {
  local name=$1
  shift
  setsid nohup nsenter -t "$(pid_of holder)" -n -m -- "$@" >"$run_dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run_dir/pids/$name"
}

wait_for() { # seconds, what, command...
  local seconds=$1 what=$2
  local deadline=$((SECONDS + seconds))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out after ${seconds}s waiting for $what; last lines of the logs in $run_dir/logs:"
      for f in "$run_dir"/logs/*.log; do echo "--- $f" >&2; tail -n 8 "$f" >&2; done
      exit 1
    fi
    sleep 0.3
  done
}

k() { "$kubectl" --kubeconfig "$run_dir/kubeconfig" "$@"; }

status() {
  alive holder && alive controlplane && alive kubelet && alive netfwd \
    && [[ -f "$run_dir/node.json" ]] \
    && k get --raw /readyz >/dev/null 2>&1 \
    && [[ $(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

setup_netns() {
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  # A veth pair gives the node its address (this kernel has no dummy links); its peer leads nowhere.
  ip -n "$netns" link add vnode type veth peer name vpeer
  ip -n "$netns" addr add "$node_ip/24" dev vnode
  # Where EKS's Pod Identity agent listens on every node (hostNetwork): the emulator serves it.
  ip -n "$netns" addr add "$pod_identity_agent/32" dev vnode
  ip -n "$netns" link set vnode up
  ip -n "$netns" link set vpeer up
  # Packets to Service addresses need a route before kube-proxy rewrites them.
  ip -n "$netns" route add default via 10.200.0.1 dev vnode
  ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
}

# The cgroup hierarchies: each v1 controller's mount, or the one v2 mount.
hierarchies() {
  local mount
  if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then echo /sys/fs/cgroup/; return; fi
  for mount in /sys/fs/cgroup/*/; do
    if mountpoint -q "$mount"; then echo "$mount"; fi
  done
}

# The kubelet wants its --cgroup-root to exist in every hierarchy.
setup_cgroups() {
  local hierarchy
  for hierarchy in $(hierarchies); do
    mkdir -p "$hierarchy$cgroup_root"
    if [[ -e "$hierarchy/cpuset.cpus" ]]; then
      cat "$hierarchy/cpuset.cpus" >"$hierarchy$cgroup_root/cpuset.cpus"
      cat "$hierarchy/cpuset.mems" >"$hierarchy$cgroup_root/cpuset.mems"
    fi
  done
}

write_configs() {
  local cluster_json=$run_dir/controlplane/cluster.json token ca
  token=$(jq -r .token "$cluster_json")
  ca=$run_dir/controlplane/pki/ca.crt
  cat >"$run_dir/node-kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: node, cluster: {server: "https://$node_ip:$apiserver_port", certificate-authority: "$ca"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: node, context: {cluster: node, user: admin}}]
current-context: node
EOF
  chmod 600 "$run_dir/node-kubeconfig"

  mkdir -p "$run_dir/cni/net.d" "$run_dir/cni/ipam" "$run_dir/containerd" "$run_dir/kubelet"
  cat >"$run_dir/cni/net.d/10-k8sai.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8sai",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
             "dataDir": "$run_dir/cni/ipam"}
  }]
}
EOF
  cat >"$run_dir/containerd/config.toml" <<EOF
version = 3
root = "$run_dir/containerd/root"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "localhost/k8s-ai/pause:e2e"

[plugins."io.containerd.cri.v1.runtime"]
  # This VM has no CAP_SYS_RESOURCE: runc cannot lower a container's oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$bin/cni"]
    conf_dir = "$run_dir/cni/net.d"
EOF
  echo "nameserver 127.0.0.1" >"$run_dir/resolv.conf"
  cat >"$run_dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has cgroup v1 (hybrid) and swap settings the kubelet refuses by default.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ca}
authorization: {mode: Webhook}
clusterDomain: cluster.local
# No cluster DNS runs here: pods use addresses, and this resolver answers nothing.
resolvConf: $run_dir/resolv.conf
# Images are imported, never pulled: never collect them, never evict for a full test disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
EOF
  cat >"$run_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $run_dir/node-kubeconfig}
hostnameOverride: $node_name
clusterCIDR: $pod_cidr
# Leave the kernel's conntrack table size alone (a host-wide setting).
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

up() {
  build
  if status; then
    log "already running (KUBECONFIG=$run_dir/kubeconfig)"
    return 0
  fi
  down quiet
  [[ $(id -u) == 0 ]] || fail "the node needs root (network namespaces, mounts, cgroups)"
  for cmd in runc nft ip nsenter unshare jq; do command -v "$cmd" >/dev/null || fail "$cmd is missing: run scripts/install-deps.sh"; done
  local start=$SECONDS
  rm -rf "$run_dir/controlplane" "$run_dir/containerd" "$run_dir/kubelet" "$run_dir/cni" "$run_dir/var" "$run_dir/logs" "$run_dir/pids"
  mkdir -p "$run_dir/logs" "$run_dir/pids" "$run_dir/var/lib" "$run_dir/var/log"
  for s in "${sysctls[@]}"; do printf '%s=%s\n' "$s" "$(sysctl -n "$s")"; done >"$run_dir/sysctls"

  setup_netns
  setup_cgroups
  # The node's mount namespace: /run, /var/lib and /var/log of its own, so containerd, the kubelet
  # and the CNI plugins leave nothing on the host. Held open by a sleeping process.
  setsid nohup nsenter --net="$netns_path" -- unshare --mount --propagation private -- bash -c "
    mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/netns
    mount --bind '$run_dir/var/lib' /var/lib && mount --bind '$run_dir/var/log' /var/log
    touch '$run_dir/holder.ready'
    exec sleep infinity" >"$run_dir/logs/holder.log" 2>&1 </dev/null &
  echo $! >"$run_dir/pids/holder"
  wait_for 10 "the node's mount namespace" test -f "$run_dir/holder.ready"
  rm -f "$run_dir/holder.ready"

  local host_port emulator_host_port collector_host_port
  host_port=$(free_port)
  emulator_host_port=$(free_port)
  collector_host_port=$(free_port)
  start controlplane "$here/.bin/controlplane" --run-dir "$run_dir/controlplane" --port "$apiserver_port" \
    --node-ip "$node_ip" --public-server "https://127.0.0.1:$host_port"
  setsid nohup "$bin/netfwd" "127.0.0.1:$host_port=$netns_path:$node_ip:$apiserver_port" \
    "$netns_path:$node_ip:$emulator_node_port=127.0.0.1:$emulator_host_port" \
    "$netns_path:$pod_identity_agent:80=127.0.0.1:$emulator_host_port" \
    "$netns_path:$node_ip:$collector_node_port=127.0.0.1:$collector_host_port" \
    >"$run_dir/logs/netfwd.log" 2>&1 </dev/null &
  echo $! >"$run_dir/pids/netfwd"

  wait_for 180 "kube-apiserver" test -f "$run_dir/controlplane/cluster.json"
  cp "$run_dir/controlplane/kubeconfig" "$run_dir/kubeconfig"
  write_configs
  start containerd "$bin/containerd" --config "$run_dir/containerd/config.toml" --log-level warn
  wait_for 30 "containerd" in_node "$bin/ctr" --address /run/containerd/containerd.sock version
  import_images "$(pause_image)"

  start kubelet "$bin/kubelet" --config "$run_dir/kubelet/config.yaml" --kubeconfig "$run_dir/node-kubeconfig" \
    --root-dir "$run_dir/kubelet/root" --hostname-override "$node_name" --node-ip "$node_ip" \
    --cert-dir "$run_dir/kubelet/pki" --v=1
  start kube-proxy "$bin/kube-proxy" --config "$run_dir/kube-proxy.yaml" --v=1
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$run_dir/node-kubeconfig" \
    --authentication-kubeconfig "$run_dir/node-kubeconfig" --authorization-kubeconfig "$run_dir/node-kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --v=1
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$run_dir/node-kubeconfig" \
    --authentication-kubeconfig "$run_dir/node-kubeconfig" --authorization-kubeconfig "$run_dir/node-kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --root-ca-file "$run_dir/controlplane/pki/ca.crt" \
    --service-account-private-key-file "$run_dir/controlplane/pki/sa.key" \
    --cluster-cidr "$pod_cidr" --service-cluster-ip-range 10.96.0.0/16 --use-service-account-credentials=false \
    --concurrent-gc-syncs 5 --v=1

  wait_for 120 "the node to be Ready" bash -c "[[ \$('$kubectl' --kubeconfig '$run_dir/kubeconfig' get node $node_name -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
  # Pods need their namespace's default ServiceAccount and the cluster's CA ConfigMap.
  wait_for 60 "the controller-manager" k get serviceaccount default -n default
  wait_for 60 "the root CA ConfigMap" k get configmap kube-root-ca.crt -n default
  jq -n --arg kubeconfig "$run_dir/kubeconfig" --arg server "https://127.0.0.1:$host_port" \
    --arg nodeIp "$node_ip" --arg node "$node_name" --arg netns "$netns_path" \
    --arg emulatorHostAddress "127.0.0.1:$emulator_host_port" --arg emulatorUrl "http://$node_ip:$emulator_node_port" \
    --arg collectorHostAddress "127.0.0.1:$collector_host_port" \
    --arg issuer "$(jq -r .issuer "$run_dir/controlplane/cluster.json")" --arg caFile "$run_dir/controlplane/pki/ca.crt" \
    '{kubeconfig: $kubeconfig, server: $server, issuer: $issuer, caFile: $caFile, node: $node, nodeIp: $nodeIp,
      netns: $netns, emulatorHostAddress: $emulatorHostAddress, emulatorUrl: $emulatorUrl,
      collectorHostAddress: $collectorHostAddress}' >"$run_dir/node.json"
  log "ready in $((SECONDS - start))s: KUBECONFIG=$run_dir/kubeconfig (kubectl: $kubectl); node $node_name at $node_ip"
}

pause_image() {
  local tar=$run_dir/images/pause.tar
  mkdir -p "$run_dir/images"
  [[ -f "$tar" ]] || python3 "$here/node/image.py" --name localhost/k8s-ai/pause:e2e --out "$tar" \
    --file "$bin/pause:/pause" --entrypoint /pause --user 65535:65535 >&2
  echo "$tar"
}

import_images() {
  local tar
  for tar in "$@"; do
    # ctr warns on every call that cgroup v1 is deprecated: keep only real errors.
    in_node "$bin/ctr" --address /run/containerd/containerd.sock -n k8s.io images import "$(realpath "$tar")" 2>&1 >/dev/null \
      | { grep -v 'DEPRECATION: The support for cgroup v1' || true; } >&2
  done
}

# Every process of the node: in its network or mount namespace, or in its cgroups (containers).
node_pids() {
  local holder netns_ino mnt_ino pid
  netns_ino=$(stat -Lc %i "$netns_path" 2>/dev/null || true)
  holder=$(pid_of holder || true)
  mnt_ino=$([[ -n "$holder" ]] && stat -Lc %i "/proc/$holder/ns/mnt" 2>/dev/null || true)
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ "$pid" == "$$" ]] && continue
    if { [[ -n "$netns_ino" ]] && [[ $(stat -Lc %i "/proc/$pid/ns/net" 2>/dev/null) == "$netns_ino" ]]; } \
      || { [[ -n "$mnt_ino" ]] && [[ $(stat -Lc %i "/proc/$pid/ns/mnt" 2>/dev/null) == "$mnt_ino" ]]; }; then
      echo "$pid"
    fi
  done
  local hierarchy
  for hierarchy in $(hierarchies); do
    find "$hierarchy$cgroup_root" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done
  local f
  for f in "$run_dir"/pids/*; do
    if [[ -f "$f" ]]; then cat "$f"; fi
  done
}

down() {
  local quiet=${1:-} pids
  # Ask politely first (the kubelet and containerd would otherwise leave shims to kill), then kill.
  for name in kube-controller-manager kube-scheduler kube-proxy kubelet; do
    alive "$name" && kill -TERM "$(pid_of "$name")" 2>/dev/null || true
  done
  for _ in 1 2 3; do
    pids=$(node_pids | sort -u)
    [[ -z "$pids" ]] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.3
  done
  # Container cgroups go once their processes are gone; deepest first.
  local hierarchy
  for hierarchy in $(hierarchies); do
    [[ -d "$hierarchy$cgroup_root" ]] || continue
    for _ in 1 2 3 4 5; do
      find "$hierarchy$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "$hierarchy$cgroup_root" ]] || break
      sleep 0.3
    done
    [[ -d "$hierarchy$cgroup_root" ]] && log "could not remove $hierarchy$cgroup_root"
  done
  [[ -e "$netns_path" ]] && ip netns del "$netns" 2>/dev/null || true
  # `ip netns add` bind-mounts /run/netns onto itself; undo that when no namespace is left in it.
  if mountpoint -q /run/netns && [[ -z $(ls -A /run/netns) ]]; then umount /run/netns || true; fi
  if [[ -f "$run_dir/sysctls" ]]; then
    sysctl -qw $(cat "$run_dir/sysctls") >/dev/null 2>&1 || true
    rm -f "$run_dir/sysctls"
  fi
  rm -rf "$run_dir/pids" "$run_dir/node.json"
  [[ "$quiet" == quiet ]] || log "stopped"
}

case "${1:-}" in
  build) build; echo "$bin" ;;
  up) up ;;
  down) down ;;
  status) status ;;
  import) shift; bin=$("$here/node/build.sh"); import_images "$@" ;;
  tag)
    [[ $# -eq 3 ]] || { echo "usage: $0 tag IMAGE NAME" >&2; exit 2; }
    bin=$("$here/node/build.sh")
    in_node "$bin/ctr" --address /run/containerd/containerd.sock -n k8s.io images tag --force "$2" "$3" 2>&1 >/dev/null \
      | { grep -v 'DEPRECATION: The support for cgroup v1' || true; } >&2 ;;
  shell) nsenter -t "$(pid_of holder)" -n -m -- bash ;;
  *) echo "usage: $0 build|up|down|status|import TAR...|tag IMAGE NAME|shell" >&2; exit 2 ;;
esac
