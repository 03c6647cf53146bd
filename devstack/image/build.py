"""``make image``: rolegate's one OCI image (the operator and the gateway), built without a
base image from any registry, into the cache.

Owns the cache entry ``<cache root>/image-<version>/`` with ``rolegate-<version>.oci.tar``
(an OCI image layout in a tar, skopeo's ``oci-archive``), ``image.json`` (what was built:
digests, sizes, labels, seconds) and a ``stamp`` written last; a lock keeps two runs from
building it at once, and every step's whole output goes to ``image-<version>.build.log``.
The stamp holds the project version and a digest of the inputs (the wheel's sources, the lock
image/requirements.txt, the wrappers image/bin/ and this package), so any change rebuilds.

Two layers:

1. Debian bookworm with python3 (:mod:`devstack.image.base`, cached apart: about 70 s once).
2. The application: the project's wheel (``pip wheel --no-deps`` of a copy of its sources)
   and exactly the lock's pins, installed by ``pip install --no-compile --target`` into
   :data:`~devstack.image.recipe.SITE_DIR` with wheels chosen for bookworm's CPython 3.11
   (not the host's), byte-compiled reproducibly (``unchecked-hash``, see :func:`_compile`),
   plus the console-script wrappers in /usr/local/bin; written as a reproducible tar
   (sorted, root-owned, mtimes at SOURCE_DATE_EPOCH).

umoci assembles the layout: user 65532:65532, the environment of
:data:`~devstack.image.recipe.ENV`, working directory /opt/rolegate, the
``org.opencontainers.image.*`` labels, and no entrypoint or command: the chart runs
``rolegate-operator run ...`` or ``rolegate-gateway ...``. The ``revision`` label and
SOURCE_DATE_EPOCH come from the last commit that changed an input (:func:`revision`), so a
later commit that changes none reuses the archive and a cold build gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from devstack import apt
from devstack.cache import BuildFailed, build_log, cache_root, locked, run_with_progress, stamped
from devstack.image import base, oci
from devstack.image.recipe import (
    ENV,
    SITE_DIR,
    UID,
    labels,
    normalize,
    parse_pins,
    pip_target_options,
    rfc3339,
    write_tar,
)

__all__ = [
    "ROOT",
    "archive_path",
    "cache_dir",
    "ensure",
    "finish_entry",
    "info",
    "inputs_digest",
    "is_built",
    "revision",
    "source_date_epoch",
    "version",
    "write_archive",
]

ROOT: Final = Path(__file__).resolve().parents[2]
LOCK: Final = ROOT / "image" / "requirements.txt"
WRAPPERS: Final = ROOT / "image" / "bin"
#: What the wheel is built from, relative to :data:`ROOT` (directories walked).
WHEEL_SOURCES: Final = ("pyproject.toml", "README.md", "gateway", "operator")
_SKIP: Final = ("__pycache__", ".egg-info", ".mypy_cache", ".pytest_cache")
_PREFIX: Final = "rolegate image: "
_WORKDIR: Final = "/opt/rolegate"


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def version() -> str:
    """The project's version, from pyproject.toml (``"0.1.0"``)."""
    return str(_project()["version"])


def cache_dir() -> Path:
    """The cache entry: ``<cache root>/image-<version>``."""
    return cache_root() / f"image-{version()}"


def archive_path() -> Path:
    """The OCI archive: ``<cache entry>/rolegate-<version>.oci.tar`` (it may not exist yet)."""
    return cache_dir() / f"rolegate-{version()}.oci.tar"


def _files(relative: str) -> list[Path]:
    top = ROOT / relative
    if top.is_file():
        return [top]
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.endswith(_SKIP))
        found += [Path(root) / name for name in sorted(files) if not name.endswith(".pyc")]
    return found


def _input_files() -> list[Path]:
    """Every file the image is built from: wheel sources, lock, wrappers, this package."""
    files = [path for relative in WHEEL_SOURCES for path in _files(relative)]
    files += [LOCK, *_files("image/bin"), *_files("devstack/image")]
    return files


def inputs_digest() -> str:
    """A short sha256 (16 hex digits) of the inputs' relative paths and contents.

    Raises:
        OSError: one cannot be read.
    """
    digest = hashlib.sha256()
    for path in _input_files():
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _stamp_text() -> str:
    at = f"revision={revision()} SOURCE_DATE_EPOCH={source_date_epoch()}"
    return f"rolegate {version()} inputs={inputs_digest()} {at} base={base.CODENAME}\n"


def is_built() -> bool:
    """Whether the archive is complete for the current inputs (and the base recipe)."""
    return stamped(cache_dir(), _stamp_text()) and base.is_built() and archive_path().is_file()


def info() -> dict[str, Any]:
    """``image.json`` of the built archive: ``archive``, ``archive_bytes``, ``manifest_digest``,
    ``layers`` (``digest``, ``size`` compressed bytes, ``diff_id``, ``tar_bytes``),
    ``labels``, ``env``, ``created``, ``build_s`` (seconds), ``site_packages``
    (normalised name -> version).

    Raises:
        OSError: it is not built.
    """
    loaded: dict[str, Any] = json.loads((cache_dir() / "image.json").read_text())
    return loaded


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


#: What ``git log`` is asked about for the revision and the epoch: the inputs' top paths.
_INPUT_PATHS: Final = (*WHEEL_SOURCES, "image/requirements.txt", "image/bin", "devstack/image")


def _last_commit() -> tuple[str, int] | None:
    """The hash and time (seconds since 1970) of the last commit that changed an input, else
    of HEAD (inputs never committed); None outside a git checkout."""
    for paths in (["--", *_INPUT_PATHS], []):
        found = _git("log", "-1", "--format=%H %ct", *paths).split()
        if len(found) == 2 and found[1].isdigit():
            return found[0], int(found[1])
    return None


def source_date_epoch() -> int:
    """``$SOURCE_DATE_EPOCH``, else the time of the last commit that changed an input (see
    :func:`revision`), else 0 (seconds since 1970)."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if given.isdigit():
        return int(given)
    last = _last_commit()
    return last[1] if last is not None else 0


def revision() -> str:
    """The ``revision`` label: the last commit that changed an input of the image (the
    wheel's sources, the lock, the wrappers, the build), else HEAD, else ``"unknown"``. Not
    HEAD itself: the cache entry is keyed by the inputs, so a commit that changes none of
    them reuses the archive, and a cold build at that commit must give the same bytes."""
    last = _last_commit()
    return last[0] if last is not None else "unknown"


def _source_label() -> str:
    urls: dict[str, str] = _project().get("urls", {})
    for key in ("Source", "Repository", "Homepage"):
        if urls.get(key):
            return urls[key]
    origin = _git("remote", "get-url", "origin")
    # a clone's origin may be a local path: no use to anyone who pulls the image
    return origin if origin.startswith(("https://", "http://", "git@", "ssh://")) else ""


def _license() -> str:
    value = _project().get("license", "")
    return str(value.get("text", "") if isinstance(value, dict) else value)


def ensure(out: TextIO | None = None) -> Path:
    """The OCI archive of the current sources; built first when missing or stale (progress
    on ``out``, default stderr): about 2 minutes cold (mmdebstrap most of it), 20-30 s when
    only the application layer changed, instant when cached.

    Raises:
        devstack.image.base.NoDebianSource: no Debian source in apt's configuration.
        BuildFailed: mmdebstrap or umoci is missing and cannot be installed here (the
            message says what to install), or a step failed (its last lines and the build
            log's path in the message), or the installed packages differ from the lock.
    """
    out = out or sys.stderr
    try:
        apt.ensure(["mmdebstrap", "umoci"], out, why="the image")
    except apt.AptUnavailable as missing:  # as a build failure, for `python -m devstack build`
        raise BuildFailed(str(missing)) from missing
    entry = cache_dir()
    with locked(entry):
        if is_built():
            return archive_path()
        started = time.monotonic()
        epoch = source_date_epoch()
        rootfs = base.ensure(out)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "stamp").unlink(missing_ok=True)
        log = build_log(entry)
        log.unlink(missing_ok=True)
        work = entry / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        site = _install(work, env=env, out=out, log=log)
        packages = _check_installed(site)
        app_tar = work / "app.tar"
        app_bytes = write_tar(app_tar, _app_members(site), mtime_s=epoch)
        print(f"{_PREFIX}application layer: {app_bytes / 1e6:.1f} MB", file=out, flush=True)
        layout = work / "oci"
        _assemble(layout, [rootfs, app_tar], epoch=epoch, env=env, out=out, log=log)
        image = write_archive(layout, archive_path(), epoch=epoch)
        sizes = [rootfs.stat().st_size, app_bytes]
        record = {
            "archive": str(archive_path()),
            "archive_bytes": archive_path().stat().st_size,
            "manifest_digest": image.digest,
            "layers": [
                {
                    "digest": layer.digest,
                    "size": layer.size,
                    "diff_id": layer.diff_id,
                    "tar_bytes": size,
                }
                for layer, size in zip(image.layers, sizes, strict=True)
            ],
            "labels": image.labels,
            "env": image.env,
            "created": image.config.get("created", ""),
            "base": base.stamp().strip(),
            "build_s": round(time.monotonic() - started, 1),
            "site_packages": packages,
        }
        finish_entry(entry, work, record, _stamp_text())
        print(
            f"{_PREFIX}{archive_path()} ({record['archive_bytes'] / 1e6:.1f} MB, "
            f"{image.digest[:19]}) in {record['build_s']:.0f} s",
            file=out,
            flush=True,
        )
        return archive_path()


def write_archive(layout: Path, archive: Path, *, epoch: int) -> oci.Image:
    """The OCI layout ``layout`` as the tar ``archive`` (written beside it first, then
    renamed: an interrupted build leaves no half archive); the image it holds."""
    partial = archive.with_name("archive.partial")
    write_tar(partial, [(p.name, p) for p in sorted(layout.iterdir())], mtime_s=epoch)
    partial.rename(archive)
    return oci.read_archive(archive)


def finish_entry(entry: Path, work: Path, record: Mapping[str, Any], stamp: str) -> None:
    """Complete a cache entry: ``image.json`` (what was built), the work directory gone,
    the stamp written last (so an interrupted build never looks complete)."""
    (entry / "image.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    (entry / "stamp").write_text(stamp)


def _pip_progress(line: str) -> str | None:
    """pip's lines worth seeing: what it collects and builds, and errors."""
    keep = ("Collecting", "Successfully", "Created wheel", "ERROR", "error:")
    return line.strip() if line.lstrip().startswith(keep) else None


def _install(work: Path, *, env: dict[str, str], out: TextIO, log: Path) -> Path:
    """Build the wheel from a copy of the sources (the checkout is left untouched: no
    build/ or egg-info written into it), then install it and the lock into ``work/site``."""
    src = work / "src"
    for path in [p for relative in WHEEL_SOURCES for p in _files(relative)]:
        target = src / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = work / "wheel"
    pip = [sys.executable, "-m", "pip"]
    run_with_progress(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)],
        out,
        prefix=_PREFIX,
        show=_pip_progress,
        env=env,
        log_path=log,
    )
    built = sorted(wheels.glob("rolegate-*.whl"))
    if len(built) != 1:
        raise BuildFailed(f"pip wheel left {len(built)} rolegate wheels in {wheels}, not one")
    site = work / "site"
    install = [*pip, "install", "--no-compile", "--target", str(site), "--progress-bar", "off"]
    install += [*pip_target_options(platform.machine()), "-r", str(LOCK), str(built[0])]
    run_with_progress(install, out, prefix=_PREFIX, show=_pip_progress, env=env, log_path=log)
    _check_wrappers(built[0])
    # Console scripts pip wrote for the host's python; the image has its own (image/bin).
    shutil.rmtree(site / "bin", ignore_errors=True)
    # direct_url.json names the wheel's path on this machine (PEP 610): not the image's.
    for record in site.glob("*.dist-info/direct_url.json"):
        record.unlink()
    _prune_records(site)
    _compile(site, env=env, out=out, log=log)
    return site


def _compile(site: Path, *, env: dict[str, str], out: TextIO, log: Path) -> None:
    """Byte-compile ``site`` as the image will import it: ``unchecked-hash`` .pyc files (no
    source mtime in them, never rewritten: reproducible, and right for a read-only image),
    named by their path in the image. Importing the operator and the gateway then takes
    1.3 s instead of 4-5.5 s; the site grows from 83 to 116 MB unpacked. Only a CPython 3.11
    host writes bytecode that bookworm's 3.11 reads (one magic number per minor version):
    on another host the image goes without."""
    if sys.version_info[:2] != (3, 11):
        print(
            f"{_PREFIX}not byte-compiling: this is Python {sys.version_info[0]}."
            f"{sys.version_info[1]}, the image's is 3.11",
            file=out,
            flush=True,
        )
        return
    argv = [sys.executable, "-m", "compileall", "-q", "-j", "0"]
    argv += ["--invalidation-mode", "unchecked-hash", "-s", str(site), "-p", SITE_DIR, str(site)]
    run_with_progress(argv, out, prefix=_PREFIX, env=env, log_path=log)


def _prune_records(site: Path) -> None:
    """Drop the RECORD lines of files no longer in ``site`` (the scripts and direct_url.json
    removed above), so no line depends on where the wheel was built."""
    for record in site.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (site / line.split(",", 1)[0]).resolve().is_file()]
        if kept != lines:
            record.write_text("".join(kept))


def _check_wrappers(wheel: Path) -> None:
    """The wheel's console_scripts must be exactly image/bin's wrappers, each running its
    entry point."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(names[0]).decode() if names else ""
    scripts: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            name, _, target = line.partition("=")
            scripts[name.strip()] = target.strip()
    present = {path.name: path.read_text() for path in WRAPPERS.iterdir()}
    wrong = sorted(
        name for name, target in scripts.items() if f": {target} " not in present.get(name, "")
    )
    extra = sorted(set(present) - set(scripts))
    if wrong or extra:
        raise BuildFailed(
            f"image/bin does not match the wheel's console scripts {scripts}: missing or "
            f"stale {wrong}, unknown {extra}; regenerate them with "
            "devstack.image.recipe.wrapper_script (tests/unit/test_image_recipe.py shows how)"
        )


def _check_installed(site: Path) -> dict[str, str]:
    """Normalised name -> version of every distribution in ``site``; they must be exactly
    the lock's pins plus rolegate at :func:`version`.

    Raises:
        BuildFailed: they differ (the message lists how).
    """
    installed: dict[str, str] = {}
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in metadata.read_text().splitlines() if ": " in line
        )
        installed[normalize(fields["Name"])] = fields["Version"]
    wanted = {normalize(pin.name): pin.version for pin in parse_pins(LOCK.read_text())}
    wanted["rolegate"] = version()
    if installed != wanted:
        extra = sorted(set(installed.items()) - set(wanted.items()))
        missing = sorted(set(wanted.items()) - set(installed.items()))
        raise BuildFailed(
            f"{site} differs from {LOCK} plus rolegate {version()}: installed but not "
            f"locked {extra}, locked but not installed {missing}; regenerate the lock with "
            "`python -m devstack.image.lock`"
        )
    return dict(sorted(installed.items()))


def _app_members(site: Path) -> list[tuple[str, Path | None]]:
    """The application layer: the site directory and the wrappers, with their parents."""
    members: list[tuple[str, Path | None]] = [
        ("opt", None),
        (_WORKDIR.lstrip("/"), None),
        (SITE_DIR.lstrip("/"), site),
        ("usr", None),
        ("usr/local", None),
        ("usr/local/bin", None),
    ]
    members += [(f"usr/local/bin/{p.name}", p) for p in sorted(WRAPPERS.iterdir())]
    return members


def _assemble(
    layout: Path, layers: list[Path], *, epoch: int, env: dict[str, str], out: TextIO, log: Path
) -> None:
    """The OCI layout: the layers in order, then the config; unreferenced blobs removed."""
    tag = version()
    image = f"{layout}:{tag}"
    created = rfc3339(epoch)

    def umoci(*args: str) -> None:
        run_with_progress(["umoci", *args], out, prefix=_PREFIX, env=env, log_path=log)

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    for layer, what in zip(layers, ("Debian base (mmdebstrap)", "rolegate"), strict=True):
        umoci(
            "raw",
            "add-layer",
            "--image",
            image,
            "--history.created",
            created,
            "--history.created_by",
            what,
            str(layer),
        )
    project = _project()
    config = ["config", "--image", image, "--created", created, "--history.created", created]
    config += ["--history.created_by", "rolegate image config"]
    config += [f"--config.user={UID}:{UID}", f"--config.workingdir={_WORKDIR}"]
    config += [f"--config.env={name}={value}" for name, value in ENV]
    found = labels(
        version=tag,
        revision=revision(),
        created_s=epoch,
        description=str(project.get("description", "")),
        licenses=_license(),
        source=_source_label(),
    )
    config += [f"--config.label={name}={value}" for name, value in found.items()]
    umoci(*config)
    umoci("gc", "--layout", str(layout))
