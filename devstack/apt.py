"""Debian packages the local stack needs (runc for the real node, mmdebstrap and umoci for
the image), installed by the project's own setup when missing.

Owns one thing: :func:`ensure` checks ``dpkg-query`` for each package and, for those that are
not installed, runs ``apt-get update`` once (only if an install fails without it) and
``apt-get install -y --no-install-recommends`` with progress lines, under one lock per cache
so parallel sessions never run apt at once. Nothing is installed when everything is there.

Reference: dpkg-query(1) ``${db:Status-Abbrev}`` ("ii " = installed), apt-get(8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TextIO

from devstack.cache import BuildFailed, cache_root, locked, run_with_progress

__all__ = ["AptUnavailable", "ensure", "missing"]


class AptUnavailable(RuntimeError):
    """Packages are missing and cannot be installed here (no apt-get, or not root); the
    message names them and the command to run."""


def missing(packages: Sequence[str]) -> list[str]:
    """The packages of ``packages`` that dpkg does not report as installed ("ii"); all of
    them on a machine without dpkg."""
    if shutil.which("dpkg-query") is None:  # not Debian: nothing counts as installed
        return list(packages)
    absent = []
    for package in packages:
        answer = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if answer.returncode != 0 or not answer.stdout.startswith("ii"):
            absent.append(package)
    return absent


def ensure(packages: Sequence[str], out: TextIO | None = None, *, why: str) -> None:
    """Install the Debian ``packages`` that are missing (``why``: what needs them, for the
    progress line); a no-op when all are installed.

    Raises:
        AptUnavailable: some are missing and there is no ``apt-get`` or this is not root.
        BuildFailed: ``apt-get`` failed (its last lines in the message).
    """
    if not missing(packages):
        return
    entry = cache_root() / "apt"
    with locked(entry):
        absent = missing(packages)
        if not absent:
            return
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            raise AptUnavailable(
                f"{why} needs the Debian packages {' '.join(absent)}; install them with "
                f"`apt-get install -y --no-install-recommends {' '.join(absent)}` (as root)"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", *absent]
        prefix = f"[apt {' '.join(absent)}] "
        try:
            run_with_progress(install, out, prefix=prefix, env=env, show=_progress)
        except BuildFailed:  # a stale package index: update once, then try again
            run_with_progress(["apt-get", "update"], out, prefix=prefix, env=env, show=_progress)
            run_with_progress(install, out, prefix=prefix, env=env, show=_progress)
        still = missing(absent)
        if still:
            raise BuildFailed(f"apt-get reported success but {' '.join(still)} is not installed")


def _progress(line: str) -> str | None:
    """apt's lines worth seeing: what it sets up, and errors."""
    if line.startswith(("Setting up", "E:", "Err:", "Unpacking")):
        return line
    return None
