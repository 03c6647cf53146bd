"""OpenAI ``/v1/embeddings`` on Bedrock: Amazon Titan text embeddings through InvokeModel.

Titan takes **one input per call** (reference translation.md §11), so a request with a
list of inputs is several calls, one after another (Portkey silently embeds only the first
input, Envoy refuses lists: §13 row 15). Per input ``i``:
``POST {base_url}/model/{quote(model, safe="")}/invoke`` with
``{"inputText": input[i], "dimensions"?: n}`` answered
``{"embedding": [float, ...], "inputTextTokenCount": n}``; the last answer completes
OpenAI's ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding":
...}], "model", "usage": {"prompt_tokens", "total_tokens"}}``
(https://platform.openai.com/docs/api-reference/embeddings/create). ``encoding_format``
``base64`` (the openai SDK's default, which it decodes) gives each embedding as base64 of
little-endian float32; ``float`` or none gives float lists. Models other than Titan text
(Cohere takes another body and batches natively) are refused with a 400.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators.base import UpstreamRequest, Usage, encode, token_count
from rolegate_gateway.translators.chat import invalid
from rolegate_gateway.translators.upstream_errors import json_object
from rolegate_gateway.translators.wire.bedrock import TitanRequest

__all__ = ["MAX_INPUTS", "TITAN_PREFIXES", "TitanEmbeddings", "is_titan"]

#: Model id prefixes of the Titan text embedding models (v1, g1, v2).
TITAN_PREFIXES = ("amazon.titan-embed-text", "amazon.titan-embed-g1-text")
_TITAN_V2 = "amazon.titan-embed-text-v2"
_HEADERS = {"Content-Type": "application/json"}


def is_titan(model: str) -> bool:
    """``model`` is a Titan text embedding model id (``amazon.titan-embed-text-v2:0``)."""
    return model.startswith(TITAN_PREFIXES)


class TitanEmbeddings:
    """One embeddings request to a Titan model: its calls and the answer they make.

    Calls: :meth:`first` (from ``Translator.request``), then :meth:`next` after each answer
    was given to :meth:`answer` (``Translator.more``); :meth:`answer` returns ``b""`` until
    the last, which returns the whole OpenAI list and sets :attr:`usage`.
    """

    __slots__ = (
        "_base64",
        "_dimensions",
        "_embeddings",
        "_inputs",
        "_model",
        "_role",
        "_tokens",
        "_url",
        "failure",
        "usage",
    )

    def __init__(self, *, role: str, model: str, base_url: str) -> None:
        self._role = role
        self._model = model
        self._url = URL(f"{base_url}/model/{quote(model, safe='')}/invoke", encoded=True)
        self._inputs: list[str] = []
        self._dimensions: int | None = None
        self._base64 = False
        self._embeddings: list[list[float]] = []
        self._tokens = 0
        self.usage: Usage | None = None
        self.failure: errors.GatewayError | None = None

    def first(self, payload: Payload, options: Mapping[str, Any]) -> UpstreamRequest:
        """Read the request (``options``, the role's, fill in what it leaves out) and
        return the call for its first input.

        Raises:
            errors.InvalidRequest: not a Titan text model, ``input`` not a string or a list
                of strings, ``dimensions`` on a model without it, an unknown
                ``encoding_format``.
        """
        if not is_titan(self._model):
            raise invalid(
                f"binding bedrock serves embeddings with Amazon Titan text embedding models "
                f"only ({', '.join(p + '*' for p in TITAN_PREFIXES)}); the role's model "
                f"{self._model!r} is not one",
                "model",
            )
        values: dict[str, Any] = dict(options)
        values.update((key, payload.value(key)) for key in payload.members)
        self._inputs = _inputs(values.get("input"))
        self._dimensions = self._read_dimensions(values.get("dimensions"))
        fmt = values.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
        self._base64 = fmt == "base64"
        return self._call(0)

    def _read_dimensions(self, value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid("dimensions must be a positive integer", "dimensions")
        if not self._model.startswith(_TITAN_V2):
            raise invalid(
                f"dimensions: the role's model {self._model!r} has a fixed size; only "
                f"{_TITAN_V2}* takes dimensions (256, 512 or 1024)",
                "dimensions",
            )
        return value

    def _call(self, index: int) -> UpstreamRequest:
        body: TitanRequest = {"inputText": self._inputs[index]}
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        return UpstreamRequest(self._url, _HEADERS, encode(body))

    def next(self) -> UpstreamRequest | None:
        """The call for the next input once the previous answer was read; None when every
        input was answered (or an answer failed)."""
        done = len(self._embeddings)
        if self.failure is not None or done >= len(self._inputs) or done == 0:
            return None
        return self._call(done)

    def answer(self, body: bytes) -> bytes:
        """Read one call's answer; the whole OpenAI answer after the last, else ``b""``.
        An answer without a float list ``embedding`` sets :attr:`failure`."""
        parsed = json_object(body) or {}
        vector = _vector(parsed.get("embedding"))
        if vector is None:
            self.failure = errors.UpstreamUnavailable(
                f"the upstream of role {self._role!r} answered 200 without an embedding of "
                "finite float32 numbers"
            )
            return b""
        self._tokens += token_count(parsed.get("inputTextTokenCount")) or 0
        self._embeddings.append(vector)
        if len(self._embeddings) < len(self._inputs):
            return b""
        self.usage = Usage(self._tokens, 0, 0)
        data = [
            {"object": "embedding", "index": i, "embedding": self._encoded(vector)}
            for i, vector in enumerate(self._embeddings)
        ]
        return encode(
            {
                "object": "list",
                "data": data,
                "model": self._model,
                "usage": {"prompt_tokens": self._tokens, "total_tokens": self._tokens},
            }
        )

    def _encoded(self, vector: list[float]) -> list[float] | str:
        if not self._base64:
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


#: Texts per request: OpenAI's own limit for /v1/embeddings. Titan takes one per call, so
#: this also bounds the calls one request makes in its one maxAsync slot.
MAX_INPUTS = 2048

#: The largest float32; an embedding holds float32 numbers (base64 answers pack them so).
_FLOAT32_MAX = 3.4028234663852886e38


def _vector(value: object) -> list[float] | None:
    """``value`` as a list of finite float32-range numbers, else None."""
    if not isinstance(value, list):
        return None
    vector = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return None
        try:
            number = float(x)
        except OverflowError:  # an integer of hundreds of digits
            return None
        if not abs(number) <= _FLOAT32_MAX:  # NaN and infinities included
            return None
        vector.append(number)
    return vector


def _inputs(value: Any) -> list[str]:
    """``input`` as a list of non-empty strings.

    Raises:
        errors.InvalidRequest: anything else (token arrays included: Titan takes text).
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise invalid(
            "input must be a string or a non-empty list of strings (binding bedrock's Titan "
            "models take text, not token arrays)",
            "input",
        )
    if not all(items):
        raise invalid("input: an empty string cannot be embedded", "input")
    if len(items) > MAX_INPUTS:
        raise invalid(
            f"input: at most {MAX_INPUTS} texts per request (OpenAI's limit too); each is one "
            "Titan call",
            "input",
        )
    return items
