"""A real OpenTelemetry Collector (e2e/otelcol: the OTLP receiver and the file exporter, built from
its Go modules) for the trace tests, and the spans it wrote, read back as plain dicts."""

import json
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def collector_binary() -> str:
    """The collector, built once per go.sum (scripts/install-deps.sh builds it ahead)."""
    out = subprocess.run([str(ROOT / "e2e" / "otelcol" / "build.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def tls_files(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A test CA and a server certificate for localhost/127.0.0.1 signed by it: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-subj", "/CN=k8s-ai-operator test CA", "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr))
    extensions = directory / "server.ext"
    extensions.write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                          "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
        "-extfile", str(extensions), "-out", str(cert))
    return ca, cert, key


class Collector:
    """`otelcol-e2e` receiving OTLP/HTTP on `address` and writing each export it receives as a
    line of OTLP JSON to a file."""

    def __init__(self, directory: pathlib.Path, address: str, tls: tuple[pathlib.Path, pathlib.Path] | None = None):
        self.file = directory / "spans.jsonl"
        self.log = directory / "collector.log"
        tls_block = ""
        if tls:
            tls_block = f"""
        tls:
          cert_file: {tls[0]}
          key_file: {tls[1]}"""
        config = directory / "collector.yaml"
        config.write_text(f"""receivers:
  otlp:
    protocols:
      http:
        endpoint: {address}{tls_block}
exporters:
  file:
    path: {self.file}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
""")
        self.proc = subprocess.Popen([collector_binary(), "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        deadline = time.monotonic() + 30
        while "Everything is ready" not in self.log.read_text():
            assert self.proc.poll() is None, f"the collector exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"the collector did not start: {self.log.read_text()}"
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)

    def spans(self) -> list[dict]:
        """Every span received so far: its fields, `attributes` and `resource` as dicts."""
        if not self.file.exists():
            return []
        spans = []
        for line in self.file.read_text().splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line)["resourceSpans"]:
                resource = attributes(resource_spans["resource"].get("attributes", []))
                for scope in resource_spans["scopeSpans"]:
                    for span in scope["spans"]:
                        spans.append({**span, "attributes": attributes(span.get("attributes", [])),
                                      "resource": resource, "scope": scope["scope"]})
        return spans

    def wait_for(self, count: int, where=lambda span: True, timeout: float = 20) -> list[dict]:
        """The spans matching `where`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.spans() if where(s)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} spans after {timeout} s: {self.spans()}"
            time.sleep(0.1)


def value(any_value: dict):
    """An OTLP AnyValue as Python: int64s come as strings in OTLP JSON."""
    (kind, v), = any_value.items()
    if kind == "intValue":
        return int(v)
    if kind == "arrayValue":
        return [value(x) for x in v.get("values", [])]
    return v


def attributes(pairs: list[dict]) -> dict:
    return {p["key"]: value(p["value"]) for p in pairs}
