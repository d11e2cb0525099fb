"""The real node for end-to-end tests: `e2e/node.sh up` (kubelet + containerd in a network namespace
of its own), the images of e2e/node/images.sh imported into it, the Bedrock/STS emulator on the
host (pods reach it at 10.200.0.2:4566 through the node's forwarder), and the operator installed
as users install it: `kubectl apply -k` of an overlay of manifests/default that only sets images,
the emulator's address and the identity EKS would give the operator (e2e/node/overlay)."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

from conftest import EMULATOR, ROOT, Emulator

NODE_SH = ROOT / "e2e" / "node.sh"
# Where e2e/node.sh keeps the node (K8S_AI_NODE_DIR picks another, as the script does).
NODE_DIR = pathlib.Path(os.environ.get("K8S_AI_NODE_DIR") or ROOT / "e2e" / ".node")
KUBECTL = ROOT / "e2e" / ".bin" / "kubectl"
OVERLAY = ROOT / "e2e" / "node" / "overlay"
OPERATOR_NS = "ai-operator-system"


class Node:
    def __init__(self, state: dict):
        self.state = state
        self.kubeconfig = state["kubeconfig"]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def out(self, *args: str, **kwargs) -> str:
        return self.kubectl(*args, **kwargs).stdout

    def json(self, *args: str):
        return json.loads(self.out(*args, "-o", "json"))

    def apply(self, manifest: str, *args: str) -> str:
        return self.out("apply", "-f", "-", *args, input=manifest)

    def wait_until(self, what: str, check, timeout: float = 90, interval: float = 0.5):
        """Polls `check()` until it returns a truthy value, which is returned."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except (AssertionError, KeyError, IndexError, ValueError) as e:
                last = e
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")

    def logs_on_failure(self, namespace: str, selector: str) -> str:
        return self.kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--tail", "40", check=False).stdout


def emulator_config(state: dict) -> str:
    """e2e/node/emulator.yaml with this node's issuer and CA."""
    template = (ROOT / "e2e" / "node" / "emulator.yaml").read_text()
    return template.replace("ISSUER", state["issuer"]).replace("CA_FILE", state["caFile"])


def start_node_emulator(state: dict, tmp_dir) -> Emulator:
    assert EMULATOR.exists(), f"{EMULATOR} not built: run `cargo build -p e2e --bins` first"
    cfg = tmp_dir / "emulator.yaml"
    cfg.write_text(emulator_config(state))
    address = state["emulatorHostAddress"]
    proc = subprocess.Popen([str(EMULATOR), "--listen", address, "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, f"emulator did not start: {line}"
    return Emulator(f"http://{address}", proc)


def readme_quick_start() -> str:
    """The README's quick start from step 3 on (steps 1 and 2 install the operator and give it an
    IAM role: the fixture does both with the overlay), then its prompt-template block."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    quick = next(b for b in blocks if "# 3. Apply a guardrail" in b)
    template = next(b for b in blocks if "kind: PromptTemplate" in b)
    return quick[quick.index("# 3. Apply a guardrail"):] + template


def kubectl_on_path(node: Node, tmp_path: pathlib.Path) -> dict:
    """An environment whose `kubectl` is the node's, as a user's shell would have it."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "kubectl"
    wrapper.write_text(f"#!/bin/sh\nexec {ROOT / 'e2e' / '.bin' / 'kubectl'} --kubeconfig {node.kubeconfig} \"$@\"\n")
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def install_operator(node: Node):
    """`kubectl apply -k` as docs/installation.md says, then wait for both replicas."""
    # A CRD is usable a moment after it is created; a second apply covers what referred to it.
    first = node.kubectl("apply", "-k", str(OVERLAY), check=False)
    if first.returncode != 0:
        time.sleep(2)
        node.out("apply", "-k", str(OVERLAY))
    node.out("-n", OPERATOR_NS, "rollout", "status", "deployment/k8s-ai-operator", "--timeout=180s", timeout=200)
    wait_for_webhook(node)


def wait_for_webhook(node: Node):
    """The webhook answers once the operator has written its CA into the configuration."""
    node.wait_until("the webhook's CA bundle", lambda: node.out(
        "get", "mutatingwebhookconfiguration", "k8s-ai-operator", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}"), timeout=60)


def bring_up(tmp_dir, install: bool = True) -> tuple[Node, Emulator]:
    """A fresh node each session (down + up take seconds): no test sees another run's objects. The
    operator is installed with the overlay unless INSTALL is false."""
    subprocess.run([str(NODE_SH), "down"], check=True)
    subprocess.run([str(NODE_SH), "up"], check=True)
    state = json.loads((NODE_DIR / "node.json").read_text())
    # scripts/run-tests.sh builds them before the Rust suites hold cargo's lock (K8S_AI_NODE_IMAGES).
    prebuilt = os.environ.get("K8S_AI_NODE_IMAGES")
    images = pathlib.Path(prebuilt) if prebuilt else tmp_dir / "images"
    if not prebuilt:
        subprocess.run([str(ROOT / "e2e" / "node" / "images.sh"), str(images)], check=True,
                       env={**os.environ, "PYTHON": sys.executable})
    subprocess.run([str(NODE_SH), "import", *map(str, sorted(images.glob("*.tar")))], check=True)
    node = Node(state)
    emulator = start_node_emulator(state, tmp_dir)
    with urllib.request.urlopen(emulator.url + "/_emulator/config") as r:
        assert r.status == 200
    if install:
        install_operator(node)
    return node, emulator
