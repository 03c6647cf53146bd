"""Reading an OCI image archive (a tar of an OCI image layout, as skopeo's ``oci-archive:``
writes it): its manifest, config and layers, without any container tool.

Reference: OCI image spec v1.1, image-layout.md (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``), manifest.md, config.md.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Image", "Layer", "read_archive", "unpack_rootfs"]


@dataclass(frozen=True)
class Layer:
    """One layer: its blob ``digest`` (``sha256:...``), compressed ``size`` in bytes, media
    type, and ``diff_id`` (the digest of the uncompressed tar, from the config)."""

    digest: str
    size: int
    media_type: str
    diff_id: str


@dataclass(frozen=True)
class Image:
    """The one image of an archive: the tag (``ref_name``), manifest digest, the manifest and
    config as parsed JSON, and its layers, bottom first."""

    ref_name: str
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[Layer, ...]

    @property
    def env(self) -> dict[str, str]:
        """The config's ``Env`` as a dict."""
        pairs = (item.partition("=") for item in self.config.get("config", {}).get("Env", []))
        return {name: value for name, _, value in pairs}

    @property
    def labels(self) -> dict[str, str]:
        """The config's ``Labels``."""
        found: dict[str, str] = self.config.get("config", {}).get("Labels") or {}
        return found


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    member = tar.extractfile(f"blobs/{algorithm}/{hexdigest}")
    if member is None:
        raise ValueError(f"blob {digest} is not a file in the archive")
    return member.read()


def read_archive(path: Path) -> Image:
    """The image in the OCI archive at ``path`` (its index must name exactly one manifest).

    Raises:
        OSError: it cannot be read.
        ValueError: it is not an OCI layout tar, or its index names no or several manifests.
        KeyError: a blob the index or manifest names is missing.
    """
    with tarfile.open(path) as tar:
        index = json.loads(_blob_or_file(tar, "index.json"))
        manifests = index.get("manifests", [])
        if len(manifests) != 1:
            raise ValueError(f"{path}: index.json names {len(manifests)} manifests, not one")
        descriptor = manifests[0]
        manifest = json.loads(_blob(tar, descriptor["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    layers = tuple(
        Layer(item["digest"], item["size"], item["mediaType"], diff_id)
        for item, diff_id in zip(manifest.get("layers", []), diff_ids, strict=True)
    )
    ref = descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
    return Image(ref, descriptor["digest"], manifest, config, layers)


def _blob_or_file(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the archive")
    return member.read()


def unpack_rootfs(archive: Path, dest: Path) -> Path:
    """Extract the image's layers, bottom first, into ``dest`` (created) and return it:
    the root filesystem a runtime would see, owners and modes kept (so run as root to keep
    them). Whiteouts (``.wh.<name>``) remove what lower layers put there.

    Raises:
        OSError, ValueError, KeyError: see :func:`read_archive`; a layer cannot be extracted.
    """
    image = read_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as outer:
        for layer in image.layers:
            data = _blob(outer, layer.digest)
            if layer.media_type.endswith("+gzip"):
                data = gzip.decompress(data)
            _extract_layer(data, dest)
    return dest


def _extract_layer(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = []
        for member in tar.getmembers():
            name = Path(member.name)
            if name.name.startswith(".wh."):
                target = dest / name.parent / name.name.removeprefix(".wh.")
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
                continue
            members.append(member)
        # Our own image: modes as they are (/tmp's 1777 included), absolute links too.
        tar.extractall(dest, members=members, numeric_owner=True, filter="fully_trusted")
