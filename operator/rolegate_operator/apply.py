"""Kubernetes API calls of the operator: the config Secret, role status, Events, and the
full lists a resync reads.

Owns every API call the operator makes outside kopf's watches, and nothing else: what to
write comes from ``render``. Bodies are plain dicts (camelCase, as the API has them), read
without the client's model classes. A write is made only by the caller's decision; this
module does not compare.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import kube
from rolegate_gateway.api import GROUP, VERSION
from rolegate_operator.render.backend import FIELD_MANAGER, SELECTOR

__all__ = ["PLURAL", "BackendObjects", "Kube", "WriteGuard"]

#: The plural resource name of LLMRole.
PLURAL = "llmroles"

_TIMEOUT_S = 30  # one API request; the API server answers in milliseconds when healthy
#: Objects per page of a list (a 1,000-role list is two pages; each page is one snapshot).
LIST_PAGE = 500
# Keyword arguments the client takes but its type stubs do not name.
_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


_APPLY: dict[str, Any] = {
    "_content_type": "application/apply-patch+yaml",  # JSON is YAML
    "field_manager": FIELD_MANAGER,
    "force": True,  # the operator owns these objects; a hand edit is put right
}


class WriteGuard(Protocol):
    """Whether this process may write now (``leader.LeaseGuard``: it holds a freshly
    renewed Lease). ``check`` is called right before every write is sent, so it is cheap."""

    def check(self) -> None:
        """Return when a write may be sent; raise (any exception) when not."""


@dataclass(frozen=True, slots=True)
class BackendObjects:
    """Every backend object of one namespace (label :data:`render.backend.SELECTOR`), raw."""

    deployments: list[dict[str, Any]]
    services: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    pods: list[dict[str, Any]]


def _raw(body: dict[str, Any]) -> Any:
    """A raw dict body where the client's stubs ask for its model class (it takes both)."""
    return body


async def _checked(call: Awaitable[Any]) -> dict[str, Any]:
    """The decoded JSON answer of a ``_preload_content=False`` call.

    With that option the client raises nothing for an HTTP error status, so this does
    (without the body's message for a Secret's sake: only the status and reason).

    Raises:
        ApiException: an HTTP error status.
    """
    response = cast(Any, await call)
    async with response:
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason)
        body: dict[str, Any] = await response.json()
        return body


class Kube:
    """The operator's API calls, over one :class:`kubernetes_asyncio.client.ApiClient`.

    Raises (every method): ``kubernetes_asyncio.client.exceptions.ApiException`` for an
    API error, ``aiohttp.ClientError`` / ``OSError`` when the API server is unreachable;
    every write, what ``guard.check()`` raises (``leader.NotLeader``) before it is sent.
    ``guard`` None: every write is allowed (no leader election).
    """

    def __init__(self, api: client.ApiClient, *, guard: WriteGuard | None = None) -> None:
        self.api = api
        self.guard = guard
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.events = client.EventsV1Api(api)
        self.apps = client.AppsV1Api(api)
        #: Writes made, by kind ("secret", "status", "event", "backend": an apply or delete
        #: of a backend object): for logs and tests.
        self.writes: dict[str, int] = {"secret": 0, "status": 0, "event": 0, "backend": 0}

    def _may_write(self) -> None:
        """Raise unless the guard allows a write now (one attribute read and a compare)."""
        if self.guard is not None:
            self.guard.check()

    async def api_resources(self, group: str, version: str) -> set[str]:
        """The resource names (plurals and subresources, e.g. ``llmroles/status``) the API
        server serves under ``/apis/<group>/<version>``; raises ApiException 404 when it
        serves no such group version."""
        listing = await self.custom.get_api_resources(group, version, _request_timeout=_TIMEOUT_S)
        return {resource.name for resource in listing.resources or ()}

    async def service_account_uid(self, namespace: str, name: str) -> str | None:
        """The uid of ServiceAccount ``namespace/name``, or None when it does not exist."""
        try:
            account = await self.core.read_namespaced_service_account(
                name, namespace, _request_timeout=_TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        uid: str = account.metadata.uid
        return uid

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as a raw dict, or None when it does not exist."""
        return await kube.read_secret(self.core, namespace, name, timeout_s=_TIMEOUT_S)

    async def write_secret(self, body: dict[str, Any], *, current: dict[str, Any] | None) -> None:
        """Create ``body``, or replace ``current`` with it (optimistically: a concurrent
        change makes this fail with 409 and the caller retries from a fresh read)."""
        self._may_write()
        meta = body["metadata"]
        # The answer (the whole Secret) is not decoded or kept: it holds every key.
        if current is None:
            call = self.core.create_namespaced_secret(
                meta["namespace"], _raw(body), _preload_content=False, _request_timeout=_TIMEOUT_S
            )
        else:
            replacement = {
                **body,
                "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            call = self.core.replace_namespaced_secret(
                meta["name"],
                meta["namespace"],
                _raw(replacement),
                _preload_content=False,
                _request_timeout=_TIMEOUT_S,
            )
        response = cast(Any, await call)
        async with response:
            if response.status >= 400:  # 409: changed meanwhile; the caller reads again
                raise ApiException(status=response.status, reason=response.reason)
        self.writes["secret"] += 1

    async def patch_status(
        self, namespace: str, name: str, *, resource_version: str, status: dict[str, Any]
    ) -> str | None:
        """Merge-patch an LLMRole's status subresource (lists, e.g. conditions, replaced
        whole), on the object at ``resource_version`` only; returns the object's new
        resourceVersion.

        The precondition is ``metadata.resourceVersion`` in the patch: the API server
        refuses the update with 409 Conflict unless the object is still at that version, on
        the status subresource too (a ``metadata.uid`` in a status patch is silently
        dropped, not checked). So a status rendered from an older view never lands: not on
        a role changed meanwhile, and not on a role deleted and created anew with the same
        name. None when refused so (409) or gone (404): not an error, the next pass renders
        from a newer view.
        """
        self._may_write()
        try:
            answer = await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"resourceVersion": resource_version}, "status": status},
                _request_timeout=_TIMEOUT_S,
                **_MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        self.writes["status"] += 1
        return str(cast(dict[str, Any], answer)["metadata"]["resourceVersion"])

    async def list_roles(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every LLMRole in ``namespace`` (None: all namespaces), raw, and the list's
        resourceVersion (a consistent read, in pages of :data:`LIST_PAGE`)."""
        if namespace is None:
            return await self._list(
                lambda **kw: self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)
            )
        return await self._list(
            lambda **kw: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **kw
            )
        )

    async def list_secrets(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every Secret in ``namespace`` (None: all namespaces), raw (``data`` base64: keep
        only what is needed), and the list's resourceVersion."""
        if namespace is None:
            return await self._list(lambda **kw: self.core.list_secret_for_all_namespaces(**kw))
        return await self._list(lambda **kw: self.core.list_namespaced_secret(namespace, **kw))

    async def _list(self, call: Callable[..., Awaitable[Any]]) -> tuple[list[dict[str, Any]], str]:
        """All pages of one list call; the resourceVersion is the first page's (every page
        of one list is the same snapshot).

        Raises:
            ApiException: an HTTP error (410: the continue token expired; the caller lists
                again on its next pass).
        """
        items: list[dict[str, Any]] = []
        version = ""
        token: str | None = None
        while True:
            page = await _checked(
                call(
                    limit=LIST_PAGE,
                    _continue=token,
                    _preload_content=False,
                    _request_timeout=_TIMEOUT_S,
                )
            )
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            items.extend(page.get("items") or [])
            token = meta.get("continue") or None
            if token is None:
                return items, version

    async def post_event(self, body: dict[str, Any]) -> None:
        """Create an events.k8s.io/v1 Event."""
        self._may_write()
        await self.events.create_namespaced_event(
            body["metadata"]["namespace"], _raw(body), _request_timeout=_TIMEOUT_S
        )
        self.writes["event"] += 1

    async def list_backend_objects(self, namespace: str) -> BackendObjects:
        """The Deployments, Services, PersistentVolumeClaims and Pods of the backends in
        ``namespace`` (label selector :data:`~rolegate_operator.render.backend.SELECTOR`)."""
        selector = {"label_selector": SELECTOR}

        async def each(call: Callable[..., Awaitable[Any]]) -> list[dict[str, Any]]:
            items, _ = await self._list(lambda **kw: call(namespace, **selector, **kw))
            return items

        return BackendObjects(
            deployments=await each(self.apps.list_namespaced_deployment),
            services=await each(self.core.list_namespaced_service),
            claims=await each(self.core.list_namespaced_persistent_volume_claim),
            pods=await each(self.core.list_namespaced_pod),
        )

    async def apply(self, body: dict[str, Any]) -> None:
        """Server-side apply ``body`` (a Deployment, Service or PersistentVolumeClaim) as
        field manager ``rolegate-operator``, taking over fields others changed
        (https://kubernetes.io/docs/reference/using-api/server-side-apply/).

        Raises:
            ApiException: refused; its ``reason`` is the API server's message.
        """
        self._may_write()
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        calls = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
        }
        patch = calls[body["kind"]]
        await kube.answer_json(  # a refusal's message says why (no secret in a backend)
            patch(
                name,
                namespace,
                _raw(body),
                _preload_content=False,
                _request_timeout=_TIMEOUT_S,
                **_APPLY,
            )
        )
        self.writes["backend"] += 1

    async def delete_backend_object(self, kind: str, namespace: str, name: str) -> None:
        """Delete a Deployment, Service or PersistentVolumeClaim (its pods go in the
        background); one already gone is no error."""
        self._may_write()
        calls = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "PersistentVolumeClaim": self.core.delete_namespaced_persistent_volume_claim,
        }
        try:
            await calls[kind](
                name,
                namespace,
                propagation_policy="Background",
                _request_timeout=_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.writes["backend"] += 1
