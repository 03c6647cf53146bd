"""The benchmark's arithmetic: percentiles, added latency paired by round, the goals."""

from __future__ import annotations

from typing import Any

import pytest

from bench.compare import added_ms
from bench.report import goals
from bench.stats import median, percentile


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 0.99) == pytest.approx(99.0)
    assert median([None, 1.0, 5.0, None]) == pytest.approx(3.0)


def _run(round_: int, target: str, p50_s: float) -> dict[str, Any]:
    return {
        "round": round_,
        "target": target,
        "stream": False,
        "concurrency": 32,
        "latency_s": {"p50": p50_s},
    }


def test_added_latency_pairs_each_run_with_the_direct_call_of_its_round() -> None:
    direct = [_run(0, "direct", 0.001), _run(1, "direct", 0.010), _run(2, "direct", 0.002)]
    mine = [_run(0, "rolegate", 0.002), _run(1, "rolegate", 0.011), _run(2, "rolegate", 0.005)]
    # same-round deltas 1, 1, 3 ms -> median 1; unpaired medians would give 5 - 2 = 3
    assert added_ms(mine, direct, "latency_s", "p50") == pytest.approx(1.0)
    assert added_ms(mine, direct[:1], "latency_s", "p50") == pytest.approx(1.0)
    assert added_ms(mine, [], "latency_s", "p50") is None


def _row(target: str, stream: bool, rps: float, **figures: Any) -> dict[str, Any]:
    return {"target": target, "stream": stream, "concurrency": 32, "throughput_rps": rps, **figures}


def _doc(p99_reliable: bool) -> dict[str, Any]:
    rolegate = {
        "added_p50_ms": 0.5,
        "added_p99_ms": 4.0,
        "added_ttft_p50_ms": 2.0,
        "p99_reliable": p99_reliable,
    }
    return {
        "settings": {"concurrency": [1, 32]},
        "results": [
            _row("rolegate", False, 2000, **rolegate),
            _row("litellm", False, 100),
            _row("rolegate", True, 500, **rolegate),
            _row("litellm", True, 100),
        ],
        "rolegate_alone": {
            "rss_by_roles": [
                {"roles": 1, "peak_rss_bytes": 50e6},
                {"roles": 9, "peak_rss_bytes": 2e8},
            ],
            "apply": {"roles": 9, "apply_s": 0.3},
            "reloads_under_load": {"reloads": 3, "failed": 0},
        },
    }


def test_goals_report_each_figure_and_whether_it_is_met() -> None:
    met = {g["goal"]: (g["value"], g["met"]) for g in goals(_doc(p99_reliable=True))}
    assert met["plain c=32: throughput >= 10x LiteLLM's"] == (20.0, True)
    assert met["stream c=32: throughput >= 10x LiteLLM's"] == (5.0, False)
    assert met["plain c=32: added latency p50 <= 1 ms"] == (0.5, True)
    assert met["plain c=32: added latency p99 <= 5 ms"] == (4.0, True)
    assert met["stream c=32: added time to first token p50 <= 1 ms"] == (2.0, False)
    assert met["peak RSS with 9 roles <= 150 MB"] == (200.0, False)
    assert met["9-role config applied in < 1 s"] == (0.3, True)
    assert met["failed requests during 3 reloads under load == 0"] == (0, True)


def test_a_p99_on_too_few_samples_is_not_judged() -> None:
    met = {g["goal"]: (g["value"], g["met"]) for g in goals(_doc(p99_reliable=False))}
    assert met["plain c=32: added latency p99 <= 5 ms"] == (None, None)
