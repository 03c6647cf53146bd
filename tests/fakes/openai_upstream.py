"""A local OpenAI-protocol upstream whose latency, failures and disconnects a test controls.

Faithful enough for the official ``openai`` SDK to parse every answer (chat completions,
streamed and not, completions, embeddings), following
https://platform.openai.com/docs/api-reference. It records what it saw: the highest
number of concurrent calls, each request's headers, path, query and JSON body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    """One request as the upstream received it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Peak:
    """Concurrent calls across several fakes (one role rebound between upstreams)."""

    now: int = 0
    peak: int = 0


@dataclass
class FakeOpenAI:
    """Behaviour knobs (change them at any time) and records of one fake upstream."""

    name: str = "upstream"
    delay_s: float = 0.0  # before the answer's headers
    chunks: int = 3  # SSE content chunks per stream
    chunk_delay_s: float = 0.0
    embedding_size: int = 3  # numbers per embedding (a multiple of 3)
    chunk_bytes: int = 0  # pad each SSE content chunk with this many "x"
    fail_status: int | None = None  # answer this status with an OpenAI error body
    fail_body: bytes | None = None  # raw body for fail_status instead
    fail_times: int | None = None  # fail only this many calls, then answer normally
    fail_headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False  # drop the connection instead of answering
    no_done: bool = False  # end streams without "data: [DONE]" (llama.cpp past its context)
    empty_stream: bool = False  # answer a stream with 200 and no event at all
    gate: asyncio.Event | None = None  # hold every call until set
    in_flight: int = 0
    max_in_flight: int = 0
    seen: list[Seen] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # first user message, in start order
    cancelled: int = 0  # calls whose client (the gateway) went away mid-call
    shared: Peak | None = None  # also count calls here

    def reset(self) -> None:
        """Forget what was recorded."""
        self.max_in_flight = self.in_flight
        self.seen.clear()
        self.started.clear()
        self.cancelled = 0

    def app(self) -> web.Application:
        """The aiohttp app serving /v1."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        # Azure OpenAI's URL scheme
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        return app

    async def _enter(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.seen.append(Seen(request.path, dict(request.query), dict(request.headers), body))
        messages = body.get("messages") or []
        if messages:
            self.started.append(str(messages[-1].get("content")))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.shared is not None:
            self.shared.now += 1
            self.shared.peak = max(self.shared.peak, self.shared.now)
        return body

    async def _hold(self, request: web.Request) -> web.Response | None:
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.disconnect:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if self.fail_status is not None and self.fail_times != 0:
            if self.fail_times is not None:
                self.fail_times -= 1
            body = (
                self.fail_body
                or json.dumps(
                    {
                        "error": {
                            "message": f"{self.name} failed on purpose",
                            "type": "server_error",
                            "param": None,
                            "code": "fake_failure",
                        }
                    }
                ).encode()
            )
            return web.Response(
                status=self.fail_status,
                body=body,
                content_type="application/json",
                headers=self.fail_headers,
            )
        return None

    @asynccontextmanager
    async def _call(self, request: web.Request) -> AsyncIterator[dict[str, Any]]:
        body = await self._enter(request)
        try:
            yield body
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            if self.shared is not None:
                self.shared.now -= 1

    def _content(self, i: int) -> str:
        return f"{self.name}-{i} " + "x" * self.chunk_bytes

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        prompt = len(json.dumps(body.get("messages") or body.get("prompt") or body.get("input")))
        return {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        async with self._call(request) as body:
            if (early := await self._hold(request)) is not None:
                return early
            base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
            if not body.get("stream"):
                return web.json_response(
                    {
                        **base,
                        "object": "chat.completion",
                        "system_fingerprint": self.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": f"hi from {self.name}"},
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": self._usage(body),
                    }
                )
            events = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                *(
                    {"choices": [{"index": 0, "delta": {"content": self._content(i)}}]}
                    for i in range(self.chunks)
                ),
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({"choices": [], "usage": self._usage(body)})
            chunks = [
                {**base, "object": "chat.completion.chunk", "system_fingerprint": self.name, **e}
                for e in events
            ]
            return await self._sse(request, chunks)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        async with self._call(request) as body:
            if (early := await self._hold(request)) is not None:
                return early
            base = {"id": "cmpl-fake", "created": int(time.time()), "model": body["model"]}
            if not body.get("stream"):
                return web.json_response(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [
                            {
                                "index": 0,
                                "text": f"completed by {self.name}",
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": self._usage(body),
                    }
                )
            chunks = [
                {
                    **base,
                    "object": "text_completion",
                    "choices": [
                        {
                            "index": 0,
                            "text": f"{self.name}-{i} ",
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ],
                }
                for i in range(self.chunks)
            ]
            return await self._sse(request, chunks)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        async with self._call(request) as body:
            if (early := await self._hold(request)) is not None:
                return early
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return web.json_response(
                {
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": [0.1, 0.2, float(i)] * max(1, self.embedding_size // 3),
                        }
                        for i in range(len(inputs))
                    ],
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                }
            )

    async def _sse(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.empty_stream:
            await response.write_eof()
            return response
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        if not self.no_done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
