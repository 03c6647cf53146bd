"""End-to-end tests: the real control plane (the integration tests' fixtures, imported for
the reason tests/integration/conftest.py gives) and the real llama.cpp server
(tests.fixtures.llama)."""

from __future__ import annotations

from tests.fixtures.llama import llama_models, llama_python, llama_server
from tests.integration.conftest import (
    cluster,
    control_plane,
    full_control_plane,
    install_llmrole_crd,
    k8s_bin_dir,
    kubectl,
    llmrole_crd,
    namespace,
    pytest_collection_modifyitems,
    pytest_configure,
)

__all__ = [
    "cluster",
    "control_plane",
    "full_control_plane",
    "install_llmrole_crd",
    "k8s_bin_dir",
    "kubectl",
    "llama_models",
    "llama_python",
    "llama_server",
    "llmrole_crd",
    "namespace",
    "pytest_collection_modifyitems",
    "pytest_configure",
]
