"""OpenAI-compatible upstreams (openai, vllm, ollama's /v1, azure_openai): passed through.

The request's ``model`` (the role) becomes the role's upstream model and the role's
``options`` fill in parameters the request does not set; nothing else is touched
(https://platform.openai.com/docs/api-reference). The answer passes through as bytes,
never decoded. What the translator reads of it, without slowing that path:

- time to first token: the first chunk holding a non-empty ``content``, ``arguments`` or
  ``reasoning_content`` string (a regular-expression search per chunk until found);
- usage: from a whole body, its last ``"usage":`` object; from a stream, the same in its
  last :data:`TAIL_BYTES` (the final usage chunk: ``stream_options.include_usage``);
- a stream's end: one that the upstream ends without ``data: [DONE]`` (llama.cpp does
  when a prompt exceeds its context: 200, an empty stream, no error) is not a success:
  the client's stream ends with an OpenAI error event and the request counts as failed.

Azure differs only in its URL and key header (:class:`AzurePassThrough`;
https://learn.microsoft.com/azure/ai-services/openai/reference).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from multidict import CIMultiDictProxy
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload, join_object
from rolegate_gateway.translators import upstream_errors
from rolegate_gateway.translators.base import (
    Endpoint,
    ResponseHead,
    UpstreamRequest,
    Usage,
    encode,
    request_id,
)

__all__ = ["TAIL_BYTES", "AzurePassThrough", "PassThrough", "openai_usage"]

#: Bytes of a stream's end kept to find ``data: [DONE]`` and the final usage chunk.
TAIL_BYTES = 4096

_SSE = "text/event-stream"
_DONE = (b"data: [DONE]", b"data:[DONE]")  # the space after the colon is optional (SSE)
_CONTENT = re.compile(rb'"(?:content|arguments|reasoning_content)": ?"[^"]')
_KEY_BYTES = 24  # longer than any match of _CONTENT
_USAGE_WINDOW = 512  # bytes after "usage" that hold its object (OpenAI's is ~200)
_PROMPT = re.compile(rb'\A"usage"\s*:\s*\{.*?"prompt_tokens"\s*:\s*(\d+)[,}\s]', re.S)
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)[,}\s]')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)[,}\s]')


def openai_usage(data: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in ``data`` (a body, or a stream's tail) read as
    :class:`Usage`: ``prompt_tokens``, ``completion_tokens`` (0 for embeddings) and
    ``prompt_tokens_details.cached_tokens``; None when absent, null or without a
    ``prompt_tokens`` integer. Three searches in the few hundred bytes after the key, not a
    JSON decode: this runs on every pass-through answer."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    window = data[at : at + _USAGE_WINDOW]
    prompt = _PROMPT.search(window)
    if prompt is None:
        return None
    completion = _COMPLETION.search(window)
    cached = _CACHED.search(window)
    return Usage(
        int(prompt[1]),
        int(completion[1]) if completion else 0,
        int(cached[1]) if cached else 0,
    )


class PassThrough:
    """The translator factory of an OpenAI-protocol upstream at ``upstream.base_url``."""

    __slots__ = ("_headers", "_model", "_options", "_urls", "role")

    def __init__(self, upstream: Upstream, *, role: str) -> None:
        self.role = role
        self._model = encode(upstream.model)
        self._options = {key: encode(value) for key, value in upstream.options.items()}
        self._headers = {"Content-Type": "application/json"}
        self._urls = {ep: URL(self.url(upstream, ep)) for ep in Endpoint}

    def url(self, upstream: Upstream, endpoint: Endpoint) -> str:
        """Absolute URL of one endpoint."""
        return f"{upstream.base_url}/{endpoint.value}"

    def build(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """Role options under the payload, the role's model in place of the role name.

        The client's members pass on as the JSON text it sent (validated at intake).
        """
        members = {**self._options, **payload.members} if self._options else dict(payload.members)
        members["model"] = self._model
        return UpstreamRequest(self._urls[endpoint], self._headers, join_object(members))

    def __call__(self) -> PassThroughExchange:
        return PassThroughExchange(self)


class AzurePassThrough(PassThrough):
    """Differs from :class:`PassThrough` only in the URL:
    ``{endpoint}/openai/deployments/{deployment}/{operation}?api-version={version}``."""

    __slots__ = ()

    def url(self, upstream: Upstream, endpoint: Endpoint) -> str:
        deployment = quote(upstream.azure_deployment or upstream.model, safe="")
        version = quote(upstream.azure_api_version or "", safe="")
        return (
            f"{upstream.base_url}/openai/deployments/{deployment}/{endpoint.value}"
            f"?api-version={version}"
        )


class PassThroughExchange:
    """One request through :class:`PassThrough`: the bytes as they are, read on the side."""

    complete = False  # the end of the bytes is the upstream's to say

    __slots__ = ("_factory", "_stream", "_tail", "failure", "first_content", "usage")

    def __init__(self, factory: PassThrough) -> None:
        self._factory = factory
        self._stream = False
        self._tail = b""
        self.first_content = False
        self.usage: Usage | None = None
        self.failure: errors.GatewayError | None = None

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        return self._factory.build(endpoint, payload)

    def response_headers(self, status: int, headers: CIMultiDictProxy[str]) -> ResponseHead:
        content_type = headers.get("Content-Type", "application/json")
        self._stream = content_type.startswith(_SSE)
        return ResponseHead(status, content_type, self._stream, request_id(headers, "x-request-id"))

    def response_body(self, chunk: bytes, *, end: bool) -> bytes:
        if not self._stream:
            if end:
                self.usage = openai_usage(chunk)
            return chunk
        if not self.first_content and _CONTENT.search(self._tail[-_KEY_BYTES:] + chunk):
            self.first_content = True  # (a key split between chunks is found too)
        if len(chunk) >= TAIL_BYTES:
            self._tail = chunk[-TAIL_BYTES:]
        elif chunk:
            self._tail = self._tail[max(0, len(self._tail) + len(chunk) - TAIL_BYTES) :] + chunk
        if not end:
            return chunk
        return chunk + self._end()

    def _end(self) -> bytes:
        if self._tail.rstrip().endswith(_DONE):  # "data: [DONE]" or "data:[DONE]"
            self.usage = openai_usage(self._tail)
            return b""
        self.failure = errors.UpstreamUnavailable(
            f"the upstream of role {self._factory.role!r} ended its stream without "
            "'data: [DONE]' (llama.cpp does so when a prompt exceeds its context)"
        )
        return b"data: " + self.failure.body() + b"\n\n"

    def error(
        self, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> errors.GatewayError:
        return upstream_errors.openai_error(self._factory.role, status, headers, body)

    def more(self) -> None:
        return None
