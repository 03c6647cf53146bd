"""Child processes of the test control plane: start, watch, stop, and read their logs.

This module owns the lifetime of one component process, and of the temporary directories
such processes work in. Each runs in its own session (so
its process group is its pid and a terminal's Ctrl-C reaches only the harness, which then
stops the components in order), logs to a file, and, when started from the main thread, is
killed by the kernel if the harness dies without cleaning up (``PR_SET_PDEATHSIG``).
Stopping sends SIGTERM to the whole group, then SIGKILL after a grace period. A temporary
directory names its owner's pid, so one left by a harness that was SIGKILLed is swept later.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Final

__all__ = [
    "Component",
    "ComponentDied",
    "disown_dir",
    "free_ports",
    "group_members",
    "owned_tmp_dir",
    "signals_deferred",
    "sigterm_raises_interrupt",
]

_PR_SET_PDEATHSIG: Final = 1
_OWNER_FILE: Final = "owner.pid"


class ComponentDied(RuntimeError):
    """A component exited while the harness waited for it; the message holds its log tail."""


def _die_with_parent() -> None:
    """preexec hook: ask the kernel to SIGKILL this child when its parent thread exits."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_raises_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so ``finally`` and
    ``with`` clean-ups run (pytest, too, tears its fixtures down on KeyboardInterrupt).

    Only in the main thread, and only when SIGTERM has its default action (a handler someone
    else installed is left alone); the previous action is restored on exit.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Block SIGINT and SIGTERM for the block (main thread only); pending ones fire after,
    so a Ctrl-C cannot cut a clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def owned_tmp_dir(prefix: str) -> Path:
    """Create a temporary directory ``<tmp>/<prefix>XXXX`` naming this process as its owner."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / _OWNER_FILE).write_text(str(os.getpid()))
    return path


def disown_dir(path: Path) -> None:
    """Forget the owner of ``path`` so that :func:`sweep_orphaned_dirs` never removes it."""
    (path / _OWNER_FILE).unlink(missing_ok=True)


def sweep_orphaned_dirs(prefix: str) -> None:
    """Remove the ``<tmp>/<prefix>*`` directories whose owner process is gone (a harness
    that was SIGKILLed or OOM-killed; its components died with it, see PR_SET_PDEATHSIG)."""
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            os.kill(int((path / _OWNER_FILE).read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets stay bound until every port is picked, so the ports differ from each other;
    another process may still take one before the component binds it.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Component:
    """One control-plane process (etcd, kube-apiserver, ...) and its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name: Final = name
        self.argv: Final = tuple(argv)
        self.log_path: Final = log_path
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id), or None before start."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the process in a new session, stdout and stderr appended to ``log_path``.

        Raises:
            OSError: the binary cannot be executed.
        """
        self._log = self.log_path.open("ab")
        preexec: Callable[[], None] | None = None
        if threading.current_thread() is threading.main_thread():
            preexec = _die_with_parent
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
            preexec_fn=preexec,
        )

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def check_running(self) -> None:
        """Raise ComponentDied (with the log tail) if the process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ComponentDied(
                f"{self.name} exited with status {self._proc.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def rss_bytes(self) -> int:
        """Resident memory of the process in bytes (Linux /proc); 0 when it is not running."""
        if self._proc is None:
            return 0
        try:
            status = Path(f"/proc/{self._proc.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log file ('' when there is none)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``grace_s`` seconds, then SIGKILL it.

        Safe to call more than once and on a component that never started.
        """
        proc = self._proc
        if proc is not None:
            pgid = proc.pid
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    proc.wait()
            # Strays the leader left in its group (none expected from these binaries).
            if group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
