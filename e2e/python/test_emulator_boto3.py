"""The emulator driven by boto3, an AWS client written independently of the Rust SDK."""

import json
import time
import uuid

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

HAIKU = "anthropic.claude-haiku-4-5-20251001-v1:0"
HAIKU_US = f"us.{HAIKU}"  # Bedrock serves Haiku 4.5 only through inference profiles
KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NO_RETRIES = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"})


def client(service, emu, key=KEY, secret=SECRET, token=None, region="us-east-1"):
    return boto3.client(service, endpoint_url=emu.url, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret, aws_session_token=token, config=NO_RETRIES)


def tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def framing(messages: int, system: bool) -> int:
    """Input tokens Bedrock bills around the texts (role markers): the emulator's rule, 8 per
    request and 4 per message or system prompt (e2e/src/emulator/text.rs)."""
    return 8 + 4 * (messages + int(system))


def test_profile_only_models_refuse_their_bare_id_as_bedrock_does(emulator):
    rt = client("bedrock-runtime", emulator)
    with pytest.raises(ClientError) as e:
        rt.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["Error"]["Message"] == (
        f"Invocation of model ID {HAIKU} with on-demand throughput isn\u2019t supported. Retry your "
        "request with the ID or ARN of an inference profile that contains this model.")
    bedrock = client("bedrock", emulator)
    profile = bedrock.get_inference_profile(inferenceProfileIdentifier=HAIKU_US)
    assert profile["type"] == "SYSTEM_DEFINED" and profile["status"] == "ACTIVE"
    assert f"arn:aws:bedrock:us-west-2::foundation-model/{HAIKU}" in [m["modelArn"] for m in profile["models"]]
    ids = [p["inferenceProfileId"] for page in bedrock.get_paginator("list_inference_profiles").paginate(maxResults=5)
           for p in page["inferenceProfileSummaries"]]
    assert HAIKU_US in ids and f"global.{HAIKU}" in ids and len(ids) == len(set(ids))


def test_converse(emulator):
    rt = client("bedrock-runtime", emulator)
    out = rt.converse(modelId=HAIKU_US, system=[{"text": "Be brief."}],
                      messages=[{"role": "user", "content": [{"text": "Explain operators."}]}],
                      inferenceConfig={"maxTokens": 100, "temperature": 0.5, "topP": 0.9})
    assert out["output"]["message"]["content"][0]["text"] == "Explain operators."
    assert out["stopReason"] == "end_turn"
    assert out["usage"]["inputTokens"] == tokens("Be brief.") + tokens("Explain operators.") + framing(1, True)
    assert out["usage"]["totalTokens"] == out["usage"]["inputTokens"] + out["usage"]["outputTokens"]
    assert "latencyMs" in out["metrics"]


def test_converse_stream_event_stream_framing(emulator):
    rt = client("bedrock-runtime", emulator, region="eu-west-1")
    out = rt.converse_stream(modelId=f"eu.{HAIKU}", messages=[{"role": "user", "content": [{"text": "stream this answer"}]}])
    kinds, text, usage, stop = [], "", None, None
    for event in out["stream"]:
        kind = next(iter(event))
        kinds.append(kind)
        if kind == "contentBlockDelta":
            text += event[kind]["delta"]["text"]
        elif kind == "messageStop":
            stop = event[kind]["stopReason"]
        elif kind == "metadata":
            usage = event[kind]["usage"]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert text == "stream this answer" and stop == "end_turn"
    assert usage["outputTokens"] == tokens(text)


TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                                      "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}},
                                                               "required": ["city"]}}}}]}


def test_converse_tool_use_as_boto3_reads_it(emulator):
    """Tool use in both shapes boto3 parses (Converse's blocks, ConverseStream's contentBlockStart
    and toolUse deltas), and a tool history Bedrock would refuse."""
    rt = client("bedrock-runtime", emulator)
    question = {"role": "user", "content": [{"text": "get_weather in Rome?"}]}
    out = rt.converse(modelId=HAIKU_US, messages=[question], toolConfig=TOOL_CONFIG)
    assert out["stopReason"] == "tool_use"
    use = out["output"]["message"]["content"][1]["toolUse"]
    assert use["name"] == "get_weather" and isinstance(use["input"]["city"], str)
    assert use["toolUseId"].startswith("tooluse_")
    # The tool-use system prompt and the definitions are billed: more than the texts alone.
    assert out["usage"]["inputTokens"] > 346 + tokens("get_weather in Rome?")

    events = list(rt.converse_stream(modelId=HAIKU_US, messages=[question], toolConfig=TOOL_CONFIG)["stream"])
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert starts[0]["start"]["toolUse"]["name"] == "get_weather"
    arguments = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert isinstance(json.loads(arguments)["city"], str)
    assert [e["messageStop"]["stopReason"] for e in events if "messageStop" in e] == ["tool_use"]

    answer = {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "Hot"}]}}]}
    done = rt.converse(modelId=HAIKU_US, messages=[question, out["output"]["message"], answer], toolConfig=TOOL_CONFIG)
    assert done["output"]["message"]["content"][0]["text"] == "Hot"
    for messages, config, message in [
        ([question, out["output"]["message"], answer], None, "toolConfig field must be defined"),
        ([question, out["output"]["message"], question], TOOL_CONFIG, "Expected toolResult blocks at messages.2.content"),
        ([question, question], TOOL_CONFIG, "must alternate between user and assistant"),
    ]:
        with pytest.raises(ClientError) as e:
            rt.converse(modelId=HAIKU_US, messages=messages, **({"toolConfig": config} if config else {}))
        assert e.value.response["Error"]["Code"] == "ValidationException"
        assert message in e.value.response["Error"]["Message"]


def test_invoke_model_anthropic_body(emulator):
    rt = client("bedrock-runtime", emulator)
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": [{"role": "user", "content": "hello boto3"}]}
    out = rt.invoke_model(modelId=HAIKU_US, body=json.dumps(body), contentType="application/json")
    answer = json.loads(out["body"].read())
    assert answer["content"][0]["text"] == "hello boto3"
    assert out["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"] == str(tokens("hello boto3"))


@pytest.mark.parametrize("faults,code,status", [
    ({"throttleEveryN": 1}, "ThrottlingException", 429),
    ({"errorEveryN": 1}, "InternalServerException", 500),
    ({"errorEveryN": 1, "errorStatus": 503}, "ServiceUnavailableException", 503),
    ({"errorEveryN": 1, "errorStatus": 408}, "ModelTimeoutException", 408),
])
def test_injected_errors(emulator, faults, code, status):
    config = emulator.admin("/_emulator/config")
    config["faults"] = faults
    emulator.admin("/_emulator/config", "PUT", config)
    rt = client("bedrock-runtime", emulator)
    with pytest.raises(ClientError) as err:
        rt.converse(modelId=HAIKU_US, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_validation_and_signature_errors(emulator):
    rt = client("bedrock-runtime", emulator)
    with pytest.raises(ClientError) as err:
        rt.converse(modelId="nope.model-v1:0", messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert err.value.response["Error"]["Code"] == "ValidationException"
    bad = client("bedrock-runtime", emulator, secret="wrong")
    with pytest.raises(ClientError) as err:
        bad.converse(modelId=HAIKU_US, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"
    records = emulator.admin("/_emulator/requests?operation=Converse")
    assert [r.get("error") for r in records] == ["ValidationException", "InvalidSignatureException"]
    emulator.admin("/_emulator/reset", "POST")
    assert emulator.admin("/_emulator/requests") == []


def test_guardrails_and_models(emulator):
    bedrock = client("bedrock", emulator)
    created = bedrock.create_guardrail(
        name="boto3-policy", blockedInputMessaging="Blocked.", blockedOutputsMessaging="Blocked out.",
        sensitiveInformationPolicyConfig={"piiEntitiesConfig": [{"type": "EMAIL", "action": "ANONYMIZE"},
                                                                {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"}]},
        clientRequestToken=str(uuid.uuid4()))
    gid = created["guardrailId"]
    assert created["version"] == "DRAFT"
    status = [bedrock.get_guardrail(guardrailIdentifier=gid)["status"] for _ in range(2)]
    assert status == ["CREATING", "READY"]
    assert bedrock.create_guardrail_version(guardrailIdentifier=gid)["version"] == "1"
    assert [g["version"] for g in bedrock.list_guardrails(guardrailIdentifier=gid)["guardrails"]] == ["DRAFT", "1"]

    rt = client("bedrock-runtime", emulator)
    out = rt.apply_guardrail(guardrailIdentifier=gid, guardrailVersion="1", source="INPUT",
                             content=[{"text": {"text": "SSN 123-45-6789"}}])
    assert out["action"] == "GUARDRAIL_INTERVENED" and out["outputs"][0]["text"] == "Blocked."
    conv = rt.converse(modelId=HAIKU_US, messages=[{"role": "user", "content": [{"text": "mail a@b.co"}]}],
                       guardrailConfig={"guardrailIdentifier": gid, "guardrailVersion": "1", "trace": "enabled"})
    assert conv["output"]["message"]["content"][0]["text"] == "mail {EMAIL}"
    assert conv["stopReason"] == "guardrail_intervened"
    bedrock.delete_guardrail(guardrailIdentifier=gid)
    with pytest.raises(ClientError) as err:
        bedrock.get_guardrail(guardrailIdentifier=gid)
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"

    assert bedrock.get_foundation_model(modelIdentifier=HAIKU)["modelDetails"]["modelId"] == HAIKU
    ids = [m["modelId"] for m in bedrock.list_foundation_models(byProvider="Anthropic")["modelSummaries"]]
    assert HAIKU in ids and all(i.startswith("anthropic.") for i in ids)


def test_sts_assume_role_and_identity(emulator):
    sts = client("sts", emulator)
    assert sts.get_caller_identity()["Arn"] == "arn:aws:iam::123456789012:user/emulator-admin"
    creds = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/bedrock-invoker", RoleSessionName="py")["Credentials"]
    as_role = client("sts", emulator, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    assert as_role.get_caller_identity()["Arn"] == "arn:aws:sts::123456789012:assumed-role/bedrock-invoker/py"


def test_sts_faults(start):
    emu = start("faults: {stsUnavailable: true}\n")
    with pytest.raises(ClientError) as err:
        client("sts", emu).get_caller_identity()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    slow = start("faults: {stsDelayMs: 300}\n")
    began = time.monotonic()
    client("sts", slow).get_caller_identity()
    assert time.monotonic() - began >= 0.3


def test_assume_role_with_web_identity_real_cluster_token(cluster, start):
    ns = f"boto3-{uuid.uuid4().hex[:8]}"
    kubectl = cluster["kubectl"]
    kubectl("create", "namespace", ns)
    kubectl("create", "serviceaccount", "app", "-n", ns)
    role = "arn:aws:iam::123456789012:role/py-app"
    emu = start(f"""
oidc: {{issuer: "{cluster['issuer']}", caFile: "{cluster['caFile']}"}}
roles:
- arn: {role}
  trustedSubjects: ["system:serviceaccount:{ns}:app"]
credentialLifetimeSeconds: 900
""")
    sts = boto3.client("sts", endpoint_url=emu.url, region_name="us-east-1", config=botocore.config.Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
    token = kubectl("create", "token", "app", "-n", ns, "--audience", "sts.amazonaws.com").strip()
    out = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="pod", WebIdentityToken=token)
    assert out["SubjectFromWebIdentityToken"] == f"system:serviceaccount:{ns}:app"
    creds = out["Credentials"]
    rt = client("bedrock-runtime", emu, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    assert rt.converse(modelId=HAIKU_US, messages=[{"role": "user", "content": [{"text": "hi"}]}])["stopReason"] == "end_turn"
    wrong_audience = kubectl("create", "token", "app", "-n", ns).strip()
    with pytest.raises(ClientError) as err:
        sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="pod", WebIdentityToken=wrong_audience)
    assert err.value.response["Error"]["Code"] == "InvalidIdentityToken"
