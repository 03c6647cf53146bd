"""rolegate's OCI image (devstack/image): built from the cache, run as a container would run
it (uid 65532, read-only root, only /tmp writable), and pushed to a local registry.

Needs root (mmdebstrap, unshare, chroot); marked ``image`` by tests/fixtures/image.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

from devstack import http
from devstack import registry as registry_module
from devstack.image import build as image_build
from devstack.image import oci
from devstack.image.recipe import ENV, SITE_DIR, UID, normalize, parse_pins
from devstack.process import Process, free_ports
from tests.fixtures.image import InImage

ROOT = Path(__file__).resolve().parents[2]


def test_config_runs_as_65532_with_the_env_and_labels(image: oci.Image) -> None:
    config = image.config["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert image.env == dict(ENV)
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    # One image, two commands: the chart chooses, so the image imposes neither.
    assert not config.get("Entrypoint")
    assert not config.get("Cmd")
    labels = image.labels
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "version", "revision", "licenses", "created"):
        assert labels.get(prefix + key), f"label {prefix}{key} missing"
    assert labels[prefix + "version"] == image_build.version() == image.ref_name
    assert len(labels[prefix + "revision"]) == 40
    assert labels[prefix + "created"] == image.config["created"]
    assert [layer.media_type for layer in image.layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2


def test_site_holds_exactly_the_lock_and_the_wheel(image_rootfs: Path) -> None:
    site = image_rootfs / SITE_DIR.lstrip("/")
    installed = {}
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in metadata.read_text().splitlines() if ": " in line
        )
        installed[normalize(fields["Name"])] = fields["Version"]
    locked = {normalize(p.name): p.version for p in parse_pins(image_build.LOCK.read_text())}
    assert installed == {**locked, "rolegate": image_build.version()}
    assert not (site / "bin").exists()
    # Bytecode for every module, hash-based and unchecked (flags 0b01 after the magic
    # number, PEP 552): reproducible, and never rewritten in a read-only image.
    # (Only a CPython 3.11 host byte-compiles: see devstack.image.build._compile.)
    sources = list(site.rglob("*.py"))
    compiled = list(site.rglob("*.cpython-311.pyc"))
    if sys.version_info[:2] != (3, 11):
        assert not compiled
        return
    assert len(compiled) >= len(sources) * 0.95
    assert {pyc.read_bytes()[4:8] for pyc in compiled} == {b"\x01\x00\x00\x00"}
    for script in ("rolegate-gateway", "rolegate-operator"):
        wrapper = image_rootfs / "usr/local/bin" / script
        assert wrapper.read_text() == (ROOT / "image/bin" / script).read_text()
        assert wrapper.stat().st_mode & 0o777 == 0o755


def test_image_user_and_python(in_image: InImage) -> None:
    done = in_image.run(["sh", "-c", "id -u; id -g; python3 -c 'import sys; print(sys.version)'"])
    assert done.returncode == 0, done.stderr
    uid, gid, version = done.stdout.splitlines()[:3]
    assert (uid, gid) == (str(UID), str(UID))
    assert version.startswith("3.11.")


def test_console_scripts_run(in_image: InImage) -> None:
    gateway = in_image.run(["rolegate-gateway", "--help"])
    assert gateway.returncode == 0, gateway.stderr
    assert "--manifests" in gateway.stdout
    operator = in_image.run(["rolegate-operator", "--help"])
    assert operator.returncode == 0, operator.stderr
    assert "run" in operator.stdout
    crd = in_image.run(["rolegate-operator", "crd"])
    assert crd.returncode == 0, crd.stderr
    assert "kind: CustomResourceDefinition" in crd.stdout
    # Every module of both packages imports (kopf, kubernetes_asyncio, botocore included).
    imports = in_image.run(
        ["python3", "-c", "import rolegate_operator.main, rolegate_gateway.app, botocore.session"]
    )
    assert imports.returncode == 0, imports.stderr


def test_root_filesystem_is_read_only_but_tmp(in_image: InImage) -> None:
    done = in_image.run(
        ["sh", "-c", "touch /tmp/ok && ! touch /opt/rolegate/x 2>/dev/null && echo fine"]
    )
    assert done.stdout.strip() == "fine", done.stderr


def test_gateway_serves_manifests(in_image: InImage, tmp_path: Path) -> None:
    """The gateway in the image serves examples/local/ (read-only on /mnt) on 127.0.0.1;
    the root filesystem is read-only, so it wrote nothing outside /tmp."""
    data = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples/local", data)
    data.chmod(0o755)
    port = free_ports(1)[0]
    command = ["rolegate-gateway", "--manifests", "/mnt", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--shutdown-timeout", "1"]
    url = f"http://127.0.0.1:{port}"
    with Process(
        "gateway-in-image", in_image.argv(command, data=data), log_path=tmp_path / "gateway.log"
    ) as gateway:
        gateway.wait_ready(lambda: http.get(f"{url}/readyz").status == 200, what="/readyz")
        assert http.get(f"{url}/healthz").status == 200
        models = http.get_json(f"{url}/v1/models")
        assert {"extract", "embed"} <= {model["id"] for model in models["data"]}
        assert gateway.stop() == 0, gateway.log_tail()


def test_push_to_a_local_registry(
    image_archive: Path, image: oci.Image, registry: registry_module.Registry
) -> None:
    ref = f"{registry.host}/rolegate/rolegate:{image.ref_name}"
    digest = registry_module.push(image_archive, ref)
    assert digest == image.digest
    manifest = registry_module.manifest(ref)
    assert manifest["config"]["digest"] == image.manifest["config"]["digest"]
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in image.layers
    ]
    assert "PASS" in registry_module.validate(ref)


def test_archive_is_an_oci_layout(image_archive: Path) -> None:
    with tarfile.open(image_archive) as tar:
        names = tar.getnames()
        layout = tar.extractfile("oci-layout")
        assert layout is not None
        assert json.load(layout) == {"imageLayoutVersion": "1.0.0"}
    assert "index.json" in names
    assert all(member.startswith(("blobs", "index.json", "oci-layout")) for member in names)
