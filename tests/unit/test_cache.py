"""Cached builds say only their progress while they run, keep everything in a build log, and
show the hidden lines when they fail (devstack.cache, with the Kubernetes build's filter)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from devstack.cache import BuildFailed, run_with_progress
from devstack.k8s import build as k8s_build

GO_CHATTER = [f"go: downloading example.com/module{i} v1.0.{i}" for i in range(300)]


def _script(folder: Path, lines: list[str], status: int) -> list[str]:
    """A command that prints ``lines`` and exits with ``status``."""
    script = folder / "build.py"
    script.write_text(f"import sys\nfor line in {lines!r}: print(line)\nsys.exit({status})")
    return [sys.executable, str(script)]


def test_a_build_shows_progress_and_keeps_the_rest_in_its_log(tmp_path: Path) -> None:
    out, log = io.StringIO(), tmp_path / "k8s.build.log"
    lines = ["[build.sh 1s] [1/4] building etcd", *GO_CHATTER, "  ... 100 packages compiled"]
    run_with_progress(
        _script(tmp_path, lines, 0),
        out,
        prefix="",
        show=k8s_build.hide_module_chatter,
        log_path=log,
    )
    shown = out.getvalue().splitlines()[1:]  # the first line echoes the command
    assert shown == ["[build.sh 1s] [1/4] building etcd", "  ... 100 packages compiled"]
    assert log.read_text().splitlines() == lines


def test_a_failed_build_shows_its_last_lines_hidden_ones_too_and_names_its_log(
    tmp_path: Path,
) -> None:
    out, log = io.StringIO(), tmp_path / "k8s.build.log"
    lines = [*GO_CHATTER, "go: example.com/module299@v1.0.299: reading: 410 Gone"]
    with pytest.raises(BuildFailed) as failed:
        run_with_progress(
            _script(tmp_path, lines, 1),
            out,
            prefix="",
            show=k8s_build.hide_module_chatter,
            log_path=log,
        )
    message = str(failed.value)
    assert "exited with 1" in message
    assert f"whole output in {log}" in message
    assert "410 Gone" in message
    assert GO_CHATTER[-1] in message  # hidden while it ran, shown now
    assert GO_CHATTER[0] not in message  # the tail, not all 300
    assert "go: downloading" not in out.getvalue()
    assert len(log.read_text().splitlines()) == len(lines)
