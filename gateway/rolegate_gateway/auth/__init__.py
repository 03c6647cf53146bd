"""Upstream authentication, kept apart from translation: translators never hold secrets.

Owns :class:`UpstreamAuth`, the step the proxy applies after the translator's request
step and again on every retry (a SigV4 signature is dated, so a retry is signed anew),
and the static-header kind of it, :class:`HeaderAuth`. SigV4 (bedrock) is
``rolegate_gateway.auth.sigv4``. Which binding uses which is the binding registry's
(``rolegate_gateway.translators``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials, Upstream

if TYPE_CHECKING:  # the translators' registry imports this package
    from rolegate_gateway.translators.base import UpstreamRequest

__all__ = ["HeaderAuth", "UpstreamAuth", "api_key_auth", "auth_headers"]


class UpstreamAuth(Protocol):
    """Adds a role's credentials to each attempt of an upstream request."""

    async def headers(self, request: UpstreamRequest) -> dict[str, str]:
        """The headers to send with ``request``: its own plus the credentials.

        Raises:
            errors.UpstreamUnavailable: no credentials could be had (e.g. the AWS
                credential chain found none); the call fails with 502.
        """
        ...


class HeaderAuth:
    """Static credential headers, merged into each request's (none: sent as they are).

    A translator that sends the same headers dict with every request (the pass-through
    does) gets the same merged dict back: the merge is made once, not per request.
    """

    __slots__ = ("_headers", "_merged", "_source")

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers
        self._source: dict[str, str] | None = None
        self._merged: dict[str, str] = {}

    async def headers(self, request: UpstreamRequest) -> dict[str, str]:
        if not self._headers:
            return request.headers
        if request.headers is not self._source:
            self._merged = {**request.headers, **self._headers}
            self._source = request.headers
        return self._merged


def auth_headers(binding: Binding, credentials: Credentials) -> dict[str, str]:
    """Static auth headers for one role; empty when the role has no key.

    - openai, vllm, ollama: ``Authorization: Bearer KEY``
      (https://platform.openai.com/docs/api-reference/authentication).
    - azure_openai: ``api-key: KEY``
      (https://learn.microsoft.com/azure/ai-services/openai/reference#authentication).
    - anthropic: ``x-api-key: KEY`` (https://docs.anthropic.com/en/api/overview).

    Raises:
        ValueError: the binding authenticates per request (bedrock's SigV4).
    """
    if credentials.api_key is None:
        return {}
    key = credentials.api_key.get_secret_value()
    match binding:
        case Binding.OPENAI | Binding.VLLM | Binding.OLLAMA:
            return {"Authorization": f"Bearer {key}"}
        case Binding.AZURE_OPENAI:
            return {"api-key": key}
        case Binding.ANTHROPIC:
            return {"x-api-key": key}
        case _:
            raise ValueError(f"binding {binding} does not use static auth headers")


def api_key_auth(upstream: Upstream, *, role: str | None = None) -> HeaderAuth:
    """The :class:`HeaderAuth` of a role whose binding sends an API key header (``role``,
    the role's name, is not needed: the signature is the registry's)."""
    return HeaderAuth(auth_headers(upstream.binding, upstream.credentials))
