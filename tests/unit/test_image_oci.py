"""devstack/image/oci.py on a small OCI archive written here: index -> manifest -> config,
and layers unpacked bottom first with whiteouts applied."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from devstack.image import oci


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _archive(path: Path, layers: list[bytes], *, manifests: int = 1) -> str:
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    zipped = [gzip.compress(layer, mtime=0) for layer in layers]
    config = {
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["A=1", "B=x=y"], "Labels": {"l": "v"}, "User": "65532:65532"},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers],
        },
    }
    config_digest = add(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": 1,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": add(z),
                "size": len(z),
            }
            for z in zipped
        ],
    }
    manifest_digest = add(json.dumps(manifest).encode())
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": "0.1.0"},
    }
    index = {"schemaVersion": 2, "manifests": [descriptor] * manifests}
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps(index).encode(),
    }
    files |= {f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()}
    path.write_bytes(_tar(files))
    return manifest_digest


def test_read_archive(tmp_path: Path) -> None:
    archive = tmp_path / "image.oci.tar"
    digest = _archive(archive, [_tar({"a": b"1"}), _tar({"b": b"2"})])
    image = oci.read_archive(archive)
    assert image.ref_name == "0.1.0"
    assert image.digest == digest
    assert image.env == {"A": "1", "B": "x=y"}
    assert image.labels == {"l": "v"}
    assert len(image.layers) == 2
    assert image.layers[0].diff_id.startswith("sha256:")


def test_unpack_applies_layers_in_order_and_whiteouts(tmp_path: Path) -> None:
    archive = tmp_path / "image.oci.tar"
    lower = _tar({"etc/keep": b"old", "etc/gone": b"x", "etc/over": b"lower"})
    upper = _tar({"etc/.wh.gone": b"", "etc/over": b"upper"})
    _archive(archive, [lower, upper])
    rootfs = oci.unpack_rootfs(archive, tmp_path / "rootfs")
    assert (rootfs / "etc/keep").read_bytes() == b"old"
    assert (rootfs / "etc/over").read_bytes() == b"upper"
    assert not (rootfs / "etc/gone").exists()
    assert not (rootfs / "etc/.wh.gone").exists()


def test_an_index_of_two_manifests_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "image.oci.tar"
    _archive(archive, [_tar({"a": b"1"})], manifests=2)
    with pytest.raises(ValueError, match="2 manifests"):
        oci.read_archive(archive)
