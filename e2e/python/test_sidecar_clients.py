"""The sidecar through real clients: the OpenAI Python SDK, LangChain, and Prometheus' promtool on
/metrics."""

import json
import shutil
import subprocess
import urllib.request
from decimal import Decimal

import openai
import pytest

from conftest import seed_manifests, start_sidecar
from costs import cost_counted


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


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


def test_openai_sdk_tool_call_round_trip(sidecar, emulator):
    """An app's tool loop as the SDK's docs write it: the model calls, the app answers, the model
    uses the answer; each call is charged what Bedrock counted."""
    url, admin = sidecar
    oa = client(url)
    messages = [{"role": "user", "content": "What is get_weather in Paris?"}]
    first = oa.chat.completions.create(model="claude-haiku", messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees"}]
    second = oa.chat.completions.create(model="claude-haiku", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Sunny, 21 degrees"
    assert not second.choices[0].message.tool_calls

    calls = emulator.admin("/_emulator/requests?operation=Converse")
    assert [r.get("error") for r in calls] == [None, None]
    assert [r["inputTokens"] for r in calls] == [first.usage.prompt_tokens, second.usage.prompt_tokens]
    counted = cost_counted(admin)
    # Claude Haiku 4.5 through its US profile: $1.10 / $5.50 per million tokens.
    expected = sum(Decimal(r["inputTokens"]) * Decimal("1.1") + Decimal(r["outputTokens"]) * Decimal("5.5") for r in calls) / 10**6
    assert abs(counted - expected) < Decimal("1e-12"), (counted, expected)


def test_openai_sdk_stream_helper_accumulates_parallel_tool_calls(sidecar):
    """The SDK's own stream accumulator (`chat.completions.stream`) rebuilds both calls from the
    deltas: it indexes calls by `index`, which must count calls from 0."""
    url, _ = sidecar
    time_tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
    with client(url).chat.completions.stream(
            model="claude-haiku", tools=[WEATHER_TOOL, time_tool],
            messages=[{"role": "user", "content": "get_weather and get_time in Oslo"}]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Calling get_weather and get_time."
    assert [c.function.name for c in message.tool_calls] == ["get_weather", "get_time"]
    assert len({c.id for c in message.tool_calls}) == 2
    for c in message.tool_calls:
        assert isinstance(json.loads(c.function.arguments), dict)


def test_langchain_openai_tool_calling_agent(sidecar):
    """A LangChain agent (`create_agent` on `ChatOpenAI`) runs its tool through the sidecar."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    url, _ = sidecar
    model = ChatOpenAI(model="claude-haiku", base_url=f"{url}/v1", api_key="unused", max_retries=0)
    agent = create_agent(model, tools=[get_weather])
    result = agent.invoke({"messages": [{"role": "user", "content": "What is get_weather in Lima?"}]})
    assert len(asked) == 1, result
    assert result["messages"][-1].content == f"Sunny in {asked[0]}"
    assert [m.type for m in result["messages"]] == ["human", "ai", "tool", "ai"]


SEND_TOOL = {"type": "function", "function": {
    "name": "send_note",
    "description": "Send a note",
    "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
}}


def test_pii_filter_reads_tool_call_arguments(sidecar, emulator):
    """The guardrail's PII filter reads the arguments of the model's tool calls as it reads its
    text: an e-mail address the model writes into them is masked, whole and streamed (arguments
    then arrive whole, filtered), from the OpenAI and the Anthropic SDK; an AWS key refuses the
    answer. The emulator's model is told what to say (a fixed answer, also its arguments)."""
    import anthropic

    url, _ = sidecar
    oa = client(url)
    config = emulator.admin("/_emulator/config")
    ask = [{"role": "user", "content": "Please use send_note."}]
    named = {"type": "function", "function": {"name": "send_note"}}
    try:
        emulator.admin("/_emulator/config", "PUT", {**config, "output": {"mode": "fixed", "text": "Write to jane.doe@example.com today"}})
        whole = oa.chat.completions.create(model="claude-haiku", messages=ask, tools=[SEND_TOOL], tool_choice=named)
        arguments = whole.choices[0].message.tool_calls[0].function.arguments
        assert "{EMAIL}" in json.loads(arguments)["note"] and "jane.doe" not in arguments, arguments

        streamed = ""
        for chunk in oa.chat.completions.create(model="claude-haiku", messages=ask, tools=[SEND_TOOL], tool_choice=named, stream=True):
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                streamed += call.function.arguments or ""
        assert json.loads(streamed) == json.loads(arguments)

        ac = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        tool = {"name": "send_note", "description": "Send a note", "input_schema": SEND_TOOL["function"]["parameters"]}
        with ac.messages.stream(model="claude-haiku", max_tokens=200, tools=[tool], tool_choice={"type": "tool", "name": "send_note"},
                                messages=[{"role": "user", "content": "Please use send_note."}]) as stream:
            final = stream.get_final_message()
        use = next(b for b in final.content if b.type == "tool_use")
        assert "{EMAIL}" in use.input["note"] and "jane.doe" not in json.dumps(use.input), use.input

        emulator.admin("/_emulator/config", "PUT", {**config, "output": {"mode": "fixed", "text": "key AKIAIOSFODNN7EXAMPLE"}})
        with pytest.raises(openai.UnprocessableEntityError) as e:
            oa.chat.completions.create(model="claude-haiku", messages=ask, tools=[SEND_TOOL], tool_choice=named)
        assert e.value.body["code"] == "guardrail_blocked" and "AWS_ACCESS_KEY" in e.value.body["message"]
    finally:
        emulator.admin("/_emulator/config", "PUT", config)


@pytest.fixture
def image_host():
    """A plain web server on loopback standing in for the images a team hosts: /img/ holds a PNG,
    a redirect back to it, a non-image and one over Bedrock's size; /private/ a PNG the pod does
    not allow. Yields its base URL and the paths it was asked for."""
    import http.server
    import threading

    from media import png

    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            if self.path == "/img/redirect.png":
                self.send_response(302)
                self.send_header("Location", "/img/cat.png")
                self.end_headers()
                return
            body, kind = {
                "/img/cat.png": (png(300, 250), "image/png"),
                "/img/page.html": (b"<html></html>", "text/html; charset=utf-8"),
                "/img/huge.png": (b"\x89PNG" + b"\0" * 3_800_000, "image/png"),
                "/private/cat.png": (png(300, 250), "image/png"),
            }.get(self.path, (None, None))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_image_urls_are_fetched_only_under_the_prefixes_the_pod_allows(emulator, image_host, tmp_path):
    """With AI_SIDECAR_IMAGE_URL_ALLOW (the image-url-allow annotation), an image URL under an
    allowed prefix is fetched and reaches Bedrock as an image (billed by its size), from the
    OpenAI and the Anthropic SDK; anything else is a 400 naming the URL and why, and fetches
    nothing outside the prefix: other paths, redirects (not followed), non-images, oversize bodies."""
    import anthropic

    host, asked = image_host
    proc, url, _ = start_sidecar(emulator.url, seed_manifests(), tmp_path,
                                 extra_env={"AI_SIDECAR_IMAGE_URL_ALLOW": f"{host}/img/"})
    try:
        oa = client(url)
        out = oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this?"},
            {"type": "image_url", "image_url": {"url": f"{host}/img/cat.png"}},
        ]}])
        # 300 × 250 / 750 = 100 tokens: the image itself reached Bedrock.
        assert out.usage.prompt_tokens == tokens("What is in this?") + framing(1, False) + 100
        ac = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        answer = ac.messages.create(model="claude-haiku", max_tokens=100, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": f"{host}/img/cat.png"}},
            {"type": "text", "text": "What is in this?"}]}])
        assert answer.usage.input_tokens == out.usage.prompt_tokens
        assert asked == ["/img/cat.png", "/img/cat.png"]

        for path, words in [
            ("/private/cat.png", "under none of the pod's allowed prefixes"),
            ("/img/../private/cat.png", ". or .. segments"),
            ("/img/redirect.png", "a redirect, which is not followed"),
            ("/img/page.html", "images must be image/png"),
            ("/img/huge.png", "over 3750000 bytes"),
            ("/img/missing.png", "404"),
        ]:
            with pytest.raises(openai.BadRequestError) as e:
                oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": host + path}}]}])
            assert words in e.value.body["message"], (path, e.value.body)
        assert "/private/cat.png" not in asked and asked.count("/img/cat.png") == 2, asked
    finally:
        proc.terminate()
        proc.wait(timeout=30)


OLDER_MODEL = """---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: claude-35-haiku
  namespace: ai-workloads
spec:
  modelId: anthropic.claude-3-5-haiku-20241022-v1:0
  region: us-east-1
  maxTokens: 1024
"""


@pytest.fixture
def two_models(emulator, tmp_path):
    """The seed's Claude Haiku 4.5 (Bedrock constrains its output to a schema) and Claude 3.5
    Haiku (it does not: the sidecar makes it call a tool shaped by the schema instead)."""
    proc, url, admin = start_sidecar(emulator.url, seed_manifests() + OLDER_MODEL, tmp_path)
    yield url, admin
    proc.terminate()
    proc.wait(timeout=30)


def test_structured_output_with_the_sdks_parse_helper(two_models):
    """`chat.completions.parse` with a pydantic model, whole and streamed, on both models: the
    answer validates against the schema (pydantic checks it) either way."""
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int
        capital: bool

    class Answer(BaseModel):
        city: City
        neighbours: list[str]

    url, _ = two_models
    oa = client(url)
    for model in ["claude-haiku", "claude-35-haiku"]:
        out = oa.chat.completions.parse(model=model, response_format=Answer,
                                        messages=[{"role": "user", "content": "Tell me about Lyon"}])
        assert out.choices[0].finish_reason == "stop", model
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, Answer) and isinstance(parsed.city.population, int), model
        assert not out.choices[0].message.tool_calls, model
        with oa.chat.completions.stream(model=model, response_format=Answer,
                                        messages=[{"role": "user", "content": "and Turin"}]) as stream:
            final = stream.get_final_completion()
        assert isinstance(final.choices[0].message.parsed, Answer), model
        assert final.choices[0].finish_reason == "stop", model


def test_json_object_and_strict_tools(two_models):
    url, _ = two_models
    oa = client(url)
    out = oa.chat.completions.create(model="claude-35-haiku", response_format={"type": "json_object"},
                                     messages=[{"role": "user", "content": "Some JSON please"}])
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    assert out.choices[0].finish_reason == "stop"

    from pydantic import BaseModel

    class GetWeather(BaseModel):
        city: str

    strict_tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    assert strict_tool["function"]["strict"] is True
    done = oa.chat.completions.create(model="claude-haiku", tools=[strict_tool],
                                      messages=[{"role": "user", "content": "get_weather in Bern"}])
    GetWeather.model_validate_json(done.choices[0].message.tool_calls[0].function.arguments)
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="claude-35-haiku", tools=[strict_tool],
                                   messages=[{"role": "user", "content": "get_weather in Bern"}])
    assert "tools[0].function.strict" in e.value.body["message"]


def test_langchain_with_structured_output(two_models):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Movie(BaseModel):
        title: str
        year: int

    url, _ = two_models
    for model in ["claude-haiku", "claude-35-haiku"]:
        chat = ChatOpenAI(model=model, base_url=f"{url}/v1", api_key="unused", max_retries=0)
        movie = chat.with_structured_output(Movie).invoke("A film about operators")
        assert isinstance(movie, Movie) and isinstance(movie.year, int), model


def test_images_and_pdfs_through_the_openai_sdk(sidecar, emulator):
    """Image parts (data URLs) and file parts (a PDF) reach Bedrock as image and document blocks
    and are billed as Bedrock bills them; a URL the pod would have to fetch is refused."""
    import base64

    from media import pdf, png

    url, _ = sidecar
    oa = client(url)
    image = base64.b64encode(png(300, 250)).decode()
    document = base64.b64encode(pdf(2)).decode()
    out = oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}", "detail": "high"}},
        {"type": "file", "file": {"filename": "q3 report.pdf", "file_data": f"data:application/pdf;base64,{document}"}},
    ]}])
    assert out.choices[0].message.content == "What is in these?"
    text_only = tokens("What is in these?") + framing(1, False)
    # The emulator bills 300 × 250 / 750 = 100 tokens for the image, 1,500 a PDF page and its name.
    assert out.usage.prompt_tokens == text_only + 100 + 2 * 1500 + tokens("q3 report")
    for part, words in [
        ({"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}, "only data: URLs"),
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}, "image/png"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "file_id is not supported"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "not supported"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": [part]}])
        assert words in e.value.body["message"], e.value.body
    calls = emulator.admin("/_emulator/requests?operation=Converse")
    assert len(calls) == 1, "nothing refused reached Bedrock"


EMBEDDING_MODELS = """---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: titan-embed
  namespace: ai-workloads
spec:
  modelId: amazon.titan-embed-text-v2:0
  region: us-east-1
---
apiVersion: ai.kernelpanic09.io/v1alpha1
kind: ModelEndpoint
metadata:
  name: cohere-embed
  namespace: ai-workloads
spec:
  modelId: cohere.embed-english-v3
  region: us-east-1
"""


@pytest.fixture
def embedders(emulator, tmp_path):
    proc, url, admin = start_sidecar(emulator.url, seed_manifests() + EMBEDDING_MODELS, tmp_path)
    yield url, admin
    proc.terminate()
    proc.wait(timeout=30)


def test_embeddings_through_the_openai_sdk_and_langchain(embedders, emulator):
    """The SDK asks for base64 vectors by default and decodes them; floats on request; batches
    across Titan (a call a text) and Cohere (96 a call); each priced per input token."""
    import math

    url, admin = embedders
    oa = client(url)
    texts = ["the first text", "a second one", "and a third"]
    titan = oa.embeddings.create(model="titan-embed", input=texts, dimensions=256)
    assert [d.index for d in titan.data] == [0, 1, 2]
    assert all(len(d.embedding) == 256 for d in titan.data)
    assert all(abs(math.fsum(x * x for x in d.embedding) - 1) < 1e-3 for d in titan.data)
    floats = oa.embeddings.create(model="titan-embed", input="the first text", dimensions=256, encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(titan.data[0].embedding, abs=1e-6)
    cohere = oa.embeddings.create(model="cohere-embed", input=texts)
    assert len(cohere.data) == 3 and len(cohere.data[0].embedding) == 1024

    calls = emulator.admin("/_emulator/requests?operation=InvokeModel")
    assert len(calls) == 3 + 1 + 1, "Titan: one call a text; Cohere: one for all"
    assert titan.usage.prompt_tokens == sum(c["inputTokens"] for c in calls[:3])
    assert cohere.usage.prompt_tokens == calls[4]["inputTokens"]
    counted = cost_counted(admin)
    titan_tokens = sum(c["inputTokens"] for c in calls[:4])
    # Titan V2 $0.02 and Cohere Embed 3 $0.10 per million input tokens.
    expected = (Decimal(titan_tokens) * Decimal("0.02") + Decimal(calls[4]["inputTokens"]) * Decimal("0.10")) / 10**6
    assert abs(counted - expected) < Decimal("1e-12"), (counted, expected)

    from langchain_openai import OpenAIEmbeddings
    # LangChain sends token ids unless told the model is not OpenAI's.
    lc = OpenAIEmbeddings(model="titan-embed", base_url=f"{url}/v1", api_key="unused", dimensions=512,
                          check_embedding_ctx_length=False)
    assert len(lc.embed_query("hello")) == 512
    assert len(lc.embed_documents(["a", "b"])) == 2


def test_embedding_endpoints_serve_only_embeddings(embedders):
    url, _ = embedders
    oa = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="titan-embed", messages=[{"role": "user", "content": "hi"}])
    assert "is an embedding model: call POST /v1/embeddings" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model="claude-haiku", input="hi")
    assert "is not an embedding model" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model="titan-embed", input="hi", dimensions=300)
    assert "[1024, 512, 256]" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model="titan-embed", input=[[1, 2, 3]])
    assert e.value.body["code"] == "unsupported_parameter"


def test_prompt_caching_through_the_openai_sdk_by_hand_and_automatically(emulator, sidecar, tmp_path):
    """`cache_control` on a system part (as LiteLLM takes it) is honoured; with
    AI_SIDECAR_PROMPT_CACHE=auto the sidecar caches the system prompt of an app that asked nothing."""
    long_system = "You answer questions about Kubernetes operators precisely. " * 400
    url, _ = sidecar
    marked = [{"role": "system", "content": [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}]},
              {"role": "user", "content": "What is a finalizer?"}]
    first = client(url).chat.completions.create(model="claude-haiku", messages=marked)
    second = client(url).chat.completions.create(model="claude-haiku", messages=marked)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens > 4096
    assert second.usage.prompt_tokens == first.usage.prompt_tokens

    plain = [{"role": "system", "content": long_system.replace("precisely", "briefly")},
             {"role": "user", "content": "What is a finalizer?"}]
    proc, auto_url, _ = start_sidecar(emulator.url, seed_manifests(), tmp_path,
                                      {"AI_SIDECAR_PROMPT_CACHE": "auto"})
    try:
        client(auto_url).chat.completions.create(model="claude-haiku", messages=plain)
        again = client(auto_url).chat.completions.create(model="claude-haiku", messages=plain)
        assert again.usage.prompt_tokens_details.cached_tokens > 4096
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # Without the setting, the same plain request has no cache point: nothing is read or written.
    untouched = client(url).chat.completions.create(model="claude-haiku", messages=plain)
    assert untouched.usage.prompt_tokens_details.cached_tokens == 0
    assert untouched.usage.model_extra["cache_creation_input_tokens"] == 0


def test_reasoning_effort_with_tools_round_trips_claudes_signed_thinking(sidecar, emulator):
    """reasoning_effort becomes Claude's thinking budget; the answer carries reasoning_content and
    the signed thinking_blocks, which the app's tool loop sends back as the SDK returned them (Bedrock
    refuses a tool loop whose last assistant turn lost its thinking). Reasoning tokens are billed
    as output, and charged as such."""
    url, _ = sidecar
    oa = client(url)
    messages = [{"role": "user", "content": "What is get_weather in Porto?"}]
    first = oa.chat.completions.create(model="claude-haiku", reasoning_effort="low", max_tokens=512,
                                       tools=[WEATHER_TOOL], messages=messages)
    message = first.choices[0].message
    assert message.model_extra["reasoning_content"].startswith("The user asks:")
    assert message.model_extra["thinking_blocks"][0]["signature"]
    assert first.choices[0].finish_reason == "tool_calls"
    messages += [message, {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Mild"}]
    second = oa.chat.completions.create(model="claude-haiku", reasoning_effort="low", max_tokens=512,
                                        tools=[WEATHER_TOOL], messages=messages)
    assert second.choices[0].message.content == "Mild"
    calls = emulator.admin("/_emulator/requests?operation=Converse")
    assert [c["outputTokens"] for c in calls] == [first.usage.completion_tokens, second.usage.completion_tokens]
    reasoning_tokens = (len(message.model_extra["reasoning_content"].encode()) + 3) // 4
    assert first.usage.completion_tokens >= reasoning_tokens

    stream = oa.chat.completions.create(model="claude-haiku", reasoning_effort="medium", stream=True,
                                        messages=[{"role": "user", "content": "think then answer"}])
    thought, said = "", ""
    for chunk in stream:
        if chunk.choices:
            thought += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            said += chunk.choices[0].delta.content or ""
    assert thought.startswith("The user asks: think then answer") and said == "think then answer"
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="claude-haiku", reasoning_effort="low", temperature=0.2,
                                   messages=[{"role": "user", "content": "x"}])
    assert "temperature" in e.value.body["message"]
