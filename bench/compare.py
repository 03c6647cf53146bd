"""Targets side by side: every case, every target in turn, several rounds, medians.

Owns :class:`Case`, :class:`Budget`, :class:`LoadGen` (the client of the load generator
process), :func:`measure` (one target, one case: the load generator's figures plus the
proxy's CPU seconds and peak RSS over the measured phase and the work it does after it),
:func:`compare` (the round-robin), :func:`aggregate` (per target and case: percentiles of
the samples pooled over rounds, latency added over the direct call of the same round) and
:func:`lookup` (one row by target and case).

Order: for each round, for each case, every target once, the order rotated by round and
case, so that drift of the shared machine (other jobs, thermal) hits all targets alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import Load
from bench.stats import median, percentile
from bench.targets import MODEL, Target
from devstack.process import Process

__all__ = [
    "Budget",
    "Case",
    "LoadGen",
    "added_ms",
    "aggregate",
    "compare",
    "ints",
    "lookup",
    "markdown_rows",
    "measure",
    "request_body",
]

#: Fewer pooled samples than this and a p99 is not shown (its rank would rest on a handful
#: of the slowest requests).
MIN_P99_SAMPLES = 1000


@dataclass(frozen=True, slots=True)
class Case:
    """One load shape: streamed or not, at ``concurrency`` requests in flight."""

    stream: bool
    concurrency: int

    @property
    def label(self) -> str:
        """E.g. ``stream c=32``."""
        return f"{'stream' if self.stream else 'plain'} c={self.concurrency}"


@dataclass(frozen=True, slots=True)
class Budget:
    """Bounds of one measurement: requests started within ``max_duration_s`` seconds, the
    same window for every target; ``max_requests`` is only a safety cap. Before it,
    ``warmup_per_connection`` unrecorded requests per connection, without draining. The
    window is held open until as many recorded requests as connections were started: a
    target whose answers outlast the window (a stall) is measured, not left empty."""

    max_requests: int = 1_000_000
    max_duration_s: float = 3.0
    warmup_per_connection: int = 2
    timeout_s: float = 30.0


def request_body() -> dict[str, Any]:
    """The chat request every target gets (``stream`` is set per request)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 16,
    }


class LoadGen:
    """The load generator process (``python -m bench.loadgen``) and its line protocol."""

    def __init__(self, log_path: Path) -> None:
        self.process = Process(
            "loadgen", [sys.executable, "-m", "bench.loadgen"], log_path=log_path, pipes=True
        )
        self.process.start()

    def _send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def _read(self, event: str) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the load generator exited ({self.process.returncode}):\n"
                + self.process.log_tail()
            )
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"load generator said {message!r}, expected {event!r}")
        return message

    def begin(self, load: Load) -> None:
        """Send a load and wait until its warm-up is done."""
        self._send(json.dumps(dataclasses.asdict(load)))
        self._read("warm")

    def go(self) -> None:
        """Start the measured phase."""
        self._send("go")

    def stop(self) -> None:
        """End the measured phase early (requests in flight finish)."""
        self._send("stop")

    def finish(self) -> dict[str, Any]:
        """Wait for the measured phase's result (see :func:`bench.loadgen.run_load`)."""
        result = self._read("done")
        del result["event"]
        return result

    def close(self) -> None:
        """Close its stdin (it stops and exits), wait up to 30 s, then stop it."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):
            self.process.wait_exit(30)
        self.process.stop()


def make_load(target: Target, case: Case, budget: Budget) -> Load:
    """The load generator's job for ``target`` in ``case``."""
    return Load(
        url=target.url,
        body={**request_body(), "model": target.model},
        headers=target.headers,
        stream=case.stream,
        concurrency=case.concurrency,
        warmup_requests=budget.warmup_per_connection * case.concurrency,
        max_requests=budget.max_requests,
        min_requests=case.concurrency,
        max_duration_s=budget.max_duration_s,
        timeout_s=budget.timeout_s,
    )


def measure(
    loadgen: LoadGen,
    target: Target,
    load: Load,
    *,
    during: Callable[[], None] | None = None,
    reset_peak: bool = True,
) -> dict[str, Any]:
    """One measured phase of ``load`` against ``target``; ``during`` runs while it does
    (then the phase is stopped).

    Returns the load generator's result plus, for a proxy (None for the direct call):
    ``cpu_s`` (the proxy tree's CPU seconds from the window's start until it is idle
    again), ``cpu_s_per_1000`` (per 1,000 answered requests), ``settle_s`` (how long it
    took to become idle: below 2% of a CPU over 100 ms, at most 5 s), ``peak_rss_bytes``
    (:meth:`bench.procs.Meter.peak_rss_bytes`, reset just before the window unless
    ``reset_peak`` is False) and ``processes`` (the tree's process count).
    """
    meter = target.meter
    loadgen.begin(load)
    cpu_before = 0.0
    if meter is not None:
        if reset_peak:
            meter.reset_peak()
        cpu_before = meter.cpu_s()
    loadgen.go()
    if during is not None:
        try:
            during()
        finally:
            loadgen.stop()
    result = loadgen.finish()
    extra: dict[str, Any] = dict.fromkeys(
        ("cpu_s", "cpu_s_per_1000", "settle_s", "peak_rss_bytes", "processes")
    )
    if meter is not None:
        extra["settle_s"] = meter.settle()
        cpu_s = meter.cpu_s() - cpu_before
        extra["cpu_s"] = cpu_s
        extra["cpu_s_per_1000"] = 1000 * cpu_s / result["ok"] if result["ok"] else None
        extra["peak_rss_bytes"] = meter.peak_rss_bytes()
        extra["processes"] = meter.process_count()
    return {**result, **extra}


def compare(
    loadgen: LoadGen,
    targets: Sequence[Target],
    cases: Sequence[Case],
    *,
    rounds: int,
    budget: Budget,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Measure every target in every case, ``rounds`` times, in rotating order.

    Returns one record per measurement: ``{"round", "target", "stream", "concurrency",
    **measure(...)}``.
    """
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for index, case in enumerate(cases):
            shift = (round_ + index) % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                result = measure(loadgen, target, make_load(target, case, budget))
                runs.append(
                    {
                        "round": round_,
                        "target": target.name,
                        "stream": case.stream,
                        "concurrency": case.concurrency,
                        **result,
                    }
                )
                progress(
                    f"round {round_ + 1}/{rounds} {case.label:<13} {target.name:<9} "
                    f"{result['throughput_rps']:8.0f} req/s  "
                    f"p50 {_fmt_ms(result['latency_s']['p50'])}  "
                    f"p99 {_fmt_ms(result['latency_s']['p99'])}  failed {result['failed']}"
                )
    return runs


def _fmt_ms(seconds: float | None) -> str:
    return "    n/a" if seconds is None else f"{seconds * 1000:7.2f} ms"


def lookup(
    rows: Sequence[dict[str, Any]], target: str, stream: bool, concurrency: int
) -> dict[str, Any] | None:
    """The first row of ``target`` in the case (``stream``, ``concurrency``), or None."""
    for row in rows:
        if (row["target"], row["stream"], row["concurrency"]) == (target, stream, concurrency):
            return row
    return None


def _stat(run: dict[str, Any] | None, key: str, stat: str) -> float | None:
    """``run[key][stat]`` (e.g. latency_s / p50) as a float, None when absent."""
    value = (run or {}).get(key)
    found = value.get(stat) if isinstance(value, dict) else None
    return float(found) if isinstance(found, int | float) else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def added_ms(
    runs: Sequence[dict[str, Any]],
    direct: Sequence[dict[str, Any]],
    key: str,
    stat: str,
) -> float | None:
    """Median over rounds of (this run's ``key``/``stat`` - that of the direct call of the
    same round and case), ms; rounds without a direct figure are left out."""
    deltas: list[float | None] = []
    for run in runs:
        mine = _stat(run, key, stat)
        base = _stat(
            next(
                (
                    d
                    for d in direct
                    if (d["round"], d["stream"], d["concurrency"])
                    == (run["round"], run["stream"], run["concurrency"])
                ),
                None,
            ),
            key,
            stat,
        )
        deltas.append(None if mine is None or base is None else mine - base)
    return _ms(median(deltas))


def _pooled(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [x for r in runs for x in r.get(key) or ()]


def aggregate(
    runs: Sequence[dict[str, Any]],
    cases: Sequence[Case],
    *,
    min_p99_samples: int = MIN_P99_SAMPLES,
) -> list[dict[str, Any]]:
    """Per target and case: ``n`` (latency samples pooled over rounds), ``latency_p50_ms``,
    ``latency_p99_ms``, ``ttft_p50_ms``, ``ttft_p99_ms`` (streams) of the pooled samples
    (``runs`` carry raw ``latencies_s`` and ``ttfts_s``); ``added_p50_ms`` and
    ``added_ttft_p50_ms``: median over rounds of the difference to the direct call of the
    same round; ``added_p99_ms``: pooled p99 minus the direct call's pooled p99 (None for
    direct); ``p99_reliable``: both pools hold ``min_p99_samples`` or more; medians over
    rounds of ``throughput_rps`` and ``cpu_s_per_1000``; the maximum ``peak_rss_bytes``,
    ``settle_s`` and ``processes``; summed ``ok`` and ``failed``."""
    direct = [r for r in runs if r["target"] == "direct"]
    names = list(dict.fromkeys(r["target"] for r in runs))
    results = []
    for case in cases:
        base = [
            r for r in direct if (r["stream"], r["concurrency"]) == (case.stream, case.concurrency)
        ]
        base_lat = _pooled(base, "latencies_s")
        for name in names:
            mine = [
                r
                for r in runs
                if (r["target"], r["stream"], r["concurrency"])
                == (name, case.stream, case.concurrency)
            ]
            if not mine:
                continue
            proxy = name != "direct"
            lat, ttft = _pooled(mine, "latencies_s"), _pooled(mine, "ttfts_s")
            p99 = _ms(percentile(lat, 0.99))
            base_p99 = _ms(percentile(base_lat, 0.99))

            def most(key: str, of: list[dict[str, Any]] = mine) -> Any:
                values = [r[key] for r in of if r.get(key) is not None]
                return max(values) if values else None

            results.append(
                {
                    "target": name,
                    "stream": case.stream,
                    "concurrency": case.concurrency,
                    "rounds": len(mine),
                    "n": len(lat),
                    "ok": sum(r["ok"] for r in mine),
                    "failed": sum(r["failed"] for r in mine),
                    "throughput_rps": median([r["throughput_rps"] for r in mine]),
                    "latency_p50_ms": _ms(percentile(lat, 0.5)),
                    "latency_p99_ms": p99,
                    "ttft_p50_ms": _ms(percentile(ttft, 0.5)),
                    "ttft_p99_ms": _ms(percentile(ttft, 0.99)),
                    "added_p50_ms": added_ms(mine, base, "latency_s", "p50") if proxy else None,
                    "added_p99_ms": p99 - base_p99
                    if proxy and p99 is not None and base_p99 is not None
                    else None,
                    "added_ttft_p50_ms": added_ms(mine, base, "ttft_s", "p50")
                    if proxy and case.stream
                    else None,
                    "p99_reliable": min(len(lat), len(base_lat) if proxy else len(lat))
                    >= min_p99_samples,
                    "cpu_s_per_1000": median([r["cpu_s_per_1000"] for r in mine]),
                    "peak_rss_bytes": most("peak_rss_bytes"),
                    "settle_s": most("settle_s"),
                    "processes": most("processes"),
                }
            )
    return results


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers (``1,32``), for flags such as ``--concurrency``."""
    return tuple(int(x) for x in text.split(",") if x)


def markdown_rows(
    results: Sequence[dict[str, Any]], keys: Sequence[str], *, counts: bool = False
) -> list[str]:
    """One markdown table row per :func:`aggregate` row: its case (``plain c=8``), its
    target, then the values of ``keys`` with two decimals ("-" when None); ``counts``:
    then its ``ok`` and ``failed``."""
    lines = []
    for row in results:
        case = f"{'stream' if row['stream'] else 'plain'} c={row['concurrency']}"
        cells = [row.get(k) for k in keys]
        shown = " | ".join("-" if v is None else f"{v:.2f}" for v in cells)
        tail = f" | {row['ok']} | {row['failed']}" if counts else ""
        lines.append(f"| {case} | {row['target']} | {shown}{tail} |")
    return lines
