"""The host side of the real node: whether this machine can run one, and the host state its
teardown removes (processes in its mount namespace, the ``k8s.io`` cgroups).

Used by :mod:`devstack.k8s.realnode`; Linux /proc and /sys only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from devstack.k8s import nodeconfig, nodegpu
from devstack.poll import wait_until

__all__ = [
    "RUNC",
    "delete_link",
    "kill_in_namespace",
    "mount_ns",
    "pids",
    "remove_bridges",
    "remove_cgroups",
    "sweep_orphans",
    "unavailable_reason",
]

RUNC: Final = Path("/usr/sbin/runc")
"""runc from the Debian package (``apt-get install runc``)."""
_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_CGROUP_PARENT: Final = "k8s.io"  # containerd's cgroup parent with cgroupsPerQOS false


def unavailable_reason() -> str | None:
    """Why a real node cannot run on this machine, or None when it can.

    Checks: Linux, root, runc at :data:`RUNC`, unshare/nsenter/ip on PATH, a cgroup v1
    memory hierarchy or a cgroup v2 root, overlayfs, and that a private mount namespace can
    be made. Does not check the build (see :func:`nodebuild.ensure`).
    """
    if not Path("/proc/self/mountinfo").exists():
        return "not Linux (no /proc/self/mountinfo)"
    if os.geteuid() != 0:
        return "not root: the kubelet, containerd and runc need root"
    if not os.access(RUNC, os.X_OK):
        return f"no runc at {RUNC} (apt-get install runc)"
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (util-linux / iproute2)"
    v1 = (_CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists()
    if not v1 and not (_CGROUP_ROOT / "cgroup.controllers").exists():
        return f"no cgroup v1 memory hierarchy nor cgroup v2 root under {_CGROUP_ROOT}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "no overlayfs in /proc/filesystems"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make a private mount namespace: {probe.stderr.strip()}"
    return None


def pids() -> list[int]:
    """Every process id (Linux /proc)."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def mount_ns(pid: int) -> str:
    """Process ``pid``'s mount namespace (``mnt:[<inode>]``); '' when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def _cgroup_parents() -> list[Path]:
    """``/sys/fs/cgroup/<controller>/k8s.io`` (v1, and v2 mounted at ``unified``) and
    ``/sys/fs/cgroup/k8s.io`` (v2 only), those that exist."""
    found = list(_CGROUP_ROOT.glob(f"*/{_CGROUP_PARENT}"))
    return (
        [*found, _CGROUP_ROOT / _CGROUP_PARENT]
        if (_CGROUP_ROOT / _CGROUP_PARENT).is_dir()
        else found
    )


def remove_cgroups() -> None:
    """Kill what is left in the ``k8s.io`` cgroups (containers whose shim died), then remove
    those cgroups, deepest first."""
    for parent in _cgroup_parents():
        for procs in parent.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    for parent in _cgroup_parents():
        for directory in sorted(
            (p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            _rmdir_cgroup(directory, deadline)
        _rmdir_cgroup(parent, deadline)


def _rmdir_cgroup(directory: Path, deadline: float) -> None:
    """rmdir a cgroup, retrying while its killed processes exit (EBUSY)."""
    wait_until(
        lambda: _try_rmdir(directory),
        timeout_s=max(0.0, deadline - time.monotonic()),
        what=f"rmdir {directory}",
        poll_s=0.05,
    )


def _try_rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def kill_in_namespace(namespace: str, *, spare: int) -> list[int]:
    """SIGKILL every process in mount namespace ``namespace`` (``mnt:[<inode>]``) but pid
    ``spare`` (its holder): shims whose task outlived ``crictl rmp``. Returns their pids."""
    killed = []
    for pid in pids():
        if pid != spare and mount_ns(pid) == namespace:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def delete_link(name: str) -> None:
    """``ip link del name`` when the link exists.

    Raises:
        subprocess.CalledProcessError: ``ip`` failed to delete it.
    """
    shown = subprocess.run(["ip", "link", "show", name], capture_output=True, check=False)
    if shown.returncode == 0:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=True)


def remove_bridges(prefix: str) -> list[str]:
    """Delete every bridge whose name starts with ``prefix``; returns their names.

    Raises:
        subprocess.CalledProcessError: ``ip`` failed.
    """
    shown = subprocess.run(
        ["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    )
    names = [line.split(":")[1].strip() for line in shown.stdout.splitlines()]
    gone = [name for name in names if name.startswith(prefix)]
    for name in gone:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=True)
    return gone


def sweep_orphans(*, bin_dir: Path, bridge_prefix: str) -> list[str]:
    """Remove what a real node whose harness was SIGKILLed left (its kubelet, containerd and
    kube-proxy died with it, but not the shims, the containers, the bridge, the cgroups and
    kube-proxy's nftables tables). Call it only while holding the machine-wide node lock, so
    that no live node owns any of it. Returns one line per thing removed.

    ``bin_dir``: processes running a binary from there are killed (and the fake GPU plugin,
    :data:`nodegpu.BINARY`, wherever it lives); ``bridge_prefix``: the CNI
    bridges to delete; kube-proxy's tables are deleted when ``nft`` shows them.

    Raises:
        OSError, subprocess.CalledProcessError: a step failed.
    """
    swept = []
    for pid in pids():
        try:
            exe = Path(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        if exe.parent == bin_dir or exe.name == nodegpu.BINARY:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                swept.append(f"killed {exe.name} (pid {pid})")
    if _cgroup_parents():
        remove_cgroups()
        swept.append(f"removed the {_CGROUP_PARENT} cgroups")
    swept += [f"deleted bridge {name}" for name in remove_bridges(bridge_prefix)]
    if remove_kube_proxy_tables():
        swept.append("removed kube-proxy's nftables tables")
    return swept


def remove_kube_proxy_tables() -> bool:
    """Delete kube-proxy's nftables tables (:data:`nodeconfig.KUBE_PROXY_TABLES`) where
    ``nft`` lists them; True when there were any. No-op without ``nft``.

    Raises:
        subprocess.CalledProcessError: ``nft delete table`` failed.
    """
    if shutil.which("nft") is None:
        return False
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    commands = nodeconfig.kube_proxy_cleanup_argvs(tables.stdout)
    for argv in commands:
        subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return bool(commands)
