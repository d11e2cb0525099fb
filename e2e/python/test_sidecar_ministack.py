"""The sidecar's Bedrock paths against MiniStack, an independent emulator nobody here wrote.

Where MiniStack and our emulator differ (see the notes in each test), real Bedrock's documented
behaviour decides which one our emulator follows.
"""

import json
import urllib.request
from decimal import Decimal

import boto3

from conftest import seed_manifests, start_sidecar

HAIKU = "anthropic.claude-haiku-4-5-20251001-v1:0"
BODY = {"messages": [{"role": "user", "content": "Explain Kubernetes operators in two sentences."}]}


def post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_invoke_and_stream_through_ministack(ministack, tmp_path):
    proc, url, _ = start_sidecar(ministack, seed_manifests(), tmp_path)
    try:
        status, text = post(f"{url}/invoke/ai-workloads/claude-haiku", BODY)
        assert status == 200, text
        answer = json.loads(text)
        assert answer["stopReason"] == "end_turn" and answer["content"]
        assert answer["inputTokens"] > 0 and answer["outputTokens"] > 0
        # Exact cost from MiniStack's own token counts at the us. profile's $1.10/$5.50 per million
        # (the standalone config names the geographic profile; conftest.seed_manifests).
        expected = (answer["inputTokens"] * Decimal("1.1") + answer["outputTokens"] * Decimal("5.5")) / 1_000_000
        assert Decimal(answer["costUSD"]) == expected

        status, text = post(f"{url}/invoke/ai-workloads/claude-haiku", {**BODY, "stream": True})
        assert status == 200, text
        events = [e for e in text.split("\n\n") if e.strip()]
        deltas = "".join(json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: delta"))
        done = json.loads(events[-1].split("data: ", 1)[1])
        assert events[-1].startswith("event: done") and done["content"] == deltas
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bedrock_guardrail_through_ministack(ministack, tmp_path):
    kw = dict(endpoint_url=ministack, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    bedrock = boto3.client("bedrock", **kw)
    created = bedrock.create_guardrail(
        name="ministack-policy", blockedInputMessaging="Blocked by MiniStack.", blockedOutputsMessaging="Blocked out.",
        sensitiveInformationPolicyConfig={"piiEntitiesConfig": [{"type": "EMAIL", "action": "BLOCK"}]})
    version = bedrock.create_guardrail_version(guardrailIdentifier=created["guardrailId"])["version"]
    # Note: MiniStack's guardrail ids look like "gr-1a2b..."; Bedrock's (and our emulator's) are [a-z0-9]+.
    # The policy here has no local PII rules, so the e-mail reaches MiniStack's guardrail.
    policy = f"""apiVersion: ai.kernelpanic09.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: pii-and-safety
spec:
  contentPolicy:
    filters:
    - type: PROMPT_ATTACK
      inputStrength: HIGH
      outputStrength: HIGH
status:
  guardrailId: {created["guardrailId"]}
  version: "{version}"
"""
    endpoint = seed_manifests().split("---\n")[1]
    proc, url, _ = start_sidecar(ministack, policy + "---\n" + endpoint, tmp_path)
    try:
        status, text = post(f"{url}/invoke/ai-workloads/claude-haiku", BODY)
        assert status == 200, text
        status, text = post(f"{url}/invoke/ai-workloads/claude-haiku", {"messages": [{"role": "user", "content": "mail bob@example.com"}]})
        assert status == 422, text
        error = json.loads(text)["error"]
        assert error["code"] == "guardrail_blocked" and error["message"] == "Blocked by MiniStack."
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_new_request_shapes_are_accepted_by_ministack(ministack, tmp_path):
    """The Converse bodies the sidecar now writes (tools and tool history, cache points with a TTL,
    Claude's thinking, a document) parse in an emulator nobody here wrote. MiniStack answers them
    all with its mock text and does not model tools, caching or thinking (nor CountTokens or
    embeddings): those behaviours are checked against our emulator, which follows Bedrock's
    documentation, elsewhere."""
    import base64

    from media import pdf

    proc, url, _ = start_sidecar(ministack, seed_manifests(), tmp_path)
    try:
        weather = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]
        history = [
            {"role": "user", "content": "get_weather in Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]
        document = base64.b64encode(pdf(1)).decode()
        for body in [
            {"model": "claude-haiku", "tools": weather, "messages": history},
            {"model": "claude-haiku", "reasoning_effort": "low", "max_tokens": 256,
             "messages": [{"role": "user", "content": "think"}]},
            {"model": "claude-haiku", "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
                {"role": "user", "content": [{"type": "text", "text": "Read this."},
                                             {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{document}"}}]}]},
        ]:
            status, text = post(f"{url}/v1/chat/completions", body)
            assert status == 200, (body, text)
            assert json.loads(text)["choices"][0]["message"]["content"].startswith("[ministack mock")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
