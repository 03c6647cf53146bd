"""The benchmark's upstream: a fast OpenAI-protocol server on a raw asyncio protocol.

Owns :class:`UpstreamSettings` and the server process (``python -m bench.upstream``). It
answers ``POST …/chat/completions`` with a small fixed chat completion, or, when the body
says ``"stream": true``, with an SSE stream (chunked transfer encoding, as model servers
send it) of one role event, ``chunks`` content events ``chunk_interval_s`` apart, a
finish event and ``data: [DONE]`` (https://platform.openai.com/docs/api-reference/chat).

The same answer, with the same timing, in two more protocols, so that a translated
binding can be measured against a pass-through one: Anthropic's ``POST /v1/messages``
(a Message, or its SSE stream: https://docs.anthropic.com/en/api/messages-streaming) and
Bedrock's ``POST /model/{id}/converse`` and ``/converse-stream`` (a Converse answer, or
its event stream; signatures are not checked). ``GET /health`` answers 200. Anything else:
404.

It is a raw protocol rather than an aiohttp app so that it costs the shared CPU as little
as possible: HTTP/1.1 with keep-alive, ``Content-Length`` request bodies only (what every
client measured here sends), one request at a time per connection. On start it prints
``listening on http://127.0.0.1:PORT`` on stdout; it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

from bench.aio import run_loop
from devstack import eventstream

__all__ = ["UpstreamSettings", "main", "serve"]

_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_HEADS = {
    "openai": _STREAM_HEAD % b"text/event-stream",
    "anthropic": _STREAM_HEAD % b"text/event-stream",
    "bedrock": _STREAM_HEAD % b"application/vnd.amazon.eventstream",
}
_TEXT = "Hello from the bench upstream."
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How the upstream answers.

    ``delay_s``: seconds before any answer starts (0: at once). ``chunks``: content events
    per stream. ``chunk_interval_s``: seconds between two content events of a stream.
    """

    delay_s: float = 0.0
    chunks: int = 8
    chunk_interval_s: float = 0.001


def _envelope(model: str, object_: str) -> dict[str, Any]:
    """The fields every chat completion (``object_``) or chunk of one carries."""
    return {
        "id": "chatcmpl-bench",
        "object": object_,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "bench",
    }


def _completion(model: str) -> bytes:
    body = {
        **_envelope(model, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _TEXT},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _anthropic_message(model: str) -> bytes:
    body = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": _TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 7},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _converse(model: str) -> bytes:
    body = {
        "output": {"message": {"role": "assistant", "content": [{"text": _TEXT}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 9, "outputTokens": 7, "totalTokens": 16},
        "metrics": {"latencyMs": 1},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out += (b"event: %b\n" % name.encode() if name else b"") + b"data: %b\n\n" % text.encode()
    return out


def _events(kind: str, model: str, chunks: int) -> list[bytes]:
    """The events of one stream, each already framed as one HTTP chunk: the start, one per
    content piece, then two that end it; in OpenAI's, Anthropic's or Bedrock's protocol."""
    pieces = [f"tok{i} " for i in range(chunks)]
    if kind == "anthropic":
        start: dict[str, Any] = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 9, "output_tokens": 1},
        }
        block = {"type": "text", "text": ""}
        events = [
            _sse(
                ("message_start", {"type": "message_start", "message": start}),
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                ),
            ),
            *(
                _sse(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": p},
                        },
                    )
                )
                for p in pieces
            ),
            _sse(
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": chunks},
                    },
                ),
            ),
            _sse(("message_stop", {"type": "message_stop"})),
        ]
    elif kind == "bedrock":
        events = [
            eventstream.event("messageStart", {"role": "assistant"}),
            *(
                eventstream.event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}
                )
                for p in pieces
            ),
            eventstream.event("contentBlockStop", {"contentBlockIndex": 0})
            + eventstream.event("messageStop", {"stopReason": "end_turn"}),
            eventstream.event(
                "metadata",
                {
                    "usage": {"inputTokens": 9, "outputTokens": chunks, "totalTokens": 9 + chunks},
                    "metrics": {"latencyMs": 1},
                },
            ),
        ]
    else:
        base = _envelope(model, "chat.completion.chunk")
        deltas: list[dict[str, Any]] = [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
            *({"index": 0, "delta": {"content": p}, "finish_reason": None} for p in pieces),
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
        events = [_sse((None, {**base, "choices": [d]})) for d in deltas]
        events.append(b"data: [DONE]\n\n")
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events]


_PLAIN = {"openai": _completion, "anthropic": _anthropic_message, "bedrock": _converse}


class _Answers:
    """Precomputed answer bytes per protocol and model name (the body echoes the model)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._plain: dict[tuple[str, str], bytes] = {}
        self._streams: dict[tuple[str, str], list[bytes]] = {}

    def plain(self, kind: str, model: str) -> bytes:
        found = self._plain.get((kind, model))
        if found is None:
            body = _PLAIN[kind](model)
            found = self._plain[kind, model] = (_OK_HEAD % len(body)) + body
        return found

    def stream(self, kind: str, model: str) -> list[bytes]:
        found = self._streams.get((kind, model))
        if found is None:
            found = self._streams[kind, model] = _events(kind, model, self.settings.chunks)
        return found


def _route(path: str, payload: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(protocol, model, streamed) of a POST, or None for an unknown path."""
    if path.endswith("/chat/completions"):
        return "openai", str(payload["model"]), payload.get("stream") is True
    if path == "/v1/messages":
        return "anthropic", str(payload["model"]), payload.get("stream") is True
    if path.startswith("/model/") and path.endswith(("/converse", "/converse-stream")):
        model = unquote(path.split("/")[2])
        return "bedrock", model, path.endswith("-stream")
    return None


class _Http(asyncio.Protocol):
    """One client connection: parse requests, one at a time, and answer them."""

    def __init__(self, answers: _Answers) -> None:
        self._answers = answers
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # an answer is being sent (delay or stream in progress)
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Parse and answer the next complete request in the buffer, if any."""
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or self._transport is None:
            return
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                self._close_after = True
            elif name == "transfer-encoding":
                self._transport.write(_BAD)
                self._transport.close()
                return
        if len(self._buf) < end + 4 + length:
            return  # the body is still arriving
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        method, _, rest = head[0].partition(" ")
        path = rest.partition(" ")[0]
        self._answer(method, path, body)

    def _answer(self, method: str, path: str, body: bytes) -> None:
        assert self._transport is not None
        if method == "GET" and path == "/health":
            self._send(_HEALTH)
            return
        try:
            payload = json.loads(body) if method == "POST" else None
            route = _route(path, payload) if isinstance(payload, dict) else None
        except (ValueError, KeyError, TypeError):
            self._transport.write(_BAD)
            self._transport.close()
            return
        if route is None:
            self._send(_NOT_FOUND)
            return
        kind, model, streamed = route
        self._busy = True
        loop = asyncio.get_running_loop()
        delay_s = self._answers.settings.delay_s
        if streamed:
            events = self._answers.stream(kind, model)
            if delay_s:
                loop.call_later(delay_s, self._stream, _HEADS[kind], events, 0)
            else:
                self._stream(_HEADS[kind], events, 0)
        elif delay_s:
            loop.call_later(delay_s, self._done, self._answers.plain(kind, model))
        else:
            self._done(self._answers.plain(kind, model))

    def _stream(self, head: bytes, events: list[bytes], sent: int) -> None:
        """Send the head and the first two events (role, first content), then one event
        per ``chunk_interval_s``; the last events go together."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        interval_s = self._answers.settings.chunk_interval_s
        if sent == 0:
            transport.write(head + events[0] + events[1])
            sent = 2
        else:
            transport.write(events[sent])
            sent += 1
        last = len(events) - 3  # the two ending events follow the last content event
        if sent > last or not interval_s:
            self._done(b"".join(events[sent:]) + b"0\r\n\r\n")
        else:
            asyncio.get_running_loop().call_later(interval_s, self._stream, head, events, sent)

    def _send(self, data: bytes) -> None:
        self._busy = True
        self._done(data)

    def _done(self, data: bytes) -> None:
        """Write the rest of an answer and go on to the next request."""
        transport = self._transport
        self._busy = False
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self._close_after:
            transport.close()
            return
        if self._buf:
            self._next()


async def serve(settings: UpstreamSettings, *, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until SIGTERM/SIGINT, printing ``listening on http://HOST:PORT`` once bound.

    Raises:
        OSError: the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    answers = _Answers(settings)
    server = await loop.create_server(lambda: _Http(answers), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.upstream [--port N] [--delay-s S] [--chunks N] [--chunk-interval-s S]``."""
    p = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-interval-s", type=float, default=0.001)
    args = p.parse_args(argv)
    settings = UpstreamSettings(args.delay_s, args.chunks, args.chunk_interval_s)
    run_loop(serve(settings, port=args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
