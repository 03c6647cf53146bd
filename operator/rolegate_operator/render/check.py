"""One condition's verdict before it is timed. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from rolegate_gateway.api import ConditionStatus

__all__ = ["Check"]


@dataclass(frozen=True, slots=True)
class Check:
    """The status, CamelCase reason and message of one condition, before it is timed."""

    status: ConditionStatus
    reason: str
    message: str
