#!/usr/bin/env bash
# Builds a Go tool the tests use from its module, once per pinned version, into the cache, and
# prints its path: `scripts/go-tool.sh helm`. Static (CGO off), -trimpath. The pins are here.
set -euo pipefail
declare -A packages=(
  [helm]=helm.sh/helm/v4/cmd/helm@v4.3.2                       # the chart's tests
  [actionlint]=github.com/rhysd/actionlint/cmd/actionlint@v1.7.12 # the release workflow's check
)
[[ $# -eq 1 && -n ${packages[$1]:-} ]] || { echo "usage: $0 $(IFS='|'; echo "${!packages[*]}")" >&2; exit 2; }
name=$1 package=${packages[$1]}
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
dir="$cache/tools/go/$name-${package##*@}"
if [[ ! -x "$dir/$name" ]]; then
  command -v go >/dev/null || { echo "Go is required to build $name" >&2; exit 1; }
  echo "[go-tool] building $package" >&2
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" CGO_ENABLED=0 GOFLAGS=-trimpath go install "$package" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
echo "$dir/$name"
