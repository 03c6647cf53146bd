"""The gateway's aiohttp application: routes, error rendering, lifecycle.

Owns :func:`create_app` (the factory) and :func:`start` (an ``AppRunner`` with the
settings the gateway needs: handler cancellation on client disconnect, a graceful
shutdown timeout). Endpoints:

- ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``: ``model`` names
  the role; header ``X-Priority`` (integer, lower first, default 10).
- ``GET /v1/models``, ``/v1/models/{role}``: one entry per role the caller may use,
  binding and model in ``metadata``.
- ``GET /healthz`` (alive), ``/readyz`` (a config is served and not shutting down),
  ``/status`` (JSON, no credentials; a ``serve:`` role's ``backend`` with its ready
  endpoints and their calls in flight), ``/metrics`` (Prometheus text format).

The app keeps the :class:`~rolegate_gateway.backends.Backends` it is given (:data:`BACKENDS`)
in step with every config the runtime applies; it watches backends' EndpointSlices only if
it was made with ``watch=True`` (the config comes from Kubernetes).

Client access (``rolegate_gateway.auth.access``, ``--auth``): with access on, every
``/v1`` request is authenticated before its body is read (401) and authorised once its role
is known (403), before it is queued; the probes, ``/status`` and ``/metrics`` stay open.

Every error is OpenAI's error body with a 4xx/5xx status, malformed HTTP included
(``rolegate_gateway.server``); request bodies are read and parsed by
``rolegate_gateway.intake`` within the limits of :class:`ServerSettings`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest

from rolegate_gateway import errors, proxy
from rolegate_gateway.auth.access import Access, Identity
from rolegate_gateway.backends import Backends
from rolegate_gateway.health import HEALTH, HealthChecker, health_ctx, status_entries
from rolegate_gateway.intake import Intake
from rolegate_gateway.keys import ACCESS, GUARD, INTAKE, RUNTIME, SESSION, SOURCE, ConfigSource
from rolegate_gateway.metrics import BackendCollector, SlotsCollector
from rolegate_gateway.presence import PRESENCE, Presence
from rolegate_gateway.proxy import forward
from rolegate_gateway.runtime import Role, Runtime
from rolegate_gateway.server import ConnectionGuard, GuardedRunner
from rolegate_gateway.settings import ServerSettings
from rolegate_gateway.translators import Endpoint
from rolegate_gateway.upstream import connection_trace

__all__ = ["BACKENDS", "DEFAULT_PRIORITY", "create_app", "start"]

log = logging.getLogger(__name__)

#: Priority of a request without ``X-Priority``; lower is served first.
DEFAULT_PRIORITY = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The backends of ``serve:`` roles: their ready pods and the calls in flight on each.
BACKENDS = web.AppKey("backends", Backends)


def _error_response(exc: errors.GatewayError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.body(),
        headers={"Content-Type": "application/json", **exc.headers},
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render gateway errors, and aiohttp's own (404 path, 405), as OpenAI bodies.

    Answers given before a role was known are counted here (``Metrics.unrouted``); a
    role's own are counted by the proxy. An unexpected exception is a 500, logged with its
    traceback at most once per interval.
    """
    metrics = request.app[RUNTIME].metrics
    try:
        return await handler(request)
    except _Routed as routed:
        return _error_response(routed.error)
    except errors.GatewayError as exc:
        metrics.unrouted(exc.status)
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        metrics.unrouted(exc.status)
        return web.Response(
            status=exc.status,
            body=errors.error_body(exc.reason, type_="invalid_request_error"),
            headers={"Content-Type": "application/json"},
        )
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        metrics.unrouted(500)
        guard = request.app[GUARD]
        guard.throttled.warning(
            "unexpected",
            "unexpected error serving %s %s",
            request.method,
            request.path,
            exc_info=True,
        )
        return web.Response(
            status=500,
            body=errors.error_body("internal gateway error", type_="server_error"),
            headers={"Content-Type": "application/json"},
        )


class _Routed(Exception):
    """A role's error, already counted in the role's metrics by the proxy."""

    def __init__(self, error: errors.GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def _priority(request: web.Request) -> int:
    raw = request.headers.get("X-Priority")
    if raw is None:
        return DEFAULT_PRIORITY
    try:
        return int(raw)
    except ValueError:
        raise errors.InvalidRequest(
            f"X-Priority must be an integer, got {raw[:32]!r}", param="X-Priority"
        ) from None


async def _unknown(
    request: web.Request, name: str, exc: errors.RoleNotFound, identity: Identity | None
) -> errors.RoleNotFound:
    """The 404 for the role ``name`` that ``Runtime.role`` did not find (``exc``): with
    access on, it lists only the roles the caller may use (``exc`` itself when access is
    open, or for a role this gateway cannot serve).

    Raises:
        errors.AuthUnavailable: the roles the caller may use could not be reviewed.
    """
    if identity is None or isinstance(exc, errors.RoleNotServed):
        return exc
    runtime = request.app[RUNTIME]
    roles = (role.config for role in runtime.roles.values())
    visible = await request.app[ACCESS].visible(identity, roles)
    return errors.RoleNotFound(name, visible)


async def _authorize(request: web.Request, identity: Identity, role: Role) -> None:
    """Let ``identity`` call ``role``, or raise its 403/503 counted under the role."""
    try:
        await request.app[ACCESS].authorize(identity, role.config)
    except errors.GatewayError as exc:
        role.wrapper.metrics.request(exc.status, 0.0)
        role.wrapper.metrics.metrics.client(identity.user, role.config, exc.status, None)
        raise _Routed(exc) from exc
    if role.wrapper.metrics.metrics.client_requests is not None:
        request[proxy.CLIENT_KEY] = identity.user


def _proxy(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        access = request.app[ACCESS]
        # Before the body is read: an unknown client costs no body budget or parsing.
        identity = await access.identify(request.headers) if access.enabled else None
        intake = request.app[INTAKE]
        chunks, reserved = await intake.read(request)
        try:
            payload = await intake.parse(chunks)
            del chunks  # the payload holds what is needed; a large body is not kept twice
            try:
                role = request.app[RUNTIME].role(payload.model)
            except errors.RoleNotFound as exc:
                raise await _unknown(request, payload.model, exc, identity) from None
            if identity is not None:
                await _authorize(request, identity, role)
            priority = _priority(request)
            try:
                response = await forward(
                    request,
                    role,
                    endpoint,
                    payload,
                    priority=priority,
                    session=request.app[SESSION],
                    backends=request.app[BACKENDS],
                )
            except errors.GatewayError as exc:
                raise _Routed(exc) from exc
            if not response.prepared and (response.content_length or 0) > _SMALL_ANSWER_BYTES:
                await _send(request, response)
            return response
        finally:
            intake.budget.release(reserved)

    return handle


#: A whole answer this small is written without a timeout: it fits the transport's write
#: buffer (aiohttp's high-water mark is 64 KiB), so writing it never waits on the client.
_SMALL_ANSWER_BYTES = 64 * 1024


async def _send(request: web.Request, response: web.StreamResponse) -> None:
    """Write a whole (non-stream) answer within ``proxy.WRITE_TIMEOUT_S``: a client that
    does not read it is disconnected, so it holds neither the connection nor the answer's
    memory. (Streams have the same bound per write, in the proxy.)"""
    try:
        async with asyncio.timeout(proxy.WRITE_TIMEOUT_S):
            await response.prepare(request)
            await response.write_eof()
    except (TimeoutError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()


def _model_entry(runtime: Runtime, name: str) -> dict[str, Any]:
    role = runtime.role(name)
    up = role.config.upstream
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "rolegate",
        "metadata": {
            "namespace": role.config.namespace,
            "binding": str(up.binding),
            "model": up.model,
        },
    }


async def _models(request: web.Request) -> web.Response:
    runtime, access = request.app[RUNTIME], request.app[ACCESS]
    if access.enabled:
        identity = await access.identify(request.headers)
        names = await access.visible(identity, (r.config for r in runtime.roles.values()))
    else:
        names = sorted(runtime.roles)
    data = [_model_entry(runtime, name) for name in names]
    return web.json_response({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    runtime, access = request.app[RUNTIME], request.app[ACCESS]
    name = request.match_info["role"]
    identity = await access.identify(request.headers) if access.enabled else None
    try:
        role = runtime.role(name)
    except errors.RoleNotFound as exc:
        raise await _unknown(request, name, exc, identity) from None
    if identity is not None:
        await _authorize(request, identity, role)
    return web.json_response(_model_entry(runtime, name))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.ready:
        # A source that is down does not make the gateway unready: it keeps serving its
        # last good config, and every replica would otherwise leave the Service at once.
        body: dict[str, object] = {"status": "ready", "config": runtime.config_hash}
        if runtime.source_error is not None:
            body["configSource"] = {"error": runtime.source_error, "since": runtime.source_since}
        return web.json_response(body)
    reason = "shutting down" if not runtime.accepting else "no config applied yet"
    last = runtime.last_reload
    body = {"status": "not ready", "reason": reason, "lastError": last.error if last else None}
    if runtime.source_error is not None:
        body["configSource"] = {"error": runtime.source_error, "since": runtime.source_since}
    return web.json_response(body, status=503)


async def _status(request: web.Request) -> web.Response:
    runtime, backends = request.app[RUNTIME], request.app[BACKENDS]
    document = runtime.status()
    document["access"] = request.app[ACCESS].status()
    document["presence"] = p.status() if (p := request.app.get(PRESENCE)) else {"enabled": False}
    status_entries(request.app.get(HEALTH), document)  # each role's upstream health
    for name, entry in document["roles"].items():
        role = runtime.roles.get(name)
        backend = role.config.upstream.backend if role is not None else None
        if backend is not None:
            entry["backend"] = backends.status(backend)
    return web.json_response(document)


async def _metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.prune()  # drained wrappers' series of removed or relabelled roles go
    body = generate_latest(runtime.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _slots_ctx(app: web.Application) -> AsyncIterator[None]:
    """The concurrency store (``--concurrency-store``): started first, closed last, after
    the calls in flight released their slots."""
    slots = app[RUNTIME].slots
    assert slots is not None
    registry = app[RUNTIME].registry
    collector = SlotsCollector(slots.in_use, lambda: slots.errors_total, lambda: slots.fallback)
    registry.register(collector)
    await slots.start()
    yield
    await slots.close()
    registry.unregister(collector)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One client session for every upstream: its connector pools connections per host.

    Its connection trace lets the proxy retry a dead keep-alive connection; redirects are
    refused per call (``rolegate_gateway.upstream.post``). It keeps no cookies: a cookie one
    client's answer set would otherwise ride on every later request to that host, whoever
    sent it (aiohttp's default jar stores them all).
    """
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        trace_configs=[connection_trace()],
    ) as session:
        app[SESSION] = session
        yield


async def _backends_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep the backends in step with the config the runtime serves (set up before the
    config source loads, so its first config starts the watches); stop them at cleanup,
    after the source."""
    runtime, backends = app[RUNTIME], app[BACKENDS]
    runtime.listeners.append(backends.sync)
    if runtime.config is not None:
        backends.sync(runtime.config)
    yield
    runtime.listeners.remove(backends.sync)
    await backends.close()


async def _source_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the config once, then watch the source in a supervised task cancelled at
    cleanup."""
    if SOURCE not in app:
        yield
        return
    source = app[SOURCE]
    await source.load_once()
    task = asyncio.create_task(_supervise(source, app[RUNTIME]), name="rolegate-config-source")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await source.close()


#: Backoff before restarting a config source that failed, seconds: first and largest.
SOURCE_BACKOFF_S = (1.0, 30.0)


async def _supervise(source: ConfigSource, runtime: Runtime) -> None:
    """Run ``source.run()`` forever: when it fails (or returns), log it, say so in
    ``/readyz`` and ``/status``, and restart it with exponential backoff (reset after a
    run that lasted a minute). The config being served keeps being served meanwhile."""
    loop = asyncio.get_running_loop()
    first, largest = SOURCE_BACKOFF_S
    backoff = first
    while True:
        started = loop.time()
        try:
            await source.run()
            reason = "it stopped"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = type(exc).__name__  # its text may quote what the source read
            log.debug("the config source failed", exc_info=True)
        if loop.time() - started > 60:
            backoff = first
        runtime.source_failed(f"{reason}; restarting in {backoff:g} s")
        log.error("the config source is down (%s); restarting in %g s", reason, backoff)
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, largest)
        runtime.source_restarted()


async def _presence_ctx(app: web.Application) -> AsyncIterator[None]:
    """This replica's gateway Lease: from after the first config load until cleanup."""
    async with app[PRESENCE].running(app[RUNTIME]):
        yield


async def _access_ctx(app: web.Application) -> AsyncIterator[None]:
    """Client access: its API client (if any) is closed at cleanup."""
    yield
    await app[ACCESS].close()


async def _intake_ctx(app: web.Application) -> AsyncIterator[None]:
    """The body reader; its worker processes (if any were started) stop at cleanup."""
    yield
    app[INTAKE].close()


async def _stop_admitting(app: web.Application) -> None:
    app[RUNTIME].close()


def create_app(
    runtime: Runtime | None = None,
    *,
    source: ConfigSource | None = None,
    settings: ServerSettings | None = None,
    backends: Backends | None = None,
    access: Access | None = None,
    presence: Presence | None = None,
    health: HealthChecker | None = None,
) -> web.Application:
    """The gateway app serving ``runtime``, fed by ``source`` (none: apply configs yourself),
    with the client limits of ``settings`` (default: :class:`ServerSettings`' defaults)
    and the client ``access`` (default: open to every client); ``presence``: this replica's
    gateway Lease to keep (``rolegate_gateway.presence``); ``health``: the upstream checker.

    ``backends``: where ``serve:`` roles' calls go; pass ``Backends(watch=True, ...)`` when
    the config comes from Kubernetes (default: nothing watched, calls go to each role's
    ``base_url``, the backend's Service)."""
    settings = settings or ServerSettings()
    app = web.Application(middlewares=[_errors], client_max_size=settings.max_body_bytes)
    runtime = runtime or Runtime()
    app[RUNTIME] = runtime
    app[INTAKE] = Intake(settings)
    app[GUARD] = ConnectionGuard(settings, count=runtime.metrics.unrouted)
    app[BACKENDS] = backends = backends or Backends()
    if source is not None:
        app[SOURCE] = source
    app[ACCESS] = access = access or Access()
    runtime.listeners.append(access.sync)  # before the source: its first config has keys
    if runtime.config is not None:
        access.sync(runtime.config)
    ProcessCollector(namespace="rolegate", registry=runtime.registry)
    runtime.registry.register(BackendCollector(backends.ready_counts))
    if runtime.slots is not None:
        app.cleanup_ctx.append(_slots_ctx)
    app.cleanup_ctx.append(_session_ctx)
    if health is not None:
        app[HEALTH] = health
        app.cleanup_ctx.append(health_ctx)
    app.cleanup_ctx.append(_backends_ctx)
    app.cleanup_ctx.append(_source_ctx)
    if presence is not None:
        app[PRESENCE] = presence
        app.cleanup_ctx.append(_presence_ctx)
    app.cleanup_ctx.append(_access_ctx)
    app.cleanup_ctx.append(_intake_ctx)
    app.on_shutdown.append(_stop_admitting)
    app.router.add_post("/v1/chat/completions", _proxy(Endpoint.CHAT_COMPLETIONS))
    app.router.add_post("/v1/completions", _proxy(Endpoint.COMPLETIONS))
    app.router.add_post("/v1/embeddings", _proxy(Endpoint.EMBEDDINGS))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{role}", _model)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    return app


async def start(
    app: web.Application, *, host: str, port: int, shutdown_timeout_s: float = 25.0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (port 0: a free one); returns the runner and the port.

    ``shutdown_timeout_s`` bounds how long running streams may finish at shutdown; keep it
    below the pod's terminationGracePeriodSeconds (30 s by default). Connections obey the
    app's :class:`ServerSettings` (see ``rolegate_gateway.server``).

    Raises:
        OSError: the address cannot be bound.
    """
    options: dict[str, Any] = {
        "handler_cancellation": True,
        "shutdown_timeout": shutdown_timeout_s,
        "access_log": None,
    }
    guard = app.get(GUARD)
    runner = (
        web.AppRunner(app, **options)  # not made by create_app (a test's fake upstream)
        if guard is None
        else GuardedRunner(app, guard=guard, **options)
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
