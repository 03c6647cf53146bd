"""Gateway presence: this replica's own Lease (see :mod:`rolegate_gateway.leases` for its
format), kept while the gateway runs, and the count of live replicas read from its peers'.

Owns :class:`Presence`: it creates the Lease, renews it every ``renew_s`` seconds and at once
after each config the runtime applies (so the operator sees a rollout within a round trip),
lists the peers' Leases on each renewal (:meth:`Presence.live_replicas`, a cheap read for the
request path: the concurrency fallback divides ``maxAsync`` by it) and deletes the Lease on a
clean shutdown (if no one else wrote it since); a replica that dies leaves it to expire.
The Kubernetes client is imported only when the loop runs (~35 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.leases import (
    Report,
    Seen,
    default_identity,
    labels,
    lease_name,
    observe,
    pod_owner,
    report_annotations,
    selector,
)
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.upstream_report import UPSTREAM_ANNOTATION, encode

if TYPE_CHECKING:  # the Kubernetes client is imported only when the loop runs
    from kubernetes_asyncio import client

    from rolegate_gateway.lease_api import LeaseApi

__all__ = ["PRESENCE", "Presence"]

log = logging.getLogger(__name__)

#: Seconds one Lease request may take at most (less with short leases: :attr:`Presence.timeout_s`).
_REQUEST_TIMEOUT_S: Final = 5.0


class Presence:
    """Keeps this replica's Lease (create, renew, delete) and lists its peers'.

    Needs RBAC on ``leases`` (coordination.k8s.io) in ``namespace``: create, update, get
    and delete (its own), list (the peers).

    :meth:`live_replicas` is a cheap read of what the last list saw, for the request path.
    The loop (:meth:`run`) renews and lists every ``renew_s`` seconds, and at once after a
    config is applied (:meth:`config_applied`, a runtime listener). API trouble is retried
    after a backoff from ``retry_delay_s``, doubling up to ``renew_s`` while the API server
    is unreachable or answers 429/5xx and up to 30 s otherwise (403: RBAC), jittered; the
    first failure is a warning, the next ones debug lines until it works again.
    """

    def __init__(
        self,
        namespace: str,
        config_name: str,
        *,
        kubeconfig: Path | None = None,
        identity: str | None = None,
        lease_duration_s: int = 10,
        renew_s: float = 3.0,
        retry_delay_s: float = 0.5,
        assumed_replicas: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lease_duration_s``: whole seconds (the API's int32) a Lease lives unrenewed;
        ``renew_s``: seconds between renewals, below the duration; ``assumed_replicas``:
        what :meth:`live_replicas` says before the first list of the peers answered (the
        replica count configured: a replica that knows nothing yet must not take the whole
        of a role's maxAsync). Set :attr:`runtime` before :meth:`run` (the app does): until
        then the Lease reports no config.

        Raises:
            ValueError: a duration below 1 s, or ``renew_s`` not in (0, duration).
        """
        if lease_duration_s < 1 or not 0 < renew_s < lease_duration_s:
            raise ValueError(
                f"the lease duration ({lease_duration_s} s) must be at least 1 s and above the "
                f"renew interval ({renew_s} s), which must be positive"
            )
        self.assumed_replicas = max(1, assumed_replicas)
        #: Seconds a Lease request may take: a renewal and a list that time out both still
        #: leave the next renewal inside the lease duration.
        self.timeout_s = min(_REQUEST_TIMEOUT_S, (lease_duration_s - renew_s) / 2)
        #: The runtime whose config and roles the Lease reports.
        self.runtime: Runtime | None = None
        #: Each role's upstream health, role -> (state, message), for the Lease's
        #: ``rolegate.dev/upstream`` (``rolegate_gateway.health``); None: not checked.
        self.upstream: Callable[[], Mapping[str, tuple[str, str]]] | None = None
        self.namespace = namespace
        self.config_name = config_name
        self.kubeconfig = kubeconfig
        self.identity = identity or default_identity()
        self.name = lease_name(config_name, self.identity)
        self.lease_duration_s = lease_duration_s
        self.renew_s = renew_s
        self.retry_delay_s = retry_delay_s
        self._clock = clock
        self._peers: dict[str, Seen] = {}  # by Lease name, this replica's left out
        self._looked_s: float | None = None  # monotonic seconds of the last good list
        self._kick = asyncio.Event()
        self._api: client.ApiClient | None = None
        self._held: dict[str, Any] | None = None  # the Lease as this process last wrote it
        self._clash: str | None = None  # another holder seen in this replica's Lease
        #: When the Lease was last renewed (RFC 3339), the last error (None once it works
        #: again), renewals and lists made: for /status and tests.
        self.renewed_at: str | None = None
        self.last_error: str | None = None
        self.renewals = 0
        self.lists = 0

    @property
    def ref(self) -> str:
        """``NAMESPACE/NAME`` of this replica's Lease."""
        return f"{self.namespace}/{self.name}"

    def live_replicas(self) -> int:
        """Gateway replicas live, this one included (at least 1): the peers' Leases seen
        renewed within their duration as of the last list; ``assumed_replicas`` before the
        first list. While lists fail the count stays as last seen: a replica that cannot see
        its peers must not take them for gone."""
        if self._looked_s is None:
            return self.assumed_replicas
        looked = self._looked_s
        return 1 + sum(1 for seen in self._peers.values() if seen.live(looked))

    def config_applied(self, config: GatewayConfig) -> None:
        """A runtime listener: renew now, so the new hashes are reported at once."""
        self._kick.set()

    def kick(self) -> None:
        """Renew now (the upstream health changed)."""
        self._kick.set()

    def status(self) -> dict[str, Any]:
        """The /status entry (camelCase)."""
        looked = self._looked_s
        return {
            "enabled": True,
            "lease": self.ref,
            "identity": self.identity,
            "leaseDurationSeconds": self.lease_duration_s,
            "renewSeconds": self.renew_s,
            "renewedAt": self.renewed_at,
            "error": self.last_error,
            "liveReplicas": self.live_replicas(),
            "peers": sorted(
                name for name, seen in self._peers.items() if looked is None or seen.live(looked)
            ),
        }

    def _annotations(self) -> dict[str, str | None]:
        runtime = self.runtime
        upstream = encode(self.upstream()) if self.upstream is not None else None
        if runtime is None:
            return {**report_annotations(None, {}), UPSTREAM_ANNOTATION: upstream}
        hashes = {name: role.config.hash for name, role in runtime.roles.items()}
        return {**report_annotations(runtime.config_hash, hashes), UPSTREAM_ANNOTATION: upstream}

    async def _lease(self) -> LeaseApi:
        """This replica's Lease over the API (the client made at the first call)."""
        from kubernetes_asyncio import client

        from rolegate_gateway import kube
        from rolegate_gateway.lease_api import LeaseApi

        if self._api is None:
            self._api = await kube.api_client(self.kubeconfig)
        return LeaseApi(client.CoordinationV1Api(self._api), self.namespace, self.name)

    async def renew(self) -> None:
        """Write this replica's Lease once: an update (optimistic, on the resourceVersion
        last written) of its spec, labels and annotations; a create when it does not exist.
        Written by someone else meanwhile (409): read, and written over.

        Raises:
            ApiException: an HTTP error; see ``rolegate_gateway.kube.API_ERRORS`` for the rest.
        """
        from kubernetes_asyncio.client.exceptions import ApiException

        from rolegate_gateway.lease_api import micro_now

        lease = await self._lease()
        now = micro_now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration_s,
            "renewTime": now,
        }
        answer: dict[str, Any] | None = None
        if self._held is not None:  # written by this process before: renew it
            try:
                answer = await self._update(lease, self._held, spec)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                # 409: written by someone else meanwhile; 404: deleted (by hand), made anew
                current = await lease.get(timeout_s=self.timeout_s) if exc.status == 409 else None
                if current is not None:
                    answer = await self._update(lease, current, spec)
        if answer is None:
            answer = await self._create(lease, {**spec, "acquireTime": now})
        self._held = answer
        self.renewed_at = now
        self.renewals += 1

    async def _update(
        self, lease: LeaseApi, current: dict[str, Any], spec: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace ``current`` (the Lease as last read or written) with this replica's
        spec, labels and annotations; others' labels and annotations are kept."""
        meta = {k: v for k, v in current["metadata"].items() if k != "managedFields"}
        notes = {**(meta.get("annotations") or {}), **self._annotations()}
        meta["annotations"] = {k: v for k, v in notes.items() if v is not None}
        meta["labels"] = {**(meta.get("labels") or {}), **labels(self.config_name)}
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {**(current.get("spec") or {}), **spec},
        }
        return await lease.replace(body, timeout_s=self.timeout_s)

    async def _create(self, lease: LeaseApi, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease; when it exists (this identity's previous process left it), take
        it over."""
        from kubernetes_asyncio.client.exceptions import ApiException

        notes = {k: v for k, v in self._annotations().items() if v is not None}
        meta: dict[str, Any] = {"labels": labels(self.config_name), "annotations": notes}
        if owners := pod_owner():
            meta["ownerReferences"] = owners
        try:
            answer = await lease.create(spec, metadata=meta, timeout_s=self.timeout_s)
        except ApiException as exc:
            current = await lease.get(timeout_s=self.timeout_s) if exc.status == 409 else None
            if current is None:
                raise
            return await self._update(lease, current, spec)
        log.info("presence Lease %s created", self.ref)
        return answer

    async def look(self) -> None:
        """List the gateway Leases of this config Secret and record the peers' renewals.

        Raises:
            ApiException: an HTTP error; see ``rolegate_gateway.kube.API_ERRORS`` for the rest.
        """
        from rolegate_gateway.kube import answer_json

        lease = await self._lease()
        body = await answer_json(
            lease.coordination.list_namespaced_lease(
                self.namespace,
                label_selector=selector(self.config_name),
                _preload_content=False,
                _request_timeout=self.timeout_s,
            )
        )
        now = self._clock()
        peers: dict[str, Seen] = {}
        for item in body.get("items") or ():
            report = Report.from_lease(item)
            if report.name == self.name:
                if report.holder not in (self.identity, self._clash):
                    self._clash = report.holder  # said once per other writer
                    log.warning(
                        "presence Lease %s was last written by %r, not by this replica (%r): "
                        "two replicas share one identity; give each its own $POD_NAME",
                        self.ref,
                        report.holder,
                        self.identity,
                    )
                continue
            peers[report.name] = observe(self._peers.get(report.name), report, now)
        self._peers = peers
        self._looked_s = now
        self.lists += 1

    async def run(self) -> None:
        """Renew and list until cancelled (see the class docstring for timing and retries)."""
        from rolegate_gateway import kube

        delay_s = self.retry_delay_s
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            began = loop.time()
            try:
                await self.renew()
                await self.look()
            except Exception as exc:  # whatever broke, the Lease must be renewed again
                failures += 1
                known = isinstance(exc, kube.API_ERRORS)
                self.last_error = kube.describe(exc) if known else type(exc).__name__
                cap_s = self.renew_s if kube.unavailable(exc) else 30.0
                delay_s = min(delay_s, cap_s)
                if failures == 1 or not known:
                    kube.log_failure(
                        log,
                        exc,
                        "presence Lease %s: cannot renew or list, retrying in %.1f s: %s",
                        self.ref,
                        delay_s,
                    )
                else:
                    said = self.last_error
                    log.debug("presence Lease %s: attempt %d failed: %s", self.ref, failures, said)
                wait_s = delay_s * random.uniform(0.8, 1.0)
                delay_s = min(delay_s * 2, cap_s)
            else:
                if failures:
                    log.info(
                        "presence Lease %s renewed again after %d failures", self.ref, failures
                    )
                failures = 0
                self.last_error = None
                delay_s = self.retry_delay_s
                wait_s = max(0.0, self.renew_s - (loop.time() - began))  # from the start
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=wait_s)

    @contextlib.asynccontextmanager
    async def running(self, runtime: Runtime) -> AsyncIterator[None]:
        """Report ``runtime``'s config (renewed at once after each one applied) in a task
        that runs :meth:`run` while in the block; on leaving, stop it and :meth:`close`."""
        self.runtime = runtime
        runtime.listeners.append(self.config_applied)
        task = asyncio.create_task(self.run(), name="rolegate-presence")
        try:
            yield
        finally:
            runtime.listeners.remove(self.config_applied)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        """Delete this replica's Lease (unless someone else wrote it since: a precondition
        on the last resourceVersion written) and close the API client. Best effort: a
        failure is logged, and the Lease then expires."""
        if self._api is None:
            return
        from kubernetes_asyncio.client.exceptions import ApiException

        from rolegate_gateway import kube

        try:
            if self._held is not None:
                lease = await self._lease()
                version = self._held["metadata"]["resourceVersion"]
                await lease.delete(version, timeout_s=self.timeout_s)
                log.info("presence Lease %s deleted", self.ref)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("presence Lease %s not deleted: %s", self.ref, kube.describe(exc))
        except kube.API_ERRORS as exc:
            log.warning("presence Lease %s not deleted: %s", self.ref, kube.describe(exc))
        finally:
            api, self._api = self._api, None
            if api is not None:
                await api.close()


#: The app's :class:`Presence` (``--config-secret`` with presence on only).
PRESENCE = web.AppKey("presence", Presence)
