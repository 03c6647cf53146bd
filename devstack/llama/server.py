"""llama.cpp's OpenAI-compatible server as a local process, serving chat and embedding models.

One server holds several models, each under an alias (the ``model`` a request names), from
one JSON config file (llama-cpp-python's ``--config_file``, whose fields are its
``ConfigFileSettings``: https://llama-cpp-python.readthedocs.io/en/latest/server/). It loads
one model at a time and switches on demand, which takes milliseconds for the tiny models of
:mod:`devstack.llama.model`. Requests are served one at a time, in order.

- Every model gets a :data:`~devstack.llama.model.N_CTX`-token context (32K), so the ~10K-token
  extraction prompts of a real RAG application fit; beyond it llama.cpp answers a stream with
  an empty 200 and no error, which nothing here should meet by accident.
- Embedding models are loaded with ``embedding: true`` and mean pooling (the GGUF key
  ``llama.pooling_type`` overridden to 1 through ``kv_overrides``, which the server's settings
  offer where they lack a pooling field), so ``/v1/embeddings`` answers one vector of the
  model's width per input; :mod:`devstack.llama.serve` adds ``encoding_format: base64``.
  A pooled input must fit one batch, and llama-cpp-python silently truncates it to
  ``n_batch`` (512 by default), so embedding models get batches of
  :data:`EMBEDDING_MAX_TOKENS` with flash attention (without it, the attention scores of
  such a batch take ~1 GB; with it the server stays near 220 MB).
- ``interrupt_requests`` is turned off: llama-cpp-python's default ends a stream early, with
  ``[DONE]``, as soon as another request waits, which would cut answers short under load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from devstack import http
from devstack.llama import build
from devstack.llama.model import N_CTX
from devstack.process import Process, free_ports

__all__ = ["EMBEDDING_MAX_TOKENS", "MEAN_POOLING", "LlamaServer"]

SERVE: Final = Path(__file__).with_name("serve.py")
#: llama.cpp's ``enum llama_pooling_type`` value for mean pooling, as a kv_overrides entry.
MEAN_POOLING: Final = "llama.pooling_type=int:1"
#: The longest input an embedding model embeds whole, in tokens (longer ones are truncated):
#: LightRAG's default embedding limit.
EMBEDDING_MAX_TOKENS: Final = 8192


def _model_settings(alias: str, path: Path, *, embedding: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "model": str(path),
        "model_alias": alias,
        "n_ctx": N_CTX,
        "n_threads": 1,
        "n_threads_batch": 1,
        "verbose": False,
    }
    if embedding:
        settings |= {
            "embedding": True,
            "kv_overrides": [MEAN_POOLING],
            "n_batch": EMBEDDING_MAX_TOKENS,
            "n_ubatch": EMBEDDING_MAX_TOKENS,
            "flash_attn": True,
        }
    return settings


class LlamaServer(Process):
    """llama.cpp's server on ``127.0.0.1:port`` serving the chat ``models`` and the
    ``embedding_models`` (alias -> GGUF path), requiring ``Authorization: Bearer <api_key>``
    when ``api_key`` is set; a :class:`~devstack.process.Process`.

    ``url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``). The interpreter is
    :func:`devstack.llama.build.python`; call :func:`devstack.llama.build.ensure` first.
    """

    def __init__(
        self,
        models: Mapping[str, Path],
        *,
        workdir: Path,
        embedding_models: Mapping[str, Path] | None = None,
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.port: Final = port or free_ports(1)[0]
        self.api_key: Final = api_key
        self.models: Final = dict(models)
        self.embedding_models: Final = dict(embedding_models or {})
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "interrupt_requests": False,
            "api_key": api_key,
            "models": [
                _model_settings(alias, path, embedding=False) for alias, path in models.items()
            ]
            + [
                _model_settings(alias, path, embedding=True)
                for alias, path in self.embedding_models.items()
            ],
        }
        config = workdir / f"llama-server-{self.port}.json"
        config.write_text(json.dumps(settings, indent=2))
        # -P: serve.py's folder (devstack/llama/) must not shadow the venv's modules.
        argv = [str(build.python()), "-P", str(SERVE), str(config)]
        super().__init__("llama-server", argv, log_path=workdir / f"llama-server-{self.port}.log")
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def models_listed(self) -> list[str]:
        """GET /v1/models: the aliases the server lists.

        Raises:
            OSError: the server does not answer.
            ValueError, KeyError: its answer is not a model list (a 401, say).
        """
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        answer = http.get_json(f"{self.url}/models", headers=headers, timeout_s=2)
        return [model["id"] for model in answer["data"]]

    def wait_serving(self, timeout_s: float = 60) -> float:
        """Wait until /v1/models lists every alias; returns the seconds it took.

        Raises:
            devstack.process.ProcessDied: the server exited (its log tail attached).
            devstack.process.NotReady: it did not answer within ``timeout_s`` seconds.
        """
        wanted = sorted([*self.models, *self.embedding_models])
        return self.wait_ready(
            lambda: sorted(self.models_listed()) == wanted,
            what=f"/v1/models listing {', '.join(wanted)}",
            timeout_s=timeout_s,
        )
