"""Where the real node's binaries and images live, and building them when they are missing.

This module owns the Python side of ``build.sh --node``: the cache entry
``${ROLEGATE_CACHE:-~/.cache/rolegate}/node-<kube version>/`` holding

- ``bin/``: kubelet and kube-proxy (built in the control plane's wrapper module
  ``gomod/kubernetes``, same pins), containerd, ctr, containerd-shim-runc-v2 and crictl;
- ``cni/``: the CNI plugins bridge, host-local, loopback and portmap;
- ``images/``: OCI archives (umoci layouts in a tar) of the pause image and the test image,
  built from the Go programs under ``node/``;
- ``stamp``: the sha256 over versions.env's pins, ``gomod/kubernetes/go.sum`` and the image
  sources, written last (build.sh's ``node_expected_stamp`` computes the same).

``build.sh --node`` also builds the fake GPU device plugin into a cache entry of its own
(:mod:`devstack.k8s.nodegpu`), and :func:`is_built` counts it.

runc stays a Debian package, as do umoci (the image build) and nftables (kube-proxy's ``nft``);
:func:`ensure` installs umoci and runc through :mod:`devstack.apt`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from devstack import apt
from devstack.cache import cache_root
from devstack.k8s import build, nodegpu
from devstack.k8s.nodehost import RUNC

__all__ = [
    "BINARIES",
    "CNI_PLUGINS",
    "CONTAINERD_VERSION",
    "IMAGES",
    "NodeImage",
    "bin_dir",
    "cache_dir",
    "cni_dir",
    "ensure",
    "image",
    "is_built",
]

_HERE: Final = Path(__file__).resolve().parent
BINARIES: Final = (
    "kubelet",
    "kube-proxy",
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "crictl",
)
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback", "portmap")
_SOURCES: Final = (  # as build.sh's node_sources, in its order
    _HERE / "node" / "go.mod",
    _HERE / "node" / "pause" / "main.go",
    _HERE / "node" / "nodetest" / "main.go",
)
CONTAINERD_VERSION: Final = build.read_versions()["CONTAINERD_VERSION"]


@dataclass(frozen=True)
class NodeImage:
    """One image of the node cache: its OCI archive and the name ``ctr images import
    --base-name`` gives it (``localhost/<name>``; the tag comes from the archive)."""

    name: str
    tag: str

    @property
    def archive(self) -> Path:
        """``<cache>/images/<name>.oci.tar`` (it may not exist yet: see :func:`ensure`)."""
        return cache_dir() / "images" / f"{self.name}.oci.tar"

    @property
    def base_name(self) -> str:
        """``localhost/<name>``: what to pass to :meth:`RealNode.import_image`."""
        return f"localhost/{self.name}"

    @property
    def ref(self) -> str:
        """``localhost/<name>:<tag>``: the image name pods use (``imagePullPolicy: Never``)."""
        return f"{self.base_name}:{self.tag}"


IMAGES: Final = {
    "pause": NodeImage("pause", "3.10"),  # the sandbox image containerd is told to use
    "nodetest": NodeImage("nodetest", "1"),  # node/nodetest: HTTP server + client modes
}


def image(name: str) -> NodeImage:
    """The cached image ``name`` (``"pause"`` or ``"nodetest"``).

    Raises:
        KeyError: no such image.
    """
    return IMAGES[name]


def cache_dir() -> Path:
    """``<cache root>/node-<kube version>``, as build.sh's ``node_dest``."""
    return cache_root() / f"node-{build.KUBE_VERSION}"


def bin_dir() -> Path:
    """kubelet, kube-proxy, containerd, ctr, the runc shim and crictl."""
    return cache_dir() / "bin"


def cni_dir() -> Path:
    """The CNI plugins (containerd's ``bin_dirs``)."""
    return cache_dir() / "cni"


def _expected_stamp() -> str:
    digest = hashlib.sha256()
    for line in build.VERSIONS_FILE.read_text().splitlines():
        if build.PIN_LINE.match(line):
            digest.update(f"{line}\n".encode())
    digest.update((_HERE / "gomod" / "kubernetes" / "go.sum").read_bytes())
    for path in _SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_built() -> bool:
    """Whether the node cache is complete for the current pins and sources, the fake GPU
    plugin is built (:func:`devstack.k8s.nodegpu.is_built`), and runc (the node's runtime, a
    Debian package :func:`ensure` installs) is there."""
    if not os.access(RUNC, os.X_OK) or not nodegpu.is_built():
        return False
    try:
        if (cache_dir() / "stamp").read_text().strip() != _expected_stamp():
            return False
    except OSError:
        return False
    return (
        all(os.access(bin_dir() / name, os.X_OK) for name in BINARIES)
        and all(os.access(cni_dir() / name, os.X_OK) for name in CNI_PLUGINS)
        and all(img.archive.is_file() for img in IMAGES.values())
    )


def ensure(out: TextIO | None = None) -> Path:
    """Return :func:`cache_dir`, running ``build.sh --node`` first when it is incomplete
    (and installing umoci and runc with apt when they are missing, even when it is complete).

    With Go's build cache warm from the control plane's build, about 8.5 minutes on two busy
    cores; progress lines go to ``out`` (default stderr), everything to
    ``<cache root>/node-<version>.build.log``.

    Raises:
        BuildFailed: the build failed or left the cache incomplete (last lines in the message).
        devstack.apt.AptUnavailable: umoci or runc is missing and cannot be installed here.
    """
    out = out if out is not None else sys.stderr
    # runc is the node's runtime, not part of the build: installed even when the cache is
    # complete (a cache outlives a package removal).
    apt.ensure(["umoci", "runc"], out, why="the real node (runc) and its images (umoci)")
    what = f"the real node ({build.KUBE_VERSION}, containerd {CONTAINERD_VERSION})"
    build.run_script(["--node"], entry=cache_dir(), is_built=is_built, what=what, out=out)
    return cache_dir()
