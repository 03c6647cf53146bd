"""devstack.apt: which Debian packages are missing, and what happens when they cannot be
installed."""

from __future__ import annotations

import pytest

from devstack import apt


def test_missing_names_only_the_packages_dpkg_does_not_have() -> None:
    assert apt.missing(["coreutils", "rolegate-no-such-package"]) == ["rolegate-no-such-package"]


def test_ensure_is_a_no_op_when_everything_is_installed() -> None:
    apt.ensure(["coreutils", "dpkg"], why="nothing")  # would need root and apt otherwise


def test_without_apt_get_the_error_names_the_packages_and_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("ROLEGATE_CACHE", str(tmp_path))
    monkeypatch.setattr(apt.shutil, "which", lambda name: None)
    with pytest.raises(apt.AptUnavailable) as err:
        apt.ensure(["rolegate-no-such-package"], why="the test")
    assert "the test needs the Debian packages rolegate-no-such-package" in str(err.value)
    assert "apt-get install -y --no-install-recommends rolegate-no-such-package" in str(err.value)
