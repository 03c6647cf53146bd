"""Fidelity of the STS fake: botocore's own IRSA credential provider refreshes through it.

botocore's ``assume-role-with-web-identity`` provider gets its credentials from the fake
(re-reading the token file each time), refreshes short-lived ones and keeps long-lived ones,
and the Bedrock fake accepts requests signed with what it issued. So the fake speaks the real
STS wire format and the credential-refresh tests driven through it mean something (reference
translation.md §12.2). No Kubernetes here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.session
import pytest

from tests.fakes.bedrock import FakeBedrock
from tests.fakes.fidelity import bedrock_fake, converse_user, in_thread
from tests.fakes.sts import FakeSTS

__all__ = ["bedrock_fake"]  # a fixture, imported for pytest to find


@pytest.fixture
def irsa_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    """``irsa_env(sts_url)`` sets the IRSA environment botocore reads; returns the token file."""

    def setup(sts_url: str) -> Path:
        token_file = tmp_path / "token"
        token_file.write_text("jwt-1")
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/rolegate")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        return token_file

    return setup


async def test_sts_short_lived_credentials_are_refreshed(
    bedrock_fake: FakeBedrock, irsa_env: Callable[[str], Path]
) -> None:
    async with FakeSTS(duration_s=60, on_issue=bedrock_fake.allow) as sts:
        token_file = irsa_env(sts.url)
        session = botocore.session.Session()
        credentials = await in_thread(session.get_credentials)
        assert credentials is not None
        assert credentials.method == "assume-role-with-web-identity"
        keys = [(await in_thread(credentials.get_frozen_credentials)).access_key for _ in range(2)]
        token_file.write_text("jwt-2")  # re-read on every refresh
        keys.append((await in_thread(credentials.get_frozen_credentials)).access_key)
        assert sts.calls == 3
        assert len(set(keys)) == 3
        assert [seen.body["WebIdentityToken"] for seen in sts.requests] == [
            "jwt-1",
            "jwt-1",
            "jwt-2",
        ]
        assert sts.requests[0].body["Action"] == "AssumeRoleWithWebIdentity"
        client = boto3.Session(botocore_session=session).client(
            "bedrock-runtime", endpoint_url=bedrock_fake.url
        )
        answer = await in_thread(lambda: client.converse(modelId="m", messages=converse_user("hi")))
        assert answer["stopReason"] == "end_turn"
        assert sts.calls == 4  # the 60 s credentials were inside the mandatory refresh window
        assert (
            bedrock_fake.requests[-1]
            .headers["authorization"]
            .split("Credential=")[1]
            .startswith("ASIAFAKE")
        )


async def test_sts_long_lived_credentials_are_reused(irsa_env: Callable[[str], Path]) -> None:
    async with FakeSTS(duration_s=3600) as sts:
        irsa_env(sts.url)
        credentials = await in_thread(botocore.session.Session().get_credentials)
        assert credentials is not None
        for _ in range(3):
            await in_thread(credentials.get_frozen_credentials)
        assert sts.calls == 1
