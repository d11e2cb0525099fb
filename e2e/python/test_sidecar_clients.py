"""The sidecar through real clients: the OpenAI Python SDK, and Prometheus' promtool on /metrics."""

import shutil
import subprocess
import urllib.request

import openai
import pytest


def tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def framing(messages: int, system: bool) -> int:
    """The emulator's framing tokens (e2e/src/emulator/text.rs): 8, and 4 per message or system."""
    return 8 + 4 * (messages + int(system))


def client(url: str) -> openai.OpenAI:
    # The app changes only the base URL; the sidecar holds the AWS identity, no API key is needed.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_openai_sdk_chat_completion(sidecar):
    url, _ = sidecar
    oa = client(url)
    assert [m.id for m in oa.models.list()] == ["claude-haiku"]
    out = oa.chat.completions.create(model="claude-haiku", max_tokens=64, temperature=0.4, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is a sidecar?"},
    ])
    assert out.choices[0].message.content == "What is a sidecar?"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == tokens("What is a sidecar?")
    assert out.usage.prompt_tokens == tokens("Be brief.") + tokens("What is a sidecar?") + framing(1, True)


def test_openai_sdk_streaming_with_usage(sidecar):
    url, _ = sidecar
    stream = client(url).chat.completions.create(
        model="claude-haiku", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream me a short answer"}])
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "stream me a short answer"
    assert finish == "stop"
    assert usage.completion_tokens == tokens(text)


def test_openai_sdk_sees_our_errors(sidecar):
    url, _ = sidecar
    with pytest.raises(openai.NotFoundError) as err:
        client(url).chat.completions.create(model="not-created", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "endpoint_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client(url).chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "x"}], temperature=3)
    assert err.value.body["code"] == "invalid_request"
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client(url).chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}])
    assert err.value.body["code"] == "guardrail_blocked"


def test_metrics_pass_promtool(sidecar, tmp_path):
    url, admin = sidecar
    client(url).chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "count me"}])
    with urllib.request.urlopen(f"{admin}/metrics") as r:
        page = r.read().decode()
    assert "k8s_ai_operator_bedrock_invocation_cost_dollars_total{" in page
    assert "k8s_ai_operator_bedrock_invocation_duration_seconds_bucket{" in page
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/install-deps.sh (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
