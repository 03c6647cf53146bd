"""The upstream HTTP exchange: one POST with retries, redirects refused, answers read capped.

Owns :func:`post` (the retry loop), :func:`connection_trace` (the session's
``TraceConfig`` that tells a reused keep-alive connection from a fresh one),
:func:`read_capped`, :func:`retry_after_s` and :func:`passed_headers`. The proxy maps the
aiohttp errors these raise (``errors.map_client_errors``) and turns answers into the
client's.

Retries happen before anything reaches the client, so they are invisible to it:

- a connect error (nothing was sent): backoff 0.25 s, 0.5 s, at most :data:`RETRIES` times;
- a reused keep-alive connection that the upstream had already dropped (reset, broken
  pipe or closed before any answer, within :data:`STALE_WINDOW_S` of the request being
  sent): again at once, at most :data:`STALE_RETRIES` times, then as a connect error.
  A *fresh* connection that fails once the request was sent is not retried, nor a reused
  one that fails later than that: the upstream may have started a paid call;
- a 429, 502, 503 or 504 answer: like a connect error, waiting the upstream's
  ``retry-after-ms`` or ``Retry-After`` when longer than the backoff, but only up to
  :data:`MAX_RETRY_WAIT_S`; a longer wait is the client's to make (the gateway would hold
  one of the role's ``maxAsync`` slots asleep), so that answer is passed on at once.

Every wait must also end before the call's time budget (``timeoutSeconds``) does.
"""

from __future__ import annotations

import asyncio
import errno
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Protocol

import aiohttp
from multidict import CIMultiDictProxy

if TYPE_CHECKING:  # the translators import this module
    from rolegate_gateway.auth import UpstreamAuth
    from rolegate_gateway.translators.base import UpstreamRequest

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_RETRY_WAIT_S",
    "RETRIES",
    "STALE_RETRIES",
    "STALE_WINDOW_S",
    "Budget",
    "connection_trace",
    "passed_headers",
    "post",
    "read_capped",
    "retry_after_s",
]

#: Extra attempts after the first for connect errors and retryable statuses.
RETRIES = 2
#: Immediate extra attempts after a reused connection turned out to be dead (an upstream
#: that restarted leaves every pooled connection dead: one attempt may meet several).
STALE_RETRIES = 8
#: Seconds after the request's last byte within which a reused connection that breaks
#: counts as dead before the request reached the upstream. Later, the upstream may have
#: been working on it (and crashed on it): that is not retried.
STALE_WINDOW_S = 0.5
#: The first backoff, seconds; it doubles on each retry.
BACKOFF_S = 0.25
#: The longest ``Retry-After`` the gateway sleeps on before retrying, seconds.
MAX_RETRY_WAIT_S = 5.0
#: Largest non-stream answer passed on, bytes after decompression; beyond it: 502. It
#: bounds the memory of one call: the answer is buffered to get its status right. (A
#: stream is passed on as it arrives and has no cap.) 2,048 float embeddings of 3,072
#: dimensions are ~125 MB of JSON, hence 256 MiB.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
#: Largest upstream error body read for scrubbing, bytes after decompression; a larger
#: one is left out of the client's answer.
MAX_ERROR_BYTES = 1024 * 1024

#: Upstream answers worth another attempt: rate limited, or a transient server failure.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Errnos of a connection the peer dropped.
_DROPPED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
#: Headers of an upstream error answer passed on to the client (lower case): RFC 9110
#: section 10.2.3, and OpenAI's rate-limit headers
#: (https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers), Anthropic's.
_PASSED = ("retry-after", "retry-after-ms")
_PASSED_PREFIX = ("x-ratelimit-", "anthropic-ratelimit-")


class Budget(Protocol):
    """A call's time budget: ``asyncio.Timeout``, or the proxy's ``calls.Call``."""

    def when(self) -> float | None:
        """Its deadline (loop time), or None without one."""
        ...


@dataclass(slots=True)
class _Attempt:
    """One attempt's ``trace_request_ctx``: whether its connection came from the pool, and
    when (loop time) its last byte was sent; 0: nothing sent yet."""

    reused: bool = False
    sent_at: float = 0.0

    def stale(self, now: float) -> bool:
        """A failure now is a dead keep-alive connection, not an upstream that failed
        while working on the request: the connection was reused and broke within
        :data:`STALE_WINDOW_S` of the request being sent."""
        return self.reused and (not self.sent_at or now - self.sent_at <= STALE_WINDOW_S)


async def _on_reuse(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    attempt = ctx.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


async def _on_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    attempt = ctx.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.sent_at = asyncio.get_running_loop().time()


def connection_trace() -> aiohttp.TraceConfig:
    """The ``TraceConfig`` the upstream session must carry for :func:`post` to retry a
    dead keep-alive connection (without it every connection counts as fresh)."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_on_reuse)
    trace.on_request_chunk_sent.append(_on_sent)  # every request has a body: its last chunk
    trace.freeze()
    return trace


async def post(
    session: aiohttp.ClientSession,
    upstream: UpstreamRequest,
    budget: Budget,
    auth: UpstreamAuth,
) -> aiohttp.ClientResponse:
    """POST ``upstream`` without following redirects, retrying as the module says; each
    attempt gets its headers (credentials included) from ``auth`` anew.

    ``budget`` is the call's timeout; a wait that would outlast it is not made. The last
    answer, error or redirect status included, is returned as it is; the caller releases it.

    Raises:
        aiohttp.ClientError: the last attempt failed (mapped by ``errors.map_client_errors``).
        errors.UpstreamUnavailable: ``auth`` had no credentials to give.
    """
    loop = asyncio.get_running_loop()
    attempt = stale = 0
    while True:
        delay = BACKOFF_S * 2**attempt
        tried = _Attempt()
        headers = await auth.headers(upstream)
        try:
            up = await session.post(
                upstream.url,
                data=upstream.body,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=tried,
            )
        except aiohttp.ClientConnectorError:
            if not _fits(attempt, delay, budget, loop.time()):
                raise
        except aiohttp.ClientConnectionError as exc:
            if not (tried.stale(loop.time()) and _dropped(exc)):
                raise
            if stale < STALE_RETRIES and _fits(0, 0.0, budget, loop.time()):
                stale += 1
                continue
            if not _fits(attempt, delay, budget, loop.time()):
                raise
        else:
            if up.status not in RETRY_STATUSES:
                return up
            wait = retry_after_s(up.headers)
            if wait > MAX_RETRY_WAIT_S:
                return up
            delay = max(delay, wait)
            if not _fits(attempt, delay, budget, loop.time()):
                return up
            up.release()
        await asyncio.sleep(delay)
        attempt += 1


def _fits(attempt: int, delay_s: float, budget: Budget, now: float) -> bool:
    when = budget.when()
    return attempt < RETRIES and (when is None or now + delay_s < when)


def _dropped(exc: aiohttp.ClientConnectionError) -> bool:
    """A connection the upstream closed or reset under us, before any answer."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError | BrokenPipeError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _DROPPED_ERRNOS


def retry_after_s(headers: CIMultiDictProxy[str]) -> float:
    """How long an upstream asks to be left alone, seconds; 0 when it does not say.

    ``retry-after-ms`` (milliseconds; OpenAI and Azure OpenAI send it, and the OpenAI SDK
    prefers it) wins over ``Retry-After`` (RFC 9110 section 10.2.3: delay-seconds or an
    HTTP-date). Unreadable values count as 0.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        seconds = _number(ms)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("Retry-After")
    if not value:
        return 0.0
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def passed_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The headers of an upstream error answer the client gets too: ``Retry-After``,
    ``retry-after-ms``, ``x-ratelimit-*`` and Anthropic's ``anthropic-ratelimit-*``
    (https://docs.anthropic.com/en/api/rate-limits#response-headers; first value of each,
    names as sent)."""
    passed: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if lower in seen or not (lower in _PASSED or lower.startswith(_PASSED_PREFIX)):
            continue
        seen.add(lower)
        passed[name] = value
    return passed


async def read_capped(up: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The answer's body, decompressed, read in chunks; None once it passes ``cap`` bytes
    (the rest is not read; releasing ``up`` then closes its connection).

    aiohttp inflates a compressed body a bounded piece at a time as it is read, so memory
    stays near ``cap`` whatever the compression ratio. The chunks are joined once, at the
    end.

    Raises:
        aiohttp.ClientPayloadError: the body broke off or could not be decoded.
    """
    length = up.content_length
    if length is not None and length > cap and "Content-Encoding" not in up.headers:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in up.content.iter_any():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
