"""A recognisable API key never leaves the gateway except towards its upstream."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Gateway, Upstream
from tests.fakes import manifests as m

KEY = "sk-RGTEST-7f3a9c1e5d2b8046"


async def test_key_absent_from_status_metrics_logs_and_error_bodies(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "roles.yaml"
    m.write(
        path,
        m.role(
            "extract",
            host=upstream.url,
            credentials={"secretRef": {"name": "creds"}},
            options={"temperature": 0.1, "extra_headers_note": "nothing secret"},
        ),
        m.secret("creds", apiKey=KEY),
    )
    gw = await start_gateway(tmp_path)
    client = sdk(gw)
    bodies: list[str] = []

    reply = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "x"}]
    )
    assert reply.choices[0].message.content == "hi from A"
    assert upstream.fake.seen[-1].headers["Authorization"] == f"Bearer {KEY}"  # it is used

    # An upstream that echoes the key in its error, JSON and not.
    for raw in (
        json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}", "type": "x"}}),
        f"bad key {KEY}",
    ):
        upstream.fake.fail_status = 401
        upstream.fake.fail_body = raw.encode()
        with pytest.raises(openai.AuthenticationError) as err:
            await client.chat.completions.create(
                model="extract", messages=[{"role": "user", "content": "x"}]
            )
        bodies.append(err.value.response.text)
    upstream.fake.fail_status = None

    # A refused config whose Secret holds the key in a bad encoding.
    before = gw.runtime.last_reload
    m.write(
        path,
        m.role("extract", host=upstream.url, credentials={"secretRef": {"name": "creds"}}),
        {**m.secret("creds"), "data": {"apiKey": KEY + "%%"}},
    )
    await gw.wait_reload(before)
    assert gw.runtime.last_reload is not None
    assert gw.runtime.last_reload.outcome == "refused"

    async with aiohttp.ClientSession() as http:
        for path_ in ("/status", "/metrics", "/v1/models", "/readyz"):
            async with http.get(gw.url + path_) as resp:
                bodies.append(await resp.text())

    assert "Incorrect API key provided" in bodies[0]  # the message itself is kept
    for text in [*bodies, caplog.text]:
        assert KEY not in text
        assert KEY[:12] not in text  # not even a masked prefix
    status = json.loads(bodies[2])
    assert "credentials" not in json.dumps(status["roles"])  # stripped, not masked
    assert "*****" not in bodies[2]


async def test_key_from_environment_with_env_secrets(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_CREDS_API_KEY", KEY)
    m.write(
        tmp_path / "roles.yaml",
        m.role("extract", host=upstream.url, credentials={"secretRef": {"name": "openai-creds"}}),
        m.secret("openai-creds", encoded=False, apiKey="replace-me"),
    )
    gw = await start_gateway(tmp_path, env_secrets=True)
    await sdk(gw).chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "x"}]
    )
    assert upstream.fake.seen[-1].headers["Authorization"] == f"Bearer {KEY}"
