"""Pure renderers: typed values in, dicts out; no I/O, no kopf, no globals, no clock."""

from rolegate_operator.render.config import (
    Check,
    Outcome,
    Rendered,
    RoleObject,
    SecretKey,
    render,
)
from rolegate_operator.render.events import event
from rolegate_operator.render.secret import config_secret
from rolegate_operator.render.status import Transition, desired_status, transitions

__all__ = [
    "Check",
    "Outcome",
    "Rendered",
    "RoleObject",
    "SecretKey",
    "Transition",
    "config_secret",
    "desired_status",
    "event",
    "render",
    "transitions",
]
