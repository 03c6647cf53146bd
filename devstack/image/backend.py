"""The vLLM-compatible test backend image: ``vllm serve`` answered by llama.cpp on a tiny model.

    python -m devstack.image.backend        # build when missing or stale; prints the archive

Owns the cache entry ``<cache root>/image-test-vllm/`` with ``rolegate-test-vllm.oci.tar`` (an
OCI image layout in a tar, one manifest tagged with :func:`tag`), ``image.json`` (what was
built) and a ``stamp`` written last, under a lock, every step's output in
``image-test-vllm.build.log``. The stamp holds a digest of the inputs (:func:`inputs_digest`:
this module, :mod:`devstack.image.vllm_shim`, the llama.cpp pins and build flags, the model
generator, the runtime packages) and the base layer's stamp, so any change rebuilds; the tag is
that digest, so a node that has an older build pulls or imports the new one.

Two layers, no registry pulls:

1. Debian bookworm with python3 (:mod:`devstack.image.base`, the rolegate image's cached base).
2. The backend: libstdc++6 and libgomp1 (the llama.cpp libraries need them; ``apt-get
   download`` from apt's mirror, unpacked with ``dpkg-deb -x``), the llama-cpp-python wheel
   cached by :mod:`devstack.llama.build` with its ``server`` extra pinned by
   ``devstack/llama/constraints.txt`` (PyPI wheels for bookworm's CPython 3.11) in
   :data:`SITE_DIR`, the ``vllm`` command (:mod:`devstack.image.vllm_shim`) in
   /usr/local/bin, and the tiny GGUF model ``tiny-a`` (:mod:`devstack.llama.model`) at
   :data:`MODEL_PATH`.

It runs as root (uid 0, as vLLM's images do) with ``HOME=/root``; a pod needs no capabilities.
Getting it to the real node: :func:`load` (``ctr images import``: :func:`ref`, pulled
``IfNotPresent``) or :func:`push` (a local registry, as :mod:`devstack.helm_install` does).
About 25 s with the base and the llama.cpp wheel cached (pip's downloads, the byte-compilation
and the archive); instant when cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from devstack import apt, registry
from devstack.cache import BuildFailed, build_log, cache_root, locked, run_with_progress, stamped
from devstack.image import base
from devstack.image import build as image_build
from devstack.image.recipe import pip_target_options, rfc3339, write_tar
from devstack.llama import build as llama_build
from devstack.llama import model as llama_model

if TYPE_CHECKING:
    from devstack.k8s.realnode import RealNode

__all__ = [
    "BASE_NAME",
    "MODEL_PATH",
    "PACKAGES",
    "SITE_DIR",
    "archive_path",
    "cache_dir",
    "ensure",
    "info",
    "inputs_digest",
    "is_built",
    "load",
    "main",
    "push",
    "ref",
    "tag",
]

#: The name :func:`load` imports the archive as (``<BASE_NAME>:<tag>``).
BASE_NAME: Final = "localhost/rolegate-test-vllm"
#: Debian packages unpacked into the layer: the llama.cpp libraries link against them.
PACKAGES: Final = ("libstdc++6", "libgomp1")
#: Where the Python packages live in the image (``pip install --target``).
SITE_DIR: Final = "/opt/vllm/site"
#: The baked-in model (``tiny-a`` of :data:`devstack.llama.model.MODELS`).
MODEL_PATH: Final = "/models/tiny.gguf"
_MODEL: Final = "tiny-a"
_SHIM_MODULE: Final = "rolegate_vllm_shim"
_HERE: Final = Path(__file__).resolve().parent
_LLAMA: Final = Path(llama_build.__file__).resolve().parent
_INPUTS: Final = (
    _HERE / "backend.py",
    _HERE / "vllm_shim.py",
    _LLAMA / "constraints.txt",
    _LLAMA / "model.py",
)
_PREFIX: Final = "rolegate test vllm image: "
_Step = Callable[[list[str]], None]  # runs one build command (progress shown, output logged)
_ENV: Final = (
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/root"),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("LANG", "C.UTF-8"),
    ("ROLEGATE_TEST_GGUF", MODEL_PATH),
)


def cache_dir() -> Path:
    """The cache entry: ``<cache root>/image-test-vllm``."""
    return cache_root() / "image-test-vllm"


def archive_path() -> Path:
    """The OCI archive (it may not exist yet: see :func:`ensure`)."""
    return cache_dir() / "rolegate-test-vllm.oci.tar"


def inputs_digest() -> str:
    """16 hex digits of sha256 over the inputs: the files of :data:`_INPUTS` (names and
    bytes), the llama.cpp version and build flags, :data:`PACKAGES` and the model's alias.

    Raises:
        OSError: an input cannot be read.
    """
    digest = hashlib.sha256()
    for path in _INPUTS:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    recipe = [llama_build.VERSION, llama_build.CMAKE_ARGS, *PACKAGES, _MODEL, SITE_DIR]
    digest.update("\0".join(recipe).encode())
    return digest.hexdigest()[:16]


def tag() -> str:
    """The image's tag: :func:`inputs_digest` (the archive's ``ref.name``)."""
    return inputs_digest()


def ref() -> str:
    """``localhost/rolegate-test-vllm:<tag>``: the name :func:`load` gives the image."""
    return f"{BASE_NAME}:{tag()}"


def _stamp_text() -> str:
    return f"rolegate-test-vllm inputs={inputs_digest()} base={base.stamp().strip()}\n"


def is_built() -> bool:
    """Whether the archive is complete for the current inputs and base layer."""
    try:
        wanted = _stamp_text()
    except OSError:  # the base is not built
        return False
    return base.is_built() and stamped(cache_dir(), wanted) and archive_path().is_file()


def info() -> dict[str, Any]:
    """``image.json``: ``archive``, ``archive_bytes``, ``manifest_digest``, ``tag``,
    ``layers`` (``digest``, ``size``), ``packages`` (Debian name -> version),
    ``site_packages`` (name -> version), ``build_s`` (seconds).

    Raises:
        OSError: it is not built.
    """
    loaded: dict[str, Any] = json.loads((cache_dir() / "image.json").read_text())
    return loaded


def ensure(out: TextIO | None = None) -> Path:
    """The OCI archive; built first when missing or stale (progress on ``out``, default
    stderr). Builds the base layer and the llama.cpp wheel first when they are missing.

    Raises:
        BuildFailed: a tool is missing and cannot be installed, or a step failed (its last
            lines and the build log's path in the message).
    """
    out = out or sys.stderr
    try:
        apt.ensure(["mmdebstrap", "umoci"], out, why="the test vLLM image")
    except apt.AptUnavailable as missing:
        raise BuildFailed(str(missing)) from missing
    entry = cache_dir()
    with locked(entry):
        if is_built():
            return archive_path()
        started = time.monotonic()
        rootfs = base.ensure(out)
        llama_build.ensure(out)  # the wheel (and a venv we do not use) when missing
        wheels = sorted((llama_build.home() / "wheel").glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise BuildFailed(f"no llama_cpp_python wheel in {llama_build.home() / 'wheel'}")
        epoch = base.source_date_epoch()
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "stamp").unlink(missing_ok=True)
        log = build_log(entry)
        log.unlink(missing_ok=True)
        work = entry / "work"
        shutil.rmtree(work, ignore_errors=True)
        root = work / "root"
        root.mkdir(parents=True)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

        def step(argv: list[str]) -> None:
            run_with_progress(argv, out, prefix=_PREFIX, show=_progress, env=env, log_path=log)

        packages = _unpack_packages(work, root, step)
        site = _install_site(root, wheels[-1], step)
        _add_command(root, site)
        llama_model.write_model(root / MODEL_PATH.lstrip("/"), seed=llama_model.MODELS[_MODEL])
        if sys.version_info[:2] == (3, 11):  # bookworm's python reads 3.11's bytecode only
            step(
                [
                    *(sys.executable, "-m", "compileall", "-q", "-j", "0"),
                    *("--invalidation-mode", "unchecked-hash", "-s", str(site)),
                    *("-p", SITE_DIR, str(site)),
                ]
            )
        app_tar = work / "app.tar"
        members = [(p.name, p) for p in sorted(root.iterdir())]
        app_bytes = write_tar(app_tar, members, mtime_s=epoch)
        print(f"{_PREFIX}backend layer: {app_bytes / 1e6:.1f} MB", file=out, flush=True)
        layout = work / "oci"
        _assemble(layout, [rootfs, app_tar], epoch=epoch, step=step)
        image = image_build.write_archive(layout, archive_path(), epoch=epoch)
        record: dict[str, Any] = {
            "archive": str(archive_path()),
            "archive_bytes": archive_path().stat().st_size,
            "manifest_digest": image.digest,
            "tag": image.ref_name,
            "layers": [{"digest": la.digest, "size": la.size} for la in image.layers],
            "packages": packages,
            "site_packages": _site_packages(site),
            "build_s": round(time.monotonic() - started, 1),
        }
        image_build.finish_entry(entry, work, record, _stamp_text())
        print(
            f"{_PREFIX}{archive_path()} ({record['archive_bytes'] / 1e6:.0f} MB, tag "
            f"{image.ref_name}) in {record['build_s']:.0f} s",
            file=out,
            flush=True,
        )
        return archive_path()


def _progress(line: str) -> str | None:
    """pip's ``Collecting <name>`` (without its long ``(from ...)``), its summary, errors."""
    keep = ("Collecting", "Successfully", "ERROR", "error:", "E:")
    return line.strip().split(" (from ")[0] if line.lstrip().startswith(keep) else None


def _unpack_packages(work: Path, root: Path, step: _Step) -> dict[str, str]:
    """``apt-get download`` :data:`PACKAGES` and unpack them into ``root``; returns name ->
    version. Only ``usr/`` may come out: a top-level ``lib/`` would replace the base's
    merged-/usr symlink."""
    debs = work / "debs"
    debs.mkdir()
    step(["env", "-C", str(debs), "apt-get", "download", *PACKAGES])
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        step(["dpkg-deb", "-x", str(deb), str(root)])
        name, version, _ = deb.name.split("_", 2)
        versions[name.replace("%2b", "+")] = version.replace("%3a", ":").replace("%2b", "+")
    tops = sorted(p.name for p in root.iterdir())
    if tops != ["usr"]:
        raise BuildFailed(f"{', '.join(PACKAGES)} unpacked to {tops}, not only usr/")
    return versions


def _install_site(root: Path, wheel: Path, step: _Step) -> Path:
    """The wheel with its ``server`` extra, pinned by llama's constraints, into the site."""
    site = root / SITE_DIR.lstrip("/")
    machine = platform.machine()
    argv = [sys.executable, "-m", "pip", "install", "--no-compile", "--target", str(site)]
    argv += ["--progress-bar", "off", *pip_target_options(machine)]
    argv += ["--platform", f"linux_{machine}"]  # the local wheel's tag (ctypes libraries)
    argv += ["-c", str(llama_build.CONSTRAINTS), f"llama-cpp-python[server] @ {wheel.as_uri()}"]
    step(argv)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts for the host's python
    for record in site.glob("*.dist-info/direct_url.json"):
        record.unlink()  # names the wheel's path on this machine
    return site


def _add_command(root: Path, site: Path) -> None:
    """The shim as a module of the site, and ``/usr/local/bin/vllm`` running it."""
    shutil.copyfile(_HERE / "vllm_shim.py", site / f"{_SHIM_MODULE}.py")
    command = root / "usr" / "local" / "bin" / "vllm"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text(
        "#!/usr/bin/python3\n"
        "# vllm: rolegate's test backend (devstack/image/vllm_shim.py), served by llama.cpp\n"
        "import sys\n\n"
        f"sys.path.insert(0, {SITE_DIR!r})\n"
        f"from {_SHIM_MODULE} import main\n\n"
        "sys.exit(main())\n"
    )
    command.chmod(0o755)


def _site_packages(site: Path) -> dict[str, str]:
    found = {}
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in metadata.read_text().splitlines() if ": " in line
        )
        found[fields["Name"]] = fields["Version"]
    return dict(sorted(found.items()))


def _assemble(layout: Path, layers: list[Path], *, epoch: int, step: _Step) -> None:
    image = f"{layout}:{tag()}"
    created = rfc3339(epoch)
    step(["umoci", "init", "--layout", str(layout)])
    step(["umoci", "new", "--image", image])
    for layer, what in zip(layers, ("Debian base (mmdebstrap)", "test vllm backend"), strict=True):
        step(
            [
                *("umoci", "raw", "add-layer", "--image", image),
                *("--history.created", created, "--history.created_by", what, str(layer)),
            ]
        )
    config = ["umoci", "config", "--image", image, "--created", created]
    config += ["--history.created", created, "--history.created_by", "test vllm image config"]
    config += ["--config.user=0:0", "--config.workingdir=/"]
    config += [f"--config.env={name}={value}" for name, value in _ENV]
    config += ["--config.cmd=vllm", "--config.cmd=serve", f"--config.cmd={MODEL_PATH}"]
    config += ["--config.label=org.opencontainers.image.title=rolegate-test-vllm"]
    step(config)
    step(["umoci", "gc", "--layout", str(layout)])


def load(node: RealNode) -> str:
    """Import the built archive into ``node``'s containerd; returns :func:`ref` (pods use it
    with ``imagePullPolicy: IfNotPresent``, the default for a tag other than ``latest``).

    Raises:
        devstack.k8s.realnode.RealNodeError: ctr failed.
    """
    node.import_image(archive_path(), BASE_NAME)
    return ref()


def push(registry_host: str) -> str:
    """Push the built archive to the plain-HTTP registry ``registry_host`` (``127.0.0.1:PORT``)
    as ``<registry_host>/rolegate/test-vllm:<tag>``, which it returns (the node needs
    ``node.add_registry(registry_host)``).

    Raises:
        OSError: crane is not built.
        devstack.registry.CraneError: the push failed.
    """
    target = f"{registry_host}/rolegate/test-vllm:{tag()}"
    registry.push(archive_path(), target)
    return target


def main() -> int:
    """Build when needed; print the archive, its size and tag. Exit 0, or 1 on failure."""
    try:
        archive = ensure(sys.stderr)
    except BuildFailed as failed:
        print(f"test vllm image: build failed: {failed}", file=sys.stderr)
        return 1
    record = info()
    print(f"{archive}\n  {record['archive_bytes'] / 1e6:.1f} MB, tag {record['tag']}, {ref()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
