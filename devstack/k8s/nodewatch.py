"""The real node's machine-wide lock (:data:`MACHINE_LOCK`, :func:`node_running_here`,
:func:`unavailable_now`) and its watchdog:
``python -m devstack.k8s.nodewatch PID STARTTIME BIN_DIR``.

When the harness that runs a real node is SIGKILLed, its kubelet, containerd, kube-proxy
and mount-namespace holder die with it (``PR_SET_PDEATHSIG``), but the runc shims and the
containers do not: hostNetwork pods would keep their ports, and the bridge, the ``k8s.io``
cgroups and kube-proxy's nftables tables would stay, until the next real node's start swept
them. :class:`~devstack.k8s.realnode.RealNode` therefore starts this process in a session of
its own, without the parent-death signal. It polls the harness (pid ``PID`` whose
``/proc/PID/stat`` start time is ``STARTTIME``, so a reused pid is not mistaken for it)
once a second; a normal :meth:`RealNode.stop` ends it first with SIGTERM. Once the harness
is gone it takes the machine-wide node lock (so no live node is touched: a node that took
the lock first has swept at its own start) and runs :func:`nodehost.sweep_orphans`, then
removes the host directories the node created.

Exit status: 0 (SIGTERM, or swept, or another node owns the machine), 2 bad arguments.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from devstack.cache import cache_root
from devstack.k8s import nodeconfig, nodehost

__all__ = [
    "MACHINE_LOCK",
    "created_record",
    "main",
    "node_running_here",
    "remove_created",
    "spawn",
    "start_time",
    "unavailable_now",
]

MACHINE_LOCK: Final = "\0rolegate-realnode"
"""An abstract unix socket name: bound by the process whose node runs (one per machine)."""
_LOCK_WAIT_S: Final = 10.0
_REPO: Final = Path(__file__).resolve().parents[2]  # where ``-m devstack...`` resolves


def spawn(bin_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of this process's node (binaries in ``bin_dir``), its output in
    ``log_path``: in a session of its own and without the parent-death signal, so that it
    outlives a SIGKILL of this process. Stop it with ``terminate()`` before a normal stop.

    Raises:
        OSError: it cannot be started, or ``log_path`` opened.
    """
    me = os.getpid()
    with log_path.open("a") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "devstack.k8s.nodewatch"),
                *(str(me), start_time(me) or "", str(bin_dir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=_REPO,
            start_new_session=True,
        )


def node_running_here() -> bool:
    """Whether a real node runs on this machine now (its process holds the machine lock)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(MACHINE_LOCK)
        except OSError:
            return True
    return False


def unavailable_now() -> str | None:
    """Why a real node cannot start here now: :func:`nodehost.unavailable_reason`, or another real
    node running on this machine; None when one can."""
    reason = nodehost.unavailable_reason()
    if reason is None and node_running_here():
        reason = "another real node runs on this machine"
    return reason


def created_record() -> Path:
    """Which host paths the running node created (JSON list), for a sweep after a crash."""
    return cache_root() / "realnode.created.json"


def remove_created() -> list[str]:
    """Remove the (empty) host directories :func:`created_record` lists; returns the paths
    removed. One that cannot be removed (not empty, busy) stays in the record."""
    record = created_record()
    try:
        paths = [Path(p) for p in json.loads(record.read_text())]
    except (OSError, ValueError):
        return []
    removed, kept = [], []
    for path in paths:
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (not the node's alone), or busy: the next node retries
            kept.append(str(path))
            continue
        removed.append(str(path))
    if kept:
        record.write_text(json.dumps(kept))
    else:
        record.unlink(missing_ok=True)
    return removed


def start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (the start time in clock ticks after boot), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _stop(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Watch, then sweep; see the module docstring. Returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or not args[0].isdigit():
        print("usage: python -m devstack.k8s.nodewatch PID STARTTIME BIN_DIR", file=sys.stderr)
        return 2
    parent, started, bin_dir = int(args[0]), args[1], Path(args[2])
    signal.signal(signal.SIGTERM, _stop)
    while start_time(parent) == started:
        time.sleep(1.0)
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            lock.bind(MACHINE_LOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                print("another real node owns the machine (it swept at its start)", flush=True)
                return 0
            time.sleep(0.5)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a sweep is not cut short
        swept = nodehost.sweep_orphans(bin_dir=bin_dir, bridge_prefix=nodeconfig.BRIDGE_PREFIX)
        swept += [f"removed {path}" for path in remove_created()]
    finally:
        lock.close()
    print(f"harness {parent} gone; swept: {'; '.join(swept) or 'nothing'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
