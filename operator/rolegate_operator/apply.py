"""Kubernetes API calls of the operator: the config Secret, role status, Events.

Owns every write the operator makes, and nothing else: what to write comes from
``render``. Bodies are plain dicts (camelCase, as the API has them). A write is made only
by the caller's decision; this module does not compare.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import kube
from rolegate_gateway.api import GROUP, VERSION

__all__ = ["PLURAL", "Kube"]

#: The plural resource name of LLMRole.
PLURAL = "llmroles"

_TIMEOUT_S = 30  # one API request; the API server answers in milliseconds when healthy
# Keyword arguments the client takes but its type stubs do not name.
_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


def _raw(body: dict[str, Any]) -> Any:
    """A raw dict body where the client's stubs ask for its model class (it takes both)."""
    return body


class Kube:
    """The operator's API calls, over one :class:`kubernetes_asyncio.client.ApiClient`.

    Raises (every method): ``kubernetes_asyncio.client.exceptions.ApiException`` for an
    API error, ``aiohttp.ClientError`` / ``OSError`` when the API server is unreachable.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.events = client.EventsV1Api(api)
        #: Writes made, by kind ("secret", "status", "event"): for logs and tests.
        self.writes: dict[str, int] = {"secret": 0, "status": 0, "event": 0}

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as a raw dict, or None when it does not exist."""
        return await kube.read_secret(self.core, namespace, name, timeout_s=_TIMEOUT_S)

    async def write_secret(self, body: dict[str, Any], *, current: dict[str, Any] | None) -> None:
        """Create ``body``, or replace ``current`` with it (optimistically: a concurrent
        change makes this fail with 409 and the caller retries from a fresh read)."""
        meta = body["metadata"]
        # The answer (the whole Secret) is not decoded or kept: it holds every key.
        if current is None:
            await self.core.create_namespaced_secret(
                meta["namespace"], _raw(body), _preload_content=False, _request_timeout=_TIMEOUT_S
            )
        else:
            replacement = {
                **body,
                "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            await self.core.replace_namespaced_secret(
                meta["name"],
                meta["namespace"],
                _raw(replacement),
                _preload_content=False,
                _request_timeout=_TIMEOUT_S,
            )
        self.writes["secret"] += 1

    async def patch_status(
        self, namespace: str, name: str, uid: str, status: dict[str, Any]
    ) -> bool:
        """Merge-patch an LLMRole's status subresource (lists, e.g. conditions, replaced
        whole), on the object with ``uid`` only (a precondition). False when that object is
        gone (deleted, or deleted and created anew): not an error, the next pass sees it."""
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"uid": uid}, "status": status},
                _request_timeout=_TIMEOUT_S,
                **_MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        self.writes["status"] += 1
        return True

    async def post_event(self, body: dict[str, Any]) -> None:
        """Create an events.k8s.io/v1 Event."""
        await self.events.create_namespaced_event(
            body["metadata"]["namespace"], _raw(body), _request_timeout=_TIMEOUT_S
        )
        self.writes["event"] += 1
