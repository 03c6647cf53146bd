"""Asking the Kubernetes API who a client is and what it may do.

Owns :class:`KubeReviews`: one TokenReview (authentication.k8s.io/v1) and one
SubjectAccessReview (authorization.k8s.io/v1) per call, made through the gateway's API
client and read raw (``kube.answer_json``: no model classes, which would log the answer,
and a TokenReview's answer echoes the token). What the gateway's ServiceAccount needs: the
ClusterRole ``system:auth-delegator`` (create on both kinds), as kube-rbac-proxy's.

Sources: https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/
and https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/subject-access-review-v1/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from rolegate_gateway.auth.access import Identity, Review
from rolegate_gateway.kube import answer_json, api_client

__all__ = ["USE", "KubeReviews"]

#: The RBAC verb, group and resource a client needs on a role's LLMRole to call it.
USE = {"verb": "use", "group": "rolegate.dev", "resource": "llmroles"}
#: Seconds one review may take before the gateway answers 503 (fail closed).
_TIMEOUT_S = 10.0


class KubeReviews:
    """A :class:`~rolegate_gateway.auth.access.Reviewer` asking the API server:
    TokenReviews and SubjectAccessReviews through one API client (made on first use
    from ``kubeconfig``, or in-cluster config in a pod; see ``kube.load_configuration``).

    Raises (from both calls): ``kube.API_ERRORS`` when the API server cannot be reached or
    refuses the review (403: the gateway's ServiceAccount lacks ``system:auth-delegator``).
    """

    def __init__(self, kubeconfig: Path | None = None, *, audience: str = "rolegate") -> None:
        self.kubeconfig = kubeconfig
        self.audience = audience
        self._api: client.ApiClient | None = None

    async def _client(self) -> client.ApiClient:
        if self._api is None:
            self._api = await api_client(self.kubeconfig)
        return self._api

    async def token(self, token: str) -> Review:
        """Authenticate ``token`` for :attr:`audience`."""
        body: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        api = client.AuthenticationV1Api(await self._client())
        answer = await answer_json(
            api.create_token_review(body, _preload_content=False, _request_timeout=_TIMEOUT_S)
        )
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return Review(None, str(status.get("error") or "not authenticated")[:200])
        if self.audience not in (status.get("audiences") or ()):  # empty: the API server's
            return Review(None, f"the token is not for audience {self.audience!r}")
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        identity = Identity(
            user=str(user.get("username") or ""),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            uid=str(user.get("uid") or ""),
            extra=tuple(sorted((str(k), tuple(map(str, v or ()))) for k, v in extra.items())),
        )
        return Review(identity)

    async def allowed(self, identity: Identity, namespace: str, name: str) -> tuple[bool, str]:
        """(allowed, reason): may ``identity`` ``use`` the LLMRole ``namespace/name``?"""
        spec: dict[str, Any] = {
            "user": identity.user,
            "groups": list(identity.groups),
            "resourceAttributes": {**USE, "namespace": namespace, "name": name},
        }
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        body: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        api = client.AuthorizationV1Api(await self._client())
        answer = await answer_json(
            api.create_subject_access_review(
                body, _preload_content=False, _request_timeout=_TIMEOUT_S
            )
        )
        status = answer.get("status") or {}
        reason = str(status.get("reason") or status.get("evaluationError") or "")[:200]
        return bool(status.get("allowed")) and not status.get("denied"), reason

    async def close(self) -> None:
        """Close the API client, if one was made."""
        if self._api is not None:
            await self._api.close()
            self._api = None
