"""A loopback fake of AWS STS ``AssumeRoleWithWebIdentity``, the call IRSA makes.

botocore's credential chain makes it when ``AWS_ROLE_ARN`` and
``AWS_WEB_IDENTITY_TOKEN_FILE`` are set; ``AWS_ENDPOINT_URL_STS=sts.url`` points it here
(reference translation.md §10). The request is an unsigned form-encoded POST
(``Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=...&RoleSessionName=...
&WebIdentityToken=...``); the answer is the query-protocol XML botocore parses, with
credentials that expire after ``duration_s``. Short durations (under botocore's 10-minute
mandatory refresh window) make every ``get_frozen_credentials()`` call STS again.

Sources: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html,
https://docs.aws.amazon.com/eks/latest/userguide/iam-roles-for-service-accounts.html.

    async with FakeBedrock() as bedrock, FakeSTS(duration_s=60, on_issue=bedrock.allow) as sts:
        ...  # credentials from the chain sign requests that bedrock accepts
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from xml.sax.saxutils import escape

from aiohttp import web

from tests.fakes.scenarios import FakeServer, Seen

# on_issue(access_key_id, secret, session_token, expires_at=<epoch seconds>)
OnIssue = Callable[..., None]

_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


class FakeSTS(FakeServer):
    """Fake STS. ``duration_s``: lifetime of each issued credential; ``token``: the only
    web identity token accepted (any non-empty one if None); ``on_issue``: called with each
    credential triple it issues (and ``expires_at=``), e.g. ``FakeBedrock.allow``.

    Attributes: ``url``, ``requests`` (``Seen`` records; ``body`` holds the form fields),
    ``calls`` (how many calls were answered with credentials)."""

    def __init__(
        self,
        *,
        duration_s: float = 3600.0,
        token: str | None = None,
        on_issue: OnIssue | None = None,
    ) -> None:
        super().__init__()
        self.duration_s = duration_s
        self.token = token
        self.on_issue = on_issue
        self.calls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._call)
        return app

    async def _call(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(Seen(request.raw_path, headers, dict(form)))
        if form.get("Action") != "AssumeRoleWithWebIdentity":
            return _error(400, "InvalidAction", f"Could not find operation {form.get('Action')}")
        for name in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not form.get(name):
                return _error(400, "ValidationError", f"{name} must not be empty")
        if self.token is not None and form["WebIdentityToken"] != self.token:
            return _error(400, "InvalidIdentityToken", "Couldn't verify the web identity token")
        self.calls += 1
        access_key_id = "ASIAFAKE" + secrets.token_hex(6).upper()
        secret = secrets.token_urlsafe(30)
        session_token = "FwoGZXIvYXdzEFake" + secrets.token_urlsafe(48)
        expires_at = time.time() + self.duration_s
        if self.on_issue is not None:
            self.on_issue(access_key_id, secret, session_token, expires_at=expires_at)
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
        role_arn, session = escape(form["RoleArn"]), escape(form["RoleSessionName"])
        role_name = role_arn.rsplit("/", 1)[-1]
        body = f"""<AssumeRoleWithWebIdentityResponse xmlns="{_NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:rolegate</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/{role_name}/{session}</Arn>
      <AssumedRoleId>AROAFAKEROLEID:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{session_token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{access_key_id}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.us-east-1.amazonaws.com/id/FAKE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{uuid.uuid4()}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""
        return web.Response(text=body, content_type="text/xml")


def _error(status: int, code: str, message: str) -> web.Response:
    body = f"""<ErrorResponse xmlns="{_NS}">
  <Error>
    <Type>Sender</Type>
    <Code>{code}</Code>
    <Message>{escape(message)}</Message>
  </Error>
  <RequestId>{uuid.uuid4()}</RequestId>
</ErrorResponse>
"""
    return web.Response(text=body, status=status, content_type="text/xml")
