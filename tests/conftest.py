"""Fixtures shared by every test: fake upstreams and in-process gateways on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from devstack.poll import eventually
from rolegate_gateway import ManifestsSource, Runtime, create_app, start
from rolegate_gateway.auth.access import Access
from rolegate_gateway.settings import ServerSettings
from tests.fakes.openai_upstream import FakeOpenAI

pytest_plugins = ["tests.fixtures.image", "tests.fixtures.real_node", "tests.fixtures.gpu_node"]


@dataclass
class Upstream:
    """A running fake upstream: its knobs and records, and its /v1 base URL."""

    fake: FakeOpenAI
    url: str


@dataclass
class Gateway:
    """A running gateway: its base URL (``/v1`` appended is the SDK's base_url)."""

    url: str
    runtime: Runtime
    source: ManifestsSource | None
    port: int = 0
    app: web.Application | None = None

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    async def wait_reload(self, previous: Any, timeout_s: float = 10.0) -> None:
        """Wait until the last reload report differs from ``previous``."""
        await until(lambda: self.runtime.last_reload is not previous, timeout_s=timeout_s)


@pytest.fixture
async def start_upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """Factory: ``await start_upstream(name=..., delay_s=...)`` -> a running fake upstream."""
    runners: list[web.AppRunner] = []

    async def factory(**knobs: Any) -> Upstream:
        fake = FakeOpenAI(**knobs)
        runner, port = await start(fake.app(), host="127.0.0.1", port=0, shutdown_timeout_s=1)
        runners.append(runner)
        return Upstream(fake, f"http://127.0.0.1:{port}/v1")

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def upstream(start_upstream: Callable[..., Awaitable[Upstream]]) -> Upstream:
    """One fake upstream named "A"."""
    return await start_upstream(name="A")


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Factory: ``await start_gateway(manifests_path)`` -> a gateway serving those files
    (``access``: makes its client access from its runtime; default open)."""
    runners: list[web.AppRunner] = []

    async def factory(
        manifests: Path,
        *,
        env_secrets: bool = False,
        drain_grace_s: float = 15.0,
        settings: ServerSettings | None = None,
        access: Callable[[Runtime], Access] | None = None,
    ) -> Gateway:
        runtime = Runtime(drain_grace_s=drain_grace_s)
        source = ManifestsSource(manifests, runtime, interval_s=0.05, env_secrets=env_secrets)
        gate = access(runtime) if access is not None else None
        app = create_app(runtime, source=source, settings=settings, access=gate)
        runner, port = await start(app, host="127.0.0.1", port=0, shutdown_timeout_s=2)
        runners.append(runner)
        return Gateway(f"http://127.0.0.1:{port}", runtime, source, port, app)

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[Gateway], openai.AsyncOpenAI]]:
    """Factory: ``sdk(gateway)`` -> an AsyncOpenAI client at the gateway, closed after."""
    clients: list[openai.AsyncOpenAI] = []

    def factory(gateway: Gateway) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=gateway.v1, api_key="not-checked", max_retries=0, timeout=60
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


async def until(predicate: Callable[[], object], *, timeout_s: float = 5.0) -> None:
    """:func:`devstack.poll.eventually` every 5 ms, for in-process state that has no event."""
    await eventually(predicate, timeout_s=timeout_s, poll_s=0.005)
