"""One maxAsync across gateway replicas: three gateway processes, one real redis-server, one
fake upstream that counts concurrent calls (peak), with the store's faults: a SIGKILLed
gateway holding slots, redis stopped mid-load and started again.

No Kubernetes: the gateways serve a manifests file (``--manifests``), with
``--fallback-replicas 3`` standing in for the live replica count.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack import http
from devstack.poll import eventually
from devstack.process import Process
from devstack.redis import RedisProcess
from tests.conftest import Upstream
from tests.fakes import manifests as m
from tests.fixtures.redis import redis_binary, redis_server

__all__ = ["redis_binary", "redis_server"]

MAX_ASYNC = 6
TTL_S = 3.0


class Gateway(Process):
    """``rolegate-gateway --manifests PATH --concurrency-store URL`` on a free port."""

    def __init__(self, name: str, manifests: Path, store: str, log_dir: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "rolegate_gateway",
            "--manifests",
            str(manifests),
            "--port",
            "0",
            "--concurrency-store",
            store,
            "--concurrency-slot-ttl",
            str(TTL_S),
            "--fallback-replicas",
            "3",
            "--log-level",
            "debug",
        ]
        super().__init__(name, argv, log_path=log_dir / f"{name}.log")

    def serving(self) -> str:
        self.url = self.url_in_log(r"on (http://127\.0\.0\.1:\d+)/v1")
        return self.url

    def status(self) -> dict[str, Any]:
        """/status's ``concurrency`` section."""
        section: dict[str, Any] = http.get_json(f"{self.url}/status")["concurrency"]
        return section

    def mode(self) -> str:
        return str(self.status()["mode"])

    def metric(self, name: str) -> float:
        text = http.get(f"{self.url}/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@pytest.fixture
async def setup(
    start_upstream: Callable[..., Awaitable[Upstream]],
    redis_server: RedisProcess,
    tmp_path: Path,
) -> AsyncIterator[tuple[Upstream, list[Gateway]]]:
    """A fake upstream counting concurrent calls (50 ms each) and three gateway processes
    serving role ``r`` (maxAsync 6) from it through one redis-server, in global mode."""
    upstream = await start_upstream(name="A", delay_s=0.05)
    path = m.write(
        tmp_path / "roles.yaml",
        m.role(
            "r",
            host=upstream.url,
            maxAsync=MAX_ASYNC,
            queue={"maxSize": 400, "maxWaitSeconds": 60},
        ),
    )
    gateways = [Gateway(f"gw{i}", path, redis_server.url, tmp_path) for i in range(3)]
    with contextlib.ExitStack() as running:
        for gateway in gateways:
            running.enter_context(gateway)
        for gateway in gateways:
            await asyncio.to_thread(gateway.wait_ready, gateway.serving, what="listening")
        # The first gateway finds a new store: it admits through it once every replica
        # could have registered its calls (a second or two).
        await eventually(lambda: {g.mode() for g in gateways} == {"global"}, timeout_s=15)
        yield upstream, gateways


async def _load(session: aiohttp.ClientSession, urls: list[str], count: int) -> tuple[int, int]:
    """``count`` concurrent chat calls spread round-robin over ``urls``: (ok, failed)."""

    async def one(i: int) -> bool:
        body = {"model": "r", "messages": [{"role": "user", "content": f"q{i}"}]}
        async with session.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body) as r:
            await r.read()
            return r.status == 200

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return sum(results), results.count(False)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as client:
        yield client


async def test_three_gateways_share_one_max_async(
    setup: tuple[Upstream, list[Gateway]], session: aiohttp.ClientSession
) -> None:
    upstream, gateways = setup
    ok, failed = await _load(session, [g.url for g in gateways], 300)
    assert (ok, failed) == (300, 0)
    assert upstream.fake.max_in_flight == MAX_ASYNC  # never more, and the limit is used
    assert {g.mode() for g in gateways} == {"global"}


async def test_slots_of_a_killed_gateway_come_back_within_the_ttl(
    setup: tuple[Upstream, list[Gateway]], session: aiohttp.ClientSession
) -> None:
    upstream, gateways = setup
    fake = upstream.fake
    fake.gate = asyncio.Event()  # hold every call
    victim, *survivors = gateways
    doomed = asyncio.create_task(_load(session, [victim.url], MAX_ASYNC))
    await eventually(lambda: fake.in_flight == MAX_ASYNC, timeout_s=10)
    victim.kill()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    await eventually(lambda: fake.in_flight == 0, timeout_s=5)  # its calls were cut
    later = asyncio.create_task(_load(session, [g.url for g in survivors], MAX_ASYNC))
    await eventually(lambda: fake.in_flight == MAX_ASYNC, timeout_s=TTL_S + 5)
    back_after_s = loop.time() - killed_at
    assert back_after_s <= TTL_S + 2.5  # the TTL, the renewal phase, a re-check
    fake.gate.set()
    assert await later == (MAX_ASYNC, 0)
    assert fake.max_in_flight == MAX_ASYNC
    await asyncio.gather(doomed, return_exceptions=True)  # the victim's clients saw it die


async def test_redis_down_falls_back_to_shares_and_comes_back(
    setup: tuple[Upstream, list[Gateway]],
    session: aiohttp.ClientSession,
    redis_server: RedisProcess,
) -> None:
    upstream, gateways = setup
    fake = upstream.fake
    urls = [g.url for g in gateways]
    load = asyncio.create_task(_load(session, urls, 300))
    await eventually(lambda: len(fake.seen) >= 60, timeout_s=30)
    await asyncio.to_thread(redis_server.stop)
    assert await load == (300, 0)
    assert fake.max_in_flight <= MAX_ASYNC
    assert {g.mode() for g in gateways} == {"fallback"}
    assert all(g.metric("rolegate_concurrency_fallback") == 1 for g in gateways)
    assert all(g.metric("rolegate_concurrency_store_errors_total") >= 1 for g in gateways)
    # The first TTL of fallback also counts the calls the others ran at the switch.
    await eventually(lambda: gateways[0].status()["settlingSeconds"] == 0, timeout_s=TTL_S + 2)
    fake.reset()
    assert await _load(session, [urls[0]], 30) == (30, 0)
    assert fake.max_in_flight == MAX_ASYNC // 3  # one replica alone: its share, used

    await asyncio.to_thread(redis_server.start)
    await asyncio.to_thread(redis_server.wait_serving)
    await eventually(lambda: {g.mode() for g in gateways} == {"global"}, timeout_s=15)
    assert all(g.metric("rolegate_concurrency_fallback") == 0 for g in gateways)
    fake.reset()
    # Spread unevenly: only the store can let one gateway's share exceed 2.
    assert await _load(session, [urls[0]], 60) == (60, 0)
    assert fake.max_in_flight == MAX_ASYNC
