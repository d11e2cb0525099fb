"""A short smoke run of every coverage-guided fuzz target (`scripts/fuzz.sh smoke`): the kept corpus
in fuzz/corpus/ is replayed (every crash found once is kept there as a regression case), then each
target fuzzes for a few seconds. `make fuzz` runs the long version."""
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGETS = ["template_render", "pii_filter", "admission_review", "sidecar_requests", "stream_events"]
SECONDS = int(os.environ.get("FUZZ_SMOKE_SECONDS", "10"))


def test_every_fuzz_target_replays_its_corpus_and_finds_nothing():
    # The first build on a fresh machine compiles the workspace with sanitizers: allow for it.
    run = subprocess.run([str(ROOT / "scripts/fuzz.sh"), "smoke", str(SECONDS)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"a fuzz target failed:\n{output[-6000:]}"
    for target in TARGETS:
        section = output.split(f"[fuzz] {target} for", 1)
        assert len(section) == 2, f"{target} did not run:\n{output[-3000:]}"
        executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", section[1])
        assert executed, f"{target}: no libFuzzer statistics:\n{section[1][:2000]}"
        corpus = len(list((ROOT / "fuzz/corpus" / target).iterdir()))
        # At least the kept corpus was replayed, plus some fresh inputs.
        assert int(executed.group(1)) > corpus, f"{target}: {executed.group(1)} runs for {corpus} corpus entries"
