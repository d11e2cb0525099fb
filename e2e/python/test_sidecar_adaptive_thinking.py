"""Claude's adaptive thinking through the sidecar, from the three client families: the OpenAI SDK's
`reasoning_effort` (made adaptive on Claude 4.6 and later, a budget on older Claude), the Anthropic
SDK's `thinking: {type: adaptive}` with `output_config.effort`, and boto3's
`additionalModelRequestFields`. The emulator holds Bedrock's rules: Claude Opus 4.7 refuses budgets
and leaves its thinking out unless asked for a summary; Opus 4.6 takes both kinds."""

from decimal import Decimal

import anthropic
import boto3
import openai
import pytest
from botocore.exceptions import ClientError

from conftest import seed_manifests, start_sidecar
from costs import cost_counted
from test_sidecar_bedrock_clients import UNSIGNED

ENDPOINTS = """---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: opus-47
  namespace: ai-workloads
spec:
  modelId: us.anthropic.claude-opus-4-7
  region: us-east-1
  maxTokens: 40000
---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: opus-46
  namespace: ai-workloads
spec:
  modelId: us.anthropic.claude-opus-4-6-v1
  region: us-east-1
  maxTokens: 40000
"""

QUESTION = "Why is the sky blue?"


@pytest.fixture
def opus(emulator, tmp_path):
    proc, url, admin = start_sidecar(emulator.url, seed_manifests() + ENDPOINTS, tmp_path)
    yield url, admin
    proc.terminate()
    proc.wait(timeout=30)


def sent_to_bedrock(emulator, before: int) -> list[dict]:
    return [r for r in emulator.admin("/_emulator/requests") if r["seq"] > before and r["operation"].startswith("Converse")]


def last_seq(emulator) -> int:
    return max((r["seq"] for r in emulator.admin("/_emulator/requests")), default=0)


def test_openai_reasoning_effort_is_adaptive_with_its_reasoning_shown(opus, emulator):
    """On Opus 4.7 (adaptive only) reasoning_effort is asked as adaptive thinking with a summary, so
    reasoning_content comes back; streamed too. The thinking's tokens are billed (Opus 4.7: $5.50 /
    $27.50 per million through its US profile) and counted once."""
    url, admin = opus
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    out = oa.chat.completions.create(model="opus-47", reasoning_effort="high", max_tokens=512,
                                     messages=[{"role": "user", "content": QUESTION}])
    message = out.choices[0].message
    assert message.model_extra["reasoning_content"].startswith("The user asks:"), message
    assert message.model_extra["thinking_blocks"][0]["signature"]
    assert out.usage.completion_tokens >= (len(message.model_extra["reasoning_content"].encode()) + 3) // 4
    cost = (Decimal(out.usage.prompt_tokens) * Decimal("5.5") + Decimal(out.usage.completion_tokens) * Decimal("27.5")) / 10**6
    assert cost_counted(admin) == pytest.approx(cost, rel=Decimal("1e-9"))

    thought = ""
    for chunk in oa.chat.completions.create(model="opus-47", reasoning_effort="low", stream=True,
                                            messages=[{"role": "user", "content": QUESTION}]):
        if chunk.choices:
            thought += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
    assert thought.startswith("The user asks:")

    # Older Claude keeps a budget: the seed's Haiku 4.5 has no adaptive thinking.
    haiku = oa.chat.completions.create(model="claude-haiku", reasoning_effort="low", max_tokens=512,
                                       messages=[{"role": "user", "content": QUESTION}])
    assert haiku.choices[0].message.model_extra["reasoning_content"]


def test_anthropic_sdk_adaptive_thinking_with_effort(opus, emulator):
    """`thinking: {type: adaptive}` and `output_config.effort` pass to Bedrock as asked: Opus 4.7
    omits its thinking unless the app asks for `display: summarized`; Opus 4.6 shows it; a budget on
    Opus 4.7 and adaptive thinking on Haiku 4.5 are refused up front with what to use instead."""
    url, _ = opus
    ac = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    question = [{"role": "user", "content": QUESTION}]
    effort = {"output_config": {"effort": "max"}}
    omitted = ac.messages.create(model="opus-47", max_tokens=4000, thinking={"type": "adaptive"}, extra_body=effort, messages=question)
    assert [b.type for b in omitted.content] == ["thinking", "text"]
    assert omitted.content[0].thinking == "" and omitted.content[0].signature
    shown = ac.messages.create(model="opus-47", max_tokens=4000, thinking={"type": "adaptive", "display": "summarized"},
                               extra_body=effort, messages=question)
    assert shown.content[0].thinking.startswith("The user asks:")
    # Billed whole either way.
    assert omitted.usage.output_tokens == shown.usage.output_tokens
    assert ac.messages.create(model="opus-46", max_tokens=4000, thinking={"type": "adaptive"},
                              messages=question).content[0].thinking.startswith("The user asks:")

    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="opus-47", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000}, messages=question)
    assert "takes adaptive thinking only" in str(e.value)
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="claude-haiku", max_tokens=4000, thinking={"type": "adaptive"}, messages=question)
    assert "extended thinking only" in str(e.value)
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="opus-47", max_tokens=4000, extra_body={"output_config": {"effort": "extreme"}}, messages=question)
    assert "output_config.effort must be" in str(e.value)


def test_boto3_adaptive_thinking_in_additional_model_request_fields(opus, emulator):
    """The Bedrock-native route passes Claude's adaptive thinking and effort through, and what
    Bedrock sent back: the reasoning block first, its summary only when asked."""
    url, _ = opus
    runtime = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1", config=UNSIGNED)
    question = [{"role": "user", "content": [{"text": QUESTION}]}]
    before = last_seq(emulator)
    fields = {"thinking": {"type": "adaptive", "display": "summarized"}, "output_config": {"effort": "medium"}}
    out = runtime.converse(modelId="opus-47", messages=question, additionalModelRequestFields=fields)
    reasoning = out["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"]
    assert reasoning["text"].startswith("The user asks:") and reasoning["signature"]
    assert [r["operation"] for r in sent_to_bedrock(emulator, before)] == ["Converse"]
    before = last_seq(emulator)

    # What Bedrock would refuse is refused before the call, in Bedrock's error shape.
    with pytest.raises(ClientError) as e:
        runtime.converse(modelId="opus-47", messages=question,
                         additionalModelRequestFields={"thinking": {"type": "disabled"}})
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "takes adaptive thinking only" in e.value.response["Error"]["Message"]
    assert sent_to_bedrock(emulator, before) == []
    # A budget on Opus 4.6 is deprecated, not refused.
    budget = runtime.converse(modelId="opus-46", messages=question, inferenceConfig={"maxTokens": 4000},
                              additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert "reasoningContent" in budget["output"]["message"]["content"][0]
