"""Request intake: read a client's body within its limits and parse it into a Payload.

Owns :class:`Payload` (the client's JSON object as its top-level members, each kept as
the exact JSON text the client sent), :func:`parse_body`, :class:`BodyBudget` and
:class:`Intake`, which reads a request's body and parses it — on the event loop when it
is small, in a worker process when it is large.

Why members as raw JSON text: a request is changed only at its top level (``model``
replaced, the role's ``options`` filled in), so the values — an 8 MB base64 image, a long
conversation — are validated once by the C JSON scanner and passed on as the client's
bytes, never re-encoded (and never at risk of being changed by a round trip).

What is refused, each with 400 and OpenAI's error body: invalid UTF-8 (CESU-8 surrogate
bytes included), invalid JSON, a top level that is not an object, lone UTF-16 surrogates
written as ``\\ud800`` escapes, ``NaN``/``Infinity`` and numbers that overflow to them
(``1e400``; RFC 8259 section 6 has no such numbers), nesting deeper than Python's
recursion limit allows, more than ``max_json_values`` values, and a missing or empty
``model``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from aiohttp import web

from rolegate_gateway import errors
from rolegate_gateway.settings import ServerSettings

__all__ = ["BodyBudget", "Intake", "Payload", "join_object", "loads_strict", "parse_body"]

log = logging.getLogger(__name__)

_WS = re.compile(r"[ \t\n\r]*")
#: A \uD800-\uDFFF escape; only bodies that have one pay the exact lone-surrogate check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD]([89a-fA-F])[0-9a-fA-F]{2}")


class _Refused(ValueError):
    """A value RFC 8259 does not allow (NaN, Infinity, an overflowing number)."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number (RFC 8259 section 6)")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"the number {text[:32]} is too large for a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads_strict(text: str) -> Any:
    """``text`` decoded as JSON the way bodies are (RFC 8259: no NaN, Infinity or
    overflowing numbers), for JSON a client sends inside a string (tool-call arguments).

    Raises:
        ValueError: not JSON, or not RFC 8259's, or nested past the recursion limit.
    """
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


#: The C scanner: ``_SCAN(text, idx)`` -> (value, end index); StopIteration: no value there.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WS_CHARS = frozenset(" \t\n\r")
#: JSON string literal of a str, non-ASCII kept (the C implementation where available).
_QUOTE: Callable[[str], str] = json.encoder.encode_basestring


@dataclass(frozen=True, slots=True)
class Payload:
    """A client's request body: a JSON object split into its top-level members.

    ``members`` maps each key (decoded) to the exact UTF-8 JSON text of its value, in the
    client's order (a repeated key: the last value, as ``json.loads`` does). ``model`` is
    the decoded ``model`` member, the role. ``size`` is the body's length in bytes.
    """

    model: str
    members: dict[str, bytes]
    size: int

    def value(self, key: str) -> Any:
        """The decoded value of one member (KeyError when absent)."""
        return json.loads(self.members[key])

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Payload:
        """A payload from an already-decoded object (tests, internal callers).

        Raises:
            errors.InvalidRequest: as :func:`parse_body`.
        """
        return parse_body(json.dumps(obj, ensure_ascii=False).encode())


def join_object(members: Mapping[str, bytes]) -> bytes:
    """JSON object bytes from keys and the JSON text of their values."""
    return b"{%b}" % b",".join(
        b"%b:%b" % (_QUOTE(key).encode(), value) for key, value in members.items()
    )


def _invalid(message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"the request body is not valid JSON: {message}")


def parse_body(raw: bytes, *, max_values: int = 1_000_000) -> Payload:
    """Validate a request body and split it into a :class:`Payload`.

    Runs on the event loop for small bodies and in a worker process for large ones, so
    it touches nothing but its arguments. Cost: one pass of the C JSON scanner; the
    values are sliced out of the text, not re-encoded.

    Raises:
        errors.InvalidRequest: see the module docstring for what is refused.
    """
    if len(raw) > max_values and _values(raw) > max_values:
        raise _too_many_values(max_values)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise errors.InvalidRequest(
            f"the request body is not UTF-8 (invalid byte at offset {exc.start})"
        ) from None
    members: dict[str, str] = {}
    try:
        _split(text, members)
        if "\\u" in text:
            for key, value in members.items():
                if _lone_surrogate(value):
                    raise _Refused(f"{key!r} holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
        for key in members:
            key.encode()  # a key with a lone surrogate escape cannot be
        model = members.get("model")
        name = json.loads(model) if model is not None else None
    except json.JSONDecodeError as exc:
        raise _invalid(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except UnicodeEncodeError:
        raise _invalid("a key holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    except ValueError as exc:  # _Refused, and int() of more than 4,300 digits
        raise _invalid(str(exc).partition(";")[0][:200]) from None
    except RecursionError:
        raise _invalid("nested too deeply") from None
    if not isinstance(name, str) or not name:
        raise errors.InvalidRequest("'model' (the role) must be a non-empty string", param="model")
    return Payload(name, {k: v.encode() for k, v in members.items()}, len(raw))


def _values(raw: bytes) -> int:
    """An upper bound on the JSON values in ``raw``: its commas and opening brackets
    (single bytes, so the sum over a body's chunks is the body's count)."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


def _too_many_values(max_values: int) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"the request body has more than {max_values:,} JSON values "
        "(counted as commas and opening brackets)"
    )


def _lone_surrogate(text: str) -> bool:
    """Whether JSON text holds a ``\\uD800``-``\\uDFFF`` escape without its pair.

    The fast regex finds the candidates; an escape preceded by an odd number of
    backslashes is literal text, not an escape. No parse, so a body full of emoji written
    as escaped pairs costs a scan, not a re-encode.
    """
    pending = -1  # where the low half of the last high surrogate must start
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        slashes = 0
        while start - slashes - 1 >= 0 and text[start - slashes - 1] == "\\":
            slashes += 1
        if slashes % 2:
            continue  # "\\\\ud800" is a backslash and the text "ud800"
        low = match.group(1) in "cdefCDEF"
        if pending >= 0:
            if low and start == pending:
                pending = -1
                continue
            return True  # a high surrogate not followed by its low half
        if low:
            return True  # a low surrogate on its own
        pending = match.end()
    return pending >= 0


def _split(text: str, members: dict[str, str]) -> None:
    """Fill ``members`` with the top-level members of the JSON object ``text``.

    The hot path of every request: whitespace is skipped by the regex only where there
    is some, and values are scanned by the C scanner directly.

    Raises:
        json.JSONDecodeError, _Refused, RecursionError: the text is not an acceptable
            JSON object.
    """
    ws, scan = _WS.match, _SCAN
    end = len(text)
    idx = ws(text, 0).end()  # type: ignore[union-attr]
    if idx == end or text[idx] != "{":
        raise errors.InvalidRequest("the request body must be a JSON object")
    idx += 1
    if idx < end and text[idx] in _WS_CHARS:
        idx = ws(text, idx).end()  # type: ignore[union-attr]
    if idx < end and text[idx] == "}":
        idx += 1
    else:
        while True:
            if idx >= end or text[idx] != '"':
                raise json.JSONDecodeError("Expecting property name in double quotes", text, idx)
            key, idx = scanstring(text, idx + 1, True)
            if idx < end and text[idx] in _WS_CHARS:
                idx = ws(text, idx).end()  # type: ignore[union-attr]
            if idx >= end or text[idx] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
            idx += 1
            if idx < end and text[idx] in _WS_CHARS:
                idx = ws(text, idx).end()  # type: ignore[union-attr]
            try:
                value_end = scan(text, idx)[1]
            except StopIteration as exc:
                raise json.JSONDecodeError("Expecting value", text, exc.value) from None
            members[key] = text[idx:value_end]
            idx = value_end
            if idx < end and text[idx] in _WS_CHARS:
                idx = ws(text, idx).end()  # type: ignore[union-attr]
            char = text[idx] if idx < end else ""
            if char == ",":
                idx += 1
                if idx < end and text[idx] in _WS_CHARS:
                    idx = ws(text, idx).end()  # type: ignore[union-attr]
                continue
            if char == "}":
                idx += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
    if idx < end and ws(text, idx).end() != end:  # type: ignore[union-attr]
        raise json.JSONDecodeError("Extra data", text, idx)


class BodyBudget:
    """Bytes of request bodies held at once, gateway-wide; beyond ``limit``: 429.

    ``reserve(n)`` then ``release(n)`` with the same ``n``. Single-threaded (event loop).
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reserve(self, n: int) -> None:
        """Hold ``n`` more bytes.

        Raises:
            errors.QueueFull: they do not fit (429, Retry-After 1 s).
        """
        if self.held + n > self.limit and self.held:
            raise errors.QueueFull(
                "the gateway holds too many request bodies right now "
                f"({self.held // 1048576} MiB of {self.limit // 1048576} MiB); retry shortly",
                retry_after_s=1,
            )
        self.held += n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes."""
        self.held -= n


def _forkserver_pool(workers: int) -> ProcessPoolExecutor:
    """Workers forked from a clean server process (never from this threaded one), which
    imports this module once. Blocks for as long as the forkserver and the workers take to
    start (~0.5 s): call it off the event loop."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_lower_priority)
    # workers start on demand, in submit(): start them all here, not later on the loop
    for done in [pool.submit(_noop) for _ in range(workers)]:
        done.result()
    return pool


#: How much nicer than the gateway a parse worker runs (nice(2)): while workers parse big
#: bodies on every CPU, the event loop (every other request, /healthz) still gets the CPU
#: when it needs it (CFS weights: nice 10 is ~1/10 of nice 0).
WORKER_NICENESS = 10


def _lower_priority() -> None:
    """A parse worker's initializer: run :data:`WORKER_NICENESS` nicer than the gateway."""
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not allowed here: the workers run at the gateway's priority
        log.debug("cannot lower the parse workers' priority", exc_info=True)


def _noop() -> None:
    pass


class Intake:
    """Reads and parses request bodies under :class:`ServerSettings`' limits.

    One per app; :meth:`close` at cleanup stops the worker processes (started at the first
    large body).
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.budget = BodyBudget(settings.max_pending_body_bytes)
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.offload_workers)
        self._starting = asyncio.Lock()

    async def read(self, request: web.Request) -> tuple[list[bytes], int]:
        """The body of ``request`` as the chunks it arrived in (never joined here: a large
        body goes to a worker as they are), and the bytes reserved for it in
        :attr:`budget`. The caller releases the reservation when the request is answered.

        A body that arrives in pieces has its JSON values counted as they arrive (as
        :func:`parse_body` counts them); past ``max_json_values`` the rest is read and
        dropped (within the size limit and the time bound: past them, 413 or 408 as for
        any body), so the client still reads the 400, and nothing of it is held, joined,
        sent to a worker or parsed.

        Raises:
            errors.InvalidRequest: a body over the size limit (413), or not received in time
                (408), the connection closed after the answer; more JSON values than a
                request may hold (400).
            errors.QueueFull: the gateway holds too many bodies already (429).
        """
        limits = self.settings
        declared = request.content_length
        if declared is not None and declared > limits.max_body_bytes:
            raise _too_large(request, limits.max_body_bytes)
        reserved = declared or 0
        self.budget.reserve(reserved)
        content = request.content
        if declared is not None and content.is_eof() and not content.exception():
            # the usual small request: all of it arrived with the headers, no wait to bound
            body = content.read_nowait()
            if len(body) > limits.max_body_bytes:  # it inflated (Content-Encoding)
                self.budget.release(reserved)
                raise _too_large(request, limits.max_body_bytes)
            return [body], reserved
        timeout_s = limits.body_timeout_s + (declared or limits.max_body_bytes) / max(
            1, limits.body_min_rate
        )
        chunks: list[bytes] = []
        size = values = 0
        refused = False  # too many values: the rest is read, not kept
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    while chunk := await content.readany():
                        size += len(chunk)
                        if size > limits.max_body_bytes:
                            raise _too_large(request, limits.max_body_bytes)
                        if refused:
                            continue
                        values += _values(chunk)
                        if values > limits.max_json_values:
                            refused = True
                            chunks.clear()
                            self.budget.release(reserved)
                            reserved = 0
                            continue
                        chunks.append(chunk)
                        if size > reserved:
                            self.budget.reserve(size - reserved)
                            reserved = size
            except TimeoutError:
                request.protocol.close()
                raise errors.RequestTimeout(
                    f"the request body was not received within {timeout_s:g} s"
                ) from None
            except web.RequestPayloadError as exc:
                request.protocol.close()
                raise errors.InvalidRequest(f"the request body could not be read: {exc}") from None
            if refused:
                raise _too_many_values(limits.max_json_values)
        except BaseException:  # refused, or the client went away (cancelled, reset)
            self.budget.release(reserved)
            raise
        return chunks, reserved

    async def parse(self, chunks: list[bytes]) -> Payload:
        """Parse a body read by :meth:`read`: on the loop when small, in a worker process
        when large (its chunks pickled as they are: one copy on the loop's side, not two).

        Raises:
            errors.InvalidRequest: see :func:`parse_body`.
            errors.InternalError: the worker processes died twice in a row.
        """
        limits = self.settings
        if sum(map(len, chunks)) <= limits.offload_body_bytes:
            # one chunk (the usual case) is joined without a copy
            return parse_body(b"".join(chunks), max_values=limits.max_json_values)
        async with self._slots:
            for _ in range(2):
                pool = await self._started_pool()
                try:
                    return await asyncio.get_running_loop().run_in_executor(
                        pool, _parse_in_worker, chunks, limits.max_json_values
                    )
                except BrokenProcessPool:  # a worker died (the OOM killer?): start anew
                    log.warning("a worker process parsing request bodies died; restarting them")
                    pool.shutdown(wait=False, cancel_futures=True)
                    if self._pool is pool:
                        self._pool = None
            raise errors.InternalError("the request body could not be parsed: its worker died")

    async def _started_pool(self) -> ProcessPoolExecutor:
        """The worker pool, started in a thread the first time (so the loop never waits)."""
        async with self._starting:
            if self._pool is None:
                self._pool = await asyncio.to_thread(
                    _forkserver_pool, self.settings.offload_workers
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _parse_in_worker(chunks: list[bytes], max_values: int) -> Payload:
    raw = b"".join(chunks)
    chunks.clear()  # this process's copies: not held through the parse
    return parse_body(raw, max_values=max_values)


def _too_large(request: web.Request, limit: int) -> errors.InvalidRequest:
    request.protocol.close()  # do not read the rest of it
    return errors.RequestTooLarge(f"the request body is larger than {limit:,} bytes")
