"""One ``coordination.k8s.io/v1`` Lease's reads and writes over the API, as raw JSON.

Owns :class:`LeaseApi` and :func:`micro_now`, shared by the two writers of Leases: the
operator's leader elector (``rolegate_operator.leader``) and each gateway replica's presence
(``rolegate_gateway.presence``). What to write, and what a conflict means, is theirs.
Every call has a request timeout: a half-open connection must not hold a renewal past its
deadline. Reference: https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/lease-v1/
"""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway.kube import answer_json

__all__ = ["LeaseApi", "micro_now"]


def micro_now() -> str:
    """Now as a Lease's ``acquireTime``/``renewTime`` (a metav1.MicroTime: RFC 3339, UTC,
    microseconds), for people reading ``kubectl get lease -o yaml``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    """The Lease ``namespace/name``: get, create, replace, delete.

    Raises (every call): ``ApiException`` for an HTTP error status (409 on create: it
    exists; on replace or delete: it changed since the resourceVersion given),
    ``aiohttp.ClientError`` / ``OSError`` / ``TimeoutError`` when the API server does not
    answer within ``timeout_s`` seconds.
    """

    def __init__(self, coordination: client.CoordinationV1Api, namespace: str, name: str) -> None:
        self.coordination = coordination
        self.namespace, self.name = namespace, name

    async def get(self, *, timeout_s: float) -> dict[str, Any] | None:
        """The raw Lease, or None when it does not exist."""
        try:
            return await answer_json(
                self.coordination.read_namespaced_lease(
                    self.name, self.namespace, _preload_content=False, _request_timeout=timeout_s
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create(
        self, spec: dict[str, Any], *, timeout_s: float, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create the Lease with ``spec`` (and ``metadata`` beside its name: labels,
        annotations); returns it as stored."""
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**(metadata or {}), "name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        return await answer_json(
            self.coordination.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=timeout_s
            )
        )

    async def replace(self, lease: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Replace the Lease with ``lease`` (a whole Lease; only at its
        ``metadata.resourceVersion`` when it has one); returns it as stored."""
        body: Any = lease
        return await answer_json(
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout_s
            )
        )

    async def delete(self, resource_version: str, *, timeout_s: float) -> None:
        """Delete the Lease, only if it is still at ``resource_version`` (a precondition:
        nobody wrote it since)."""
        options: Any = {"preconditions": {"resourceVersion": resource_version}}
        await answer_json(
            self.coordination.delete_namespaced_lease(
                self.name,
                self.namespace,
                body=options,
                _preload_content=False,
                _request_timeout=timeout_s,
            )
        )
