"""The ``BackendReady`` condition of a ``serve:`` role, from what the API says of its backend.

Pure. Reads the backend's Deployment, its pods and its cache claim as the API returns them
(camelCase dicts) and says, with Kubernetes' own words where it has them:

- ``ApplyFailed``: the API server refused the backend's objects (its message: a quota, a
  PodSecurity level, a value it cannot take);
- ``Available`` (True): at least one pod is available (ready for ``minReadySeconds``);
- ``ScaledToZero``: ``serve.replicas`` is 0;
- ``ImagePullFailed``: a container waits in ``ErrImagePull``/``ImagePullBackOff``/
  ``InvalidImageName`` (the kubelet's message: registry, tag, credentials);
- ``CrashLooping``: a container waits in ``CrashLoopBackOff`` (with its last exit);
- ``Unschedulable``: a pod's ``PodScheduled`` condition is False, with the scheduler's
  message (``0/4 nodes are available: 2 Insufficient nvidia.com/gpu, ...``);
- ``CachePending``: the cache claim is not bound (a missing StorageClass stalls everything:
  KubeAI #286);
- ``FailedCreate``: the ReplicaSet cannot create pods (the Deployment's ``ReplicaFailure``
  condition: a ResourceQuota, a PodSecurity level that refuses root);
- ``ProgressDeadlineExceeded``: the Deployment gave up (past ``startupSeconds`` + 300 s);
- ``Progressing``: pods are starting (pulling the image, loading the model), with counts.

The first that applies, in this order, is the reason: a problem of some pod outranks the
slow progress of the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rolegate_gateway.api import ConditionStatus
from rolegate_operator.render.check import Check

__all__ = ["BackendState", "backend_check"]

_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the API holds of one backend (raw objects; None: not there)."""

    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    claim: Mapping[str, Any] | None = None
    #: Why the operator's last apply of the backend's objects was refused, if it was.
    apply_error: str | None = None


def _false(reason: str, message: str) -> Check:
    return Check(ConditionStatus.FALSE, reason, message)


def _waiting(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(pod name, container name, container status) of every container status."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        name = str((pod.get("metadata") or {}).get("name", ""))
        for key in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(key) or ():
                out.append((name, str(container.get("name", "")), container))
    return out


def _container_problem(pods: Sequence[Mapping[str, Any]]) -> Check | None:
    for pod, name, container in _waiting(pods):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _PULL_FAILURES:
            detail = waiting.get("message") or reason
            return _false(
                "ImagePullFailed",
                f"pod {pod}: container {name} cannot pull image "
                f"{container.get('image', '')}: {detail}",
            )
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            exit_code = last.get("exitCode")
            why = last.get("reason") or "Error"
            return _false(
                "CrashLooping",
                f"pod {pod}: container {name} keeps exiting (last: {why}, exit code "
                f"{exit_code}, {container.get('restartCount', 0)} restarts); see "
                f"`kubectl logs -p {pod} -c {name}`",
            )
    return None


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> Check | None:
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or ():
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                name = (pod.get("metadata") or {}).get("name", "")
                message = condition.get("message") or condition.get("reason") or "not scheduled"
                return _false("Unschedulable", f"pod {name}: {message}")
    return None


def _claim_pending(claim: Mapping[str, Any] | None) -> Check | None:
    if claim is None or (claim.get("status") or {}).get("phase") == "Bound":
        return None
    name = (claim.get("metadata") or {}).get("name", "")
    storage_class = (claim.get("spec") or {}).get("storageClassName")
    which = f"StorageClass {storage_class!r}" if storage_class else "the default StorageClass"
    return _false(
        "CachePending",
        f"PersistentVolumeClaim {name} is not bound: {which} has not provided a volume "
        f"(see `kubectl describe pvc {name}`; is there such a StorageClass?)",
    )


def _replica_failure(deployment: Mapping[str, Any]) -> Check | None:
    failure = _deployment_condition(deployment, "ReplicaFailure")
    if failure.get("status") != "True":
        return None
    return _false(
        "FailedCreate",
        f"pods cannot be created: {failure.get('message') or failure.get('reason', '')}",
    )


def _deployment_condition(deployment: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in (deployment.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return {}


def backend_check(name: str, state: BackendState) -> Check:
    """``BackendReady`` of a role served by backend ``name`` (see the module's reasons)."""
    deployment = state.deployment
    if state.apply_error is not None:
        return _false("ApplyFailed", f"backend {name}: {state.apply_error}")
    if deployment is None:
        return Check(
            ConditionStatus.UNKNOWN, "Progressing", f"backend {name}: Deployment being created"
        )
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    available = int(status.get("availableReplicas") or 0)
    if desired == 0:
        return _false("ScaledToZero", f"backend {name}: serve.replicas is 0, no pod serves")
    current = (deployment.get("metadata") or {}).get("generation") == status.get(
        "observedGeneration"
    )
    if available > 0 and current:
        return Check(
            ConditionStatus.TRUE,
            "Available",
            f"backend {name}: {available}/{desired} pods available",
        )
    problem = (
        _container_problem(state.pods)
        or _unschedulable(state.pods)
        or _claim_pending(state.claim)
        or _replica_failure(deployment)
    )
    if problem is not None:
        return problem
    progressing = _deployment_condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return _false(
            "ProgressDeadlineExceeded",
            f"backend {name}: {progressing.get('message', '')} (serve.startupSeconds + 300 s)",
        )
    ready = int(status.get("readyReplicas") or 0)
    return _false(
        "Progressing",
        f"backend {name}: {ready}/{desired} pods ready; starting (pulling the image, loading "
        "the model)",
    )
