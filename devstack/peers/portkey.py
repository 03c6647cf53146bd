"""Portkey's AI gateway (Node), a benchmark peer, installed with npm under the cache.

Owns :data:`PORTKEY_VERSION` (the pin), :func:`install_dir`, :func:`is_built`,
:func:`ensure` and :func:`command`. :func:`ensure` creates
``<cache root>/portkey-<version>/`` (:func:`devstack.cache.cache_root`) when it is missing or
incomplete: ``portkey-package.json`` and ``portkey-package-lock.json`` beside this file are
copied in as ``package.json`` and ``package-lock.json`` and ``npm ci --ignore-scripts``
installs exactly the locked tree (95 packages, ~25 s, ~12 MB). The package.json pins
``@portkey-ai/gateway`` and overrides ``@hono/node-server`` to 1.13.5: with the version the
gateway asks for, every streamed answer fails with ``TypeError: immutable``
(https://github.com/Portkey-AI/gateway/issues/1389). Install scripts are not run: the
gateway's only one is ``patch-package``, and its published package ships no patches.

``node`` and ``npm`` come from the machine; when either is missing, Debian's ``nodejs`` and
``npm`` packages are installed through :func:`devstack.apt.ensure`. npm's whole output goes to
``portkey-<version>.build.log``; a ``stamp`` holding the lock file's hash marks a complete
install, and a file lock keeps two runs from building it at once.

``python -m devstack build portkey`` builds it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from devstack import apt
from devstack.cache import (
    BuildFailed,
    build_log,
    cache_root,
    files_digest,
    locked,
    run_with_progress,
    stamped,
)

__all__ = [
    "PORTKEY_VERSION",
    "BuildFailed",
    "command",
    "ensure",
    "install_dir",
    "is_built",
    "node_version",
]

#: The ``@portkey-ai/gateway`` release benchmarked; change it together with both
#: portkey-package*.json files (``npm install --package-lock-only`` regenerates the lock).
PORTKEY_VERSION: Final = "1.15.2"
PACKAGE_JSON: Final = Path(__file__).with_name("portkey-package.json")
PACKAGE_LOCK: Final = Path(__file__).with_name("portkey-package-lock.json")
#: The gateway's Node entry point, relative to :func:`install_dir`.
START_SERVER: Final = Path("node_modules/@portkey-ai/gateway/build/start-server.js")
_PREFIX: Final = "rolegate portkey: "


def install_dir() -> Path:
    """Where the pinned gateway lives: ``<cache root>/portkey-<version>``."""
    return cache_root() / f"portkey-{PORTKEY_VERSION}"


def _stamp_text() -> str:
    return f"@portkey-ai/gateway@{PORTKEY_VERSION} lock={files_digest([PACKAGE_LOCK])[:16]}\n"


def is_built() -> bool:
    """Whether the locked tree is installed (its stamp matches the lock file)."""
    return stamped(install_dir(), _stamp_text()) and (install_dir() / START_SERVER).is_file()


def _node_and_npm(out: TextIO) -> tuple[str, str]:
    """``node`` and ``npm`` on PATH, installing Debian's packages first when one is missing.

    Raises:
        devstack.apt.AptUnavailable: missing, and they cannot be installed here.
        BuildFailed: apt-get failed, or installed them without putting them on PATH.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        apt.ensure(["nodejs", "npm"], out, why="Portkey's gateway (the benchmark's peer)")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise BuildFailed(
            "the nodejs and npm packages are installed but node or npm is not on PATH"
        )
    return node, npm


def _npm_lines(line: str) -> str | None:
    """npm's lines worth seeing: the summary (``added 95 packages in 22s``) and errors."""
    if line.startswith("added ") or "ERR" in line:
        return line.strip()
    return None


def ensure(out: TextIO | None = None) -> Path:
    """The installed gateway's directory (run :func:`command` in it), installing the locked
    tree first when it is missing or incomplete (progress on ``out``, default stderr).

    Raises:
        devstack.apt.AptUnavailable: node or npm is missing and cannot be installed here.
        BuildFailed: npm failed (no network to the npm registry, an engine mismatch).
    """
    out = out or sys.stderr
    target = install_dir()
    with locked(target):
        if is_built():
            return target
        started = time.monotonic()
        _, npm = _node_and_npm(out)
        print(
            f"{_PREFIX}installing @portkey-ai/gateway@{PORTKEY_VERSION} into {target} "
            "(~25 s, ~12 MB) ...",
            file=out,
            flush=True,
        )
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copyfile(PACKAGE_JSON, target / "package.json")
        shutil.copyfile(PACKAGE_LOCK, target / "package-lock.json")
        log_path = build_log(target)
        log_path.unlink(missing_ok=True)
        install = [
            npm,
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(target),
        ]
        run_with_progress(install, out, prefix=_PREFIX, show=_npm_lines, log_path=log_path)
        if not (target / START_SERVER).is_file():
            raise BuildFailed(f"npm ci succeeded but {target / START_SERVER} is missing")
        (target / "stamp").write_text(_stamp_text())
        elapsed = time.monotonic() - started
        print(f"{_PREFIX}Portkey ready in {elapsed:.0f} s", file=out, flush=True)
        return target


def node_version() -> str | None:
    """``node --version`` (``v20.20.2``), or None without node."""
    node = shutil.which("node")
    if node is None:
        return None
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def command(port: int) -> list[str]:
    """The argv, run in :func:`install_dir`, that serves the gateway on ``port``
    (``--headless``: no console UI). It listens on every interface (the script has no host
    option): send to 127.0.0.1 only, and stop it by process group.

    Raises:
        BuildFailed: there is no ``node`` on PATH.
    """
    node = shutil.which("node")
    if node is None:
        raise BuildFailed("node is not on PATH (devstack.peers.portkey.ensure installs it)")
    return [node, str(install_dir() / START_SERVER), f"--port={port}", "--headless"]
