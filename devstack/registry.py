"""A local OCI registry on loopback, and pushing the image's archive to it.

Owns the crane binary (go-containerregistry's CLI, :data:`CRANE_VERSION`), built once with
``go install`` into the cache entry ``<cache root>/crane-<version>/`` (``bin/crane`` and a
``stamp`` written last, under a lock; about 2 minutes cold, seconds when Go's module cache is
warm), :class:`Registry` (``crane registry serve`` on 127.0.0.1 with its blobs on disk, a
:class:`~devstack.process.Process`) and :func:`push` (an OCI archive to ``host:port/repo:tag``,
plain HTTP).

    registry = Registry(disk=tmp / "registry", log_path=tmp / "registry.log")
    with registry:  # (Process.__enter__ is typed as returning a Process)
        registry.wait_serving()
        digest = push(archive, f"{registry.host}/rolegate/rolegate:0.1.0")

Reference: go-containerregistry cmd/crane/doc (``crane push`` reads a directory as an OCI
image layout, a file as a docker tarball: so the archive is unpacked first),
kubernetes-packaging.md 2.4.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Final, TextIO

from devstack import http
from devstack.cache import BuildFailed, build_log, cache_root, locked, run_with_progress, stamped
from devstack.process import Process, free_ports

__all__ = [
    "CRANE_VERSION",
    "CraneError",
    "Registry",
    "crane",
    "ensure_crane",
    "is_built",
    "manifest",
    "push",
    "validate",
]

#: github.com/google/go-containerregistry's release.
CRANE_VERSION: Final = "v0.22.1"
_MODULE: Final = "github.com/google/go-containerregistry/cmd/crane"
_PREFIX: Final = "rolegate crane: "


class CraneError(RuntimeError):
    """A crane command failed; the message holds the command and its stderr."""


def home() -> Path:
    """The cache entry: ``<cache root>/crane-<version>``."""
    return cache_root() / f"crane-{CRANE_VERSION}"


def crane() -> Path:
    """The crane binary (it may not exist yet: see :func:`ensure_crane`)."""
    return home() / "bin" / "crane"


def _stamp_text() -> str:
    return f"{_MODULE}@{CRANE_VERSION}\n"


def is_built() -> bool:
    """Whether crane is built at :data:`CRANE_VERSION`."""
    return stamped(home(), _stamp_text()) and crane().is_file()


def ensure_crane(out: TextIO | None = None) -> Path:
    """The crane binary; ``go install``-ed first when missing (progress on ``out``, default
    stderr: one line per 20 packages compiled).

    Raises:
        BuildFailed: Go is not on PATH, or the build failed (the proxy unreachable); the
            message holds the last lines and names the build log.
    """
    out = out or sys.stderr
    entry = home()
    with locked(entry):
        if is_built():
            return crane()
        if shutil.which("go") is None:
            raise BuildFailed(f"building crane {CRANE_VERSION} needs Go on PATH (go.dev/dl)")
        shutil.rmtree(entry, ignore_errors=True)
        (entry / "bin").mkdir(parents=True)
        build_log(entry).unlink(missing_ok=True)
        print(f"{_PREFIX}go install {_MODULE}@{CRANE_VERSION} (once) ...", file=out, flush=True)
        env = {**os.environ, "GOBIN": str(entry / "bin"), "CGO_ENABLED": "0"}
        counted = {"lines": 0}

        def show(line: str) -> str | None:
            counted["lines"] += 1
            if line.startswith("go: downloading") or "error" in line.lower():
                return line
            return f"{counted['lines']} packages" if counted["lines"] % 20 == 0 else None

        argv = ["go", "install", "-v", f"{_MODULE}@{CRANE_VERSION}"]
        run_with_progress(argv, out, prefix=_PREFIX, show=show, env=env, log_path=build_log(entry))
        (entry / "stamp").write_text(_stamp_text())
        return crane()


def _run(*args: str, timeout_s: float = 300.0) -> str:
    argv = [str(crane()), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as expired:
        raise CraneError(f"{' '.join(argv)} did not finish in {timeout_s:g} s") from expired
    if done.returncode != 0:
        raise CraneError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


class Registry(Process):
    """``crane registry serve`` on 127.0.0.1 (a free port unless ``port``), blobs kept
    under ``disk``; a context manager that starts and stops it. ``host`` is
    ``127.0.0.1:<port>``, the prefix of its image references; it speaks plain HTTP
    (``--insecure`` for crane, ``--tls-verify=false`` for podman and skopeo).

    Build crane first (:func:`ensure_crane`); the constructor raises OSError otherwise.
    """

    def __init__(self, *, disk: Path, log_path: Path, port: int | None = None) -> None:
        if not is_built():
            raise OSError(f"crane is not built: call devstack.registry.ensure_crane() ({home()})")
        self.port: Final = port or free_ports(1)[0]
        self.host: Final = f"127.0.0.1:{self.port}"
        disk.mkdir(parents=True, exist_ok=True)
        argv = [str(crane()), "registry", "serve", "--address", self.host, "--disk", str(disk)]
        super().__init__("registry", argv, log_path=log_path)
        self.url = f"http://{self.host}"

    def wait_serving(self, timeout_s: float = 30.0) -> float:
        """Wait until ``GET /v2/`` answers 200; returns the seconds it took.

        Raises:
            ProcessDied: it exited (the port was taken, say).
            NotReady: not serving within ``timeout_s`` seconds.
        """
        return self.wait_ready(
            lambda: http.get(f"{self.url}/v2/").status == 200, what="GET /v2/", timeout_s=timeout_s
        )


def push(archive: Path, ref: str) -> str:
    """Push the image in the OCI archive ``archive`` (one manifest) to ``ref``
    (``host:port/repository:tag``, plain HTTP); returns the pushed manifest's digest
    (``sha256:...``). crane reads an OCI layout from a directory, so the archive is
    unpacked into a temporary one first.

    Raises:
        OSError: crane is not built, or the archive cannot be read.
        CraneError: the push failed (the registry down, say).
    """
    if not is_built():
        raise OSError(f"crane is not built: call devstack.registry.ensure_crane() ({home()})")
    with tempfile.TemporaryDirectory(prefix="rolegate-push-") as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        pushed = _run("push", "--insecure", tmp, ref)
    return pushed.rpartition("@")[2]


def manifest(ref: str) -> dict[str, Any]:
    """The manifest at ``ref`` in a plain-HTTP registry, parsed.

    Raises:
        CraneError: it cannot be fetched.
    """
    loaded: dict[str, Any] = json.loads(_run("manifest", "--insecure", ref))
    return loaded


def validate(ref: str) -> str:
    """``crane validate --remote`` of ``ref`` (every blob fetched and its digest checked);
    returns crane's report (``PASS: ...``).

    Raises:
        CraneError: validation failed.
    """
    return _run("validate", "--insecure", "--remote", ref)
