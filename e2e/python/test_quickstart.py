"""The quick start, asserted: `scripts/demo.sh` (what `make demo` runs) on its own one-node
cluster, kept running (KEEP=1) so its results can be checked, then taken down. Nothing is mocked
but AWS and a registry: a real kube-apiserver and kubelet, the operator installed from manifests/
as two pods, its webhook, the README's Deployment with the injected sidecar as the kubelet runs
it, the emulator verifying SigV4 and IRSA tokens."""

import json
import os
import pathlib
import re
import subprocess
import urllib.request
from decimal import ROUND_UP, Decimal

import pytest

from conftest import ROOT

KUBECTL = ROOT / "e2e" / ".bin" / "kubectl"
SEED_INVOKE_KEYS = {"content", "inputTokens", "outputTokens", "stopReason", "costUSD"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "KEEP": "1", "DEMO_DIR": str(state)}
    run = subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    try:
        assert run.returncode == 0, f"demo failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
        urls = dict(line.split("=", 1) for line in (state / "demo.env").read_text().split())
        yield state, urls, run.stdout
    finally:
        down = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not state.exists(), "demo down left its state behind"


def kubectl(urls, *args) -> str:
    return subprocess.run([str(KUBECTL), "--kubeconfig", urls["KUBECONFIG"], *args], check=True, capture_output=True, text=True).stdout


def test_the_seeds_calls_answer_in_the_seeds_shapes(demo):
    state, _, _ = demo
    invoke = json.loads((state / "invoke.json").read_text())
    assert set(invoke) == SEED_INVOKE_KEYS
    assert invoke["content"].startswith("A Kubernetes operator is a controller")
    assert invoke["stopReason"] == "end_turn"
    assert invoke["inputTokens"] > 0 and invoke["outputTokens"] > 0
    assert isinstance(invoke["costUSD"], str) and re.fullmatch(r"\d+\.\d{6,}", invoke["costUSD"])
    render = json.loads((state / "render.json").read_text())
    assert isinstance(render["content"], str) and render["content"]
    assert re.fullmatch(r"\d+\.\d{6,}", render["costUSD"])


def test_the_pod_was_mutated_by_the_webhook(demo):
    _, urls, _ = demo
    pod = json.loads(kubectl(urls, "get", "pod", urls["POD"], "-n", "ai-workloads", "-o", "json"))
    assert pod["metadata"]["annotations"]["ai.kernelpanic09.io/injected"]
    sidecars = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "ai-sidecar"]
    assert len(sidecars) == 1 and sidecars[0]["restartPolicy"] == "Always"
    env = {e["name"]: e for e in sidecars[0]["env"]}
    assert env["AI_SIDECAR_ENDPOINTS"]["value"] == "claude-haiku"
    assert env["AI_SIDECAR_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]


def test_the_sidecar_signed_in_with_the_pods_own_identity(demo):
    _, urls, _ = demo
    with urllib.request.urlopen(urls["EMULATOR_URL"] + "/_emulator/requests") as resp:
        requests = json.loads(resp.read())
    # The demo's emulator trusts the app's role only for the default ServiceAccounts of the test
    # namespaces on the demo cluster's issuer (e2e/node/emulator.yaml), and the operator's role
    # only for its own: every web-identity sign-in was one of the two pods' own.
    sign_ins = [r for r in requests if r["operation"] == "AssumeRoleWithWebIdentity"]
    assert sign_ins and all(r.get("error") is None for r in sign_ins), sign_ins
    calls = [r for r in requests if r["operation"] == "Converse"]
    assert len(calls) == 2
    # Bedrock serves the seed's model only through inference profiles: the operator resolved it.
    assert {r["modelId"] for r in calls} == {"us.anthropic.claude-haiku-4-5-20251001-v1:0"}, calls
    assert all(r["principal"].endswith(f":assumed-role/bedrock-invoker/ai-sidecar-{urls['POD']}") for r in calls), calls


def spent_in_ledger_units(state):
    """What the two calls cost, rounded up to the ledger's unit (the micro-dollar): the us.
    profile's $1.10 / $5.50 per million give costs with more decimals than a ledger keeps."""
    spent = Decimal(json.loads((state / "invoke.json").read_text())["costUSD"]) + Decimal(
        json.loads((state / "render.json").read_text())["costUSD"]
    )
    return spent.quantize(Decimal("0.000001"), rounding=ROUND_UP)


def test_the_ledger_and_the_printer_columns_show_the_exact_cost(demo):
    state, urls, stdout = demo
    spent = spent_in_ledger_units(state)
    usage = json.loads(kubectl(urls, "get", "modelusage", f"{urls['POD']}.claude-haiku", "-n", "ai-workloads", "-o", "json"))
    assert usage["spec"]["podName"] == urls["POD"]
    assert usage["status"]["month"]["invocations"] == 2
    assert Decimal(usage["status"]["month"]["cost"]) == spent
    table = kubectl(urls, "get", "modelendpoints", "-n", "ai-workloads").splitlines()
    assert table[0].split() == ["NAME", "MODEL", "REGION", "AVAILABLE", "COST/MONTH", "INVOCATIONS", "AGE"]
    row = table[1].split()
    assert row[:4] == ["claude-haiku", "anthropic.claude-haiku-4-5-20251001-v1:0", "us-east-1", "true"]
    assert Decimal(row[4]) == spent and row[5] == "2"
    # The demo's own last word is that table.
    assert "claude-haiku" in stdout.split("kubectl get modelendpoints -n ai-workloads")[-1]


def test_the_operator_reports_the_cost_metric(demo):
    state, urls, _ = demo
    # The controllers, and so the cost metric, run on the replica holding the Lease.
    leader = kubectl(urls, "get", "lease", "k8s-ai-operator", "-n", "ai-operator-system", "-o", "jsonpath={.spec.holderIdentity}")
    page = kubectl(urls, "get", "--raw", f"/api/v1/namespaces/ai-operator-system/pods/{leader}:8080/proxy/metrics")
    lines = [l for l in page.splitlines() if l.startswith("k8s_ai_operator_bedrock_invocation_cost_dollars_total{") and 'endpoint="claude-haiku"' in l]
    assert len(lines) == 1, page
    spent = spent_in_ledger_units(state)
    assert Decimal(lines[0].rsplit(" ", 1)[1]) == spent


def test_no_secret_token_or_prompt_reaches_the_logs(demo):
    """The operator's and the sidecar's logs of the whole quick start, at their default level
    (info), hold no credential, no token and no prompt or answer text."""
    state, urls, _ = demo
    with urllib.request.urlopen(urls["EMULATOR_URL"] + "/_emulator/credentials") as resp:
        issued = json.loads(resp.read())
    assert len(issued) >= 2, "the sidecar signed in with IRSA: a secret key and a session token"
    # The tokens the kubelet projected into the pod: tmpfs mounts in the node's mount namespace,
    # seen through the root of a process living there.
    pod = json.loads(kubectl(urls, "get", "pod", urls["POD"], "-n", "ai-workloads", "-o", "json"))
    node_root = pathlib.Path("/proc") / (state / "node" / "pids" / "holder").read_text().strip() / "root"
    volumes = node_root / str(state / "node" / "kubelet" / "root" / "pods" / pod["metadata"]["uid"] / "volumes" / "kubernetes.io~projected").lstrip("/")
    tokens = {f"{v.name} token": (v / "token").read_text().strip() for v in volumes.iterdir() if (v / "token").exists()}
    assert {"ai-sidecar-sts-token token"} < set(tokens), tokens
    secrets = {
        **tokens,
        **{f"issued secret {i}": s for i, s in enumerate(issued)},
        "prompt": "Explain Kubernetes operators in two sentences.",
        "template variable": "hunter2",
        "answer": json.loads((state / "invoke.json").read_text())["content"][:60],
    }
    logs = {name: (state / "logs" / f"{name}.log").read_text() for name in ("operator", "sidecar")}
    assert all(len(text) > 200 for text in logs.values()), "the logs were written"
    for log, text in logs.items():
        for what, secret in secrets.items():
            assert secret and secret not in text, f"the {what} appears in the {log} log"
