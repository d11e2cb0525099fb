"""Hostile input: bad HTTP requests to the sidecar (hostile/requests.yaml) and bad Kubernetes
objects for the API server (hostile/objects.yaml).

Every request must get the documented status and error code (or a 4xx from the HTTP layer), with no
panic text, stack trace or credential in the answer, and must leave the sidecar alive. Every object
must be refused by the API server with a message naming the field. Cases the code gets wrong today
are kept with the right expectation and marked `xfail` (strict: a fix makes them fail until the
mark is removed); see docs/security.md for the findings.
"""

import json
import pathlib
import re
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
import yaml

from conftest import ROOT, SIDECAR, free_port, seed_manifests, start_emulator

HOSTILE = pathlib.Path(__file__).resolve().parent / "hostile"
REQUESTS = yaml.safe_load((HOSTILE / "requests.yaml").read_text())["cases"]
OBJECTS = yaml.safe_load((HOSTILE / "objects.yaml").read_text())

# The sidecar's own (test) AWS keys: never in an answer or a log.
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# What a leaked panic, backtrace or source location looks like.
LEAK_PATTERNS = [
    re.compile(p)
    for p in [r"panicked at", r"RUST_BACKTRACE", r"stack backtrace", r"\.rs:\d+", r"/src/[a-z_]+\.rs",
              r"thread '[^']*' ", re.escape(ACCESS_KEY), re.escape(SECRET_KEY)]
]
SEED_BODY = b'{"messages":[{"role":"user","content":"hi"}]}'


def marks(case: dict) -> list:
    """A case the code gets wrong today: the right expectation, failing until it is fixed."""
    return [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []


def expand(text: str) -> str:
    """REPEAT(text,N): the text N times."""
    return re.sub(r"REPEAT\((.*?),(\d+)\)", lambda m: m.group(1) * int(m.group(2)), text, flags=re.S)


# --- the sidecar ---------------------------------------------------------------------------------


class Sidecar:
    """`ai-sidecar --standalone` with the seed's objects, set up as the webhook sets up a pod's:
    loopback data port, AI_SIDECAR_ENDPOINTS from the annotation, the default body limit."""

    def __init__(self, tmp_path: pathlib.Path):
        self.emulator = start_emulator(tmp_path)
        # A generous request rate, so the cases that reach the model never hit the endpoint's 60/min.
        manifests = seed_manifests().replace("requestsPerMinute: 60", "requestsPerMinute: 100000")
        self.config = tmp_path / "sidecar.yaml"
        self.config.write_text(manifests)
        self.log = tmp_path / "sidecar.log"
        self.restarts = 0
        self.proc = None
        self.start()

    def start(self):
        self.port, self.admin_port = free_port(), free_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "AI_SIDECAR_NAMESPACE": "ai-workloads",
            "AI_SIDECAR_ENDPOINTS": "claude-haiku",
            "AI_SIDECAR_LISTEN": f"127.0.0.1:{self.port}",
            "AI_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "AI_SIDECAR_LOG": "info",
            # Short, so the slow-client cases see the connection dropped well within their wait.
            "AI_SIDECAR_CLIENT_READ_TIMEOUT": "3s",
            "AWS_ENDPOINT_URL": self.emulator.url,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with open(self.log, "ab") as log:  # the sidecar logs (JSON lines) to stdout
            self.proc = subprocess.Popen([str(SIDECAR), "--standalone", "--config", str(self.config)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.healthy("/readyz"):
            assert self.proc.poll() is None, f"ai-sidecar exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "ai-sidecar did not become ready"
            time.sleep(0.05)

    def healthy(self, path: str = "/healthz") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status == 200 and r.read() == b"ok"
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.emulator.proc.terminate()
        self.emulator.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def hostile_sidecar(tmp_path_factory):
    sc = Sidecar(tmp_path_factory.mktemp("hostile-sidecar"))
    yield sc
    sc.stop()


def generate(spec: str) -> bytes:
    name, _, arg = spec.partition(":")
    if name == "huge":
        n = int(arg)
        head, tail = b'{"messages":[{"role":"user","content":"', b'"}]}'
        return head + b"x" * (n - len(head) - len(tail)) + tail
    if name == "deep_json":
        return b"[" * int(arg) + b"]" * int(arg)
    if name == "deep_open":
        return b"[" * int(arg)
    if name == "deep_object":
        return b'{"a":' * int(arg) + b"1" + b"}" * int(arg)
    if name in ("messages", "user_messages"):
        roles = ["user", "assistant"] if name == "messages" else ["user"]
        return json.dumps([{"role": roles[i % len(roles)], "content": "x"} for i in range(int(arg))]).encode()
    if name == "repeat":
        text, _, n = arg.rpartition(":")
        return text.encode() * int(n)
    raise ValueError(f"unknown body_generator {spec!r}")


def body_of(case: dict) -> bytes:
    if "body_generator" in case:
        generated = generate(case["body_generator"])
        wrapper = case.get("body")
        return wrapper.encode().replace(b"@@", generated) if wrapper else generated
    if "body_hex" in case:
        return bytes.fromhex(case["body_hex"])
    return case.get("body", "").encode()


def chunked(body: bytes, size: int = 0x10000) -> bytes:
    parts = [f"{len(body[i:i + size]):x}\r\n".encode() + body[i:i + size] + b"\r\n" for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def request_bytes(case: dict) -> bytes:
    if "raw" in case:
        body = body_of(case) if "body_generator" in case else SEED_BODY
        raw = expand(case["raw"]).encode("latin-1")
        return (raw.replace(b"<LEN>", str(len(body)).encode())
                .replace(b"<CHUNKED>", chunked(body)).replace(b"<BODY>", body))
    body = body_of(case)
    headers = {"Host": "localhost", "Content-Type": "application/json"}
    headers.update(case.get("headers") or {})
    if body or case["method"] in ("POST", "PUT", "PATCH"):
        headers.setdefault("Content-Length", str(len(body)))
    headers["Connection"] = "close"
    head = f"{case['method']} {expand(case['path'])} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v is not None)
    return head.encode() + b"\r\n" + body


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection; False if it did not within timeout."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def parse_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """The HTTP/1.1 responses in `data`: (status, headers, body) each (1xx interim ones left out)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body, rest = body + rest[:size], rest[size + 2:]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        if status >= 200:
            out.append((status, headers, body))
    return out


def check_no_leak(text: bytes):
    decoded = text.decode("utf-8", "replace")
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(decoded), f"the answer leaks {pattern.pattern!r}: {decoded[:500]}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"], marks=marks(c)) for c in REQUESTS])
def test_hostile_request(hostile_sidecar, case):
    sc = hostile_sidecar
    expect = case["expect"]
    try:
        with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as sock:
            if "slowloris" in case:
                sock.sendall(case["slowloris"]["send"].encode())
                data, closed = read_until_closed(sock, case["slowloris"]["wait"])
                assert closed, f"the server kept a half-sent request open for {case['slowloris']['wait']} s"
                check_no_leak(data)
                return
            try:
                sock.sendall(request_bytes(case))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before reading everything (oversized requests)
            data, closed = read_until_closed(sock, 30)
        assert closed or expect.get("closed") is not True, "the server did not close the connection"
        responses = parse_responses(data)
        check_no_leak(data)
        if expect.get("status") is None:
            assert not responses, f"expected no answer, got {data[:300]!r}"
            return
        assert responses, f"no answer within 30 s (hang), got {data[:300]!r}"
        assert len(responses) <= expect.get("responses", 1), (
            f"{len(responses)} responses on one connection: a request was smuggled: {data[:600]!r}")
        status, headers, body = responses[0]
        assert status == expect["status"], f"status {status}, expected {expect['status']}: {body[:500]!r}"
        if expect.get("empty_body"):
            assert body == b"", f"expected no body, got {body[:300]!r}"
        if expect.get("code"):
            assert headers.get("content-type", "").startswith("application/json"), headers
            error = json.loads(body)["error"]
            assert error["code"] == expect["code"], error
            assert isinstance(error["message"], str) and error["message"], error
            # Whatever the request held, an error never reflects more than a line of it.
            assert len(error["message"]) <= 1024, f"a {len(error['message'])}-character error message"
            if expect.get("message"):
                assert expect["message"] in error["message"], error
        elif status >= 400 and body:
            error = json.loads(body)["error"]  # a body, when there is one, is our JSON error
            assert error["code"] and error["message"], error
        for field, text in (expect.get("json") or {}).items():
            answer = json.loads(body)
            assert text in answer[field], f"{field}: {answer[field]!r} lacks the literal {text!r}"
    finally:
        # Whatever happened, the sidecar must still be alive and healthy; restart it for the next case if not.
        alive = sc.proc.poll() is None and sc.healthy()
        if not alive:
            sc.restarts += 1
            code = sc.proc.poll()
            if code is None:
                sc.proc.kill()
                sc.proc.wait(timeout=10)
            sc.start()
            pytest.fail(f"the sidecar {'died (exit ' + str(code) + ')' if code is not None else 'stopped answering /healthz'}"
                        f" after this case; log: {sc.log.read_text()[-1500:]}")


def test_sidecar_logs_hold_no_prompts_or_credentials(hostile_sidecar):
    """After the corpus: the info-level log has no prompt text, no credential, no panic."""
    log = hostile_sidecar.log.read_text(errors="replace")
    assert "ai-sidecar listening" in log, f"the log was not captured: {log[:500]}"
    for secret in (ACCESS_KEY, SECRET_KEY, "{{#each this}}", "Explain Kubernetes", "You are root.", "panicked"):
        assert secret not in log, f"the sidecar's log holds {secret!r}"
    assert hostile_sidecar.restarts == 0, "the sidecar had to be restarted during the corpus"


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]", "[::ffff:127.0.0.1]", "host address"])
def test_data_port_refuses_to_listen_beyond_loopback(listen, tmp_path):
    """What the sidecar promises (sidecar/src/lib.rs, StartError::NotLoopback): it refuses to start
    when the data port would listen on anything but loopback, so no other pod can reach it."""
    if listen == "host address":
        address = non_loopback_address()
        if address is None:
            pytest.skip("this machine has no non-loopback IPv4 address")
        listen = address
    config = tmp_path / "sidecar.yaml"
    config.write_text(seed_manifests())
    port = free_port()
    run = subprocess.run([str(SIDECAR), "--standalone", "--config", str(config)],
                         env={"PATH": "/usr/bin:/bin", "AI_SIDECAR_LISTEN": f"{listen}:{port}",
                              "AI_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
                              "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"},
                         capture_output=True, text=True, timeout=20)
    assert run.returncode == 2, run.stderr
    assert "the data port must listen on loopback only" in run.stderr, run.stderr


def test_data_port_is_not_reachable_from_another_address(hostile_sidecar):
    """The running sidecar's data port answers on 127.0.0.1 only: a client that comes in through the
    machine's (the pod's) own network address is refused by the kernel."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, hostile_sidecar.port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", hostile_sidecar.port), timeout=5):
        pass


# --- the API server ------------------------------------------------------------------------------


def attempt(kubectl, *args: str) -> tuple[bool, str]:
    """Runs the cluster fixture's kubectl: (succeeded, what it said)."""
    try:
        return True, kubectl(*args)
    except subprocess.CalledProcessError as e:
        return False, (e.stderr or "") + (e.stdout or "")


class Objects:
    """A namespace of the test's own; GuardrailPolicies (cluster-scoped) carry the run id in their name."""

    def __init__(self, cluster, tmp: pathlib.Path):
        self.kubectl = cluster["kubectl"]
        self.tmp = tmp
        self.run = uuid.uuid4().hex[:6]
        self.ns = f"hostile-{self.run}"
        self.created: list[tuple[str, str, str | None]] = []  # (kind, name, namespace) accepted
        self.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "manifests" / "crds"))
        deadline = time.monotonic() + 60
        while not attempt(self.kubectl, "get", "--raw", "/openapi/v3/apis/ai.kernelpanic09.io/v1alpha1")[0]:
            assert time.monotonic() < deadline, "the CRDs' OpenAPI was not published within 60 s"
            time.sleep(0.2)
        self.kubectl("create", "namespace", self.ns)

    def render(self, case: dict, index: int) -> tuple[dict, str]:
        text = case["object"] if "object" in case else OBJECTS["bases"][case["base"]]
        for old, new in case.get("replace", []):
            assert old in text, f"case {case['name']}: the base lacks {old!r}"
            text = text.replace(old, new, 1)
        kind = re.search(r"(?m)^kind: (\w+)", text).group(1)
        name = expand(case.get("object_name") or f"hostile-{self.run}-{index}")
        text = re.sub(r"VARIABLES\((\d+)\)", lambda m: "".join(
            f"  - name: v{i}\n    type: string\n" for i in range(int(m.group(1)))), text)
        text = re.sub(r"\bNS\b", self.ns, re.sub(r"\bNAME\b", name, expand(text)))
        return {"kind": kind, "name": name}, text

    def submit(self, case: dict, index: int) -> tuple[bool, str, dict]:
        meta, text = self.render(case, index)
        if case.get("via") == "raw":
            # kubectl refuses some names before sending; the API server must refuse them too.
            obj = yaml.safe_load(text)
            path = self.tmp / f"{index}.json"
            path.write_text(json.dumps(obj))
            plural = meta["kind"].lower() + "s"
            where = "" if meta["kind"] == "GuardrailPolicy" else f"namespaces/{self.ns}/"
            ok, out = attempt(self.kubectl, "create", "--raw",
                              f"/apis/ai.kernelpanic09.io/v1alpha1/{where}{plural}?fieldValidation=Strict",
                              "-f", str(path))
        else:
            path = self.tmp / f"{index}.yaml"
            path.write_text(text)
            ok, out = attempt(self.kubectl, "apply", "--server-side", "--validate=strict",
                              "--field-manager=hostile-input", "-f", str(path))
        if ok:
            self.created.append((meta["kind"], meta["name"], None if meta["kind"] == "GuardrailPolicy" else self.ns))
        return ok, out, meta

    def cleanup(self):
        # No namespace controller here: delete what was accepted, then let the namespace go.
        for kind, name, ns in self.created:
            attempt(self.kubectl, "delete", kind.lower(), name, "--ignore-not-found", "--wait=false",
                    *(["-n", ns] if ns else []))
        for kind in ("modelendpoints", "prompttemplates", "modelusages"):
            attempt(self.kubectl, "delete", kind, "--all", "-n", self.ns, "--wait=false")
        attempt(self.kubectl, "delete", "namespace", self.ns, "--wait=false")
        # Then do the namespace controller's last step, now that the namespace is empty.
        ok, left = attempt(self.kubectl, "get", "modelendpoints,prompttemplates,modelusages", "-n", self.ns, "-o", "name")
        if ok and not left.strip():
            ok, ns = attempt(self.kubectl, "get", "namespace", self.ns, "-o", "json")
            if ok:
                ns = json.loads(ns)
                ns["spec"]["finalizers"] = []
                path = self.tmp / "namespace.json"
                path.write_text(json.dumps(ns))
                attempt(self.kubectl, "replace", "--raw", f"/api/v1/namespaces/{self.ns}/finalize", "-f", str(path))


@pytest.fixture(scope="module")
def hostile_objects(cluster, tmp_path_factory):
    objects = Objects(cluster, tmp_path_factory.mktemp("hostile-objects"))
    yield objects
    objects.cleanup()


@pytest.mark.parametrize("index,case", [pytest.param(i, c, id=c["name"], marks=marks(c))
                                        for i, c in enumerate(OBJECTS["cases"])])
def test_hostile_object_is_refused(hostile_objects, index, case):
    accepted, out, meta = hostile_objects.submit(case, index)
    assert not accepted, f"{meta['kind']} accepted: {out.strip()}"
    for expected in case["expect"]:
        assert expected in out, f"the refusal lacks {expected!r}: {out.strip()}"


@pytest.mark.parametrize("base", sorted(OBJECTS["bases"]))
def test_object_bases_are_valid(hostile_objects, base):
    """Each base is accepted (a server-side dry run), so each refusal above is down to its edit."""
    _, text = hostile_objects.render({"name": f"base-{base}", "base": base}, 1000 + sorted(OBJECTS["bases"]).index(base))
    path = hostile_objects.tmp / f"base-{base}.yaml"
    path.write_text(text)
    ok, out = attempt(hostile_objects.kubectl, "apply", "--server-side", "--validate=strict", "--dry-run=server",
                      "--field-manager=hostile-input", "-f", str(path))
    assert ok, out
