"""The release workflow (.github/workflows/release.yml) cannot run here (no registry, no Docker
engine, no GitHub): actionlint, built from its Go module, checks it as GitHub would parse it
(expressions, contexts, permissions, and its shell steps through shellcheck), and the workflow is
held to what docs/installation.md promises of a release."""

import shutil
import subprocess

import yaml

from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def go_tool(name: str) -> str:
    return subprocess.run([str(ROOT / "scripts" / "go-tool.sh"), name], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_workflows_pass_actionlint_and_shellcheck():
    assert shutil.which("shellcheck"), "shellcheck is missing: scripts/install-deps.sh installs it"
    lint = subprocess.run([go_tool("actionlint"), "-color=false"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_release_builds_both_architectures_with_provenance_sbom_and_signatures():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    image = workflow["jobs"]["image"]
    matrix = image["strategy"]["matrix"]
    assert set(matrix["platform"]) == {"linux/amd64", "linux/arm64"}
    assert set(matrix["image"]) == {"k8s-ai-operator", "ai-sidecar"}
    # Each architecture on a runner of its own: the Dockerfiles build for the builder's.
    runners = {i["platform"]: i["runner"] for i in matrix["include"] if "runner" in i}
    assert runners["linux/arm64"].endswith("-arm") and not runners["linux/amd64"].endswith("-arm")
    build = next(s for s in image["steps"] if s.get("id") == "build")["with"]
    assert build["provenance"] == "mode=max" and build["sbom"] is True
    signing = " ".join(s.get("run", "") for job in ("manifest", "chart") for s in workflow["jobs"][job]["steps"])
    assert signing.count("cosign sign --yes") == 2, "images and chart are both signed"
    assert "helm push" in signing and "oci://" in signing
    assert workflow["jobs"]["manifest"]["permissions"]["id-token"] == "write"
    # Least privilege: nothing may write by default.
    assert workflow["permissions"] == {"contents": "read"}
