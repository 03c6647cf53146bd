"""The event loop of the harness's own processes (upstream, load generator): uvloop.

uvloop makes the harness cheaper on the shared CPU, which helps every target alike; it is
never imposed on a measured proxy (each runs the loop its own CLI chooses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_loop"]


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
