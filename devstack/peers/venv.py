"""The one way a Python peer of the benchmark is built: a pinned virtualenv under the cache.

Owns :func:`build`, which LiteLLM's (:mod:`devstack.peers.litellm`) and TensorZero's
(:mod:`devstack.peers.tensorzero`) ``ensure`` call under their lock once their stamp
(:func:`stamp`) says the virtualenv is missing or incomplete.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from devstack.cache import BuildFailed, build_log, pins_digest, run_with_progress

__all__ = ["build", "stamp"]


def stamp(requirement: str, constraints: Path) -> str:
    """What the stamp of a virtualenv holding ``requirement`` pinned by ``constraints``
    says: the requirement, the pins' digest and this Python's version."""
    return f"{requirement} constraints={pins_digest(constraints)} python={sys.version_info[:2]}\n"


def build(
    target: Path,
    *,
    requirement: str,
    constraints: Path,
    name: str,
    size: str,
    out: TextIO,
    show: Callable[[str], str | None],
    pip_args: Sequence[str] = (),
    expect: Path | None = None,
) -> None:
    """(Re)create the virtualenv ``target`` holding ``requirement``, every package pinned by
    ``constraints``: ``python -m venv``, then ``pip install`` (``pip_args`` added), its whole
    output in :func:`devstack.cache.build_log` and the lines ``show`` keeps on ``out``
    (prefixed ``rolegate <name lowercased>: ``); then ``target/stamp`` holds :func:`stamp`.
    ``size`` (e.g. "~30 s, ~150 MB") is said before it starts. The caller holds the lock.

    Raises:
        BuildFailed: venv or pip failed (no network to PyPI, a pin not found), or
            ``expect`` (a file the install must make) is missing.
    """
    prefix = f"rolegate {name.lower()}: "
    started = time.monotonic()
    print(f"{prefix}installing {requirement} into {target} ({size}) ...", file=out, flush=True)
    shutil.rmtree(target, ignore_errors=True)
    run_with_progress([sys.executable, "-m", "venv", str(target)], out, prefix=prefix)
    install = [
        str(target / "bin" / "python"),
        *("-m", "pip", "install", "--progress-bar", "off", *pip_args),
        *("-c", str(constraints), requirement),
    ]
    log_path = build_log(target)
    log_path.unlink(missing_ok=True)
    run_with_progress(install, out, prefix=prefix, show=show, log_path=log_path)
    if expect is not None and not expect.is_file():
        raise BuildFailed(f"pip installed {requirement} but {expect} is missing")
    (target / "stamp").write_text(stamp(requirement, constraints))
    elapsed = time.monotonic() - started
    print(f"{prefix}{name} ready in {elapsed:.0f} s", file=out, flush=True)
