"""The pure parts of the image recipe: no subprocess, no cache, each tested on its own.

Owns what the build decides from text and files: the Debian sources the base layer comes from
(read from apt's own configuration), the pip options that pick wheels for the image's CPython
and glibc rather than the host's, the lock file's pins, the console-script wrappers, the OCI
labels and environment, and a reproducible tar writer for the application layer.

References: sources.list(5) (one-line and deb822 formats), PEP 600 (manylinux_x_y tags),
PEP 503 (name normalisation), the OCI image spec's annotations (``org.opencontainers.image.*``).
"""

from __future__ import annotations

import datetime
import os
import re
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Final, NamedTuple

__all__ = [
    "DEBIAN_COMPONENTS",
    "ENV",
    "GLIBC_MINOR",
    "PYTHON_VERSION",
    "SITE_DIR",
    "UID",
    "Pin",
    "debian_sources",
    "labels",
    "normalize",
    "parse_pins",
    "pip_target_options",
    "rfc3339",
    "wrapper_script",
    "write_tar",
]

#: The CPython minor version of Debian bookworm's python3 (3.11.2): the ABI wheels must fit.
PYTHON_VERSION: Final = "3.11"
#: bookworm's glibc is 2.36: the newest manylinux_2_x tag a wheel may carry.
GLIBC_MINOR: Final = 36
#: Where the site directory (``pip install --target``) lives in the image.
SITE_DIR: Final = "/opt/rolegate/site"
#: The non-root user and group the image runs as (distroless' "nonroot" number).
UID: Final = 65532
#: The image's environment, in the order the config lists it.
ENV: Final = (
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("PYTHONPATH", SITE_DIR),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("PYTHONUNBUFFERED", "1"),
    ("LANG", "C.UTF-8"),
)
#: The components of Debian's own archive (third-party repositories use others).
DEBIAN_COMPONENTS: Final = frozenset({"main", "contrib", "non-free", "non-free-firmware"})


def debian_sources(files: Mapping[str, str], *, codename: str) -> list[str]:
    """One-line ``deb URI SUITE main`` entries for Debian ``codename``'s suites
    (``codename``, ``-updates``, ``-security``) found in apt's source files.

    Args:
        files: file name -> text, of ``/etc/apt/sources.list`` and ``sources.list.d/*``;
            only names ending ``.list`` (one-line format) or ``.sources`` (deb822) are read,
            so ``*.disabled`` ones are skipped.
        codename: the Debian release, e.g. ``"bookworm"``.

    A source counts as Debian's when its suite is one of those three, its components are
    Debian's (:data:`DEBIAN_COMPONENTS`) and its Signed-By, if any, names the Debian archive
    keyring; ``deb-src`` and ``Enabled: no`` entries are skipped. Order is kept, duplicates
    dropped. Returns ``[]`` when none is found.
    """
    suites = {codename, f"{codename}-updates", f"{codename}-security"}
    found: list[str] = []
    for name in sorted(files):
        if name.endswith(".list"):
            entries = list(_one_line_entries(files[name]))
        elif name.endswith(".sources"):
            entries = list(_deb822_entries(files[name]))
        else:
            continue
        for uri, suite, components, signed_by in entries:
            if suite not in suites or not set(components) <= DEBIAN_COMPONENTS:
                continue
            if "main" not in components:
                continue
            if signed_by and "debian-archive-keyring" not in signed_by:
                continue
            line = f"deb {uri} {suite} main"
            if line not in found:
                found.append(line)
    return found


class _Entry(NamedTuple):
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str


def _one_line_entries(text: str) -> Iterable[_Entry]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        options = ""
        found = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if found is None:
            continue
        options = found.group(1) or ""
        signed = re.search(r"signed-by=(\S+?)\]?(\s|$)", options)
        yield _Entry(
            found.group(2).rstrip("/"),
            found.group(3),
            tuple(found.group(4).split()),
            signed.group(1) if signed else "",
        )


def _deb822_entries(text: str) -> Iterable[_Entry]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[:1].isspace() and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield _Entry(uri.rstrip("/"), suite, components, fields.get("signed-by", ""))


def pip_target_options(machine: str) -> list[str]:
    """pip options that choose wheels for the image (CPython :data:`PYTHON_VERSION`, glibc
    2.:data:`GLIBC_MINOR`, CPU ``machine`` as ``platform.machine()`` names it, e.g.
    ``"x86_64"``) whatever the host's Python; binary wheels only, as pip requires then.

    pip does not expand a ``manylinux_2_36`` tag to the older ones a wheel may carry, so
    every ``manylinux_2_5`` .. ``manylinux_2_36`` tag and the legacy aliases are listed.
    """
    options = ["--only-binary=:all:", "--implementation", "cp"]
    options += ["--python-version", PYTHON_VERSION]
    options += ["--abi", f"cp{PYTHON_VERSION.replace('.', '')}"]
    for minor in range(GLIBC_MINOR, 4, -1):
        options += ["--platform", f"manylinux_2_{minor}_{machine}"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        options += ["--platform", f"{legacy}_{machine}"]
    return options


def normalize(name: str) -> str:
    """A distribution name normalised as PEP 503 does (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Pin(NamedTuple):
    """One ``name==version`` line of the lock; ``name`` as written."""

    name: str
    version: str


def parse_pins(text: str) -> list[Pin]:
    """The pins of a lock file (``name==version`` lines; comments and blank lines skipped).

    Raises:
        ValueError: a line is not an exact ``==`` pin (the message quotes it).
    """
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)", line)
        if found is None:
            raise ValueError(f"line {number}: {raw.strip()!r} is not an exact `name==version` pin")
        pins.append(Pin(found.group(1), found.group(2)))
    return pins


def wrapper_script(command: str, target: str) -> str:
    """The text of the ``/usr/local/bin/<command>`` wrapper that runs ``target``
    (``"module:function"`` from the wheel's console_scripts), for any python3 on PATH.

    Raises:
        ValueError: ``target`` is not ``module:function``.
    """
    module, _, function = target.partition(":")
    if not module or not function.isidentifier():
        raise ValueError(f"{command}: entry point {target!r} is not module:function")
    return (
        "#!/usr/bin/env python3\n"
        f"# {command}: {target} (rolegate's console script; see image/README.md)\n"
        "import sys\n\n"
        f"if {SITE_DIR!r} not in sys.path:\n"
        f"    sys.path.insert(0, {SITE_DIR!r})\n"
        f"from {module} import {function}\n\n"
        f"sys.exit({function}())\n"
    )


def rfc3339(epoch_s: int) -> str:
    """``epoch_s`` (seconds since 1970, UTC) as RFC 3339 with a ``Z``, e.g.
    ``2026-12-01T20:59:42Z``."""
    moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(
    *,
    version: str,
    revision: str,
    created_s: int,
    description: str,
    licenses: str,
    source: str,
) -> dict[str, str]:
    """The ``org.opencontainers.image.*`` labels; ``source`` is left out when empty."""
    prefix = "org.opencontainers.image."
    values = {
        "title": "rolegate",
        "description": description,
        "version": version,
        "revision": revision,
        "source": source,
        "licenses": licenses,
        "created": rfc3339(created_s),
    }
    return {prefix + key: value for key, value in values.items() if value}


def write_tar(path: Path, members: Sequence[tuple[str, Path | None]], *, mtime_s: int) -> int:
    """Write a reproducible uncompressed tar of ``members`` to ``path``; returns its bytes.

    Args:
        members: ``(name in the tar, source path)``; a None source makes a directory. Each
            source directory is added with everything under it. Names are relative
            (``opt/rolegate/site``).
        mtime_s: every entry's modification time (seconds since 1970): SOURCE_DATE_EPOCH.

    Entries are sorted by name, owned by root (uid and gid 0, no names), with modes
    normalised to 0755 (directories and executables) or 0644; symlinks are kept, other
    special files refused.

    Raises:
        ValueError: a source is a special file (socket, device, fifo).
        OSError: a source cannot be read or ``path`` written.
    """
    entries: dict[str, Path | None] = {}
    for name, source in members:
        name = str(PurePosixPath(name))
        entries[name] = source
        if source is not None and source.is_dir() and not source.is_symlink():
            for root, dirs, files in os.walk(source):
                dirs.sort()
                for child in [*dirs, *files]:
                    full = Path(root) / child
                    entries[f"{name}/{full.relative_to(source).as_posix()}"] = full
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            source = entries[name]
            info = _tar_member(name, source, mtime_s)
            if info.isreg() and source is not None:
                with source.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return path.stat().st_size


def _tar_member(name: str, source: Path | None, mtime_s: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime_s
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if source is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        return info
    mode = source.lstat().st_mode
    if stat.S_ISLNK(mode):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(source)
        return info
    if stat.S_ISDIR(mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        return info
    if not stat.S_ISREG(mode):
        raise ValueError(f"{source}: not a regular file, directory or symlink")
    info.mode = 0o755 if mode & 0o111 else 0o644
    info.size = source.stat().st_size
    return info
