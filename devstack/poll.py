"""Waiting for a condition that has no event to wait on: the one polling mechanism of the
local stack, for blocking code (:func:`wait_until`) and for asyncio (:func:`eventually`).

Both fail with a TimeoutError that says what was awaited and for how long.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually", "wait_until"]


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout_s: float,
    what: str = "the condition",
    poll_s: float = 0.05,
    tolerate: tuple[type[Exception], ...] = (),
    check: Callable[[], None] | None = None,
) -> float:
    """Call ``predicate`` every ``poll_s`` seconds until it returns something true; returns
    the seconds it took. Exceptions of the types in ``tolerate`` count as "not yet";
    ``check`` runs before each try and may raise to give up early (a process that died).

    Raises:
        TimeoutError: still false after ``timeout_s`` seconds.
        Exception: whatever ``check``, or ``predicate`` outside ``tolerate``, raised.
    """
    started = time.monotonic()
    while True:
        if check is not None:
            check()
        try:
            if predicate():
                return time.monotonic() - started
        except tolerate:
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


async def eventually(
    check: Callable[[], object],
    *,
    timeout_s: float = 30.0,
    what: str = "the condition",
    poll_s: float = 0.05,
) -> None:
    """Await (or call) ``check`` every ``poll_s`` seconds until it gives something true;
    ``check`` may be a plain function or return an awaitable. The bound is hard: a check
    still running when it passes is cancelled.

    Raises:
        TimeoutError: still false after ``timeout_s`` seconds.
    """
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await _awaited(result)
                if result:
                    return
                await asyncio.sleep(poll_s)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}") from None


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable
