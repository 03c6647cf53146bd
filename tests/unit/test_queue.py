"""RoleQueue: slots, priority order, limits, give-up paths, resize."""

from __future__ import annotations

import asyncio

import pytest

from rolegate_gateway import Limits, errors
from rolegate_gateway.queue import RoleQueue


def _queue(max_async: int = 1, max_size: int = 10, max_wait_s: float = 5.0) -> RoleQueue:
    return RoleQueue(
        Limits(max_async=max_async, queue_max_size=max_size, queue_max_wait_s=max_wait_s)
    )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_priority_then_fifo() -> None:
    queue = _queue()
    await queue.acquire(10)
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await queue.acquire(priority)
        order.append(name)
        queue.release(0.0)

    tasks = []
    for name, prio in [("c10", 10), ("a1", 1), ("d10", 10), ("b1", 1), ("e0", 0)]:
        tasks.append(asyncio.create_task(waiter(name, prio)))
        await _settle()
    queue.release(0.0)
    await asyncio.gather(*tasks)
    assert order == ["e0", "a1", "b1", "c10", "d10"]
    assert queue.stats()["running"] == 0


async def test_new_arrival_does_not_overtake_waiters() -> None:
    queue = _queue(max_async=1)
    await queue.acquire(10)
    first = asyncio.create_task(queue.acquire(10))
    await _settle()
    queue.release(0.0)  # the slot goes to the waiter, not to whoever comes next
    late = asyncio.create_task(queue.acquire(0))
    await _settle()
    assert first.done()
    assert not late.done()
    queue.close(errors.Draining("stop"))
    with pytest.raises(errors.Draining):
        await late


async def test_full_and_wait_exceeded_are_queue_full() -> None:
    queue = _queue(max_async=1, max_size=1, max_wait_s=0.05)
    await queue.acquire(10)
    waiting = asyncio.create_task(queue.acquire(10))
    await _settle()
    with pytest.raises(errors.QueueFull, match="full") as err:
        await queue.acquire(10)
    assert err.value.headers["Retry-After"].isdigit()
    with pytest.raises(errors.QueueFull, match="waited"):
        await waiting
    assert queue.stats() | {"submitted_total": 0} == {
        "queued": 0,
        "running": 1,
        "submitted_total": 0,
        "completed_total": 0,
        "failed_total": 0,
        "rejected_total": 2,
        "cancelled_total": 0,
    }


async def test_cancelled_waiter_leaves_no_trace() -> None:
    queue = _queue(max_async=1)
    await queue.acquire(10)
    waiter = asyncio.create_task(queue.acquire(10))
    await _settle()
    waiter.cancel()
    await _settle()
    assert (queue.queued, queue.cancelled_total) == (0, 1)
    queue.release(0.0)
    assert queue.running == 0  # the slot was not handed to the cancelled waiter


async def test_resize_admits_waiters_and_shrinking_blocks_new_starts() -> None:
    queue = _queue(max_async=1)
    await queue.acquire(10)
    waiters = [asyncio.create_task(queue.acquire(10)) for _ in range(3)]
    await _settle()
    queue.resize(Limits(max_async=3, queue_max_size=10, queue_max_wait_s=5))
    await _settle()
    assert sum(w.done() for w in waiters) == 2
    queue.resize(Limits(max_async=1, queue_max_size=10, queue_max_wait_s=5))
    for _ in range(2):
        queue.release(0.0)
    await _settle()
    assert not waiters[2].done()  # 1 still running >= the new maxAsync of 1
    queue.release(0.0)
    await _settle()
    assert waiters[2].done()
    assert queue.running == 1


async def test_closed_queue_fails_waiters_and_later_requests() -> None:
    queue = _queue()
    await queue.acquire(10)
    waiter = asyncio.create_task(queue.acquire(10))
    await _settle()
    queue.close(errors.RoleNotFound("x", ["y"]))
    with pytest.raises(errors.RoleNotFound):
        await waiter
    with pytest.raises(errors.RoleNotFound):
        await queue.acquire(10)
    assert queue.queued == 0
