"""kstatus, the library itself, as a command the tests run: is this object's rollout done?

kstatus (``sigs.k8s.io/cli-utils/pkg/kstatus/status``) is what Flux, the cli-utils applier
and kpt compute to wait for a rollout: ``InProgress`` until ``status.observedGeneration``
equals ``metadata.generation`` and the ``Ready`` condition is True, then ``Current``
(https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md).

This module owns the cache entry ``<cache root>/kstatus-<cli-utils version>/`` holding
``bin/rolegate-kstatus``, built with ``go build`` from this directory's Go module
(``main.go``; the version pinned in ``go.mod``, its checksums in ``go.sum``, fetched through
the Go module proxy) and keyed by a sha256 of those files (``stamp``, written last, in a
directory renamed into place, so an interrupted build never looks complete); and
:func:`compute`, which runs it on one object. A build takes about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final, TextIO

from devstack.cache import (
    BuildFailed,
    build_log,
    cache_root,
    files_digest,
    locked,
    run_with_progress,
    stamped,
)
from devstack.k8s.build import hide_module_chatter

__all__ = ["BINARY", "SOURCES", "VERSION", "BuildFailed", "binary", "compute", "ensure"]

_HERE: Final = Path(__file__).resolve().parent
SOURCES: Final = (_HERE / "go.mod", _HERE / "go.sum", _HERE / "main.go")
BINARY: Final = "rolegate-kstatus"


def _pinned() -> str:
    found = re.search(r"^\s*sigs\.k8s\.io/cli-utils (v\S+)", SOURCES[0].read_text(), re.M)
    if found is None:
        raise ValueError(f"{SOURCES[0]} requires no sigs.k8s.io/cli-utils")
    return found.group(1)


#: The pinned sigs.k8s.io/cli-utils version (from go.mod), e.g. ``v0.37.2``.
VERSION: Final = _pinned()


def cache_dir() -> Path:
    """``<cache root>/kstatus-<VERSION>``."""
    return cache_root() / f"kstatus-{VERSION}"


def binary() -> Path:
    """The command (it may not exist yet: see :func:`ensure`)."""
    return cache_dir() / "bin" / BINARY


def is_built() -> bool:
    """Whether the command is built from the current sources."""
    return stamped(cache_dir(), files_digest(SOURCES)) and os.access(binary(), os.X_OK)


def _go() -> str:
    """The go command: ``$GO``, else ``go`` on PATH, else /usr/local/go/bin/go (as build.sh)."""
    return os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"


def ensure(out: TextIO | None = None) -> Path:
    """:func:`binary`, built first when missing or stale (progress lines to ``out``, default
    stderr; the whole output in ``<entry>.build.log``).

    Raises:
        BuildFailed: ``go build`` failed (no Go, no module proxy); its last lines attached.
    """
    entry = cache_dir()
    if is_built():
        return binary()
    with locked(entry):
        if is_built():
            return binary()
        staging = entry.with_name(f"{entry.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        argv = [_go(), "-C", str(_HERE), "build", "-trimpath", "-mod=readonly"]
        argv += ["-o", str(staging / "bin" / BINARY), "."]
        run_with_progress(
            argv,
            out,
            prefix="kstatus: ",
            show=hide_module_chatter,
            env={**os.environ, "CGO_ENABLED": "0"},
            log_path=build_log(entry),
        )
        (staging / "stamp").write_text(files_digest(SOURCES))
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
    return binary()


def compute(obj: dict[str, Any], *, command: Path | None = None) -> tuple[str, str]:
    """(status, message) kstatus computes for ``obj`` (a raw object, as ``kubectl get -o
    json`` prints it): status is one of ``InProgress``, ``Current``, ``Failed``,
    ``Terminating``, ``NotFound``, ``Unknown``. ``command``: the built binary (default
    :func:`binary`; build it first with :func:`ensure`).

    Raises:
        subprocess.CalledProcessError: the command failed (not an object).
    """
    done = subprocess.run(
        [str(command or binary())],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(done.stdout)
    return str(answer["status"]), str(answer["message"])
