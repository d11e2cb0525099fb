"""The Helm chart (charts/k8s-ai-operator) with helm built from its Go module: it lints, its
defaults render exactly the objects of `kubectl kustomize manifests/default` (so the two installs
cannot drift apart), and each value does what values.yaml says. Installing, upgrading and
uninstalling it on the real node is test_node_helm.py."""

import json
import subprocess

import pytest
import yaml

from conftest import ROOT

CHART = ROOT / "charts" / "k8s-ai-operator"
KUBECTL = ROOT / "e2e" / ".bin" / "kubectl"
NAMESPACE = "ai-operator-system"
# What Helm adds to every object, and a kustomize install does not have.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}


def helm_binary() -> str:
    return subprocess.run([str(ROOT / "scripts" / "go-tool.sh"), "helm"], check=True, capture_output=True,
                          text=True).stdout.strip()


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run([helm_binary(), *args], capture_output=True, text=True, cwd=ROOT)
    if check:
        assert run.returncode == 0, run.stdout + run.stderr
    return run


def render(*values: str) -> dict[tuple, dict]:
    """The chart's objects with VALUES (`--set` pairs), keyed by (kind, namespace, name)."""
    args = [a for v in values for a in ("--set", v)]
    out = helm("template", "k8s-ai-operator", str(CHART), "--namespace", NAMESPACE, "--include-crds", *args).stdout
    return by_key(out)


def by_key(stream: str) -> dict[tuple, dict]:
    objects = {}
    for doc in yaml.safe_load_all(stream):
        if doc:
            key = (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
            assert key not in objects, f"rendered twice: {key}"
            objects[key] = doc
    return objects


def without_helm_labels(obj: dict) -> dict:
    labels = {k: v for k, v in obj["metadata"].get("labels", {}).items() if k not in HELM_LABELS}
    return {**obj, "metadata": {**obj["metadata"], "labels": labels}}


def test_chart_lints():
    lint = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout, lint.stdout


def test_default_values_render_the_kustomize_install():
    kustomized = by_key(subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "manifests" / "default")],
                                       check=True, capture_output=True, text=True).stdout)
    # The Namespace is `helm install --create-namespace`'s (docs/installation.md labels it).
    kustomized.pop(("Namespace", None, NAMESPACE))
    # kustomize does not know the admission policies are cluster-scoped and gives them the install's
    # namespace, which the API server drops.
    for key in [k for k in kustomized if k[0].startswith("ValidatingAdmissionPolicy")]:
        obj = kustomized.pop(key)
        del obj["metadata"]["namespace"]
        kustomized[(key[0], None, key[2])] = obj
    rendered = render()
    assert sorted(rendered) == sorted(kustomized), "the chart and manifests/default install different objects"
    for key, obj in rendered.items():
        labels = obj["metadata"].get("labels", {})
        assert HELM_LABELS <= set(labels) or key[0] == "CustomResourceDefinition", (key, labels)
        expected = kustomized[key]
        actual = obj if key[0] == "CustomResourceDefinition" else without_helm_labels(obj)
        assert actual == expected, f"{key} differs from manifests/default"


def operator_container(objects: dict) -> dict:
    return objects[("Deployment", NAMESPACE, "k8s-ai-operator")]["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_values_set_images_resources_and_sidecar_defaults():
    objects = render("operator.image.repository=registry.example/ops/k8s-ai-operator", "operator.image.tag=1.2.3",
                     "operator.replicas=3", "operator.resources.limits.memory=512Mi", "operator.logLevel=debug",
                     "sidecar.image.repository=registry.example/ops/ai-sidecar",
                     "sidecar.image.digest=sha256:" + "a" * 64, "sidecar.resources.memoryLimit=128Mi",
                     "sidecar.logLevel=debug", "sidecar.env.AI_SIDECAR_REPORT_INTERVAL=10s", "sidecar.native=false")
    deployment = objects[("Deployment", NAMESPACE, "k8s-ai-operator")]
    assert deployment["spec"]["replicas"] == 3
    container = operator_container(objects)
    assert container["image"] == "registry.example/ops/k8s-ai-operator:1.2.3"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    env = env_of(container)
    assert env["AI_OPERATOR_LOG"] == "debug"
    assert env["AI_OPERATOR_SIDECAR_IMAGE"] == "registry.example/ops/ai-sidecar@sha256:" + "a" * 64
    assert env["AI_OPERATOR_SIDECAR_MEMORY_LIMIT"] == "128Mi"
    assert env["AI_OPERATOR_NATIVE_SIDECAR"] == "false"
    assert "AI_OPERATOR_SIDECAR_CPU_REQUEST" not in env, "defaults are the operator's own"
    assert container["args"] == ["run", "--sidecar-env=AI_SIDECAR_LOG=debug", "--sidecar-env=AI_SIDECAR_REPORT_INTERVAL=10s"]


def test_trace_values_become_the_sidecars_opentelemetry_environment():
    assert operator_container(render())["args"] == ["run"], "traces are off by default"
    objects = render("sidecar.traces.endpoint=http://$(AI_SIDECAR_NODE_IP):4318",
                     "sidecar.traces.sampler=parentbased_traceidratio", "sidecar.traces.samplerArg=0.25",
                     "sidecar.traces.messageContent=true")
    assert operator_container(objects)["args"] == [
        "run", "--sidecar-env=AI_SIDECAR_TRACE_MESSAGE_CONTENT=true",
        "--sidecar-env=OTEL_EXPORTER_OTLP_ENDPOINT=http://$(AI_SIDECAR_NODE_IP):4318",
        "--sidecar-env=OTEL_TRACES_SAMPLER=parentbased_traceidratio", "--sidecar-env=OTEL_TRACES_SAMPLER_ARG=0.25"]


def test_cert_manager_mode_issues_the_certificate_and_mounts_it():
    objects = render("certificates.mode=cert-manager")
    assert ("Issuer", NAMESPACE, "k8s-ai-operator-ca") in objects
    certificate = objects[("Certificate", NAMESPACE, "k8s-ai-operator-webhook")]
    assert certificate["spec"]["issuerRef"] == {"name": "k8s-ai-operator-ca", "kind": "Issuer"}
    assert "k8s-ai-operator-webhook.ai-operator-system.svc" in certificate["spec"]["dnsNames"]
    container = operator_container(objects)
    assert env_of(container)["AI_OPERATOR_CERT_MODE"] == "files"
    assert container["volumeMounts"][0]["mountPath"] == "/etc/k8s-ai-operator/tls"
    webhook = objects[("MutatingWebhookConfiguration", None, "k8s-ai-operator")]
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ai-operator-system/k8s-ai-operator-webhook"
    # An issuer of the cluster's own instead of the self-signed CA.
    objects = render("certificates.mode=cert-manager", "certificates.certManager.issuerRef.name=corp-ca",
                     "certificates.certManager.issuerRef.kind=ClusterIssuer")
    assert ("Issuer", NAMESPACE, "k8s-ai-operator-ca") not in objects
    assert objects[("Certificate", NAMESPACE, "k8s-ai-operator-webhook")]["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_a_certificate_mode_that_does_not_exist_is_refused():
    run = helm("template", "k8s-ai-operator", str(CHART), "--set", "certificates.mode=vault", check=False)
    assert run.returncode != 0
    assert 'certificates.mode must be self-managed or cert-manager, not "vault"' in run.stderr


def test_namespace_selector_labels_annotations_pdb_and_service_monitor():
    objects = render("webhook.excludeNamespaces={batch}", "webhook.namespaceSelector[0].key=ai.example/enabled",
                     "webhook.namespaceSelector[0].operator=In", "webhook.namespaceSelector[0].values={enabled}",
                     "commonLabels.team=platform", "commonAnnotations.owner=platform@example.com",
                     "podAnnotations.prometheus\\.io/scrape=true", "podDisruptionBudget.enabled=false",
                     "serviceMonitor.enabled=true", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/ops")
    selector = objects[("MutatingWebhookConfiguration", None, "k8s-ai-operator")]["webhooks"][0]["namespaceSelector"]
    assert selector["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE, "batch"]},
        {"key": "ai.example/enabled", "operator": "In", "values": ["enabled"]}]
    for key, obj in objects.items():
        if key[0] != "CustomResourceDefinition":
            assert obj["metadata"]["labels"]["team"] == "platform", key
            assert obj["metadata"]["annotations"]["owner"] == "platform@example.com", key
    deployment = objects[("Deployment", NAMESPACE, "k8s-ai-operator")]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert ("PodDisruptionBudget", NAMESPACE, "k8s-ai-operator") not in objects
    monitor = objects[("ServiceMonitor", NAMESPACE, "k8s-ai-operator")]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    account = objects[("ServiceAccount", NAMESPACE, "k8s-ai-operator")]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::111122223333:role/ops"


def test_the_grafana_dashboard_ships_as_a_configmap_for_grafanas_sidecar():
    assert not [k for k in render() if k[0] == "ConfigMap"], "off by default"
    objects = render("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring")
    config_map = objects[("ConfigMap", "monitoring", "k8s-ai-operator-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["k8s-ai-operator.json"])
    assert shipped == json.loads((ROOT / "manifests" / "monitoring" / "grafana-dashboard.json").read_text())


def test_another_namespace_moves_every_reference_to_it():
    out = helm("template", "k8s-ai-operator", str(CHART), "--namespace", "platform-ai").stdout
    objects = by_key(out)
    assert "ai-operator-system" not in out
    webhook = objects[("MutatingWebhookConfiguration", None, "k8s-ai-operator")]["webhooks"][0]
    assert webhook["clientConfig"]["service"]["namespace"] == "platform-ai"
    policy = objects[("ValidatingAdmissionPolicy", None, "ledger-writes.ai.kernelpanic09.io")]
    assert "system:serviceaccount:platform-ai:" in policy["spec"]["matchConditions"][0]["expression"]
