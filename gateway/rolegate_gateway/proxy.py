"""The proxying path: admit by the role's queue, call the upstream, pass the answer on.

Owns :func:`forward`. Each request gets a fresh translator from its role wrapper
(``rolegate_gateway.translators``): its request step builds the upstream request, the
wrapper's upstream auth adds credentials on every attempt, and its response steps turn the
upstream's answer into the client's, chunk by chunk as it arrives (for an OpenAI-compatible
upstream: the bytes as they are). The HTTP exchange itself (retries, redirects refused,
capped reads) is ``rolegate_gateway.upstream``'s. Error mapping:

- queue full / wait exceeded -> 429 (raised by the queue);
- a ``serve:`` role whose backend lists no ready pod -> 503 (``errors.BackendNotReady``);
- ``timeoutSeconds`` passed (to the first byte; for a stream also between chunks) -> 504;
- cut off by a drain deadline -> 503; upstream unreachable or broken -> 502;
- an upstream redirect (never followed: it could carry the key elsewhere) -> 502;
- a non-stream answer over ``upstream.MAX_ANSWER_BYTES`` -> 502;
- upstream error status -> the translator's error for it (``translators.upstream_errors``): its
  body with the role's credentials removed (``rolegate_gateway.scrub``) and its
  ``Retry-After``/``x-ratelimit-*`` headers; a refused key gets a message naming the role
  instead (the key is the role's, not the client's);
- an exception nothing maps (a bug) -> 500 "internal gateway error", logged with its
  traceback.

A ``serve:`` role's call goes to one ready pod of its backend, picked by
``rolegate_gateway.backends`` (fewest calls in flight, shared by every role of the backend)
and held until the call ends, its stream included; retries stay on that pod. Without a
picture of the backend's slices the call goes to the role's ``base_url`` (its Service).

Upstream statuses the client caused (``errors.CLIENT_STATUSES``) are not counted in
``rolegate_upstream_errors_total``.

Once a stream has started, an error is sent as a final SSE event ``data: {"error": …}``,
which the OpenAI SDK raises as an APIError; a translator that ends a stream with one (the
upstream broke off or sent an error event) makes the request count as failed too. A
client that goes away (the handler task is cancelled by aiohttp), or stops reading for
:data:`WRITE_TIMEOUT_S`, cancels the upstream call and frees the slot at once; it is
counted as 499, the client's doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from rolegate_gateway import errors, upstream
from rolegate_gateway.backends import Backends, Pick
from rolegate_gateway.calls import Call
from rolegate_gateway.config import Backend
from rolegate_gateway.intake import Payload
from rolegate_gateway.runtime import Role, RoleWrapper
from rolegate_gateway.translators import Endpoint, Translator, upstream_errors
from rolegate_gateway.translators.base import UpstreamRequest

__all__ = ["CLIENT_KEY", "WRITE_TIMEOUT_S", "forward"]

log = logging.getLogger(__name__)

#: Seconds one write to a streaming client may block (the client not reading) before the
#: client counts as gone. Read at each call, so tests may lower it.
WRITE_TIMEOUT_S = 30.0

#: The request's key holding its client's identity (a user name) when the gateway counts
#: per client (``--metrics-client-label``); absent otherwise.
CLIENT_KEY = web.RequestKey("client", str)

_CLIENT_CLOSED = 499  # nginx's code for a request the client abandoned, for metrics only


class _ClientGone(Exception):
    """Writing to the client failed (it disconnected) or stalled (it stopped reading)."""

    def __init__(self, response: web.StreamResponse, *, stalled: bool = False) -> None:
        super().__init__("client stopped reading" if stalled else "client disconnected")
        self.response = response
        self.stalled = stalled


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
    payload: Payload,
    *,
    priority: int,
    session: aiohttp.ClientSession,
    backends: Backends | None = None,
) -> web.StreamResponse:
    """Serve one request on ``role``: queue, upstream call (to a pod of the role's
    backend when ``backends`` has a picture of it), answer.

    Every outcome is counted once in the role's metrics and queue counters: the answer's
    status, 499 for a client that went away or stopped reading, 500 for a bug.

    Raises:
        errors.GatewayError: before any byte of the answer was sent (rendered by the app);
            ``errors.InternalError`` for an unexpected exception, chained to it.
        asyncio.CancelledError: the client went away.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue = role.queue
    try:
        slot = await queue.acquire(priority)
    except errors.QueueFull:
        role.wrapper.metrics.rejected()
        role.wrapper.metrics.request(429, loop.time() - started)
        raise
    except errors.GatewayError as exc:  # the queue closed: role removed, gateway stopping
        role.wrapper.metrics.request(exc.status, loop.time() - started)
        raise
    except asyncio.CancelledError:  # the client went away while queued
        role.wrapper.metrics.request(_CLIENT_CLOSED, loop.time() - started)
        raise
    wrapper = role.wrapper  # the current one at admission: a reload moves waiters to the new
    admitted = loop.time()
    call = Call()
    wrapper.enter(call)
    code = 500  # an outcome nobody recorded is a bug, never a success
    try:
        translator = wrapper.translator()
        request_up = translator.request(endpoint, payload)
        backend = wrapper.config.upstream.backend
        if backend is None or backends is None:  # the hot path: one attribute check
            response = await _exchange(
                request, wrapper, call, translator, request_up, session, started
            )
        else:
            response = await _via_backend(
                request,
                wrapper,
                call,
                translator,
                request_up,
                session,
                started,
                backends=backends,
                backend=backend,
            )
        code = response.status
        queue.completed_total += 1
        return response
    except errors.GatewayError as exc:
        code = exc.status
        queue.failed_total += 1
        _record_failure(wrapper, exc)
        raise
    except _StreamBroken as broken:
        code = broken.error.status
        queue.failed_total += 1
        _record_failure(wrapper, broken.error)
        return broken.response
    except _ClientGone as gone:
        code = _CLIENT_CLOSED
        queue.cancelled_total += 1
        if gone.stalled and request.transport is not None:
            log.debug("role %s: the client stopped reading; disconnected", wrapper.config.name)
            request.transport.abort()  # drop what it did not read; aiohttp ends the handler
        return gone.response  # nobody is listening; aiohttp closes the connection
    except asyncio.CancelledError:
        code = _CLIENT_CLOSED
        queue.cancelled_total += 1
        raise
    except Exception as exc:
        queue.failed_total += 1
        name = wrapper.config.name
        log.exception("role %s: internal error serving a request", name, extra={"role": name})
        raise errors.InternalError() from exc
    finally:
        wrapper.leave(call)
        now = loop.time()
        queue.release(now - admitted, slot)
        wrapper.metrics.request(code, now - started)
        client = request.get(CLIENT_KEY)
        if client is not None:
            wrapper.metrics.metrics.client(client, wrapper.config, code, call.usage)


def _record_failure(wrapper: RoleWrapper, exc: errors.GatewayError) -> None:
    """Count and log an upstream failure once; the client's own errors and bugs are not
    the upstream's."""
    name = wrapper.config.name
    extra: dict[str, Any] = {"role": name, "upstream": wrapper.origin}
    if isinstance(exc, errors.InternalError):
        return  # logged with its traceback where it was caught
    if not isinstance(exc, errors.UpstreamError) and exc.status < 500:
        return  # the client's request (e.g. a parameter the binding cannot take)
    if isinstance(exc, errors.UpstreamStatusError) and exc.client_caused:
        log.debug("%s (upstream %s)", exc.message, wrapper.origin, extra=extra)
        return
    kind = _error_kind(exc)
    wrapper.metrics.upstream_error(kind)
    log.warning("%s (upstream %s)", exc.message, wrapper.origin, extra={**extra, "kind": kind})


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


async def _via_backend(
    request: web.Request,
    wrapper: RoleWrapper,
    call: Call,
    translator: Translator,
    request_up: UpstreamRequest,
    session: aiohttp.ClientSession,
    started: float,
    *,
    backends: Backends,
    backend: Backend,
) -> web.StreamResponse:
    """The call of a ``serve:`` role, sent to a pod of its backend when there is a picture
    of it (held until the call ends); its answer.

    Raises:
        errors.BackendNotReady: the backend lists no ready pod (nothing was sent).
    """
    pick = backends.pick(backend, role=wrapper.config.name)
    if pick is None:  # a watch that just started: its first list is moments away
        pick = await backends.first_pick(backend, role=wrapper.config.name)
    if pick is None:  # no picture of its slices: the Service's address
        return await _exchange(request, wrapper, call, translator, request_up, session, started)
    with pick:
        request_up = request_up._replace(url=pick.route(request_up.url))
        return await _exchange(
            request, wrapper, call, translator, request_up, session, started, pick=pick
        )


async def _exchange(
    request: web.Request,
    wrapper: RoleWrapper,
    call: Call,
    translator: Translator,
    request_up: UpstreamRequest,
    session: aiohttp.ClientSession,
    started: float,
    *,
    pick: Pick | None = None,
) -> web.StreamResponse:
    """``request_up`` (and any following call of the translator's, sent to ``pick``'s pod
    too) under the role's timeout; the answer.

    While a write to a streaming client blocks, the call's timeout is moved to the write
    deadline instead (:data:`WRITE_TIMEOUT_S`, never past a drain deadline): a client that
    does not read is not the upstream's fault, and one timer serves both.
    """
    role = wrapper.config.name
    timeout_s = wrapper.config.upstream.timeout_s
    write_timeout_s = WRITE_TIMEOUT_S
    loop = asyncio.get_running_loop()
    response: web.StreamResponse | None = None
    writing = False
    try:
        async with asyncio.timeout(None) as timeout, call.start(timeout, loop.time() + timeout_s):
            with errors.map_client_errors(role):
                async with await upstream.post(session, request_up, call, wrapper.auth) as up:
                    if up.status >= 300:
                        raise await _status_error(wrapper, translator, up)
                    head = translator.response_headers(up.status, up.headers)
                    if head.stream:
                        response = web.StreamResponse(
                            status=head.status,
                            headers={
                                "Content-Type": head.content_type,
                                "Cache-Control": "no-cache",
                                **head.headers,
                            },
                        )
                        stream = response

                        async def send(io: Awaitable[Any]) -> None:
                            nonlocal writing
                            writing = True
                            call.limit(loop.time() + write_timeout_s)
                            await _client_io(stream, io)
                            writing = False
                            call.limit(loop.time() + timeout_s)

                        first = True
                        async for chunk in up.content.iter_any():
                            out = translator.response_body(chunk, end=False)
                            if first and translator.first_content:
                                wrapper.metrics.first_token(loop.time() - started)
                                first = False
                            if out:
                                await _stream_out(send, request, response, translator, out)
                            if translator.failure is not None or translator.complete:
                                break  # the failure's error event, or [DONE], was the last
                        else:
                            out = translator.response_body(b"", end=True)
                            if out:
                                await _stream_out(send, request, response, translator, out)
                        if not response.prepared:  # nothing to send: an empty answer,
                            if translator.failure is not None:  # or the failure it is
                                raise translator.failure
                            await send(response.prepare(request))
                        await send(response.write_eof())
                        if translator.usage is not None:
                            wrapper.metrics.tokens(translator.usage)
                            call.usage = translator.usage
                        if translator.failure is not None:
                            raise _StreamBroken(translator.failure, response)
                        return response
                    answer = await _whole(role, translator, up)
                while (following := translator.more()) is not None:  # one answer, more calls
                    call.limit(loop.time() + timeout_s)  # timeoutSeconds is per call
                    if pick is not None:
                        following = following._replace(url=pick.route(following.url))
                    async with await upstream.post(session, following, call, wrapper.auth) as up:
                        if up.status >= 300:
                            raise await _status_error(wrapper, translator, up)
                        translator.response_headers(up.status, up.headers)
                        answer = await _whole(role, translator, up)
                if translator.usage is not None:
                    wrapper.metrics.tokens(translator.usage)
                    call.usage = translator.usage
                return web.Response(
                    status=head.status,
                    body=answer,
                    headers={"Content-Type": head.content_type, **head.headers},
                )
    except TimeoutError as exc:
        deadline = call.due
        if call.drained and deadline is not None and deadline >= call.cap:  # the drain's
            error: errors.GatewayError = errors.Draining(
                f"the role {role!r} was rebound or removed and this call ran past its drain "
                f"deadline ({wrapper.drain_s:g} s)"
            )
        elif writing and response is not None:
            raise _ClientGone(response, stalled=True) from exc
        else:
            error = errors.UpstreamTimeout(
                f"the upstream of role {role!r} did not answer within {timeout_s:g} s"
            )
        if response is None or not response.prepared:
            raise error from exc
        await _stream_error(request, response, error)
        raise _StreamBroken(error, response) from exc
    except errors.GatewayError as exc:
        if response is None or not response.prepared:
            raise
        await _stream_error(request, response, exc)
        raise _StreamBroken(exc, response) from exc
    except (_ClientGone, _StreamBroken):
        raise
    except Exception as exc:
        if response is None or not response.prepared:
            raise  # forward answers 500
        log.exception("role %s: internal error in a stream", role, extra={"role": role})
        error = errors.InternalError()
        await _stream_error(request, response, error)
        raise _StreamBroken(error, response) from exc


async def _stream_out(
    send: Callable[[Awaitable[Any]], Awaitable[None]],
    request: web.Request,
    response: web.StreamResponse,
    translator: Translator,
    out: bytes,
) -> None:
    """Write a stream's bytes, sending the status line with the first of them: until then
    a failure (an upstream that opened its stream with an error event, or sent nothing) is
    raised as the HTTP error it is, which the client's SDK can retry on its status."""
    if not response.prepared:
        if translator.failure is not None:
            raise translator.failure
        await send(response.prepare(request))
    await send(response.write(out))


async def _whole(role: str, translator: Translator, up: aiohttp.ClientResponse) -> bytes:
    """A whole (non-stream) answer read up to ``upstream.MAX_ANSWER_BYTES`` and translated.

    Raises:
        errors.UpstreamUnavailable: the answer is larger, or the translator could not
            make an answer of it.
        aiohttp.ClientError: reading failed (mapped by the caller).
    """
    body = await upstream.read_capped(up, upstream.MAX_ANSWER_BYTES)
    if body is None:
        raise errors.UpstreamUnavailable(
            f"the answer of role {role!r}'s upstream is larger than "
            f"{upstream.MAX_ANSWER_BYTES // 2**20} MiB"
        )
    answer = translator.response_body(body, end=True)
    if translator.failure is not None:
        raise translator.failure
    return answer


async def _client_io(response: web.StreamResponse, io: Awaitable[Any]) -> None:
    """Await a write to the client; a gone client becomes :class:`_ClientGone`."""
    try:
        await io
    except ConnectionError as exc:
        raise _ClientGone(response) from exc


async def _stream_error(
    request: web.Request, response: web.StreamResponse, exc: errors.GatewayError
) -> None:
    """End a started stream with an OpenAI-style error event; a gone client is ignored,
    one that does not read within :data:`WRITE_TIMEOUT_S` is disconnected."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(b"data: " + exc.body() + b"\n\n")
            await response.write_eof()
    except ConnectionError:
        pass
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()


async def _status_error(
    wrapper: RoleWrapper, translator: Translator, up: aiohttp.ClientResponse
) -> errors.GatewayError:
    """The error for an upstream answer of status 300 or more.

    A redirect is refused (502; its Location is not shown). An error status is read up to
    ``upstream.MAX_ERROR_BYTES``, scrubbed of the role's credentials and handed to the
    translator's error step; a larger body is left out of the answer.

    Raises:
        aiohttp.ClientError: reading the body failed (mapped by the caller).
    """
    role = wrapper.config.name
    status = up.status
    if status < 400:
        return errors.UpstreamUnavailable(
            f"the upstream of role {role!r} answered {status}, a redirect; the gateway does "
            "not follow redirects (they could send the role's key elsewhere): point the "
            "role's host at the final address"
        )
    raw = await upstream.read_capped(up, upstream.MAX_ERROR_BYTES)
    if raw is None:
        text = f"with an error body over {upstream.MAX_ERROR_BYTES // 2**20} MiB"
        return upstream_errors.wrapped(role, status, up.headers, text)
    return translator.error(status, up.headers, wrapper.scrub(raw))
