"""Typed application keys of the gateway's aiohttp app, in one place."""

from __future__ import annotations

from typing import Protocol

import aiohttp
from aiohttp import web

from rolegate_gateway.auth.access import Access
from rolegate_gateway.intake import Intake
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.server import ConnectionGuard

__all__ = ["ACCESS", "GUARD", "INTAKE", "RUNTIME", "SESSION", "SOURCE", "ConfigSource"]


class ConfigSource(Protocol):
    """A source of gateway configs that feeds ``Runtime.apply``/``Runtime.refuse``."""

    async def load_once(self) -> bool:
        """Load now; True when a config was handed to the runtime."""
        ...

    async def run(self) -> None:
        """Watch for changes until cancelled."""
        ...

    async def close(self) -> None:
        """Release what the source holds (connections); called once, at cleanup."""
        ...


RUNTIME = web.AppKey("runtime", Runtime)
SESSION = web.AppKey("session", aiohttp.ClientSession)
SOURCE = web.AppKey("source", ConfigSource)
INTAKE = web.AppKey("intake", Intake)
GUARD = web.AppKey("guard", ConnectionGuard)
ACCESS = web.AppKey("access", Access)
