"""The one process supervisor of the local stack: every process that devstack, the tests, the
demo and the benchmark start runs as a :class:`Process`.

A :class:`Process` runs in a session of its own (so its process group is its pid, and a
terminal's Ctrl-C reaches only the harness, which then stops it in order), writes stdout and
stderr to a log file that outlives it, and, when started from the main thread, is SIGKILLed by
the kernel if the harness dies without cleaning up (``PR_SET_PDEATHSIG``). Readiness is a
probe polled until true, while the process is checked for an early exit; either failure
raises with the log's last lines in the message. Stopping sends SIGTERM to the whole group,
then SIGKILL after a grace period, so the children a process started go with it.

This module also owns the temporary directories such processes work in (named after their
owner's pid, so the one a SIGKILLed harness left behind is swept later; kept, and said so,
when the block using them fails) and the harness's signal handling (SIGTERM as Ctrl-C, and
signals held back while cleaning up).

    with Process("upstream", [sys.executable, "-m", "bench.upstream"], log_path=log) as proc:
        proc.wait_ready(lambda: http.get(url).status == 200, what="/health", timeout_s=30)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Final, NoReturn

from devstack.poll import wait_until

__all__ = [
    "NotReady",
    "Process",
    "ProcessDied",
    "alive",
    "die_with_parent",
    "disown_dir",
    "free_ports",
    "group_members",
    "owned_tmp_dir",
    "signals_deferred",
    "sigterm_raises_interrupt",
    "sweep_orphaned_dirs",
    "wait_for_interrupt",
    "work_dir",
]

log = logging.getLogger(__name__)

#: Seconds after its SIGTERM past which a process's stop is logged (:meth:`Process.stop`).
SLOW_STOP_S: Final = 3.0

_PR_SET_PDEATHSIG: Final = 1
_OWNER_FILE: Final = "owner.pid"
#: What a readiness probe may raise while the process is still coming up.
_NOT_YET: Final = (OSError, ValueError, KeyError)


class ProcessDied(RuntimeError):
    """A process exited while it was expected to run; the message holds its log tail."""


class NotReady(TimeoutError):
    """A process did not become ready in time; the message holds its log tail."""


def die_with_parent() -> None:
    """preexec hook: ask the kernel to SIGKILL this child when its parent thread exits (so
    start children from the main thread: a worker thread's exit would kill them too)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One child process with its log file; a context manager that starts and stops it.

    Args:
        name: what messages call it (``"kube-apiserver"``, ``"gateway"``).
        argv: the command line.
        log_path: stdout and stderr are appended here (with ``pipes``, stderr only).
        env: the whole environment of the child; None inherits this process's.
        pipes: give the child text pipes on stdin and stdout (:attr:`stdin`,
            :attr:`stdout`), for line protocols; otherwise stdin is /dev/null.

    ``url`` is for subclasses and callers to record where it serves ('' until known).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        pipes: bool = False,
    ) -> None:
        self.name: Final = name
        self.argv: Final = tuple(argv)
        self.log_path: Final = log_path
        self.url = ""
        self._env = dict(env) if env is not None else None
        self._pipes = pipes
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._log_start = 0  # where this run's output begins in the (appended) log
        #: The run terminate() signalled, and when (monotonic seconds).
        self._terminated: tuple[subprocess.Popen[str], float] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process in a new session; after it exited (or :meth:`stop`), start it
        again with the same command line, its output appended to the same log.

        Raises:
            OSError: the binary cannot be executed.
            RuntimeError: it is running.
        """
        if self.running():
            raise RuntimeError(f"{self.name} is running; stop it before starting it again")
        self.stop()  # the previous run's log handle and pipes
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a")
        self._log_start = self._log.tell()
        main_thread = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self._pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self._pipes else self._log,
                stderr=self._log if self._pipes else subprocess.STDOUT,
                env=self._env,
                text=True,
                bufsize=1 if self._pipes else -1,
                start_new_session=True,
                # Only from the main thread: the kernel signals when the parent *thread* exits.
                preexec_fn=die_with_parent if main_thread else None,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    def __enter__(self) -> Process:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, *, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to ``grace_s`` seconds, then SIGKILL it; members
        of the group that outlived the leader are SIGKILLed too. After :meth:`terminate`, no
        second SIGTERM, and the grace counts from that one. A process that took more than
        :data:`SLOW_STOP_S` is logged by name. Returns the exit status (None when it never
        started). Safe to call more than once."""
        proc = self._proc
        if proc is not None:
            pgid = proc.pid
            if proc.poll() is None:
                # One SIGTERM: on a second one, the Kubernetes components exit(1) at once
                # (k8s.io/apiserver/pkg/server/signal.go), their graceful stop cut short.
                if self._terminated is not None and self._terminated[0] is proc:
                    began = self._terminated[1]
                else:
                    began = time.monotonic()
                    _killpg(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=max(0.0, began + grace_s - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _killpg(pgid, signal.SIGKILL)
                    proc.wait()
                if (took := time.monotonic() - began) > SLOW_STOP_S:  # should one ever hang
                    log.warning("%s stopped %.1f s after SIGTERM", self.name, took)
            if group_members(pgid):
                _killpg(pgid, signal.SIGKILL)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode if proc is not None else None

    def terminate(self) -> None:
        """SIGTERM the process group and return at once (:meth:`stop` waits, and kills,
        without a second SIGTERM); to stop several side by side: terminate each, then stop
        each."""
        if self._proc is not None and self._proc.poll() is None:
            _killpg(self._proc.pid, signal.SIGTERM)
            self._terminated = self._proc, time.monotonic()

    def wait_exit(self, timeout_s: float) -> int:
        """Wait until the process exits by itself; returns its exit status.

        Raises:
            TimeoutError: it still runs after ``timeout_s`` seconds (it is left running).
            RuntimeError: it was never started.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still runs after {timeout_s:g} s") from None

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process itself (not its group): SIGTERM or SIGINT to see how
        it stops, SIGSTOP and SIGCONT to freeze and thaw it.

        Raises:
            RuntimeError: it is not running.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the whole group now and reap the leader (a crash, for fault tests)."""
        if self._proc is not None and self._proc.poll() is None:
            _killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    # -- state ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id), or None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def stdin(self) -> IO[str]:
        """The child's stdin (``pipes=True`` only)."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError(f"{self.name} has no stdin pipe")
        return self._proc.stdin

    @property
    def stdout(self) -> IO[str]:
        """The child's stdout (``pipes=True`` only)."""
        if self._proc is None or self._proc.stdout is None:
            raise RuntimeError(f"{self.name} has no stdout pipe")
        return self._proc.stdout

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def check_running(self) -> None:
        """Raise :class:`ProcessDied` (with the log tail) if the process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ProcessDied(
                f"{self.name} exited with status {self._proc.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_ready(
        self, probe: Callable[[], object], *, what: str, timeout_s: float = 60.0
    ) -> float:
        """Poll ``probe`` until it returns something true; returns the seconds it took.
        OSError, ValueError and KeyError from the probe count as "not yet".

        Raises:
            ProcessDied: the process exited first.
            NotReady: not ready within ``timeout_s`` seconds.
        """
        try:
            return wait_until(
                probe,
                timeout_s=timeout_s,
                what=what,
                poll_s=0.05,
                tolerate=_NOT_YET,
                check=self.check_running,
            )
        except TimeoutError:
            raise NotReady(
                f"{self.name} not ready within {timeout_s:g} s ({what}); "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None

    def url_in_log(self, pattern: str) -> str:
        """The first group of the first match of ``pattern`` in this run's output ('' when
        none): for servers that print the address they bound (a restart binds anew)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        found = re.search(pattern, text)
        return found.group(1) if found else ""

    def log_text(self) -> str:
        """The whole log ('' when there is none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the process in bytes (Linux /proc); 0 when it is not running."""
        if self._proc is None:
            return 0
        try:
            status = Path(f"/proc/{self._proc.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else 0


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the parenthesised command (state, ppid,
    pgrp, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is not None and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


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


# -- working directories ----------------------------------------------------------------------


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
    that was SIGKILLed or OOM-killed; its processes died with it, see PR_SET_PDEATHSIG)."""
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            os.kill(int((path / _OWNER_FILE).read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


@contextlib.contextmanager
def work_dir(prefix: str, *, keep: bool = False, out: IO[str] | None = None) -> Iterator[Path]:
    """A fresh owned temporary directory for logs and files, after sweeping orphaned ones.

    Removed when the block ends normally or by Ctrl-C; when it ends with any other
    exception, or always with ``keep``, the directory is kept (disowned, never swept) and
    its path is written to ``out`` (default stderr), so the logs can be read.
    """
    sweep_orphaned_dirs(prefix)
    path = owned_tmp_dir(prefix)

    def keep_it() -> None:
        disown_dir(path)
        print(f"  logs kept in {path}", file=out or sys.stderr, flush=True)

    try:
        yield path
    except Exception:
        keep_it()
        raise
    except BaseException:
        if keep:
            keep_it()
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise
    if keep:
        keep_it()
    else:
        shutil.rmtree(path, ignore_errors=True)


# -- signals ------------------------------------------------------------------------------------


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


def wait_for_interrupt(poll_s: float = 0.25) -> NoReturn:
    """Block until Ctrl-C (or SIGTERM, within :func:`sigterm_raises_interrupt`) raises
    KeyboardInterrupt; main thread only. Both signals are unblocked first (a mask inherited
    blocked would hold them pending for ever).

    Not ``signal.pause()``, which never returns for a signal that lands between Python's
    last check of pending handlers and the pause(2) call (it waits for a *new* one:
    https://docs.python.org/3/library/signal.html#signal.pause). Sleeping in slices runs
    pending handlers at least every ``poll_s`` seconds; a signal during a sleep ends it.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    while True:
        time.sleep(poll_s)
