#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that take hostile input (fuzz/fuzz_targets/):
# PromptTemplate rendering, the PII filter, AdmissionReview decoding and patch building, the
# sidecar's request bodies (/invoke, /render, /v1/chat/completions) and the stream path (Bedrock's
# event-stream decoded by the AWS SDK, re-encoded as SSE).
#
#   scripts/fuzz.sh build            build the targets (nightly toolchain, AddressSanitizer)
#   scripts/fuzz.sh run [SECONDS]    fuzz each target for SECONDS (default 300): make fuzz
#   scripts/fuzz.sh smoke [SECONDS]  replay the kept corpus, then fuzz each target briefly (default
#                                    10 s; nothing kept): make test
#
# The kept corpus lives in fuzz/corpus/<target>/; `run` adds the inputs that reach new code. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run; fix it, then keep the input in the corpus as a
# regression case (`cp fuzz/artifacts/T/crash-* fuzz/corpus/T/`), so every later run replays it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
cache="${K8S_AI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-ai-operator}"
target_dir="$cache/fuzz-target"
targets=(template_render pii_filter admission_review sidecar_requests stream_events)
fuzz() { cargo +nightly fuzz "$@"; }

case "${1:-run}" in
  build)
    fuzz build --target-dir "$target_dir"
    ;;
  run | smoke)
    mode=$1
    seconds=${2:-$([[ "$mode" == smoke ]] && echo 10 || echo 300)}
    fuzz build --target-dir "$target_dir"
    for t in "${targets[@]}"; do
      mkdir -p "corpus/$t" "artifacts/$t"
      # New inputs go to a work corpus outside the repo; the kept corpus is read (replayed) first.
      # A smoke run throws its work away; `run` keeps it in the cache and, at the end, merges into
      # fuzz/corpus only the inputs that reach new code (commit those).
      if [[ "$mode" == smoke ]]; then work=$(mktemp -d); else work="$cache/fuzz-corpus/$t"; fi
      mkdir -p "$work"
      echo "[fuzz] $t for ${seconds}s"
      # -rss_limit_mb: a render or a regex that blows up memory is a finding too.
      status=0
      fuzz run --target-dir "$target_dir" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"artifacts/$t.log" 2>&1 || status=$?
      grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^Done|ERROR|panicked|SUMMARY|Test unit written" "artifacts/$t.log" || true
      if ((status != 0)) || compgen -G "artifacts/$t/*" >/dev/null; then
        echo "[fuzz] $t: a crash or timeout was found; inputs in fuzz/artifacts/$t/" >&2
        exit 1
      fi
      if [[ "$mode" == smoke ]]; then
        rm -rf "$work"
      else
        before=$(find "corpus/$t" -type f | wc -l)
        fuzz run --target-dir "$target_dir" "$t" "corpus/$t" "$work" -- -merge=1 >"artifacts/$t.merge.log" 2>&1
        echo "[fuzz] $t: fuzz/corpus/$t $before -> $(find "corpus/$t" -type f | wc -l) inputs"
      fi
    done
    ;;
  *) echo "usage: $0 build|run [SECONDS]|smoke [SECONDS]" >&2; exit 2 ;;
esac
