"""One role's admission: a priority queue in front of at most ``maxAsync`` slots.

Owns :class:`RoleQueue`. It is the only thing that decides when an upstream call may
start, and it outlives role wrappers: a rebound role keeps its queue, so calls still in
flight on the old wrapper hold slots of the same queue and the role's upstream
concurrency never exceeds ``maxAsync``, during a reload too.

Order: lower priority first, FIFO within one priority. A new request never overtakes a
waiting one. No locks: everything runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math

from rolegate_gateway import errors
from rolegate_gateway.config import Limits

__all__ = ["RoleQueue"]

_EWMA_WEIGHT = 0.2  # weight of the newest call duration in the Retry-After estimate


class RoleQueue:
    """Priority admission with at most ``limits.max_async`` slots held at once.

    Use ``await acquire(priority)`` then ``release(duration_s)`` exactly once after a
    successful acquire. Counters are plain ints read by /status and /metrics.
    """

    __slots__ = (
        "_closed",
        "_heap",
        "_seq",
        "_service_s",
        "cancelled_total",
        "completed_total",
        "failed_total",
        "limits",
        "queued",
        "rejected_total",
        "running",
        "submitted_total",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
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
        self._wake()

    def retry_after_s(self) -> int:
        """Seconds a client should wait before retrying: the queue's expected drain time."""
        estimate = self._service_s * (self.queued + 1) / self.limits.max_async
        return max(1, min(math.ceil(estimate), math.ceil(self.limits.queue_max_wait_s)))

    async def acquire(self, priority: int) -> None:
        """Wait for a slot.

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
            return
        if self.queued >= self.limits.queue_max_size:
            self.rejected_total += 1
            raise errors.QueueFull(
                f"the role's queue is full ({self.queued} waiting)",
                retry_after_s=self.retry_after_s(),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), fut))
        self.queued += 1
        try:
            async with asyncio.timeout(self.limits.queue_max_wait_s):
                await fut
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

    def _abandon(self, fut: asyncio.Future[None]) -> None:
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
            self.running -= 1  # granted at the last moment: hand the slot on
            self._wake()

    def release(self, duration_s: float) -> None:
        """Give back a slot after a call that held it ``duration_s`` seconds."""
        self.running -= 1
        self._service_s += _EWMA_WEIGHT * (duration_s - self._service_s)
        if self.queued:
            self._wake()

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
