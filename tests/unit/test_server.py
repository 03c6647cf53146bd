"""The open-files limit and the throttled log of client misbehaviour."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from rolegate_gateway.logs import Throttled
from rolegate_gateway.server import raise_nofile_limit


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    """The open-files limit, restored after the test."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(nofile: tuple[int, int]) -> None:
    _, hard = nofile
    if hard == resource.RLIM_INFINITY or hard < 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    assert raise_nofile_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_throttled_logs_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("rolegate_gateway.logs.time.monotonic", lambda: now[0])
    log = Throttled(logging.getLogger("test.throttled"), interval_s=10)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(1000):
            log.warning("flood", "bad request %d", 400)
        log.warning("other", "another kind")
        now[0] += 11
        log.warning("flood", "bad request %d", 400)
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 400",
        "another kind",
        "bad request 400 (999 more in the last 11 s)",
    ]
