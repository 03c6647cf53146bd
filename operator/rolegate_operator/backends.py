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


def states(live: Mapping[str, BackendObjects]) -> dict[tuple[str, str], render.BackendState]:
    """What the API holds of each backend, by (namespace, backend name)."""
    out: dict[tuple[str, str], render.BackendState] = {}
    for namespace, found in live.items():
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in found.pods:
            pods.setdefault(_backend_of(pod), []).append(pod)
        claims = {_backend_of(c): c for c in found.claims}
        for deployment in found.deployments:
            name = _backend_of(deployment)
            out[(namespace, name)] = render.BackendState(
                deployment=deployment, pods=tuple(pods.get(name, ())), claim=claims.get(name)
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
    ) -> None:
        """Apply each wanted backend object that is missing or differs from its live
        version; delete the backend objects that no role wants any more and that serve no
        role either (``retained``: (namespace, name) of backends still serving a role
        during its rollout to another), once they have been unused for ``release_s``: the
        config this pass writes, which moves their roles elsewhere, reaches the gateway
        first (a pass after :meth:`due` deletes them).

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
        keep = set(retained)
        for want in wanted:
            keep.add((want.namespace, want.name))
            self.namespaces.add(want.namespace)
            for body in backend.manifests(want):
                name = body["metadata"]["name"]
                current = index.get((body["kind"], want.namespace, name))
                # Items of a list carry no apiVersion and kind: compare the rest.
                compared = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
                why = "missing" if current is None else backend.difference(compared, current)
                if why is not None:
                    await self.kube.apply(body)
                    log.info("applied %s %s/%s (%s)", body["kind"], want.namespace, name, why)
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
