"""The benchmarks' requests, defined once so every system gets the same prompt, and the clients that
time what wrk cannot.

  clients.py lua TARGET BASE_URL OUT.lua
      writes a wrk script sending TARGET's request (SigV4-signed by botocore where the target is
      Bedrock itself; a signature stays valid for the emulator's 5-minute clock-skew window)
  clients.py oha TARGET BASE_URL OUT.args OUT.body
      the same request for oha (the open-loop load generator): its body to OUT.body, and to OUT.args
      oha's arguments sending it, one a line, then the request's path (the caller puts a base URL in
      front: nginx passes the emulator's signed request on from another port)
  clients.py coldstart TARGET BASE_URL RUNS LOG -- COMMAND...
      RUNS times: starts COMMAND (output to LOG), sends TARGET's request until one is answered 2xx,
      prints the milliseconds from the start to that answer, stops COMMAND
  clients.py ttft TARGET BASE_URL SAMPLES TOKENS
      SAMPLES streamed requests, one at a time, each on a new connection; checks each answer has
      TOKENS tokens of the emulator's filler ("tok "); prints "ttft_ms total_ms" a line: request
      sent to first text received, and to the end of the stream

TARGETs: direct (the emulator's Converse / ConverseStream), sidecar-invoke, sidecar-openai,
litellm-openai, litellm-bedrock (LiteLLM's Bedrock pass-through, the same Converse body).
"""

import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY, SECRET, REGION = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1"
MODEL_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"  # profile-only on Bedrock
# The sidecar's ModelEndpoint (manifests/samples) and LiteLLM's model_name for the OpenAI route.
ENDPOINT = "claude-haiku"
# LiteLLM's model_name for its Bedrock pass-through (see compare.sh for why it is a second one).
PASSTHROUGH_MODEL = "claude-haiku-passthrough"
PROMPT = "Explain Kubernetes operators in two sentences."
MAX_TOKENS = 256


def converse_body():
    return {"messages": [{"role": "user", "content": [{"text": PROMPT}]}], "inferenceConfig": {"maxTokens": MAX_TOKENS}}


def openai_body(stream):
    body = {"model": ENDPOINT, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    return body | ({"stream": True} if stream else {})


def request(target, stream):
    """(path, body, signed, stream format) of TARGET's request."""
    if target == "direct":
        action = "converse-stream" if stream else "converse"
        return f"/model/{urllib.parse.quote(MODEL_ID, safe='')}/{action}", converse_body(), True, "eventstream"
    if target == "litellm-bedrock":
        action = "converse-stream" if stream else "converse"
        return f"/bedrock/model/{PASSTHROUGH_MODEL}/{action}", converse_body(), False, "eventstream"
    if target == "sidecar-invoke":
        body = {"messages": [{"role": "user", "content": PROMPT}], "maxTokens": MAX_TOKENS}
        return f"/invoke/ai-workloads/{ENDPOINT}", body | ({"stream": True} if stream else {}), False, "sse-invoke"
    if target in ("sidecar-openai", "litellm-openai"):
        return "/v1/chat/completions", openai_body(stream), False, "sse-openai"
    sys.exit(f"unknown target {target}")


def prepared(target, base, stream=False):
    """(url, path, body bytes, headers), signed afresh when the target is Bedrock itself."""
    path, body, signed, fmt = request(target, stream)
    data = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if signed:
        aws = AWSRequest(method="POST", url=base + path, data=data, headers=headers)
        SigV4Auth(Credentials(KEY, SECRET), "bedrock", REGION).add_auth(aws)
        headers = dict(aws.headers.items())
    return urllib.parse.urlsplit(base), path, data.encode(), headers, fmt


def write_lua(target, base, out):
    _, path, body, headers, _ = prepared(target, base)
    lines = ['wrk.method = "POST"', f"wrk.path = {json.dumps(path)}", f"wrk.body = {json.dumps(body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_oha(target, base, out_args, out_body):
    _, path, body, headers, _ = prepared(target, base)
    with open(out_body, "wb") as f:
        f.write(body)
    args = ["-m", "POST", "-D", out_body]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    with open(out_args, "w") as f:
        f.write("\n".join(args + [path]) + "\n")


def post(url, path, body, headers, timeout):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    conn.request("POST", path, body, headers)
    return conn, conn.getresponse()


def coldstart(target, base, runs, log, command):
    url, path, body, headers, _ = prepared(target, base)
    for _ in range(runs):
        with open(log, "ab") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    sys.exit(f"{command[0]} exited with {proc.returncode} before answering; see {log}")
                if time.perf_counter() - start > 180:
                    sys.exit(f"{command[0]} did not answer within 180 s; see {log}")
                try:
                    conn, resp = post(url, path, body, headers, timeout=30)
                    resp.read()
                    conn.close()
                    if 200 <= resp.status < 300:
                        break
                except OSError:
                    pass
                time.sleep(0.001)
            print(f"{(time.perf_counter() - start) * 1000:.1f}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def eventstream_texts(buf):
    """Complete AWS event-stream messages at the start of BUF: (texts of contentBlockDeltas, rest)."""
    texts = []
    while len(buf) >= 12:
        total, headers_len = int.from_bytes(buf[0:4], "big"), int.from_bytes(buf[4:8], "big")
        if len(buf) < total:
            break
        headers, payload, buf = buf[12 : 12 + headers_len], buf[12 + headers_len : total - 4], buf[total:]
        fields, i = {}, 0
        while i < len(headers):
            name_len = headers[i]
            name, kind, i = headers[i + 1 : i + 1 + name_len].decode(), headers[i + 1 + name_len], i + 2 + name_len
            if kind in (6, 7):  # bytes, string: 2-byte length
                size = int.from_bytes(headers[i : i + 2], "big")
                fields[name], i = headers[i + 2 : i + 2 + size].decode(errors="replace"), i + 2 + size
            else:  # fixed sizes of the other value types
                i += {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}[kind]
        if fields.get(":message-type") != "event":
            sys.exit(f"stream error: {fields} {payload[:300]!r}")
        if fields.get(":event-type") == "contentBlockDelta":
            texts.append(json.loads(payload)["delta"].get("text", ""))
    return texts, buf


def sse_texts(buf, fmt):
    """Complete Server-Sent Events at the start of BUF: (their texts, rest)."""
    texts = []
    buf = buf.replace(b"\r\n", b"\n")
    while b"\n\n" in buf:
        event, buf = buf.split(b"\n\n", 1)
        name, data = "message", []
        for line in event.decode().split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        payload = "\n".join(data)
        if name == "error" or '"error"' in payload[:20]:
            sys.exit(f"stream error: {payload[:300]}")
        if fmt == "sse-invoke" and name == "delta":
            texts.append(json.loads(payload)["text"])
        elif fmt == "sse-openai" and payload and payload != "[DONE]":
            for choice in json.loads(payload).get("choices", []):
                texts.append((choice.get("delta") or {}).get("content") or "")
    return texts, buf


def ttft(target, base, samples, tokens):
    for _ in range(samples):
        url, path, body, headers, fmt = prepared(target, base, stream=True)
        buf, text, first = b"", "", None
        start = time.perf_counter()
        conn, resp = post(url, path, body, headers, timeout=60)
        if resp.status != 200:
            sys.exit(f"{target}: HTTP {resp.status}: {resp.read()[:300]!r}")
        while chunk := resp.read1(65536):
            buf += chunk
            texts, buf = eventstream_texts(buf) if fmt == "eventstream" else sse_texts(buf, fmt)
            if first is None and any(texts):
                first = time.perf_counter()
            text += "".join(texts)
        end = time.perf_counter()
        conn.close()
        if text.split() != ["tok"] * tokens:
            sys.exit(f"{target}: expected {tokens} filler tokens, got {text[:200]!r}")
        print(f"{(first - start) * 1000:.3f} {(end - start) * 1000:.3f}", flush=True)


def main(argv):
    if len(argv) == 4 and argv[0] == "lua":
        write_lua(*argv[1:])
    elif len(argv) == 5 and argv[0] == "oha":
        write_oha(*argv[1:])
    elif len(argv) >= 7 and argv[0] == "coldstart" and argv[5] == "--":
        coldstart(argv[1], argv[2], int(argv[3]), argv[4], argv[6:])
    elif len(argv) == 5 and argv[0] == "ttft":
        ttft(argv[1], argv[2], int(argv[3]), int(argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
