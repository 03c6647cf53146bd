"""Where the pinned Kubernetes binaries live, and building them when they are missing.

This module owns the Python side of the contract with ``build.sh``: the pins in
``versions.env``, the cache layout (``${ROLEGATE_CACHE:-~/.cache/rolegate}/k8s-<version>/``
holding ``bin/`` with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
kwok and helm, ``kwok/stages.yaml`` and a ``stamp``), and the check that the cache is complete
(the same sha256 over versions.env's pins and the wrapper modules' go.sum that build.sh writes
last).
A build keeps its whole output in ``<cache root>/k8s-<version>.build.log`` and prints only
its progress lines; Go's ``go: downloading ...`` lines (hundreds on a cold build) reach the
terminal only inside the error of a failed build.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from devstack.cache import BuildFailed, build_log, cache_root, locked, run_with_progress

__all__ = [
    "BINARIES",
    "BUILD_SCRIPT",
    "ETCD_VERSION",
    "HELM_VERSION",
    "KUBE_VERSION",
    "KWOK_VERSION",
    "PIN_LINE",
    "VERSIONS_FILE",
    "BuildFailed",
    "bin_dir",
    "cache_dir",
    "ensure",
    "hide_module_chatter",
    "is_built",
    "kwok_stages_file",
    "read_versions",
    "run_script",
]

_HERE: Final = Path(__file__).resolve().parent
VERSIONS_FILE: Final = _HERE / "versions.env"
BUILD_SCRIPT: Final = _HERE / "build.sh"
PIN_LINE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
"""A ``KEY=value`` line of versions.env: what stamps hash (comments may change freely)."""
_STAMPED_FILES: Final = (
    _HERE / "gomod" / "kubernetes" / "go.sum",
    _HERE / "gomod" / "etcd" / "go.sum",
)
BINARIES: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse a ``KEY=value`` file (comments and blank lines ignored) into a dict.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is neither a comment nor ``KEY=value``.
    """
    versions: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=value, got {raw!r}")
        versions[key] = value.strip().strip("'\"")
    return versions


_VERSIONS: Final = read_versions()
KUBE_VERSION: Final = _VERSIONS["KUBE_VERSION"]
"""The pinned Kubernetes version, with its ``v`` (e.g. ``v1.34.12``)."""
ETCD_VERSION: Final = _VERSIONS["ETCD_VERSION"]
KWOK_VERSION: Final = _VERSIONS["KWOK_VERSION"]
HELM_VERSION: Final = _VERSIONS["HELM_VERSION"]


def cache_dir() -> Path:
    """The cache of this pin set: :func:`devstack.cache.cache_root` joined with
    ``k8s-<version>``, as build.sh."""
    return cache_root() / f"k8s-{KUBE_VERSION}"


def bin_dir() -> Path:
    """The directory holding the pinned binaries (it may not exist yet: see ensure)."""
    return cache_dir() / "bin"


def kwok_stages_file() -> Path:
    """kwok's default Stage objects of the pinned release, copied there by build.sh."""
    return cache_dir() / "kwok" / "stages.yaml"


def _expected_stamp() -> str:
    """What build.sh's ``expected_stamp`` prints: the sha256 of versions.env's ``KEY=value``
    lines (so that editing a comment rebuilds nothing) followed by the two go.sum files."""
    digest = hashlib.sha256()
    for line in VERSIONS_FILE.read_text().splitlines():
        if PIN_LINE.match(line):
            digest.update(f"{line}\n".encode())
    for path in _STAMPED_FILES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def hide_module_chatter(line: str) -> str | None:
    """Hide Go's module chatter (``go: downloading``, ``go: finding``, ``go: extracting``)."""
    return None if line.startswith(("go: downloading", "go: finding", "go: extracting")) else line


def is_built() -> bool:
    """Whether the cache is complete for the current pins (stamp matches, every binary there)."""
    stamp = cache_dir() / "stamp"
    try:
        if stamp.read_text().strip() != _expected_stamp():
            return False
    except OSError:
        return False
    return kwok_stages_file().is_file() and all(
        os.access(bin_dir() / name, os.X_OK) for name in BINARIES
    )


def ensure(out: TextIO | None = None) -> Path:
    """Return :func:`bin_dir`, running build.sh first when the cache is incomplete.

    A cold build compiles Kubernetes from source: about 12 minutes on two cores with empty Go
    caches. build.sh's progress lines are copied to ``out`` (default ``sys.stderr``) as they
    come; the rest goes to the build log (``<cache root>/k8s-<version>.build.log``).

    Raises:
        BuildFailed: build.sh failed or left the cache incomplete; the message holds the last
            lines of its output and names the build log.
    """
    run_script([], entry=cache_dir(), is_built=is_built, what=f"Kubernetes {KUBE_VERSION}", out=out)
    return bin_dir()


def run_script(
    args: Sequence[str],
    *,
    entry: Path,
    is_built: Callable[[], bool],
    what: str,
    out: TextIO | None = None,
) -> None:
    """Run ``build.sh args`` for the cache entry ``entry`` unless ``is_built()``: under the
    entry's lock (a second run waits, then finds it complete), its progress lines to ``out``
    (default stderr), everything to ``<entry>.build.log``.

    Raises:
        BuildFailed: build.sh failed (its last lines in the message) or left ``is_built()``
            false.
    """
    if is_built():
        return
    out = out if out is not None else sys.stderr
    with locked(entry):
        if is_built():
            return
        log_path = build_log(entry)
        log_path.unlink(missing_ok=True)
        print(f"rolegate: building {what} into {entry} (log: {log_path}) ...", file=out, flush=True)
        try:
            run_with_progress(
                ["bash", str(BUILD_SCRIPT), *args],
                out,
                prefix="",
                show=hide_module_chatter,
                log_path=log_path,
            )
        except BuildFailed as failed:
            raise BuildFailed(f"building {what} failed: {failed}") from None
    if not is_built():
        command = " ".join([str(BUILD_SCRIPT), *args])
        raise BuildFailed(
            f"{command} finished but the cache at {entry} is incomplete; run it by hand to see why"
        )
