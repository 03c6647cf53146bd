"""The translated bindings' credentials end to end: a key or signature the provider refuses
is named the role's, Bedrock without a Secret signs with refreshed IRSA credentials, and no
credential reaches an answer, a page or a log (fixtures: tests/fixtures/providers.py)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from rolegate_gateway.auth import sigv4
from tests.conftest import Gateway
from tests.fakes import manifests as m
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.sts import FakeSTS
from tests.fixtures.providers import (
    ARN,
    ROLE,
    TEXT,
    Launch,
    joined_deltas,
    launch,
    provider,
    role_docs,
    streamed_text,
)

__all__ = ["launch", "provider"]  # fixtures, imported by name


@pytest.mark.parametrize(
    ("binding", "secret", "error", "status"),
    [
        ("anthropic", {"apiKey": "sk-ant-not-the-key"}, openai.AuthenticationError, 401),
        ("bedrock", {"awsSecretAccessKey": "not-the-secret"}, openai.PermissionDeniedError, 403),
    ],
)
async def test_credentials_the_provider_refuses_are_named_the_roles(
    launch: Launch, binding: str, secret: dict[str, str], error: type[Exception], status: int
) -> None:
    """A wrong key (anthropic), a wrong secret that the fake's SigV4 check refuses (bedrock,
    with an ARN model id): the client's error says the role's Secret needs fixing."""
    provider = await launch(binding, secret=secret, model=ARN if binding == "bedrock" else None)
    with pytest.raises(error) as err:
        await provider.ask("hi")
    assert isinstance(err.value, openai.APIStatusError)
    assert err.value.status_code == status
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "upstream_unauthorized"
    assert f"role {ROLE!r} refused the role's credentials" in err.value.message
    assert len(provider.fake.requests) == 1  # not retried


async def test_bedrock_without_a_secret_uses_irsa_refreshing_credentials(
    launch: Launch, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    bedrock = FakeBedrock()
    bedrock.known.clear()  # only what STS issues is accepted
    async with FakeSTS(duration_s=60, on_issue=bedrock.allow) as sts:
        token = tmp_path / "token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.service-account-token")
        irsa = {
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/rolegate",
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ENDPOINT_URL_STS": sts.url,
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for name, value in irsa.items():
            monkeypatch.setenv(name, value)
        sigv4.reset_default_chain()
        try:
            provider = await launch("bedrock", secret={}, fake=bedrock)
            for n in range(1, 4):
                assert (await provider.ask("hi")).choices[0].message.content == TEXT
                assert sts.calls == n  # 60 s credentials: every request refreshed them
            assert streamed_text(await provider.chunks("hi")) == TEXT
            assert sts.calls == 4
        finally:
            sigv4.reset_default_chain()
    keys = {seen.headers["authorization"].split("Credential=")[1][:20] for seen in bedrock.requests}
    assert len(keys) == 4  # each signed with the credentials just issued
    assert all(key.startswith("ASIAFAKE") for key in keys)
    assert all("x-amz-security-token" in seen.headers for seen in bedrock.requests)


async def test_no_credential_reaches_an_answer_a_page_or_a_log(
    tmp_path: Path,
    start_gateway: Callable[..., Awaitable[Gateway]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Recognisable credentials, successes and errors (credentials refused included, and
    #echo, whose answer is the body the gateway sent): no answer, page or log holds one."""
    caplog.set_level(logging.DEBUG)
    mark = secrets.token_hex(8)
    key, akid = f"sk-ant-RGLEAK-{mark}", f"ASIARGLEAK{mark[:10].upper()}"
    aws_secret, token, wrong = (f"RGLEAK{kind}/{mark}+x" for kind in ("secret", "token", "wrong"))
    aws = {"awsAccessKeyId": akid, "awsSessionToken": token}
    texts = ("hi", "#echo", "#tools", "#midstream-error", "#cut")
    cases = [(r, text, s) for r in ("claude", "nova") for text in texts for s in (False, True)]
    cases.remove(("nova", "#midstream-error", False))  # a 429 the gateway retries for 2 s
    cases += [
        ("claude", "#error:401:authentication_error", False),
        ("claude", "#error:400:invalid_request_error", True),
        ("nova", "#error:403:UnrecognizedClientException", False),
        ("nova", "#error:400:ValidationException", True),
        ("denied", "hi", False),  # the fake's signature check refuses the wrong secret
        ("denied", "hi", True),
    ]
    bodies: list[str] = []
    async with (
        FakeAnthropic(api_key=key) as anthropic,
        FakeBedrock(credentials={akid: (aws_secret, token)}) as bedrock,
    ):
        m.write(
            tmp_path / "roles.yaml",
            *role_docs("claude", "anthropic", anthropic.url, secret={"apiKey": key}),
            *role_docs(
                "nova", "bedrock", bedrock.url, secret={**aws, "awsSecretAccessKey": aws_secret}
            ),
            *role_docs(
                "denied", "bedrock", bedrock.url, secret={**aws, "awsSecretAccessKey": wrong}
            ),
        )
        gateway = await start_gateway(tmp_path)
        async with aiohttp.ClientSession() as http:
            for role, text, stream in cases:
                body = {"model": role, "messages": [{"role": "user", "content": text}]}
                async with http.post(
                    f"{gateway.v1}/chat/completions", json={**body, "stream": stream}
                ) as resp:
                    answer = await resp.text()
                    bodies += [f"{role} {text} {resp.status} {resp.headers}", answer]
                    bodies.append(joined_deltas(answer))  # a stream's text, unsplit
            for page in ("/status", "/metrics", "/v1/models"):
                async with http.get(gateway.url + page) as resp:
                    assert resp.status == 200
                    bodies.append(await resp.text())
    # the premises: the fakes got the credentials, and the answers hold what they should
    assert {s.headers["x-api-key"] for s in anthropic.requests} == {key}
    assert {s.headers.get("x-amz-security-token") for s in bedrock.requests} == {token}
    answers = "\n".join(bodies)
    assert '\\"max_tokens\\": 4096' in answers  # a whole #echo answer: the body the fake got
    assert '"text": "#echo"}]}], "stream": true}' in answers  # a streamed one, joined
    assert answers.count("upstream_unauthorized") >= 4
    assert "claude" in caplog.text
    # botocore's DEBUG records hold the canonical request it signs (the session token in
    # it): the gateway pins botocore at INFO, whatever the root's level (rolegate_gateway.logs)
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
    credentials = (key, aws_secret, token, wrong, akid)
    for where, text in (("an answer or a page", answers), ("the logs", caplog.text)):
        leaked = [value for value in credentials if value in text]
        assert leaked == [], f"{where} hold credentials"
