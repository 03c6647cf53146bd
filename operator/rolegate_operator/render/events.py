"""Kubernetes Events for condition transitions of an LLMRole. Pure.

Shape: events.k8s.io/v1 Event, https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/.
Messages come from conditions, which never hold a credential.
"""

from __future__ import annotations

from typing import Any

from rolegate_gateway.api import API_VERSION, KIND
from rolegate_operator.render.config import RoleObject
from rolegate_operator.render.status import Transition

__all__ = ["CONTROLLER", "event"]

#: reportingController of every Event the operator posts.
CONTROLLER = "rolegate.dev/operator"


def event(role: RoleObject, change: Transition, *, now: str, instance: str) -> dict[str, Any]:
    """The Event telling that one condition of ``role`` changed.

    ``now`` is RFC 3339 with microseconds (eventTime is a MicroTime); ``instance`` names
    this operator process (reportingInstance).
    """
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": f"{role.name}-", "namespace": role.namespace},
        "eventTime": now,
        "type": "Warning" if change.warning else "Normal",
        "reason": change.reason,
        "action": "Reconcile",
        "note": f"{change.condition}={change.status} ({change.reason}): {change.message}"[:1024],
        "reportingController": CONTROLLER,
        "reportingInstance": instance[:128],
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "namespace": role.namespace,
            "name": role.name,
            "uid": role.uid,
        },
    }
