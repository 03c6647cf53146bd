"""pytest fixtures for the real model server: imported by the conftest of the tests that use it.

``llama_python`` builds the llama.cpp server's virtualenv on first use (progress on the
terminal, capture suspended, as ``k8s_bin_dir`` does); ``llama_models`` writes the two tiny
models; ``llama_server`` serves both, for the whole session, behind :data:`API_KEY`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.cluster.fixtures import capture_suspended
from tests.llama import env
from tests.llama.model import MODELS, write_model
from tests.llama.server import LlamaServer

__all__ = ["API_KEY", "llama_models", "llama_python", "llama_server"]

#: The key the session's server requires.
API_KEY: Final = "sk-LLAMA-5e0c2a9b17"


@pytest.fixture(scope="session")
def llama_python(pytestconfig: pytest.Config) -> Path:
    """The llama.cpp server's interpreter, built first when missing (3-5 minutes)."""
    if not env.is_built():
        with capture_suspended(pytestconfig):
            env.ensure()
    return env.python()


@pytest.fixture(scope="session")
def llama_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Alias -> path of the two tiny GGUF models (seeds in :data:`MODELS`)."""
    folder = tmp_path_factory.mktemp("models")
    return {
        alias: write_model(folder / f"{alias}.gguf", seed=seed) for alias, seed in MODELS.items()
    }


@pytest.fixture(scope="session")
def llama_server(
    llama_python: Path, llama_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """One llama.cpp server with both models, requiring :data:`API_KEY`."""
    server = LlamaServer(llama_models, workdir=tmp_path_factory.mktemp("llama"), api_key=API_KEY)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
