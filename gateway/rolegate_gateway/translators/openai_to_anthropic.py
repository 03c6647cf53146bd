"""OpenAI Chat Completions -> Anthropic Messages (binding ``anthropic``), and back.

Requests are read by :func:`~rolegate_gateway.translators.chat.read_chat` (what it refuses
is refused here too) and sent as ``POST {base_url}/v1/messages`` with the role's
``anthropic-version`` (../shared/reference/translation.md §1, §2). Beyond ``read_chat``:
``max_tokens`` (required) is the request's, else the role's ``anthropic_max_tokens``, else
4096; every system/developer message is one ``system`` text block, in order; base64
jpeg/png/gif/webp are image blocks, a PDF a document block, other media types 400, an https
URL a URL source; from ``anthropic-version`` 2026-10-21 on, ``temperature``/``top_p`` (from
the request or the role's options) are refused with 400, as Anthropic refuses them (§0.1);
``tool_choice`` auto/none/required/function is auto/none/any/tool, and
``parallel_tool_calls: false`` is ``disable_parallel_tool_use`` (never on none);
``/v1/embeddings`` and ``/v1/completions`` are refused (Anthropic has neither).

Answers (§3, §4, §5): a Message is one ``chat.completion`` (all text blocks joined,
``tool_use`` blocks as tool calls, thinking dropped); a stream is read event by event
(:mod:`~rolegate_gateway.translators.sse`, never by TCP chunk) through the §4.3 state
machine into a :class:`~rolegate_gateway.translators.chunks.ChunkWriter`; an ``error``
event, a stream ending before ``message_stop`` and a 200 that is not a Message are
failures; error answers keep their status (529 becomes 503) with OpenAI's error body.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from multidict import CIMultiDictProxy
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.api import ANTHROPIC_VERSION
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators import chunks, sse, upstream_errors
from rolegate_gateway.translators.base import (
    NO_HEADERS,
    Endpoint,
    ResponseHead,
    UpstreamRequest,
    Usage,
    encode,
    request_id,
    token_count,
)
from rolegate_gateway.translators.chat import (
    Chat,
    Image,
    Part,
    Text,
    ToolCall,
    ToolChoice,
    ToolResult,
    Turn,
    read_chat,
)
from rolegate_gateway.translators.wire import anthropic as wire

__all__ = ["AnthropicExchange", "AnthropicTranslator"]

_BINDING = "anthropic"
_SSE = "text/event-stream"
_JSON = "application/json"
_DECODE = json.JSONDecoder().decode
_BLOCK_EVENTS = ("content_block_start", "content_block_delta", "content_block_stop")
#: The events that need ``message_start`` before them.
_AFTER_START = frozenset({*_BLOCK_EVENTS, "message_delta", "message_stop"})


class AnthropicTranslator:
    """The translator factory of one ``anthropic`` role: built once per role wrapper with
    its :class:`~rolegate_gateway.config.Upstream` (``model``, ``base_url`` without a
    trailing slash, ``options``, ``anthropic_version``, ``anthropic_max_tokens``);
    calling it gives the :class:`AnthropicExchange` of one request."""

    __slots__ = ("_headers", "_max_tokens", "_options", "_url", "_version", "model", "role")

    def __init__(self, upstream: Upstream, *, role: str) -> None:
        self.role = role
        self.model = upstream.model
        self._options = dict(upstream.options)
        self._version = upstream.anthropic_version or ANTHROPIC_VERSION
        self._max_tokens = upstream.anthropic_max_tokens or wire.DEFAULT_MAX_TOKENS
        self._url = URL(upstream.base_url + wire.MESSAGES_PATH)
        self._headers = {"Content-Type": _JSON, "anthropic-version": self._version}

    def __call__(self) -> AnthropicExchange:
        return AnthropicExchange(self)

    def build(self, endpoint: Endpoint, payload: Payload) -> tuple[UpstreamRequest, Chat]:
        """The ``POST /v1/messages`` for a client's request (no credentials), and the
        request as read.

        Raises:
            errors.InvalidRequest: not a chat request, or one Anthropic cannot serve.
        """
        if endpoint is not Endpoint.CHAT_COMPLETIONS:
            raise errors.InvalidRequest(
                f"binding {_BINDING} serves /v1/chat/completions only; "
                f"/v1/{endpoint.value} is not part of Anthropic's API"
            )
        chat = read_chat(payload, self._options, binding=_BINDING)
        if self._version >= wire.SAMPLING_REFUSED_FROM:
            for name, value in (("temperature", chat.temperature), ("top_p", chat.top_p)):
                if value is not None:
                    raise errors.InvalidRequest(
                        f"{name}: role {self.role!r} calls Anthropic with anthropic-version "
                        f"{self._version}, which refuses temperature and top_p; leave them "
                        "out (of the request, or of the role's options)",
                        param=name,
                    )
        body = _body(chat, model=self.model, max_tokens=chat.max_tokens or self._max_tokens)
        return UpstreamRequest(self._url, self._headers, encode(body)), chat


def _body(chat: Chat, *, model: str, max_tokens: int) -> wire.MessagesRequest:
    """The Messages request body of a read chat request (reference §2)."""
    body: wire.MessagesRequest = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [_turn(turn) for turn in chat.turns],
    }
    if chat.system:
        body["system"] = [{"type": "text", "text": text} for text in chat.system]
    if chat.stop:
        body["stop_sequences"] = chat.stop
    if chat.temperature is not None:
        body["temperature"] = chat.temperature
    if chat.top_p is not None:
        body["top_p"] = chat.top_p
    if chat.tools:
        tools: list[wire.ToolParam] = []
        for tool in chat.tools:
            spec: wire.ToolParam = {"name": tool.name, "input_schema": tool.parameters}
            if tool.description is not None:
                spec["description"] = tool.description
            if tool.strict is not None:
                spec["strict"] = tool.strict
            tools.append(spec)
        body["tools"] = tools
    choice = _tool_choice(chat.tool_choice, chat.parallel_tool_calls, tools=bool(chat.tools))
    if choice is not None:
        body["tool_choice"] = choice
    if chat.user is not None:
        body["metadata"] = {"user_id": chat.user}
    if chat.stream:
        body["stream"] = True
    return body


def _tool_choice(
    choice: ToolChoice | None, parallel: bool | None, *, tools: bool
) -> wire.ToolChoice | None:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` as Anthropic's ``tool_choice``;
    ``parallel_tool_calls: false`` alone is ``auto`` without parallel use (when there are
    tools: Anthropic takes no ``tool_choice`` without them)."""
    out: wire.ToolChoice
    match choice:
        case None if parallel is False and tools:
            out = {"type": "auto"}
        case None:
            return None
        case ToolChoice(kind="none"):
            return {"type": "none"}
        case ToolChoice(kind="required"):
            out = {"type": "any"}
        case ToolChoice(kind="function", name=str(name)):
            out = {"type": "tool", "name": name}
        case _:
            out = {"type": "auto"}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _turn(turn: Turn) -> wire.MessageParam:
    blocks = [_block(part) for part in turn.parts]
    if turn.role == "assistant":  # text before tool_use (merged turns interleave them)
        blocks.sort(key=lambda block: block["type"] == "tool_use")
    return {"role": turn.role, "content": blocks}


def _block(part: Part) -> wire.ContentBlock:
    match part:
        case Text():
            return {"type": "text", "text": part.text}
        case Image():
            return _image(part)
        case ToolCall():
            return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
        case ToolResult():
            result: wire.ToolResultBlock = {"type": "tool_result", "tool_use_id": part.tool_call_id}
            content = part.content
            if len(content) == 1 and isinstance(content[0], Text):
                result["content"] = content[0].text
            elif content:
                result["content"] = [
                    {"type": "text", "text": p.text} if isinstance(p, Text) else _image(p)
                    for p in content
                ]
            return result


def _image(image: Image) -> wire.ImageBlock | wire.DocumentBlock:
    """An image (or PDF) block.

    Raises:
        errors.InvalidRequest: a media type Anthropic does not take.
    """
    if image.data is None:
        return {"type": "image", "source": {"type": "url", "url": image.url or ""}}
    media_type = image.media_type or ""
    source: wire.Base64Source = {"type": "base64", "media_type": media_type, "data": image.data}
    if media_type in wire.IMAGE_MEDIA_TYPES:
        return {"type": "image", "source": source}
    if media_type in wire.DOCUMENT_MEDIA_TYPES:
        return {"type": "document", "source": source}
    taken = ", ".join(sorted(wire.IMAGE_MEDIA_TYPES | wire.DOCUMENT_MEDIA_TYPES))
    raise errors.InvalidRequest(
        f"messages: binding {_BINDING} cannot take a data URL of type {media_type[:64]!r} "
        f"(it takes {taken})",
        param="messages",
    )


def _count(counts: dict[str, int], usage: object) -> None:
    """Set ``counts`` from the integer fields ``usage`` has (Set, not Add; reference §4.1)."""
    if isinstance(usage, dict):
        for key in wire.USAGE_FIELDS:
            value = token_count(usage.get(key))
            if value is not None:
                counts[key] = value


def _usage(counts: dict[str, int]) -> Usage | None:
    """OpenAI's meaning of Anthropic's counts (reference §3.2); None when there were none."""
    if not counts:
        return None
    cached = counts.get("cache_read_input_tokens", 0)
    prompt = counts.get("input_tokens", 0) + counts.get("cache_creation_input_tokens", 0)
    return Usage(prompt + cached, counts.get("output_tokens", 0), cached)


def _error(
    role: str, status: int, headers: CIMultiDictProxy[str], kind: str, text: str
) -> errors.UpstreamStatusError:
    """An Anthropic error of type ``kind`` for the client, with ``status`` (reference §5)."""
    openai_type = wire.ERRORS.get(kind, (status, kind))[1]
    code = kind
    if kind == "invalid_request_error" and text.lower().startswith(wire.CONTEXT_TOO_LONG):
        code = "context_length_exceeded"
    return upstream_errors.mapped_error(
        role, status, headers, type_=openai_type, text=text or kind, code=code
    )


class AnthropicExchange:
    """One request through :class:`AnthropicTranslator` (the Translator protocol of
    ``rolegate_gateway.translators.base``); not shared between requests."""

    __slots__ = (
        "_blocks",
        "_closed",
        "_counts",
        "_factory",
        "_parser",
        "_parts",
        "_stop_reason",
        "_stream",
        "_writer",
        "failure",
        "first_content",
        "usage",
    )

    def __init__(self, factory: AnthropicTranslator) -> None:
        self._factory = factory
        self._stream = False
        self._writer = chunks.ChunkWriter(include_usage=False)
        self._parser = sse.SSEParser()
        self._parts: list[bytes] = []  # a whole body's chunks, if it comes in several
        self._blocks: dict[int, str] = {}  # content-block index -> its type
        self._counts: dict[str, int] = {}  # Anthropic's token counts so far
        self._stop_reason: str | None = None
        self._closed = False  # message_stop, an error event, or a failure was handled
        self.first_content = False
        self.usage: Usage | None = None
        self.failure: errors.GatewayError | None = None

    @property
    def complete(self) -> bool:
        """The client's stream is whole: ``data: [DONE]`` was written."""
        return self._writer.done

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """``POST {base_url}/v1/messages``; see :meth:`AnthropicTranslator.build`."""
        up, chat = self._factory.build(endpoint, payload)
        self._stream = chat.stream
        self._writer = chunks.ChunkWriter(include_usage=chat.include_usage)
        return up

    def response_headers(self, status: int, headers: CIMultiDictProxy[str]) -> ResponseHead:
        """200, SSE when the request streamed (then the answer is a stream) else JSON, and
        Anthropic's ``request-id``."""
        content_type = _SSE if self._stream else _JSON
        return ResponseHead(200, content_type, self._stream, request_id(headers, "request-id"))

    def response_body(self, chunk: bytes, *, end: bool) -> bytes:
        """A Message as a ``chat.completion`` (at ``end``), or a stream's events as chunks."""
        if not self._stream:
            if not end:
                self._parts.append(chunk)
                return b""
            return self._message(b"".join([*self._parts, chunk]))
        if self._closed:
            return b""  # after message_stop or a failure, nothing more is read
        out: list[bytes] = []
        try:
            events = self._parser.feed(chunk) if chunk else []
        except sse.EventTooLarge as exc:
            return self._fail(errors.UpstreamUnavailable(f"{self._upstream} sent {exc}"))
        for event in events:
            out.append(self._event(event))
            if self._closed:
                break
        if end and not self._closed:
            cut = " (in the middle of an event)" if self._parser.pending else ""
            message = f"{self._upstream} ended its stream before message_stop{cut}"
            out.append(self._fail(errors.UpstreamUnavailable(message)))
        self.first_content = self._writer.first_content
        return b"".join(out)

    def error(
        self, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> errors.GatewayError:
        """Anthropic's ``{"type": "error", "error": {"type", "message"}}`` as OpenAI's error
        body (type per reference §5, code = Anthropic's type or ``context_length_exceeded``);
        the status kept, 529 answered 503; a 401 or ``authentication_error`` names the
        role's key; a body of another shape is wrapped as text."""
        role = self._factory.role
        client_status = 503 if status == wire.OVERLOADED_STATUS else status
        parsed = upstream_errors.json_object(body)
        detail = parsed.get("error") if parsed is not None else None
        kind = detail.get("type") if isinstance(detail, dict) else None
        said = detail.get("message") if isinstance(detail, dict) else None
        text = said if isinstance(said, str) else ""
        if status == 401 or kind == "authentication_error":
            return upstream_errors.credentials_refused(
                role, status, headers, text if kind is not None else body.decode(errors="replace")
            )
        if not isinstance(kind, str):
            return upstream_errors.wrapped(
                role, client_status, headers, body.decode(errors="replace")
            )
        return _error(role, client_status, headers, kind, text)

    def more(self) -> None:
        """None: one call answers."""

    @property
    def _upstream(self) -> str:
        return f"the upstream of role {self._factory.role!r}"

    def _fail(self, error: errors.GatewayError) -> bytes:
        """End the client's stream with ``error`` (the answer counts as failed)."""
        self.failure = error
        self._closed = True
        return chunks.ChunkWriter.error(error)

    def _message(self, body: bytes) -> bytes:
        """A whole Message as a ``chat.completion`` (reference §3)."""
        message = upstream_errors.json_object(body)
        content = message.get("content") if message is not None else None
        if message is None or not isinstance(content, list):
            self.failure = errors.UpstreamUnavailable(
                f"{self._upstream} answered 200 with a body that is not a message"
            )
            return b""
        texts: list[str] = []
        calls: list[tuple[str, str, str]] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use":
                arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
                calls.append((str(block.get("id", "")), str(block.get("name", "")), arguments))
        counts: dict[str, int] = {}
        _count(counts, message.get("usage"))
        self.usage = _usage(counts)
        reason = message.get("stop_reason")
        return chunks.completion(
            id_=_text(message.get("id")) or f"chatcmpl-{uuid.uuid4().hex}",
            model=_text(message.get("model")) or self._factory.model,
            content="".join(texts) if texts else None,
            tool_calls=calls,
            finish=self._finish(reason if isinstance(reason, str) else None),
            usage=self.usage,
        )

    def _finish(self, reason: str | None) -> str:
        role = self._factory.role
        return chunks.finish_reason(wire.STOP_REASONS, reason, role=role, binding=_BINDING)

    def _event(self, event: sse.ServerSentEvent) -> bytes:
        """The client's bytes for one upstream event (the reference §4.3 state machine)."""
        try:
            data = _DECODE(event.data.decode())
        except (ValueError, RecursionError):  # UnicodeDecodeError included
            data = None
        if not isinstance(data, dict):
            message = f"{self._upstream} sent a {event.event[:32]!r} event that is not JSON"
            return self._fail(errors.UpstreamUnavailable(message))
        name = event.event if event.event != "message" else _text(data.get("type"))
        writer = self._writer
        if name == "content_block_delta" and writer.started:  # most events: first
            return self._delta(data.get("index"), data.get("delta"))
        if name == "ping":
            return b": ping\n\n"  # a comment: keeps the connection alive, SDKs skip it
        if name == "error":
            return self._fail(self._stream_error(data.get("error")))
        if name == "message_start":
            started = data.get("message")
            if writer.started or not isinstance(started, dict):
                return b""
            _count(self._counts, started.get("usage"))
            model = _text(started.get("model")) or self._factory.model
            return writer.start(id_=_text(started.get("id")), model=model)
        if name not in _AFTER_START:
            return b""  # an event type added since: ignored
        if not writer.started:
            message = f"{self._upstream} sent {name} before message_start"
            return self._fail(errors.UpstreamUnavailable(message))
        if name == "message_delta":
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if isinstance(reason, str):
                self._stop_reason = reason
            _count(self._counts, data.get("usage"))
            return b""
        if name == "message_stop":
            return self._stop()
        index = data.get("index")
        if not isinstance(index, int):
            return b""
        if name == "content_block_stop":
            return writer.tool_stop(index)
        return self._block_start(index, data.get("content_block"))

    def _delta(self, index: object, delta: object) -> bytes:
        """``content_block_delta``: text of a text block, arguments of a tool call."""
        if not isinstance(index, int) or not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta" and self._blocks.get(index) == "text":
            return self._writer.content(_text(delta.get("text")))
        if kind == "input_json_delta":  # the writer passes it for tool_use blocks only
            return self._writer.tool_args(index, _text(delta.get("partial_json")))
        return b""  # thinking, signature, citations: dropped

    def _block_start(self, index: int, block: object) -> bytes:
        if not isinstance(block, dict):
            return b""
        kind = _text(block.get("type"))
        self._blocks[index] = kind
        if kind == "text":
            return self._writer.content(_text(block.get("text")))
        if kind == "tool_use" and not self._writer.is_tool(index):
            call_id, name = _text(block.get("id")), _text(block.get("name"))
            return self._writer.tool_start(index, call_id=call_id, name=name)
        return b""  # thinking, redacted_thinking, server tools, blocks added since

    def _stop(self) -> bytes:
        """``message_stop``: open tool calls closed, the finish chunk, usage, ``[DONE]``."""
        writer = self._writer
        out = [writer.tool_stop(i) for i, kind in self._blocks.items() if kind == "tool_use"]
        out.append(writer.finish(self._finish(self._stop_reason)))
        out.append(writer.end(_usage(self._counts)))
        self.usage = writer.usage
        self._closed = True
        return b"".join(out)

    def _stream_error(self, detail: object) -> errors.GatewayError:
        """An ``error`` event's error, with the status its type has (reference §5)."""
        kind = _text(detail.get("type")) if isinstance(detail, dict) else ""
        said = _text(detail.get("message")) if isinstance(detail, dict) else ""
        status = wire.ERRORS.get(kind, (502, ""))[0]
        return _error(self._factory.role, status, NO_HEADERS, kind or "api_error", said)


def _text(value: Any) -> str:
    """``value`` when it is a string, else ``""``."""
    return value if isinstance(value, str) else ""
