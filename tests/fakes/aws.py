"""AWS plumbing for the AWS fakes (``bedrock.py``): the Coral JSON error answer and SigV4
verification with botocore's own canonicalisation.

Verification rebuilds an ``AWSRequest`` from the received method, the raw path
(percent-encoding kept), the headers named in ``SignedHeaders`` and the body, sets the
context timestamp from ``X-Amz-Date``, recomputes the signature with ``SigV4Auth`` and
compares with ``hmac.compare_digest`` (reference translation.md §10, §12.2). The 403 codes
are the ones AWS answers (reference §9): ``UnrecognizedClientException`` (unknown key id or
session token), ``ExpiredTokenException``, ``InvalidSignatureException`` (mismatch, wrong
service scope, clock skew over 5 minutes), ``IncompleteSignatureException``,
``MissingAuthenticationTokenException``.

Sources: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html,
https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from calendar import timegm
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

BEDROCK_NS = "http://internal.amazon.com/coral/com.amazon.bedrock/"
CORAL_NS = "http://internal.amazon.com/coral/com.amazon.coral.service/"
MAX_SKEW_S = 300  # X-Amz-Date must be within 5 minutes of the server's clock
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})"
)


def request_id() -> dict[str, str]:
    """A fresh ``x-amzn-RequestId`` header."""
    return {"x-amzn-RequestId": str(uuid.uuid4())}


class AwsError(Exception):
    """An error answered as AWS JSON services do: ``x-amzn-ErrorType: <Code>:<namespace>``
    and ``{"message": ...}`` (botocore takes the code from the header); ``retry-after: 1``
    on 429."""

    def __init__(self, status: int, code: str, message: str, namespace: str = BEDROCK_NS):
        super().__init__(message)
        self.status, self.code, self.message, self.namespace = status, code, message, namespace

    def response(self) -> web.Response:
        headers = {"x-amzn-ErrorType": f"{self.code}:{self.namespace}", **request_id()}
        if self.status == 429:
            headers["retry-after"] = "1"
        return web.json_response({"message": self.message}, status=self.status, headers=headers)


def _denied(code: str, message: str) -> AwsError:
    return AwsError(403, code, message, CORAL_NS)


@dataclass(frozen=True)
class Known:
    """Credentials a fake accepts: the secret, the session token it requires (None: the
    request must carry none), and when they expire (epoch seconds; None: never)."""

    secret: str
    token: str | None
    expires_at: float | None = None


def verify_sigv4(
    request: web.Request, raw: bytes, known: Mapping[str, Known], *, service: str
) -> tuple[str, str]:
    """Check ``request`` (with body ``raw``) was signed for ``service`` with ``known``
    credentials; return the (region, service) of its credential scope.

    Raises:
        AwsError: 403 with the code AWS gives for the problem.
    """
    authorization = request.headers.get("Authorization")
    if authorization is None:
        raise _denied("MissingAuthenticationTokenException", "Missing Authentication Token")
    if (match := _AUTHORIZATION.fullmatch(authorization)) is None:
        raise _denied("IncompleteSignatureException", "Authorization header is malformed")
    access_key_id, _, region, scope_service, signed_headers, signature = match.groups()
    credentials = known.get(access_key_id)
    if credentials is None or request.headers.get("X-Amz-Security-Token") != credentials.token:
        raise _denied(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if credentials.expires_at is not None and time.time() >= credentials.expires_at:
        raise _denied(
            "ExpiredTokenException", "The security token included in the request is expired"
        )
    if scope_service != service:
        raise _denied(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'.",
        )
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        signed_at = timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise _denied("IncompleteSignatureException", "X-Amz-Date is missing") from None
    if abs(time.time() - signed_at) > MAX_SKEW_S:
        raise _denied("InvalidSignatureException", f"Signature expired: {amz_date}")
    headers = {
        name: ",".join(request.headers.getall(name, [])) for name in signed_headers.split(";")
    }
    url = f"http://{request.host}{request.raw_path}"
    rebuilt = AWSRequest(method=request.method, url=url, data=raw, headers=headers)
    rebuilt.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(access_key_id, credentials.secret, credentials.token), service, region
    )
    canonical = signer.canonical_request(rebuilt)
    expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    if not hmac.compare_digest(expected, signature):
        # As AWS words it: the canonical request and the string to sign follow, with every
        # signed header's value (x-amz-security-token among them).
        raise _denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.\n\n"
            f"The Canonical String for this request should have been\n'{canonical}'\n\n"
            "The String-to-Sign should have been\n"
            f"'{signer.string_to_sign(rebuilt, canonical)}'\n",
        )
    return region, scope_service
