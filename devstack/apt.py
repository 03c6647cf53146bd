"""Debian packages the local stack needs (runc for the real node, mmdebstrap and umoci for
the image), installed by the project's own setup when missing.

Owns :func:`ensure` and :func:`download`. :func:`ensure` checks ``dpkg-query`` for each
package and, for those that are not installed, runs ``apt-get update`` once (only if an
install fails without it) and ``apt-get install -y --no-install-recommends`` with progress
lines, under one lock per cache so parallel sessions never run apt at once. Nothing is
installed when everything is there. :func:`download` fetches one package's ``.deb`` into a
directory without installing it (``apt-get download``, as any user; the benchmark's nginx
is unpacked from it), under the same lock and with the same one-time ``apt-get update``
when it fails.

Reference: dpkg-query(1) ``${db:Status-Abbrev}`` ("ii " = installed), apt-get(8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from devstack.cache import BuildFailed, cache_root, locked, run_with_progress

__all__ = ["AptUnavailable", "download", "ensure", "missing"]


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


def download(package: str, dest: Path, out: TextIO | None = None) -> Path:
    """Fetch the candidate version of the Debian ``package`` into the directory ``dest``
    (created if missing) without installing it; returns the ``.deb`` (``apt-get download``
    names it ``<package>_<version>_<arch>.deb``, the version's ``:`` escaped as ``%3a``).

    Raises:
        AptUnavailable: there is no ``apt-get`` (not Debian).
        BuildFailed: ``apt-get download`` failed, also after ``apt-get update`` where this
            is root (no such package, no network to the archive).
    """
    if shutil.which("apt-get") is None:
        raise AptUnavailable(f"fetching the Debian package {package} needs apt-get (not Debian)")
    dest.mkdir(parents=True, exist_ok=True)
    prefix = f"[apt download {package}] "
    fetch = ["apt-get", "download", package]
    with locked(cache_root() / "apt"):
        try:
            run_with_progress(fetch, out, prefix=prefix, show=_fetched, cwd=dest)
        except BuildFailed:
            if os.geteuid() != 0:
                raise
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run_with_progress(["apt-get", "update"], out, prefix=prefix, env=env, show=_progress)
            run_with_progress(fetch, out, prefix=prefix, show=_fetched, cwd=dest)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if not found:
        raise BuildFailed(f"apt-get download {package} left no {package}_*.deb in {dest}")
    return found[-1]


def _fetched(line: str) -> str | None:
    """``apt-get download``'s lines worth seeing: what it fetches, and errors."""
    return line if line.startswith(("Get:", "E:", "Err:")) else None


def _progress(line: str) -> str | None:
    """apt's lines worth seeing: what it sets up, and errors."""
    if line.startswith(("Setting up", "E:", "Err:", "Unpacking")):
        return line
    return None
