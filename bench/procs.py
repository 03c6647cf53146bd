"""Processes of a benchmark run: start them, wait until they serve, meter them, stop them.

Owns :class:`Service` (a server process with its log file and base URL), :func:`spawn`,
:func:`free_port`, :func:`http_get` and :class:`Meter`, which reads a process tree's CPU
seconds (psutil) and resident memory. Peak memory has one definition throughout the
harness: the sum over the tree of each process's kernel high-water mark ``VmHWM``, since
:meth:`Meter.reset_peak` (``5`` written to ``/proc/<pid>/clear_refs``) or since the
process started. Services run in a session of their own, are stopped by process group and
get SIGKILL from the kernel when the harness dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.cluster.processes import _die_with_parent

__all__ = ["Meter", "Service", "free_port", "http_get", "spawn", "wait_until"]


@dataclass
class Service:
    """A running server process: ``url`` is its base, e.g. ``http://127.0.0.1:8080``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to its process group, then SIGKILL after ``timeout_s`` seconds; idempotent.
        The group (its own session) holds the children it started, e.g. LiteLLM's workers."""
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the leader


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for CLIs that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.002) -> float:
    """Poll ``predicate`` until true; returns the seconds it took.

    Raises:
        TimeoutError: still false after ``timeout_s`` seconds.
    """
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not true within {timeout_s:g} s")
        time.sleep(poll_s)
    return time.perf_counter() - started


def http_get(url: str, *, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    inherit_env: bool = True,
    url_pattern: str | None = None,
    url: str | None = None,
    ready_path: str = "",
    timeout_s: float = 60.0,
) -> Service:
    """Start ``argv`` (stdout and stderr to ``log_path``) and wait until it serves.

    The environment is ours plus ``env``, or with ``inherit_env=False`` only ``env``. The
    base URL is ``url``, or the first match of ``url_pattern`` (one group: the URL) in
    the log. Ready means: that URL is known and, with ``ready_path``, GET url+ready_path
    answers 200.

    Raises:
        RuntimeError: the process exited or was not ready within ``timeout_s`` seconds (the
            message holds the end of its log); it is stopped first.
    """
    log = log_path.open("wb")
    proc = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**(os.environ if inherit_env else {}), "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    service = Service(name, proc, log_path, url or "")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{service.log_tail()}")
        if not service.url and url_pattern:
            found = re.search(url_pattern, service.log_tail(1_000_000))
            service.url = found.group(1) if found else ""
        if not service.url:
            return False
        return not ready_path or http_get(service.url + ready_path, timeout_s=2)[0] == 200

    try:
        wait_until(ready, timeout_s=timeout_s, poll_s=0.05)
    except TimeoutError:
        service.stop()
        raise RuntimeError(
            f"{name} did not serve within {timeout_s:g} s:\n{service.log_tail()}"
        ) from None
    except RuntimeError:
        service.stop()
        raise
    return service


@dataclass
class Meter:
    """CPU seconds and resident memory of a process and its children (its "tree")."""

    pid: int
    _proc: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def process_count(self) -> int:
        """How many processes the tree has now."""
        return len(self._tree())

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the process and its live children."""
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def settle(
        self, *, below: float = 0.02, window_s: float = 0.1, timeout_s: float = 5.0
    ) -> float:
        """Wait until the tree uses less than ``below`` of a CPU over ``window_s`` seconds
        (work it does after answering: logging, background tasks), at most ``timeout_s``
        seconds; returns the seconds waited."""
        started = time.perf_counter()
        before = self.cpu_s()
        while time.perf_counter() - started < timeout_s:
            time.sleep(window_s)
            now = self.cpu_s()
            if now - before < below * window_s:
                break
            before = now
        return time.perf_counter() - started

    def rss_bytes(self) -> int:
        """Resident memory of the process tree now, bytes."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def reset_peak(self) -> None:
        """Reset every tree process's VmHWM to its current RSS (``5`` -> ``clear_refs``)."""
        for proc in self._tree():
            with contextlib.suppress(OSError):
                Path(f"/proc/{proc.pid}/clear_refs").write_text("5")

    def peak_rss_bytes(self) -> int:
        """The sum over the tree of each process's VmHWM (peak RSS since :meth:`reset_peak`
        or since it started), bytes."""
        total = 0
        for proc in self._tree():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            total += int(found.group(1)) * 1024 if found else 0
        return total
