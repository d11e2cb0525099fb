"""Writes a wrk Lua script that sends one SigV4-signed Converse request (signed by botocore).

A signature stays valid for the emulator's clock-skew window (5 minutes), longer than a run.
Usage: sign_converse.py URL MODEL_ID OUT.lua
"""

import json
import sys
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

url, model, out = sys.argv[1:4]
path = f"/model/{urllib.parse.quote(model, safe='')}/converse"
body = json.dumps({
    "messages": [{"role": "user", "content": [{"text": "Explain Kubernetes operators in two sentences."}]}],
    "inferenceConfig": {"maxTokens": 256},
})
request = AWSRequest(method="POST", url=url + path, data=body, headers={"Content-Type": "application/json"})
SigV4Auth(Credentials(KEY, SECRET), "bedrock", "us-east-1").add_auth(request)
headers = "\n".join(f'wrk.headers["{k}"] = {json.dumps(v)}' for k, v in request.headers.items())
with open(out, "w") as f:
    f.write(f'wrk.method = "POST"\nwrk.path = {json.dumps(path)}\nwrk.body = {json.dumps(body)}\n{headers}\n')
