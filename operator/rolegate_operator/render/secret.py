"""The gateway's config Secret, as a manifest. Pure."""

from __future__ import annotations

from typing import Any

from rolegate_gateway import secret_data
from rolegate_gateway.api import ConditionStatus
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import HASH_ANNOTATION
from rolegate_operator.render.check import Check

__all__ = ["MANAGED_BY", "config_secret", "oversize"]

#: ``app.kubernetes.io/managed-by`` of what the operator writes.
MANAGED_BY = "rolegate-operator"


def config_secret(
    config: GatewayConfig,
    *,
    namespace: str,
    name: str,
    owner: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The Secret holding ``config`` (key ``config.json.gz``: :func:`secret_data.encode`;
    its hash as an annotation);
    ``owner`` (name, uid) of a ServiceAccount of ``namespace`` becomes its owner reference,
    so that Kubernetes' garbage collector deletes the Secret with that ServiceAccount
    (https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents).

    The credentials of every served role are in it: RBAC should let only the gateway's
    ServiceAccount read it. Its data may be more than a Secret holds
    (:func:`secret_data.stored_bytes` over :data:`secret_data.SECRET_MAX_BYTES`): the caller
    checks before writing.
    """
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/component": "gateway-config",
            },
            "annotations": {HASH_ANNOTATION: config.hash},
        },
        "data": secret_data.encode(config.to_wire()),
    }
    if owner is not None:
        owner_name, uid = owner
        body["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "name": owner_name, "uid": uid}
        ]
    return body


def oversize(body: dict[str, Any], *, roles: int) -> Check | None:
    """``Ready=False, ConfigTooLarge`` when the config Secret ``body`` (of ``roles`` roles)
    holds more than the API server lets a Secret hold, else None.

    Such a Secret is not written: the API server would refuse it (422) on every try, and the
    gateway keeps serving the config it has.
    """
    size = secret_data.stored_bytes(body["data"])
    if size <= secret_data.SECRET_MAX_BYTES:
        return None
    return Check(
        ConditionStatus.FALSE,
        "ConfigTooLarge",
        f"the gateway config of {roles} roles is {size} bytes gzipped, more than the "
        f"{secret_data.SECRET_MAX_BYTES} bytes (1 MiB) a Secret holds: it is not written "
        "and the gateway keeps serving its previous config; serve fewer roles per gateway "
        "(another operator and gateway for some namespaces) or remove roles",
    )
