"""The gateway's config Secret, as a manifest. Pure."""

from __future__ import annotations

import base64
from typing import Any

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import CONFIG_KEY, HASH_ANNOTATION

__all__ = ["MANAGED_BY", "config_secret"]

#: ``app.kubernetes.io/managed-by`` of what the operator writes.
MANAGED_BY = "rolegate-operator"


def config_secret(
    config: GatewayConfig,
    *,
    namespace: str,
    name: str,
    owner: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The Secret holding ``config`` (key ``config.json``, its hash as an annotation);
    ``owner`` (name, uid) of a ServiceAccount of ``namespace`` becomes its owner reference,
    so that Kubernetes' garbage collector deletes the Secret with that ServiceAccount
    (https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents).

    The credentials of every served role are in it: RBAC should let only the gateway's
    ServiceAccount read it.
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
        "data": {CONFIG_KEY: base64.b64encode(config.to_wire()).decode()},
    }
    if owner is not None:
        owner_name, uid = owner
        body["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "name": owner_name, "uid": uid}
        ]
    return body
