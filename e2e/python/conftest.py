"""Fixtures: a bedrock-emulator process on a free loopback port, and the test control plane."""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
EMULATOR = pathlib.Path(os.environ.get("BEDROCK_EMULATOR_BIN", TARGET / "debug" / "bedrock-emulator"))
SIDECAR = pathlib.Path(os.environ.get("AI_SIDECAR_BIN", TARGET / "debug" / "ai-sidecar"))
SAMPLES = ROOT / "manifests" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url = url
        self.proc = proc

    def admin(self, path: str, method: str = "GET", body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None


def start_emulator(tmp_path, config_yaml: str | None = None) -> Emulator:
    assert EMULATOR.exists(), f"{EMULATOR} not built: run `cargo build -p e2e --bins` first"
    port = free_port()
    args = [str(EMULATOR), "--listen", f"127.0.0.1:{port}"]
    if config_yaml is not None:
        cfg = tmp_path / "emulator.yaml"
        cfg.write_text(config_yaml)
        args += ["--config", str(cfg)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, f"emulator did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
    return Emulator(f"http://127.0.0.1:{port}", proc)


@pytest.fixture
def emulator(tmp_path):
    emu = start_emulator(tmp_path)
    yield emu
    emu.proc.terminate()
    emu.proc.wait(timeout=10)


@pytest.fixture
def start(tmp_path):
    started = []

    def _start(config_yaml: str) -> Emulator:
        emu = start_emulator(tmp_path, config_yaml)
        started.append(emu)
        return emu

    yield _start
    for emu in started:
        emu.proc.terminate()
        emu.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cluster():
    """The test control plane (started by `e2e/cluster.sh up`, idempotent)."""
    subprocess.run([str(ROOT / "e2e" / "cluster.sh"), "up"], check=True)
    state = json.loads((ROOT / "e2e" / ".run" / "cluster.json").read_text())

    def kubectl(*args: str) -> str:
        out = subprocess.run([str(ROOT / "e2e" / ".bin" / "kubectl"), "--kubeconfig", state["kubeconfig"], *args],
                             check=True, capture_output=True, text=True)
        return out.stdout

    state["kubectl"] = kubectl
    return state


def seed_manifests() -> str:
    """The seed's objects as a standalone sidecar needs them: the IRSA role removed (static test
    keys), and, with no operator to resolve the model to its inference profile, the geographic
    profile named (Bedrock serves Claude Haiku 4.5 only through profiles; docs/models-and-prices.md)."""
    manifests = "---\n".join((SAMPLES / f).read_text() for f in ["guardrailpolicy.yaml", "modelendpoint.yaml", "prompttemplate.yaml"])
    model = "  modelId: anthropic.claude-haiku-4-5-20251001-v1:0\n"
    assert model in manifests
    return manifests.replace("  irsaRoleArn: arn:aws:iam::123456789012:role/bedrock-invoker\n", "").replace(
        model, model + "  inferenceProfile: geographic\n")


def start_sidecar(aws_url: str, manifests: str, tmp_path, extra_env: dict | None = None):
    """`ai-sidecar --standalone` on free ports: (process, data URL, admin URL). A port another
    process took between `free_port()` and the sidecar's bind is retried on new ones."""
    for _ in range(3):
        try:
            return start_sidecar_once(aws_url, manifests, tmp_path, extra_env)
        except PortTaken:
            continue
    return start_sidecar_once(aws_url, manifests, tmp_path, extra_env)


class PortTaken(Exception):
    pass


def start_sidecar_once(aws_url: str, manifests: str, tmp_path, extra_env: dict | None = None):
    assert SIDECAR.exists(), f"{SIDECAR} not built: run `cargo build -p ai-sidecar` first"
    config = tmp_path / "sidecar.yaml"
    config.write_text(manifests)
    port, admin = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AI_SIDECAR_NAMESPACE": "ai-workloads",
        "AI_SIDECAR_LISTEN": f"127.0.0.1:{port}",
        "AI_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_EC2_METADATA_DISABLED": "true",
        **(extra_env or {}),
    }
    proc = subprocess.Popen([str(SIDECAR), "--standalone", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            stderr = proc.stderr.read()
            if "Address already in use" in stderr:
                raise PortTaken(stderr)
            raise AssertionError(f"ai-sidecar exited: {stderr}")
        assert time.monotonic() < deadline, "ai-sidecar did not become ready"
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


@pytest.fixture
def sidecar(emulator, tmp_path):
    """`ai-sidecar --standalone` with the seed's objects (IRSA role removed: static test keys), in
    front of the emulator, as a pod would run it. Yields (data URL, admin URL)."""
    proc, url, admin = start_sidecar(emulator.url, seed_manifests(), tmp_path)
    yield url, admin
    proc.terminate()
    proc.wait(timeout=30)


# The same cache as scripts/install-deps.sh: $K8S_AI_CACHE, else $XDG_CACHE_HOME/k8s-ai-operator, else ~/.cache/k8s-ai-operator.
CACHE = pathlib.Path(os.environ.get("K8S_AI_CACHE") or pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "k8s-ai-operator")
MINISTACK = CACHE / "ministack-venv" / "bin" / "ministack"


@pytest.fixture
def ministack(tmp_path):
    """MiniStack (an AWS emulator nobody here wrote), on loopback only."""
    assert MINISTACK.exists(), f"{MINISTACK} missing: scripts/install-deps.sh installs it"
    port = free_port()
    env = {**os.environ, "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "LOG_LEVEL": "WARNING", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(MINISTACK)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, "ministack exited"
            assert time.monotonic() < deadline, "ministack did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


# Each test file's time (setup, call and teardown, module fixtures included), printed at the end
# so a slow suite shows itself.
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    terminalreporter.section("time per test file")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f} s  in all")
