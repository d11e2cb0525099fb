#!/usr/bin/env bash
# make check: the fast inner loop. Formatting, clippy, every crate's unit tests and the integration
# tests that run in-process (the sidecar over HTTP, the emulator through the AWS SDKs, golden
# files): no Kubernetes control plane, no node, no apt, no Python. `make test` runs everything.
#
# An integration test file that calls `Cluster::get()` needs the control plane and is left to
# `make test`; so are single tests named `*real_cluster*` in otherwise in-process files.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --lib --bins

for crate_dir in api e2e operator sidecar webhook-certs; do
  tests=()
  for file in "$crate_dir"/tests/*.rs; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .rs)
    if grep -q 'Cluster::get()' "$file"; then
      # In-process apart from the tests that say they need the cluster.
      grep -q '^async fn [a-z_]*real_cluster' "$file" || continue
    fi
    tests+=(--test "$name")
  done
  ((${#tests[@]})) || continue
  package=$(sed -n 's/^name = "\(.*\)"/\1/p' "$crate_dir/Cargo.toml" | head -n 1)
  echo "== $package: ${tests[*]}"
  cargo test --locked -p "$package" "${tests[@]}" -- --skip real_cluster
done
