"""Status of an LLMRole: conditions, observedGeneration, endpoint, configHash, gateways.

Pure. Owns the condition rules kopf does not give us (STYLE rule 9): positive types only
(``Ready``, ``CredentialsResolved``, ``BackendReady``, ``UpstreamReady``), each with a
CamelCase reason, a message a person can act on and the generation it was computed from;
``lastTransitionTime`` moves only when a condition's status flips, so an unchanged role
renders exactly the status it already has and the operator writes nothing.
Reference: https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rolegate_gateway.api import Condition, ConditionStatus, LLMRoleStatus
from rolegate_operator.render.check import Check
from rolegate_operator.render.config import Outcome
from rolegate_operator.render.upstream import UPSTREAM_READY

__all__ = ["CONDITION_TYPES", "PROGRESS_REASONS", "Transition", "desired_status", "transitions"]

#: The condition types, in the order they are listed (BackendReady: serve: roles only;
#: UpstreamReady: roles in the gateway config only).
CONDITION_TYPES = ("Ready", "CredentialsResolved", "BackendReady", UPSTREAM_READY)
#: Reasons of a False condition that say a change is under way, not that something is wrong.
PROGRESS_REASONS = frozenset({"RollingOut"})


@dataclass(frozen=True, slots=True)
class Transition:
    """A condition whose status flipped: worth a Kubernetes Event."""

    condition: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """True when the role got worse (an Event of type Warning); a rollout under way
        (reason ``RollingOut``: a new backend or the gateway replicas catching up) is
        progress, a Normal Event, as a Deployment's rollout is."""
        return self.status != ConditionStatus.TRUE and self.reason not in PROGRESS_REASONS


def _previous(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found = status.get("conditions")
    if not isinstance(found, list):
        return {}
    return {c["type"]: c for c in found if isinstance(c, Mapping) and "type" in c}


def _condition(
    kind: str, check: Check, before: Mapping[str, Any] | None, *, generation: int, now: str
) -> Condition:
    same = before is not None and before.get("status") == check.status
    since = str(before.get("lastTransitionTime")) if same and before else now
    return Condition(
        type=kind,
        status=check.status,
        reason=check.reason,
        message=check.message,
        last_transition_time=since,
        observed_generation=generation,
    )


def desired_status(
    outcome: Outcome, *, now: str, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The status the role should have, as its wire dict (camelCase).

    ``now`` (RFC 3339, e.g. ``2026-11-21T10:00:00Z``) stamps conditions whose status
    flipped; others keep their ``lastTransitionTime`` from ``previous`` (default: the
    role's status as last seen).
    """
    role = outcome.role
    before = _previous(role.status if previous is None else previous)
    checks = {
        "Ready": outcome.ready,
        "CredentialsResolved": outcome.credentials,
        "BackendReady": outcome.backend_ready,
        UPSTREAM_READY: outcome.upstream,
    }
    status = LLMRoleStatus(
        observed_generation=role.generation,
        conditions=[
            _condition(k, check, before.get(k), generation=role.generation, now=now)
            for k in CONDITION_TYPES
            if (check := checks[k]) is not None
        ],
        endpoint=outcome.endpoint,
        backend=outcome.shown_backend,
        config_hash=outcome.config.hash if outcome.config else "",
        gateways=outcome.gateways,
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def transitions(current: Mapping[str, Any], desired: Mapping[str, Any]) -> Sequence[Transition]:
    """The conditions whose status or reason differs between two statuses (new ones too).

    ``UpstreamReady`` is told only when it turns False (or changes reason while False) and
    when it turns True from False or Unknown: Unknown (not checked yet, which every rebind
    passes through for a moment) is no news, but the verdict after it is (a rebind from a
    model that was not served, through Unknown, to one that is, is a recovery)."""
    before = _previous(current)
    out = []
    for kind, cond in _previous(desired).items():
        old = before.get(kind)
        if old is None or (old.get("status"), old.get("reason")) != (
            cond["status"],
            cond["reason"],
        ):
            if kind == UPSTREAM_READY and not _upstream_news(old, cond):
                continue
            out.append(Transition(kind, cond["status"], cond["reason"], cond["message"]))
    return out


def _upstream_news(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether an ``UpstreamReady`` that changed status or reason (``old`` -> ``new``) is
    worth an Event: turning False or changing reason while False; True after False or
    Unknown (not for a role whose first status already says True)."""
    if new["status"] == ConditionStatus.FALSE:
        return True
    if new["status"] == ConditionStatus.TRUE:
        return old is not None and old.get("status") != ConditionStatus.TRUE
    return False
