"""The sidecar's OpenTelemetry traces, received by a real OpenTelemetry Collector (built from its Go
modules, e2e/otelcol) over OTLP/HTTP, through TLS where the network would be crossed: a span per
model call with the GenAI semantic conventions and our attributes, children of the app's
traceparent, and never a word of the conversation unless the platform team turns that on."""

import json
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import SIDECAR, free_port, seed_manifests, start_sidecar
from otel import Collector, tls_files

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def manifests() -> str:
    """The seed's objects, and an endpoint that admits one request a minute."""
    seed = seed_manifests()
    endpoint = seed.split("kind: ModelEndpoint", 1)[1].split("---", 1)[0]
    one_a_minute = ("apiVersion: ai.kernelpanic09.io/v1alpha1\nkind: ModelEndpoint" + endpoint) \
        .replace("name: claude-haiku", "name: one-a-minute").replace("requestsPerMinute: 60", "requestsPerMinute: 1") \
        .replace("  guardrailPolicyRef: pii-and-safety\n", "")
    assert "one-a-minute" in one_a_minute and "requestsPerMinute: 1\n" in one_a_minute
    return seed + "\n---\n" + one_a_minute


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def metric(admin: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"{admin}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def traced(emulator, tmp_path):
    """The sidecar exporting to a collector over HTTPS (a test CA the sidecar trusts through
    SSL_CERT_FILE, as a cluster's own CA would be), batches every 100 ms."""
    ca, cert, key = tls_files(tmp_path)
    port = free_port()
    collector = Collector(tmp_path, f"127.0.0.1:{port}", tls=(cert, key))
    proc, url, admin = start_sidecar(emulator.url, manifests(), tmp_path, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{port}",
        "SSL_CERT_FILE": str(ca),
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        "AI_SIDECAR_POD_NAME": "app-1",
    })
    yield url, admin, collector
    proc.terminate()
    proc.wait(timeout=30)
    collector.stop()


def test_a_call_is_a_client_span_with_the_genai_conventions(traced):
    url, admin, collector = traced
    out = client(url).chat.completions.create(
        model="claude-haiku", max_tokens=64, temperature=0.4,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a sidecar?"}],
        extra_headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01", "tracestate": "vendor=abc"})
    stream = client(url).chat.completions.create(
        model="claude-haiku", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream me a short answer"}])
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    request = urllib.request.Request(f"{url}/invoke/ai-workloads/claude-haiku", method="POST",
                                     data=json.dumps({"messages": [{"role": "user", "content": "Price me"}]}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as r:
        invoked = json.loads(r.read())

    spans = collector.wait_for(3)
    assert len(spans) == 3, spans
    child = next(s for s in spans if s["traceId"] == PARENT_TRACE)
    attributes = child["attributes"]
    model = attributes["gen_ai.request.model"]
    assert model.endswith("anthropic.claude-haiku-4-5-20251001-v1:0"), model
    assert child["name"] == f"chat {model}"
    assert child["kind"] == 3  # CLIENT
    assert child["parentSpanId"] == PARENT_SPAN
    assert child["traceState"] == "vendor=abc"
    assert int(child["startTimeUnixNano"]) < int(child["endTimeUnixNano"])
    assert "status" not in child or child["status"].get("code", 0) == 0
    assert {k: attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.max_tokens", "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons", "k8s_ai.endpoint", "k8s_ai.limit.decision",
        "http.route", "http.response.status_code", "cloud.region")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "aws.bedrock", "gen_ai.request.max_tokens": 64,
        "gen_ai.usage.input_tokens": out.usage.prompt_tokens, "gen_ai.usage.output_tokens": out.usage.completion_tokens,
        "gen_ai.response.finish_reasons": ["end_turn"], "k8s_ai.endpoint": "claude-haiku",
        "k8s_ai.limit.decision": "admitted", "http.route": "/v1/chat/completions", "http.response.status_code": 200,
        "cloud.region": "us-east-1"}
    # As sent to Bedrock, whose scale is 0 to 1 where OpenAI's is 0 to 2 (docs/sidecar.md).
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert child["resource"]["service.name"] == "ai-sidecar"
    assert child["resource"]["k8s.pod.name"] == "app-1"
    assert child["resource"]["k8s.namespace.name"] == "ai-workloads"
    assert child["resource"]["deployment.environment.name"] == "test"
    assert child["scope"]["name"] == "ai-sidecar"

    # The streamed call's span ends with the stream and carries what Bedrock counted.
    streamed = next(s for s in spans if s["attributes"].get("gen_ai.usage.output_tokens") == usage.completion_tokens
                    and s["traceId"] != PARENT_TRACE and s["attributes"]["http.route"] == "/v1/chat/completions")
    assert streamed["attributes"]["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert "parentSpanId" not in streamed or not streamed["parentSpanId"]

    # The seed's /invoke: the span's cost is the exact decimal the app was told.
    seed = next(s for s in spans if s["attributes"]["http.route"] == "/invoke/{namespace}/{endpoint}")
    assert seed["attributes"]["k8s_ai.cost_usd"] == invoked["costUSD"]
    assert len({s["traceId"] for s in spans}) == 3

    # No text of the conversation left the pod.
    exported = collector.file.read_text()
    for text in ("Be brief.", "What is a sidecar?", "stream me a short answer", "Price me"):
        assert text not in exported
    assert metric(admin, "k8s_ai_operator_sidecar_trace_spans_total", 'outcome="exported"') == 3


def test_refusals_are_failed_spans_with_the_limits_decision(traced):
    url, admin, collector = traced
    oa = client(url)
    oa.chat.completions.create(model="one-a-minute", messages=[{"role": "user", "content": "first"}])
    with pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(model="one-a-minute", messages=[{"role": "user", "content": "second"}])
    with pytest.raises(openai.UnprocessableEntityError):
        oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}])
    masked = oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "mail bob@example.com"}])
    assert "bob@example.com" not in masked.choices[0].message.content
    # Not calls, so no spans: an app's trace that is not sampled, the model list, a wrong route.
    oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "unsampled"}],
                               extra_headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-00"})
    oa.models.list()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}/v1/nothing-here")

    spans = collector.wait_for(4)
    time.sleep(0.5)  # anything else would have been exported by now (batches every 100 ms)
    spans = collector.spans()
    assert len(spans) == 4, [s["attributes"] for s in spans]
    assert all(s["traceId"] != PARENT_TRACE for s in spans)
    limited = [s for s in spans if s["attributes"].get("error.type") == "rate_limited"]
    assert len(limited) == 1
    attributes = limited[0]["attributes"]
    assert attributes["k8s_ai.limit.decision"] == "rate_limited"
    assert attributes["k8s_ai.limit.retry_after_ms"] > 0
    assert attributes["http.response.status_code"] == 429
    assert limited[0]["status"]["code"] == 2
    assert limited[0]["status"]["message"].startswith("rate_limited: ")
    assert "gen_ai.usage.input_tokens" not in attributes
    blocked = next(s for s in spans if s["attributes"].get("error.type") == "guardrail_blocked")
    assert blocked["attributes"]["k8s_ai.guardrail.action"] == "blocked"
    assert blocked["attributes"]["http.response.status_code"] == 422
    masked_span = next(s for s in spans if s["attributes"].get("k8s_ai.guardrail.action") == "masked")
    assert "error.type" not in masked_span["attributes"]
    assert masked_span["attributes"]["k8s_ai.limit.decision"] == "admitted"
    exported = collector.file.read_text()
    assert "AKIAIOSFODNN7EXAMPLE" not in exported and "bob@example.com" not in exported


def test_message_content_is_recorded_only_when_enabled_and_as_masked(emulator, tmp_path):
    port = free_port()
    collector = Collector(tmp_path, f"127.0.0.1:{port}")
    proc, url, _ = start_sidecar(emulator.url, manifests(), tmp_path, {
        # Plain HTTP is allowed with message content only to loopback (a collector in the pod).
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "AI_SIDECAR_TRACE_MESSAGE_CONTENT": "true",
    })
    try:
        client(url).chat.completions.create(model="claude-haiku", messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "write to bob@example.com please"}])
        span, = collector.wait_for(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        collector.stop()
    attributes = span["attributes"]
    assert json.loads(attributes["gen_ai.system_instructions"]) == [{"type": "text", "content": "Answer in French."}]
    sent, = json.loads(attributes["gen_ai.input.messages"])
    assert sent["role"] == "user"
    text = sent["parts"][0]["content"]
    assert text.startswith("write to ") and "bob@example.com" not in text
    answer, = json.loads(attributes["gen_ai.output.messages"])
    assert answer["role"] == "assistant" and answer["finish_reason"] == "end_turn"
    assert answer["parts"][0]["type"] == "text" and answer["parts"][0]["content"] == text  # the emulator echoes
    assert "bob@example.com" not in collector.file.read_text()


@pytest.mark.parametrize("env, message", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "set http/json and point OTEL_EXPORTER_OTLP_ENDPOINT at the receiver's OTLP/HTTP port"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "is not an http:// or https:// URL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.observability:4318", "AI_SIDECAR_TRACE_MESSAGE_CONTENT": "true"},
     "over plain HTTP across the network"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER": "sometimes"},
     "OTEL_TRACES_SAMPLER=sometimes is not one of"),
])
def test_bad_trace_settings_stop_the_sidecar_saying_what_to_fix(tmp_path, env, message):
    config = tmp_path / "sidecar.yaml"
    config.write_text(manifests())
    done = subprocess.run([str(SIDECAR), "--standalone", "--config", str(config)], capture_output=True, text=True,
                          timeout=30, env={"AI_SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
                                           "AI_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
                                           "AWS_REGION": "us-east-1", **env})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_an_absent_collector_never_holds_a_call_up(emulator, tmp_path):
    proc, url, admin = start_sidecar(emulator.url, manifests(), tmp_path, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
    })
    try:
        out = client(url).chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content == "hi"
        deadline = time.monotonic() + 10
        while metric(admin, "k8s_ai_operator_sidecar_trace_spans_total", 'outcome="export_failed"') < 1:
            assert time.monotonic() < deadline, "the failed export was not counted"
            time.sleep(0.1)
        assert metric(admin, "k8s_ai_operator_sidecar_trace_spans_total", 'outcome="exported"') == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_spans_still_queued_are_sent_when_the_pod_stops(emulator, tmp_path):
    """SIGTERM (the kubelet stopping the pod) sends what waits in the queue once the last requests
    are done, however long the batch delay: the last calls of a pod are traced too."""
    port = free_port()
    collector = Collector(tmp_path, f"127.0.0.1:{port}")
    proc, url, _ = start_sidecar(emulator.url, manifests(), tmp_path, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # ten minutes: only the shutdown sends it
    })
    try:
        client(url).chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "last words"}])
        time.sleep(0.5)
        assert collector.spans() == [], "sent before the batch delay"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        span, = collector.wait_for(1, timeout=5)
        assert span["attributes"]["k8s_ai.limit.decision"] == "admitted"
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.stop()
