"""One ``maxAsync`` per role across gateway replicas: slot leases in a Redis-protocol store.

Owns :class:`SlotStore` (one per gateway: the renewal, the release wake-ups, the fallback
when the store is unreachable; its connection and scripts are those of
:mod:`rolegate_gateway.slot_client` and :mod:`rolegate_gateway.slot_scripts`) and
:class:`GlobalSlots` (one role's view of it, which its
:class:`~rolegate_gateway.queue.RoleQueue` asks before it admits its head waiter).

The store holds one sorted set per role, ``rolegate:slots:<role>``: member = a slot id
(``<replica>:<n>``), score = the lease's expiry in milliseconds of the *store's* clock
(``TIME`` inside the scripts, so replicas' clocks never matter). Acquire and release are Lua
scripts run with EVALSHA (redis-py ``register_script``), so each is atomic and one round
trip: acquire drops expired leases and admits while fewer than ``maxAsync`` remain; release
removes the lease and PUBLISHes on ``rolegate:slots:<role>:free``, which wakes the
replicas waiting for that role (one pattern subscription per replica). A denied acquire also
learns when the oldest lease expires and re-checks then (a dead replica's leases expire
silently), at most :data:`RECHECK_S` later: no polling loop. One task per replica renews
the leases of running calls every ``ttl / 3`` in one pipeline, so a SIGKILLed replica's
slots come back within the TTL.

When the store does not answer (connection refused, or no answer within ``timeout_s``),
the replica enters *fallback*: it admits at most ``max(1, maxAsync // live replicas)``
calls of a role on its own, counting the calls already running (admitted globally before),
and probes the store every :data:`PROBE_S`. For the first TTL of fallback it also stays
within ``maxAsync`` minus the other replicas' leases in its last answer from the store
(:meth:`GlobalSlots.fallback_cap`): one of them may have run more than its share at the
switch. When the store answers again it re-registers every running call's lease, waits
until every replica has seen the store back and registered its calls
(``max(PROBE_S, ttl / 3)`` + the timeout) and only then admits through the store again.
A store that lost its data unseen (restarted empty between two calls, flushed) is told by
its epoch key, ``rolegate:slots:epoch``: the first script that finds none sets a new one
and says so, and every replica that sees a new epoch rejoins the same way, so calls
already running are counted before anyone admits through the emptied store.

Reference: https://redis.io/docs/latest/develop/interact/programmability/eval-intro/ (script
atomicity, TIME and effects replication), https://redis.io/docs/latest/commands/zadd/,
https://redis.io/docs/latest/develop/interact/pubsub/,
https://redis.readthedocs.io/en/stable/examples/asyncio_examples.html.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from rolegate_gateway import slot_scripts as scripts
from rolegate_gateway.slot_client import ScriptClient, redact

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

__all__ = ["PROBE_S", "RECHECK_S", "GlobalSlots", "SlotStore", "redact"]

log = logging.getLogger(__name__)

#: Longest wait, seconds, of a denied head waiter before it asks the store again when no
#: release message came (a lost message, or the pub/sub connection down).
RECHECK_S: Final = 2.0
#: Seconds between probes of an unreachable store, and the grace after it answers again.
PROBE_S: Final = 1.0


def _new_epoch() -> str:
    return os.urandom(8).hex()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SlotStore:
    """The concurrency store of one gateway replica. Start it with :meth:`start` on the
    event loop and :meth:`close` it at shutdown; :meth:`for_role` gives each role queue its
    :class:`GlobalSlots`.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's ``from_url``).
        ttl_s: seconds a lease lives without renewal (renewed every ``ttl_s / 3``).
        live_replicas: the number of live gateway replicas now, for the fallback share;
            values below 1 count as 1.
        timeout_s: seconds to connect and to wait for each answer before the store
            counts as unreachable.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 10.0,
        live_replicas: Callable[[], int] = lambda: 1,
        timeout_s: float = 0.5,
    ) -> None:
        self.url = redact(url)
        self.ttl_ms = max(1, round(ttl_s * 1000))
        #: How long a denied acquire keeps releases publishing: longer than a waiter's
        #: longest sleep before it asks again (and so sets it again).
        self.flag_ms = max(self.ttl_ms, round(3000 * RECHECK_S))
        self.live_replicas = live_replicas
        self.timeout_s = timeout_s
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.io = ScriptClient(url, timeout_s=timeout_s)
        self.errors = self.io.errors
        self.client = self.io.client
        self._ids = itertools.count()
        self.roles: dict[str, GlobalSlots] = {}
        self.fallback = False
        self.rejoining = False
        self.since = _now()
        self.fallback_at = -math.inf  # loop time fallback began
        self.errors_total = 0
        self.last_error: str | None = None
        #: The store's epoch as last seen (None: not yet): a change means it lost its data.
        self.epoch: bytes | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start renewing leases and listening for releases. The store need not be up:
        if it does not answer, the replica starts in fallback."""
        try:
            await self._hello()
        except self.errors as exc:
            self.failed(exc)
        if not self.fallback:
            log.info("concurrency store %s: global limits", self.url)
        self._tasks = [
            asyncio.create_task(self._renewer(), name="rolegate-slots-renew"),
            asyncio.create_task(self._listener(), name="rolegate-slots-listen"),
        ]

    async def close(self) -> None:
        """Wait (bounded by the timeout) for releases in flight, stop the tasks, close."""
        await self.io.drain(2 * self.timeout_s + 0.1)
        tasks = [*self._tasks, *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.io.close()

    async def _hello(self) -> None:
        """Learn the store's epoch (setting one when it has none): two round trips."""
        created = await self.client.set(scripts.EPOCH_KEY, _new_epoch(), nx=True)
        epoch = await self.client.get(scripts.EPOCH_KEY)
        self.observe(epoch if isinstance(epoch, bytes) else b"", created=bool(created))

    def for_role(self, name: str) -> GlobalSlots:
        """The role's slots (made once per role name)."""
        slots = self.roles.get(name)
        if slots is None:
            slots = self.roles[name] = GlobalSlots(self, name)
        return slots

    # -- state ----------------------------------------------------------------------------

    def share(self, max_async: int) -> int:
        """The fallback cap of one replica: ``max(1, maxAsync // live replicas)``."""
        return max(1, max_async // self.replicas())

    def replicas(self) -> int:
        """Live gateway replicas (at least 1; 1 when they cannot be told)."""
        try:
            return max(1, int(self.live_replicas()))
        except Exception:  # presence not known (yet): assume this replica is alone
            log.debug("live replicas unknown", exc_info=True)
            return 1

    def failed(self, exc: BaseException) -> None:
        """Count a store error and enter fallback (probing until the store is back)."""
        self.errors_total += 1
        self.last_error = type(exc).__name__
        self.rejoining = False
        if not self.fallback:
            self._enter_fallback()
            log.warning(
                "concurrency store %s unreachable (%s): each role admits its share "
                "maxAsync // %d replicas here until it is back",
                self.url,
                self.last_error,
                self.replicas(),
            )
            self._nudge_all()
        self._probe_soon()

    def observe(self, epoch: bytes, *, created: bool) -> None:
        """Note the store's epoch from an answer; ``created``: the answer's script set it.
        A new epoch after another one, or one just created (the store is new, restarted
        empty or flushed: other replicas' running calls may be missing from it), makes this
        replica rejoin as after an outage."""
        changed = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        if not (created or changed):
            return
        self.rejoining = False
        for slots in self.roles.values():
            slots.seen_at = -math.inf  # what it knew of the others is void: assume the worst
        if not self.fallback:
            self._enter_fallback()
            log.log(
                logging.INFO if created and not changed else logging.WARNING,
                "concurrency store %s is new or lost its slots (restarted empty, flushed): "
                "registering the running calls; nothing is admitted until every replica did",
                self.url,
            )
            self._nudge_all()
        self._probe_soon()

    def _enter_fallback(self) -> None:
        self.fallback = True
        self.since = _now()
        self.fallback_at = asyncio.get_running_loop().time()

    def settling_s(self) -> float:
        """Seconds left of the first TTL of fallback, when the calls the other replicas
        were running at the switch still count (0 in global mode or later)."""
        if not self.fallback:
            return 0.0
        left = self.fallback_at + self.ttl_ms / 1000 - asyncio.get_running_loop().time()
        return max(0.0, left)

    def _probe_soon(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._prober(), name="rolegate-slots-probe")

    def new_id(self) -> str:
        """A slot id no other replica uses: ``<host>-<pid>-<random>:<n>``."""
        return f"{self.replica}:{next(self._ids)}"

    def status(self) -> dict[str, Any]:
        """The /status section: the store (no password), mode, errors, held slots."""
        mode = "fallback" if self.fallback else "global"
        return {
            "store": self.url,
            "mode": "rejoining" if self.rejoining else mode,
            "settlingSeconds": round(self.settling_s(), 3),
            "since": self.since,
            "ttlSeconds": self.ttl_ms / 1000,
            "liveReplicas": self.replicas(),
            "errorsTotal": self.errors_total,
            "lastError": self.last_error,
            "heldSlots": {name: len(r.held) for name, r in self.roles.items() if r.held},
        }

    def in_use(self) -> dict[str, int]:
        """Per role, the slots this replica holds in the store (registered leases)."""
        return {name: r.registered() for name, r in self.roles.items()}

    def _nudge_all(self) -> None:
        for slots in self.roles.values():
            slots.nudge()

    # -- store calls ----------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether store calls are queued or on the wire."""
        return self.io.busy()

    def release_later(self, slots: GlobalSlots, slot: str) -> None:
        """Remove ``slot``'s lease (the caller's answer does not wait for the round trip);
        wake the role's waiters here once it is done. A lease that cannot be removed is not
        renewed any more and expires within the TTL."""
        keys, args = [slots.key, slots.waiting], [slot, slots.channel]
        self.io.call(self.io.release, keys, args).add_done_callback(
            lambda done: self._released(done, slots)
        )

    def _released(self, done: asyncio.Future[Any], slots: GlobalSlots) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, self.errors):
            self.failed(error)
        elif error is not None:
            log.error("releasing a slot failed", exc_info=error)
        slots.nudge()

    async def _register(self) -> None:
        """Renew (or re-add) the lease of every running call in one pipeline; leases
        released while it ran are released again."""
        batch = {name: list(r.held) for name, r in self.roles.items() if r.held}
        if not batch:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, ids in batch.items():
            keys = [self.roles[name].key, scripts.EPOCH_KEY]
            await self.io.renew(keys=keys, args=[_new_epoch(), self.ttl_ms, *ids], client=pipe)
        answers = await pipe.execute()
        for (name, ids), answer in zip(batch.items(), answers, strict=True):
            count, epoch, created, held = answer
            self.observe(epoch, created=bool(created))
            slots = self.roles[name]
            slots.saw(int(held) - len(ids))
            if count and not self.fallback:
                log.warning("role %s: %d leases had expired in the store; re-added", name, count)
            for slot in ids:
                if slot in slots.held:
                    slots.held[slot] = True
                else:  # released meanwhile: the release may have run before the renewal
                    self.release_later(slots, slot)

    async def _renewer(self) -> None:
        """Every ``ttl / 3``: renew the leases of running calls (global mode only)."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if self.fallback:
                continue
            try:
                await self._register()
            except self.errors as exc:
                self.failed(exc)

    async def _prober(self) -> None:
        """In fallback: ask every :data:`PROBE_S`; once the store answers, register every
        running call, wait until every other replica has noticed too (it probes every
        :data:`PROBE_S`, and sees a new epoch at its next renewal, within ``ttl / 3``) and
        registered its calls, register again, and admit through the store again."""
        grace_s = max(PROBE_S, self.ttl_ms / 3000) + self.timeout_s
        while self.fallback:
            await asyncio.sleep(PROBE_S)
            try:
                await self._hello()
                self.rejoining = True
                await self._register()
                await asyncio.sleep(grace_s)
                if not self.rejoining:
                    continue  # an error meanwhile
                await self._register()
            except self.errors as exc:
                self.failed(exc)
                continue
            self.fallback = self.rejoining = False
            self.since = _now()
            log.info("concurrency store %s is back: global limits again", self.url)
            self._nudge_all()

    async def _listener(self) -> None:
        """Wake the waiters of a role when any replica releases one of its slots."""
        while True:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{scripts.PREFIX}*{scripts.CHANNEL_SUFFIX}")
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    slots = self.roles.get(
                        channel[len(scripts.PREFIX) : -len(scripts.CHANNEL_SUFFIX)]
                    )
                    if slots is not None:
                        slots.nudge()
            except self.errors as exc:
                if not self.fallback:
                    self.failed(exc)
                log.debug("release subscription lost: %s", type(exc).__name__)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(PROBE_S)


class GlobalSlots:
    """One role's slots in the store, as its queue sees them.

    ``held`` maps each slot id this replica holds for the role to whether its lease is
    registered in the store (False: admitted in fallback, registered when the store is
    back). ``freed`` is set when a slot may have become free (a release message, this
    replica's release, a mode change).
    """

    __slots__ = (
        "channel",
        "freed",
        "held",
        "key",
        "name",
        "others",
        "seen_at",
        "store",
        "waiting",
    )

    def __init__(self, store: SlotStore, name: str) -> None:
        self.store = store
        self.name = name
        self.key = f"{scripts.PREFIX}{name}"
        self.channel = f"{scripts.PREFIX}{name}{scripts.CHANNEL_SUFFIX}"
        self.waiting = f"{scripts.PREFIX}{name}:waiting"
        self.held: dict[str, bool] = {}
        self.freed = asyncio.Event()
        #: The other replicas' leases of the role at the last answer, and its loop time.
        self.others = 0
        self.seen_at = -math.inf

    def registered(self) -> int:
        """How many of ``held`` are leases in the store."""
        return sum(self.held.values())

    def nudge(self) -> None:
        """Wake this role's queue: a slot may be free."""
        self.freed.set()

    def saw(self, others: int) -> None:
        """Note an answer's count of the other replicas' leases of the role."""
        self.others = max(0, others)
        self.seen_at = asyncio.get_running_loop().time()

    def fallback_cap(self, max_async: int) -> tuple[int, float]:
        """How many calls of the role this replica may run in fallback, and for how many
        seconds that holds: its share; during the first TTL of fallback also no more than
        ``maxAsync`` minus the other replicas' leases at the last answer (all of
        ``maxAsync`` when that answer is older than a renewal period: they may have
        admitted more since), as their calls admitted before the switch may still run."""
        store = self.store
        share = store.share(max_async)
        settling_s = store.settling_s()
        if not settling_s:
            return share, RECHECK_S
        fresh_s = store.ttl_ms / 3000 + store.timeout_s
        fresh = store.fallback_at - self.seen_at <= fresh_s
        others = self.others if fresh else max_async
        return max(0, min(share, max_async - others)), min(RECHECK_S, settling_s + 0.005)

    async def try_acquire(self, max_async: int, running: int) -> tuple[str | None, float]:
        """One admission attempt for a replica that runs ``running`` calls of the role
        (not counting this one). Returns ``(slot id, 0)`` when admitted, else ``(None,
        seconds to wait at most before trying again)``: until the oldest lease expires
        (capped at :data:`RECHECK_S`) in global mode, :data:`RECHECK_S` in fallback (a
        local release nudges sooner).

        One round trip in global mode, none in fallback. A caller cancelled meanwhile
        leaks nothing: the attempt finishes on its own and a granted lease is released.
        """
        store = self.store
        if store.rejoining:  # its calls are being registered: one admitted now would not be
            return None, RECHECK_S  # the rejoin (or a failure) nudges every role
        if store.fallback or store.epoch is None:
            cap, wait_s = self.fallback_cap(max_async)
            if running >= cap:
                return None, wait_s
            slot = store.new_id()
            self.held[slot] = False
            return slot, 0.0
        slot = store.new_id()
        attempt = store.io.call(
            store.io.acquire,
            [self.key, self.waiting, scripts.EPOCH_KEY],
            [max_async, store.ttl_ms, slot, store.flag_ms, _new_epoch()],
        )
        try:
            granted, value, epoch, created = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._cancelled(done, slot))
            raise
        except store.errors as exc:
            store.failed(exc)
            return await self.try_acquire(max_async, running)
        if granted:
            self.held[slot] = True
            self.saw(int(value) - self.registered())  # value: every replica's leases
        else:
            self.saw(max_async - self.registered())  # at least maxAsync are held
        store.observe(epoch, created=bool(created))
        if granted:
            return slot, 0.0
        if store.fallback:  # the store lost its data: rejoin, this one admitted locally
            return await self.try_acquire(max_async, running)
        return None, min(RECHECK_S, max(0.0, int(value) / 1000) + 0.005)

    def _cancelled(self, attempt: asyncio.Future[Any], slot: str) -> None:
        """The acquiring caller went away: give back what the attempt got."""
        if attempt.cancelled() or attempt.exception() is not None:
            return
        if attempt.result()[0]:
            self.store.release_later(self, slot)

    def release(self, slot: str) -> None:
        """Give back ``slot`` (the call ended); its lease is removed in the background
        (:meth:`SlotStore.release_later`), and waiters here are woken after that."""
        registered = self.held.pop(slot, None)
        if registered is None:
            return
        if registered:
            self.store.release_later(self, slot)
        if not registered or self.store.fallback:
            self.nudge()
