"""What the provider fakes (``anthropic.py``, ``bedrock.py``) share: the scripted answers a
prompt selects, the record of a request, and the loopback server lifecycle.

A test picks an answer with the text of the last user message (its last text part). Text
that starts with ``#`` names a scenario (its first word; arguments after ``:``); any other
text gets the default answer:

- default: ``"Hello from the fake."`` in several deltas, stop ``end_turn``, usage 11 in / 7 out;
- ``#tools``: ``"Let me check."``, then ``get_weather {"city": "Paris"}`` (streamed as ``""``
  and two fragments) and ``get_time {}`` (no fragments at all), stop ``tool_use``;
- ``#stop:<reason>``: ``"ok"`` and that stop reason verbatim;
- ``#cache``: the default answer with cache usage (20 read, 5 written);
- ``#error:<status>:<type>``: that error, in the provider's own format, before anything else;
- ``#midstream-error[:<type>]``: a stream that sends a few events, then an in-band error
  (a call that is not streamed gets the matching HTTP error instead);
- ``#cut``: a stream (or a body) that stops halfway and closes the connection;
- ``#slow:<seconds>``: the default answer after that long;
- ``#echo``: the answer text is the JSON of the request body the fake received.

An unknown ``#name`` is answered with a 400 in the provider's format, so a typo fails loudly.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

DEFAULT_TEXT = ("Hello", " from", " the", " fake.")


@dataclass
class Seen:
    """One request as a fake received it. ``path`` is the raw path (percent-encoding kept),
    ``headers`` have lower-case names, ``body`` is the parsed JSON (``{}`` if it was not);
    ``region`` and ``service`` come from a verified SigV4 credential scope (Bedrock only)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    region: str | None = None
    service: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """A scripted tool call; ``fragments`` are the argument JSON pieces as streamed."""

    suffix: str  # each fake prefixes its own id style: toolu_01A, tooluse_01A
    name: str
    fragments: tuple[str, ...]

    @property
    def input(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads("".join(self.fragments) or "{}")
        return parsed


TOOLS = (
    ToolCall("01A", "get_weather", ("", '{"ci', 'ty": "Paris"}')),
    ToolCall("01B", "get_time", ()),
)


@dataclass(frozen=True)
class Answer:
    """A provider-neutral scripted answer; each fake renders it in its own wire format."""

    text: tuple[str, ...] = DEFAULT_TEXT  # the text deltas of the one text block
    tools: tuple[ToolCall, ...] = ()
    stop_reason: str = "end_turn"
    input_tokens: int = 11
    output_tokens: int = 7
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    error: tuple[int, str] | None = None  # (HTTP status, provider error type) up front
    midstream_error: str | None = None  # error type after a few events ("" = fake's default)
    cut: bool = False
    delay_s: float = 0.0


class UnknownScenario(ValueError):
    """The prompt names a scenario no fake knows."""


def last_user_text(messages: Any) -> str | None:
    """The last text part of the last user message, in either provider's shape: string
    content, Anthropic ``{"type": "text", "text": ...}`` or Bedrock ``{"text": ...}`` blocks."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        blocks = content if isinstance(content, list) else []
        texts = [
            block["text"]
            for block in blocks
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        ]
        return texts[-1] if texts else None
    return None


def answer_for(prompt: str | None, body: dict[str, Any]) -> Answer:
    """The scripted answer ``prompt`` selects (see the module docstring).

    Raises:
        UnknownScenario: ``prompt`` starts with ``#`` but names no scenario, or its
            arguments do not parse.
    """
    if not prompt or not prompt.startswith("#"):
        return Answer()
    words = prompt[1:].split(maxsplit=1)
    name, _, arg = (words[0] if words else "").partition(":")
    try:
        match name:
            case "tools":
                return Answer(text=("Let me ", "check."), tools=TOOLS, stop_reason="tool_use")
            case "stop" if arg:
                return Answer(text=("ok",), stop_reason=arg)
            case "cache":
                return Answer(cache_read_tokens=20, cache_write_tokens=5)
            case "error":
                status, _, kind = arg.partition(":")
                return Answer(error=(int(status), kind or "api_error"))
            case "midstream-error":
                return Answer(midstream_error=arg)
            case "cut":
                return Answer(cut=True)
            case "slow":
                return Answer(delay_s=float(arg))
            case "echo":
                text = json.dumps(body)
                return Answer(text=tuple(text[i : i + 16] for i in range(0, len(text), 16)))
    except ValueError as error:
        raise UnknownScenario(f"fake: bad arguments in scenario {prompt!r}") from error
    raise UnknownScenario(f"fake: unknown scenario {prompt!r}")


async def write_in_pieces(response: web.StreamResponse, data: bytes, size: int) -> None:
    """Write ``data`` in ``size``-byte pieces (one HTTP chunk each), yielding in between, so
    a client parser meets frames and events split at arbitrary offsets."""
    for start in range(0, len(data), size):
        await response.write(data[start : start + size])
        await asyncio.sleep(0)


def cut_connection(request: web.Request) -> None:
    """Close the connection under a started answer: the client sees a body that ends early
    (chunked stream without its last chunk, or fewer bytes than Content-Length)."""
    if request.transport is not None:
        request.transport.close()


async def send_cut_body(
    request: web.Request, data: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Announce ``data`` with its Content-Length, send half of it, and close the connection."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    cut_connection(request)
    return response


class FakeServer:
    """A loopback aiohttp fake on a free port: ``async with`` it or ``start()``/``stop()``.

    ``url`` is ``http://127.0.0.1:PORT`` once started; ``requests`` records every request."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Seen] = []
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Self:
        """Listen on 127.0.0.1, port 0; sets ``url``."""
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        """Stop listening and end every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
