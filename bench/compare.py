"""Targets side by side: every case, every target in turn, several rounds, medians.

Owns :class:`Case`, :class:`Budget`, :class:`LoadGen` (the client of the load generator
process), :func:`measure` (one target, one case: the load generator's figures plus the
proxy's CPU seconds and peak RSS over the measured phase only), :func:`compare` (the
round-robin) and :func:`aggregate` (medians per target and case, latency added over the
direct call of the same round).

Order: for each round, for each case, every target once, the order rotated by round and
case, so that drift of the shared machine (other jobs, thermal) hits all targets alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.loadgen import Load
from bench.stats import median
from bench.targets import MODEL, Target

__all__ = ["Budget", "Case", "LoadGen", "aggregate", "compare", "measure", "request_body"]


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
    """Bounds of one measurement: at most ``max_requests`` requests or ``max_duration_s``
    seconds, after ``warmup_per_connection`` unrecorded requests per connection."""

    max_requests: int = 3000
    max_duration_s: float = 2.0
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
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self.log_path = log_path

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _read(self, event: str) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(
                f"the load generator exited ({self.proc.poll()}):\n"
                + self.log_path.read_text(errors="replace")[-3000:]
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
        """Close its stdin (it exits) and wait for it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def make_load(target: Target, case: Case, budget: Budget) -> Load:
    """The load generator's job for ``target`` in ``case``."""
    return Load(
        url=target.url,
        body=request_body(),
        headers=target.headers,
        stream=case.stream,
        concurrency=case.concurrency,
        warmup_requests=budget.warmup_per_connection * case.concurrency,
        max_requests=budget.max_requests,
        max_duration_s=budget.max_duration_s,
        timeout_s=budget.timeout_s,
    )


def measure(
    loadgen: LoadGen,
    target: Target,
    load: Load,
    *,
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One measured phase of ``load`` against ``target``; ``during`` runs while it does
    (then the phase is stopped).

    Returns the load generator's result plus ``cpu_s`` (proxy CPU seconds in the phase),
    ``cpu_s_per_1000`` (per 1,000 answered requests) and ``peak_rss_bytes`` (largest
    sampled RSS of the proxy's process tree); the three are None for the direct call.
    """
    meter = target.meter
    loadgen.begin(load)
    cpu_before = meter.cpu_s() if meter else 0.0
    with meter.sampling() if meter else contextlib.nullcontext():
        loadgen.go()
        if during is not None:
            try:
                during()
            finally:
                loadgen.stop()
        result = loadgen.finish()
    cpu_s = meter.cpu_s() - cpu_before if meter else None
    result["cpu_s"] = cpu_s
    result["cpu_s_per_1000"] = (
        1000 * cpu_s / result["ok"] if cpu_s is not None and result["ok"] else None
    )
    result["peak_rss_bytes"] = meter.peak_rss_bytes if meter else None
    return result


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


def _stat(run: dict[str, Any] | None, key: str, stat: str) -> float | None:
    """``run[key][stat]`` (e.g. latency_s / p50) as a float, None when absent."""
    value = (run or {}).get(key)
    found = value.get(stat) if isinstance(value, dict) else None
    return float(found) if isinstance(found, int | float) else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _median_ms(runs: Sequence[dict[str, Any]], key: str, stat: str) -> float | None:
    return _ms(median([_stat(r, key, stat) for r in runs]))


def _added_ms(
    runs: Sequence[dict[str, Any]],
    direct: dict[tuple[int, bool, int], dict[str, Any]],
    key: str,
    stat: str,
) -> float | None:
    """Median over rounds of (this run's figure - the direct call's in the same round)."""
    deltas: list[float | None] = []
    for run in runs:
        mine = _stat(run, key, stat)
        base = _stat(direct.get((run["round"], run["stream"], run["concurrency"])), key, stat)
        deltas.append(None if mine is None or base is None else mine - base)
    return _ms(median(deltas))


def aggregate(runs: Sequence[dict[str, Any]], cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per target and case, medians over rounds: ``throughput_rps``, ``latency_p50_ms``,
    ``latency_p99_ms``, ``ttft_p50_ms``, ``ttft_p99_ms`` (streams), ``added_p50_ms``,
    ``added_p99_ms``, ``added_ttft_p50_ms`` (over the direct call of the same round; None
    for direct), ``cpu_s_per_1000``; the maximum ``peak_rss_bytes``; summed ``ok`` and
    ``failed``."""
    direct = {
        (r["round"], r["stream"], r["concurrency"]): r for r in runs if r["target"] == "direct"
    }
    names = list(dict.fromkeys(r["target"] for r in runs))
    results = []
    for case in cases:
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
            rss = [r["peak_rss_bytes"] for r in mine if r["peak_rss_bytes"] is not None]
            results.append(
                {
                    "target": name,
                    "stream": case.stream,
                    "concurrency": case.concurrency,
                    "rounds": len(mine),
                    "ok": sum(r["ok"] for r in mine),
                    "failed": sum(r["failed"] for r in mine),
                    "throughput_rps": median([r["throughput_rps"] for r in mine]),
                    "latency_p50_ms": _median_ms(mine, "latency_s", "p50"),
                    "latency_p99_ms": _median_ms(mine, "latency_s", "p99"),
                    "ttft_p50_ms": _median_ms(mine, "ttft_s", "p50"),
                    "ttft_p99_ms": _median_ms(mine, "ttft_s", "p99"),
                    "added_p50_ms": _added_ms(mine, direct, "latency_s", "p50") if proxy else None,
                    "added_p99_ms": _added_ms(mine, direct, "latency_s", "p99") if proxy else None,
                    "added_ttft_p50_ms": _added_ms(mine, direct, "ttft_s", "p50")
                    if proxy and case.stream
                    else None,
                    "cpu_s_per_1000": median([r["cpu_s_per_1000"] for r in mine]),
                    "peak_rss_bytes": max(rss) if rss else None,
                }
            )
    return results
