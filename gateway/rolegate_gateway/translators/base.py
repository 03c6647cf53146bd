"""The translator contract: one object per request, four steps, between the client's
OpenAI request and a binding's upstream.

Shape taken from Envoy AI Gateway's ``internal/translator/translator.go``: a translator is
built per request by the role wrapper's :class:`TranslatorFactory` (which precomputes what
does not change between requests: URLs, the model, options) and is not shared between
requests. Its steps, in the order the proxy calls them:

1. :meth:`Translator.request`: the client's payload -> the upstream's URL, headers (no
   credentials: auth is applied after it, on every attempt, by ``rolegate_gateway.auth``)
   and body (:meth:`Translator.more`: a further call, when one answer takes several);
2. :meth:`Translator.response_headers`: the upstream's 2xx status and headers -> the
   status, content type and headers the client gets, and whether the answer is a stream;
3. :meth:`Translator.response_body`: each upstream chunk, then ``end=True`` once -> bytes
   for the client (stateful: SSE and event-stream frames split across chunks are joined);
4. :meth:`Translator.error`: an upstream error status (its body already scrubbed of the
   role's credentials) -> the :class:`~rolegate_gateway.errors.GatewayError` the client gets.

After the body, a translator reports what it saw: ``first_content`` (the client's bytes
hold the first content or tool-call delta: time to first token), ``usage`` (tokens, when
the upstream said) and ``failure`` (the answer ended in an error the translator already
wrote for the client, e.g. a stream cut short; the request counts as failed).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.intake import Payload

__all__ = [
    "NO_HEADERS",
    "REQUEST_ID_HEADER",
    "Endpoint",
    "ResponseHead",
    "Translator",
    "TranslatorFactory",
    "UpstreamRequest",
    "Usage",
    "encode",
    "request_id",
    "token_count",
]


class Endpoint(enum.Enum):
    """The OpenAI API operations the gateway serves; the value is the path under /v1."""

    CHAT_COMPLETIONS = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class UpstreamRequest(NamedTuple):
    """One HTTP POST to the upstream: absolute URL (a ``yarl.URL`` is sent as it is, so an
    already percent-encoded path stays byte-exact for a signature), headers without
    credentials, body bytes. (The per-request value types here are named tuples: made on
    every request, they cost a third of a frozen dataclass.)"""

    url: URL
    headers: dict[str, str]
    body: bytes


class ResponseHead(NamedTuple):
    """What the client gets instead of the upstream's 2xx status line and headers.

    ``stream``: the body is passed on chunk by chunk as it arrives (SSE), else read whole
    (up to ``upstream.MAX_ANSWER_BYTES``) and translated once.
    """

    status: int
    content_type: str
    stream: bool
    headers: Mapping[str, str] = MappingProxyType({})


class Usage(NamedTuple):
    """Tokens of one answer, after translation (OpenAI's meaning): ``prompt`` includes
    cached prompt tokens, ``cached`` counts those read from a prompt cache."""

    prompt: int
    completion: int
    cached: int = 0


class Translator(Protocol):
    """One request's translation; see the module docstring for the order of the steps."""

    #: The client's bytes so far hold the first content or tool-call delta.
    first_content: bool
    #: Tokens of the answer, once its end was seen; None when the upstream did not say.
    usage: Usage | None
    #: The answer ended in an error already written for the client (counted as failed).
    failure: errors.GatewayError | None

    @property
    def complete(self) -> bool:
        """The client's stream is whole (its ``data: [DONE]`` was written): the upstream's
        further bytes are not read, and an error after them is not the client's."""
        ...

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """The upstream request for a client payload (its top-level members as JSON text).

        Raises:
            errors.InvalidRequest: the request cannot be served by this binding (400).
        """
        ...

    def response_headers(self, status: int, headers: CIMultiDictProxy[str]) -> ResponseHead:
        """The client's status, content type and headers for an upstream 2xx answer."""
        ...

    def response_body(self, chunk: bytes, *, end: bool) -> bytes:
        """Bytes for the client from one upstream chunk; with ``end=True`` (once, last;
        a whole non-stream body comes in that call) also whatever ends the answer."""
        ...

    def error(
        self, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> errors.GatewayError:
        """The client's error for an upstream answer of status 400 or more; ``body`` is
        the upstream's, scrubbed of the role's credentials, at most
        ``upstream.MAX_ERROR_BYTES``."""
        ...

    def more(self) -> UpstreamRequest | None:
        """Another upstream call this request needs, asked after each whole (non-stream)
        answer was translated; None when the answer is complete. (Bedrock's Titan
        embeddings take one input per call: a list of inputs is several calls, made one
        after another in the request's one ``maxAsync`` slot; the last call's
        ``response_body`` returns the whole answer.)"""
        ...


class TranslatorFactory(Protocol):
    """Built once per role wrapper; called once per request."""

    def __call__(self) -> Translator:
        """A fresh translator for one request."""
        ...


#: Headers of an answer part that has none of its own (an error event inside a stream).
NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def token_count(value: object) -> int | None:
    """``value`` when it is a token count (an int >= 0, not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ASCII = json.JSONEncoder(separators=(",", ":")).encode


def encode(value: Any) -> bytes:
    """Compact JSON bytes of any JSON value, non-ASCII kept as UTF-8; a value holding a lone
    surrogate (an upstream's ``"\\ud83d"`` decodes to one, and UTF-8 cannot hold it) is
    written with ``\\u`` escapes instead, as the upstream sent it."""
    try:
        return _COMPACT(value).encode()
    except UnicodeEncodeError:
        return _ASCII(value).encode()


#: Response header carrying the upstream's request id to the client (for support tickets
#: with the provider); the upstream's own name for it differs per provider.
REQUEST_ID_HEADER = "x-upstream-request-id"


def request_id(headers: CIMultiDictProxy[str], name: str) -> dict[str, str]:
    """``{REQUEST_ID_HEADER: id}`` from the upstream's header ``name`` (OpenAI
    ``x-request-id``, Anthropic ``request-id``, Bedrock ``x-amzn-RequestId``), else ``{}``;
    an id longer than 200 characters or not printable ASCII is not passed."""
    value = headers.get(name)
    if value is None or len(value) > 200 or not value.isascii() or not value.isprintable():
        return {}
    return {REQUEST_ID_HEADER: value}
