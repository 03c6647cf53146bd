"""One upstream call in flight: :class:`Call`, its deadline kept lazily, its drain
deadline, and the answer's tokens once known.

Owns :class:`Call`. The proxy starts one per upstream exchange
(``async with asyncio.timeout(None) as t, call.start(t, when):``); a role's wrapper holds
the ones in flight, so that a reload can cap them at its drain deadline
(``RoleWrapper.retire``); ``upstream.post`` fits its retries in ``Call.when()``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from rolegate_gateway.translators.base import Usage

__all__ = ["Call"]


@dataclass(slots=True, eq=False)
class Call:
    """One upstream call in flight: its deadline and drain deadline (loop time), the
    timeout that ends it, and the answer's tokens once known.

    The deadline moves on every chunk of a stream, twice (the write bound, then the gap
    bound), so it is kept lazily: ``due`` is where it is, and one timer is armed at or
    before it. Moving it later only writes ``due``; the timer, firing early, re-arms at
    ``due``; moving it earlier re-arms at once; past ``due`` the timer expires ``timeout``
    (its TimeoutError, as if rescheduled). ``asyncio.Timeout.reschedule`` per chunk (a
    timer cancelled, another pushed) cost ~6% of a stream's CPU, profiled.
    """

    timeout: asyncio.Timeout | None = None
    cap: float = math.inf
    drained: bool = False
    usage: Usage | None = None
    #: The deadline (loop time); None before :meth:`start`.
    due: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _armed: float = math.inf

    def start(self, timeout: asyncio.Timeout, when: float) -> Call:
        """Begin timing: ``timeout`` (entered, with no deadline of its own) expires at
        ``when`` unless :meth:`limit` moves it. Used as ``async with asyncio.timeout(None)
        as t, call.start(t, when):``, so that the timer stops (:meth:`stop`) before ``t``
        is left."""
        self.timeout = timeout
        self.limit(when)
        return self

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()

    def limit(self, when: float) -> None:
        """Move the deadline to ``when`` (loop time), never past the drain deadline."""
        if self.timeout is None:
            return
        due = min(when, self.cap)
        self.due = due
        if due < self._armed:
            self._arm(due)

    def when(self) -> float | None:
        """The deadline (loop time), None before :meth:`start`: what a retry must fit in."""
        return self.due

    def stop(self) -> None:
        """The call is over (its timeout left): no timer stays armed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf
        self.timeout = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        if self.timeout is None or self.due is None:
            return
        now = asyncio.get_running_loop().time()
        if self.due > now:
            self._arm(self.due)  # moved later meanwhile
        elif not self.timeout.expired():  # (expiring already: its task is being cancelled)
            self.timeout.reschedule(now)  # expires it: the call's task is cancelled
