"""The load generator: one process, driven over stdin/stdout by JSON lines.

Owns the client side of every measurement. ``python -m bench.loadgen`` reads one
:class:`Load` per line (as JSON) and for each:

1. starts ``concurrency`` workers, each sending one request after another, and prints
   ``{"event": "warm"}`` once ``warmup_requests`` of them were answered (not recorded);
2. waits for the line ``go`` (the orchestrator starts its CPU and memory meters) while the
   workers keep going: nothing drains, so the measured phase starts in the steady state;
3. from ``go``, records every request *started* within the window of ``max_duration_s``
   seconds (ended early by ``stop``, end of input, or ``max_requests``, a safety cap;
   held open past its end until ``min_requests`` were started in it, so that a target
   slower than the window still yields samples rather than an empty row), then waits
   for those in flight and prints ``{"event": "done", ...}``: a :func:`run_load` result,
   raw latencies included so that the orchestrator can pool rounds.

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
from typing import Any, Literal, TextIO

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
    min_requests: int = 1
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


class _Run:
    """The workers of one load: unrecorded until :meth:`open_window`, then recording the
    requests started before the window closes."""

    def __init__(self, session: aiohttp.ClientSession, load: Load) -> None:
        self.session = session
        self.load = load
        self.bodies = _bodies(load)
        self.models = load.models or (str(load.body.get("model")),)
        self.tally = _Tally()
        self.warm = asyncio.Event()
        self.closed = asyncio.Event()
        self.window: tuple[float, float] | None = None  # (start, deadline), perf_counter
        self.closed_at = 0.0
        self._issued = 0
        self._recorded = 0
        self._last_start = 0.0
        self._answered_unrecorded = 0
        if load.warmup_requests <= 0:
            self.warm.set()

    def open_window(self) -> None:
        start = time.perf_counter()
        self.window = (start, start + self.load.max_duration_s)

    def close(self, at: float | None = None) -> None:
        if not self.closed.is_set():
            self.closed_at = time.perf_counter() if at is None else at
            self.closed.set()

    async def worker(self) -> None:
        scratch = _Tally()
        while not self.closed.is_set():
            now = time.perf_counter()
            record = self.window is not None
            if self.window is not None:
                if now >= self.window[1] and self._recorded >= self.load.min_requests:
                    self.close(max(self.window[1], self._last_start))
                    break
                if self._recorded >= self.load.max_requests:
                    self.close(now)
                    break
                self._recorded += 1
                self._last_start = now
            index = self._issued
            self._issued += 1
            stream = index % 2 == 1 if self.load.stream == "mixed" else bool(self.load.stream)
            body = self.bodies[self.models[index % len(self.models)], stream]
            await _one(self.session, self.load, body, stream, self.tally if record else scratch)
            if not record:
                self._answered_unrecorded += 1
                if self._answered_unrecorded >= self.load.warmup_requests:
                    self.warm.set()

    def elapsed_s(self) -> float:
        return 0.0 if self.window is None else max(0.0, self.closed_at - self.window[0])


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
        "latencies_s": tally.latencies_s,
        "ttfts_s": tally.ttfts_s,
    }


async def run_load(
    load: Load, lines: asyncio.Queue[str], out: TextIO | None = None
) -> dict[str, Any]:
    """Warm up, report ``warm`` on ``out`` (default stdout), wait for ``go`` on ``lines``
    (the workers keep running), record the measured window (``stop`` or ``""``, end of
    input, on ``lines`` ends it early; ``""`` is put back for the caller to see).

    Returns ``{"ok", "failed", "errors": {kind: count}, "elapsed_s" (the window),
    "throughput_rps", "latency_s": {"p50", "p99", "mean", "max"}, "ttft_s": same or None,
    "latencies_s": [every answered request's], "ttfts_s": [every stream's]}``, seconds;
    requests count when started inside the window.

    Raises:
        ValueError: the URL is not on 127.0.0.1.
    """
    _check_loopback(load.url)
    out = out or sys.stdout
    connector = aiohttp.TCPConnector(limit=load.concurrency, limit_per_host=load.concurrency)
    timeout = aiohttp.ClientTimeout(total=load.timeout_s)
    # JSON bodies say so (Portkey's gateway answers 400 to any other content type).
    json_type = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=json_type
    ) as session:
        run = _Run(session, load)
        workers = asyncio.gather(*(run.worker() for _ in range(load.concurrency)))
        watcher: asyncio.Task[None] | None = None
        try:
            await run.warm.wait()
            print(json.dumps({"event": "warm"}), file=out, flush=True)
            line = await lines.get()
            if line != "go":
                if line == "":
                    lines.put_nowait("")
                return _result(_Tally(), 0.0)
            run.open_window()
            watcher = asyncio.create_task(_watch_stop(lines, run))
        finally:
            if run.window is None:
                run.close()
                await workers
        await workers
        assert watcher is not None
        watcher.cancel()
        return _result(run.tally, run.elapsed_s())


async def _watch_stop(lines: asyncio.Queue[str], run: _Run) -> None:
    while (line := await lines.get()) not in ("stop", ""):
        pass
    if line == "":
        lines.put_nowait("")
    run.close()


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines of stdin, stripped, fed from a thread; ``""`` at end of input."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            if line.strip():
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
