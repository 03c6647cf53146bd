"""Anthropic Messages API wire shapes and the tables that map Anthropic's values to OpenAI's.

Shapes are the JSON rolegate writes (the request body) or reads (the Message, the stream's
events, the error body), as far as it writes or reads them; snake_case, as on the wire.
Sources: ../shared/reference/translation.md §1, §2, §3, §3.1, §3.2, §4.1, §5;
https://docs.anthropic.com/en/api/messages, /en/api/messages-streaming, /en/api/errors,
/en/api/versioning; the ``anthropic`` SDK 2.15.0 types (``anthropic/types/``).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "CONTEXT_TOO_LONG",
    "DEFAULT_MAX_TOKENS",
    "DOCUMENT_MEDIA_TYPES",
    "ERRORS",
    "IMAGE_MEDIA_TYPES",
    "MESSAGES_PATH",
    "OVERLOADED_STATUS",
    "SAMPLING_REFUSED_FROM",
    "STOP_REASONS",
    "USAGE_FIELDS",
    "Base64Source",
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "DocumentBlock",
    "ErrorBody",
    "ErrorDetail",
    "ErrorEvent",
    "ImageBlock",
    "Message",
    "MessageDeltaEvent",
    "MessageDeltaStop",
    "MessageParam",
    "MessageStartEvent",
    "MessagesRequest",
    "Metadata",
    "TextBlock",
    "ToolChoice",
    "ToolParam",
    "ToolResultBlock",
    "ToolUseBlock",
    "URLSource",
    "Usage",
]

# --- Request (POST /v1/messages; reference §2) ---


class TextBlock(TypedDict):
    """A text block; Anthropic refuses an empty ``text`` (400)."""

    type: Literal["text"]
    text: str


class Base64Source(TypedDict):
    """Inline bytes: ``media_type`` and base64 ``data``."""

    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(TypedDict):
    """An https URL Anthropic fetches itself."""

    type: Literal["url"]
    url: str


class ImageBlock(TypedDict):
    """An image: base64 of one of :data:`IMAGE_MEDIA_TYPES`, or a URL."""

    type: Literal["image"]
    source: Base64Source | URLSource


class DocumentBlock(TypedDict):
    """A PDF (:data:`DOCUMENT_MEDIA_TYPES`), base64; refused in assistant turns under
    2026-10-21 (rolegate writes it in user turns only)."""

    type: Literal["document"]
    source: Base64Source


class ToolUseBlock(TypedDict):
    """An assistant's tool call; ``input`` is a JSON object (in a request, and in an
    answer's ``content``)."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(TypedDict):
    """A tool's answer in a user turn, for the call ``tool_use_id``: a string when it is
    one text, else blocks; left out when the tool returned nothing. ``is_error`` is never
    sent (OpenAI has no equivalent; reference §2.1)."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: NotRequired[str | list[TextBlock | ImageBlock | DocumentBlock]]


ContentBlock = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock


class MessageParam(TypedDict):
    """One turn; turns alternate, a user turn's tool results come first."""

    role: Literal["user", "assistant"]
    content: list[ContentBlock]


class ToolParam(TypedDict):
    """A client tool: ``input_schema`` is the function's JSON Schema."""

    name: str
    description: NotRequired[str]
    input_schema: dict[str, Any]
    strict: NotRequired[bool]


class ToolChoice(TypedDict):
    """``auto``, ``any`` (OpenAI ``required``), ``tool`` (with ``name``) or ``none``;
    ``disable_parallel_tool_use`` (OpenAI ``parallel_tool_calls: false``, inverted) is
    never sent with ``none``."""

    type: Literal["auto", "any", "tool", "none"]
    name: NotRequired[str]
    disable_parallel_tool_use: NotRequired[bool]


class Metadata(TypedDict):
    """``user_id``: an opaque id of the end user (OpenAI ``user``)."""

    user_id: str


class MessagesRequest(TypedDict):
    """The body of ``POST /v1/messages``; ``max_tokens`` is required by Anthropic."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: NotRequired[list[TextBlock]]
    stop_sequences: NotRequired[list[str]]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    tools: NotRequired[list[ToolParam]]
    tool_choice: NotRequired[ToolChoice]
    metadata: NotRequired[Metadata]
    stream: NotRequired[bool]


# --- Answer (reference §3, §4.1) ---


class Usage(TypedDict, total=False):
    """Tokens; ``input_tokens`` excludes the cache's, counted in the two ``cache_*``
    fields (reference §3.2). In a stream, ``message_delta`` carries cumulative values that
    replace ``message_start``'s; absent (or null) fields keep theirs."""

    input_tokens: int | None
    output_tokens: int
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None


class Message(TypedDict):
    """A non-stream answer, or (``content`` empty, ``stop_reason`` null) a stream's
    ``message_start.message``. ``content`` blocks: ``text``, ``tool_use``
    (:class:`ToolUseBlock`), ``thinking``, ``redacted_thinking``, server-tool blocks."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage


class MessageStartEvent(TypedDict):
    """``event: message_start``, first."""

    type: Literal["message_start"]
    message: Message


class ContentBlockStartEvent(TypedDict):
    """``event: content_block_start``: block ``index`` (0, 1, ... in order) begins;
    ``content_block`` is ``{"type": "text", "text": ""}``, ``{"type": "tool_use", "id",
    "name", "input": {}}`` (the input streams as ``input_json_delta``), or a block rolegate
    does not pass on (thinking, server tools)."""

    type: Literal["content_block_start"]
    index: int
    content_block: dict[str, Any]


class ContentBlockDeltaEvent(TypedDict):
    """``event: content_block_delta``: ``delta`` is ``{"type": "text_delta", "text"}``,
    ``{"type": "input_json_delta", "partial_json"}`` (the first may be ``""``), or one
    rolegate drops (``thinking_delta``, ``signature_delta``, ``citations_delta``)."""

    type: Literal["content_block_delta"]
    index: int
    delta: dict[str, Any]


class ContentBlockStopEvent(TypedDict):
    """``event: content_block_stop``: block ``index`` is complete."""

    type: Literal["content_block_stop"]
    index: int


class MessageDeltaStop(TypedDict):
    """Why the message stopped (:data:`STOP_REASONS`)."""

    stop_reason: str | None
    stop_sequence: str | None


class MessageDeltaEvent(TypedDict):
    """``event: message_delta``, once or more before ``message_stop``."""

    type: Literal["message_delta"]
    delta: MessageDeltaStop
    usage: NotRequired[Usage]


class ErrorDetail(TypedDict):
    """``type`` (a key of :data:`ERRORS`, or one added since) and a ``message``."""

    type: str
    message: str


class ErrorBody(TypedDict):
    """An error answer's body (any 4xx/5xx status)."""

    type: Literal["error"]
    error: ErrorDetail
    request_id: NotRequired[str]


class ErrorEvent(TypedDict):
    """``event: error``: the stream failed after its 200 (overloaded, internal)."""

    type: Literal["error"]
    error: ErrorDetail


# --- Tables and constants ---

#: The token counts of :class:`Usage` rolegate reads.
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)

#: The path under the role's ``base_url``.
MESSAGES_PATH = "/v1/messages"

#: ``max_tokens`` when neither the request nor the role sets it (Anthropic requires one).
DEFAULT_MAX_TOKENS = 4096

#: The first ``anthropic-version`` that refuses ``temperature`` and ``top_p`` (even at
#: their defaults; reference §0.1). Versions are dates, so they compare as strings.
SAMPLING_REFUSED_FROM = "2026-10-21"

#: Image media types Anthropic takes as base64 image blocks.
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

#: Media types sent as a document block (base64).
DOCUMENT_MEDIA_TYPES = frozenset({"application/pdf"})

#: ``stop_reason`` -> OpenAI ``finish_reason``: the 7 values of the SDK 2.15.0
#: ``StopReason`` (reference §3.1). Others (Anthropic adds values within a version) are
#: answered ``stop`` with a log line.
STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}

#: Anthropic's HTTP status for ``overloaded_error``, which OpenAI clients do not know:
#: answered 503 (the openai SDK retries any 5xx; reference §5).
OVERLOADED_STATUS = 529

#: Error ``type`` -> (status for the client, OpenAI error ``type``) (reference §5). The
#: status is used where Anthropic gives none (an ``error`` event in a 200 stream); the
#: OpenAI ``code`` is Anthropic's type, or ``context_length_exceeded`` for a message
#: starting with :data:`CONTEXT_TOO_LONG`.
ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request_error": (400, "invalid_request_error"),
    "authentication_error": (401, "authentication_error"),
    "billing_error": (402, "billing_error"),
    "permission_error": (403, "permission_error"),
    "not_found_error": (404, "not_found_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_error": (429, "rate_limit_error"),
    "api_error": (500, "api_error"),
    "timeout_error": (504, "timeout_error"),
    "overloaded_error": (503, "overloaded_error"),
}

#: How an ``invalid_request_error`` message about an over-long prompt starts.
CONTEXT_TOO_LONG = "prompt is too long"
