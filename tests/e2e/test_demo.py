"""``make demo`` run as a person runs it, without a terminal: what it prints, that it stops
everything at the end, and that Ctrl-C stops everything too.

The builds it would start are done first by the session's fixtures (with their progress on
the terminal), so the demo finds the caches warm.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.processes import free_ports

pytestmark = pytest.mark.cluster  # it runs the control plane, through the demo

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("extract", "keyword", "query", "vlm")


@pytest.fixture
def built(k8s_bin_dir: Path, llama_python: Path) -> None:
    """The Kubernetes binaries and the llama.cpp server, in the cache."""


def demo(*args: str) -> subprocess.Popen[str]:
    """The demo in a session of its own, as a terminal would run it (Ctrl-C reaches the
    whole foreground process group: the demo and whatever kubectl it is running)."""
    return subprocess.Popen(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def ports() -> list[str]:
    gateway, model = free_ports(2)
    return ["--gateway-port", str(gateway), "--model-port", str(model)]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found


def assert_all_stopped(output: str) -> None:
    """Nothing the demo started is left: no process, no control-plane directory."""
    kubeconfig = re.search(r"kubeconfig: (\S+)", output)
    assert kubeconfig, output
    plane_dir = str(Path(kubeconfig.group(1)).parent)
    assert not Path(plane_dir).exists()
    assert processes_mentioning(plane_dir) == []
    assert processes_mentioning("--namespace rolegate-demo") == []


@pytest.fixture
def finished(built: None) -> tuple[int, str]:
    """The exit status and output of a whole run."""
    proc = demo(*ports())
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, out


def test_the_demo_runs_from_apply_to_rebind_and_stops(finished: tuple[int, str]) -> None:
    status, out = finished
    assert status == 0, out
    assert "4/4 roles Ready and served by the gateway" in out
    table = out[out.index("$ kubectl get llmroles") :].splitlines()
    assert table[1].split() == ["NAME", "BINDING", "MODEL", "MAXASYNC", "READY", "AGE"]
    assert [row.split()[:5] for row in table[2:6]] == [
        [role, "openai", "tiny-a", str(n), "True"]
        for role, n in zip(ROLES, (8, 4, 4, 2), strict=True)
    ]
    for role in ROLES:  # an answer, and the usage llama.cpp counted
        assert re.search(
            rf"^  {role} +-> tiny-a: '[a-z ]+'  \(\d+ prompt \+ \d+ completion tokens\)$",
            out,
            re.M,
        ), out
    streamed = re.search(r"^  query +-> [a-z ]+  \[(\d+) chunks as they arrived\]$", out, re.M)
    assert streamed, out
    assert int(streamed.group(1)) > 1
    rebind = re.search(
        r"(\d+) requests while rebinding: (\d+) failed; tiny-a answered (\d+), "
        r"tiny-b answered (\d+)",
        out,
    )
    assert rebind, out
    sent, failed, old, new = map(int, rebind.groups())
    assert failed == 0
    assert old > 0
    assert new > 0
    assert old + new == sent
    assert re.search(r"^query +openai +tiny-b +4 +True", out, re.M), out
    assert out.rstrip().endswith("stopped; nothing is left running")
    assert_all_stopped(out)


def test_ctrl_c_stops_everything(built: None) -> None:
    proc = demo(*ports())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "roles Ready" in line or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert "roles Ready" in out
    assert proc.returncode == 130, out
    assert "interrupted: everything stopped" in out
    assert_all_stopped(out)


def test_a_port_in_use_is_refused_before_anything_starts(built: None) -> None:

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        (model,) = free_ports(1)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "demo",
                "--gateway-port",
                str(taken),
                "--model-port",
                str(model),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"port {taken} on 127.0.0.1 is in use: free it or pass --gateway-port N" in done.stdout
    assert "control plane up" not in done.stdout


def test_keep_leaves_everything_running_until_ctrl_c(built: None) -> None:
    proc = demo("--keep", *ports())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        out = "".join(lines)
        export = re.search(r"export KUBECONFIG=(\S+) PATH=(\S+):\$PATH", out)
        assert export, out
        env = {**os.environ, "KUBECONFIG": export.group(1)}
        kubectl = str(Path(export.group(2)) / "kubectl")
        time.sleep(1)  # still there a moment later
        roles = subprocess.run(
            [kubectl, "get", "llmroles", "-n", "rolegate-demo", "-o", "name"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert roles.stdout.split() == [f"llmrole.rolegate.dev/{role}" for role in ROLES]
        gateway = re.search(r"gateway: +(http://127\.0\.0\.1:\d+/v1)", out)
        assert gateway, out
        with urllib.request.urlopen(f"{gateway.group(1)}/models", timeout=5) as models:
            assert sorted(m["id"] for m in json.loads(models.read())["data"]) == sorted(ROLES)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + rest
    assert rest.rstrip().endswith("stopped; nothing is left running")
    assert_all_stopped(out)
