"""devstack.k8s.build.run_script: the one way the Kubernetes and real-node cache entries run
build.sh (lock, build log, progress, and a clear failure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.k8s import build


def test_a_failed_build_names_what_and_its_log(tmp_path: Path) -> None:
    entry = tmp_path / "x"
    with pytest.raises(build.BuildFailed) as failed:
        build.run_script(["--bogus"], entry=entry, is_built=lambda: False, what="a test entry")
    message = str(failed.value)
    assert message.startswith("building a test entry failed: ")
    assert "unknown argument '--bogus'" in message
    assert f"whole output in {entry}.build.log" in message


def test_a_complete_entry_runs_nothing(tmp_path: Path) -> None:
    build.run_script(["--bogus"], entry=tmp_path / "x", is_built=lambda: True, what="nothing")
    assert not (tmp_path / "x.build.log").exists()
