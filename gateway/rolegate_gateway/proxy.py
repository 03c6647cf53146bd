"""The proxying path: admit by the role's queue, call the upstream, pass the answer on.

Owns :func:`forward`. Bodies and SSE streams pass through as bytes, written to the client
as they arrive; nothing is decoded on the way back. Error mapping:

- queue full / wait exceeded -> 429 (raised by the queue);
- ``timeoutSeconds`` passed (to the first byte; for a stream also between chunks) -> 504;
- cut off by a drain deadline -> 503; upstream unreachable or broken -> 502;
- upstream error status -> that status, its body with the role's credentials removed.

Connect errors and 429/502/503/504 answers are retried with exponential backoff within
the call's time budget, before anything reaches the client (the SDK's own retries can
stay off).

Once a stream has started, an error is sent as a final SSE event ``data: {"error": …}``,
which the OpenAI SDK raises as an APIError. A client that goes away (the handler task is
cancelled by aiohttp) cancels the upstream call and frees the slot at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import aiohttp
from aiohttp import web

from rolegate_gateway import errors
from rolegate_gateway.adapters import Endpoint, UpstreamRequest
from rolegate_gateway.runtime import Call, Role, RoleWrapper

__all__ = ["forward"]

log = logging.getLogger(__name__)

_SSE = "text/event-stream"
#: Upstream answers worth another attempt: rate limited, or a transient server failure.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Extra attempts after the first, and the first backoff in seconds (doubling each time).
RETRIES = 2
_BACKOFF_S = 0.25
_CLIENT_CLOSED = 499  # nginx's code for a request the client abandoned, for metrics only


class _ClientGone(Exception):
    """Writing to the client failed: it disconnected mid-stream."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.response = response


class _StreamBroken(Exception):
    """A started stream failed; it was ended with an error event and is complete."""

    def __init__(self, error: errors.GatewayError, response: web.StreamResponse) -> None:
        super().__init__(error.message)
        self.error = error
        self.response = response


async def forward(
    request: web.Request,
    role: Role,
    endpoint: Endpoint,
    payload: dict[str, Any],
    *,
    priority: int,
    session: aiohttp.ClientSession,
) -> web.StreamResponse:
    """Serve one request on ``role``: queue, upstream call, answer.

    Raises:
        errors.GatewayError: before any byte of the answer was sent (rendered by the app).
        asyncio.CancelledError: the client went away.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue = role.queue
    try:
        await queue.acquire(priority)
    except errors.QueueFull:
        role.wrapper.metrics.rejected()
        role.wrapper.metrics.request(429, loop.time() - started)
        raise
    wrapper = role.wrapper  # the current one at admission: a reload moves waiters to the new
    admitted = loop.time()
    call = Call()
    wrapper.enter(call)
    code = 200
    try:
        response = await _call(request, wrapper, call, endpoint, payload, session, started)
        code = response.status
        queue.completed_total += 1
        return response
    except errors.GatewayError as exc:
        code = exc.status
        queue.failed_total += 1
        _log_failure(wrapper, exc)
        raise
    except _StreamBroken as broken:
        code = broken.error.status
        queue.failed_total += 1
        _log_failure(wrapper, broken.error)
        return broken.response
    except _ClientGone as gone:
        code = _CLIENT_CLOSED
        queue.cancelled_total += 1
        return gone.response  # nobody is listening; aiohttp closes the connection
    except asyncio.CancelledError:
        code = _CLIENT_CLOSED
        queue.cancelled_total += 1
        raise
    finally:
        wrapper.leave(call)
        now = loop.time()
        queue.release(now - admitted)
        wrapper.metrics.request(code, now - started)


def _log_failure(wrapper: RoleWrapper, exc: errors.GatewayError) -> None:
    kind = _error_kind(exc)
    wrapper.metrics.upstream_error(kind)
    log.warning(
        "role %s: upstream %s failed: %s",
        wrapper.config.name,
        wrapper.origin,
        exc.message,
        extra={"role": wrapper.config.name, "upstream": wrapper.origin, "kind": kind},
    )


def _error_kind(exc: errors.GatewayError) -> str:
    match exc:
        case errors.UpstreamTimeout():
            return "timeout"
        case errors.Draining():
            return "drained"
        case errors.UpstreamStatusError():
            return "status"
        case _:
            return "unavailable"


async def _call(
    request: web.Request,
    wrapper: RoleWrapper,
    call: Call,
    endpoint: Endpoint,
    payload: dict[str, Any],
    session: aiohttp.ClientSession,
    started: float,
) -> web.StreamResponse:
    upstream = wrapper.adapter.request(endpoint, payload)
    timeout_s = wrapper.config.upstream.timeout_s
    loop = asyncio.get_running_loop()
    response: web.StreamResponse | None = None
    try:
        async with asyncio.timeout(None) as timeout:
            call.timeout = timeout
            call.limit(loop.time() + timeout_s)
            with errors.map_client_errors(wrapper.origin):
                async with await _post(session, upstream, timeout) as up:
                    content_type = up.headers.get("Content-Type", "application/json")
                    if up.status >= 400:
                        raise _status_error(wrapper, up.status, await up.read(), content_type)
                    if not content_type.startswith(_SSE):
                        body = await up.read()
                        return web.Response(
                            status=up.status, body=body, headers={"Content-Type": content_type}
                        )
                    response = web.StreamResponse(
                        status=up.status,
                        headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
                    )
                    await _client_io(response, response.prepare(request))
                    first = True
                    async for chunk in up.content.iter_any():
                        if first:
                            wrapper.metrics.first_token(loop.time() - started)
                            first = False
                        await _client_io(response, response.write(chunk))
                        call.limit(loop.time() + timeout_s)
                    await _client_io(response, response.write_eof())
                    return response
    except TimeoutError as exc:
        error: errors.GatewayError
        if call.drained:
            error = errors.Draining(
                f"the role was rebound or removed and this call ran past its drain deadline "
                f"({wrapper.drain_s:g} s)"
            )
        else:
            error = errors.UpstreamTimeout(
                f"upstream {wrapper.origin} did not answer within {timeout_s:g} s"
            )
        if response is None or not response.prepared:
            raise error from exc
        await _stream_error(response, error)
        raise _StreamBroken(error, response) from exc
    except errors.GatewayError as exc:
        if response is None or not response.prepared:
            raise
        await _stream_error(response, exc)
        raise _StreamBroken(exc, response) from exc


async def _post(
    session: aiohttp.ClientSession, upstream: UpstreamRequest, budget: asyncio.Timeout
) -> aiohttp.ClientResponse:
    """POST to the upstream, retrying connect errors, a dropped keep-alive connection and
    429/502/503/504 answers.

    Exponential backoff (0.25 s, 0.5 s, …; an upstream's Retry-After in seconds wins when
    longer), at most :data:`RETRIES` times, and only while the wait still fits in the call's
    time budget: nothing has reached the client yet, so a retry is invisible to it. The last
    answer, error status included, is returned as it is.

    Raises:
        aiohttp.ClientError: the last attempt could not connect (mapped by the caller).
    """
    loop = asyncio.get_running_loop()
    for attempt in range(RETRIES + 1):
        delay = _BACKOFF_S * 2**attempt
        try:
            up = await session.post(upstream.url, data=upstream.body, headers=upstream.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
            if not _may_retry(attempt, delay, budget, loop.time()):
                raise
        else:
            if up.status not in _RETRY_STATUSES:
                return up
            delay = max(delay, _retry_after_s(up.headers.get("Retry-After")))
            if not _may_retry(attempt, delay, budget, loop.time()):
                return up
            up.release()
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _may_retry(attempt: int, delay_s: float, budget: asyncio.Timeout, now: float) -> bool:
    when = budget.when()
    return attempt < RETRIES and (when is None or now + delay_s < when)


def _retry_after_s(value: str | None) -> float:
    """Retry-After in seconds (RFC 9110 10.2.3); an HTTP date or garbage counts as 0."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


async def _client_io(response: web.StreamResponse, io: Awaitable[Any]) -> None:
    """Await a write to the client; a gone client becomes :class:`_ClientGone`."""
    try:
        await io
    except ConnectionError as exc:
        raise _ClientGone(response) from exc


async def _stream_error(response: web.StreamResponse, exc: errors.GatewayError) -> None:
    """End a started stream with an OpenAI-style error event; a gone client is ignored."""
    try:
        await response.write(b"data: " + exc.body() + b"\n\n")
        await response.write_eof()
    except ConnectionError:
        pass


def _status_error(
    wrapper: RoleWrapper, status: int, body: bytes, content_type: str
) -> errors.UpstreamStatusError:
    """The upstream's error, passed on: its OpenAI error body, or one wrapping its text."""
    body = wrapper.scrub(body)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return errors.UpstreamStatusError(status, body, "application/json")
    text = body.decode(errors="replace").strip()[:1000]
    message = f"upstream {wrapper.origin} answered {status}" + (f": {text}" if text else "")
    wrapped = errors.error_body(message, type_="upstream_error", code=str(status))
    return errors.UpstreamStatusError(status, wrapped, "application/json")
