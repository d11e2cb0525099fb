#!/usr/bin/env bash
# Builds the tests' OpenTelemetry Collector (main.go: the OTLP receiver and the file exporter, at
# the release pinned in go.mod) once per go.mod, go.sum and main.go, into
# $K8S_AI_CACHE/otelcol-<key>/otelcol-e2e, and prints the binary's path. About a minute on 2 cores
# once the modules are downloaded (scripts/install-deps.sh does that).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
command -v go >/dev/null || { echo "[otelcol] Go is required to build the tests' collector" >&2; exit 1; }
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)
out="$cache/otelcol-$key"
if [[ ! -x "$out/otelcol-e2e" ]]; then
  echo "[otelcol] building the OpenTelemetry Collector into $out" >&2
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp/otelcol-e2e" .)
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
echo "$out/otelcol-e2e"
