"""``make demo`` run as a person runs it, without a terminal: what it prints, that it stops
everything at the end, and that Ctrl-C stops everything too.

The builds it would start are done first by the session's fixtures (with their progress on
the terminal), so the demo finds the caches warm.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from demo.run import CHAT_ROLES, ROLES
from devstack import http, registry
from devstack.apt import AptUnavailable
from devstack.image import build as image_build
from devstack.k8s import nodebuild, realnode
from devstack.process import free_ports

pytestmark = pytest.mark.cluster  # it runs the control plane, through the demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def built(k8s_bin_dir: Path, llama_python: Path) -> str | None:
    """The Kubernetes binaries and the llama.cpp server, in the cache; and, where a real node
    can run (the demo then installs the chart on it), the node's binaries, the image and
    crane too. Returns why the demo will run processes instead (None: it installs the chart).
    """
    if os.geteuid() == 0:  # installs runc where it is missing, as the demo does
        with contextlib.suppress(AptUnavailable):
            nodebuild.ensure()
    reason = realnode.unavailable_now()
    if reason is None:
        image_build.ensure()
        registry.ensure_crane()
    return reason


def _as_a_terminal_job() -> None:
    """preexec hook: SIGINT as a terminal's foreground job has it. A test run started in the
    background (``nohup make test &``) hands its children SIGINT ignored, and the demo would
    then never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        preexec_fn=_as_a_terminal_job,
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
    """Nothing the demo started is left: no process (the operator and the gateway name the
    control plane's kubeconfig, the model server its config in the work directory), and
    neither the control plane's directory nor the work directory."""
    kubeconfig = re.search(r"kubeconfig: (\S+)", output)
    workdir = re.search(r"work directory \(models, logs\): (\S+)", output)
    assert kubeconfig, output
    assert workdir, output
    for folder in (str(Path(kubeconfig.group(1)).parent), workdir.group(1)):
        assert not Path(folder).exists()
        assert processes_mentioning(folder) == []


class Reader:
    """The demo's output, read by a thread so that a silent demo cannot hang the test."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.text = ""
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, marker: str | None, timeout_s: float) -> str:
        """Everything read so far, once a line holding ``marker`` has arrived (None: once
        the output has ended).

        Raises:
            AssertionError: ``timeout_s`` passed first, or the output ended without ``marker``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                waited = "the end" if marker is None else repr(marker)
                raise AssertionError(f"no {waited} in {timeout_s} s:\n{self.text}") from None
            if line is None:
                if marker is None:
                    return self.text
                raise AssertionError(f"output ended without {marker!r}:\n{self.text}")
            self.text += line
            if marker is not None and marker in line:
                return self.text

    def rest(self, timeout_s: float) -> str:
        """Everything, once the output has ended (AssertionError past ``timeout_s``)."""
        return self.until(None, timeout_s)


def interrupt(proc: subprocess.Popen[str]) -> None:
    """What Ctrl-C in the terminal does: SIGINT to the demo's whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)


@pytest.fixture
def finished(built: str | None) -> tuple[int, str]:
    """The exit status and output of a whole run (interrupted, and failed, past 300 s)."""
    proc = demo(*ports())
    reader = Reader(proc)
    try:
        out = reader.rest(timeout_s=300)
    except AssertionError:
        interrupt(proc)
        raise
    finally:
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
    return proc.returncode, out


def test_the_demo_runs_from_apply_to_rebind_and_stops(
    finished: tuple[int, str], built: str | None
) -> None:
    status, out = finished
    assert status == 0, out
    if built is None:  # where a real node can run, the demo installs the chart on it
        assert "rolegate: installing with Helm on a real node" in out
        assert re.search(r"chart installed and its pods Ready in [\d.]+ s", out), out
        pods = out[out.index("$ kubectl get pods -o wide") :].splitlines()[2:4]
        assert all(" Running " in pod and " localhost " in pod for pod in pods), pods
        # The chart's gateway checks clients: the demo's is a bound ServiceAccount's token
        # (never printed), which every request below carried.
        assert "$ kubectl create token demo-client --audience rolegate --duration 1h" in out
        assert (
            "the gateway checks clients: the openai SDK's api_key is a token of "
            "ServiceAccount demo-client (audience rolegate, bound to ClusterRole rolegate-user)"
        ) in out
        assert "eyJ" not in out  # no JWT in the output
    else:
        assert f"rolegate: running the operator and gateway as local processes ({built})" in out
    assert "5/5 roles Ready and served by the gateway" in out
    table = out[out.index("$ kubectl get llmroles") :].splitlines()
    assert table[1].split() == [
        "NAME",
        "BINDING",
        "MODEL",
        "MAXASYNC",
        "READY",
        "UPSTREAM",
        "AGE",
    ]
    assert [row.split()[:5] for row in table[2:7]] == [
        [role, "openai", model, str(n), "True"]
        for role, model, n in zip(
            ROLES,
            ("tiny-embed", "tiny-a", "tiny-a", "tiny-a", "tiny-a"),
            (16, 8, 4, 4, 2),
            strict=True,
        )
    ]
    # Embeddings: one 64-wide vector per chunk, and the tokens llama.cpp counted.
    assert re.search(
        r"^  embed +-> tiny-embed: 2 vectors of 64 floats  \(\d+ prompt tokens\)$", out, re.M
    ), out
    for role in CHAT_ROLES:  # an answer, and the usage llama.cpp counted
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


def test_ctrl_c_stops_everything(built: str | None) -> None:
    proc = demo(*ports())
    reader = Reader(proc)
    try:
        reader.until("roles Ready", timeout_s=120)
        interrupt(proc)
        out = reader.rest(timeout_s=60)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted: everything stopped" in out
    assert_all_stopped(out)


def test_a_port_in_use_is_refused_before_anything_starts() -> None:

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
    assert "binaries" not in done.stdout
    assert "control plane up" not in done.stdout


def test_keep_leaves_everything_running_until_ctrl_c(built: str | None) -> None:
    """With --processes: the operator and gateway as local processes (the other way the
    demo runs, where no real node can)."""
    proc = demo("--keep", "--processes", *ports())
    reader = Reader(proc)
    try:
        out = reader.until("Ctrl-C to stop", timeout_s=120)
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
        models = http.get_json(f"{gateway.group(1)}/models")
        assert sorted(m["id"] for m in models["data"]) == sorted(ROLES)
        interrupt(proc)
        out = reader.rest(timeout_s=60)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("stopped; nothing is left running")
    assert_all_stopped(out)
