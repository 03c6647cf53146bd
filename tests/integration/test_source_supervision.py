"""A config source that fails is restarted with backoff; /readyz and /status say so, and
the config being served keeps serving."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import rolegate_gateway.app as gateway_app
from rolegate_gateway import GatewayConfig, Runtime, create_app, start
from tests.conftest import until
from tests.fakes.configs import role_config


class FlakySource:
    """Hands over one config, then its watch fails ``failures`` times before it holds."""

    def __init__(self, runtime: Runtime, failures: int) -> None:
        self.runtime = runtime
        self.failures = failures
        self.runs = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def load_once(self) -> bool:
        self.runtime.apply(GatewayConfig(roles=(role_config("a", base_url="http://x/v1"),)))
        return True

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            await asyncio.sleep(0.01)
            raise ConnectionError("sk-NOT-FOR-LOGS the watch broke")
        self.holding.set()
        await self.release.wait()
        raise RuntimeError("and broke again")

    async def close(self) -> None:
        pass


async def test_a_failing_source_is_restarted_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_app, "SOURCE_BACKOFF_S", (0.2, 0.4))
    runtime = Runtime()
    source = FlakySource(runtime, failures=2)
    runner, port = await start(create_app(runtime, source=source), host="127.0.0.1", port=0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await until(lambda: runtime.source_error is not None)
            async with http.get(f"{url}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 200  # the last good config keeps serving
            assert body["configSource"]["error"].startswith("ConnectionError; restarting in")
            await until(lambda: source.holding.is_set(), timeout_s=5)
            assert source.runs == 3
            async with http.get(f"{url}/readyz") as resp:
                assert "configSource" not in await resp.json()
            async with http.get(f"{url}/status") as resp:
                assert (await resp.json())["configSource"]["up"] is True

            source.release.set()  # it fails again, after a long run: restarted again
            await until(lambda: source.runs == 4, timeout_s=5)
    finally:
        await runner.cleanup()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("the config source is down (ConnectionError)" in r.getMessage() for r in errors)
    assert not any(r.exc_info for r in errors)
    assert "sk-NOT-FOR-LOGS" not in caplog.text
