"""LiteLLM's proxy, the benchmark's first peer, in a virtualenv of its own under the cache.

Owns :data:`LITELLM_VERSION` (the pin), :func:`venv_dir` and :func:`ensure`, which creates
``${ROLEGATE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/rolegate}/litellm-<version>/`` when it is
missing or incomplete: ``python -m venv``, then ``pip install litellm[proxy]==<version>``
with every transitive package pinned by ``litellm-constraints.txt`` beside this file (about
30 s with a warm pip cache, 1-2 min cold, ~700 MB). It prints a progress line per 50 packages;
pip's whole output goes to ``litellm-<version>.build.log`` beside the virtualenv. A ``stamp``
file holding the requirement and the constraints' hash marks a complete install; a file
lock keeps two runs from building it at once.

``python -m devstack build litellm`` builds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from devstack.cache import (
    BuildFailed,
    cache_root,
    locked,
    stamped,
)
from devstack.peers import venv

__all__ = ["LITELLM_VERSION", "BuildFailed", "ensure", "is_built", "venv_dir"]

#: The LiteLLM release benchmarked. Newer releases require a certifi newer than PyPI had
#: when this was pinned; change it together with litellm-constraints.txt.
LITELLM_VERSION = "1.100.5"
CONSTRAINTS = Path(__file__).with_name("litellm-constraints.txt")
_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"


def venv_dir() -> Path:
    """Where the pinned LiteLLM lives: ``<cache root>/litellm-<version>``."""
    return cache_root() / f"litellm-{LITELLM_VERSION}"


def is_built() -> bool:
    """Whether the pinned virtualenv is complete (its stamp matches the pins)."""
    return (
        stamped(venv_dir(), venv.stamp(_REQUIREMENT, CONSTRAINTS))
        and (venv_dir() / "bin" / "litellm").is_file()
    )


def _pip_progress() -> Callable[[str], str | None]:
    """A line filter for ``pip install``: one line per 50 packages collected, and the end."""
    seen = {"collected": 0}

    def show(line: str) -> str | None:
        if line.startswith("Collecting "):
            seen["collected"] += 1
            count = seen["collected"]
            return f"{count} packages collected" if count % 50 == 0 else None
        if line.startswith("Successfully installed"):
            return f"installed {len(line.split()) - 2} packages"
        return line if "error" in line.lower() else None

    return show


def ensure(out: TextIO | None = None) -> Path:
    """The ``litellm`` CLI of the pinned virtualenv, building the virtualenv first when it
    is missing or incomplete (progress on ``out``, default stderr).

    Raises:
        BuildFailed: venv creation or pip failed (no network to PyPI, a pin not found).
    """
    out = out or sys.stderr
    target = venv_dir()
    cli = target / "bin" / "litellm"
    with locked(target):
        if is_built():
            return cli
        venv.build(
            target,
            requirement=_REQUIREMENT,
            constraints=CONSTRAINTS,
            name="LiteLLM",
            size="1-2 min, ~700 MB",
            out=out,
            show=_pip_progress(),
            expect=cli,
        )
        return cli
