"""OpenAI-compatible upstreams (openai, vllm, ollama's /v1): proxied with minimal change.

The request's ``model`` (the role) becomes the role's upstream model, and the role's
``options`` fill in parameters the request does not set. Nothing else is touched, and
the response passes through as bytes (https://platform.openai.com/docs/api-reference).
"""

from __future__ import annotations

from rolegate_gateway.adapters.base import Endpoint, UpstreamRequest, encode
from rolegate_gateway.auth import auth_headers
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload, join_object

__all__ = ["OpenAIAdapter"]


class OpenAIAdapter:
    """Adapter for an OpenAI-protocol upstream at ``upstream.base_url``."""

    __slots__ = ("_headers", "_model", "_options", "_urls")

    def __init__(self, upstream: Upstream) -> None:
        self._model = encode(upstream.model)
        self._options = {key: encode(value) for key, value in upstream.options.items()}
        self._headers = {"Content-Type": "application/json", **self.auth(upstream)}
        self._urls = {ep: self.url(upstream, ep) for ep in Endpoint}

    def auth(self, upstream: Upstream) -> dict[str, str]:
        """Auth headers of this binding."""
        return auth_headers(upstream.binding, upstream.credentials)

    def url(self, upstream: Upstream, endpoint: Endpoint) -> str:
        """Absolute URL of one endpoint."""
        return f"{upstream.base_url}/{endpoint.value}"

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """Role options under the payload, the role's model in place of the role name.

        The client's members pass on as the JSON text it sent (validated at intake).
        """
        members = {**self._options, **payload.members} if self._options else dict(payload.members)
        members["model"] = self._model
        return UpstreamRequest(self._urls[endpoint], self._headers, join_object(members))
