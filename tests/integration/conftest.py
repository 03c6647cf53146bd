"""Integration tests run on a real control plane: the fixtures of tests.fixtures.cluster.

The plugin's fixtures and hooks are imported rather than named in ``pytest_plugins``: pytest
refuses ``pytest_plugins`` in a conftest below the rootdir that it loads during collection
(as plain ``pytest`` with ``testpaths = ["tests"]`` does with this one). Importing them keeps
them visible to the tests under this directory only.

Owned here: ``install_llmrole_crd`` and ``llmrole_crd``, the LLMRole CRD from crds/ in a
control plane (cluster-scoped, so once per plane and session).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack.k8s.controlplane import ControlPlane
from devstack.stack import LLMROLE_CRD, install_crd
from tests.fixtures.chart import chart, helm_home
from tests.fixtures.cluster import (
    cluster,
    control_plane,
    full_control_plane,
    helm,
    k8s_bin_dir,
    kubectl,
    namespace,
    pytest_collection_modifyitems,
    pytest_configure,
)

__all__ = [
    "chart",
    "cluster",
    "control_plane",
    "full_control_plane",
    "helm",
    "helm_home",
    "install_llmrole_crd",
    "k8s_bin_dir",
    "kubectl",
    "llmrole_crd",
    "namespace",
    "pytest_collection_modifyitems",
    "pytest_configure",
]


@pytest.fixture(scope="session")
def install_llmrole_crd() -> Callable[[ControlPlane], str]:
    """``install(plane)`` applies crds/ to ``plane`` and waits until the LLMRole CRD is
    Established and ``kubectl explain`` finds it (the OpenAPI schema is published a little
    later), the first time per plane; returns the CRD's name. For session-scoped fixtures
    that hold ``control_plane`` or ``full_control_plane`` themselves."""
    done: set[int] = set()

    def install(plane: ControlPlane) -> str:
        if id(plane) not in done:
            install_crd(plane)
            done.add(id(plane))
        return LLMROLE_CRD

    return install


@pytest.fixture
def llmrole_crd(cluster: ControlPlane, install_llmrole_crd: Callable[[ControlPlane], str]) -> str:
    """The LLMRole CRD, installed in this test's ``cluster`` (plain or full); its name."""
    return install_llmrole_crd(cluster)
