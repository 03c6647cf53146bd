"""Reading Bedrock's chat answers: the ConverseStream event stream -> OpenAI chunks
(:class:`ConverseStream`), and what the streamed and the whole answer share: usage
(:func:`converse_usage`), ``stopReason`` (:func:`finish`) and error codes
(:func:`known_error`).

Sources: ../shared/reference/translation.md §7, §7.1, §8 (frame format, event payloads,
the §8.4 state machine and the peer bugs it avoids), §9;
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html.
"""

from __future__ import annotations

import logging
import struct
import uuid
from typing import Any, cast

from botocore.eventstream import EventStreamBuffer, MessagePrelude, ParserError
from multidict import CIMultiDictProxy

from rolegate_gateway import errors
from rolegate_gateway.translators import upstream_errors
from rolegate_gateway.translators.base import NO_HEADERS, Usage, token_count
from rolegate_gateway.translators.chunks import ChunkWriter, finish_reason
from rolegate_gateway.translators.wire import bedrock as wire

__all__ = ["MAX_FRAME_BYTES", "ConverseStream", "converse_usage", "finish", "known_error"]

log = logging.getLogger(__name__)

_BINDING = "bedrock"
#: The largest event-stream frame read, bytes; a larger one fails the stream. Bedrock's
#: frames are a few hundred bytes (one delta each); botocore's own cap is a 24 MiB payload.
MAX_FRAME_BYTES = 16 * 2**20
#: What botocore's decoder raises for bytes that are not a valid frame: a CRC mismatch or a
#: length over its limits (ParserError), headers it cannot unpack (the rest).
_DECODE_ERRORS = (ParserError, struct.error, ValueError, KeyError, IndexError)


def _count(usage: dict[str, Any], key: str) -> int:
    return token_count(usage.get(key)) or 0


def converse_usage(value: object) -> Usage | None:
    """OpenAI's usage of a Converse ``usage`` object (§7): prompt = ``inputTokens`` +
    ``cacheReadInputTokens`` + ``cacheWriteInputTokens``, completion = ``outputTokens``,
    cached = ``cacheReadInputTokens``; None when it is not an object with token counts."""
    if not isinstance(value, dict) or not ({"inputTokens", "outputTokens"} & value.keys()):
        return None
    read = _count(value, "cacheReadInputTokens")
    prompt = _count(value, "inputTokens") + read + _count(value, "cacheWriteInputTokens")
    return Usage(prompt, _count(value, "outputTokens"), read)


def known_error(
    role: str, status: int, headers: CIMultiDictProxy[str], code: str, text: str
) -> errors.UpstreamStatusError | None:
    """A Bedrock error of a known ``code`` (:data:`~wire.ERRORS`, :data:`~wire.CREDENTIAL_ERRORS`;
    reference §9) with its ``text`` as the client's error, None for another code. The
    status is the table's (``status``: the upstream's, kept for a credentials error);
    ``code`` (``ThrottlingException``) is passed as OpenAI's ``error.code``."""
    if code in wire.CREDENTIAL_ERRORS:
        return upstream_errors.credentials_refused(role, status, headers, f"{code}: {text}")
    known = wire.ERRORS.get(code)
    if known is None:
        return None
    said = f"{code}: {text}" if text else code
    return upstream_errors.mapped_error(
        role, known[0], headers, type_=known[1], text=said, code=code
    )


def finish(reason: object, role: str) -> str:
    """OpenAI's finish_reason of a ``stopReason`` (§7.1); broken output is logged."""
    text = reason if isinstance(reason, str) else None
    if text in wire.LOGGED_STOP_REASONS:
        log.warning(
            "role %s: bedrock stopped with %s (answered as 'stop')",
            role,
            text,
            extra={"role": role, "binding": _BINDING},
        )
    return finish_reason(wire.STOP_REASONS, text, role=role, binding=_BINDING)


class ConverseStream:
    """A ConverseStream answer (``application/vnd.amazon.eventstream``, §8) -> the client's
    SSE chunks, per the §8.4 state machine. Frames are decoded and CRC-checked by
    ``botocore.eventstream.EventStreamBuffer`` across any split of the bytes.

    Events: ``messageStart`` -> the role chunk; ``contentBlockStart`` with ``toolUse`` ->
    a tool call (numbered densely by :class:`ChunkWriter`, keyed by
    ``contentBlockIndex``); ``contentBlockDelta`` ``text`` / ``toolUse.input`` -> content /
    argument fragments (``reasoningContent`` dropped); ``contentBlockStop`` -> ``"{}"``
    for a tool without arguments; ``messageStop`` -> the finish chunk; ``metadata`` (after
    it) -> usage, the usage chunk when asked, ``[DONE]``. Unknown events and keys are
    ignored. An exception or error frame, a corrupt frame, or an end before
    ``messageStop`` (or mid-frame) sets :attr:`failure` and writes its error event last.
    """

    __slots__ = (
        "_buffer",
        "_decoded",
        "_done",
        "_fed",
        "_held",
        "_metadata",
        "_stopped",
        "_usage",
        "failure",
        "id",
        "model",
        "role",
        "writer",
    )

    def __init__(self, *, role: str, model: str, include_usage: bool) -> None:
        self.role, self.model = role, model
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.writer = ChunkWriter(include_usage=include_usage)
        self.failure: errors.GatewayError | None = None
        self._buffer = EventStreamBuffer()
        self._held = bytearray()  # bytes of a frame not complete yet
        self._fed = self._decoded = 0  # bytes received / in decoded frames
        self._stopped = self._metadata = self._done = False
        self._usage: Usage | None = None

    def feed(self, chunk: bytes, *, end: bool) -> bytes:
        """The client's bytes for one upstream chunk (and, with ``end``, the stream's end);
        nothing once the stream ended or failed."""
        out = bytearray()
        if chunk and not self._done:
            self._fed += len(chunk)
            self._held += chunk
            frames = self._whole_frames()
            if frames is None:
                out += self._fail(
                    f"sent an event-stream frame of more than {MAX_FRAME_BYTES // 2**20} MiB"
                )
            elif frames:
                self._buffer.add_data(frames)
            while not self._done:
                try:
                    message = next(self._buffer)
                except StopIteration:
                    break
                except _DECODE_ERRORS as exc:
                    out += self._fail(f"sent a corrupt event-stream frame ({type(exc).__name__})")
                    break
                self._decoded += cast(MessagePrelude, message.prelude).total_length
                headers = cast(dict[str, Any], message.headers)
                out += self._message(headers, message.payload)
        if end and not self._done:
            out += self._end()
        return bytes(out)

    def _whole_frames(self) -> bytes | None:
        """The complete frames at the start of the held bytes (taken from them), ``b""``
        for none yet; None for a frame announcing more than :data:`MAX_FRAME_BYTES`.

        botocore's buffer joins its bytes anew on every ``add_data``: fed a large frame
        piece by piece it would copy it once per piece. Only whole frames reach it.
        """
        held, at = self._held, 0
        while len(held) - at >= 4:
            total = int.from_bytes(held[at : at + 4], "big")
            if total > MAX_FRAME_BYTES:
                return None
            if len(held) - at < max(total, 16):
                break
            at += max(total, 16)  # (a length below the minimum: botocore refuses the frame)
        frames = bytes(held[:at])
        del held[:at]
        return frames

    def _message(self, headers: dict[str, Any], payload: bytes) -> bytes:
        match headers.get(":message-type"):
            case "event":
                return self._event(str(headers.get(":event-type")), payload)
            case "exception":
                member = str(headers.get(":exception-type", ""))
                said = upstream_errors.json_object(payload) or {}
                text = said.get("message", said.get("Message"))
                return self._upstream_error(wire.stream_error_code(member), text)
            case "error":
                code = str(headers.get(":error-code", ""))
                return self._upstream_error(code, headers.get(":error-message"))
            case _:
                return b""

    def _event(self, kind: str, raw: bytes) -> bytes:
        if kind not in _EVENTS:
            return b""  # unknown events are ignored (forward compatibility)
        payload = upstream_errors.json_object(raw)
        if payload is None:
            return self._fail(f"sent an unreadable {kind} event")
        w = self.writer
        out = b"" if w.started else w.start(id_=self.id, model=self.model)
        index = payload.get("contentBlockIndex")
        index = index if isinstance(index, int) else -1  # (a key of the writer's tool map)
        match kind:
            case "contentBlockStart":
                start = payload.get("start")
                tool = start.get("toolUse") if isinstance(start, dict) else None
                if isinstance(tool, dict) and not w.is_tool(index):
                    call_id, name = str(tool.get("toolUseId")), str(tool.get("name"))
                    out += w.tool_start(index, call_id=call_id, name=name)
            case "contentBlockDelta":
                delta = payload.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                text, tool = delta.get("text"), delta.get("toolUse")
                if isinstance(text, str):
                    out += w.content(text)
                elif isinstance(tool, dict) and isinstance(tool.get("input"), str):
                    out += w.tool_args(index, tool["input"])
            case "contentBlockStop":
                out += w.tool_stop(index)
            case "messageStop":
                self._stopped = True
                out += w.finish(finish(payload.get("stopReason"), self.role))
                if self._metadata:
                    out += self._close()
            case "metadata":
                self._metadata = True
                self._usage = converse_usage(payload.get("usage"))
                if self._stopped:
                    out += self._close()
        return out

    def _close(self) -> bytes:
        self._done = True
        return self.writer.end(self._usage)

    def _end(self) -> bytes:
        cut = self._fed != self._decoded  # bytes of a frame that never completed
        if not self._stopped:
            return self._fail(
                "ended its stream before messageStop" + (" (mid-frame)" if cut else "")
            )
        if cut:
            return self._fail("ended its stream mid-frame, after messageStop")
        return self._close()  # messageStop without metadata: no usage

    def _upstream_error(self, code: str, text: object) -> bytes:
        said = str(text).strip() if text is not None else ""
        error: errors.GatewayError | None = known_error(self.role, 502, NO_HEADERS, code, said)
        if error is None:
            error = upstream_errors.mapped_error(
                self.role,
                502,
                NO_HEADERS,
                type_="api_error",
                text=f"{code}: {said}" if said else code or "stream error",
                code=code or None,
            )
        return self._failed(error)

    def _fail(self, what: str) -> bytes:
        return self._failed(
            errors.UpstreamUnavailable(f"the upstream of role {self.role!r} {what}")
        )

    def _failed(self, error: errors.GatewayError) -> bytes:
        self.failure, self._done = error, True
        return ChunkWriter.error(error)


_EVENTS = frozenset(
    {"messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop"}
    | {"messageStop", "metadata"}
)
