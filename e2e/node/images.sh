#!/usr/bin/env bash
# Builds the images the test node runs and writes them as OCI tarballs into $1 (default
# e2e/.node/images), printing their paths and sizes:
#   localhost/k8s-ai/operator:e2e   the operator, static (musl, debug profile: the release profile
#                                    only optimises the same code), as Dockerfile.operator's stage
#   localhost/k8s-ai/ai-sidecar:e2e the sidecar, built exactly as Dockerfile.sidecar builds it
#   localhost/k8s-ai/app:e2e        an app with a shell (busybox) and curl, for the quick start;
#                                    also named docker.io/curlimages/curl:8.11.1, so the README's
#                                    Deployment applies verbatim (its image is never pulled here)
#   localhost/k8s-ai/python-app:e2e the same with Python and boto3 (e2e/node/python_app.py), for
#                                    an unchanged Bedrock app routed through the sidecar; built
#                                    only when $PYTHON names an interpreter that has boto3
# The two of ours sit on what distroless/static holds (CA certificates, tzdata, an /etc/passwd
# with the nonroot user 65532), taken from Debian's packages. No registry is reachable here, so
# nothing is pulled; the issue on images builds the Dockerfiles themselves with buildah.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/e2e/.node/images}
target_dir=${CARGO_TARGET_DIR:-$root/target}
musl="$(uname -m)-unknown-linux-musl"
mkdir -p "$out"
cd "$root"

cargo build --locked --quiet --target "$musl" --bin k8s-ai-operator
cargo build --locked --quiet --profile sidecar --target "$musl" --bin ai-sidecar

distroless=(
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt
  --text "/etc/passwd:root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
  --text "/etc/group:root:x:0:\nnonroot:x:65532:\n"
  --dir /tmp:1777 --dir /home/nonroot:700:65532
  # tzdata, as distroless carries it (budgets may name a time zone).
  --tree /usr/share/zoneinfo:/usr/share/zoneinfo
)

image() { python3 e2e/node/image.py "$@"; }
# The debug build is mostly debug info, which would be copied into containerd on every run: drop it.
strip --strip-debug -o "$out/k8s-ai-operator" "$target_dir/$musl/debug/k8s-ai-operator"
image --name localhost/k8s-ai/operator:e2e --out "$out/operator.tar" "${distroless[@]}" \
  --file "$out/k8s-ai-operator:/k8s-ai-operator" --entrypoint /k8s-ai-operator --user 65532:65532
rm "$out/k8s-ai-operator"
image --name localhost/k8s-ai/ai-sidecar:e2e --out "$out/ai-sidecar.tar" "${distroless[@]}" \
  --file "$target_dir/$musl/sidecar/ai-sidecar:/ai-sidecar" --entrypoint /ai-sidecar --user 65532:65532

app=(--file /bin/busybox:/bin/busybox --file /usr/bin/curl:/usr/bin/curl --libs-of /usr/bin/curl
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt --dir /tmp:1777
  --text "/etc/passwd:root:x:0:0:root:/root:/bin/sh\n")
for tool in sh ash sleep cat echo grep sed tr wc head tail ls env kill date printf test true false seq touch rm mkdir id ps stat; do
  app+=(--symlink "/bin/$tool:busybox")
done
image --name localhost/k8s-ai/app:e2e --name docker.io/curlimages/curl:8.11.1 --out "$out/app.tar" "${app[@]}" --cmd /bin/sh

# An unchanged Bedrock app, when $PYTHON names an interpreter with boto3 (the tests pass their
# venv's, pinned by e2e/python/requirements.txt): busybox as above, Python and boto3.
if [[ -n ${PYTHON:-} ]]; then
  "$PYTHON" e2e/node/python_app.py boto3 > "$out/python-app.args"
  image --name localhost/k8s-ai/python-app:e2e --out "$out/python-app.tar" "${app[@]}" @"$out/python-app.args" --cmd /bin/sh
  rm "$out/python-app.args"
fi
