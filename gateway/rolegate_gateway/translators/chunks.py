"""What translated answers look like to the client: OpenAI's chat completion and its stream.

Shared by every translator that is not a pass-through, so that the anthropic and bedrock
translators differ only in what they read. Formats (../shared/reference/translation.md
§3, §4.2, verified against the openai SDK; https://platform.openai.com/docs/api-reference/chat):

- :func:`completion`: a whole ``chat.completion`` object;
- :class:`ChunkWriter`: a stream's ``data: {chat.completion.chunk}`` events, with the
  rules peers get wrong built in: the role chunk first; tool calls numbered 0, 1, ... in
  the order they start (never the provider's content-block index); a tool that streamed
  no argument bytes gets ``"{}"`` when it ends; the finish chunk once, and nothing with
  ``choices`` after it; the usage chunk (``choices: []``) only when the client asked
  (``stream_options.include_usage``), after the finish chunk; then ``data: [DONE]``;
- :meth:`ChunkWriter.error`: the event that ends a broken stream, ``data: {"error": ...}``,
  which the openai SDK raises as ``APIError``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from rolegate_gateway import errors
from rolegate_gateway.translators.base import Usage, encode

__all__ = ["ChunkWriter", "completion", "finish_reason", "usage_object"]

log = logging.getLogger(__name__)


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object: prompt (cached included), completion, total, and
    ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
    }


def finish_reason(table: Mapping[str, str], reason: str | None, *, role: str, binding: str) -> str:
    """OpenAI's ``finish_reason`` for a provider's stop reason; an unknown one (providers
    add values within an API version) is ``stop`` and a log line, never a failed 200."""
    if reason is None:
        return "stop"
    mapped = table.get(reason)
    if mapped is None:
        log.warning(
            "role %s: unknown %s stop reason %r answered as 'stop'",
            role,
            binding,
            reason[:64],
            extra={"role": role, "binding": binding},
        )
        return "stop"
    return mapped


def completion(
    *,
    id_: str,
    model: str,
    content: str | None,
    tool_calls: Sequence[tuple[str, str, str]],
    finish: str,
    usage: Usage | None,
    created: int | None = None,
) -> bytes:
    """A ``chat.completion`` as JSON bytes. ``tool_calls``: (id, name, arguments JSON text)
    in order; the field is left out when there are none. ``content`` None: no text."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in tool_calls
        ]
    body: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage_object(usage)
    return encode(body)


class ChunkWriter:
    """The client's side of one translated stream: each method returns the SSE bytes to
    send (``b""`` when nothing is due). Not reusable; not shared between requests.

    Call :meth:`start` first (the id and model are often only known from the upstream's
    first event); tool calls are keyed by whatever the provider uses (a content-block
    index) and numbered densely here.
    """

    __slots__ = (
        "_args_seen",
        "_head",
        "_include_usage",
        "_prefix",
        "_tools",
        "done",
        "finished",
        "first_content",
        "usage",
    )

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._head = self._prefix = b""
        self._tools: dict[object, int] = {}
        self._args_seen: set[object] = set()
        self.finished = False  # the finish chunk was written
        self.done = False  # data: [DONE] was written
        self.first_content = False  # a content or tool-call delta was written
        self.usage: Usage | None = None

    @property
    def started(self) -> bool:
        """:meth:`start` was called."""
        return bool(self._prefix)

    def start(self, *, id_: str, model: str, created: int | None = None) -> bytes:
        """The role chunk ``{"role": "assistant", "content": ""}``; fixes id and model (an
        empty id: a generated ``chatcmpl-`` one)."""
        stamp = int(time.time()) if created is None else created
        id_ = id_ or "chatcmpl-" + uuid.uuid4().hex
        self._head = b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,' % (
            encode(id_),
            stamp,
            encode(model),
        )
        self._prefix = self._head + b'"choices":[{"index":0,"delta":'
        return self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if self.finished:
            return b""  # nothing with choices after the finish chunk
        tail = b"null" if finish is None else encode(finish)
        return b'%b%b,"logprobs":null,"finish_reason":%b}]}\n\n' % (
            self._prefix,
            encode(delta),
            tail,
        )

    def content(self, text: str) -> bytes:
        """A content delta; nothing for empty text."""
        if not text:
            return b""
        self.first_content = True
        return self._chunk({"content": text})

    def tool_start(self, key: object, *, call_id: str, name: str) -> bytes:
        """A tool call begins: its index (the next ordinal), id, name, empty arguments."""
        index = self._tools[key] = len(self._tools)
        self.first_content = True
        call = {"index": index, "id": call_id, "type": "function"}
        return self._chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]})

    def is_tool(self, key: object) -> bool:
        """``key`` is a tool call started by :meth:`tool_start`."""
        return key in self._tools

    def tool_args(self, key: object, fragment: str) -> bytes:
        """A fragment of a started tool call's arguments (JSON text, passed as it is);
        nothing for an empty fragment or an unknown ``key``."""
        index = self._tools.get(key)
        if index is None or not fragment:
            return b""
        self._args_seen.add(key)
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def tool_stop(self, key: object) -> bytes:
        """A tool call ends: ``"{}"`` as its arguments when none were streamed."""
        if key not in self._tools or key in self._args_seen:
            return b""
        self._args_seen.add(key)
        index = self._tools[key]
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]})

    def finish(self, reason: str) -> bytes:
        """The finish chunk (once)."""
        out = self._chunk({}, reason)
        self.finished = True
        return out

    def end(self, usage: Usage | None) -> bytes:
        """After the finish chunk: the usage chunk when asked for (and known), then
        ``data: [DONE]``. Records ``usage`` for the gateway's metrics either way."""
        self.usage = usage
        out = b""
        if self._include_usage and usage is not None:
            usage_json = encode(usage_object(usage))
            out = self._head + b'"choices":[],"usage":%b}\n\n' % usage_json
        self.done = True
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: errors.GatewayError) -> bytes:
        """The event that ends a broken stream: OpenAI's error body as an SSE data event."""
        return b"data: " + error.body() + b"\n\n"
