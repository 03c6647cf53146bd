"""SigV4Auth over loopback: aiohttp sends what it signed to the fake Bedrock (which checks
the signature with botocore's canonicalisation), and IRSA credentials from the fake STS
are refreshed in a thread, single-flight, without stalling the event loop. No Kubernetes.

Reference translation.md §10 and §12.2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.api import Binding
from rolegate_gateway.auth import sigv4
from rolegate_gateway.config import Credentials, Upstream
from rolegate_gateway.translators.base import UpstreamRequest
from tests.fakes.bedrock import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeBedrock
from tests.fakes.sts import FakeSTS
from tests.fixtures.aws import fresh_chain

__all__ = ["fresh_chain"]  # a fixture, imported by name

pytestmark = pytest.mark.usefixtures("fresh_chain")

T = TypeVar("T")

ARN_PATH = (
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
    "application-inference-profile%2Fabc123/converse"
)
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
ROLE_ARN = "arn:aws:iam::123456789012:role/rolegate"
WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.fake-service-account-token"
#: Seconds the slow STS takes per call; a refresh made on the loop would stall it this long.
STS_DELAY_S = 1.5
#: The ticker's period and the longest gap between two ticks that still counts as a loop
#: that was never blocked: well below STS_DELAY_S, well above the jitter of a loaded 2-core
#: machine (up to 0.43 s seen in CI, while the first refresh builds botocore's STS client
#: in a thread that holds the GIL between switches; 0.4 s here failed once).
TICK_S = 0.02
MAX_GAP_S = 1.0


class SlowSTS(FakeSTS):
    """FakeSTS that answers each call after ``delay_s``."""

    def __init__(self, *, delay_s: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.delay_s = delay_s

    async def _call(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay_s)
        return await super()._call(request)


class OtherLoop:
    """An event loop in a thread, so a fake served there still answers while this test's
    loop is blocked (a blocked loop then shows as a stalled ticker, not a deadlock)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the other loop and wait for it here."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
async def bedrock() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock() as fake:
        yield fake


@pytest.fixture
async def other_loop() -> AsyncIterator[OtherLoop]:
    other = OtherLoop()
    yield other
    other.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def irsa_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sts_url: str) -> None:
    """The environment EKS gives a pod with IRSA, pointed at the fake STS, offline."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    token_file = tmp_path / "token"
    token_file.write_text(WEB_IDENTITY_TOKEN)
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def upstream(**credentials: str) -> Upstream:
    return Upstream(
        binding=Binding.BEDROCK,
        model="m",
        base_url="https://bedrock-runtime.us-east-1.amazonaws.com",
        timeout_s=30,
        bedrock_region="us-east-1",
        credentials=Credentials(**{k: SecretStr(v) for k, v in credentials.items()}),
    )


async def send(
    http: aiohttp.ClientSession, auth: sigv4.SigV4Auth, fake: FakeBedrock
) -> tuple[int, dict[str, str]]:
    """Sign and POST one Converse call with the ARN model id, as upstream.post does."""
    request = UpstreamRequest(
        URL(fake.url + ARN_PATH, encoded=True), {"Content-Type": "application/json"}, BODY
    )
    headers = await auth.headers(request)
    async with http.post(request.url, data=request.body, headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_signed_arn_request_is_accepted_and_a_wrong_secret_is_not(
    bedrock: FakeBedrock, http: aiohttp.ClientSession
) -> None:
    good = sigv4.sigv4_auth(
        upstream(aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)
    )
    status, _ = await send(http, good, bedrock)
    assert status == 200
    assert bedrock.requests[-1].path == ARN_PATH
    assert (bedrock.requests[-1].region, bedrock.requests[-1].service) == ("us-east-1", "bedrock")

    wrong = sigv4.sigv4_auth(
        upstream(aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY + "x")
    )
    status, headers = await send(http, wrong, bedrock)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")


async def test_irsa_credentials_refresh_in_a_thread_without_blocking_the_loop(
    bedrock: FakeBedrock,
    http: aiohttp.ClientSession,
    other_loop: OtherLoop,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # 5-minute credentials: inside botocore's 10-minute mandatory window, so every use
    # refreshes; STS runs on another loop so a blocked loop here cannot deadlock it.
    sts = SlowSTS(delay_s=STS_DELAY_S, duration_s=300, on_issue=bedrock.allow)
    await other_loop.run(sts.start())
    try:
        irsa_env(monkeypatch, tmp_path, sts.url)
        auth = sigv4.sigv4_auth(upstream(), role="claude")
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while not stop.is_set():
                await asyncio.sleep(TICK_S)
                now = loop.time()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(3 * TICK_S)
        durations = []
        for n in range(1, 4):
            started = time.monotonic()
            status, _ = await send(http, auth, bedrock)
            durations.append(time.monotonic() - started)
            assert status == 200
            assert sts.calls == n  # one STS call per request: each one refreshed
        stop.set()
        await ticker
    finally:
        await other_loop.run(sts.stop())
    assert min(durations) >= STS_DELAY_S  # the requests did wait on STS...
    assert max(gaps) < MAX_GAP_S, f"event loop blocked for {max(gaps):.3f} s"  # ...the loop not
    assert len(gaps) >= 3 * STS_DELAY_S / (3 * TICK_S)  # it ticked all along
    keys = {seen.headers["authorization"].split("Credential=")[1][:20] for seen in bedrock.requests}
    assert len(keys) == 3  # each request signed with the credentials just issued
    assert {seen.body["RoleArn"] for seen in sts.requests} == {ROLE_ARN}
    # nothing issued or read reaches a log, botocore's DEBUG records included
    issued = [(k.secret, k.token) for k in bedrock.known.values() if k.token]
    assert len(issued) == 3
    for secret, token in issued:
        assert secret not in caplog.text
        assert token is not None
        assert token not in caplog.text
    assert WEB_IDENTITY_TOKEN not in caplog.text


async def test_concurrent_first_requests_resolve_the_chain_once(
    bedrock: FakeBedrock,
    http: aiohttp.ClientSession,
    other_loop: OtherLoop,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sts = SlowSTS(delay_s=STS_DELAY_S, duration_s=300, on_issue=bedrock.allow)
    await other_loop.run(sts.start())
    try:
        irsa_env(monkeypatch, tmp_path, sts.url)
        auth = sigv4.sigv4_auth(upstream(), role="claude")
        results = await asyncio.gather(*(send(http, auth, bedrock) for _ in range(20)))
        assert [status for status, _ in results] == [200] * 20
        assert sts.calls == 1
        assert sigv4.default_chain().method == "assume-role-with-web-identity"
        # another role of the process shares the chain and its credentials' refreshes
        other = sigv4.sigv4_auth(upstream(), role="titan")
        results = await asyncio.gather(
            *(send(http, a, bedrock) for a in (auth, other) for _ in range(5))
        )
        assert [status for status, _ in results] == [200] * 10
        assert sts.calls == 2
    finally:
        await other_loop.run(sts.stop())


async def test_long_lived_credentials_are_read_inline(
    bedrock: FakeBedrock,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with FakeSTS(duration_s=3600, on_issue=bedrock.allow) as sts:
        irsa_env(monkeypatch, tmp_path, sts.url)
        auth = sigv4.sigv4_auth(upstream())
        assert (await send(http, auth, bedrock))[0] == 200

        def no_thread(*_: object, **__: object) -> object:
            raise AssertionError("credentials outside the refresh windows went to a thread")

        monkeypatch.setattr(asyncio, "to_thread", no_thread)
        for _ in range(3):
            assert (await send(http, auth, bedrock))[0] == 200
        assert sts.calls == 1


async def test_a_failed_refresh_is_upstream_unavailable_naming_the_role(
    bedrock: FakeBedrock,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeSTS(token="another-token", on_issue=bedrock.allow) as sts:
        irsa_env(monkeypatch, tmp_path, sts.url)
        auth = sigv4.sigv4_auth(upstream(), role="claude")
        request = UpstreamRequest(URL(bedrock.url + ARN_PATH, encoded=True), {}, BODY)
        with pytest.raises(errors.UpstreamUnavailable) as raised:
            await auth.headers(request)
    assert raised.value.message == (
        "role 'claude' (binding bedrock) could not get AWS credentials: "
        "AssumeRoleWithWebIdentity failed (InvalidIdentityToken)"
    )
    assert len(sts.requests) == 1
    assert WEB_IDENTITY_TOKEN not in caplog.text
