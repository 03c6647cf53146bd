"""Server-sent events read from an upstream's byte stream, whatever its chunking.

An upstream's SSE stream reaches the gateway in TCP-sized pieces that cut events (and
UTF-8 characters, and JSON) anywhere; :class:`SSEParser` joins them and hands back
complete events only. Format (https://html.spec.whatwg.org/multipage/server-sent-events.html
#event-stream-interpretation; ../shared/reference/translation.md §4.1, §4.3 "Parsing
caveat"): lines end with ``\\r\\n``, ``\\n`` or ``\\r``; a blank line ends an event; a
``data:`` line adds to the event's data (several are joined with ``\\n``); ``event:``
names it (default ``message``); lines starting with ``:`` are comments; one space after
the colon is dropped; other fields (``id``, ``retry``) are ignored. An event without data
is not dispatched, as the specification says.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_EVENT_BYTES", "EventTooLarge", "SSEParser", "ServerSentEvent"]

#: Bytes one event may take before it is ended; an upstream that never ends its event
#: would otherwise grow the buffer without bound.
MAX_EVENT_BYTES = 16 * 2**20


class ServerSentEvent(NamedTuple):
    """One complete event: its ``event`` name and its ``data`` (UTF-8 bytes, the data
    lines joined with ``\\n``)."""

    event: str
    data: bytes


class EventTooLarge(ValueError):
    """An event grew past the parser's ``max_event_bytes`` without ending."""


class SSEParser:
    """Feed it bytes (:meth:`feed`), get the events they complete; keeps a partial event
    across feeds. One per stream; not shared between requests."""

    __slots__ = ("_after_cr", "_buffer", "_max", "_scanned")

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()  # unparsed bytes, line ends already made \n
        self._scanned = 0  # where the search for the next blank line resumes
        self._after_cr = False  # the last byte fed was \r (a \n next belongs to it)
        self._max = max_event_bytes

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished event are left (blank lines aside): at the end of a
        stream, that event was cut off."""
        return bool(self._buffer.strip(b"\n"))

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """The events ``data`` completes, in order.

        Raises:
            EventTooLarge: an event is longer than ``max_event_bytes`` so far.
        """
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]  # the \n of a \r\n cut between two feeds
        self._after_cr = False
        if not data:
            return []
        self._after_cr = data[-1:] == b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        buffer += data
        events: list[ServerSentEvent] = []
        start = 0
        while (end := buffer.find(b"\n\n", self._scanned)) >= 0:
            event = _event(bytes(buffer[start:end]))
            if event is not None:
                events.append(event)
            start = self._scanned = end + 2
        if start:
            del buffer[:start]
        self._scanned = max(0, len(buffer) - 1)
        if len(buffer) > self._max:
            raise EventTooLarge(f"an event longer than {self._max} bytes")
        return events


def _event(block: bytes) -> ServerSentEvent | None:
    """The event of one block of lines, None when it has no data."""
    name = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # blank, or a ":" comment
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode(errors="replace")
    if not data:
        return None
    return ServerSentEvent(name, b"\n".join(data))
