"""Bedrock runtime wire shapes (Converse, ConverseStream, Titan InvokeModel) and the tables
that map Bedrock's values to OpenAI's.

Shapes are the botocore 1.44.8 ``bedrock-runtime`` service model's, as far as rolegate
writes or reads them (camelCase, as on the wire; a Smithy union is a TypedDict whose one
member is set). Sources: ../shared/reference/translation.md §6.2, §7, §7.1, §8.1, §8.3,
§9, §11; https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
/API_runtime_ConverseStream.html, /API_runtime_InvokeModel.html and
https://docs.aws.amazon.com/bedrock/latest/userguide/titan-embedding-models.html.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = [
    "CREDENTIAL_ERRORS",
    "ERRORS",
    "IMAGE_FORMATS",
    "LOGGED_STOP_REASONS",
    "STOP_REASONS",
    "ContentBlock",
    "ConverseRequest",
    "ConverseUsage",
    "Image",
    "ImageSource",
    "InferenceConfig",
    "Message",
    "SystemBlock",
    "TitanRequest",
    "Tool",
    "ToolChoice",
    "ToolConfig",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "stream_error_code",
]


# --- Converse request (botocore shape ConverseRequest; reference §6.2) ---


class ImageSource(TypedDict):
    """``bytes``: a blob, so base64 text on the rest-json wire."""

    bytes: str


class Image(TypedDict):
    """An image block: ``format`` one of :data:`IMAGE_FORMATS`' values."""

    format: str
    source: ImageSource


class ToolUse(TypedDict):
    """An assistant's tool call; ``input`` is a JSON object (never a string)."""

    toolUseId: str
    name: str
    input: dict[str, Any]


class ToolResult(TypedDict):
    """A tool's answer in a user turn: ``content`` holds ``{"text"}`` and ``{"image"}``
    blocks (``status`` is never sent: OpenAI has no equivalent)."""

    toolUseId: str
    content: list[ContentBlock]


class ContentBlock(TypedDict, total=False):
    """A union: exactly one member is set."""

    text: str
    image: Image
    toolUse: ToolUse
    toolResult: ToolResult


class Message(TypedDict):
    """One turn; turns alternate and the first is ``user``."""

    role: str
    content: list[ContentBlock]


class SystemBlock(TypedDict):
    """A system prompt block."""

    text: str


class InferenceConfig(TypedDict, total=False):
    """Only the values the request (or the role's options) set; ``temperature`` 0-1."""

    maxTokens: int
    temperature: float
    topP: float
    stopSequences: list[str]


class ToolInputSchema(TypedDict):
    """``json``: the function's JSON Schema."""

    json: dict[str, Any]


class ToolSpec(TypedDict, total=False):
    """A function tool; ``name`` matches ``[a-zA-Z0-9_-]+``, 1-64 characters."""

    name: str
    description: str
    inputSchema: ToolInputSchema


class Tool(TypedDict):
    """A union of which rolegate writes ``toolSpec`` only."""

    toolSpec: ToolSpec


class ToolName(TypedDict):
    """The tool a ``tool`` choice forces."""

    name: str


class ToolChoice(TypedDict, total=False):
    """A union: ``auto``, ``any`` (OpenAI ``required``) or ``tool``; there is no ``none``
    (reference §0.6)."""

    auto: dict[str, Any]
    any: dict[str, Any]
    tool: ToolName


class ToolConfig(TypedDict, total=False):
    """Required whenever the conversation holds toolUse/toolResult blocks (§0.6)."""

    tools: list[Tool]
    toolChoice: ToolChoice


class ConverseRequest(TypedDict, total=False):
    """The body of ``POST /model/{modelId}/converse`` and ``/converse-stream``."""

    messages: list[Message]
    system: list[SystemBlock]
    inferenceConfig: InferenceConfig
    toolConfig: ToolConfig


# --- Converse response (reference §7, §8.3) ---


class ConverseUsage(TypedDict, total=False):
    """``inputTokens`` excludes the cache's tokens, counted in the two ``cache*`` fields."""

    inputTokens: int
    outputTokens: int
    totalTokens: int
    cacheReadInputTokens: int
    cacheWriteInputTokens: int


# --- Titan text embeddings (reference §11) ---


class TitanRequest(TypedDict, total=False):
    """The body of ``POST /model/{titan id}/invoke``: one input per call; ``dimensions``
    (256, 512 or 1024) on ``amazon.titan-embed-text-v2`` only. The answer is
    ``{"embedding": [float, ...], "inputTextTokenCount": int}``."""

    inputText: str
    dimensions: int


# --- Tables ---

#: Image media types Converse takes, to its ``format`` (botocore ``ImageFormat``).
IMAGE_FORMATS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}

#: ``stopReason`` -> OpenAI ``finish_reason``: all 9 values of botocore 1.44.8's
#: ``StopReason`` enum (reference §7.1). Others are answered ``stop`` with a log line.
STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "model_context_window_exceeded": "length",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}

#: Stop reasons answered ``stop`` that are also logged: the model's output was broken.
LOGGED_STOP_REASONS = frozenset({"malformed_model_output", "malformed_tool_use"})

#: Bedrock error code (``x-amzn-ErrorType`` before its ``:``, or a stream exception's
#: member name capitalised) -> (status for the client, OpenAI error ``type``) (reference
#: §9). 424 and 408 are unusual for OpenAI clients: model errors become 502, model
#: timeouts 504; quota errors 429 (the role's quota, retryable later).
ERRORS: dict[str, tuple[int, str]] = {
    "ValidationException": (400, "invalid_request_error"),
    "AccessDeniedException": (403, "permission_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "ModelTimeoutException": (504, "timeout_error"),
    "ModelErrorException": (502, "api_error"),
    "ModelStreamErrorException": (502, "api_error"),
    "ThrottlingException": (429, "rate_limit_error"),
    "ModelNotReadyException": (429, "rate_limit_error"),
    "ServiceQuotaExceededException": (429, "rate_limit_error"),
    "InternalServerException": (500, "api_error"),
    "ServiceUnavailableException": (503, "api_error"),
}

#: Codes of a 403 about the gateway's own AWS credentials or signature (not modeled by
#: botocore; the Coral names, with and without the ``Exception`` suffix).
CREDENTIAL_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "ExpiredToken",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
    }
)


def stream_error_code(member: str) -> str:
    """The error code of a ConverseStream exception frame's ``:exception-type`` (the
    lowerCamel member name, ``throttlingException``): ``ThrottlingException``."""
    return member[:1].upper() + member[1:]
