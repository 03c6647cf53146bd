"""LiteLLM's proxy in a virtualenv of its own, under the cache, never in ours.

Owns :data:`LITELLM_VERSION` (the pin), :func:`venv_dir` and :func:`ensure`, which creates
``${ROLEGATE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/rolegate}/litellm-<version>/`` when it is
missing or incomplete: ``python -m venv``, then ``pip install litellm[proxy]==<version>``
with every transitive package pinned by ``bench/litellm-constraints.txt``, printing pip's
progress as it goes (about 30 s with a warm pip cache, 1-2 min cold, ~700 MB). A ``stamp``
file holding the requirement and the constraints' hash marks a complete install; a file
lock keeps two runs from building it at once.

``python -m bench.litellm_env`` builds it and prints the path of the ``litellm`` CLI.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from tests.cache import BuildFailed, cache_root, locked, run_with_progress, stamped

__all__ = ["LITELLM_VERSION", "InstallError", "cache_root", "ensure", "is_installed", "venv_dir"]

#: The LiteLLM release benchmarked. Newer releases require a certifi newer than PyPI had
#: when this was pinned; change it together with litellm-constraints.txt.
LITELLM_VERSION = "1.100.5"
CONSTRAINTS = Path(__file__).with_name("litellm-constraints.txt")
_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
_PREFIX = "rolegate bench: "

#: The LiteLLM virtualenv could not be built; the message holds the failing command and the
#: end of its output.
InstallError = BuildFailed


def venv_dir() -> Path:
    """Where the pinned LiteLLM lives: ``<cache root>/litellm-<version>``."""
    return cache_root() / f"litellm-{LITELLM_VERSION}"


def _stamp_text() -> str:
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    return f"{_REQUIREMENT} constraints={digest} python={sys.version_info[:2]}\n"


def is_installed() -> bool:
    """Whether the pinned virtualenv is complete (its stamp matches the pins)."""
    return stamped(venv_dir(), _stamp_text()) and (venv_dir() / "bin" / "litellm").is_file()


def ensure(out: TextIO | None = None) -> Path:
    """The ``litellm`` CLI of the pinned virtualenv, building the virtualenv first when it
    is missing or incomplete (progress on ``out``, default stderr).

    Raises:
        InstallError: venv creation or pip failed (no network to PyPI, a pin not found).
    """
    out = out or sys.stderr
    target = venv_dir()
    cli = target / "bin" / "litellm"
    with locked(target):
        if is_installed():
            return cli
        started = time.monotonic()
        print(
            f"{_PREFIX}installing {_REQUIREMENT} into {target} (1-2 min, ~700 MB) ...",
            file=out,
            flush=True,
        )
        shutil.rmtree(target, ignore_errors=True)
        run_with_progress([sys.executable, "-m", "venv", str(target)], out, prefix=_PREFIX)
        pip = [str(target / "bin" / "python"), "-m", "pip"]
        install = [*pip, "install", "--progress-bar", "off", "-c", str(CONSTRAINTS), _REQUIREMENT]
        run_with_progress(install, out, prefix=_PREFIX)
        if not cli.is_file():
            raise InstallError(f"pip installed {_REQUIREMENT} but {cli} is missing")
        (target / "stamp").write_text(_stamp_text())
        print(f"{_PREFIX}LiteLLM ready in {time.monotonic() - started:.0f} s", file=out, flush=True)
        return cli


if __name__ == "__main__":
    print(ensure())
