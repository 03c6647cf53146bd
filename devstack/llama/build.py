"""llama.cpp's OpenAI-compatible server in a virtualenv of its own, built once into the cache.

Owns the pin (:data:`VERSION`), the build flags, the cache entry
``<cache root>/llama-cpp-python-<version>/`` (``wheel/`` with the wheel compiled from PyPI's
sdist, ``venv/`` with it and its ``server`` extra installed under ``constraints.txt``, and a
``stamp`` written last) and :func:`ensure`, which builds what is missing. The first build
compiles llama.cpp from source, 3-5 minutes on two cores, printing its progress; a venv
rebuilt from a cached wheel takes seconds. A file lock keeps two runs from building at once.

``python -m devstack build llama`` builds it; pip's whole output goes to
``<cache root>/llama-cpp-python-<version>.build.log``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TextIO

from devstack.cache import (
    BuildFailed,
    build_log,
    cache_root,
    locked,
    pins_digest,
    run_with_progress,
    stamped,
)

__all__ = ["VERSION", "BuildFailed", "ensure", "home", "is_built", "python"]

#: llama-cpp-python on PyPI; its sdist vendors llama.cpp at a fixed commit.
VERSION: Final = "0.3.36"
#: Only the shared libraries the Python package loads: no llava/mtmd (the package imports it
#: lazily, for multimodal chat formats only), tools, examples, tests or C++ server. No
#: ``-march=native`` either: a cache copied to another CPU must not die of SIGILL, and the
#: tiny models need no vector extensions to be fast.
CMAKE_ARGS: Final = (
    "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)
CONSTRAINTS: Final = Path(__file__).with_name("constraints.txt")
_PREFIX: Final = "rolegate llama: "
_STEP: Final = re.compile(r"^\[(\d+)/(\d+)\]")


def home() -> Path:
    """The cache entry: ``<cache root>/llama-cpp-python-<version>``."""
    return cache_root() / f"llama-cpp-python-{VERSION}"


def python() -> Path:
    """The virtualenv's interpreter (it may not exist yet: see :func:`ensure`)."""
    return home() / "venv" / "bin" / "python"


def _wheel_stamp() -> str:
    return f"llama-cpp-python=={VERSION} cmake={CMAKE_ARGS!r} python={sys.version_info[:2]}\n"


def _stamp_text() -> str:
    digest = pins_digest(CONSTRAINTS)
    return f"{_wheel_stamp().strip()} constraints={digest}\n"


def is_built() -> bool:
    """Whether the virtualenv is complete for the current pins."""
    return stamped(home(), _stamp_text()) and python().is_file()


def _compile_progress() -> Callable[[str], str | None]:
    """A line filter for ``pip wheel -v``: ninja's ``[n/N]`` steps, one line per tenth."""
    shown = {"last": -1}

    def show(line: str) -> str | None:
        step = _STEP.match(line.strip())
        if step is None:
            keep = ("Building wheel", "Created wheel", "Successfully built", "error", "Error")
            return line.strip() if any(word in line for word in keep) else None
        done, total = int(step.group(1)), int(step.group(2))
        tenth = done * 10 // total
        if tenth == shown["last"]:
            return None
        shown["last"] = tenth
        return f"compiling llama.cpp: {done}/{total}"

    return show


def _build_wheel(out: TextIO) -> Path:
    """Compile the wheel into ``home()/wheel`` (unless its stamp matches); returns its path."""
    wheel_dir = home() / "wheel"
    wheels = sorted(wheel_dir.glob(f"llama_cpp_python-{VERSION}-*.whl"))
    if stamped(wheel_dir, _wheel_stamp()) and wheels:
        return wheels[-1]
    shutil.rmtree(wheel_dir, ignore_errors=True)
    print(
        f"{_PREFIX}compiling llama-cpp-python {VERSION} from source into {wheel_dir} "
        "(once; 3-5 minutes on two cores) ...",
        file=out,
        flush=True,
    )
    env = {
        **os.environ,
        "CMAKE_ARGS": CMAKE_ARGS,
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
    }
    # --no-cache-dir: pip would otherwise reuse a wheel it built earlier with other flags.
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python"]
    argv += ["--no-cache-dir", "-v", "-w", str(wheel_dir), f"llama-cpp-python=={VERSION}"]
    run_with_progress(
        argv, out, prefix=_PREFIX, show=_compile_progress(), env=env, log_path=build_log(home())
    )
    wheels = sorted(wheel_dir.glob(f"llama_cpp_python-{VERSION}-*.whl"))
    if not wheels:
        raise BuildFailed(f"pip wheel finished but left no llama_cpp_python wheel in {wheel_dir}")
    (wheel_dir / "stamp").write_text(_wheel_stamp())
    return wheels[-1]


def ensure(out: TextIO | None = None) -> Path:
    """The virtualenv's python, with ``llama_cpp.server`` importable; builds the wheel and
    the virtualenv first when they are missing or stale (progress on ``out``, default stderr).

    Raises:
        BuildFailed: compiling or installing failed (no compiler or cmake, PyPI unreachable);
            the message holds the command and its last lines.
    """
    out = out or sys.stderr
    target = home()
    with locked(target):
        if is_built():
            return python()
        started = time.monotonic()
        build_log(home()).unlink(missing_ok=True)
        wheel = _build_wheel(out)
        venv = target / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        (target / "stamp").unlink(missing_ok=True)
        print(f"{_PREFIX}installing the llama.cpp server into {venv} ...", file=out, flush=True)
        run_with_progress([sys.executable, "-m", "venv", str(venv)], out, prefix=_PREFIX)
        install = [str(python()), "-m", "pip", "install", "--progress-bar", "off", "--quiet"]
        install += ["-c", str(CONSTRAINTS), f"llama-cpp-python[server] @ {wheel.as_uri()}"]
        run_with_progress(install, out, prefix=_PREFIX, log_path=build_log(home()))
        run_with_progress([str(python()), "-c", "import llama_cpp.server.app"], out, prefix=_PREFIX)
        (target / "stamp").write_text(_stamp_text())
        print(
            f"{_PREFIX}llama.cpp server ready in {time.monotonic() - started:.0f} s",
            file=out,
            flush=True,
        )
        return python()
