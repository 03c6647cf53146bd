"""``python -m devstack`` as a developer types it: what is cached, and wrong words refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _devstack(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROLEGATE_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_lists_every_cached_build_with_its_state_and_size(tmp_path: Path) -> None:
    (tmp_path / "llama-cpp-python-0.3.36" / "wheel").mkdir(parents=True)
    (tmp_path / "llama-cpp-python-0.3.36" / "wheel" / "part.whl").write_bytes(b"x" * 3000)
    done = _devstack("status", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"cache: {tmp_path}"
    assert lines[1].split() == ["NAME", "STATE", "SIZE", "DIRECTORY", "WHAT"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[2:]}
    assert rows["k8s"] == ["missing", "0", "B"]
    assert rows["llama"] == ["incomplete", "2.9", "KiB"]  # a build cut short
    assert rows["litellm"] == ["missing", "0", "B"]


def test_an_unknown_build_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    done = _devstack("build", "k8s", "kubelet", cache=tmp_path)
    assert done.returncode == 2
    assert "unknown build kubelet: choose from k8s, llama, litellm" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing was started, not even k8s
