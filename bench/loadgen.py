"""The load generator: one process, driven over stdin/stdout by JSON lines.

Owns the client side of every measurement. ``python -m bench.loadgen`` reads one
:class:`Load` per line (as JSON) and for each:

1. sends ``warmup_requests`` requests (not recorded) and prints ``{"event": "warm"}``;
2. waits for the line ``go`` (the orchestrator starts its CPU and memory meters), then
   keeps ``concurrency`` requests in flight until ``max_requests`` were sent,
   ``max_duration_s`` passed or the line ``stop`` arrives;
3. prints ``{"event": "done", ...}``: a :func:`run_load` result.

Bounded in count and time, and loopback only: a URL whose host is not 127.0.0.1 is refused.
A request counts as answered when its status is 200 and its body is a chat completion, or,
for a stream, ends with ``data: [DONE]`` and carries no error event. Time to first token is
measured to the first SSE event with non-empty ``content``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from yarl import URL

from bench.aio import run_loop
from bench.stats import summary

__all__ = ["Load", "main", "run_load"]

_CONTENT = re.compile(rb'"content": ?"[^"]')
_HEAD_BYTES = 8192  # how much of a stream's start is searched for the first token


@dataclass(frozen=True, slots=True)
class Load:
    """One measurement's load. ``stream``: True, False or ``"mixed"`` (every other request
    streamed). ``body`` is sent as it is but for ``stream`` (and ``model`` with ``models``).
    Durations in seconds."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool | Literal["mixed"] = False
    models: tuple[str, ...] = ()  # when set, request i asks for models[i % len(models)]
    concurrency: int = 1
    warmup_requests: int = 0
    max_requests: int = 1000
    max_duration_s: float = 5.0
    timeout_s: float = 30.0


@dataclass(slots=True)
class _Tally:
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def _check_loopback(url: str) -> None:
    host = URL(url).host
    if host != "127.0.0.1":
        raise ValueError(f"the load generator only targets 127.0.0.1, not {host!r}")


def _bodies(load: Load) -> dict[tuple[str, bool], bytes]:
    """Encoded request bodies by (model, stream)."""
    models = load.models or (str(load.body.get("model")),)
    return {
        (model, flag): json.dumps(
            {**load.body, "model": model, "stream": flag}, separators=(",", ":")
        ).encode()
        for model in models
        for flag in (False, True)
    }


async def _one(
    session: aiohttp.ClientSession, load: Load, body: bytes, stream: bool, tally: _Tally
) -> None:
    started = time.perf_counter()
    ttft_s: float | None = None
    try:
        async with session.post(load.url, data=body, headers=load.headers) as resp:
            if resp.status != 200:
                await resp.read()
                tally.errors[f"status {resp.status}"] += 1
                return
            if not stream:
                if b'"choices"' not in await resp.read():
                    tally.errors["not a chat completion"] += 1
                    return
            else:
                head = b""
                tail = b""
                async for chunk in resp.content.iter_any():
                    if ttft_s is None and len(head) < _HEAD_BYTES:
                        head += chunk
                        if _CONTENT.search(head):
                            ttft_s = time.perf_counter() - started
                    if b'"error"' in chunk:
                        tally.errors["error event"] += 1
                        return
                    tail = (tail + chunk)[-64:]
                if b"data: [DONE]" not in tail:
                    tally.errors["incomplete stream"] += 1
                    return
                if ttft_s is None:
                    tally.errors["no content in stream"] += 1
                    return
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally.errors[type(exc).__name__] += 1
        return
    tally.latencies_s.append(time.perf_counter() - started)
    if ttft_s is not None:
        tally.ttfts_s.append(ttft_s)


async def _drive(
    session: aiohttp.ClientSession,
    load: Load,
    *,
    requests: int,
    duration_s: float,
    stop: asyncio.Event,
) -> tuple[_Tally, float]:
    """Keep ``load.concurrency`` requests in flight; returns the tally and elapsed seconds."""
    bodies = _bodies(load)
    models = load.models or (str(load.body.get("model")),)
    tally = _Tally()
    issued = 0
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        nonlocal issued
        while issued < requests and not stop.is_set() and time.perf_counter() < deadline:
            stream = issued % 2 == 1 if load.stream == "mixed" else bool(load.stream)
            model = models[issued % len(models)]
            issued += 1
            await _one(session, load, bodies[model, stream], stream, tally)

    await asyncio.gather(*(worker() for _ in range(load.concurrency)))
    return tally, time.perf_counter() - started


def _result(tally: _Tally, elapsed_s: float) -> dict[str, Any]:
    ok = len(tally.latencies_s)
    return {
        "ok": ok,
        "failed": sum(tally.errors.values()),
        "errors": dict(tally.errors.most_common(5)),
        "elapsed_s": elapsed_s,
        "throughput_rps": ok / elapsed_s if elapsed_s > 0 else 0.0,
        "latency_s": summary(tally.latencies_s),
        "ttft_s": summary(tally.ttfts_s) if tally.ttfts_s else None,
    }


async def run_load(load: Load, lines: asyncio.Queue[str], out: Any = None) -> dict[str, Any]:
    """Warm up, report ``warm`` on ``out`` (a text stream; default stdout), wait for ``go``
    on ``lines``, run the measured phase (``stop`` on ``lines`` ends it early).

    Returns ``{"ok", "failed", "errors": {kind: count}, "elapsed_s", "throughput_rps",
    "latency_s": {"p50", "p99", "mean", "max"}, "ttft_s": same or None}``, seconds.

    Raises:
        ValueError: the URL is not on 127.0.0.1.
    """
    _check_loopback(load.url)
    out = out or sys.stdout
    connector = aiohttp.TCPConnector(limit=load.concurrency, limit_per_host=load.concurrency)
    timeout = aiohttp.ClientTimeout(total=load.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        never = asyncio.Event()
        await _drive(
            session, load, requests=load.warmup_requests, duration_s=load.timeout_s, stop=never
        )
        print(json.dumps({"event": "warm"}), file=out, flush=True)
        if await lines.get() != "go":
            return _result(_Tally(), 0.0)
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch_stop(lines, stop))
        try:
            tally, elapsed_s = await _drive(
                session,
                load,
                requests=load.max_requests,
                duration_s=load.max_duration_s,
                stop=stop,
            )
        finally:
            watcher.cancel()
        return _result(tally, elapsed_s)


async def _watch_stop(lines: asyncio.Queue[str], stop: asyncio.Event) -> None:
    while await lines.get() != "stop":
        pass
    stop.set()


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines of stdin, stripped, fed from a thread; ``""`` at end of input."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


async def _serve() -> None:
    lines = _stdin_lines(asyncio.get_running_loop())
    while line := await lines.get():
        if line in ("go", "stop"):
            continue  # a stray control line between loads
        fields = json.loads(line)
        load = Load(**{**fields, "models": tuple(fields.get("models", ()))})
        result = await run_load(load, lines)
        print(json.dumps({"event": "done", **result}), flush=True)


def main() -> int:
    """``python -m bench.loadgen``: serve loads from stdin until it closes."""
    run_loop(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
