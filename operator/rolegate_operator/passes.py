"""What a reconcile pass reports and the small values it is built from: :class:`Pass`
(what one pass did), :class:`Written` (a status this operator wrote, while its watch lags),
:class:`TooLarge` (a config past what a Secret holds) and the timestamps of statuses and
Events. Pure."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from rolegate_gateway.api import ConditionStatus
from rolegate_gateway.kube import describe
from rolegate_operator import render

__all__ = ["Pass", "TooLarge", "Written", "not_written", "now", "seconds"]


@dataclass(frozen=True, slots=True)
class Pass:
    """What one reconcile did; ``list_s`` is the seconds its fresh lists took (None: it read
    the store only), ``took_s`` the seconds the whole pass took."""

    roles: int
    served: int
    config_hash: str
    wrote_config: bool
    statuses_written: int
    events_posted: int
    list_s: float | None = None
    took_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Written:
    """A status this operator wrote: on the role with ``uid``, making it ``version``; the
    store's view of the role is behind it while at one of the versions in ``behind``."""

    uid: str
    behind: frozenset[str]
    version: str
    status: dict[str, Any]


class TooLarge(Exception):
    """The rendered config Secret is larger than a Secret may be: not written."""

    def __init__(self, check: render.Check) -> None:
        super().__init__(check.message)
        self.check = check


def not_written(exc: BaseException, namespace: str, name: str) -> render.Check:
    """``Ready=Unknown, ConfigNotWritten`` for a config Secret the API refused to take."""
    message = f"the gateway config Secret {namespace}/{name} could not be written: {describe(exc)}"
    return render.Check(ConditionStatus.UNKNOWN, "ConfigNotWritten", message)


def now() -> str:
    """RFC 3339 in UTC with microseconds (a metav1.MicroTime): 2026-11-21T10:00:00.123456Z."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds(stamp: str) -> str:
    """A MicroTime to whole seconds, as metav1.Time is written (2026-11-21T10:00:00Z)."""
    return stamp.split(".")[0] + "Z"
