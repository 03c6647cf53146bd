"""SigV4Auth without a network: what it signs, the headers it returns, its config errors,
and the default chain's errors (reference translation.md §10)."""

from __future__ import annotations

import asyncio
import datetime
import hmac
import os
import re
import threading
import time
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.compat
import botocore.credentials
import pytest
from pydantic import SecretStr
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.api import Binding
from rolegate_gateway.auth import signing, sigv4
from rolegate_gateway.auth.signing import Signer
from rolegate_gateway.config import Credentials, Upstream
from rolegate_gateway.translators.base import UpstreamRequest
from tests.fixtures.aws import fresh_chain

__all__ = ["fresh_chain"]  # a fixture, imported by name

pytestmark = pytest.mark.usefixtures("fresh_chain")

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken"
ARN_PATH = (
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
    "application-inference-profile%2Fabc123/converse"
)
URL_ = URL(f"https://bedrock-runtime.us-east-1.amazonaws.com{ARN_PATH}", encoded=True)
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment where botocore's chain finds nothing, offline."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def upstream(*, region: str | None = "us-east-1", **credentials: str) -> Upstream:
    return Upstream(
        binding=Binding.BEDROCK,
        model="m",
        base_url="https://bedrock-runtime.us-east-1.amazonaws.com",
        timeout_s=30,
        bedrock_region=region,
        credentials=Credentials(**{k: SecretStr(v) for k, v in credentials.items()}),
    )


def request(url: URL = URL_) -> UpstreamRequest:
    return UpstreamRequest(url, {"Content-Type": "application/json"}, BODY)


def verify(url: str, headers: dict[str, str], body: bytes, secret: str) -> tuple[str, str]:
    """What the service does (and tests/fakes/bedrock.py): rebuild the request from the
    signed headers, re-sign it with botocore at the sender's X-Amz-Date, compare; returns
    (region, service). Raises AssertionError on a mismatch."""
    match = _AUTHORIZATION.fullmatch(headers["Authorization"])
    assert match is not None, headers["Authorization"]
    akid, _, region, service, signed, signature = match.groups()
    lower = {k.lower(): v for k, v in headers.items()}
    lower.setdefault("host", URL(url, encoded=True).raw_authority)
    rebuilt = botocore.awsrequest.AWSRequest(
        method="POST", url=url, data=body, headers={n: lower[n] for n in signed.split(";")}
    )
    rebuilt.context["timestamp"] = lower["x-amz-date"]
    creds = botocore.credentials.Credentials(akid, secret, lower.get("x-amz-security-token"))
    signer = botocore.auth.SigV4Auth(creds, service, region)
    canonical = signer.canonical_request(rebuilt)
    expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    assert hmac.compare_digest(expected, signature), "signature mismatch"
    return region, service


async def test_arn_url_signature_verifies_with_botocore() -> None:
    auth = sigv4.sigv4_auth(upstream(aws_access_key_id=AKID, aws_secret_access_key=SECRET))
    headers = await auth.headers(request())
    assert verify(str(URL_), headers, BODY, SECRET) == ("us-east-1", "bedrock")
    with pytest.raises(AssertionError, match="mismatch"):
        verify(str(URL_), headers, BODY, SECRET + "x")
    decoded = str(URL_).replace("%3A", ":")  # the path yarl sends from a plain str
    with pytest.raises(AssertionError, match="mismatch"):
        verify(decoded, headers, BODY, SECRET)
    with pytest.raises(AssertionError, match="mismatch"):
        verify(str(URL_), headers, BODY + b" ", SECRET)


async def test_signed_headers_with_and_without_a_session_token() -> None:
    plain = sigv4.sigv4_auth(upstream(aws_access_key_id=AKID, aws_secret_access_key=SECRET))
    headers = await plain.headers(request())
    assert set(headers) == {"Content-Type", "X-Amz-Date", "Authorization"}
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["Authorization"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["X-Amz-Date"])

    session = sigv4.sigv4_auth(
        upstream(aws_access_key_id=AKID, aws_secret_access_key=SECRET, aws_session_token=TOKEN)
    )
    headers = await session.headers(request())
    assert set(headers) == {"Content-Type", "X-Amz-Date", "X-Amz-Security-Token", "Authorization"}
    assert headers["X-Amz-Security-Token"] == TOKEN
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"
        in (headers["Authorization"])
    )
    assert f"Credential={AKID}/" in headers["Authorization"]
    assert SECRET not in "".join(headers.values())
    verify(str(URL_), headers, BODY, SECRET)


async def test_every_call_is_signed_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)]
    monkeypatch.setattr(botocore.compat, "get_current_datetime", lambda: now[0])
    auth = sigv4.sigv4_auth(upstream(aws_access_key_id=AKID, aws_secret_access_key=SECRET))
    first = await auth.headers(request())
    now[0] += datetime.timedelta(seconds=1)
    second = await auth.headers(request())
    assert first["X-Amz-Date"] == "20261201T120000Z"
    assert second["X-Amz-Date"] == "20261201T120001Z"
    assert first["Authorization"] != second["Authorization"]
    verify(str(URL_), second, BODY, SECRET)


def test_role_without_region_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match=r"bedrock\.region"):
        sigv4.sigv4_auth(
            upstream(region=None, aws_access_key_id=AKID, aws_secret_access_key=SECRET)
        )
    with pytest.raises(errors.ConfigError, match="awsSecretAccessKey"):
        sigv4.sigv4_auth(upstream(aws_access_key_id=AKID))


async def test_no_credentials_anywhere_is_upstream_unavailable(
    no_aws_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_aws_env.setenv("AWS_SESSION_TOKEN", TOKEN)  # a token alone is no credentials
    auth = sigv4.sigv4_auth(upstream(), role="claude")
    with pytest.raises(errors.UpstreamUnavailable) as raised:
        await auth.headers(request())
    message = raised.value.message
    assert message.startswith("role 'claude' (binding bedrock) has no credentials: ")
    assert "spec.credentials.secretRef" in message
    assert "awsAccessKeyId" in message
    assert "IRSA" in message
    assert raised.value.status == 502
    assert TOKEN not in message
    assert TOKEN not in caplog.text
    assert "claude" in caplog.text  # the operator's log says it too


async def test_a_failing_chain_names_the_failure_not_the_values(
    no_aws_env: pytest.MonkeyPatch,
) -> None:
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", AKID)  # a key id without its secret
    no_aws_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    auth = sigv4.sigv4_auth(upstream(), role="claude")
    with pytest.raises(errors.UpstreamUnavailable) as raised:
        await auth.headers(request())
    message = raised.value.message
    assert message == (
        "role 'claude' (binding bedrock) could not get AWS credentials: PartialCredentialsError"
    )
    assert AKID not in message
    assert TOKEN not in message


class _Session:
    """A botocore session stand-in: counts resolutions and where they ran."""

    def __init__(self, credentials: Any, delay_s: float = 0.0) -> None:
        self.credentials = credentials
        self.delay_s = delay_s
        self.calls = 0
        self.threads: list[threading.Thread] = []

    def get_credentials(self) -> Any:
        self.calls += 1
        self.threads.append(threading.current_thread())
        time.sleep(self.delay_s)
        return self.credentials


async def test_chain_resolves_once_in_a_thread_for_concurrent_first_requests() -> None:
    session = _Session(botocore.credentials.Credentials(AKID, SECRET), delay_s=0.1)
    chain = sigv4.DefaultChain(lambda: session)  # type: ignore[arg-type,return-value]
    auth = sigv4.SigV4Auth("us-east-1", chain=chain)
    results = await asyncio.gather(*(auth.headers(request()) for _ in range(20)))
    assert session.calls == 1
    assert session.threads[0] is not threading.main_thread()
    for headers in results:
        verify(str(URL_), headers, BODY, SECRET)
    assert chain.method == "explicit"
    await auth.headers(request())
    assert session.calls == 1  # resolved credentials are kept


async def test_chain_that_found_nothing_is_asked_again() -> None:
    session = _Session(None)
    chain = sigv4.DefaultChain(lambda: session)  # type: ignore[arg-type,return-value]
    auth = sigv4.SigV4Auth("us-east-1", chain=chain)
    for _ in range(2):
        with pytest.raises(errors.UpstreamUnavailable, match="bedrock role has no credentials"):
            await auth.headers(request())
    assert session.calls == 2
    session.credentials = botocore.credentials.Credentials(AKID, SECRET)
    verify(str(URL_), await auth.headers(request()), BODY, SECRET)


def test_the_default_chain_is_one_per_process_until_reset() -> None:
    first = sigv4.sigv4_auth(upstream())
    assert sigv4.default_chain() is sigv4.default_chain()
    sigv4.reset_default_chain()
    chain = sigv4.default_chain()
    assert chain is not first._chain
    assert sigv4.sigv4_auth(upstream())._chain is chain
    assert (
        sigv4.sigv4_auth(upstream(aws_access_key_id=AKID, aws_secret_access_key=SECRET))._chain
        is None
    )


#: (URL, headers, session token): what bedrock roles send, and the edges the signer hands
#: to botocore (a query, an IPv6 host) or must canonicalise as botocore does.
SIGNED_CASES = [
    (str(URL_), {"Content-Type": "application/json"}, None),
    (str(URL_), {"Content-Type": "application/json", "Accept": "*/*"}, TOKEN),
    ("http://127.0.0.1:8080/model/m/converse-stream", {"content-type": "a  b\t c "}, None),
    ("https://bedrock-runtime.us-east-1.amazonaws.com:443/model/m/converse", {}, None),
    ("https://Example.com:8443/a//b/./c/../model/m%2Fx/converse", {"User-Agent": "x"}, None),
    (
        str(URL_),
        {"Authorization": "old", "x-amz-date": "19990101T000000Z", "X-Custom": "v"},
        TOKEN,
    ),
    ("https://example.com/model/m/converse?b=2&a=1", {"Content-Type": "x"}, None),
    ("http://[::1]:8080/model/m/converse", {"Content-Type": "x"}, None),
    ("https://example.com/model/m/converse", {"Host": "other.example.com"}, None),
    ("https://XN--BCHER-KVA.example/model/m/converse", {"Content-Type": "x"}, None),
    ("https://user@Example.COM./model/m/converse", {"Content-Type": "x"}, None),
    (str(URL_), {"Content-Type": "x", "Date": "Tue, 01 Dec 2026 23:59:59 GMT"}, None),
    (str(URL_), {"Content-Type": "x", "X-Amz-Security-Token": "theirs"}, None),
]


@pytest.mark.parametrize(("url", "headers", "token"), SIGNED_CASES)
def test_the_signer_signs_as_botocore_does(
    monkeypatch: pytest.MonkeyPatch, url: str, headers: dict[str, str], token: str | None
) -> None:
    """The cached signer (auth/signing.py) gives botocore's SigV4Auth's headers exactly,
    across two days (the cached signing key is the day's), and they verify."""
    signer = Signer("us-east-1", "bedrock")
    creds = botocore.credentials.ReadOnlyCredentials(AKID, SECRET, token)
    handed_over: list[str] = []  # requests the signer gives botocore to sign
    botocore_sign = signing._botocore_sign
    monkeypatch.setattr(
        signing, "_botocore_sign", lambda u, *a: handed_over.append(u) or botocore_sign(u, *a)
    )
    for day in (1, 2):
        when = datetime.datetime(2026, 12, day, 23, 59, 59)
        monkeypatch.setattr(botocore.compat, "get_current_datetime", lambda w=when: w)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda w=when: w)
        ours = signer.sign(URL(url, encoded=True), headers, BODY, creds)
        aws = botocore.awsrequest.AWSRequest(method="POST", url=url, data=BODY, headers=headers)
        botocore.auth.SigV4Auth(creds, "bedrock", "us-east-1").add_auth(aws)
        assert ours == dict(aws.headers.items())
        assert f"{AKID}/202612{day:02}/us-east-1/bedrock/aws4_request" in ours["Authorization"]
    to_botocore = "?" in url or "[" in url or "Date" in headers or "X-Amz-Security-Token" in headers
    assert bool(handed_over) == to_botocore
