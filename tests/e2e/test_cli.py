"""``rolegate-gateway`` as a user runs it: a process serving manifests, stopped by a signal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import http
from tests.fakes import manifests as m

KEY = "sk-RGCLI-2b9d7e55aa10"


def _get(url: str) -> dict[str, object]:
    answer: dict[str, object] = http.get_json(url)
    return answer


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    roles = tmp_path / "roles"
    roles.mkdir()
    m.write(
        roles / "roles.yaml",
        m.role(
            "extract",
            binding="openai",
            model="gpt-4o-mini",
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.secret("creds", apiKey=KEY),
    )
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rolegate_gateway",
            "--manifests",
            str(roles),
            "--port",
            "0",
            "--reload-interval",
            "0.1",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 30
    url = None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text())
        url = found.group(1) if found else None
        time.sleep(0.05)
    assert url, log.read_text()
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serves_reloads_and_stops_cleanly(
    gateway_process: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    proc, url, log = gateway_process
    models = _get(f"{url}/v1/models")
    assert [e["id"] for e in models["data"]] == ["extract"]  # type: ignore[index]
    first_hash = _get(f"{url}/status")["config"]["hash"]  # type: ignore[index]

    m.write(
        tmp_path / "roles" / "roles.yaml",
        m.role(
            "extract",
            binding="openai",
            model="gpt-4o",
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.role(
            "query",
            binding="openai",
            model="gpt-4o-mini",
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.secret("creds", apiKey=KEY),
    )
    deadline = time.monotonic() + 10
    while _get(f"{url}/status")["config"]["hash"] == first_hash:  # type: ignore[index]
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    assert sorted(_get(f"{url}/status")["roles"]) == ["extract", "query"]  # type: ignore[arg-type]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("config" in r["message"] and "applied" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert KEY not in log.read_text()


def test_missing_manifests_path_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rolegate_gateway", "--manifests", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "no such file or directory" in done.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "one of the arguments --config-secret --manifests is required"),
        (["--config-secret", "gw-config"], "'gw-config' is not NAMESPACE/NAME"),
        (["--config-secret", "a/b", "--manifests", "."], "not allowed with argument"),
    ],
)
def test_config_source_arguments_are_checked(args: list[str], error: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rolegate_gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert error in done.stderr
