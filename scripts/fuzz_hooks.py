"""Schemathesis hooks for `scripts/fuzz-api.sh` (loaded through SCHEMATHESIS_HOOKS).

Two things a generated request cannot get right by itself, set here before each call:

- `Idempotency-Key`: a key belongs to its caller and route, and the same key with another
  request is a `422` by design (README, "Idempotency-Key"). Generated positive cases would reuse
  the few values the generator draws ("0", "A") for different bodies, so each positive case
  gets a key of its own; negative cases keep the generated (invalid) header.
- The trader's account: the token holds `acc-fuzz` (and schemathesis.toml puts it in paths), so
  positive orders are placed for it; another account is a 403 by design.
- `POST /agents/match` is an `AWS_IAM` route: API Gateway admits only requests signed with
  SigV4. Its cases are signed with the credentials `make dev` gives the functions (AWS_ACCESS_KEY_ID
  / AWS_SECRET_ACCESS_KEY, default test/test), as the conversations worker signs them.
"""

import os
import uuid

import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests.auth import AuthBase

SIGNED_OPERATIONS = {"matchAgent"}


class SigV4(AuthBase):
    """Signs a prepared request for API Gateway (`execute-api`), as botocore does."""

    def __call__(self, request):
        credentials = Credentials(
            os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        )
        region = os.environ.get("AWS_REGION", "us-east-1")
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("authorization", "connection")
        }
        aws = AWSRequest(method=request.method, url=request.url, data=request.body or b"", headers=headers)
        SigV4Auth(credentials, "execute-api", region).add_auth(aws)
        request.headers.pop("Authorization", None)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]
        return request


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    if positive and isinstance(case.body, dict) and "accountId" in case.body:
        case.body["accountId"] = "acc-fuzz"
    if case.operation.definition.raw.get("operationId") in SIGNED_OPERATIONS:
        kwargs["auth"] = SigV4()
