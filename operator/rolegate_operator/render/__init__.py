"""Pure renderers: typed values in, dicts out; no I/O, no kopf, no globals, no clock."""

from rolegate_operator.render.backend import Backend
from rolegate_operator.render.backend_status import BackendState
from rolegate_operator.render.check import Check
from rolegate_operator.render.config import (
    Outcome,
    Rendered,
    RenderMemo,
    RoleObject,
    SecretKey,
    render,
)
from rolegate_operator.render.events import event
from rolegate_operator.render.secret import config_secret, oversize
from rolegate_operator.render.status import Transition, desired_status, transitions

__all__ = [
    "Backend",
    "BackendState",
    "Check",
    "Outcome",
    "RenderMemo",
    "Rendered",
    "RoleObject",
    "SecretKey",
    "Transition",
    "config_secret",
    "desired_status",
    "event",
    "oversize",
    "render",
    "transitions",
]
