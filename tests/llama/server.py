"""llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) as a local process.

One server holds several models, each under an alias (the ``model`` a request names), from
one JSON config file (llama-cpp-python's ``--config_file``, whose fields are its
``ConfigFileSettings``: https://llama-cpp-python.readthedocs.io/en/latest/server/). It loads
one model at a time and switches on demand, which takes milliseconds for the tiny models of
:mod:`tests.llama.model`. Requests are served one at a time, in order.

``interrupt_requests`` is turned off: llama-cpp-python's default ends a stream early, with
``[DONE]``, as soon as another request waits, which would cut answers short under load.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from tests.cluster.processes import Component, free_ports
from tests.llama import env
from tests.llama.model import N_CTX

__all__ = ["LlamaServer"]


class LlamaServer(Component):
    """``python -m llama_cpp.server`` on ``127.0.0.1:port`` serving ``models`` (alias -> GGUF
    path), requiring ``Authorization: Bearer <api_key>`` when ``api_key`` is set.

    ``url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``). The interpreter is
    ``env.python()``; call :func:`tests.llama.env.ensure` first.
    """

    def __init__(
        self,
        models: Mapping[str, Path],
        *,
        workdir: Path,
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.port: Final = port or free_ports(1)[0]
        self.url: Final = f"http://127.0.0.1:{self.port}/v1"
        self.api_key: Final = api_key
        self.models: Final = dict(models)
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "interrupt_requests": False,
            "api_key": api_key,
            "models": [
                {
                    "model": str(path),
                    "model_alias": alias,
                    "n_ctx": N_CTX,
                    "n_threads": 1,
                    "n_threads_batch": 1,
                    "verbose": False,
                }
                for alias, path in models.items()
            ],
        }
        config = workdir / f"llama-server-{self.port}.json"
        config.write_text(json.dumps(settings, indent=2))
        argv = [str(env.python()), "-m", "llama_cpp.server", "--config_file", str(config)]
        super().__init__("llama-server", argv, log_path=workdir / f"llama-server-{self.port}.log")

    def models_listed(self) -> list[str]:
        """GET /v1/models: the aliases the server lists.

        Raises:
            OSError: the server does not answer (urllib.error.URLError included).
        """
        request = urllib.request.Request(f"{self.url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=2) as response:
            return [m["id"] for m in json.loads(response.read())["data"]]

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until /v1/models lists every alias.

        Raises:
            tests.cluster.processes.ComponentDied: the server exited (its log tail attached).
            TimeoutError: it did not answer within ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            try:
                if sorted(self.models_listed()) == sorted(self.models):
                    return
            except (OSError, ValueError):  # URLError is an OSError
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server not ready:\n{self.log_tail()}")
            time.sleep(0.1)
