#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine; quick when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[deps] %s\n' "$*" >&2; }

# Debian packages the build uses (TLS roots and a C toolchain for ring).
need_apt=()
# promtool (package prometheus) checks every metrics page in the tests; openssl reads served
# certificates; jq shapes JSON in `make demo`; musl-gcc, bwrap and file check what the
# Dockerfiles promise (a static binary serving as a non-root user on a read-only root).
# The real node (e2e/node.sh) runs containers with runc, proxies Services with nftables, and its
# app image is busybox (static) with curl. buildah builds Dockerfile.operator and Dockerfile.sidecar
# for it (e2e/node/images.sh); tzdata goes into their base image. actionlint hands the release
# workflow's shell steps to shellcheck.
for cmd_pkg in "cc:build-essential" "pkg-config:pkg-config" "curl:curl" "promtool:prometheus" "openssl:openssl" "jq:jq" \
  "musl-gcc:musl-tools" "bwrap:bubblewrap" "file:file" "setpriv:util-linux" "runc:runc" "nft:nftables" \
  "conntrack:conntrack" "ip:iproute2" "nsenter:util-linux" "buildah:buildah" "shellcheck:shellcheck"; do
  command -v "${cmd_pkg%%:*}" >/dev/null || need_apt+=("${cmd_pkg#*:}")
done
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || need_apt+=(ca-certificates)
[[ -d /usr/share/zoneinfo ]] || need_apt+=(tzdata)
[[ -x /bin/busybox ]] && file -b /bin/busybox | grep -q 'statically linked' || need_apt+=(busybox-static)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Rust components (cargo fmt and clippy) and the musl target the images are built for.
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
  musl="$(uname -m)-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl"
fi
command -v cargo >/dev/null || { log "cargo is required (https://rustup.rs)"; exit 1; }
# cargo deny checks licences, bans and sources in `make test` (built once into ~/.cargo/bin).
command -v cargo-deny >/dev/null || { log "cargo install cargo-deny"; cargo install --locked cargo-deny@0.20.2; }
# Fuzzing (scripts/fuzz.sh, smoke run in `make test`): cargo fuzz needs a nightly toolchain for
# its sanitizer flags; the nightly is used for nothing else.
if command -v rustup >/dev/null; then
  rustup run nightly rustc --version >/dev/null 2>&1 || { log "rustup toolchain install nightly"; rustup toolchain install nightly --profile minimal; }
fi
command -v cargo-fuzz >/dev/null || { log "cargo install cargo-fuzz"; cargo install --locked cargo-fuzz@0.13.2; }
command -v go >/dev/null || { log "Go is required to build the test control plane"; exit 1; }

# Python clients for the end-to-end tests, in their own virtualenv (cached).
venv="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  python3 -m venv "$venv" || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r e2e/python/requirements.txt
ministack_venv="${venv%/venv}/ministack-venv"
[[ -x "$ministack_venv/bin/python" ]] || python3 -m venv "$ministack_venv"
"$ministack_venv/bin/pip" install -q --disable-pip-version-check -r e2e/python/ministack-requirements.txt

# Go modules of the control plane, and the control plane and the node's binaries (cached per go.sum).
(cd e2e/controlplane && go mod download)
e2e/cluster.sh build
e2e/node/build.sh >/dev/null
# The OpenTelemetry Collector the sidecar's traces are checked against (cached per go.sum).
e2e/otelcol/build.sh >/dev/null
