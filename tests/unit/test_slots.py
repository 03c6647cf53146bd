"""Global slots (rolegate_gateway.slots) against a real redis-server: the scripts' semantics,
cross-replica wake-ups, the fallback share, and cancellation that leaks nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from devstack.poll import eventually
from devstack.redis import RedisProcess
from rolegate_gateway import Limits, cli
from rolegate_gateway.queue import RoleQueue
from rolegate_gateway.slots import SlotStore, redact
from tests.fixtures.redis import redis_binary, redis_server

__all__ = ["redis_binary", "redis_server"]

Stores = Callable[..., Awaitable[SlotStore]]


@pytest.fixture
async def stores(redis_server: RedisProcess, peek: aioredis.Redis) -> AsyncIterator[Stores]:
    """Factory: ``await stores(ttl_s=..., live=...)`` -> a started SlotStore (a replica).
    The store has an epoch already, as one other replicas used: no rejoin at start."""
    await peek.set("rolegate:slots:epoch", "seeded")
    made: list[SlotStore] = []

    async def factory(ttl_s: float = 10.0, live: int = 1) -> SlotStore:
        store = SlotStore(redis_server.url, ttl_s=ttl_s, live_replicas=lambda: live)
        await store.start()
        made.append(store)
        assert not store.fallback
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
async def peek(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 2))
    yield client
    await client.aclose()


def _queue(store: SlotStore, max_async: int, role: str = "r") -> RoleQueue:
    limits = Limits(max_async=max_async, queue_max_size=1000, queue_max_wait_s=30)
    return RoleQueue(limits, store.for_role(role))


async def test_acquire_admits_up_to_max_then_tells_when_to_retry(
    stores: Stores, peek: aioredis.Redis
) -> None:
    store = await stores(ttl_s=5.0)
    slots = store.for_role("r")
    got = [await slots.try_acquire(2, 0) for _ in range(3)]
    assert [slot is not None for slot, _ in got] == [True, True, False]
    assert 1.9 <= got[2][1] <= 2.01  # min(RECHECK_S, oldest lease's ms left) in seconds
    assert await peek.zcard("rolegate:slots:r") == 2
    assert store.in_use() == {"r": 2}
    first = got[0][0]
    assert first is not None
    slots.release(first)
    await eventually(lambda: store.in_use() == {"r": 1}, timeout_s=1)
    await eventually(lambda: not store.busy(), timeout_s=2)
    assert await peek.zscore("rolegate:slots:r", first) is None
    slot, _ = await slots.try_acquire(2, 0)
    assert slot is not None


async def test_expired_leases_come_back_and_running_ones_are_renewed(
    stores: Stores, peek: aioredis.Redis
) -> None:
    dead = await stores(ttl_s=0.6)
    alive = await stores(ttl_s=0.6)
    slot, _ = await dead.for_role("r").try_acquire(1, 0)
    assert slot is not None
    await dead.close()  # a dead replica: renews nothing, releases nothing
    kept, wait_s = await alive.for_role("r").try_acquire(1, 0)
    assert kept is None
    assert wait_s <= 0.61
    await asyncio.sleep(wait_s)
    kept, _ = await alive.for_role("r").try_acquire(1, 0)
    assert kept is not None
    await asyncio.sleep(1.5)  # 2.5 TTLs: the renewal (every TTL/3) keeps it
    assert await peek.zscore("rolegate:slots:r", kept) is not None
    third, _ = await alive.for_role("r").try_acquire(1, 0)
    assert third is None


async def test_one_max_async_across_replicas_and_releases_wake_other_replicas(
    stores: Stores,
) -> None:
    a, b = await stores(), await stores()
    qa, qb = _queue(a, 3), _queue(b, 3)
    now = peak = 0

    async def call(queue: RoleQueue) -> None:
        nonlocal now, peak
        slot = await queue.acquire(0)
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.02)
        now -= 1
        queue.release(0.02, slot)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(call(q) for _ in range(15) for q in (qa, qb)))
    elapsed = loop.time() - started
    assert peak == 3
    # 30 calls of 20 ms, 3 at a time: ~0.2 s. Waiting for RECHECK_S (2 s) instead of a
    # release message would take seconds.
    assert elapsed < 1.5
    await eventually(lambda: a.in_use() == b.in_use() == {"r": 0}, timeout_s=2)


async def test_a_reload_of_a_saturated_role_admits_no_one_past_the_store(
    stores: Stores, peek: aioredis.Redis
) -> None:
    """New limits (a queue bound changed) wake the waiters through the store, not past it:
    replica b holds both slots, so a's waiters stay queued until b releases."""
    a, b = await stores(), await stores()
    qa, qb = _queue(a, 2), _queue(b, 2)
    held = [await qb.acquire(0), await qb.acquire(0)]
    waiters = [asyncio.create_task(qa.acquire(0)) for _ in range(3)]
    await eventually(lambda: qa.queued == 3, timeout_s=2)

    qa.resize(Limits(max_async=2, queue_max_size=500, queue_max_wait_s=30))
    await asyncio.sleep(0.3)
    assert (qa.running, qa.queued) == (0, 3)
    assert await peek.zcard("rolegate:slots:r") == 2

    qb.release(0.1, held[0])
    await eventually(lambda: qa.running == 1, timeout_s=2)
    assert qa.queued == 2
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    first = next(t.result() for t in waiters if t.done() and not t.cancelled())
    qa.release(0.1, first)
    qb.release(0.1, held[1])


async def test_fallback_share_counts_calls_already_running(
    stores: Stores, redis_server: RedisProcess
) -> None:
    store = await stores(live=3)
    queue = _queue(store, 6)
    held = [await queue.acquire(0) for _ in range(3)]  # globally, before the outage
    redis_server.stop()
    blocked = asyncio.create_task(queue.acquire(0))
    await asyncio.sleep(0.3)
    assert store.fallback
    assert not blocked.done()  # 3 running >= 6 // 3: wait
    queue.release(0.0, held.pop())
    queue.release(0.0, held.pop())
    held.append(await asyncio.wait_for(blocked, 2))  # 2 running -> 1 more fits the share
    assert queue.running == 2
    assert store.status()["mode"] == "fallback"
    assert store.errors_total >= 1
    redis_server.start()
    redis_server.wait_serving()
    await eventually(lambda: not store.fallback, timeout_s=10)
    assert store.in_use() == {"r": 2}  # the fallback call registered too
    held += [await asyncio.wait_for(queue.acquire(0), 2) for _ in range(4)]
    assert queue.running == 6
    assert store.in_use() == {"r": 6}


def test_fallback_share_arithmetic() -> None:
    def share(live: Callable[[], int], max_async: int) -> int:
        return SlotStore("redis://127.0.0.1:1/0", live_replicas=live).share(max_async)

    assert share(lambda: 3, 6) == 2
    assert share(lambda: 4, 6) == 1
    assert share(lambda: 10, 6) == 1  # at least one
    assert share(lambda: 0, 6) == 6  # unknown yet: counted as one replica
    assert share(lambda: 1 // 0, 6) == 6


async def test_cancelled_acquires_leak_no_slot(stores: Stores, peek: aioredis.Redis) -> None:
    store = await stores()
    queue = _queue(store, 4)
    for delay in (0, 0.0005, 0.001, 0.002):
        tasks = [asyncio.create_task(queue.acquire(0)) for _ in range(12)]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, str):  # admitted before the cancel landed
                queue.release(0.0, result)
    await eventually(lambda: queue.running == queue.queued == 0, timeout_s=2)

    async def none_held() -> bool:
        return await peek.zcard("rolegate:slots:r") == 0

    await eventually(none_held, timeout_s=2)  # attempts still on the wire end released
    assert store.in_use() == {"r": 0}


def test_password_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert redact("redis://user:s3cret@h:6379/0?x=1") == "redis://user@h:6379/0"
    assert redact("rediss://:s3cret@h/0") == "rediss://h/0"
    assert redact("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert redact("redis://:pa]ss@h/0") == "redis://…"  # a URL urlsplit refuses
    # Neither /status nor the flag's refusal shows it.
    store = SlotStore("redis://:pw-ROLEGATE-7f3a@127.0.0.1:9/0")
    assert "pw-ROLEGATE-7f3a" not in json.dumps(store.status())
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--concurrency-store", "http://:pw-ROLEGATE-7f3a@h/0"])
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--concurrency-store", "redi://:pw-ROLEGATE-7f3a]@h/0"])
    refusal = capsys.readouterr().err
    assert "is not a redis://" in refusal
    assert "pw-ROLEGATE-7f3a" not in refusal


async def test_a_store_restarted_empty_gets_the_running_calls_back_before_admitting(
    stores: Stores, redis_server: RedisProcess, peek: aioredis.Redis
) -> None:
    a, b = await stores(ttl_s=3.0, live=2), await stores(ttl_s=3.0, live=2)
    qa, qb = _queue(a, 4), _queue(b, 4)
    held = [await qa.acquire(0) for _ in range(3)]  # 3 of 4 running through A
    redis_server.stop()
    redis_server.start()  # empty, and no call failed: nobody saw it down
    redis_server.wait_serving()
    # B asks first: the store has no epoch, so B trusts neither its empty set nor what it
    # knew of A: it admits nothing until A's calls are back in the store.
    first = await asyncio.wait_for(qb.acquire(0), 10)
    assert b.in_use() == {"r": 1}  # admitted through the store, not locally
    assert await peek.zcard("rolegate:slots:r") == 4  # A's 3 re-registered, and B's
    assert not b.fallback  # (A may still wait out its own rejoin grace)
    second = asyncio.create_task(qb.acquire(0))
    await asyncio.sleep(0.3)
    assert not second.done()  # 4 held: the global limit holds again
    qa.release(0.0, held.pop())
    qb.release(0.0, await asyncio.wait_for(second, 3))
    qb.release(0.0, first)


async def test_calls_of_one_tick_share_a_pipeline_and_survive_a_script_flush(
    stores: Stores, peek: aioredis.Redis
) -> None:
    store = await stores()
    slots = store.for_role("r")
    await peek.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    got = await asyncio.gather(*(slots.try_acquire(10, 0) for _ in range(5)))
    assert all(slot is not None for slot, _ in got)
    assert await peek.zcard("rolegate:slots:r") == 5
    assert store.errors_total == 0
