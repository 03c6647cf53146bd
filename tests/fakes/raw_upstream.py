"""A loopback OpenAI-protocol upstream that misbehaves at the socket level, as a test says.

Built on ``asyncio.start_server``: aiohttp would not let a handler reset a socket at a
chosen moment. It reads HTTP/1.1 requests (Content-Length bodies, as aiohttp's client
sends them), answers a chat completion (an SSE stream when the request asks for one), and
records what it received. ``mode`` picks the misbehaviour:

- ``"ok"``: answer every request, keeping the connection open;
- ``"reset_reused"``: answer the first request on a connection, and reset (RST) the
  connection once the next request on it was read, a dropped keep-alive connection;
- ``"reset_fresh"``: reset every connection once its first request was read;
- ``"abort_stream"``: every ``abort_every``-th request (the 1st, the 1st + n, …) gets
  its stream's headers and two events, then a reset; the others are answered;
- ``"stall_stream"``: send a stream's headers, then nothing until the peer goes;
- ``"raw"``: send ``answer`` (a whole HTTP response, bytes) to every request;
- ``"crash_on_poison"``: answer as ``"ok"``, but a request whose body holds ``poison``
  is worked on for ``poison_s`` seconds, then its connection is reset (an upstream that
  died on it).

A reset is a close with SO_LINGER 0: the peer sees ECONNRESET, not an orderly FIN.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawRequest:
    """One request as the raw upstream read it."""

    line: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class RawUpstream:
    """Knobs (change them at any time) and records of one raw upstream."""

    mode: str = "ok"
    abort_every: int = 2
    poison_s: float = 1.0
    answer: bytes = b""
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    resets: int = 0
    received: bytearray = field(default_factory=bytearray)
    url: str = ""  # http://127.0.0.1:PORT/v1 once started
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> RawUpstream:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        served = 0
        try:
            while True:
                try:
                    request = await self._read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                served += 1
                if not await self._answer(request, served, reader, writer):
                    return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> RawRequest:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received += head
        line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for text in lines:
            if ":" in text:
                name, value = text.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received += raw
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        request = RawRequest(line, headers, body if isinstance(body, dict) else {})
        self.requests.append(request)
        return request

    async def _answer(
        self,
        request: RawRequest,
        served: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection is gone."""
        match self.mode:
            case "reset_fresh":
                self._reset(writer)
                return False
            case "reset_reused" if served > 1:
                self._reset(writer)
                return False
            case "raw":
                writer.write(self.answer)
            case "crash_on_poison" if "poison" in json.dumps(request.body):
                await asyncio.sleep(self.poison_s)
                self._reset(writer)
                return False
            case "stall_stream":
                writer.write(_stream_head())
                await writer.drain()
                await reader.read()  # until the peer closes
                return False
            case "abort_stream" if (len(self.requests) - 1) % self.abort_every == 0:
                writer.write(_stream_head() + _chunk(_event(0)) + _chunk(_event(1)))
                await writer.drain()
                self._reset(writer)
                return False
            case _:
                writer.write(_completion(request.body))
        await writer.drain()
        return True

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        self.resets += 1


def _completion(body: dict[str, Any]) -> bytes:
    if body.get("stream"):
        events = b"".join(_chunk(_event(i)) for i in range(3))
        return _stream_head() + events + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    answer = json.dumps(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "raw"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi from raw"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(answer) + answer
    )


def _stream_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "raw",
        "choices": [{"index": 0, "delta": {"content": f"raw-{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip body that inflates to ``inflated_bytes`` spaces (about 230:1 at the fastest
    level: 0.5 s for 200 MiB), built a MiB at a time so that it takes little memory."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    block = b" " * 2**20
    parts = []
    for start in range(0, inflated_bytes, len(block)):
        parts.append(compressor.compress(block[: inflated_bytes - start]))
    parts.append(compressor.flush())
    return b"".join(parts)


def http_answer(status: int, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 answer with Content-Length, for ``mode="raw"``."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return head.encode() + b"\r\n" + body
