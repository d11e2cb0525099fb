"""On a real node (e2e/node.sh): the pods the webhook injects are scheduled, started by a kubelet
and run by containerd + runc, with the operator installed from manifests/ as users install it
(node_cluster.py). What only a kubelet decides is checked here: native-sidecar start order and
readiness, the projected token as uid 65532 sees it on a read-only root, the app reaching
127.0.0.1:8090 inside its pod, in-cluster config and RBAC, Jobs that complete, the webhook's
failure policy, ResourceQuota.

Nothing is mocked but what cannot exist here: AWS (the emulator, over real HTTP) and a registry
(images are imported; docker.io/curlimages/curl:8.11.1 names a local busybox + curl image)."""

import base64
import json
import os
import pathlib
import re
import subprocess
import time
from decimal import Decimal

import pytest
import yaml

from conftest import ROOT
from node_cluster import OPERATOR_NS, Node, bring_up, kubectl_on_path, readme_quick_start
from otel import Collector

APP_IMAGE = "localhost/k8s-ai/app:e2e"


ROTATION_NS = "token-rotation"


def start_rotation_pod(node: Node) -> tuple[str, str, str, float]:
    """A pod whose STS token the kubelet will rotate ~8 minutes from now (the overlay's 10m
    lifetime); started first so the wait overlaps the other tests. (name, namespace, token, when
    it was Ready, as a Unix time)."""
    node.apply(node.out("create", "namespace", ROTATION_NS, "--dry-run=client", "-o", "yaml"))
    endpoint = (ROOT / "manifests" / "samples" / "modelendpoint.yaml").read_text().replace("namespace: ai-workloads", f"namespace: {ROTATION_NS}")
    node.out("apply", "-f", "-", input=endpoint.replace("  guardrailPolicyRef: pii-and-safety\n", ""))
    node.apply(annotated_pod("rotation", ROTATION_NS, ["sleep", "infinity"]))
    node.out("wait", "-n", ROTATION_NS, "--for=condition=Ready", "pod/rotation", "--timeout=90s", timeout=100)
    ready_at = time.time()
    # One call now: the sidecar's credential-refresh gauge is brought up to date by each call.
    node.out("exec", "-n", ROTATION_NS, "rotation", "-c", "app", "--", "sh", "-c", INVOKE.replace("ai-workloads", ROTATION_NS))
    pod = node.json("get", "pod", "rotation", "-n", ROTATION_NS)
    token_file = {e["name"]: e.get("value") for e in sidecar_of(pod)["env"]}["AI_SIDECAR_TOKEN_FILE"]
    token = (pathlib.Path("/proc") / str(host_process(pod, "ai-sidecar")) / "root" / token_file.lstrip("/")).read_text()
    return "rotation", ROTATION_NS, token, ready_at


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node, emulator = bring_up(tmp_path_factory.mktemp("node"))
    node.emulator = emulator
    # The collector the overlay's sidecars send their traces to (a DaemonSet's hostPort on EKS).
    node.collector = Collector(tmp_path_factory.mktemp("collector"), node.state["collectorHostAddress"])
    node.rotation = start_rotation_pod(node)
    yield node
    emulator.proc.terminate()
    emulator.proc.wait(timeout=10)
    node.collector.stop()


def sidecar_of(pod: dict) -> dict:
    return next(c for c in pod["spec"].get("initContainers", []) if c["name"] == "ai-sidecar")


@pytest.fixture
def rotation_pod(node):
    return node.rotation


def annotated_pod(name: str, namespace: str, command: list[str], **spec) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {
            "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}},
        "spec": {"containers": [{"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never", "command": command}], **spec},
    })


def test_quick_start_runs_verbatim_on_a_real_node(node, tmp_path):
    """README steps 3-5 and the template call, run by bash with the node's kubectl: the pod starts
    2/2 (app + native sidecar), the app's curl calls to localhost:8090 get the seed's answer shapes,
    and the cost reaches `kubectl get modelendpoints` a few seconds later."""
    script = readme_quick_start()
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=kubectl_on_path(node, tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"the quick start failed:\n{run.stdout}\n{run.stderr}\n" + node.logs_on_failure("ai-workloads", "app=my-app")

    # Both JSON answers in the script's output: the invoke call's object and the render call's string.
    invoke_json = re.search(r'^\{\n  "content".*?^\}$', run.stdout, re.S | re.M)
    assert invoke_json, run.stdout
    answer = json.loads(invoke_json.group(0))
    assert set(answer) == {"content", "inputTokens", "outputTokens", "stopReason", "costUSD"}, answer
    assert answer["content"].startswith("A Kubernetes operator is a controller")
    assert answer["stopReason"] == "end_turn"
    # Exact: Claude Haiku 4.5 through its US profile (the operator's resolvedModelId), $1.10 and
    # $5.50 per million tokens, plus the synced guardrail's text units as Bedrock reported them
    # (content filters $0.15, PII entities $0.10 per 1,000); at least six decimals, as the seed shows.
    call = [r for r in node.emulator.admin("/_emulator/requests?operation=Converse") if r.get("guardrailUsage")][-1]
    units = call["guardrailUsage"]
    guardrail = (units["contentPolicyUnits"] * Decimal("0.15") + units["topicPolicyUnits"] * Decimal("0.15")
                 + units["sensitiveInformationPolicyUnits"] * Decimal("0.10")) / 1000
    assert guardrail > 0, units
    expected = (answer["inputTokens"] * Decimal("1.1") + answer["outputTokens"] * Decimal("5.5")) / 1_000_000 + guardrail
    assert Decimal(answer["costUSD"]) == expected, (answer, units)
    assert re.fullmatch(r"\d+\.\d{6,}", answer["costUSD"]), answer
    assert run.stdout.rstrip().splitlines()[-1].startswith('"'), "the render call printed no content"

    pods = node.json("get", "pods", "-n", "ai-workloads", "-l", "app=my-app")["items"]
    assert len(pods) == 1
    pod = pods[0]
    statuses = pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]
    assert {s["name"]: s["ready"] for s in statuses} == {"ai-sidecar": True, "app": True}
    assert "2/2" in node.out("get", "pods", "-n", "ai-workloads", "-l", "app=my-app")

    def cost_shown():
        table = node.out("get", "modelendpoints", "-n", "ai-workloads")
        row = next(line for line in table.splitlines() if line.startswith("claude-haiku"))
        # Two calls of about $0.0008 each (tokens and the guardrail's text units).
        return row if re.search(r"\s2\s+\S+$", row) and re.search(r"\s0\.00\d+\s", row) else None

    row = node.wait_until("the two calls in kubectl get modelendpoints", cost_shown, timeout=60)
    assert "true" in row


@pytest.fixture(scope="module")
def workloads(node):
    """ai-workloads with the seed's objects, as the quick start leaves it (applied again if this
    test runs alone)."""
    node.apply(node.out("create", "namespace", "ai-workloads", "--dry-run=client", "-o", "yaml"))
    for sample in ("guardrailpolicy.yaml", "modelendpoint.yaml"):
        node.out("apply", "-f", str(ROOT / "manifests" / "samples" / sample))
    node.wait_until("the ModelEndpoint to be Ready", lambda: node.out(
        "get", "modelendpoint", "claude-haiku", "-n", "ai-workloads", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}") == "True")
    return "ai-workloads"


def test_job_with_a_sidecar_completes(node, workloads):
    """The native sidecar does not keep a Job alive: the app's call succeeds, the Job completes and
    its pod terminates, sidecar included."""
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "one-call", "namespace": workloads},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "curl -sf -X POST http://localhost:8090/invoke/ai-workloads/claude-haiku "
                            "-H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"]}]}}},
    }
    node.apply(json.dumps(job))
    node.out("wait", "-n", workloads, "--for=condition=Complete", "job/one-call", "--timeout=120s", timeout=130)
    pod = node.json("get", "pods", "-n", workloads, "-l", "job-name=one-call")["items"][0]
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    sidecar = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == "ai-sidecar")
    assert "terminated" in sidecar["state"], sidecar
    log = node.out("logs", "-n", workloads, pod["metadata"]["name"], "-c", "app")
    assert json.loads(log)["stopReason"] == "end_turn"


def host_process(pod: dict, container: str) -> int:
    """The host PID of a container's main process (the node shares the host's PID namespace): the
    process in the container's cgroup whose program is the sidecar, or any of an app's."""
    status = next(s for s in pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"] if s["name"] == container)
    container_id = status["containerID"].split("//", 1)[1]
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id in (proc / "cgroup").read_text():
                program = (proc / "cmdline").read_bytes().split(b"\0")[0]
                if container != "ai-sidecar" or program.endswith(b"ai-sidecar"):
                    return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process of container {container} ({container_id})")


def test_sidecar_runs_as_nonroot_on_a_read_only_root_with_its_own_identity(node, workloads):
    """As uid 65532 on a read-only root: the projected token (audience sts.amazonaws.com) is
    readable and is what STS was given; the API server is reached with in-cluster config and the
    pod's own RBAC (its ledger is written, other pods' ledgers are not its to write)."""
    node.apply(annotated_pod("identity", workloads, ["sleep", "infinity"]))
    node.out("wait", "-n", workloads, "--for=condition=Ready", "pod/identity", "--timeout=90s", timeout=100)
    pod = node.json("get", "pod", "identity", "-n", workloads)
    sidecar = sidecar_of(pod)
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["restartPolicy"] == "Always"

    pid = host_process(pod, "ai-sidecar")
    status = (pathlib.Path("/proc") / str(pid) / "status").read_text()
    assert re.search(r"^Uid:\s+65532\s+65532\s+65532\s+65532$", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), "the sidecar holds capabilities"
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    root_mount = next(l for l in (pathlib.Path("/proc") / str(pid) / "mountinfo").read_text().splitlines() if l.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(","), root_mount

    # The token file as the sidecar sees it: what its env names, with the audience STS expects.
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    token_path = pathlib.Path("/proc") / str(pid) / "root" / env["AI_SIDECAR_TOKEN_FILE"].lstrip("/")
    token = token_path.read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["sts.amazonaws.com"], claims
    assert claims["kubernetes.io"]["pod"]["name"] == "identity"
    mode = os.stat(token_path).st_mode & 0o777
    assert mode & 0o004 or os.stat(token_path).st_gid == 65532, oct(mode)

    # A call: credentials from STS for this pod's ServiceAccount, then the ledger written by the pod.
    node.out("exec", "-n", workloads, "identity", "-c", "app", "--", "curl", "-sf", "-X", "POST",
             "http://localhost:8090/invoke/ai-workloads/claude-haiku", "-H", "Content-Type: application/json",
             "-d", '{"messages":[{"role":"user","content":"hello"}]}')
    requests = node.emulator.admin("/_emulator/requests")
    web_identity = [r for r in requests if "AssumeRoleWithWebIdentity" in json.dumps(r)]
    assert web_identity, "the sidecar never called AssumeRoleWithWebIdentity"
    usage = node.wait_until("the pod's ledger", lambda: next(
        (u for u in node.json("get", "modelusages", "-n", workloads)["items"]
         if u["metadata"]["name"].startswith("identity") and u.get("status", {}).get("month", {}).get("invocations", 0) >= 1), None), timeout=30)
    assert usage["status"]["month"]["inputTokens"] > 0

    # Its ServiceAccount holds only the sidecar's role: read its configuration, write ledgers.
    account = f"system:serviceaccount:{workloads}:default"
    def can(*args: str) -> str:
        return node.kubectl("auth", "can-i", "--as", account, *args, check=False).stdout.strip()
    assert can("watch", "modelendpoints", "-n", workloads) == "yes"
    assert can("patch", "modelusages", "--subresource=status", "-n", workloads) == "yes"
    for verb, resource in (("get", "secrets"), ("create", "pods"), ("patch", "modelendpoints"), ("update", "modelusages")):
        assert can(verb, resource, "-n", workloads) == "no", f"the sidecar may {verb} {resource}"


def test_webhook_down_refuses_annotated_pods_and_recovers(node, workloads):
    """failurePolicy Fail: with both operator pods gone an annotated pod is refused with a message
    naming the webhook, a plain pod is created untouched; with the operator back, a Deployment's
    pending pods are created and injected."""
    node.out("-n", OPERATOR_NS, "scale", "deployment/k8s-ai-operator", "--replicas=0")
    try:
        node.wait_until("the operator pods to go", lambda: not node.json(
            "get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=k8s-ai-operator")["items"], timeout=60)
        refused = node.kubectl("apply", "-f", "-", input=annotated_pod("refused", workloads, ["sleep", "infinity"]), check=False)
        assert refused.returncode != 0
        assert "inject.ai.kernelpanic09.io" in refused.stderr and "failed calling webhook" in refused.stderr, refused.stderr

        plain = json.loads(annotated_pod("plain", workloads, ["sleep", "infinity"]))
        plain["metadata"]["annotations"] = {}
        node.apply(json.dumps(plain))
        stored = node.json("get", "pod", "plain", "-n", workloads)
        assert [c["name"] for c in stored["spec"]["containers"]] == ["app"] and not stored["spec"].get("initContainers")

        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "waits", "namespace": workloads},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "waits"}}, "template": json.loads(
                annotated_pod("x", workloads, ["sleep", "infinity"])) | {"metadata": {"labels": {"app": "waits"}, "annotations": {
                    "ai.kernelpanic09.io/inject": "true", "ai.kernelpanic09.io/endpoints": "claude-haiku"}}}},
        }
        del deployment["spec"]["template"]["apiVersion"], deployment["spec"]["template"]["kind"]
        node.apply(json.dumps(deployment))
        node.wait_until("the ReplicaSet to report the refusal", lambda: "inject.ai.kernelpanic09.io" in node.out(
            "get", "events", "-n", workloads, "--field-selector", "reason=FailedCreate"), timeout=60)
        assert not node.json("get", "pods", "-n", workloads, "-l", "app=waits")["items"]
    finally:
        node.out("-n", OPERATOR_NS, "scale", "deployment/k8s-ai-operator", "--replicas=2")
    node.out("-n", OPERATOR_NS, "rollout", "status", "deployment/k8s-ai-operator", "--timeout=120s", timeout=130)
    node.out("-n", workloads, "rollout", "status", "deployment/waits", "--timeout=180s", timeout=190)
    pod = node.json("get", "pods", "-n", workloads, "-l", "app=waits")["items"][0]
    assert sidecar_of(pod)["image"] == "localhost/k8s-ai/ai-sidecar:e2e"


def test_injected_pod_runs_in_a_namespace_with_a_resource_quota(node, workloads):
    """ResourceQuota admission runs after the webhook: the sidecar's requests and limits are
    counted, and the pod is admitted and runs."""
    ns = "quota-team"
    node.apply(node.out("create", "namespace", ns, "--dry-run=client", "-o", "yaml"))
    for sample in ("modelendpoint.yaml",):
        node.out("apply", "-n", ns, "-f", "-", input=(ROOT / "manifests" / "samples" / sample).read_text().replace("namespace: ai-workloads", f"namespace: {ns}"))
    node.apply(json.dumps({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team", "namespace": ns},
                           "spec": {"hard": {"pods": "2", "requests.cpu": "1", "requests.memory": "1Gi", "limits.memory": "2Gi"}}}))
    node.wait_until("the quota's status", lambda: node.json("get", "resourcequota", "team", "-n", ns).get("status", {}).get("hard"))
    app_resources = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    pod = json.loads(annotated_pod("quota-app", ns, ["sleep", "infinity"]))
    pod["spec"]["containers"][0]["resources"] = app_resources
    node.apply(json.dumps(pod))
    node.out("wait", "-n", ns, "--for=condition=Ready", "pod/quota-app", "--timeout=90s", timeout=100)
    stored = node.json("get", "pod", "quota-app", "-n", ns)
    sidecar_resources = sidecar_of(stored)["resources"]
    used = node.wait_until("the quota to count the pod", lambda: (lambda u: u if u.get("pods") == "1" else None)(
        node.json("get", "resourcequota", "team", "-n", ns)["status"].get("used", {})))

    def millicores(q: str) -> int:
        return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)

    def mebibytes(q: str) -> int:
        return int(q[:-2]) if q.endswith("Mi") else int(q[:-2]) * 1024

    assert millicores(used["requests.cpu"]) == 100 + millicores(sidecar_resources["requests"]["cpu"]), used
    assert mebibytes(used["requests.memory"]) == 64 + mebibytes(sidecar_resources["requests"]["memory"]), used
    assert mebibytes(used["limits.memory"]) == 128 + mebibytes(sidecar_resources["limits"]["memory"]), used


def invocations(node: Node, namespace: str = "ai-workloads") -> int:
    status = node.json("get", "modelendpoint", "claude-haiku", "-n", namespace).get("status", {})
    return int(status.get("invocationsThisMonth") or 0)


def emulator_latency(node: Node, fixed_ms: int):
    config = node.emulator.admin("/_emulator/config")
    config["latency"] = {**config.get("latency", {}), "fixedMs": fixed_ms}
    node.emulator.admin("/_emulator/config", "PUT", config)


def ledgers_of(node: Node, namespace: str, pod: str) -> list[dict]:
    return [u for u in node.json("get", "modelusages", "-n", namespace)["items"] if u["metadata"]["name"].startswith(pod)]


PYTHON_APP_IMAGE = "localhost/k8s-ai/python-app:e2e"

# An app written for Bedrock, unchanged: boto3's defaults and its own (any) credentials; nothing
# in it knows the sidecar. It prints what it saw as JSON.
BEDROCK_APP = """
import boto3, json
client = boto3.client("bedrock-runtime")
question = [{"role": "user", "content": [{"text": "What is a Kubernetes operator?"}]}]
answer = client.converse(modelId="claude-haiku", messages=question, inferenceConfig={"maxTokens": 200})
streamed, stream_usage = [], None
for event in client.converse_stream(modelId="us.anthropic.claude-haiku-4-5-20251001-v1:0", messages=question)["stream"]:
    streamed.append(event.get("contentBlockDelta", {}).get("delta", {}).get("text", ""))
    stream_usage = event.get("metadata", {}).get("usage", stream_usage)
print(json.dumps({
    "endpoint": client.meta.endpoint_url,
    "text": answer["output"]["message"]["content"][0]["text"],
    "usage": answer["usage"],
    "cost": answer["ResponseMetadata"]["HTTPHeaders"].get("x-ai-sidecar-cost-usd"),
    "streamed": "".join(streamed),
    "streamUsage": stream_usage,
}))
"""


def test_unchanged_bedrock_app_calls_through_the_sidecar(node, workloads):
    """`route-bedrock-sdk`: a pod whose app is plain boto3 (no endpoint_url, dummy keys of its own)
    gets Converse and ConverseStream answered through its sidecar: the calls reach Bedrock signed
    with the endpoint's role as the pod's identity assumed it, and land in the pod's ledger."""
    pod = json.loads(annotated_pod("bedrock-app", workloads, ["sleep", "3600"]))
    pod["metadata"]["annotations"]["ai.kernelpanic09.io/route-bedrock-sdk"] = "true"
    pod["spec"]["containers"][0].update(image=PYTHON_APP_IMAGE, env=[
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
        {"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    ])
    node.apply(json.dumps(pod))
    node.out("wait", "-n", workloads, "--for=condition=Ready", "pod/bedrock-app", "--timeout=90s", timeout=100)
    env = {e["name"]: e.get("value") for e in node.json("get", "pod", "bedrock-app", "-n", workloads)["spec"]["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] == "http://localhost:8090", env
    before = max((r["seq"] for r in node.emulator.admin("/_emulator/requests")), default=0)

    run = node.kubectl("exec", "-n", workloads, "bedrock-app", "-c", "app", "--", "python3", "-c", BEDROCK_APP, check=False, timeout=120)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n" + node.kubectl("logs", "-n", workloads, "bedrock-app", "-c", "ai-sidecar", check=False).stdout
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["endpoint"] == "http://localhost:8090", seen
    assert seen["text"].startswith("A Kubernetes operator is a controller"), seen
    assert seen["streamed"].startswith("A Kubernetes operator is a controller"), seen
    assert seen["usage"]["inputTokens"] > 0 and seen["streamUsage"]["outputTokens"] > 0, seen
    assert Decimal(seen["cost"]) > 0, seen

    calls = [r for r in node.emulator.admin("/_emulator/requests") if r["seq"] > before and r["operation"] in ("Converse", "ConverseStream")]
    assert [r["operation"] for r in calls] == ["Converse", "ConverseStream"], calls
    # Signed as the pod's sidecar, never with the app's own keys.
    assert all(r["principal"].endswith(":assumed-role/bedrock-invoker/ai-sidecar-bedrock-app") for r in calls), calls
    ledger = node.wait_until("both calls in the pod's ledger", lambda: next(
        (u for u in ledgers_of(node, workloads, "bedrock-app") if u.get("status", {}).get("month", {}).get("invocations") == 2), None), timeout=30)
    month = ledger["status"]["month"]
    assert month["inputTokens"] == seen["usage"]["inputTokens"] + seen["streamUsage"]["inputTokens"], (month, seen)
    assert Decimal(month["cost"]) > Decimal(seen["cost"]), (month, seen)
    # Gone, its ledger folded, before the next test counts the endpoint's invocations.
    node.out("delete", "pod", "bedrock-app", "-n", workloads, "--grace-period=5")
    node.wait_until("the pod's ledger to be folded and removed", lambda: not ledgers_of(node, workloads, "bedrock-app"), timeout=90)


def test_traces_of_an_injected_pod_reach_the_collector_on_its_node(node, workloads):
    """The operator injects OTEL_EXPORTER_OTLP_ENDPOINT=http://$(AI_SIDECAR_NODE_IP):4318 (the
    overlay's --sidecar-env, as docs/traces.md says for a collector DaemonSet); the kubelet
    expands it to the node's address, where the collector receives the span of the app's call: a
    child of the app's traceparent, named by the pod, with the exact cost it was told."""
    trace = os.urandom(16).hex()
    call = (f"curl -sf -X POST http://localhost:8090/invoke/{workloads}/claude-haiku -H 'Content-Type: application/json' "
            f"-H 'traceparent: 00-{trace}-00f067aa0ba902b7-01' "
            "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"trace this call\"}]}' >/tmp/answer.json; sleep 3600")
    node.apply(annotated_pod("traced", workloads, ["sh", "-c", call]))
    node.out("wait", "-n", workloads, "--for=condition=Ready", "pod/traced", "--timeout=90s", timeout=100)
    pod = node.json("get", "pod", "traced", "-n", workloads)
    env = {e["name"]: e for e in sidecar_of(pod)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://$(AI_SIDECAR_NODE_IP):4318", env
    assert env["AI_SIDECAR_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"

    span, = node.collector.wait_for(1, lambda s: s["traceId"] == trace, timeout=60)
    answer = json.loads(node.out("exec", "-n", workloads, "traced", "-c", "app", "--", "cat", "/tmp/answer.json"))
    attributes = span["attributes"]
    assert span["parentSpanId"] == "00f067aa0ba902b7"
    assert span["resource"]["k8s.pod.name"] == "traced"
    assert span["resource"]["k8s.pod.uid"] == pod["metadata"]["uid"]
    assert span["resource"]["k8s.namespace.name"] == workloads
    resolved = node.out("get", "modelendpoint", "claude-haiku", "-n", workloads, "-o", "jsonpath={.status.resolvedModelId}")
    assert span["name"] == f"chat {resolved}" and attributes["gen_ai.request.model"] == resolved
    assert attributes["k8s_ai.cost_usd"] == answer["costUSD"]
    assert attributes["gen_ai.usage.input_tokens"] == answer["inputTokens"]
    assert attributes["gen_ai.usage.output_tokens"] == answer["outputTokens"]
    assert attributes["k8s_ai.limit.decision"] == "admitted"
    assert attributes["aws.bedrock.guardrail.id"], "the synced Bedrock guardrail is named"
    assert "trace this call" not in node.collector.file.read_text()
    node.out("delete", "pod", "traced", "-n", workloads, "--grace-period=5")
    node.wait_until("the pod's ledger to be folded and removed", lambda: not ledgers_of(node, workloads, "traced"), timeout=90)


POD_IDENTITY_NS = "pod-identity"
POD_IDENTITY_TOKEN_DIR = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"


def pod_identity_pod(name: str, service_account: str) -> str:
    """A pod as EKS's webhook leaves it when its service account has a Pod Identity association:
    the agent's URL and the token file in the app's environment, the token (audience
    pods.eks.amazonaws.com) projected into a volume. It asks for both endpoints of the namespace."""
    pod = json.loads(annotated_pod(name, POD_IDENTITY_NS, ["sleep", "3600"]))
    pod["metadata"]["annotations"]["ai.kernelpanic09.io/endpoints"] = "chained,own-role"
    pod["spec"]["serviceAccountName"] = service_account
    pod["spec"]["containers"][0].update(
        env=[{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
             {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": f"{POD_IDENTITY_TOKEN_DIR}/eks-pod-identity-token"}],
        volumeMounts=[{"name": "eks-pod-identity-token", "mountPath": POD_IDENTITY_TOKEN_DIR, "readOnly": True}])
    pod["spec"]["volumes"] = [{"name": "eks-pod-identity-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400, "path": "eks-pod-identity-token"}}]}}]
    return json.dumps(pod)


def test_eks_pod_identity_signs_in_directly_and_by_role_chaining(node):
    """EKS Pod Identity instead of IRSA: the sidecar gets the pod's own role's credentials from the
    agent on 169.254.170.23 (the emulator, through the node), calls Bedrock with them for an
    endpoint that names no role, and assumes an endpoint's role from them (AssumeRole, role
    chaining; that role trusts only the pod's role). A service account without an association
    gets a 503 saying so."""
    node.apply(node.out("create", "namespace", POD_IDENTITY_NS, "--dry-run=client", "-o", "yaml"))
    node.out("create", "serviceaccount", "app", "-n", POD_IDENTITY_NS)
    endpoint = yaml.safe_load((ROOT / "manifests" / "samples" / "modelendpoint.yaml").read_text())
    for name, role in (("chained", "arn:aws:iam::123456789012:role/pod-identity-invoker"), ("own-role", None)):
        spec = {k: v for k, v in endpoint["spec"].items() if k not in ("guardrailPolicyRef", "irsaRoleArn")}
        if role:
            spec["irsaRoleArn"] = role
        node.apply(json.dumps({**endpoint, "metadata": {"name": name, "namespace": POD_IDENTITY_NS}, "spec": spec}))
        node.wait_until(f"{name} Ready", lambda name=name: node.out(
            "get", "modelendpoint", name, "-n", POD_IDENTITY_NS, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}") == "True")
    node.apply(pod_identity_pod("associated", "app"))
    node.apply(pod_identity_pod("unassociated", "default"))
    for pod in ("associated", "unassociated"):
        node.out("wait", "-n", POD_IDENTITY_NS, "--for=condition=Ready", f"pod/{pod}", "--timeout=90s", timeout=100)
    sidecar_env = {e["name"]: e.get("value") for e in sidecar_of(node.json("get", "pod", "associated", "-n", POD_IDENTITY_NS))["env"]}
    assert sidecar_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials", sidecar_env
    before = max((r["seq"] for r in node.emulator.admin("/_emulator/requests")), default=0)

    def invoke(pod: str, endpoint: str) -> dict:
        run = node.kubectl("exec", "-n", POD_IDENTITY_NS, pod, "-c", "app", "--", "curl", "-s", "-X", "POST",
                           f"http://localhost:8090/invoke/{POD_IDENTITY_NS}/{endpoint}", "-H", "Content-Type: application/json",
                           "-d", '{"messages":[{"role":"user","content":"hi"}]}', timeout=60)
        return json.loads(run.stdout)

    for endpoint in ("chained", "own-role"):
        answer = invoke("associated", endpoint)
        assert answer.get("stopReason") == "end_turn", (endpoint, answer, node.kubectl(
            "logs", "-n", POD_IDENTITY_NS, "associated", "-c", "ai-sidecar", check=False).stdout)
    records = [r for r in node.emulator.admin("/_emulator/requests") if r["seq"] > before]
    assert "AssumeRoleForPodIdentity" in [r["operation"] for r in records], records
    converse = [r for r in records if r["operation"] == "Converse"]
    assert converse[0]["principal"].endswith(":assumed-role/pod-identity-invoker/ai-sidecar-associated"), converse
    assert ":assumed-role/pod-identity-app/eks-e2e-app-" in converse[1]["principal"], converse

    refused = invoke("unassociated", "own-role")
    assert refused["error"]["code"] == "credentials_unavailable", refused
    # The agent's 404 (EKS Auth's ResourceNotFoundException), which the AWS SDK reports by its status.
    assert refused["error"]["message"].startswith("no AWS credentials from the EKS Pod Identity agent:"), refused
    assert "StatusCode(404) (the pod's service account has no Pod Identity association" in refused["error"]["message"], refused
    node.out("delete", "namespace", POD_IDENTITY_NS, "--wait=false")


INVOKE = ("curl -sf -X POST http://localhost:8090/invoke/ai-workloads/claude-haiku -H 'Content-Type: application/json' "
          "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'")


def test_sidecar_is_ready_before_the_app_and_outlives_its_last_request(node, workloads):
    """The app's very first request (no retry) is served: the kubelet starts the app only once the
    native sidecar's startup probe passes. On deletion the app finishes its in-flight call (it
    ignores SIGTERM until then), the sidecar serves it, reports its final usage and exits after
    the app; the operator folds the ledger into the endpoint exactly once."""
    script = (f"{INVOKE} && echo first-call-ok; trap '' TERM; "
              "while [ ! -f /tmp/go ]; do sleep 0.2; done; " + INVOKE + " && echo last-call-ok")
    prior = invocations(node)
    node.apply(annotated_pod("order", workloads, ["sh", "-c", script]))
    node.out("wait", "-n", workloads, "--for=condition=Ready", "pod/order", "--timeout=90s", timeout=100)
    node.wait_until("the first call", lambda: "first-call-ok" in node.out("logs", "-n", workloads, "order", "-c", "app"))
    pod = node.json("get", "pod", "order", "-n", workloads)
    assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"]), "the app needed a restart"
    node.wait_until("the first call in the ledger", lambda: any(
        u.get("status", {}).get("month", {}).get("invocations") == 1 for u in ledgers_of(node, workloads, "order")), timeout=30)
    node.wait_until("the first call in the endpoint's status", lambda: invocations(node) == prior + 1, timeout=30)

    emulator_latency(node, 4000)
    try:
        node.out("exec", "-n", workloads, "order", "-c", "app", "--", "touch", "/tmp/go")
        time.sleep(1)  # the call is now waiting on the emulator's 4 s
        node.out("delete", "pod", "order", "-n", workloads, "--wait=false")
        node.wait_until("the pod to be gone", lambda: "NotFound" in node.kubectl(
            "get", "pod", "order", "-n", workloads, check=False).stderr, timeout=60)
    finally:
        emulator_latency(node, 0)
    node.wait_until("the ledger to be folded and removed", lambda: not ledgers_of(node, workloads, "order"), timeout=60)
    assert node.wait_until("the last call in the endpoint's status", lambda: invocations(node) == prior + 2, timeout=30)
    time.sleep(6)  # a second fold would show within the sidecars' and operator's next rounds
    assert invocations(node) == prior + 2


def test_leader_killed_injection_goes_on_and_no_ledger_is_lost(node, workloads):
    """SIGKILL to the operator pod holding the Lease: the other replica takes over, annotated pods
    are injected throughout, and a pod's ledger deleted meanwhile is folded exactly once."""
    leader = node.out("get", "lease", "k8s-ai-operator", "-n", OPERATOR_NS, "-o", "jsonpath={.spec.holderIdentity}")
    assert leader
    prior = invocations(node)
    node.apply(annotated_pod("spender", workloads, ["sh", "-c", f"{INVOKE}; {INVOKE}; {INVOKE}; sleep infinity"]))
    node.out("wait", "-n", workloads, "--for=condition=Ready", "pod/spender", "--timeout=90s", timeout=100)
    node.wait_until("three calls in the ledger", lambda: any(
        u.get("status", {}).get("month", {}).get("invocations") == 3 for u in ledgers_of(node, workloads, "spender")), timeout=30)
    node.wait_until("the three calls in the endpoint's status", lambda: invocations(node) == prior + 3, timeout=30)

    node.out("delete", "pod", leader, "-n", OPERATOR_NS, "--grace-period=0", "--force")
    node.out("delete", "pod", "spender", "-n", workloads, "--wait=false")
    injected = 0
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        created = json.loads(node.out("create", "--dry-run=server", "-o", "json", "-f", "-",
                                      input=annotated_pod(f"during-{injected}", workloads, ["sleep", "1"])))
        assert sidecar_of(created)["image"] == "localhost/k8s-ai/ai-sidecar:e2e"
        injected += 1
    assert injected > 5
    new_leader = node.wait_until("another replica to lead", lambda: (lambda h: h if h and h != leader else None)(
        node.out("get", "lease", "k8s-ai-operator", "-n", OPERATOR_NS, "-o", "jsonpath={.spec.holderIdentity}")), timeout=60)
    assert new_leader != leader
    node.wait_until("the spender's ledger to be folded", lambda: not ledgers_of(node, workloads, "spender"), timeout=90)
    time.sleep(6)  # a second fold would show within the next rounds
    assert invocations(node) == prior + 3, "the fold changed the month's count (lost or doubled)"
    node.out("-n", OPERATOR_NS, "rollout", "status", "deployment/k8s-ai-operator", "--timeout=120s", timeout=130)


def test_webhook_certificate_rotation_loses_no_admission(node, workloads):
    """Serving certificates that last 60 s and are renewed 45 s before expiry (so every ~15 s):
    over 70 s of pod creations every one is admitted and injected while the certificate changes
    under the API server's feet."""
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
             for arg in ("--cert-serving-lifetime=60s", "--cert-serving-renew-before=45s", "--cert-check-interval=5s")]
    node.out("-n", OPERATOR_NS, "patch", "deployment/k8s-ai-operator", "--type=json", "-p", json.dumps(patch))

    def injected(name: str) -> bool:
        pod = json.loads(node.out("create", "--dry-run=server", "-o", "json", "-f", "-",
                                  input=annotated_pod(name, workloads, ["sleep", "1"])))
        return sidecar_of(pod)["image"] == "localhost/k8s-ai/ai-sidecar:e2e"

    try:
        node.out("-n", OPERATOR_NS, "rollout", "status", "deployment/k8s-ai-operator", "--timeout=180s", timeout=190)
        # The install's certificate lasts 90 days: start over so the short lifetime applies now.
        installed = node.json("get", "secret", "k8s-ai-operator-webhook-tls", "-n", OPERATOR_NS)["data"]["tls.crt"]
        node.out("delete", "secret", "k8s-ai-operator-webhook-tls", "-n", OPERATOR_NS)
        node.wait_until("a new CA and certificate", lambda: node.kubectl(
            "get", "secret", "k8s-ai-operator-webhook-tls", "-n", OPERATOR_NS, "-o", "jsonpath={.data.tls\\.crt}",
            check=False).stdout not in ("", installed), timeout=90, interval=1)
        # Then the new CA in the webhook's caBundle, and two of the replicas' 5 s checks to load it:
        # the CA itself has no overlap to offer once its Secret is gone, and that is not measured here.
        def ca_published() -> bool:
            ca = base64.b64decode(node.json("get", "secret", "k8s-ai-operator-webhook-tls", "-n", OPERATOR_NS)["data"]["ca.crt"])
            bundle = base64.b64decode(node.out("get", "mutatingwebhookconfiguration", "k8s-ai-operator",
                                               "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"))
            return ca.strip() in bundle
        node.wait_until("the new CA in the caBundle", ca_published, timeout=90, interval=1)
        time.sleep(12)
        node.wait_until("injection with the new CA", lambda: injected("warm-up"), timeout=90, interval=2)
        certificates = set()
        created = 0
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline:
            secret = node.json("get", "secret", "k8s-ai-operator-webhook-tls", "-n", OPERATOR_NS)
            certificates.add(secret["data"].get("tls.crt"))
            assert injected(f"rotating-{created}"), f"pod {created} was not injected"
            created += 1
            time.sleep(0.5)
        assert len(certificates) >= 3, f"the serving certificate changed only {len(certificates) - 1} times"
    finally:
        undo = [{"op": "remove", "path": "/spec/template/spec/containers/0/args/1"} for _ in range(3)]
        node.out("-n", OPERATOR_NS, "patch", "deployment/k8s-ai-operator", "--type=json", "-p", json.dumps(undo))
        node.out("-n", OPERATOR_NS, "rollout", "status", "deployment/k8s-ai-operator", "--timeout=180s", timeout=190)


def test_sidecar_follows_the_kubelets_token_rotation(node, rotation_pod):
    """The overlay gives the sidecar's STS token the shortest lifetime the API server issues (10m):
    the kubelet writes a new one at 80 % of it. The emulator's credentials last 900 s (AWS's
    minimum) and the sidecar refreshes them with 5 minutes left, so its first refresh comes after
    the first token expired: it must read the new file, or STS refuses the expired token."""
    name, namespace, first_token, ready_at = rotation_pod
    pod = node.json("get", "pod", name, "-n", namespace)
    token_file = {e["name"]: e.get("value") for e in sidecar_of(pod)["env"]}["AI_SIDECAR_TOKEN_FILE"]

    def token() -> str:
        return (pathlib.Path("/proc") / str(host_process(pod, "ai-sidecar")) / "root" / token_file.lstrip("/")).read_text()

    first = json.loads(base64.urlsafe_b64decode(first_token.split(".")[1] + "=="))
    second_token = node.wait_until("the kubelet to rotate the token", lambda: (lambda t: t if t != first_token else None)(token()),
                                   timeout=max(60, first["iat"] + 540 - time.time()), interval=5)
    second = json.loads(base64.urlsafe_b64decode(second_token.split(".")[1] + "=="))
    assert second["iat"] > first["iat"] and second["aud"] == ["sts.amazonaws.com"], second

    def refreshes() -> int:
        page = node.out("exec", "-n", namespace, name, "-c", "app", "--", "curl", "-sf", "http://localhost:8091/metrics")
        return int(re.search(r"^k8s_ai_operator_sidecar_credential_refreshes (\d+)$", page, re.M).group(1))

    before = refreshes()
    assert before >= 1, "the call at the start signed in"
    # Past the first token's expiry and the point where the credentials it bought need a refresh
    # (the sidecar signed in before it was Ready).
    time.sleep(max(0, first["exp"] + 10 - time.time(), ready_at + 600 + 10 - time.time()))
    answer = json.loads(node.out("exec", "-n", namespace, name, "-c", "app", "--", "sh", "-c", INVOKE.replace("ai-workloads", namespace)))
    assert answer["stopReason"] == "end_turn"
    assert refreshes() > before, "the call was served without a credential refresh"
    failed = [r for r in node.emulator.admin("/_emulator/requests?operation=AssumeRoleWithWebIdentity")
              if r.get("error") and r["atUnixMs"] / 1000 > first["exp"]]
    assert not failed, f"STS refused a sign-in after the first token expired (the old token presented?): {failed}"
