"""Backends: the ready pods of the operator's model servers, and which one takes a call.

Owns :class:`Backends` (the app's registry: one watch per backend named by the config),
:func:`ready_addresses` (an EndpointSlice list read as the addresses to call) and
:class:`Pick` (one call's endpoint, held until released).

A ``serve:`` role's upstream names its :class:`~rolegate_gateway.config.Backend` (a Service
of the operator's). Its ready pods are the EndpointSlices labelled
``kubernetes.io/service-name=<service>`` in its namespace
(https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/). Each is listed,
then watched from the list's resourceVersion, as :mod:`rolegate_gateway.kube` watches the
config Secret: a watch the server ends is resumed; 410 Gone, a cut connection or a restarted
API server list again and *replace* what was known, so an endpoint removed during a watch
gap is never kept. While the API server is unreachable the last picture keeps serving.

Each call goes to the ready endpoint with the fewest calls in flight, counted across every
role of this gateway that uses the backend; ties go round-robin. A pod that leaves the slices
gets no new call, and the calls in flight on it finish. Where no watch runs (``--manifests``,
or RBAC forbids listing the slices) calls go to the role's ``base_url`` (the Service); a
watch that answered with no ready endpoint makes calls fail with 503
(:class:`errors.BackendNotReady`) instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.config import Backend, GatewayConfig

if TYPE_CHECKING:  # the Kubernetes client is imported only when a watch runs (~35 MB)
    from kubernetes_asyncio import client

__all__ = ["FIRST_LIST_WAIT_S", "SERVICE_LABEL", "Address", "Backends", "Pick", "ready_addresses"]

log = logging.getLogger(__name__)

#: The label that ties an EndpointSlice to its Service.
SERVICE_LABEL = "kubernetes.io/service-name"
#: Seconds a call to a backend whose watch just started waits for its first list.
FIRST_LIST_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Address:
    """One endpoint to call: an IP (or FQDN) and the port of the backend's named port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def ready_addresses(
    slices: Iterable[Mapping[str, Any]], port_name: str
) -> tuple[tuple[Address, ...], int]:
    """The addresses that may take new calls, in a stable order without duplicates, and
    how many listed addresses may not (not ready, or terminating).

    ``slices`` are raw ``discovery.k8s.io/v1`` EndpointSlices of one Service. An endpoint
    serves when ``conditions.ready`` is true or absent ("nil should be interpreted as
    true") and ``conditions.terminating`` is not true (a terminating endpoint may still be
    ready with ``publishNotReadyAddresses``: it gets no new call either); see
    https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/#conditions.
    Its port is the slice port named ``port_name``; a slice without one is skipped.
    """
    ready: dict[Address, None] = {}
    not_ready: set[Address] = set()
    for piece in slices:
        ports = [p for p in piece.get("ports") or () if (p.get("name") or "") == port_name]
        if not ports or not isinstance(ports[0].get("port"), int):
            continue
        port = int(ports[0]["port"])
        for endpoint in piece.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            serving = conditions.get("ready") is not False and not conditions.get("terminating")
            for host in endpoint.get("addresses") or ():
                address = Address(str(host), port)
                if serving:
                    ready[address] = None
                else:
                    not_ready.add(address)
    return tuple(sorted(ready, key=str)), len(not_ready - ready.keys())


class Pick:
    """One call's endpoint: counted in flight until :meth:`release` (or the end of a
    ``with`` block). Releasing twice counts once."""

    __slots__ = ("_pool", "_released", "address")

    def __init__(self, pool: _Pool, address: Address) -> None:
        self._pool = pool
        self.address = address
        self._released = False

    def route(self, url: URL) -> URL:
        """``url`` sent to this endpoint: host and port replaced; scheme, path and query
        kept as they are (still encoded as they were, for a signature)."""
        return url.with_host(self.address.host).with_port(self.address.port)

    def release(self) -> None:
        """The call is over: one fewer in flight on this endpoint."""
        if not self._released:
            self._released = True
            self._pool.done(self.address)

    def __enter__(self) -> Pick:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class _Pool:
    """One backend: what its slices say, and the calls in flight per endpoint."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.slices: dict[str, Mapping[str, Any]] = {}
        self.endpoints: tuple[Address, ...] = ()
        self.not_ready = 0
        self.synced = False  # a list has answered and not been taken back since
        self.inflight: dict[Address, int] = {}  # shared by every role of the backend
        self._next = 0
        self.task: asyncio.Task[None] | None = None
        #: Set once the watch has decided how calls go: listed, or not allowed to list.
        self.settled = asyncio.Event()

    def replace(self, slices: Iterable[Mapping[str, Any]]) -> None:
        """Know exactly ``slices`` (a list's answer): nothing from before survives."""
        self.slices = {str(s["metadata"]["name"]): s for s in slices}
        self.synced = True
        self.settled.set()
        self.update()

    def update(self) -> None:
        """Recompute the endpoints from :attr:`slices`; log when they change."""
        endpoints, self.not_ready = ready_addresses(self.slices.values(), self.backend.port_name)
        if endpoints != self.endpoints:
            log.info(
                "backend %s/%s: %d ready endpoints, %d not ready",
                self.backend.namespace,
                self.backend.service,
                len(endpoints),
                self.not_ready,
            )
        self.endpoints = endpoints

    def forget(self) -> None:
        """No picture any more (the watch is not allowed): calls go to the Service."""
        self.slices, self.endpoints, self.not_ready, self.synced = {}, (), 0, False
        self.settled.set()

    def pick(self, role: str) -> Pick:
        """The ready endpoint with the fewest calls in flight; ties round-robin.

        Raises:
            errors.BackendNotReady: no endpoint is ready.
        """
        endpoints = self.endpoints
        n = len(endpoints)
        if not n:
            b = self.backend
            raise errors.BackendNotReady(
                f"the backend {b.service} of role {role!r} in namespace {b.namespace} has "
                f"no ready pod ({self.not_ready} not ready)"
            )
        counts = self.inflight
        start = self._next % n
        best, best_count, best_i = endpoints[start], math.inf, start
        for k in range(n):
            i = (start + k) % n
            count = counts.get(endpoints[i], 0)
            if count < best_count:
                best, best_count, best_i = endpoints[i], count, i
        self._next = best_i + 1
        counts[best] = counts.get(best, 0) + 1
        return Pick(self, best)

    def done(self, address: Address) -> None:
        count = self.inflight.get(address, 0) - 1
        if count > 0:
            self.inflight[address] = count
        else:
            self.inflight.pop(address, None)

    def describe(self) -> dict[str, Any]:
        b = self.backend
        return {
            "name": b.service,
            "namespace": b.namespace,
            "synced": self.synced,
            "endpoints": [
                {"address": str(a), "inFlight": self.inflight.get(a, 0)} for a in self.endpoints
            ],
            "notReady": self.not_ready,
        }


class Backends:
    """The backends named by the config being served, each with a watch of its slices.

    ``watch=False`` (standalone, ``--manifests``): nothing is watched and every call goes to
    its role's ``base_url``. ``watch=True``: the Kubernetes API is reached as
    :func:`rolegate_gateway.kube.api_client` does (``kubeconfig``, else in-cluster); RBAC
    ``list`` and ``watch`` on ``endpointslices.discovery.k8s.io`` in each backend's
    namespace. Retries back off from ``retry_delay_s``, doubling, up to
    ``max_unavailable_delay_s`` while the API server is unreachable or answers 429/5xx,
    ``max_retry_delay_s`` for other errors and ``forbidden_delay_s`` for 401/403; jittered.

    Not thread-safe: use it on the event loop's thread.
    """

    def __init__(
        self,
        *,
        watch: bool = False,
        kubeconfig: Path | None = None,
        watch_timeout_s: int = 300,
        retry_delay_s: float = 0.5,
        max_unavailable_delay_s: float = 2.0,
        max_retry_delay_s: float = 5.0,
        forbidden_delay_s: float = 30.0,
    ) -> None:
        self.watch = watch
        self.kubeconfig = kubeconfig
        #: Seconds the API server keeps one watch open before ending it (resumed at once).
        self.watch_timeout_s = watch_timeout_s
        self.retry_delay_s = retry_delay_s
        self.max_unavailable_delay_s = max_unavailable_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self.forbidden_delay_s = forbidden_delay_s
        #: Lists that answered, over all backends (a start, or a start over); for tests.
        self.lists = 0
        self._pools: dict[Backend, _Pool] = {}
        self._api: client.ApiClient | None = None
        self._closed = False
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled, not yet done

    # -- request path -----------------------------------------------------------------

    def pick(self, backend: Backend, *, role: str) -> Pick | None:
        """An endpoint for one call of ``role`` to ``backend``, or None: no picture of its
        slices (not watched, or not yet listed), so the call goes to ``base_url``.

        Raises:
            errors.BackendNotReady: the slices list no ready endpoint.
        """
        pool = self._pools.get(backend)
        if pool is None or not pool.synced:
            return None
        return pool.pick(role)

    async def first_pick(self, backend: Backend, *, role: str) -> Pick | None:
        """:meth:`pick`, after waiting up to :data:`FIRST_LIST_WAIT_S` for the first list of
        a backend whose watch has just started (a config that named a new backend was just
        applied): its Service's address may not even resolve where the gateway runs.

        Raises:
            errors.BackendNotReady: the slices list no ready endpoint.
        """
        pool = self._pools.get(backend)
        if pool is not None and pool.task is not None and not pool.settled.is_set():
            try:
                await asyncio.wait_for(pool.settled.wait(), FIRST_LIST_WAIT_S)
            except TimeoutError:  # the list keeps failing: later calls do not wait again
                pool.settled.set()
        return self.pick(backend, role=role)

    # -- config -----------------------------------------------------------------------

    def sync(self, config: GatewayConfig) -> None:
        """Watch the backends ``config`` names, and stop watching the others (called on
        every config applied). Picks of a dropped backend still release."""
        wanted = {rc.upstream.backend for rc in config.roles if rc.upstream.backend is not None}
        for backend in [b for b in self._pools if b not in wanted]:
            pool = self._pools.pop(backend)
            if pool.task is not None:
                pool.task.cancel()
                self._stopping.add(pool.task)
                pool.task.add_done_callback(self._stopping.discard)
            log.info("backend %s/%s: no longer watched", backend.namespace, backend.service)
        for backend in wanted - self._pools.keys():
            pool = self._pools[backend] = _Pool(backend)
            if self.watch and not self._closed:
                name = f"rolegate-backend-{backend.namespace}-{backend.service}"
                pool.task = asyncio.get_running_loop().create_task(self._run(pool), name=name)

    def replace(self, backend: Backend, slices: Iterable[Mapping[str, Any]]) -> None:
        """Know exactly ``slices`` (raw EndpointSlices, a list's answer) for ``backend``, a
        backend of the config: nothing known before survives."""
        self._pools[backend].replace(slices)

    def status(self, backend: Backend) -> dict[str, Any]:
        """``backend`` for /status: ``{name, namespace, synced, endpoints: [{address,
        inFlight}], notReady}``; ``synced`` false: calls go to the Service."""
        pool = self._pools.get(backend) or _Pool(backend)
        return pool.describe()

    def ready_counts(self) -> Iterator[tuple[str, str, int]]:
        """(service, namespace, ready endpoints) of every backend with a picture."""
        for pool in self._pools.values():
            if pool.synced:
                yield pool.backend.service, pool.backend.namespace, len(pool.endpoints)

    async def close(self) -> None:
        """Stop every watch and close the API client."""
        self._closed = True
        tasks = [p.task for p in self._pools.values() if p.task is not None]
        tasks += self._stopping
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- the watch --------------------------------------------------------------------

    async def _discovery(self) -> Any:
        from kubernetes_asyncio import client

        from rolegate_gateway import kube

        if self._api is None:
            self._api = await kube.api_client(self.kubeconfig)
        return client.DiscoveryV1Api(self._api)

    async def _list(self, pool: _Pool) -> str:
        """List the backend's slices and replace the pool's picture; the list's
        resourceVersion.

        Raises:
            ApiException: an HTTP error; see ``kube.API_ERRORS`` for the rest.
        """
        from rolegate_gateway import kube

        b = pool.backend
        api = await self._discovery()
        body = await kube.answer_json(
            api.list_namespaced_endpoint_slice(
                b.namespace,
                label_selector=f"{SERVICE_LABEL}={b.service}",
                _preload_content=False,
                _request_timeout=30,
            )
        )
        self.lists += 1
        pool.replace(body.get("items") or [])
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, pool: _Pool, resource_version: str) -> str:
        """One watch from ``resource_version`` until the server ends it; the last
        resourceVersion seen (events and bookmarks).

        Raises:
            ApiException: 410 Gone, or another error; see ``kube.API_ERRORS``.
        """
        from kubernetes_asyncio import watch

        b = pool.backend
        api = await self._discovery()
        async with watch.Watch(return_type="object") as stream:
            async for event in stream.stream(
                api.list_namespaced_endpoint_slice,
                b.namespace,
                label_selector=f"{SERVICE_LABEL}={b.service}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout_s,
                _request_timeout=self.watch_timeout_s + 30,
            ):
                kind, obj = event["type"], event["raw_object"]
                resource_version = stream.resource_version or resource_version
                if kind in ("ADDED", "MODIFIED"):
                    pool.slices[str(obj["metadata"]["name"])] = obj
                elif kind == "DELETED":
                    pool.slices.pop(str(obj["metadata"]["name"]), None)
                else:
                    continue
                pool.update()
        return resource_version

    async def _run(self, pool: _Pool) -> None:
        """List, then watch until cancelled: resume a watch the server ended; list again
        after 410 Gone (at once, once in a row) or any other error (after a backoff)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        from rolegate_gateway import kube

        b = pool.backend
        delay_s = self.retry_delay_s
        version: str | None = None
        gone_before = warned = False
        while True:
            try:
                if version is None:
                    version = await self._list(pool)
                version = await self._watch(pool, version)
                delay_s, gone_before, warned = self.retry_delay_s, False, False
                continue
            except ApiException as exc:
                if exc.status == 410 and not gone_before:
                    log.debug("backend %s/%s: 410 Gone, listing again", b.namespace, b.service)
                    version, gone_before = None, True
                    continue
                error: Exception = exc
            except Exception as exc:  # whatever broke, watching must go on
                error = exc
            version, gone_before = None, False
            forbidden = isinstance(error, ApiException) and error.status in (401, 403)
            if forbidden:
                pool.forget()
                cap_s = self.forbidden_delay_s
            elif kube.unavailable(error):
                cap_s = self.max_unavailable_delay_s
            else:
                cap_s = self.max_retry_delay_s
            delay_s = min(delay_s, cap_s)
            if not warned:
                warned = True
                self._warn(pool, error, forbidden=forbidden)
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.0))
            delay_s = min(delay_s * 2, cap_s)

    def _warn(self, pool: _Pool, error: Exception, *, forbidden: bool) -> None:
        """Say once per outage why the backend's slices cannot be read, and what happens."""
        from rolegate_gateway import kube

        b = pool.backend
        what = f"list endpointslices.discovery.k8s.io in namespace {b.namespace}"
        if forbidden:
            log.warning(
                "backend %s/%s: not allowed to %s (%s): its calls go to its Service, not "
                "balanced over its ready pods; grant the gateway's ServiceAccount list and "
                "watch on endpointslices.discovery.k8s.io there (the chart does in the "
                "namespaces it watches)",
                b.namespace,
                b.service,
                what,
                kube.describe(error),
            )
            return
        kept = "keeping the last ready endpoints" if pool.synced else "calls go to the Service"
        kube.log_failure(
            log,
            error,
            "backend %s/%s: cannot %s, retrying (%s): %s",
            b.namespace,
            b.service,
            what,
            kept,
        )
