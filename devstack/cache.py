"""The build cache of the local stack, shared by the tests, the demo and the benchmark.

Owns the cache root (``$ROLEGATE_CACHE``, else ``$XDG_CACHE_HOME/rolegate``, else
``~/.cache/rolegate``) and the mechanism every expensive build under it uses: an exclusive
file lock per entry (so two runs never build one entry at once), a stamp written last (so an
interrupted build never looks complete), and subprocesses whose output is passed on as
progress while they run, with their whole output kept in a build log.
Entries: ``k8s-<version>/`` (:mod:`devstack.k8s.build`), ``node-<version>/`` (the real node:
:mod:`devstack.k8s.nodebuild`), ``gpuplugin-<version>/`` (its fake GPU device plugin:
:mod:`devstack.k8s.nodegpu`), ``image-test-vllm/`` (the vLLM-compatible test backend image:
:mod:`devstack.image.backend`), ``llama-cpp-python-<version>/`` (:mod:`devstack.llama.build`),
``litellm-<version>/`` (:mod:`devstack.peers.litellm`), the benchmark's other peers
(``tensorzero-<version>/``, ``portkey-<version>/``, ``nginx-<version>/``:
:mod:`devstack.peers.tensorzero`, :mod:`devstack.peers.portkey`,
:mod:`devstack.peers.nginx`), the image and its Debian base layer
(:mod:`devstack.image.build`, :mod:`devstack.image.base`), ``crane-<version>/``
(:mod:`devstack.registry`), ``kstatus-<version>/`` (:mod:`devstack.kstatus`), and
``apt.lock`` (:mod:`devstack.apt`; also how :mod:`devstack.redis` gets ``redis-server``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from devstack.process import die_with_parent

__all__ = [
    "BuildFailed",
    "build_log",
    "cache_root",
    "files_digest",
    "locked",
    "pins_digest",
    "run_with_progress",
    "stamped",
]


class BuildFailed(RuntimeError):
    """A build step exited non-zero; the message holds the command and its last lines."""


def cache_root() -> Path:
    """``$ROLEGATE_CACHE``, else ``$XDG_CACHE_HOME/rolegate``, else ``~/.cache/rolegate``."""
    root = os.environ.get("ROLEGATE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rolegate"


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold ``<entry>.lock`` exclusively (blocking), so two runs never build one entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with entry.with_name(f"{entry.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stamped(entry: Path, text: str) -> bool:
    """Whether ``<entry>/stamp`` holds exactly ``text`` (the build finished for these pins)."""
    try:
        return (entry / "stamp").read_text() == text
    except OSError:
        return False


def files_digest(paths: Sequence[Path]) -> str:
    """The sha256 (hex) over the bytes of ``paths``, in order: a build's stamp when its
    inputs are those files.

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM ``proc``'s process group, then SIGKILL it if it is not gone within 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def pins_digest(constraints: Path) -> str:
    """A short sha256 of a pip constraints file's pins (its lines less comments and blank
    ones), for a stamp that a comment edit leaves valid.

    Raises:
        OSError: the file cannot be read.
    """
    pins = [line.strip() for line in constraints.read_text().splitlines()]
    kept = "\n".join(pin for pin in pins if pin and not pin.startswith("#"))
    return hashlib.sha256(kept.encode()).hexdigest()[:16]


def build_log(entry: Path) -> Path:
    """Where the whole output of ``entry``'s last build is kept: ``<entry>.build.log``."""
    return entry.with_name(f"{entry.name}.build.log")


def run_with_progress(
    argv: Sequence[str],
    out: TextIO | None = None,
    *,
    prefix: str,
    show: Callable[[str], str | None] = lambda line: line,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ``argv`` (in ``cwd``, default ours), writing ``prefix`` plus what ``show`` makes
    of each output line to ``out`` (default stderr) as it comes; ``show`` returns None to
    hide a line. With ``log_path``, every line (hidden ones too) is appended to that file
    as well. The command runs in
    a session of its own and, started from the main thread, is SIGKILLed by the kernel if
    this process dies (:func:`devstack.process.die_with_parent`); on any exception
    (KeyboardInterrupt too) its whole process group (the compilers a build started
    included) gets SIGTERM, then SIGKILL after 10 s, before the exception propagates.

    Raises:
        BuildFailed: the command exited non-zero (the message holds its last 30 lines,
            hidden ones included, and names the build log).
        OSError: the command cannot be started.
    """
    out = out or sys.stderr
    print(f"{prefix}$ {' '.join(argv)}", file=out, flush=True)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent
        if threading.current_thread() is threading.main_thread()
        else None,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    log = log_path.open("a") if log_path is not None else None
    try:
        for line in proc.stdout:
            tail = [*tail[-29:], line.rstrip()]
            if log is not None:
                log.write(line)
            shown = show(line.rstrip())
            if shown is not None:
                print(f"{prefix}{shown}", file=out, flush=True)
        proc.wait()
    except BaseException:  # Ctrl-C included: the build stops with us
        _stop_group(proc)
        raise
    finally:
        if log is not None:
            log.close()
    if proc.returncode != 0:
        lines = "\n".join(tail)
        where = f" (whole output in {log_path})" if log_path is not None else ""
        raise BuildFailed(f"{' '.join(argv)} exited with {proc.returncode}{where}:\n{lines}")
