"""llama-cpp-python's OpenAI-compatible server, with ``encoding_format`` honoured.

Run by :class:`devstack.llama.server.LlamaServer` with the llama.cpp virtualenv's python
(``python -P serve.py CONFIG.json``); it imports nothing of rolegate. It is
``python -m llama_cpp.server --config_file CONFIG.json`` (the same app and settings on uvicorn;
the module's TLS options and environment overrides are left out, as nothing here uses them)
plus one ASGI middleware: llama-cpp-python 0.3.36 ignores ``encoding_format`` on
``POST /v1/embeddings`` and always answers lists of floats, while OpenAI's API answers
``"base64"`` with each vector's little-endian float32 bytes, base64-encoded
(https://platform.openai.com/docs/api-reference/embeddings/create). A client that asks for
base64 and decodes it (LightRAG's embedding function does) would otherwise break.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

__all__ = ["EmbeddingEncoding", "base64_vectors", "main"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def base64_vectors(body: bytes) -> bytes:
    """An embeddings answer with every ``embedding`` (a list of floats) replaced by the
    base64 of its little-endian float32 bytes."""
    answer = json.loads(body)
    for item in answer["data"]:
        vector = item["embedding"]
        item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return json.dumps(answer).encode()


class EmbeddingEncoding:
    """ASGI middleware: on ``POST /v1/embeddings`` with ``"encoding_format": "base64"``,
    re-encode a 200 answer's vectors (see :func:`base64_vectors`); all else passes as is."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"], scope.get("method"), scope.get("path")) != (
            "http",
            "POST",
            "/v1/embeddings",
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            wanted = json.loads(body).get("encoding_format")
        except (ValueError, AttributeError):
            wanted = None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if wanted != "base64":
            await self.app(scope, replay, send)
            return
        start: Message = {}
        parts: list[bytes] = []

        async def encode(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            data = b"".join(parts)
            if start["status"] == 200:
                data = base64_vectors(data)
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        await self.app(scope, replay, encode)


def main(config_path: str) -> None:
    """Serve the models of llama-cpp-python's JSON config file at ``config_path``."""
    with open(config_path, "rb") as config_file:
        config = ConfigFileSettings.model_validate_json(config_file.read())
    server = ServerSettings.model_validate(config)
    app = create_app(server_settings=server, model_settings=config.models)
    uvicorn.run(EmbeddingEncoding(app), host=server.host, port=server.port)


if __name__ == "__main__":
    main(sys.argv[1])
