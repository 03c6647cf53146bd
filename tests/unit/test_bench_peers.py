"""The benchmark's peers without running them: a peer that cannot be installed is skipped
with the reason, one that does not start is an error, both reach the report; the figures
side by side say where rolegate is ahead of every peer but nginx; nginx's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.peers import Peer, start_peer
from bench.targets import Target
from devstack.apt import AptUnavailable
from devstack.cache import BuildFailed
from devstack.peers import nginx
from devstack.process import ProcessDied


def _fails(exc: BaseException) -> Any:
    def raise_(*_: Any) -> Any:
        raise exc

    return raise_


def _started(workdir: Path, v1: str, headers: dict[str, str], installed: Path) -> Any:
    return Target("peer", f"{v1}/chat/completions", headers), {"command": str(installed)}


def test_a_peer_that_cannot_be_installed_is_skipped_with_the_reason(tmp_path: Path) -> None:
    for exc in (BuildFailed("npm ci exited with 1: ENOTFOUND"), AptUnavailable("no apt-get")):
        peer = Peer("peer", "1.0", _fails(exc), _started)
        target, info = start_peer(peer, tmp_path, "http://127.0.0.1:1/v1", {})
        assert target is None
        assert info == {"version": "1.0", "skipped": f"not installable here: {exc}"}


def test_a_peer_that_does_not_start_is_an_error_and_one_that_does_has_its_url(
    tmp_path: Path,
) -> None:
    peer = Peer("peer", "1.0", lambda _: tmp_path, _fails(ProcessDied("exited 1: bad config")))
    target, info = start_peer(peer, tmp_path, "http://127.0.0.1:1/v1", {})
    assert target is None
    assert info["error"] == "exited 1: bad config"
    assert "skipped" not in info

    peer = Peer("peer", "1.0", lambda _: tmp_path, _started)
    target, info = start_peer(peer, tmp_path, "http://127.0.0.1:1/v1", {"a": "b"})
    assert target is not None
    assert target.headers == {"a": "b"}
    assert info == {"version": "1.0", "url": "http://127.0.0.1:1/v1", "command": str(tmp_path)}


def _row(target: str, stream: bool, concurrency: int, rps: float, **more: Any) -> dict[str, Any]:
    return {
        "target": target,
        "stream": stream,
        "concurrency": concurrency,
        "n": 10,
        "ok": 10,
        "failed": 0,
        "throughput_rps": rps,
        "latency_p50_ms": 1.0,
        "latency_p99_ms": 2.0,
        "ttft_p50_ms": 0.5 if stream else None,
        "added_p50_ms": more.get("added", 0.0 if target != "direct" else None),
        "added_p99_ms": None,
        "added_ttft_p50_ms": None,
        "p99_reliable": False,
        "cpu_s_per_1000": more.get("cpu"),
        "peak_rss_bytes": 50e6,
    }


def _doc() -> dict[str, Any]:
    results = []
    for stream in (False, True):
        for c in (1, 32):
            results += [
                _row("direct", stream, c, 1000),
                _row("rolegate", stream, c, 500, added=1.0, cpu=0.2),
                _row("tensorzero", stream, c, 600, added=2.0, cpu=0.1),
                _row("nginx", stream, c, 900, added=0.1, cpu=0.05),
            ]
    rss = {"peak_rss_bytes": 50e6}
    return {
        "date": "2026-12-02 08:00 UTC",
        "machine": {
            "cpu_count": 2,
            "loadavg_before": [1, 1, 1],
            "loadavg_after": [1, 1, 1],
            "python": "3.11",
        },
        "versions": {"rolegate": "0.1.0"},
        "settings": {
            "concurrency": [1, 32],
            "max_duration_s": 3,
            "rounds": 1,
            "min_p99_samples": 1000,
            "upstream": {"delay_s": 0, "chunks": 8, "chunk_interval_s": 0.001},
        },
        "targets": {
            "direct": {},
            "rolegate": {"workers": 1} | rss,
            "tensorzero": {"version": "2026.6.0"} | rss | {"peak_rss_bytes": 70e6},
            "portkey": {"version": "1.15.2", "skipped": "not installable here: no npm"},
            "nginx": {"version": "nginx/1.22.1"} | rss | {"peak_rss_bytes": 10e6},
        },
        "results": results,
        "rolegate_alone": {
            "rss_by_roles": [],
            "apply": {"roles": 1, "reload_interval_s": 1}
            | dict.fromkeys(("apply_s", "rebind_s", "load_manifests_s", "runtime_apply_s")),
            "reloads_under_load": {"applied": 1, "reloads": 1, "concurrency": 1, "failed": 0}
            | {"requests": 1, "reload_p50_s": None, "reload_max_s": None},
        },
        "goals": [],
    }


def test_peer_figures_say_where_rolegate_is_ahead_of_every_peer_but_nginx() -> None:
    doc = _doc()
    rows = {row["figure"]: row for row in report.peer_figures(doc)}
    assert next(iter(rows)) == "throughput / direct's, plain c=32"  # c=1 is not a throughput
    throughput = rows["throughput / direct's, plain c=32"]
    assert throughput["values"]["rolegate"] == 0.5
    assert throughput["values"]["portkey"] is None
    assert throughput["rolegate_ahead"] is False  # tensorzero: 0.6; nginx is not counted
    assert throughput["not_beaten"] == ["tensorzero"]
    added = rows["+p50 ms, plain c=1"]
    assert added["rolegate_ahead"] is None  # ahead of tensorzero; portkey was skipped
    assert added["missing"] == ["portkey"]
    assert rows["peak RSS MB (largest of any case)"]["values"]["nginx"] == 10.0
    assert "+p50 ms, stream c=32" in rows
    assert "+TTFT p50 ms, stream c=1" in rows
    del doc["targets"]["portkey"]
    rows = {row["figure"]: row for row in report.peer_figures(doc)}
    assert rows["+p50 ms, plain c=1"]["rolegate_ahead"] is True


def test_the_report_lists_a_skipped_peer_with_its_reason() -> None:
    table = report.markdown(_doc())
    assert "**portkey skipped:** not installable here: no npm" in table
    assert "- portkey (skipped): version 1.15.2" in table
    assert (
        "| figure | rolegate | tensorzero | portkey | nginx | rolegate ahead of all but nginx |"
        in table
    )
    assert "| +p50 ms, plain c=1 | 1.00 | 2.00 | - | 0.10 | n/a (no figure for portkey) |" in table


def test_nginx_config_keeps_upstream_connections_and_stays_on_loopback(tmp_path: Path) -> None:
    conf = nginx.render_config(port=8081, upstream="127.0.0.1:9000", workdir=tmp_path, workers=1)
    for line in (
        "worker_processes 1;",
        "listen 127.0.0.1:8081;",
        "server 127.0.0.1:9000;",
        "keepalive 64;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "access_log off;",
        f"pid {tmp_path / 'nginx.pid'};",
        f"proxy_temp_path {tmp_path / 'proxy'};",
    ):
        assert line in conf, line
