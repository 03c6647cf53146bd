"""Processes of a benchmark run: start them, wait until they serve, meter them, stop them.

Owns :class:`Service` (a server process with its log file and base URL), :func:`spawn`,
:func:`free_port`, :func:`http_get` and :class:`Meter`, which reads a process tree's CPU
seconds and resident memory with psutil (peak: sampled every ``interval_s`` while metering,
and the kernel's own high-water mark ``VmHWM`` from /proc).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

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
        """SIGTERM, then SIGKILL after ``timeout_s`` seconds; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
    url_pattern: str | None = None,
    url: str | None = None,
    ready_path: str = "",
    timeout_s: float = 60.0,
) -> Service:
    """Start ``argv`` (stdout and stderr to ``log_path``) and wait until it serves.

    The base URL is ``url``, or the first match of ``url_pattern`` (one group: the URL) in
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
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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
    """CPU seconds and resident memory of a process and its children.

    ``with meter.sampling(): ...`` records the largest tree RSS seen every ``interval_s``
    seconds in :attr:`peak_rss_bytes` (reset at each ``sampling``).
    """

    pid: int
    interval_s: float = 0.05
    peak_rss_bytes: int = 0
    _proc: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the process and its live children."""
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the process tree now, bytes."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def hwm_bytes(self) -> int:
        """The kernel's peak resident memory (VmHWM) of the process itself, bytes."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else 0

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Sample the tree's RSS in a thread while the block runs."""
        self.peak_rss_bytes = self.rss_bytes()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(self.interval_s):
                self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes())

        thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes())
