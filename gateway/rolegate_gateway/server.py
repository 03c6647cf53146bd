"""The gateway's HTTP server: aiohttp's, with limits on what a client can hold or cause.

Owns :class:`GuardedRunner` (an ``AppRunner`` whose connections are :class:`_Handler`),
:class:`ConnectionGuard` (the connection cap, timeouts' bookkeeping and throttled logs)
and :func:`raise_nofile_limit`. What it adds to aiohttp:

- a cap on open client connections: one more is answered 503 (OpenAI's body) and closed
  before any byte of it is read;
- a header timeout: a connection whose request headers are not complete
  ``header_timeout_s`` after their first byte is closed (slowloris; counted as 408 in
  ``/metrics``, not answered, as nginx does); idle connections are closed after
  ``keepalive_timeout_s`` (aiohttp's keep-alive timer, which also covers a connection that
  never sends a byte);
- protocol errors (bad request line or chunking, Content-Length with Transfer-Encoding,
  oversized headers, …) answered with OpenAI's error body instead of aiohttp's text/plain,
  counted in ``/metrics`` and logged at most once per interval, without a traceback;
- a client that half-closes its side after a complete request still gets its answer (and
  one that went away is still noticed: see ``_Handler.eof_received``).

The hooks are aiohttp's ``RequestHandler`` methods (aiohttp 3.14): ``connection_made``,
``connection_lost``, ``data_received``, ``eof_received`` and ``handle_error``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import HttpVersion11, web, web_protocol, web_server
from aiohttp.web_request import BaseRequest

from rolegate_gateway import errors
from rolegate_gateway.logs import Throttled
from rolegate_gateway.settings import ServerSettings

__all__ = ["ConnectionGuard", "GuardedRunner", "raise_nofile_limit"]

log = logging.getLogger(__name__)

#: Seconds the rest of an unread body (after a 413 or 408) is read and dropped before the
#: connection closes, so the client can read the answer first. aiohttp's default is 10 s.
LINGER_S = 2.0
#: Seconds between two probes of a client that half-closed its connection mid-request.
PROBE_S = 0.25
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    Without CAP_SYS_RESOURCE only the soft limit can move, and only up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def _canned(
    status: int, reason: str, message: str, *, type_: str, code: str, extra: str = ""
) -> bytes:
    """A whole HTTP/1.1 answer with OpenAI's error body, for a connection about to close."""
    body = errors.error_body(message, type_=type_, code=code)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


_OVERLOADED = _canned(
    503,
    "Service Unavailable",
    "the gateway has too many open connections; retry shortly",
    type_="service_unavailable",
    code="too_many_connections",
    extra="Retry-After: 1\r\n",
)


class ConnectionGuard:
    """Counts client connections against the cap; reports misbehaviour without flooding.

    ``count(code)`` is called for every answer given outside a role (a metric).
    """

    def __init__(self, settings: ServerSettings, *, count: Callable[[int], None]) -> None:
        self.settings = settings
        self.max_connections = settings.max_connections
        self.open = 0
        self.refused_total = 0
        self.count = count
        self.throttled = Throttled(log, interval_s=settings.error_log_interval_s)

    def admit(self) -> bool:
        """Count a new connection in; False (and nothing counted) when at the cap."""
        if self.open >= self.max_connections:
            self.refused_total += 1
            self.count(503)
            self.throttled.warning(
                "too_many_connections",
                "refusing client connections: %d open, the cap is %d",
                self.open,
                self.max_connections,
            )
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        """Count a connection out."""
        self.open -= 1


class _Handler(web_protocol.RequestHandler):
    """One client connection, under its :class:`ConnectionGuard`."""

    __slots__ = ("_admitted", "_guard", "_header_timer", "_probe")

    def __init__(self, manager: web_server.Server, *, guard: ConnectionGuard, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._guard = guard
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._probe: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            self._force_close = True  # data_received ignores anything that still arrives
            assert isinstance(transport, asyncio.Transport)
            transport.write(_OVERLOADED)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.leave()
        self._disarm()
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress or self._force_close:
            self._disarm()
        elif data and self._header_timer is None:
            self._header_timer = self._loop.call_later(
                self._guard.settings.header_timeout_s, self._header_deadline
            )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._messages or self._request_in_progress or self.transport is None:
            return  # the headers did arrive (the body has a timeout of its own)
        self._guard.count(408)
        self._guard.throttled.warning(
            "header_timeout",
            "closed a client connection: request headers incomplete after %g s",
            self._guard.settings.header_timeout_s,
        )
        self.force_close()  # no answer, as nginx: a slowloris client would not read it

    def eof_received(self) -> bool:  # type: ignore[override]
        """The client closed its sending side: answer a complete request, then close.

        Returning True keeps the transport open for writing (asyncio.Protocol); aiohttp's
        own returns None, which closes it and cancels the request's handler — still right
        when the connection is idle or a body is incomplete (it can never complete).

        A FIN looks the same whether the client only half-closed or went away, so the
        peer is probed (:meth:`_probe_peer`): a gone client still cancels its request.
        """
        if self._waiter is not None and not self._waiter.done() and not self._messages:
            return False
        self.close()
        # the request's handler may not have started yet: decide once it has
        self._loop.call_soon(self._after_eof)
        return True

    def _after_eof(self) -> None:
        """Keep answering after a half-close only a complete HTTP/1.1 request."""
        current = self._current_request
        if self.transport is None or current is None:
            return
        pipelined = [payload for _, payload in self._messages]
        complete = all(payload.is_eof() for payload in [current.content, *pipelined])
        if not complete or current.version < HttpVersion11:
            self.force_close()  # a body that can never complete; or HTTP/1.0: gone
            return
        self._probe_peer()

    def _probe_peer(self) -> None:
        """Write an interim ``100 Continue`` while the answer has not started.

        An HTTP/1.1 client must accept 1xx answers before the final one (RFC 9110 section
        15.2), so a half-closed client reads past it; a closed socket answers it with a
        reset, and the next probe's write then fails, which ends the connection and
        cancels the request (its upstream call and queue slot) as any disconnect does.
        Probing stops when the answer starts or the connection ends.
        """
        self._probe = None
        if self.transport is None:
            return
        current = self._current_request
        if current is not None:
            if current.writer.output_size or current.version < HttpVersion11:
                return
            self.transport.write(_CONTINUE)
        self._probe = self._loop.call_later(PROBE_S, self._probe_peer)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log (e.g. a broken body read after the answer was sent):
        one throttled line naming the exception, no traceback — a client can cause it."""
        exc = kw.get("exc_info")
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        message = str(args[0]) if args else "connection error"
        self._guard.throttled.warning(f"aiohttp:{kind}", "%s (%s)", message, kind)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's errors (malformed HTTP, an exception past the app's middleware) as
        OpenAI's error body; one throttled log line, no traceback for a client's fault."""
        self._guard.count(status)
        kind = type(exc).__name__ if exc is not None else f"HTTP {status}"
        if status >= 500:
            self._guard.throttled.warning(
                f"server_error:{kind}", "internal error serving a request: %s", kind
            )
            text, type_ = "internal gateway error", "server_error"
        else:
            self._guard.throttled.warning(
                f"protocol:{kind}", "refused a malformed HTTP request (%d %s)", status, kind
            )
            detail = (message or "").strip()[:200]
            text = "malformed HTTP request" + (f": {detail}" if detail else "")
            type_ = "invalid_request_error"
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already started")
        resp = web.Response(
            status=status,
            body=errors.error_body(text, type_=type_),
            content_type="application/json",
        )
        resp.force_close()
        return resp


class _Server(web_server.Server):
    """aiohttp's Server making :class:`_Handler` connections."""

    guard: ConnectionGuard

    def __call__(self) -> web_protocol.RequestHandler:
        return _Handler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections obey ``guard`` (see the module docstring)."""

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, **kw: Any) -> None:
        super().__init__(
            app,
            keepalive_timeout=guard.settings.keepalive_timeout_s,
            lingering_time=LINGER_S,
            **kw,
        )
        self.guard = guard

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # only __call__ differs: it makes guarded handlers
        assert isinstance(server, _Server)
        server.guard = self.guard
        return server
