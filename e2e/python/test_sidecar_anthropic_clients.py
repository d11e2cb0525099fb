"""Apps written for Anthropic's API through the sidecar: the Anthropic Python SDK with its base URL
at the sidecar (`/v1/messages`) and its `AnthropicBedrock` client (InvokeModel with Anthropic
bodies), text, tools and streams, each call charged what Bedrock counted."""

import json
import urllib.request
from decimal import Decimal

import anthropic
import pytest

from costs import cost_counted, haiku_cost

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(url: str) -> anthropic.Anthropic:
    # The app changes only the base URL; the sidecar holds the AWS identity, the key is unused.
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def bedrock_client(url: str) -> anthropic.AnthropicBedrock:
    # It signs with whatever keys it has; the sidecar ignores the signature and signs itself.
    return anthropic.AnthropicBedrock(base_url=url, aws_region="us-east-1", aws_access_key="unused",
                                      aws_secret_key="unused", max_retries=0)


def test_messages_text_tools_and_exact_cost(sidecar, emulator):
    url, admin = sidecar
    ac = client(url)
    # The endpoint's name, and Anthropic's own name for the model, both reach the endpoint.
    out = ac.messages.create(model="claude-haiku", max_tokens=64, system="Be brief.",
                             messages=[{"role": "user", "content": "What is a sidecar?"}])
    assert out.content[0].text == "What is a sidecar?"
    assert out.stop_reason == "end_turn"
    again = ac.messages.create(model="claude-haiku-4-5", max_tokens=64,
                               messages=[{"role": "user", "content": [{"type": "text", "text": "again"}]}])
    assert again.content[0].text == "again"

    question = {"role": "user", "content": "get_weather in Nairobi?"}
    called = ac.messages.create(model="claude-haiku", max_tokens=256, tools=[WEATHER], messages=[question])
    assert called.stop_reason == "tool_use"
    use = next(b for b in called.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    answered = ac.messages.create(model="claude-haiku", max_tokens=256, tools=[WEATHER], messages=[
        question, {"role": "assistant", "content": called.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Warm"}]}])
    assert answered.content[0].text == "Warm"

    calls = emulator.admin("/_emulator/requests?operation=Converse")
    assert [c.get("error") for c in calls] == [None] * 4
    assert [o.usage.input_tokens for o in (out, again, called, answered)] == [c["inputTokens"] for c in calls]
    # The metric is a float counter: equal to the exact sum within its precision.
    assert abs(cost_counted(admin) - sum(haiku_cost(c) for c in calls)) < Decimal("1e-12")


def test_messages_stream_with_the_sdks_accumulator(sidecar, emulator):
    url, _ = sidecar
    with client(url).messages.stream(model="claude-haiku", max_tokens=256, tools=[WEATHER],
                                     messages=[{"role": "user", "content": "get_weather in Hanoi"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Calling get_weather."
    assert isinstance(final.content[1].input["city"], str)
    record = emulator.admin("/_emulator/requests?operation=ConverseStream")[0]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (record["inputTokens"], record["outputTokens"])

    with client(url).messages.stream(model="claude-haiku", max_tokens=64,
                                     messages=[{"role": "user", "content": "stream me"}]) as stream:
        assert "".join(stream.text_stream) == "stream me"


def test_anthropic_bedrock_client_through_invoke_model(sidecar, emulator):
    url, admin = sidecar
    ab = bedrock_client(url)
    out = ab.messages.create(model="claude-haiku", max_tokens=64, messages=[{"role": "user", "content": "via invoke"}])
    assert out.content[0].text == "via invoke"
    assert out.model == "anthropic.claude-haiku-4-5-20251001-v1:0"
    with ab.messages.stream(model="claude-haiku", max_tokens=64,
                            messages=[{"role": "user", "content": "via stream"}]) as stream:
        assert "".join(stream.text_stream) == "via stream"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    records = [r for r in emulator.admin("/_emulator/requests") if r.get("service") == "bedrock-runtime"]
    assert [r["operation"] for r in records] == ["Converse", "ConverseStream"]
    assert final.usage.output_tokens == records[1]["outputTokens"]
    assert abs(cost_counted(admin) - sum(haiku_cost(r) for r in records)) < Decimal("1e-12")


def test_anthropic_errors_and_refusals(sidecar, emulator):
    url, _ = sidecar
    ac = client(url)
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ac.messages.create(model="other-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["message"].startswith("endpoint_not_allowed: ")
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="claude-haiku", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "redacted_thinking", "data": "x"}]}])
    assert "messages[0].content[0] of type \"redacted_thinking\" is not supported" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="claude-haiku", max_tokens=8, extra_body={"top_k": 5}, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["message"].startswith("unsupported_parameter: top_k")
    # The seed's guardrail blocks AWS keys: a refusal, as Claude answers one, and no model call.
    out = ac.messages.create(model="claude-haiku", max_tokens=8,
                             messages=[{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}])
    assert out.stop_reason == "refusal"
    assert emulator.admin("/_emulator/requests?operation=Converse") == []
    # InvokeModel bodies of other providers are refused, in Bedrock's words.
    with pytest.raises(Exception) as e:
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/model/claude-haiku/invoke", data=json.dumps({"inputText": "hi"}).encode(), method="POST"))
    assert e.value.code == 400
    assert e.value.headers["x-amzn-errortype"] == "ValidationException"


def test_images_and_documents_through_both_anthropic_clients(sidecar):
    import base64

    from media import pdf, png

    url, _ = sidecar
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png(75, 100)).decode()}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf(1)).decode()}, "title": "Spec"},
        {"type": "text", "text": "Summarise"},
    ]
    for c in (client(url), bedrock_client(url)):
        out = c.messages.create(model="claude-haiku", max_tokens=64, messages=[{"role": "user", "content": content}])
        assert out.content[0].text == "Summarise"
        # 75 × 100 / 750 = 10 tokens for the image, 1,500 for the page, 1 for the title.
        assert out.usage.input_tokens == (len("Summarise") + 3) // 4 + 8 + 4 + 10 + 1500 + 1
    with pytest.raises(anthropic.BadRequestError) as e:
        client(url).messages.create(model="claude-haiku", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}])
    assert "only base64 sources" in e.value.body["error"]["message"]


LONG_SYSTEM = "You are a careful reviewer of Kubernetes manifests. " * 400  # ~5,200 tokens


def test_prompt_caching_with_both_ttls_is_charged_exactly(sidecar, emulator):
    """Anthropic's cache_control on the system prompt (an hour) and on the question (five
    minutes): the first call writes both, the second reads them; each kind of token is charged at
    its own price (Haiku 4.5 via `us.`: input $1.10, cache read $0.11, five-minute write $1.375,
    hour-long write $2.20, output $5.50 per million)."""
    url, admin = sidecar
    question = "Review this manifest. " * 300  # past the 4,096-token minimum with the system prompt
    body = dict(model="claude-haiku", max_tokens=32,
                system=[{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                messages=[{"role": "user", "content": [
                    {"type": "text", "text": question, "cache_control": {"type": "ephemeral"}}]}])
    first = client(url).messages.create(**body)
    second = client(url).messages.create(**body)
    u1, u2 = first.usage, second.usage
    assert u1.cache_creation.ephemeral_1h_input_tokens > 4096, u1
    assert u1.cache_creation.ephemeral_5m_input_tokens > 0, u1
    assert u1.cache_creation_input_tokens == u1.cache_creation.ephemeral_1h_input_tokens + u1.cache_creation.ephemeral_5m_input_tokens
    assert u1.cache_read_input_tokens == 0
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens and u2.cache_creation_input_tokens == 0

    def cost(u):
        return (Decimal(u.input_tokens) * Decimal("1.1") + Decimal(u.output_tokens) * Decimal("5.5")
                + Decimal(u.cache_read_input_tokens) * Decimal("0.11")
                + Decimal(u.cache_creation.ephemeral_5m_input_tokens) * Decimal("1.375")
                + Decimal(u.cache_creation.ephemeral_1h_input_tokens) * Decimal("2.2")) / 10**6
    assert abs(cost_counted(admin) - cost(u1) - cost(u2)) < Decimal("1e-12")
    records = emulator.admin("/_emulator/requests?operation=Converse")
    assert [r["inputTokens"] for r in records] == [
        u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens for u in (u1, u2)]


def test_count_tokens_through_the_anthropic_sdk(sidecar):
    url, _ = sidecar
    ac = client(url)
    messages = [{"role": "user", "content": "Count me, please."}]
    counted = ac.messages.count_tokens(model="claude-haiku", system="Be brief.", messages=messages)
    billed = ac.messages.create(model="claude-haiku", max_tokens=16, system="Be brief.", messages=messages)
    assert counted.input_tokens == billed.usage.input_tokens


def test_extended_thinking_through_the_anthropic_sdk(sidecar):
    """thinking with a budget: the answer starts with a signed thinking block; the tool loop sends
    it back as the SDK returned it; the stream helper accumulates thinking and its signature."""
    url, _ = sidecar
    ac = client(url)
    thinking = {"type": "enabled", "budget_tokens": 2000}
    question = {"role": "user", "content": "get_weather in Oslo?"}
    first = ac.messages.create(model="claude-haiku", max_tokens=4000, thinking=thinking, tools=[WEATHER], messages=[question])
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature
    use = first.content[2]
    second = ac.messages.create(model="claude-haiku", max_tokens=4000, thinking=thinking, tools=[WEATHER], messages=[
        question, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Snow"}]}])
    assert second.content[-1].text == "Snow"
    with ac.messages.stream(model="claude-haiku", max_tokens=4000, thinking=thinking,
                            messages=[{"role": "user", "content": "and you?"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking.startswith("The user asks:")
    assert final.content[0].signature
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model="claude-haiku", max_tokens=1500, thinking=thinking, messages=[question])
    assert "budget_tokens" in e.value.body["error"]["message"]
