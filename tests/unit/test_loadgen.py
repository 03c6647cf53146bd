"""The load generator's window: a target slower than the window is measured, not left empty.

A bench row with no sample once failed CI: LiteLLM stalled longer than the smoke's 0.5 s
window, so no request was started in it and the row held no latency at all.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.loadgen import Load, run_load

ANSWER_S = 0.3  # each answer outlasts the window below


@pytest.fixture
async def slow_url() -> AsyncIterator[str]:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(ANSWER_S)
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    await runner.cleanup()


async def _measure(url: str, min_requests: int) -> dict:
    load = Load(
        url=url,
        body={"model": "m", "messages": []},
        concurrency=2,
        warmup_requests=2,
        min_requests=min_requests,
        max_duration_s=0.05,
    )
    lines: asyncio.Queue[str] = asyncio.Queue()
    lines.put_nowait("go")
    out = io.StringIO()
    result = await run_load(load, lines, out)
    assert json.loads(out.getvalue()) == {"event": "warm"}
    return result


async def test_a_window_shorter_than_an_answer_still_records_min_requests(
    slow_url: str,
) -> None:
    result = await _measure(slow_url, min_requests=2)
    assert result["ok"] == 2
    assert result["failed"] == 0
    assert result["latency_s"]["p99"] >= ANSWER_S
    assert result["elapsed_s"] >= 0.05
    assert result["throughput_rps"] > 0


async def test_without_min_requests_such_a_window_is_empty(slow_url: str) -> None:
    """The control: what the smoke saw before the window was held open."""
    result = await _measure(slow_url, min_requests=0)
    assert result["ok"] == 0
    assert result["failed"] == 0
