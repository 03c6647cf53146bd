"""Per-role admission through the gateway: maxAsync, priority, 429/504/502, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import Gateway, Upstream, until
from tests.fakes import manifests as m

Setup = Callable[..., Awaitable[tuple[Gateway, openai.AsyncOpenAI]]]


@pytest.fixture
def setup(
    tmp_path: Path,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> Callable[..., Awaitable[tuple[Gateway, openai.AsyncOpenAI]]]:
    """``await setup(host, **spec)``: a gateway serving role "extract" and a client."""

    async def factory(host: str, **spec: Any) -> tuple[Gateway, openai.AsyncOpenAI]:
        m.write(tmp_path / "roles.yaml", m.role("extract", host=host, **spec))
        gw = await start_gateway(tmp_path)
        return gw, sdk(gw)

    return factory


def _ask(client: openai.AsyncOpenAI, text: str, **kw: Any) -> Awaitable[Any]:
    return client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": text}], **kw
    )


async def test_max_async_holds_under_50_concurrent_requests(
    upstream: Upstream, setup: Setup
) -> None:
    gw, client = await setup(upstream.url, maxAsync=4)
    upstream.fake.delay_s = 0.05
    replies = await asyncio.gather(*(_ask(client, str(i)) for i in range(50)))
    assert all(r.choices[0].message.content == "hi from A" for r in replies)
    assert upstream.fake.max_in_flight == 4  # reached, never passed
    stats = gw.runtime.roles["extract"].queue.stats()
    assert stats["completed_total"] == 50
    assert stats["running"] == 0
    assert stats["queued"] == 0


async def test_lower_priority_value_is_served_first(upstream: Upstream, setup: Setup) -> None:
    gw, client = await setup(upstream.url, maxAsync=1)
    gate = upstream.fake.gate = asyncio.Event()
    blocker = asyncio.create_task(_ask(client, "blocker"))
    await until(lambda: upstream.fake.started)
    queue = gw.runtime.roles["extract"].queue
    tasks = []
    for text, priority in [("p20", 20), ("p5-a", 5), ("p10", 10), ("p5-b", 5), ("p1", 1)]:
        headers = {"X-Priority": str(priority)}
        tasks.append(asyncio.create_task(_ask(client, text, extra_headers=headers)))
        await until(lambda: queue.queued >= len(tasks))  # enqueue in this order
    gate.set()
    await asyncio.gather(blocker, *tasks)
    assert upstream.fake.started == ["blocker", "p1", "p5-a", "p5-b", "p10", "p20"]


async def test_full_queue_answers_429_with_retry_after(upstream: Upstream, setup: Setup) -> None:
    gw, client = await setup(upstream.url, maxAsync=1, queue={"maxSize": 2})
    gate = upstream.fake.gate = asyncio.Event()
    held = [asyncio.create_task(_ask(client, str(i))) for i in range(3)]  # 1 runs, 2 wait
    queue = gw.runtime.roles["extract"].queue
    await until(lambda: queue.queued >= 2)
    with pytest.raises(openai.RateLimitError) as err:
        await _ask(client, "one too many")
    assert int(err.value.response.headers["Retry-After"]) >= 1
    assert isinstance(err.value.body, dict)
    assert err.value.body["type"] == "rate_limit_exceeded"
    gate.set()
    await asyncio.gather(*held)
    assert queue.stats()["rejected_total"] == 1


async def test_wait_past_max_wait_answers_429(upstream: Upstream, setup: Setup) -> None:
    _, client = await setup(upstream.url, maxAsync=1, queue={"maxWaitSeconds": 0.3})
    upstream.fake.gate = asyncio.Event()
    blocker = asyncio.create_task(_ask(client, "blocker"))
    await until(lambda: upstream.fake.started)
    with pytest.raises(openai.RateLimitError) as err:
        await _ask(client, "waits too long")
    assert "0.3 s" in str(err.value)
    upstream.fake.gate.set()
    await blocker


async def test_upstream_timeout_is_504(upstream: Upstream, setup: Setup) -> None:
    gw, client = await setup(upstream.url, timeoutSeconds=0.3)
    upstream.fake.delay_s = 2
    with pytest.raises(openai.APIStatusError) as err:
        await _ask(client, "slow")
    assert err.value.status_code == 504
    assert isinstance(err.value.body, dict)
    assert err.value.body["type"] == "timeout"
    stats = gw.runtime.roles["extract"].queue.stats()
    assert (stats["running"], stats["failed_total"]) == (0, 1)


async def test_stream_stalling_between_chunks_times_out(upstream: Upstream, setup: Setup) -> None:
    """A stream may outlast timeoutSeconds while chunks flow, not when they stall."""
    _, client = await setup(upstream.url, timeoutSeconds=0.5)
    upstream.fake.chunks = 6
    upstream.fake.chunk_delay_s = 0.2  # 1.4 s in all: longer than the timeout, never idle
    stream = await _ask(client, "long", stream=True)
    assert len([c async for c in stream]) == 8  # role, 6 contents, finish
    upstream.fake.chunk_delay_s = 0.8  # stalls past the timeout after the first chunk
    stream = await _ask(client, "stalls", stream=True)
    with pytest.raises(openai.APIError) as err:
        async for _ in stream:
            pass
    assert "did not answer within 0.5 s" in str(err.value)


async def test_unreachable_upstream_is_502(
    setup: Setup,
) -> None:
    _, client = await setup("http://127.0.0.1:9/v1")
    with pytest.raises(openai.APIStatusError) as err:
        await _ask(client, "x")
    assert err.value.status_code == 502
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "upstream_unavailable"


async def test_upstream_dropping_the_connection_is_502(upstream: Upstream, setup: Setup) -> None:
    _, client = await setup(upstream.url)
    upstream.fake.disconnect = True
    with pytest.raises(openai.APIStatusError) as err:
        await _ask(client, "x")
    assert err.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
async def test_disconnecting_client_frees_its_slot(
    upstream: Upstream,
    setup: Setup,
    stream: bool,
) -> None:
    """maxAsync 1: a client that goes away mid-call lets the queued request start at once."""
    gw, client = await setup(upstream.url, maxAsync=1)
    upstream.fake.gate = asyncio.Event()
    payload = {
        "model": "extract",
        "stream": stream,
        "messages": [{"role": "user", "content": "leaver"}],
    }
    async with aiohttp.ClientSession() as http:
        leaver = asyncio.create_task(http.post(f"{gw.v1}/chat/completions", json=payload))
        await until(lambda: upstream.fake.started)
        waiter = asyncio.create_task(_ask(client, "next"))
        queue = gw.runtime.roles["extract"].queue
        await until(lambda: queue.queued >= 1)
        leaver.cancel()  # the client closes its connection
        await until(lambda: upstream.fake.started[-1:] == ["next"], timeout_s=2)
    assert upstream.fake.cancelled == 1  # the upstream call was cancelled too
    upstream.fake.gate.set()
    await waiter
    assert queue.stats()["cancelled_total"] == 1
    assert queue.stats()["running"] == 0


async def test_disconnect_while_queued_leaves_the_queue(upstream: Upstream, setup: Setup) -> None:
    gw, client = await setup(upstream.url, maxAsync=1)
    upstream.fake.gate = asyncio.Event()
    blocker = asyncio.create_task(_ask(client, "blocker"))
    await until(lambda: upstream.fake.started)
    queue = gw.runtime.roles["extract"].queue
    async with aiohttp.ClientSession() as http:
        payload = {"model": "extract", "messages": [{"role": "user", "content": "gone"}]}
        leaver = asyncio.create_task(http.post(f"{gw.v1}/chat/completions", json=payload))
        await until(lambda: queue.queued >= 1)
        leaver.cancel()
        await until(lambda: not queue.queued, timeout_s=2)
    upstream.fake.gate.set()
    await blocker
    assert upstream.fake.started == ["blocker"]  # the gone request never reached the upstream
    assert queue.stats()["cancelled_total"] == 1


async def test_transient_upstream_failures_are_retried(upstream: Upstream, setup: Setup) -> None:
    _, client = await setup(upstream.url)
    upstream.fake.fail_status = 503
    upstream.fake.fail_times = 2
    reply = await _ask(client, "x")
    assert reply.choices[0].message.content == "hi from A"
    assert len(upstream.fake.seen) == 3

    upstream.fake.fail_status = 429
    upstream.fake.fail_times = 1
    upstream.fake.fail_headers = {"Retry-After": "0.5"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _ask(client, "y")
    assert loop.time() - started >= 0.5  # the upstream's Retry-After was honoured


async def test_client_errors_are_not_retried(upstream: Upstream, setup: Setup) -> None:
    _, client = await setup(upstream.url)
    upstream.fake.fail_status = 400
    with pytest.raises(openai.BadRequestError):
        await _ask(client, "x")
    assert len(upstream.fake.seen) == 1


async def test_retries_stop_at_the_time_budget(upstream: Upstream, setup: Setup) -> None:
    """A Retry-After beyond timeoutSeconds is not waited for: the 429 is passed on."""
    _, client = await setup(upstream.url, timeoutSeconds=1)
    upstream.fake.fail_status = 429
    upstream.fake.fail_headers = {"Retry-After": "30"}
    with pytest.raises(openai.RateLimitError):
        await _ask(client, "x")
    assert len(upstream.fake.seen) == 1
