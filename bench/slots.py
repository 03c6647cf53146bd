"""The added latency of one maxAsync across replicas: a gateway with ``--concurrency-store``
beside one without, in one run, on loopback.

Owns :func:`run` (``python -m bench.slots``). Processes: the benchmark's upstream
(``bench.upstream``, answers at once), a real ``redis-server`` (``devstack.redis``), and two
real ``rolegate-gateway --manifests FILE`` processes serving the same role (maxAsync 4096:
nothing queues), one of them with ``--concurrency-store``. The client (aiohttp, this
process) sends non-streamed chat calls at concurrency 1 and 16, alternating the two
gateways per round so that drift of the shared machine hits both alike. Per request the
store costs one round trip before the upstream call (the acquire script) and one after
the answer (the release, in the background). Also measured in this process: the store's
acquire+release pair alone (:class:`rolegate_gateway.slots.SlotStore`), sequentially.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp

from bench.compare import request_body
from bench.stats import percentile
from bench.targets import MODEL, role, start_upstream, write_roles
from bench.upstream import UpstreamSettings
from devstack import http
from devstack.poll import wait_until
from devstack.process import Process, work_dir
from devstack.redis import RedisProcess, ensure_installed
from rolegate_gateway.slots import SlotStore

__all__ = ["run"]

RESULTS = Path(__file__).parent / "results" / "2026-12-02-slots.md"


def _gateway(workdir: Path, name: str, roles: Path, store: str | None) -> Process:
    """A gateway process (not started) serving ``roles``, with the store when given."""
    argv = [sys.executable, "-m", "rolegate_gateway", "--manifests", str(roles), "--port", "0"]
    if store:
        argv += ["--concurrency-store", store]
    return Process(name, argv, log_path=workdir / f"{name}.log")


async def _latencies(
    session: aiohttp.ClientSession, url: str, requests: int, concurrency: int
) -> list[float]:
    """``requests`` calls, ``concurrency`` at a time (closed loop): seconds each."""
    body = request_body()
    samples: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{url}: HTTP {answer.status}")
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def _store_pair(url: str, count: int) -> list[float]:
    """Seconds of one acquire (awaited) + release (awaited) on the store, ``count`` times."""
    store = SlotStore(url)
    await store.start()
    slots = store.for_role("bench-pair")
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            slot, _ = await slots.try_acquire(4096, 0)
            assert slot is not None
            slots.held.pop(slot)
            await store.io.release(keys=[slots.key, slots.waiting], args=[slot, slots.channel])
            samples.append(time.perf_counter() - started)
    finally:
        await store.close()
    return samples


def _ms(samples: list[float], q: float) -> float:
    value = percentile(samples, q)
    return 1000 * (value or 0.0)


async def _measure(urls: dict[str, str], rounds: int, requests: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # warm-up: connections, scripts loaded, caches
            await _latencies(session, url, 200, 4)
        for n in range(rounds):
            order = list(urls.items()) if n % 2 == 0 else list(reversed(urls.items()))
            for concurrency in (1, 16):
                for name, url in order:
                    key = f"{name} c={concurrency}"
                    got = await _latencies(session, url, requests, concurrency)
                    results.setdefault(key, []).extend(got)
    return results


def run(rounds: int, requests: int, out: Path | None) -> str:
    """Measure and return the markdown report (also written to ``out``)."""
    with work_dir("rolegate-bench-slots-") as workdir:
        redis = RedisProcess(binary=ensure_installed(), work=workdir / "redis")
        with redis, contextlib.ExitStack() as stack:
            upstream = start_upstream(workdir, UpstreamSettings())  # started: stop it after
            stack.callback(upstream.stop)
            redis.wait_serving()
            roles = write_roles(workdir / "roles.yaml", [role(MODEL, f"{upstream.url}/v1")])
            local = _gateway(workdir, "no-store", roles, None)
            shared = _gateway(workdir, "store", roles, redis.url)
            with local, shared:
                for gateway in (local, shared):
                    gateway.wait_ready(partial(_url, gateway), what="listening", timeout_s=30)
                urls = {"no store": _url(local), "store": _url(shared)}
                # A new store: the gateway admits through it after its rejoin grace.
                wait_until(
                    lambda: (
                        http.get_json(f"{urls['store']}/status")["concurrency"]["mode"] == "global"
                    ),
                    timeout_s=30,
                    what="the store gateway in global mode",
                )
                samples = asyncio.run(_measure(urls, rounds, requests))
                pair = asyncio.run(_store_pair(redis.url, 2000))
    lines = [
        "# One maxAsync across replicas: added latency of the store, 2026-12-02",
        "",
        f"`python -m bench.slots --rounds {rounds} --requests {requests}` on the shared 2-CPU",
        "machine: the benchmark's upstream (answers at once), a loopback `redis-server`, and",
        "two `rolegate-gateway --manifests` processes serving the same role (maxAsync 4096),",
        "one with `--concurrency-store redis://127.0.0.1:PORT/0`. Non-streamed chat calls;",
        "the two gateways alternate per round. Latency is the client's, in ms.",
        "",
        "| case | n | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|---|",
    ]
    for key, got in samples.items():
        mean = 1000 * sum(got) / len(got)
        lines.append(
            f"| {key} | {len(got)} | {_ms(got, 0.5):.3f} | {_ms(got, 0.9):.3f} "
            f"| {_ms(got, 0.99):.3f} | {mean:.3f} |"
        )
    lines += ["", "| concurrency | added p50 ms | ratio p50 (store / no store) |", "|---|---|---|"]
    for concurrency in (1, 16):
        base = _ms(samples[f"no store c={concurrency}"], 0.5)
        with_store = _ms(samples[f"store c={concurrency}"], 0.5)
        lines.append(f"| {concurrency} | {with_store - base:.3f} | {with_store / base:.2f} |")
    lines += [
        "",
        f"The store's acquire + release pair alone (awaited, sequential, {len(pair)} times, "
        f"this process): p50 {_ms(pair, 0.5):.3f} ms, p99 {_ms(pair, 0.99):.3f} ms.",
        "",
    ]
    report = "\n".join(lines)
    if out is not None:
        out.write_text(report)
    return report


def _url(gateway: Process) -> str:
    """Where the gateway listens, from its "serving ... on URL/v1" line ('' before)."""
    return gateway.url_in_log(r"on (http://127\.0\.0\.1:\d+)/v1")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.slots", description=__doc__)
    p.add_argument("--rounds", type=int, default=4, help="rounds per target and case (4)")
    p.add_argument("--requests", type=int, default=1000, help="requests per round (1000)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"report file ({RESULTS})")
    args = p.parse_args()
    print(run(args.rounds, args.requests, args.out))


if __name__ == "__main__":
    main()
