"""One role's admission: a priority queue in front of at most ``maxAsync`` slots.

Owns :class:`RoleQueue`. It is the only thing that decides when an upstream call may
start, and it outlives role wrappers: a rebound role keeps its queue, so calls still in
flight on the old wrapper hold slots of the same queue and the role's upstream
concurrency never exceeds ``maxAsync``, during a reload too.

Order: lower priority first, FIFO within one priority. A new request never overtakes a
waiting one. No locks: everything runs on the event loop thread.

With a concurrency store (``--concurrency-store``, :mod:`rolegate_gateway.slots`) the
queue also needs one of the role's global slots for each call: the caller asks the store
itself when nobody waits (one round trip), otherwise one pump task per queue asks for the
head waiter whenever a slot may have become free. Without a store the code path is the
plain local one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math

from rolegate_gateway import errors
from rolegate_gateway.config import Limits
from rolegate_gateway.slots import GlobalSlots

__all__ = ["RoleQueue"]

log = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.2  # weight of the newest call duration in the Retry-After estimate


class RoleQueue:
    """Priority admission with at most ``limits.max_async`` slots held at once.

    Use ``slot = await acquire(priority)`` then ``release(duration_s, slot)`` exactly once
    after a successful acquire. Counters are plain ints read by /status and /metrics.
    ``slots``: the role's global slots (None: this replica's limit only).
    """

    __slots__ = (
        "_closed",
        "_heap",
        "_pump",
        "_seq",
        "_service_s",
        "_slots",
        "cancelled_total",
        "completed_total",
        "failed_total",
        "limits",
        "queued",
        "rejected_total",
        "running",
        "submitted_total",
    )

    def __init__(self, limits: Limits, slots: GlobalSlots | None = None) -> None:
        self.limits = limits
        self._slots = slots
        self._pump: asyncio.Task[None] | None = None
        self._heap: list[tuple[int, int, asyncio.Future[str | None]]] = []
        self._seq = itertools.count()
        self._closed: errors.GatewayError | None = None
        self._service_s = 1.0  # EWMA of slot hold time, seconds
        self.queued = 0
        self.running = 0
        self.submitted_total = 0
        self.completed_total = 0
        self.failed_total = 0
        self.rejected_total = 0
        self.cancelled_total = 0

    def resize(self, limits: Limits) -> None:
        """Apply new limits in place. More slots admit waiters at once; fewer slots let
        calls in flight finish and admit nobody until ``running`` is below the new size."""
        self.limits = limits
        if self._slots is None:
            self._wake()
        else:  # admitted only with a global slot: the pump asks the store
            self._slots.nudge()

    def retry_after_s(self) -> int:
        """Seconds a client should wait before retrying: the queue's expected drain time."""
        estimate = self._service_s * (self.queued + 1) / self.limits.max_async
        return max(1, min(math.ceil(estimate), math.ceil(self.limits.queue_max_wait_s)))

    async def acquire(self, priority: int) -> str | None:
        """Wait for a slot; returns its global slot id (None without a store), which
        :meth:`release` takes back.

        Raises:
            errors.QueueFull: ``queue_max_size`` requests already wait, or this one waited
                ``queue_max_wait_s`` seconds.
            errors.GatewayError: the queue was closed (role removed, gateway stopping).
            asyncio.CancelledError: the caller was cancelled (client gone); no slot is held.
        """
        self.submitted_total += 1
        if self._closed is not None:
            raise self._closed
        if self.running < self.limits.max_async and not self.queued:
            self.running += 1
            if self._slots is None:
                return None
            try:
                slot, _ = await self._slots.try_acquire(self.limits.max_async, self.running - 1)
            except BaseException:
                self._give_back(None)
                raise
            if slot is not None:
                return slot
            self._give_back(None)
            if self._closed is not None:
                raise self._closed
        if self.queued >= self.limits.queue_max_size:
            self.rejected_total += 1
            raise errors.QueueFull(
                f"the role's queue is full ({self.queued} waiting)",
                retry_after_s=self.retry_after_s(),
            )
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), fut))
        self.queued += 1
        if self._slots is not None and (self._pump is None or self._pump.done()):
            self._pump = asyncio.create_task(self._run_pump(self._slots))
        try:
            async with asyncio.timeout(self.limits.queue_max_wait_s):
                return await fut
        except TimeoutError:
            self._abandon(fut)
            self.rejected_total += 1
            raise errors.QueueFull(
                f"waited {self.limits.queue_max_wait_s:g} s for a slot",
                retry_after_s=self.retry_after_s(),
            ) from None
        except asyncio.CancelledError:
            self._abandon(fut)
            self.cancelled_total += 1
            raise

    def _abandon(self, fut: asyncio.Future[str | None]) -> None:
        """A waiter gives up: drop its entry, or give back the slot granted meanwhile.

        ``fut`` is pending (timed out), cancelled (the waiting task was cancelled, which
        cancels the future it awaits), granted (a slot raced the give-up) or failed
        (``close``, which already counted it out).
        """
        if not fut.done() or fut.cancelled():
            fut.cancel()
            self.queued -= 1
            if len(self._heap) > 2 * self.queued + 64:  # compact abandoned entries
                self._heap = [e for e in self._heap if not e[2].done()]
                heapq.heapify(self._heap)
        elif fut.exception() is None:
            self._give_back(fut.result())  # granted at the last moment: hand the slot on

    def release(self, duration_s: float, slot: str | None = None) -> None:
        """Give back a slot after a call that held it ``duration_s`` seconds; ``slot``:
        what :meth:`acquire` returned."""
        self._service_s += _EWMA_WEIGHT * (duration_s - self._service_s)
        self._give_back(slot)

    def _give_back(self, slot: str | None) -> None:
        self.running -= 1
        if self._slots is not None:  # the store's release wakes the waiters once it landed
            if slot is None:
                self._slots.nudge()
            else:
                self._slots.release(slot)
        elif self.queued:
            self._wake()

    async def _run_pump(self, slots: GlobalSlots) -> None:
        """Admit head waiters, each with a global slot, while any wait; sleep until a slot
        may be free (a release here or elsewhere, a lease's expiry, a mode change)."""
        while self.queued and self._closed is None:
            wait_s: float | None = None  # until nudged
            if self.running < self.limits.max_async:
                slots.freed.clear()  # a release during the attempt wakes the next one
                self.running += 1  # the head's, while asking
                try:
                    slot, wait_s = await slots.try_acquire(self.limits.max_async, self.running - 1)
                except asyncio.CancelledError:
                    self.running -= 1
                    raise
                except Exception:  # a bug: keep the queue alive, retry after a pause
                    log.exception("admitting a waiter failed")
                    slot, wait_s = None, 1.0
                self.running -= 1
                if slot is not None:
                    if not self._grant(slot):
                        slots.release(slot)  # nobody waits any more
                    continue
            try:
                async with asyncio.timeout(wait_s):
                    await slots.freed.wait()
            except TimeoutError:
                pass
            slots.freed.clear()

    def _grant(self, slot: str | None) -> bool:
        """Hand ``slot`` to the head waiter; False when nobody waits."""
        heap = self._heap
        while heap:
            fut = heapq.heappop(heap)[2]
            if fut.done():
                continue
            fut.set_result(slot)
            self.queued -= 1
            self.running += 1
            return True
        return False

    def _wake(self) -> None:
        heap = self._heap
        while heap and self.running < self.limits.max_async:
            fut = heapq.heappop(heap)[2]
            if fut.done():
                continue
            fut.set_result(None)
            self.queued -= 1
            self.running += 1

    def close(self, error: errors.GatewayError) -> None:
        """Answer every waiter, and every later acquire, with ``error``."""
        self._closed = error
        while self._heap:
            fut = heapq.heappop(self._heap)[2]
            if not fut.done():
                fut.set_exception(error)
                self.queued -= 1
        if self._slots is not None:
            self._slots.nudge()  # the pump sees the queue closed and ends

    def reopen(self) -> None:
        """Admit again after :meth:`close` (a removed role that comes back)."""
        self._closed = None

    def stats(self) -> dict[str, int]:
        """The counters /status shows."""
        return {
            "queued": self.queued,
            "running": self.running,
            "submitted_total": self.submitted_total,
            "completed_total": self.completed_total,
            "failed_total": self.failed_total,
            "rejected_total": self.rejected_total,
            "cancelled_total": self.cancelled_total,
        }
