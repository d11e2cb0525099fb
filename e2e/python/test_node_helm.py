"""The Helm chart on the real node, as a platform team uses it: `helm install` with the values of
e2e/node/helm-values.yaml (images built here, the emulator's address, the operator's identity),
the README's quick start working after it, `helm upgrade` to a new sidecar image with changed
values, the pods still running the old sidecar reported (ModelEndpoint status, Event, metric)
until a rollout restart gives them the new one, and `helm uninstall` removing what it installed
and leaving the CRDs (and so everyone's objects), as Helm does with a chart's crds/."""

import json
import re
import subprocess

import pytest

from conftest import ROOT
from node_cluster import OPERATOR_NS, Node, bring_up, kubectl_on_path, readme_quick_start, wait_for_webhook
from test_helm import CHART, helm_binary

VALUES = ROOT / "e2e" / "node" / "helm-values.yaml"
# The sidecar of "the next release": the built image under another name (e2e/node.sh tag).
NEXT_SIDECAR = "localhost/k8s-ai/ai-sidecar:e2e-next"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node, emulator = bring_up(tmp_path_factory.mktemp("node"), install=False)
    node.emulator = emulator
    yield node
    emulator.proc.terminate()
    emulator.proc.wait(timeout=10)


def helm(node: Node, *args: str, timeout: float = 300) -> str:
    run = subprocess.run([helm_binary(), "--kubeconfig", node.kubeconfig, *args], capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, f"helm {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def sidecar_of(pod: dict) -> dict:
    return next(c for c in pod["spec"].get("initContainers", []) if c["name"] == "ai-sidecar")


def quick_start_pod(node: Node) -> dict:
    pods = node.json("get", "pods", "-n", "ai-workloads", "-l", "app=my-app")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in live]
    return live[0]


def outdated(node: Node) -> int | None:
    status = node.json("get", "modelendpoint", "claude-haiku", "-n", "ai-workloads").get("status", {})
    return status.get("outdatedSidecars")


def endpoint_event(node: Node, reason: str) -> dict | None:
    events = node.json("get", "events.events.k8s.io", "-n", "ai-workloads",
                       "--field-selector", f"regarding.name=claude-haiku,reason={reason}")["items"]
    return events[-1] if events else None


def operator_metrics(node: Node) -> str:
    """The operator's /metrics, fetched from inside the quick start's app pod (it has curl) through
    the operator's Service, as Prometheus in the cluster would."""
    ip = node.out("get", "service", "k8s-ai-operator-webhook", "-n", OPERATOR_NS, "-o", "jsonpath={.spec.clusterIP}")
    app = quick_start_pod(node)["metadata"]["name"]
    return node.out("exec", "-n", "ai-workloads", app, "-c", "app", "--", "curl", "-sf", f"http://{ip}:8080/metrics")


def test_install_quick_start_upgrade_and_uninstall(node, tmp_path):
    helm(node, "install", "k8s-ai-operator", str(CHART), "--namespace", OPERATOR_NS, "--create-namespace",
         "--values", str(VALUES), "--wait", "--timeout", "4m")
    wait_for_webhook(node)
    release = json.loads(helm(node, "list", "--namespace", OPERATOR_NS, "--output", "json"))
    assert [(r["name"], r["status"]) for r in release] == [("k8s-ai-operator", "deployed")]
    assert node.out("get", "crd", "-l", "app.kubernetes.io/part-of=k8s-ai-operator", "-o", "name").count("\n") == 4

    # The README's quick start, verbatim, against the chart's install.
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_quick_start()], env=kubectl_on_path(node, tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"the quick start failed:\n{run.stdout}\n{run.stderr}\n" + node.logs_on_failure("ai-workloads", "app=my-app")
    answer = json.loads(re.search(r'^\{\n  "content".*?^\}$', run.stdout, re.S | re.M).group(0))
    assert answer["content"] and answer["stopReason"] == "end_turn"
    pod = quick_start_pod(node)
    assert sidecar_of(pod)["image"] == "localhost/k8s-ai/ai-sidecar:e2e"
    assert sidecar_of(pod)["resources"]["limits"]["memory"] == "64Mi"

    node.wait_until("outdatedSidecars 0 with every pod current", lambda: outdated(node) == 0, timeout=60)

    # A new sidecar release (here the same image under a new name) and an upgrade with changed
    # values: one replica, a larger sidecar, a label on everything.
    subprocess.run([str(ROOT / "e2e" / "node.sh"), "tag", "localhost/k8s-ai/ai-sidecar:e2e", NEXT_SIDECAR], check=True)
    helm(node, "upgrade", "k8s-ai-operator", str(CHART), "--namespace", OPERATOR_NS, "--values", str(VALUES),
         "--set", "sidecar.image.tag=" + NEXT_SIDECAR.split(":")[1], "--set", "operator.replicas=1",
         "--set", "sidecar.resources.memoryLimit=96Mi", "--set", "commonLabels.team=platform", "--wait", "--timeout", "4m")
    # Until the old replicas are gone, one of them may still answer an admission (for the shutdown
    # grace) with the old image: the rollout recipe waits for this too.
    node.wait_until("only the upgraded operator running", lambda: [
        c["image"] for p in node.json("get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=k8s-ai-operator")["items"]
        for c in p["spec"]["containers"] if {"name": "AI_OPERATOR_SIDECAR_IMAGE", "value": NEXT_SIDECAR} in c.get("env", [])
    ] and len(node.json("get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=k8s-ai-operator")["items"]) == 1,
        timeout=120)
    deployment = node.json("get", "deployment", "k8s-ai-operator", "-n", OPERATOR_NS)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["labels"]["team"] == "platform"
    assert node.json("get", "mutatingwebhookconfiguration", "k8s-ai-operator")["metadata"]["labels"]["team"] == "platform"
    wait_for_webhook(node)

    # The running pod keeps the sidecar it was created with: reported in status, as an Event and
    # in the operator's metrics.
    node.wait_until("outdatedSidecars 1", lambda: outdated(node) == 1, timeout=90)
    header, row = node.out("get", "modelendpoints", "-n", "ai-workloads", "-o", "wide").splitlines()[:2]
    assert dict(zip(header.split(), row.split()))["OUTDATED"] == "1", (header, row)
    event = node.wait_until("the SidecarsOutdated Event", lambda: endpoint_event(node, "SidecarsOutdated"), timeout=60)
    assert event["type"] == "Warning"
    assert f"run the sidecar image localhost/k8s-ai/ai-sidecar:e2e instead of {NEXT_SIDECAR}" in event["note"], event
    page = operator_metrics(node)
    assert 'k8s_ai_operator_outdated_sidecars{namespace="ai-workloads",endpoint="claude-haiku"} 1' in page, page

    # The rollout recipe of docs/installation.md: restart, and the new pod runs the new sidecar.
    old_name = pod["metadata"]["name"]
    node.out("rollout", "restart", "deployment/my-app", "-n", "ai-workloads")
    node.out("rollout", "status", "deployment/my-app", "-n", "ai-workloads", "--timeout=180s", timeout=200)
    node.wait_until("the old pod gone", lambda: old_name not in node.out("get", "pods", "-n", "ai-workloads", "-o", "name"),
                    timeout=120)
    sidecar = sidecar_of(quick_start_pod(node))
    assert sidecar["image"] == NEXT_SIDECAR
    assert sidecar["resources"]["limits"]["memory"] == "96Mi"
    node.wait_until("outdatedSidecars back to 0", lambda: outdated(node) == 0, timeout=90)
    assert node.wait_until("the SidecarsCurrent Event", lambda: endpoint_event(node, "SidecarsCurrent"), timeout=60)

    history = json.loads(helm(node, "history", "k8s-ai-operator", "--namespace", OPERATOR_NS, "--output", "json"))
    assert [h["revision"] for h in history] == [1, 2]

    # Uninstall: the operator, its webhook and RBAC go; the CRDs stay, with the objects in them.
    node.out("delete", "deployment", "my-app", "-n", "ai-workloads", "--wait=true", timeout=180)
    helm(node, "uninstall", "k8s-ai-operator", "--namespace", OPERATOR_NS, "--wait", "--timeout", "4m")
    for kind, name in [("mutatingwebhookconfiguration", "k8s-ai-operator"), ("clusterrole", "k8s-ai-operator"),
                       ("validatingadmissionpolicy", "ledger-writes.ai.kernelpanic09.io"),
                       ("clusterrole", "k8s-ai-operator-sidecar")]:
        assert node.kubectl("get", kind, name, check=False).returncode != 0, f"{kind}/{name} outlived the uninstall"
    assert not node.out("get", "deployment,service,pdb,role,rolebinding", "-n", OPERATOR_NS, "-o", "name").strip()
    assert node.kubectl("get", "serviceaccount", "k8s-ai-operator", "-n", OPERATOR_NS, check=False).returncode != 0
    assert node.out("get", "modelendpoint", "claude-haiku", "-n", "ai-workloads", "-o", "name").strip()
