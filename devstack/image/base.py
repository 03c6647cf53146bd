"""The image's base layer: a minimal Debian root filesystem with python3, built by mmdebstrap
from the Debian mirror apt already uses, once into the cache.

Owns the cache entry ``<cache root>/image-base-<codename>/`` (``rootfs.tar`` and a ``stamp``
written last, under a lock, with mmdebstrap's whole output in ``image-base-<codename>.build.log``)
and the recipe: ``--variant=essential`` plus python3 and ca-certificates, merged /usr (without
the hook, usrmerge pulls in perl: 45 MB more), no man pages, docs (but their copyright files),
locales or info pages, apt's caches and logs removed, and the user and group ``rolegate``
(:data:`~devstack.image.recipe.UID`). About 70 s and 115 MB on two cores; the stamp is a digest
of the recipe, the sources and SOURCE_DATE_EPOCH (:func:`source_date_epoch`: the time of
the last commit that changed this file), so the entry is reused by every image build until
one changes, and a cold build gives the same bytes as the cached one for one state of the
mirror.

Reference: mmdebstrap(1) (``--variant``, ``--hook-dir``, ``--dpkgopt``, ``--customize-hook``,
SOURCE_DATE_EPOCH); /work/shared/reference/kubernetes-packaging.md 2.2.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from devstack.cache import (
    BuildFailed,
    build_log,
    cache_root,
    locked,
    run_with_progress,
    stamped,
)
from devstack.image.recipe import UID, debian_sources

__all__ = [
    "CODENAME",
    "PACKAGES",
    "NoDebianSource",
    "ensure",
    "home",
    "is_built",
    "mirrors",
    "source_date_epoch",
    "stamp",
]

#: The Debian release: its python3 (3.11.2) is the CPython the site directory is built for.
CODENAME: Final = "bookworm"
#: Packages on top of the essential set.
PACKAGES: Final = ("python3", "ca-certificates")
#: Overrides the Debian sources read from apt: one URI (``http://mirror/debian``).
MIRROR_ENV: Final = "ROLEGATE_DEBIAN_MIRROR"
_HOOKS: Final = Path("/usr/share/mmdebstrap/hooks/merged-usr")
_PREFIX: Final = "rolegate image base: "
_EXCLUDES: Final = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
_CUSTOMIZE: Final = (
    f'echo "rolegate:x:{UID}:{UID}:rolegate:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"',
    f'echo "rolegate:x:{UID}:" >> "$1/etc/group"',
    'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*',
)


class NoDebianSource(BuildFailed):
    """apt's configuration names no Debian source for :data:`CODENAME` (and
    ``$ROLEGATE_DEBIAN_MIRROR`` is unset)."""


def home() -> Path:
    """The cache entry: ``<cache root>/image-base-<codename>``."""
    return cache_root() / f"image-base-{CODENAME}"


def mirrors(apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """One-line ``deb URI SUITE main`` sources for :data:`CODENAME`: from
    ``$ROLEGATE_DEBIAN_MIRROR`` when set, else those of ``sources.list`` and
    ``sources.list.d/*.{list,sources}`` under ``apt_dir`` that are Debian's own.

    Raises:
        NoDebianSource: none is found.
    """
    uri = os.environ.get(MIRROR_ENV, "").strip()
    if uri:
        return [f"deb {uri.rstrip('/')} {CODENAME} main"]
    files: dict[str, str] = {}
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        try:
            files[path.name] = path.read_text()
        except OSError:
            continue
    found = debian_sources(files, codename=CODENAME)
    if not found:
        raise NoDebianSource(
            f"no Debian {CODENAME} source in {apt_dir}/sources.list or sources.list.d/; "
            f"set {MIRROR_ENV}=http://deb.debian.org/debian (or your mirror)"
        )
    return found


def _argv(output: Path, sources: list[str]) -> list[str]:
    argv = ["mmdebstrap", "--variant=essential", f"--include={','.join(PACKAGES)}"]
    argv += [f"--hook-dir={_HOOKS}", *(f"--dpkgopt={option}" for option in _EXCLUDES)]
    argv += [f"--customize-hook={hook}" for hook in _CUSTOMIZE]
    return [*argv, CODENAME, str(output), *sources]


def source_date_epoch() -> int:
    """The base's SOURCE_DATE_EPOCH (seconds since 1970): ``$SOURCE_DATE_EPOCH``, else the
    time of the last commit that changed this recipe (this file), else 0. Not the last
    commit's: the base is shared by every commit until its recipe changes, and a cold build
    must give what a cached one has."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if given.isdigit():
        return int(given)
    here = Path(__file__).resolve()
    try:
        done = subprocess.run(
            ["git", "-C", str(here.parent), "log", "-1", "--format=%ct", "--", here.name],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return 0
    committed = done.stdout.strip()
    return int(committed) if committed.isdigit() else 0


def _stamp_text(sources: list[str], epoch_s: int) -> str:
    recipe = "\n".join(_argv(Path("rootfs.tar"), sources))
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return f"debian {CODENAME} recipe={digest} SOURCE_DATE_EPOCH={epoch_s}\n"


def is_built() -> bool:
    """Whether ``rootfs.tar`` is complete for the current recipe, sources and epoch; False
    too when no Debian source is found."""
    try:
        wanted = _stamp_text(mirrors(), source_date_epoch())
    except NoDebianSource:
        return False
    return stamped(home(), wanted) and (home() / "rootfs.tar").is_file()


def stamp() -> str:
    """The stamp of the built base (recipe digest and the epoch it was built at).

    Raises:
        OSError: it is not built.
    """
    return (home() / "stamp").read_text()


def ensure(out: TextIO | None = None) -> Path:
    """``rootfs.tar``, the base layer; built first when missing or its recipe, sources or
    :func:`source_date_epoch` changed (about 70 s; progress on ``out``, default stderr).

    Raises:
        NoDebianSource: see :func:`mirrors`.
        BuildFailed: mmdebstrap failed (not root and no user namespaces, mirror unreachable);
            its last lines and the build log's path are in the message.
    """
    out = out or sys.stderr
    entry = home()
    with locked(entry):
        if is_built():
            return entry / "rootfs.tar"
        sources = mirrors()
        epoch_s = source_date_epoch()
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "stamp").unlink(missing_ok=True)
        partial = entry / "rootfs.tar.partial"
        partial.unlink(missing_ok=True)
        build_log(entry).unlink(missing_ok=True)
        print(
            f"{_PREFIX}Debian {CODENAME} with {', '.join(PACKAGES)} from {sources[0].split()[1]} "
            "(once; about 70 s) ...",
            file=out,
            flush=True,
        )
        started = time.monotonic()
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch_s)}
        argv = _argv(partial, sources)
        # mmdebstrap picks its output format from the name: say tar explicitly.
        argv.insert(1, "--format=tar")
        run_with_progress(
            argv, out, prefix=_PREFIX, show=_progress, env=env, log_path=build_log(entry)
        )
        partial.rename(entry / "rootfs.tar")
        (entry / "stamp").write_text(_stamp_text(sources, epoch_s))
        size_mb = (entry / "rootfs.tar").stat().st_size / 1e6
        print(
            f"{_PREFIX}{size_mb:.0f} MB in {time.monotonic() - started:.0f} s",
            file=out,
            flush=True,
        )
        return entry / "rootfs.tar"


def _progress(line: str) -> str | None:
    """mmdebstrap's step lines (``I: ...``), warnings and errors."""
    return line if line.startswith(("I:", "W:", "E:")) else None
