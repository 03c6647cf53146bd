"""``rolegate-gateway`` as a user runs it: a process serving manifests, stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import http
from devstack.poll import wait_until
from devstack.process import Process
from tests.fakes import manifests as m

KEY = "sk-RGCLI-2b9d7e55aa10"


def _get(url: str) -> dict[str, object]:
    answer: dict[str, object] = http.get_json(url)
    return answer


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Process]:
    """``rolegate-gateway --manifests`` as a process; its ``url`` is where it listens."""
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
    argv = [sys.executable, "-m", "rolegate_gateway", "--manifests", str(roles), "--port", "0"]
    argv += ["--reload-interval", "0.1", "--log-format", "json", "--log-level", "debug"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with Process("gateway", argv, log_path=tmp_path / "gateway.log", env=env) as proc:

        def listening() -> str:
            proc.url = proc.url_in_log(r"on (http://127\.0\.0\.1:\d+)/v1")
            return proc.url

        proc.wait_ready(listening, what="the line saying where it listens", timeout_s=30)
        yield proc


def test_serves_reloads_and_stops_cleanly(gateway_process: Process, tmp_path: Path) -> None:
    proc, url = gateway_process, gateway_process.url
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
    wait_until(
        lambda: _get(f"{url}/status")["config"]["hash"] != first_hash,  # type: ignore[index]
        timeout_s=10,
        what="the changed manifests to be applied",
    )
    assert sorted(_get(f"{url}/status")["roles"]) == ["extract", "query"]  # type: ignore[arg-type]

    proc.send(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    log = proc.log_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("config" in r["message"] and "applied" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert KEY not in log


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
