#!/usr/bin/env bash
# Builds the images the test node runs and writes them as OCI tarballs into $1 (default
# e2e/.node/images), printing their paths and sizes:
#   localhost/k8s-ai/operator:e2e   Dockerfile.operator, built by buildah from a binary built here
#                                    (static, musl, debug profile: the release profile only
#                                    optimises the same code)
#   localhost/k8s-ai/ai-sidecar:e2e Dockerfile.sidecar, built by buildah from a binary built here
#                                    exactly as its build stage builds it
#   localhost/k8s-ai/app:e2e        an app with a shell (busybox) and curl, for the quick start;
#                                    also named docker.io/curlimages/curl:8.11.1, so the README's
#                                    Deployment applies verbatim (its image is never pulled here)
#   localhost/k8s-ai/python-app:e2e the same with Python and boto3 (e2e/node/python_app.py), for
#                                    an unchanged Bedrock app routed through the sidecar; built
#                                    only when $PYTHON names an interpreter that has boto3
# No registry is reachable here, so nothing is pulled: the Dockerfiles' build arguments name a
# base assembled here as distroless/static is (CA certificates and tzdata from Debian's packages,
# an /etc/passwd with the nonroot user 65532, nothing else) and their `prebuilt` stage, which takes
# the binary from the build context instead of compiling it in a Rust image. buildah runs as root
# with chroot isolation and the vfs driver, its storage in a directory of its own, removed after.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/e2e/.node/images}
target_dir=${CARGO_TARGET_DIR:-$root/target}
musl="$(uname -m)-unknown-linux-musl"
mkdir -p "$out"
cd "$root"

# Each on its own (`-p`), as the Dockerfiles build them: features would unify across the workspace.
cargo build --locked --quiet -p k8s-ai-operator --target "$musl" --bin k8s-ai-operator
cargo build --locked --quiet -p ai-sidecar --profile sidecar --target "$musl" --bin ai-sidecar
# A stale sidecar/symbol-order.txt fails here, loudly (see e2e/bench/symbol_order.py).
if [[ $musl == x86_64-* ]]; then
  python3 e2e/bench/symbol_order.py check "$target_dir/$musl/sidecar/ai-sidecar.map" sidecar/symbol-order.txt
fi

store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
buildah() { command buildah --storage-driver vfs --root "$store/root" --runroot "$store/run" "$@"; }

# distroless/static-debian12:nonroot, assembled from this machine's Debian packages
# (ca-certificates, tzdata).
base=localhost/k8s-ai/distroless-static:nonroot
mkdir -p "$store/base/etc/ssl/certs" "$store/base/tmp" "$store/base/home/nonroot"
cp /etc/ssl/certs/ca-certificates.crt "$store/base/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$store/base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$store/base/etc/group"
mkdir -p "$store/base/usr/share" && cp -a /usr/share/zoneinfo "$store/base/usr/share/"
chmod 1777 "$store/base/tmp"
chmod 700 "$store/base/home/nonroot" && chown 65532:65532 "$store/base/home/nonroot"
# One layer, from an archive: `buildah add` keeps its owners and modes (`copy` makes them root's).
tar -C "$store/base" -cf "$store/base.tar" .
container=$(buildah from scratch)
buildah add --quiet "$container" "$store/base.tar" / >/dev/null
buildah config --user 65532:65532 --workingdir /home/nonroot \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$container"
buildah commit --quiet --rm "$container" "$base" >/dev/null

# Builds DOCKERFILE as NAME from BINARY (the path of a file named as the image's binary), into $out/TAR.
dockerfile_image() {
  local dockerfile=$1 name=$2 binary=$3 tar=$4 context
  context=$(mktemp -d -p "$store")
  cp "$binary" "$context/"
  buildah bud --quiet --isolation chroot --pull=never --layers=false \
    --build-arg BINARY=prebuilt --build-arg BASE_IMAGE="$base" --build-arg VERSION="$version" \
    -f "$root/$dockerfile" -t "$name" "$context" >/dev/null
  rm -f "$out/$tar"
  buildah push --quiet "$name" "oci-archive:$out/$tar:$name"
  echo "$name: $(image_size "$out/$tar") ($out/$tar)"
}
# "N MB compressed (as a registry stores and a node pulls it), M MB uncompressed (on the node)"
# for the OCI archive TAR.
image_size() {
  python3 - "$1" <<'PY'
import gzip, json, sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()
    manifest = json.loads(blob(json.loads(tar.extractfile("index.json").read())["manifests"][0]["digest"]))
    layers = [blob(layer["digest"]) for layer in manifest["layers"]]
packed = sum(map(len, layers))
unpacked = sum(len(gzip.decompress(layer)) if layer[:2] == b"\x1f\x8b" else len(layer) for layer in layers)
print(f"{packed / 1e6:.1f} MB compressed, {unpacked / 1e6:.1f} MB uncompressed")
PY
}
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)

# The debug build is mostly debug info, which would be copied into containerd on every run: drop it.
strip --strip-debug -o "$store/k8s-ai-operator" "$target_dir/$musl/debug/k8s-ai-operator"
dockerfile_image Dockerfile.operator localhost/k8s-ai/operator:e2e "$store/k8s-ai-operator" operator.tar
dockerfile_image Dockerfile.sidecar localhost/k8s-ai/ai-sidecar:e2e "$target_dir/$musl/sidecar/ai-sidecar" ai-sidecar.tar

image() { python3 e2e/node/image.py "$@"; }
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
