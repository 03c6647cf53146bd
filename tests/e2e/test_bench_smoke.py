"""The benchmark harness on a tiny run: every target answers, the results hold every figure.

The run is real (upstream, load generator, the ``rolegate-gateway`` CLI and the peers --
LiteLLM's proxy, TensorZero's gateway, Portkey's gateway, nginx -- as processes on loopback)
but a few seconds long; the figures' values are not checked, only that each was measured.
Each peer is installed first when it is not cached (:mod:`devstack.peers`: LiteLLM 1-2
minutes once, TensorZero ~35 s, Portkey ~25 s, nginx a few seconds; progress on the
terminal): a harness that silently skipped a target would prove nothing. The harness may
skip a peer that cannot be installed on a machine, with the reason; here all of them must
install, so every one must answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.compare import Budget
from bench.run import Settings, run
from devstack.peers import litellm, nginx, portkey, tensorzero
from tests.fixtures.cluster import capture_suspended

PEERS = ["litellm", "tensorzero", "portkey", "nginx"]
TARGETS = ["direct", "rolegate", *PEERS]
CONCURRENCY = (1, 8)
ROLE_COUNTS = (1, 10)


@pytest.fixture(scope="module")
def peers_ready(pytestconfig: pytest.Config) -> None:
    """Every peer, pinned, installed (progress on the terminal) when missing; an install
    that fails here fails the test (on a machine that cannot install one, the run would
    skip it with the reason, see test_a_peer_that_does_not_run_says_why)."""
    for peer in (litellm, tensorzero, portkey, nginx):
        if not peer.is_built():
            with capture_suspended(pytestconfig):
                peer.ensure()


@pytest.fixture(scope="module")
def results(peers_ready: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    settings = Settings(
        rounds=1,
        concurrency=CONCURRENCY,
        budget=Budget(max_duration_s=0.5, warmup_per_connection=1),
        role_counts=ROLE_COUNTS,
        apply_roles=50,
        reloads=3,
        reload_concurrency=4,
        min_p99_samples=1,
    )
    before = set(psutil.Process().children(recursive=True))  # other fixtures' servers
    doc = run(settings, out_dir=out, name="smoke")
    assert set(psutil.Process().children(recursive=True)) == before  # the bench's all stopped
    assert json.loads((out / "smoke.json").read_text()) == json.loads(json.dumps(doc))
    doc["_out"] = str(out)
    return doc


def test_every_target_answered_in_every_case(results: dict[str, Any]) -> None:
    assert list(results["targets"]) == TARGETS
    for name in TARGETS:
        assert "error" not in results["targets"][name], results["targets"][name]
        assert "skipped" not in results["targets"][name], results["targets"][name]
    cases = {(r["target"], r["stream"], r["concurrency"]): r for r in results["results"]}
    for name in TARGETS:
        for stream in (False, True):
            for concurrency in CONCURRENCY:
                row = cases[name, stream, concurrency]
                assert row["ok"] > 0, row
                assert row["n"] == row["ok"], row
                assert row["failed"] == 0, row


def _present(row: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if row.get(k) is None]
    assert not missing, (missing, row)


def test_results_hold_every_figure(results: dict[str, Any]) -> None:
    _present(results["machine"], "cpu_count", "loadavg_before", "loadavg_after")
    for row in results["results"]:
        _present(row, "throughput_rps", "latency_p50_ms", "latency_p99_ms")
        if row["stream"]:
            _present(row, "ttft_p50_ms", "ttft_p99_ms")
        assert row["throughput_rps"] > 0, row
        if row["target"] != "direct":
            _present(row, "added_p50_ms", "added_p99_ms", "cpu_s_per_1000", "peak_rss_bytes")
            assert row["cpu_s_per_1000"] > 0, row
            assert row["peak_rss_bytes"] > 0, row
            assert row["processes"] >= 1, row
            if row["stream"]:
                _present(row, "added_ttft_p50_ms")
    for name in ("rolegate", *PEERS):
        _present(results["targets"][name], "peak_rss_bytes", "processes", "threads", "workers")
        assert results["targets"][name]["peak_rss_bytes"] > 0
    for name in PEERS:
        _present(results["targets"][name], "version", "url", "command")
        assert results["targets"][name]["url"].startswith("http://127.0.0.1:")
    assert results["targets"]["nginx"]["processes"] == 2  # master and one worker
    figures = {row["figure"]: row for row in results["peers"]}
    for figure in (
        "throughput / direct's, plain c=8",
        "throughput / direct's, stream c=8",
        "+p50 ms, plain c=1",
        "+p99 ms, stream c=8",
        "+TTFT p50 ms, stream c=1",
        "CPU s / 1k req, stream c=8",
        "peak RSS MB (largest of any case)",
    ):
        row = figures[figure]
        _present(row["values"], "rolegate", *PEERS)
        assert row["rolegate_ahead"] in (True, False), row  # every figure there: judged
        assert "nginx" not in row["not_beaten"], row
    assert all("latencies_s" not in r for r in results["runs"])  # pooled, not kept

    alone = results["rolegate_alone"]
    assert [r["roles"] for r in alone["rss_by_roles"]] == list(ROLE_COUNTS)
    for row in alone["rss_by_roles"]:
        _present(row, "rss_bytes", "peak_rss_bytes", "startup_s")
    _present(alone["apply"], "apply_s", "rebind_s", "load_manifests_s", "runtime_apply_s")
    reloads = alone["reloads_under_load"]
    _present(reloads, "failed", "requests", "reload_p50_s")
    assert reloads["applied"] == reloads["reloads"] == 3, reloads
    assert reloads["failed_reloads"] == {}, reloads
    assert reloads["failed"] == 0, reloads
    assert all(goal["met"] is not None for goal in results["goals"]), results["goals"]


def test_markdown_and_chart_are_written(results: dict[str, Any]) -> None:
    out = Path(results["_out"])
    table = (out / "smoke.md").read_text()
    for name in TARGETS:
        assert f"| {name} |" in table
    assert "| figure | rolegate | litellm | tensorzero | portkey | nginx |" in table
    assert (out / "smoke.png").read_bytes().startswith(b"\x89PNG")


def test_a_peer_that_does_not_run_says_why(results: dict[str, Any]) -> None:
    """Wherever a peer is skipped or fails, the JSON and the report give the reason (none
    is expected here; the reasons' shape is unit-tested in test_bench_peers.py)."""
    table = (Path(results["_out"]) / "smoke.md").read_text()
    for name, info in results["targets"].items():
        for state, said in (("skipped", "skipped"), ("error", "did not run")):
            if state in info:
                assert info[state].strip(), info
                assert f"**{name} {said}:** {info[state]}" in table
