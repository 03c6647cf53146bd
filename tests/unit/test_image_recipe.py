"""The pure parts of the image recipe (devstack/image/recipe.py): Debian sources from apt's
files, pip's platform options, lock pins, wrappers, labels and the reproducible tar."""

from __future__ import annotations

import hashlib
import re
import tarfile
import tomllib
from pathlib import Path

import pytest

from devstack.image import build, recipe

ROOT = Path(__file__).resolve().parents[2]

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
"""


def test_debian_sources_from_deb822_as_this_machine_has_them() -> None:
    assert recipe.debian_sources({"debian.sources": DEB822}, codename="bookworm") == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_debian_sources_skip_third_party_disabled_and_other_releases() -> None:
    files = {
        "sources.list": "deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main contrib\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://deb.debian.org/debian trixie main\n"
        "deb-src http://deb.debian.org/debian bookworm main\n",
        "docker.list": "deb [signed-by=/etc/apt/keyrings/docker.gpg] "
        "https://download.docker.com/linux/debian bookworm stable\n",
        "nodesource.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n"
        "Suites: nodistro\nComponents: main\n",
        "gcloud.list.disabled-by-farm": "deb http://other.example/debian bookworm main\n",
        "off.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n",
        "keyed.list": "deb [signed-by=/usr/share/keyrings/other.gpg] http://x.example/debian "
        "bookworm main\n",
    }
    assert recipe.debian_sources(files, codename="bookworm") == [
        "deb http://ftp.de.debian.org/debian bookworm main"
    ]


def test_debian_sources_none() -> None:
    assert recipe.debian_sources({}, codename="bookworm") == []


def test_pip_options_pick_the_images_python_and_glibc() -> None:
    options = recipe.pip_target_options("x86_64")
    assert options[:1] == ["--only-binary=:all:"]
    assert options[options.index("--python-version") + 1] == "3.11"
    assert options[options.index("--abi") + 1] == "cp311"
    platforms = [options[i + 1] for i, value in enumerate(options) if value == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms  # newer than bookworm's glibc
    assert platforms[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def test_parse_pins() -> None:
    text = "# header\n\naiohttp==3.14.5\nPyYAML == 6.0.4  # comment\n"
    assert recipe.parse_pins(text) == [("aiohttp", "3.14.5"), ("PyYAML", "6.0.4")]
    with pytest.raises(ValueError, match="line 1"):
        recipe.parse_pins("aiohttp>=3.10\n")


def test_normalize() -> None:
    assert recipe.normalize("Typing_Extensions") == "typing-extensions"
    assert recipe.normalize("zope.interface") == "zope-interface"


def test_committed_wrappers_are_the_projects_console_scripts() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        scripts = tomllib.load(file)["project"]["scripts"]
    wrappers = {path.name: path for path in (ROOT / "image/bin").iterdir()}
    assert set(wrappers) == set(scripts)
    for name, target in scripts.items():
        # Regenerate with: Path("image/bin", name).write_text(recipe.wrapper_script(name, target))
        assert wrappers[name].read_text() == recipe.wrapper_script(name, target)
        assert wrappers[name].stat().st_mode & 0o111, f"image/bin/{name} is not executable"


def test_wrapper_script_runs_its_entry_point(tmp_path: Path) -> None:
    text = recipe.wrapper_script("tool", "json.tool:main")
    assert text.startswith("#!/usr/bin/env python3\n")
    assert "from json.tool import main" in text
    with pytest.raises(ValueError, match="module:function"):
        recipe.wrapper_script("tool", "json.tool")


def test_labels() -> None:
    labels = recipe.labels(
        version="0.1.0",
        revision="a" * 40,
        created_s=1796158682,
        description="d",
        licenses="Apache-2.0",
        source="",
    )
    assert labels["org.opencontainers.image.created"] == "2026-12-01T20:58:02Z"
    assert labels["org.opencontainers.image.title"] == "rolegate"
    assert "org.opencontainers.image.source" not in labels  # unknown: left out
    assert recipe.rfc3339(0) == "1970-01-01T00:00:00Z"


def test_write_tar_is_reproducible(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "b.py").write_text("b")
    (tree / "pkg" / "a.py").write_text("a")
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(0o700)
    (tree / "link").symlink_to("pkg/a.py")
    members: list[tuple[str, Path | None]] = [("opt", None), ("opt/site", tree)]
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    recipe.write_tar(first, members, mtime_s=1000)
    (tree / "pkg" / "a.py").touch()  # a new mtime changes nothing
    recipe.write_tar(second, list(reversed(members)), mtime_s=1000)
    assert (
        hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    )
    with tarfile.open(first) as tar:
        infos = tar.getmembers()
    assert [info.name for info in infos] == sorted(info.name for info in infos)
    assert {(info.uid, info.gid, info.mtime) for info in infos} == {(0, 0, 1000)}
    modes = {info.name: info.mode for info in infos}
    assert modes["opt/site/run"] == 0o755
    assert modes["opt/site/pkg/a.py"] == 0o644
    assert modes["opt/site/pkg"] == 0o755


def test_inputs_digest_is_stable_and_covers_the_lock_and_sources() -> None:
    assert build.inputs_digest() == build.inputs_digest()
    files = {path.relative_to(ROOT).as_posix() for path in build._input_files()}
    assert {"pyproject.toml", "image/requirements.txt", "devstack/image/build.py"} <= files
    assert "gateway/rolegate_gateway/app.py" in files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]


def test_source_date_epoch_and_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert build.source_date_epoch() == 1234
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert build.source_date_epoch() >= 0
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", build.revision())
