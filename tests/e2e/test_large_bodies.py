"""Large request bodies cost the gateway bounded memory and event-loop time.

Runs :mod:`bench.large_bodies` (the ``rolegate-gateway`` CLI as a process, the benchmark's
upstream) and holds its figures to generous bounds; the measured ones are in the README.
Before the intake was bounded, one 60 MB body of tiny lists took the gateway from ~50 MB
to ~1.7 GB and blocked ``/healthz`` for ~8 s; four at once, ~6.4 GB and ~15 s. Since such a
body's values are counted as it arrives, it is refused holding nothing (not joined, not
sent to a worker): four at once cost ~0 MB, not ~720 MB.
"""

from __future__ import annotations

from pathlib import Path

from bench.large_bodies import measure

MB = 1_000_000


def test_large_bodies_keep_memory_and_loop_time_bounded(tmp_path: Path) -> None:
    figures = measure(tmp_path)
    one, four, images = figures["tiny_lists"], figures["tiny_lists_x4"], figures["images"]
    assert one["codes"] == [400]  # more JSON values than a request may hold
    assert four["codes"] == [400] * 4
    assert images["codes"] == [200] * 4
    assert figures["first_large"]["codes"] == [200]
    assert figures["first_large"]["healthz_max_ms"] < 250, figures  # workers start off-loop
    assert one["healthz_max_ms"] < 1_000, figures
    assert four["healthz_max_ms"] < 2_000, figures
    assert images["healthz_max_ms"] < 250, figures
    # refused as they arrive: not even one of them is held whole
    assert one["peak_rss_above_idle_mb"] < 60, figures
    assert four["peak_rss_above_idle_mb"] < 60, figures
    assert images["peak_rss_above_idle_mb"] < 6 * 4 * 8, figures
    # an 8 MB image request never holds up another role's stream for long
    assert figures["stream_max_gap_ms"] < 250, figures
