"""Processes of a benchmark run: start the servers and meter them.

Owns :func:`spawn` (a server as a :class:`devstack.process.Process` -- own session, stopped
by process group, SIGKILLed by the kernel when the harness dies -- waited on until it
serves) and :class:`Meter`, which reads a process tree's CPU seconds (psutil) and resident
memory. Peak memory has one definition throughout the harness: the sum over the tree of
each process's kernel high-water mark ``VmHWM``, since :meth:`Meter.reset_peak` (``5``
written to ``/proc/<pid>/clear_refs``) or since the process started.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devstack import http
from devstack.process import Process

__all__ = ["Meter", "spawn"]


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    url_pattern: str | None = None,
    url: str | None = None,
    ready_path: str = "",
    timeout_s: float = 60.0,
) -> Process:
    """Start ``argv`` as a :class:`devstack.process.Process` and wait until it serves.

    The environment is ours plus ``env``, or with ``inherit_env=False`` only ``env``
    (``PYTHONUNBUFFERED=1`` in both). The base URL (``Process.url``) is ``url``, or the first
    match of ``url_pattern`` (one group: the URL) in the log. Ready means: that URL is known
    and, with ``ready_path``, GET url+ready_path answers 200.

    Raises:
        devstack.process.ProcessDied: it exited first (the message holds its log tail).
        devstack.process.NotReady: it was not ready within ``timeout_s`` seconds.
        Either way it is stopped first.
    """
    base = dict(os.environ) if inherit_env else {}
    proc = Process(
        name, argv, log_path=log_path, env={**base, "PYTHONUNBUFFERED": "1", **(env or {})}
    )
    proc.url = url or ""
    proc.start()

    def ready() -> bool:
        if not proc.url and url_pattern:
            proc.url = proc.url_in_log(url_pattern)
        if not proc.url:
            return False
        return not ready_path or http.get(proc.url + ready_path, timeout_s=2).status == 200

    try:
        proc.wait_ready(ready, what=f"GET {ready_path or 'its URL'}", timeout_s=timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc


@dataclass
class Meter:
    """CPU seconds and resident memory of a process and its children (its "tree")."""

    pid: int
    _proc: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)

    @classmethod
    def of(cls, process: Process) -> Meter:
        """The meter of a started :class:`devstack.process.Process`.

        Raises:
            RuntimeError: it was never started.
        """
        if process.pid is None:
            raise RuntimeError(f"{process.name} was never started")
        return cls(process.pid)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def process_count(self) -> int:
        """How many processes the tree has now."""
        return len(self._tree())

    def thread_count(self) -> int:
        """How many threads the tree's processes have now, all together."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.num_threads()
        return total

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
