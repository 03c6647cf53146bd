"""The backends of ``serve:`` roles in each reconcile: read what the API holds, apply what
differs, delete what no role wants.

Owns the API side of backends (``render.backend`` renders them, ``render.backend_status``
judges them). Each pass lists the backend objects (label
:data:`~rolegate_operator.render.backend.SELECTOR`) of every namespace that has a ``serve:``
role or had backend objects; their ``BackendReady`` comes from that list, so it is as fresh as
the pass. An object is applied (server-side apply) only when it is missing or lacks something
of the rendered one, so a pass over an unchanged cluster writes nothing. A backend whose label
names no wanted backend is deleted: a role moved to another backend (its spec changed) or
stopped serving; when its last role is deleted, Kubernetes' garbage collector deletes it
through the owner references too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import describe
from rolegate_operator import render
from rolegate_operator.apply import BackendObjects, Kube
from rolegate_operator.render import backend

__all__ = ["BackendSync", "states"]

log = logging.getLogger(__name__)

#: Backend object kinds -> the :class:`BackendObjects` field listing them.
_KINDS = {
    "PersistentVolumeClaim": "claims",
    "Service": "services",
    "Deployment": "deployments",
    "Pod": "pods",
}


def _backend_of(body: Mapping[str, Any]) -> str:
    """The backend an object belongs to (its :data:`~render.backend.BACKEND_LABEL`)."""
    return str(((body.get("metadata") or {}).get("labels") or {}).get(backend.BACKEND_LABEL, ""))


def states(
    live: Mapping[str, BackendObjects], refused: Mapping[tuple[str, str], str] | None = None
) -> dict[tuple[str, str], render.BackendState]:
    """What the API holds of each backend, by (namespace, backend name); ``refused``: why
    the API server refused a backend's objects at the last try."""
    out: dict[tuple[str, str], render.BackendState] = {}
    for (namespace, name), why in (refused or {}).items():
        out[(namespace, name)] = render.BackendState(apply_error=why)
    for namespace, found in live.items():
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in found.pods:
            pods.setdefault(_backend_of(pod), []).append(pod)
        claims = {_backend_of(c): c for c in found.claims}
        for deployment in found.deployments:
            name = _backend_of(deployment)
            out[(namespace, name)] = render.BackendState(
                deployment=deployment,
                pods=tuple(pods.get(name, ())),
                claim=claims.get(name),
                apply_error=(refused or {}).get((namespace, name)),
            )
    return out


class BackendSync:
    """Reads and writes the backends of the namespaces served, through ``kube``."""

    def __init__(self, kube: Kube, *, release_s: float = 30.0) -> None:
        self.kube = kube
        #: Seconds an unused backend is kept before it is deleted (see :meth:`write`).
        self.release_s = release_s
        #: Namespaces where backend objects were seen (by a watch or a pass).
        self.namespaces: set[str] = set()
        #: (namespace, backend) -> when (monotonic seconds) a pass first found no use for it.
        self._unused: dict[tuple[str, str], float] = {}
        #: (namespace, backend) -> why the API server refused its objects at the last try.
        self.refused: dict[tuple[str, str], str] = {}

    async def _apply(self, want: render.Backend, index: Mapping[Any, Any]) -> None:
        """Apply each object of ``want`` that ``index`` lacks or holds otherwise."""
        for body in backend.manifests(want):
            name = body["metadata"]["name"]
            current = index.get((body["kind"], want.namespace, name))
            # Items of a list carry no apiVersion and kind: compare the rest.
            compared = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
            why = "missing" if current is None else backend.difference(compared, current)
            if why is not None:
                await self.kube.apply(body)
                log.info("applied %s %s/%s (%s)", body["kind"], want.namespace, name, why)

    def due(self) -> float | None:
        """When (monotonic seconds) the next unused backend is to be deleted; None: none."""
        return min(self._unused.values()) + self.release_s if self._unused else None

    async def read(self, objects: Iterable[render.RoleObject]) -> dict[str, BackendObjects]:
        """The backend objects of each namespace that has a ``serve:`` role or had backend
        objects (a namespace whose last ``serve:`` role changed keeps them until deleted).

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble.
        """
        wanted = {o.namespace for o in objects if o.spec.get("serve") is not None}
        live = {}
        for namespace in sorted(wanted | self.namespaces):
            live[namespace] = found = await self.kube.list_backend_objects(namespace)
            if not (found.deployments or found.services or found.claims or namespace in wanted):
                self.namespaces.discard(namespace)
        return live

    async def write(
        self,
        wanted: Iterable[render.Backend],
        live: Mapping[str, BackendObjects],
        *,
        retained: frozenset[tuple[str, str]] = frozenset(),
        served: GatewayConfig | None,
    ) -> None:
        """Apply each wanted backend object that is missing or differs from its live
        version; delete the backend objects that no role wants any more and that serve no
        role either (``retained``: (namespace, name) of backends still serving a role
        during its rollout to another; and every backend the config the gateway serves,
        ``served``, still names), once they have been unused for ``release_s``: the config
        that moved their roles elsewhere reaches the gateway, and their calls in flight
        finish, first (a pass after :meth:`due` deletes them). ``served`` None: the config
        Secret could not be read, so nothing is deleted.

        A backend whose objects the API server refuses (4xx: a quota, a bad value) is
        recorded in :attr:`refused` (its roles say ``ApplyFailed``); the others go on.

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble; what was
                done stays done, the next pass does the rest.
        """
        index = {
            (kind, namespace, str(body["metadata"]["name"])): body
            for namespace, found in live.items()
            for kind, field in _KINDS.items()
            for body in getattr(found, field)
        }
        keep = set(retained) | {
            (rc.upstream.backend.namespace, rc.upstream.backend.service)
            for rc in (served.roles if served is not None else ())
            if rc.upstream.backend is not None
        }
        for want in wanted:
            keep.add((want.namespace, want.name))
            self.namespaces.add(want.namespace)
            try:
                await self._apply(want, index)
            except ApiException as exc:
                if not 400 <= (exc.status or 0) < 500 or exc.status in (401, 403, 429):
                    raise  # the API server's trouble, or ours: retried by the pass
                self.refused[(want.namespace, want.name)] = describe(exc)
                log.warning("backend %s/%s refused: %s", want.namespace, want.name, exc.reason)
            else:
                self.refused.pop((want.namespace, want.name), None)
        if served is None:
            return
        now = time.monotonic()
        # An object being deleted (a claim waits for its pods to go) is gone already.
        index = {k: b for k, b in index.items() if not b["metadata"].get("deletionTimestamp")}
        unused = {
            (ns, _backend_of(body)) for (kind, ns, _), body in index.items() if kind != "Pod"
        } - keep
        self._unused = {key: self._unused.get(key, now) for key in unused}
        for (kind, namespace, name), body in sorted(index.items()):
            owner = _backend_of(body)
            if kind == "Pod" or (namespace, owner) in keep:
                continue
            if now - self._unused[(namespace, owner)] < self.release_s:
                continue
            await self.kube.delete_backend_object(kind, namespace, name)
            log.info("deleted %s %s/%s: no role uses backend %s", kind, namespace, name, owner)
