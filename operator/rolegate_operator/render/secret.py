"""The gateway's config Secret, as a manifest. Pure."""

from __future__ import annotations

import base64
from typing import Any

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import CONFIG_KEY, HASH_ANNOTATION

__all__ = ["MANAGED_BY", "config_secret"]

#: ``app.kubernetes.io/managed-by`` of what the operator writes.
MANAGED_BY = "rolegate-operator"


def config_secret(config: GatewayConfig, *, namespace: str, name: str) -> dict[str, Any]:
    """The Secret holding ``config`` (key ``config.json``, its hash as an annotation).

    The credentials of every served role are in it: RBAC should let only the gateway's
    ServiceAccount read it.
    """
    return {
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
