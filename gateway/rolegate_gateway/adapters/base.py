"""The adapter contract: from a client's OpenAI request to the upstream's HTTP request.

An adapter is built once per role wrapper (so per-request work is a dict merge and one
JSON encode) and is immutable; the proxy in ``rolegate_gateway.proxy`` does the HTTP.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Protocol

from rolegate_gateway.intake import Payload

__all__ = ["Adapter", "Endpoint", "UpstreamRequest", "encode"]


class Endpoint(enum.Enum):
    """The OpenAI API operations the gateway serves; the value is the path under /v1."""

    CHAT_COMPLETIONS = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP POST to the upstream: absolute URL, headers (auth included), JSON body."""

    url: str
    headers: dict[str, str]
    body: bytes


class Adapter(Protocol):
    """Builds the upstream request for one role; holds no per-request state."""

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """The upstream request for a client payload (its top-level members as JSON text)."""
        ...


def encode(value: Any) -> bytes:
    """Compact JSON bytes of any JSON value, non-ASCII kept as UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
