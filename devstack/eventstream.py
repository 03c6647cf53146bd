"""The AWS event-stream *encoder* (``application/vnd.amazon.eventstream``) that botocore lacks.

botocore only decodes (``botocore.eventstream.EventStreamBuffer``); the Bedrock fake, the
golden tests and the benchmark's upstream need to write frames. The format (reference
translation.md §8.1, §12.2;
https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream):
a prelude of big-endian ``total_length`` and ``headers_length`` with its CRC32, the headers
(``name_len`` u8, name, type u8, value; only type 7, a u16-length UTF-8 string, is written
here), the payload, and a CRC32 over everything before it.
"""

from __future__ import annotations

import binascii
import json
import struct
from typing import Any

__all__ = ["encode_message", "error", "event", "exception"]


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack("!B", len(raw_name))
        + raw_name
        + struct.pack("!BH", 7, len(raw_value))
        + raw_value
    )


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame with string ``headers`` (in order) and ``payload``, both CRCs filled in."""
    header_bytes = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack("!II", 12 + len(header_bytes) + len(payload) + 4, len(header_bytes))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + header_bytes + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """A modeled event frame (``:message-type event``), e.g. ``event("messageStop", {...})``."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(payload).encode())


def exception(exception_type: str, message: str) -> bytes:
    """A modeled exception frame; ``exception_type`` is the lowerCamel member name of the
    stream shape (``throttlingException``, ``modelStreamErrorException``, ...): botocore raises
    ``EventStreamError`` with that code (reference §8.1)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


def error(code: str, message: str) -> bytes:
    """An unmodeled error frame (``:message-type error``, ``:error-code``, ``:error-message``),
    as ``botocore.parsers.BaseEventStreamParser._do_error_parse`` reads it."""
    headers = {":message-type": "error", ":error-code": code, ":error-message": message}
    return encode_message(headers, b"")
