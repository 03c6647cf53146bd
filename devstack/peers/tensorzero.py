"""TensorZero's gateway, a benchmark peer, in a virtualenv of its own under the cache.

Owns :data:`TENSORZERO_VERSION` (the pin), :func:`venv_dir`, :func:`is_built`,
:func:`ensure` and :func:`command`. :func:`ensure` creates
``<cache root>/tensorzero-<version>/`` (:func:`devstack.cache.cache_root`) when it is
missing or incomplete: ``python -m venv``, then ``pip install tensorzero==<version>`` with
every transitive package pinned by ``tensorzero-constraints.txt`` beside this file (one
42 MB manylinux wheel holding the Rust gateway, plus nine small packages for its Python
client; ~30 s, ~150 MB). pip's whole output goes to ``tensorzero-<version>.build.log``
beside the virtualenv; a ``stamp`` holding the requirement and the constraints' hash marks a
complete install, and a file lock keeps two runs from building it at once.

The gateway is started by ``tensorzero_gateway.py`` beside this file, run with that
virtualenv's python (:func:`command`); it uses the package's internal
``_start_http_gateway``, which is why the version is pinned exactly.

``python -m devstack build tensorzero`` builds it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final, TextIO

from devstack.cache import (
    BuildFailed,
    cache_root,
    locked,
    stamped,
)
from devstack.peers import venv

__all__ = ["TENSORZERO_VERSION", "BuildFailed", "command", "ensure", "is_built", "venv_dir"]

#: The TensorZero release benchmarked; change it together with tensorzero-constraints.txt
#: (and check that ``_start_http_gateway`` still has the signature tensorzero_gateway.py uses).
TENSORZERO_VERSION: Final = "2026.6.0"
CONSTRAINTS: Final = Path(__file__).with_name("tensorzero-constraints.txt")
LAUNCHER: Final = Path(__file__).with_name("tensorzero_gateway.py")
_REQUIREMENT: Final = f"tensorzero=={TENSORZERO_VERSION}"


def venv_dir() -> Path:
    """Where the pinned TensorZero lives: ``<cache root>/tensorzero-<version>``."""
    return cache_root() / f"tensorzero-{TENSORZERO_VERSION}"


def is_built() -> bool:
    """Whether the pinned virtualenv is complete (its stamp matches the pins)."""
    return (
        stamped(venv_dir(), venv.stamp(_REQUIREMENT, CONSTRAINTS))
        and (venv_dir() / "bin" / "python").is_file()
    )


def _pip_lines(line: str) -> str | None:
    """pip's lines worth seeing: downloads, the install summary, errors."""
    if line.startswith(("Downloading ", "Successfully installed")) or "error" in line.lower():
        return line.strip()
    return None


def ensure(out: TextIO | None = None) -> Path:
    """The python of the pinned virtualenv, building the virtualenv first when it is missing
    or incomplete (progress on ``out``, default stderr).

    Raises:
        BuildFailed: venv creation or pip failed (no network to PyPI, no wheel for this
            platform: the wheel is manylinux x86_64/aarch64 and macOS only).
    """
    out = out or sys.stderr
    target = venv_dir()
    python = target / "bin" / "python"
    with locked(target):
        if is_built():
            return python
        venv.build(
            target,
            requirement=_REQUIREMENT,
            constraints=CONSTRAINTS,
            name="TensorZero",
            size="~30 s, ~150 MB",
            out=out,
            show=_pip_lines,
            pip_args=("--only-binary", ":all:"),
        )
        return python


def command(config_file: Path) -> list[str]:
    """The argv that serves ``config_file`` (a TensorZero TOML config) and prints
    ``listening on http://127.0.0.1:PORT/openai/v1`` once it does; the virtualenv must be
    built (:func:`ensure`)."""
    return [str(venv_dir() / "bin" / "python"), "-P", str(LAUNCHER), str(config_file)]
