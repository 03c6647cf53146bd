"""``UpstreamReady`` of a role: what the live gateway replicas say of its upstream. Pure.

Each gateway replica checks the upstream of every role it serves (does ``GET /models``
list the role's model? ``rolegate_gateway.health``) and publishes the verdicts in its Lease
(``rolegate_gateway.upstream_report``). :func:`upstream_check` combines the live replicas'
that serve the role's current config (a replica still on an older config judged an older
upstream and is not asked):

- **worst wins**: any replica's False (``Unauthorized``, then ``ModelNotServed``, then
  ``Unreachable``, in that order when replicas differ) is the condition, its message naming
  the replica and how many of them say so. A client's call goes to any replica, so one
  replica that cannot reach the upstream (its node's network, DNS) fails a share of calls;
- else, when at least one replica gave a definite verdict (all of them ``Reachable``), True
  ``Reachable``: replicas that have not checked it (a replica just started, before its
  first round; one that left it out of its Lease for size, or does not check upstreams)
  are not counted, so a replica starting does not flip a healthy role to Unknown;
- else (no replica has checked it) Unknown ``NotChecked``.

With no live replica serving the role, or the replicas not known, it is Unknown
``NotChecked``. ``UpstreamReady`` does not change routing and is not part of ``Ready``.
"""

from __future__ import annotations

from collections.abc import Iterable

from rolegate_gateway.api import ConditionStatus
from rolegate_gateway.leases import Report
from rolegate_gateway.probes import State
from rolegate_operator.render.check import Check

__all__ = ["NOT_CHECKED", "UPSTREAM_READY", "upstream_check"]

#: The condition type.
UPSTREAM_READY = "UpstreamReady"
#: The reason of an Unknown ``UpstreamReady``.
NOT_CHECKED = str(State.NOT_CHECKED)
#: False states, worst first.
_WORST = (State.UNAUTHORIZED, State.MODEL_NOT_SERVED, State.UNREACHABLE)


def upstream_check(
    name: str,
    role_hash: str,
    *,
    config_hash: str,
    reports: Iterable[Report] | None,
    unknown: str | None = None,
) -> Check:
    """``UpstreamReady`` of the role ``name`` served as ``role_hash`` (its
    ``RoleConfig.hash``) in the config ``config_hash``, from the live replicas' ``reports``
    (None: the replicas are not known, ``unknown`` says why)."""
    if reports is None:
        why = unknown or "the gateway replicas are not known"
        return Check(ConditionStatus.UNKNOWN, NOT_CHECKED, why)
    said: list[tuple[str, State, str]] = []  # (replica, state, message)
    for report in reports:
        if not report.serves(name, role_hash, config_hash=config_hash):
            continue
        replica = report.holder or report.name
        if report.upstream is None:
            said.append((replica, State.NOT_CHECKED, "this replica does not check upstreams"))
            continue
        verdict = report.upstream.verdict(name)
        if verdict is None:
            message = "left out of its Lease (too many roles not Reachable to list; see /status)"
            said.append((replica, State.NOT_CHECKED, message))
            continue
        said.append((replica, *verdict))
    if not said:
        message = "no live gateway replica serves this role's config yet"
        return Check(ConditionStatus.UNKNOWN, NOT_CHECKED, message)
    total = len(said)
    for state in _WORST:
        found = [(replica, message) for replica, s, message in said if s is state]
        if found:
            replica, message = found[0]
            return Check(
                ConditionStatus.FALSE,
                str(state),
                f"{message} (gateway replica {replica}; {len(found)} of {total} replicas "
                f"say {state})",
            )
    unchecked = [(replica, message) for replica, s, message in said if s is State.NOT_CHECKED]
    checked = total - len(unchecked)
    if not checked:
        replica, message = unchecked[0]
        return Check(
            ConditionStatus.UNKNOWN,
            NOT_CHECKED,
            f"{message} (gateway replica {replica}; {len(unchecked)} of {total} replicas)",
        )
    # The operator does not know whether the model was judged (azure_openai deployments
    # and anthropic -latest aliases are not): say only what holds in every case.
    message = (
        f"the upstream answered its check with the role's credentials, as {checked} of "
        f"{total} gateway replicas see it"
    )
    if unchecked:
        message += f" ({len(unchecked)} not checked yet)"
    return Check(ConditionStatus.TRUE, str(State.REACHABLE), message)
