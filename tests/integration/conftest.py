"""Integration tests run on a real control plane: the fixtures of tests.cluster.fixtures.

The plugin's fixtures and hooks are imported rather than named in ``pytest_plugins``: pytest
refuses ``pytest_plugins`` in a conftest below the rootdir that it loads during collection
(as plain ``pytest`` with ``testpaths = ["tests"]`` does with this one). Importing them keeps
them visible to the tests under this directory only.
"""

from tests.cluster.fixtures import (
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
    "cluster",
    "control_plane",
    "full_control_plane",
    "helm",
    "k8s_bin_dir",
    "kubectl",
    "namespace",
    "pytest_collection_modifyitems",
    "pytest_configure",
]
