"""pytest plugin: real Kubernetes control planes, fresh namespaces, kubectl and helm.

Load it with ``pytest_plugins = ["tests.cluster.fixtures"]`` in a conftest. It owns:

- ``k8s_bin_dir`` (session): the pinned binaries; runs tests/cluster/build.sh first when the
  cache is incomplete, with its progress shown (a cold build takes tens of minutes).
- ``control_plane`` (session): etcd + kube-apiserver.
- ``full_control_plane`` (session, opt-in): + kube-controller-manager, kube-scheduler, kwok
  nodes (CPU ones and tainted GPU ones, see :mod:`tests.cluster.nodes`).
- ``cluster``: the full one for tests marked ``@pytest.mark.full_cluster``, else the plain one,
  so every full-cluster test shares one session fixture.
- ``namespace``: a fresh namespace in ``cluster`` (with its ``default`` ServiceAccount),
  deleted after the test.
- ``kubectl`` / ``helm``: callables bound to ``cluster`` and ``namespace``:
  ``kubectl("get", "pods", "-o", "json")`` returns a CompletedProcess[str] and raises
  :class:`~tests.cluster.harness.CommandError` (stderr in its message) unless ``check=False``.

Tests that use any of these are marked ``cluster`` automatically (``-m "not cluster"`` skips).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.cluster import binaries
from tests.cluster.harness import ControlPlane

__all__ = ["Helm", "Kubectl", "capture_suspended"]

_CLUSTER_FIXTURES: Final = frozenset(
    {"control_plane", "full_control_plane", "cluster", "namespace", "kubectl", "helm"}
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs the real Kubernetes control plane built by tests/cluster/build.sh",
    )
    config.addinivalue_line(
        "markers",
        "full_cluster: runs on the session's full control plane (controller-manager, "
        "scheduler, kwok CPU and GPU nodes) instead of the plain etcd + apiserver one",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def capture_suspended(config: pytest.Config) -> contextlib.AbstractContextManager[None]:
    """Output capture off for the block, so a long build's progress reaches the terminal."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return contextlib.nullcontext()
    suspended: contextlib.AbstractContextManager[None] = capture.global_and_fixture_disabled()
    return suspended


@pytest.fixture(scope="session")
def k8s_bin_dir(pytestconfig: pytest.Config) -> Path:
    """The directory of the pinned binaries, built first (progress on the terminal) if needed."""
    if not binaries.is_built():
        with capture_suspended(pytestconfig):
            binaries.ensure_built()
    return binaries.bin_dir()


@pytest.fixture(scope="session")
def control_plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for the whole session."""
    with ControlPlane(full=False, bin_dir=k8s_bin_dir) as plane:
        yield plane


@pytest.fixture(scope="session")
def full_control_plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok nodes."""
    with ControlPlane(full=True, bin_dir=k8s_bin_dir) as plane:
        yield plane


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> ControlPlane:
    """``full_control_plane`` for tests marked full_cluster, else ``control_plane``."""
    name = (
        "full_control_plane"
        if request.node.get_closest_marker("full_cluster")
        else ("control_plane")
    )
    plane: ControlPlane = request.getfixturevalue(name)
    return plane


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test; deleted (without waiting) afterwards."""
    name = _namespace_name(request.node.name)
    cluster.kubectl(["create", "namespace", name])
    if cluster.full:
        cluster.wait_for(
            f"service account {name}/default",
            lambda: bool(cluster.api(f"/api/v1/namespaces/{name}/serviceaccounts/default")),
        )
    else:
        cluster.kubectl(["create", "serviceaccount", "default"], namespace=name)
    yield name
    cluster.kubectl(
        ["delete", "namespace", name, "--wait=false", "--ignore-not-found"], check=False
    )


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to a control plane and a namespace."""

    cluster: ControlPlane
    namespace: str | None

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl -n <namespace> *args``; see ControlPlane.kubectl for errors."""
        return self.cluster.kubectl(
            args, namespace=self.namespace, input=input, check=check, timeout_s=timeout_s
        )


@dataclass(frozen=True)
class Helm:
    """helm bound to a control plane and a namespace."""

    cluster: ControlPlane
    namespace: str | None

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``helm --namespace <namespace> *args``; see ControlPlane.helm for errors."""
        return self.cluster.helm(
            args, namespace=self.namespace, input=input, check=check, timeout_s=timeout_s
        )


@pytest.fixture
def kubectl(cluster: ControlPlane, namespace: str) -> Kubectl:
    """kubectl against ``cluster`` in the test's ``namespace``."""
    return Kubectl(cluster, namespace)


@pytest.fixture
def helm(cluster: ControlPlane, namespace: str) -> Helm:
    """helm against ``cluster`` in the test's ``namespace``."""
    return Helm(cluster, namespace)
