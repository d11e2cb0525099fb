"""Apps written for Bedrock, unchanged but for `endpoint_url`, through the sidecar: boto3's
bedrock-runtime client (Converse, ConverseStream, tool use, errors) and LangChain's
`ChatBedrockConverse`. The app holds no AWS credentials: boto3 sends its requests unsigned and
the sidecar signs with the pod's identity."""

import json
from decimal import Decimal

import boto3
import botocore
import botocore.config
import pytest
from botocore.exceptions import ClientError

from conftest import seed_manifests, start_sidecar
from costs import cost_counted, haiku_cost

HAIKU = "anthropic.claude-haiku-4-5-20251001-v1:0"
UNSIGNED = botocore.config.Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1, "mode": "standard"})


def runtime(url: str):
    return boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1", config=UNSIGNED)


def test_boto3_converse_by_endpoint_name_and_by_model_id(sidecar, emulator):
    url, admin = sidecar
    rt = runtime(url)
    by_name = rt.converse(modelId="claude-haiku", system=[{"text": "Be brief."}],
                          messages=[{"role": "user", "content": [{"text": "What is a sidecar?"}]}],
                          inferenceConfig={"maxTokens": 64, "temperature": 0.2})
    assert by_name["output"]["message"]["content"] == [{"text": "What is a sidecar?"}]
    assert by_name["stopReason"] == "end_turn"
    # The ModelEndpoint's model id works too, as an app written for Bedrock names it.
    by_model = rt.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "again"}]}])
    assert by_model["output"]["message"]["content"][0]["text"] == "again"

    calls = emulator.admin("/_emulator/requests?operation=Converse")
    assert [c["modelId"] for c in calls] == [f"us.{HAIKU}"] * 2  # called through the endpoint's profile
    assert [by_name["usage"]["inputTokens"], by_model["usage"]["inputTokens"]] == [c["inputTokens"] for c in calls]
    header = by_name["ResponseMetadata"]["HTTPHeaders"]["x-ai-sidecar-cost-usd"]
    assert Decimal(header) == haiku_cost(calls[0])
    # The metric is a float counter: equal to the exact sum within its precision.
    assert abs(cost_counted(admin) - haiku_cost(calls[0]) - haiku_cost(calls[1])) < Decimal("1e-12")


def test_boto3_converse_stream(sidecar):
    url, _ = sidecar
    out = runtime(url).converse_stream(modelId="claude-haiku",
                                       messages=[{"role": "user", "content": [{"text": "stream this answer"}]}])
    events = list(out["stream"])
    assert "messageStart" in events[0]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "stream this answer"
    assert [e["messageStop"]["stopReason"] for e in events if "messageStop" in e] == ["end_turn"]
    metadata = events[-1]["metadata"]
    assert metadata["usage"]["outputTokens"] == (len(text) + 3) // 4


def test_boto3_tool_use_through_the_sidecar(sidecar):
    url, _ = sidecar
    rt = runtime(url)
    config = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}]}
    question = {"role": "user", "content": [{"text": "get_weather in Quito?"}]}
    first = rt.converse(modelId="claude-haiku", messages=[question], toolConfig=config)
    assert first["stopReason"] == "tool_use"
    use = next(b["toolUse"] for b in first["output"]["message"]["content"] if "toolUse" in b)
    assert use["name"] == "get_weather" and isinstance(use["input"]["city"], str)
    result = {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"json": {"sky": "clear"}}]}}]}
    second = rt.converse(modelId="claude-haiku", messages=[question, first["output"]["message"], result], toolConfig=config)
    assert second["stopReason"] == "end_turn"
    assert json.loads(second["output"]["message"]["content"][0]["text"]) == {"sky": "clear"}

    events = list(rt.converse_stream(modelId="claude-haiku", messages=[question], toolConfig=config)["stream"])
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather"
    arguments = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert isinstance(json.loads(arguments)["city"], str)
    # Blocks are numbered as Bedrock numbers them: the text first, then the call.
    assert start["contentBlockIndex"] == 1


def test_boto3_sees_bedrocks_errors(sidecar):
    url, _ = sidecar
    rt = runtime(url)
    cases = [
        ("other-model", [{"role": "user", "content": [{"text": "x"}]}], "AccessDeniedException", "endpoint_not_allowed"),
        ("claude-haiku", [{"role": "user", "content": [{"video": {"format": "mp4", "source": {"bytes": b"\x00"}}}]}],
         "ValidationException", "messages[0].content[0].video is not supported"),
        ("claude-haiku", [{"role": "system", "content": [{"text": "x"}]}], "ValidationException", "invalid_request"),
    ]
    for model, messages, code, words in cases:
        with pytest.raises(ClientError) as e:
            rt.converse(modelId=model, messages=messages)
        assert e.value.response["Error"]["Code"] == code, e.value.response
        assert words in e.value.response["Error"]["Message"], e.value.response


def test_boto3_sees_a_guardrail_block_as_bedrock_answers_it(sidecar, emulator):
    """The seed's GuardrailPolicy blocks AWS access keys: Bedrock answers such a call with a 200 whose
    stop reason is guardrail_intervened, and so does the sidecar. Nothing reaches the model."""
    url, _ = sidecar
    out = runtime(url).converse(modelId="claude-haiku",
                                messages=[{"role": "user", "content": [{"text": "my key is AKIAIOSFODNN7EXAMPLE"}]}])
    assert out["stopReason"] == "guardrail_intervened"
    assert "AWS_ACCESS_KEY" in out["output"]["message"]["content"][0]["text"]
    assert emulator.admin("/_emulator/requests?operation=Converse") == []


def test_boto3_is_throttled_and_refused_over_budget(emulator, tmp_path):
    manifests = seed_manifests().replace("requestsPerMinute: 60", "requestsPerMinute: 1")
    proc, url, _ = start_sidecar(emulator.url, manifests, tmp_path)
    try:
        rt = runtime(url)
        hello = [{"role": "user", "content": [{"text": "hello"}]}]
        rt.converse(modelId="claude-haiku", messages=hello)
        with pytest.raises(ClientError) as e:
            rt.converse(modelId="claude-haiku", messages=hello)
        assert e.value.response["Error"]["Code"] == "ThrottlingException"
        assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    broke = seed_manifests().replace('daily: "10.00"', 'daily: "0.000001"')
    proc, url, _ = start_sidecar(emulator.url, broke, tmp_path)
    try:
        with pytest.raises(ClientError) as e:
            runtime(url).converse(modelId="claude-haiku", messages=[{"role": "user", "content": [{"text": "hello"}]}])
        assert e.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert e.value.response["Error"]["Message"].startswith("budget_exceeded: ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_langchain_chat_bedrock_converse(sidecar):
    """LangChain's Bedrock chat model with only `endpoint_url` changed: a plain call, a stream, and
    a tool call through `bind_tools`."""
    from langchain_aws import ChatBedrockConverse
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    url, _ = sidecar
    model = ChatBedrockConverse(model="claude-haiku", region_name="us-east-1", client=runtime(url))
    assert model.invoke("hello from langchain").content == "hello from langchain"
    assert "".join(str(c.content) for c in model.stream("stream from langchain")).count("stream from langchain") == 1
    called = model.bind_tools([get_weather]).invoke("get_weather in Lima?")
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]
    assert isinstance(called.tool_calls[0]["args"]["city"], str)


def test_boto3_images_and_documents(sidecar):
    from media import pdf, png

    url, _ = sidecar
    rt = runtime(url)
    out = rt.converse(modelId="claude-haiku", messages=[{"role": "user", "content": [
        {"text": "Describe"},
        {"image": {"format": "png", "source": {"bytes": png(150, 100)}}},
        {"document": {"format": "pdf", "name": "Plan", "source": {"bytes": pdf(3)}}},
    ]}])
    # 150 × 100 / 750 = 20 tokens for the image, 1,500 a page, 1 for the name.
    assert out["usage"]["inputTokens"] == (len("Describe") + 3) // 4 + 8 + 4 + 20 + 3 * 1500 + 1
    with pytest.raises(ClientError) as e:
        rt.converse(modelId="claude-haiku", messages=[{"role": "user", "content": [
            {"text": "x"}, {"image": {"format": "jpeg", "source": {"bytes": png(1, 1)}}}]}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "not a jpeg image" in e.value.response["Error"]["Message"]


def test_boto3_count_tokens_is_free_and_matches_the_bill(sidecar, emulator):
    """CountTokens through the sidecar counts what Converse then bills, and costs nothing."""
    url, admin = sidecar
    rt = runtime(url)
    conversation = {"system": [{"text": "Be brief."}],
                    "messages": [{"role": "user", "content": [{"text": "How many tokens is this?"}]}]}
    counted = rt.count_tokens(modelId="claude-haiku", input={"converse": conversation})["inputTokens"]
    assert cost_counted(admin) == 0
    assert [r["operation"] for r in emulator.admin("/_emulator/requests")
            if r.get("service") == "bedrock-runtime"] == ["CountTokens"]
    billed = rt.converse(modelId="claude-haiku", **conversation)["usage"]["inputTokens"]
    assert counted == billed

    # The same conversation as an InvokeModel body (boto3 sends the blob in base64).
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "system": "Be brief.",
                       "messages": [{"role": "user", "content": "How many tokens is this?"}]})
    as_invoke = rt.count_tokens(modelId="claude-haiku", input={"invokeModel": {"body": body.encode()}})["inputTokens"]
    invoked = rt.invoke_model(modelId="claude-haiku", body=body)
    assert as_invoke == int(invoked["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"]) == billed
    with pytest.raises(ClientError) as e:
        rt.count_tokens(modelId="claude-haiku", input={"invokeModel": {"body": b'{"inputText": "x"}'}})
    assert "anthropic_version" in e.value.response["Error"]["Message"]


def test_boto3_reasoning_through_additional_model_request_fields(sidecar):
    url, _ = sidecar
    rt = runtime(url)
    fields = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    ask = {"modelId": "claude-haiku", "messages": [{"role": "user", "content": [{"text": "why?"}]}],
           "inferenceConfig": {"maxTokens": 2048}, "additionalModelRequestFields": fields}
    out = rt.converse(**ask)
    first = out["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"]
    assert first["text"].startswith("The user asks: why?") and first["signature"]
    events = list(rt.converse_stream(**ask)["stream"])
    thought = "".join(e["contentBlockDelta"]["delta"]["reasoningContent"].get("text", "") for e in events
                      if "reasoningContent" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert thought == first["text"]
    text_blocks = {e["contentBlockDelta"]["contentBlockIndex"] for e in events
                   if "text" in e.get("contentBlockDelta", {}).get("delta", {})}
    assert text_blocks == {1}, "the reasoning is block 0, the text block 1"
    with pytest.raises(ClientError) as e:
        rt.converse(**{**ask, "additionalModelRequestFields": {"top_k": 5}})
    assert "additionalModelRequestFields.top_k" in e.value.response["Error"]["Message"]


def test_boto3_tool_loop_with_thinking_sends_the_reasoning_back(sidecar):
    """Bedrock requires the last assistant turn of a tool loop to start with its reasoning while
    the model thinks: boto3's own output message, appended as is, carries it through the sidecar."""
    url, _ = sidecar
    rt = runtime(url)
    config = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}]}
    ask = {"modelId": "claude-haiku", "toolConfig": config, "inferenceConfig": {"maxTokens": 2048},
           "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}
    question = {"role": "user", "content": [{"text": "get_weather in Lima?"}]}
    first = rt.converse(messages=[question], **ask)
    blocks = first["output"]["message"]["content"]
    assert "reasoningContent" in blocks[0]
    use = next(b["toolUse"] for b in blocks if "toolUse" in b)
    result = {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "Dry"}]}}]}
    done = rt.converse(messages=[question, first["output"]["message"], result], **ask)
    assert done["output"]["message"]["content"][-1]["text"] == "Dry"
    # Without the reasoning block, Bedrock's refusal comes back in its own words.
    stripped = {"role": "assistant", "content": [b for b in blocks if "reasoningContent" not in b]}
    with pytest.raises(ClientError) as e:
        rt.converse(messages=[question, stripped, result], **ask)
    assert "Expected `thinking` or `redacted_thinking`" in e.value.response["Error"]["Message"]


def test_native_embedding_bodies_through_boto3_and_langchain(emulator, tmp_path):
    """InvokeModel on an embedding endpoint with the model's own body, as LangChain's
    `BedrockEmbeddings` and boto3 apps send it: the body reaches Bedrock as the app wrote it
    (Cohere's `input_type` included), the answer comes back as Bedrock sent it, and its input
    tokens are charged at the model's price."""
    from langchain_aws import BedrockEmbeddings

    from costs import cost_counted
    from test_sidecar_clients import EMBEDDING_MODELS

    proc, url, admin = start_sidecar(emulator.url, seed_manifests() + EMBEDDING_MODELS, tmp_path)
    try:
        rt = runtime(url)
        titan = rt.invoke_model(modelId="titan-embed", body=json.dumps({"inputText": "a native text", "dimensions": 512, "normalize": True}))
        answer = json.loads(titan["body"].read())
        assert len(answer["embedding"]) == 512 and answer["inputTextTokenCount"] > 0
        assert int(titan["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"]) == answer["inputTextTokenCount"]
        cohere = rt.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps(
            {"texts": ["a query"], "input_type": "search_query"}))
        assert len(json.loads(cohere["body"].read())["embeddings"][0]) == 1024
        sent = emulator.admin("/_emulator/requests?operation=InvokeModel")
        assert [r["modelId"] for r in sent] == ["amazon.titan-embed-text-v2:0", "cohere.embed-english-v3"]

        lc = BedrockEmbeddings(model_id="titan-embed", client=rt)
        assert len(lc.embed_query("hello")) == 1024
        assert [len(v) for v in lc.embed_documents(["a", "b"])] == [1024, 1024]

        calls = emulator.admin("/_emulator/requests?operation=InvokeModel")
        titan_tokens = sum(c["inputTokens"] for c in calls if c["modelId"].startswith("amazon.titan"))
        cohere_tokens = sum(c["inputTokens"] for c in calls if c["modelId"].startswith("cohere"))
        expected = (Decimal(titan_tokens) * Decimal("0.02") + Decimal(cohere_tokens) * Decimal("0.10")) / 10**6
        assert abs(cost_counted(admin) - expected) < Decimal("1e-12")

        # Bedrock's own refusal of a malformed body, in its shape; a missing text is ours.
        with pytest.raises(ClientError) as e:
            rt.invoke_model(modelId="cohere-embed", body=json.dumps({"texts": ["x"]}))
        assert e.value.response["Error"]["Code"] == "ValidationException"
        with pytest.raises(ClientError) as e:
            rt.invoke_model(modelId="titan-embed", body=json.dumps({"text": "x"}))
        assert "inputText" in e.value.response["Error"]["Message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
