"""The leader elector over a ``coordination.k8s.io/v1`` Lease, and the write guard it keeps.

Owns the election's decisions, as client-go's ``leaderelection`` makes them
(https://pkg.go.dev/k8s.io/client-go/tools/leaderelection, ``tryAcquireOrRenew``): read the
Lease; a record held by another is taken over only once it has not changed for the lease
duration, judged by THIS process's monotonic clock from when it last saw the record change
(client-go's ``observedTime``), never by comparing the record's wall-clock times with ours
(clocks of two machines differ); every write carries the resourceVersion read, so of two
candidates one wins and the other gets 409 Conflict. The leader renews every retry period;
one that has not renewed within the renew deadline has lost. The Lease's ``acquireTime``
and ``renewTime`` are written for people (``kubectl get lease -o yaml``) and never read.

Why not ``kubernetes_asyncio.leaderelection`` (36.1.0): its Lease calls have no request
timeout (a half-open connection hangs a renewal past the deadline); ``LeaseLock.get``
catches only ApiException, so a cut connection ends ``run()`` with an exception; its
deadlines and observed times are ``time.time()`` (wall clock: a clock step breaks them),
the times it writes are local time labelled UTC, and it has no release. Wrapping would
have replaced most of it, so this module is a small elector of its own.

:class:`LeaseGuard` is what the operator's writes check (``apply.Kube(guard=...)``): a
leader that was paused (SIGSTOP, a frozen VM) and wakes after the lease passed on must
write nothing, and its threads resume together, so the renewer cannot be relied on to
notice first. ``time.monotonic()`` advances while a process is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from rolegate_gateway.kube import API_ERRORS, describe
from rolegate_gateway.lease_api import micro_now
from rolegate_operator.settings import LeaderElection

__all__ = ["Elector", "LeaseGuard", "LeaseStore", "NotLeader", "Record"]

log = logging.getLogger(__name__)

#: Seconds between "waiting for the lease" lines of a follower.
WAITING_LOG_S = 30.0


class NotLeader(RuntimeError):
    """A write was refused: this process does not hold a freshly renewed Lease."""


class LeaseGuard:
    """Allows writes while the Lease was renewed less than ``renew_deadline_s`` seconds ago
    (by ``clock``, default ``time.monotonic``); :class:`Elector` keeps :attr:`renewed_at`.
    """

    def __init__(
        self, *, renew_deadline_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: ``clock()`` when the last successful acquire or renewal was sent; -inf: never
        #: (or released, or lost).
        self.renewed_at = -math.inf
        self.renew_deadline_s = renew_deadline_s
        self.clock = clock

    def allowed(self) -> bool:
        """True while this process may write."""
        return self.clock() - self.renewed_at < self.renew_deadline_s

    def check(self) -> None:
        """Return if this process may write now.

        Raises:
            NotLeader: the Lease was not renewed within the renew deadline.
        """
        if self.clock() - self.renewed_at >= self.renew_deadline_s:
            raise NotLeader("write refused: the leader Lease was not renewed in time")


@dataclass(frozen=True, slots=True)
class Record:
    """A Lease's ``spec``: who holds it and since when (wall-clock times as RFC 3339
    strings, for people only) and how often it changed hands."""

    holder: str = ""
    lease_duration_s: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> Record:
        """The record of a raw Lease (missing fields as their zero)."""
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        """The Lease ``spec`` of this record (``holderIdentity`` null when released)."""
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class LeaseStore(Protocol):
    """One Lease's reads and writes. Raises: ApiException (409: changed meanwhile, or
    created by another), ``aiohttp.ClientError`` / OSError / TimeoutError."""

    async def get(self, *, timeout_s: float) -> dict[str, Any] | None:
        """The raw Lease, or None when it does not exist."""

    async def create(self, spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Create the Lease with ``spec``; returns it as stored."""

    async def replace(self, lease: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Replace the Lease (at ``lease.metadata.resourceVersion`` only); returns it."""


def _version(lease: dict[str, Any] | None) -> str | None:
    """A raw Lease's resourceVersion."""
    return None if lease is None else (lease.get("metadata") or {}).get("resourceVersion")


class Elector:
    """One candidate for the Lease ``election.lease``; :attr:`guard` says whether it leads.

    Not thread-safe: run its coroutines on one event loop (the guard may be read anywhere).
    """

    def __init__(
        self,
        store: LeaseStore,
        election: LeaderElection,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = micro_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` (seconds, monotonic), ``wall`` (a Lease MicroTime) and ``sleep`` are
        the time sources; tests pass fakes."""
        self.store, self.election, self.clock, self.wall = store, election, clock, wall
        self.sleep = sleep
        self.guard = LeaseGuard(renew_deadline_s=election.renew_deadline_s, clock=clock)
        #: The record last seen (read or written), and ``clock()`` when it (or the Lease's
        #: resourceVersion) last changed.
        self.observed: Record | None = None
        self.observed_at = -math.inf
        #: The Lease as last read or written by this process (its resourceVersion).
        self._lease: dict[str, Any] | None = None
        #: The last failed call, in a few words (for the waiting log line and the probe).
        self.last_error: str | None = None

    @property
    def holder(self) -> str:
        """The holder as last seen ("" for none or unknown)."""
        return self.observed.holder if self.observed else ""

    def _timeout_s(self) -> float:
        """A request's timeout: a leader's ends by its renew deadline, a follower's after
        one renew deadline."""
        if self.holder == self.election.identity and self.guard.allowed():
            left = self.guard.renewed_at + self.election.renew_deadline_s - self.clock()
            return max(0.05, left)
        return self.election.renew_deadline_s

    def _record(self, previous: Record | None) -> Record:
        """The record this candidate writes: a renewal keeps the acquire time."""
        now, me = self.wall(), self.election.identity
        duration = max(1, math.ceil(self.election.lease_duration_s))
        if previous is not None and previous.holder == me:
            return replace(previous, lease_duration_s=duration, renew_time=now)
        transitions = previous.transitions + 1 if previous is not None else 0
        return Record(me, duration, now, now, transitions)

    def _won(self, lease: dict[str, Any], sent_at: float) -> bool:
        """Record a successful write (sent at ``sent_at``): this process leads."""
        self._lease = lease
        self.observed, self.observed_at = Record.from_lease(lease), self.clock()
        self.guard.renewed_at = sent_at
        self.last_error = None
        return True

    def _failed(self, exc: BaseException, what: str) -> bool:
        self.last_error = f"{what}: {describe(exc)}"
        leading = self.holder == self.election.identity
        level = logging.WARNING if leading else logging.DEBUG
        log.log(level, "lease %s: %s", self.election.lease_ref, self.last_error)
        return False

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; True when this process now holds it.

        A leader first writes over the version it last wrote (one request); otherwise (or
        when that fails) read, and write only when the Lease is free, expired by our clock,
        or ours. No exception for API trouble: False, and :attr:`last_error` says why.
        """
        sent_at = self.clock()
        if self._lease is not None and self.holder == self.election.identity:
            renewal = {**self._lease, "spec": self._record(self.observed).spec()}
            try:
                return self._won(
                    await self.store.replace(renewal, timeout_s=self._timeout_s()), sent_at
                )
            except API_ERRORS as exc:
                self._failed(exc, "renewal")  # 409: changed meanwhile; read it below
        try:
            lease = await self.store.get(timeout_s=self._timeout_s())
        except API_ERRORS as exc:
            return self._failed(exc, "read")
        if lease is None:
            try:
                created = await self.store.create(
                    self._record(None).spec(), timeout_s=self._timeout_s()
                )
            except API_ERRORS as exc:  # 409: another candidate created it first
                return self._failed(exc, "create")
            return self._won(created, sent_at)
        record = Record.from_lease(lease)
        if record != self.observed or _version(lease) != _version(self._lease):
            self.observed_at = self.clock()
        self.observed, self._lease = record, lease
        me = self.election.identity
        # The longer of the holder's duration and ours: a leader started with a longer one
        # (before an upgrade that shortened it) may still write until its own expires.
        lasts_s = max(self.election.lease_duration_s, record.lease_duration_s)
        fresh = self.clock() - self.observed_at < lasts_s
        if record.holder not in ("", me) and fresh:
            self.last_error = None
            return False  # held by another, and changed within the lease duration
        taken = {**lease, "spec": self._record(record).spec()}
        try:
            return self._won(await self.store.replace(taken, timeout_s=self._timeout_s()), sent_at)
        except API_ERRORS as exc:  # 409: another candidate wrote first
            return self._failed(exc, "write")

    async def acquire(self) -> None:
        """Return once this process holds the Lease, trying every retry period and saying
        who holds it at most every :data:`WAITING_LOG_S` seconds."""
        said = -math.inf
        while not await self.try_acquire_or_renew():
            if self.clock() - said >= WAITING_LOG_S:
                log.info(
                    "waiting for the lease %s, held by %s%s",
                    self.election.lease_ref,
                    self.holder or "nobody",
                    f" ({self.last_error})" if self.last_error else "",
                )
                said = self.clock()
            await self.sleep(self.election.retry_period_s)
        log.info("acquired the lease %s as %s", self.election.lease_ref, self.election.identity)

    async def keep(self) -> str:
        """Renew the held Lease every retry period until it is lost; returns why: not
        renewed within the renew deadline (judged before every attempt, so a process that
        was stopped meanwhile gives up as soon as it runs), or another holder seen."""
        me = self.election.identity
        while True:
            if not self.guard.allowed():
                ago = self.clock() - self.guard.renewed_at
                error = f" (last error: {self.last_error})" if self.last_error else ""
                return (
                    f"not renewed for {ago:.1f} s, past the renew deadline of "
                    f"{self.election.renew_deadline_s:g} s{error}"
                )
            await self.try_acquire_or_renew()
            if self.holder != me:
                self.guard.renewed_at = -math.inf
                return f"it is held by {self.holder or 'nobody'}"
            await self.sleep(self.election.retry_period_s)

    async def release(self) -> bool:
        """Give the Lease up if this process holds it, as client-go's ``ReleaseOnCancel``:
        holder cleared and a 1 s duration, so a follower takes over at its next attempt.
        Writes stop first (the guard refuses from here on). Returns True when released."""
        held = self.guard.allowed() and self.holder == self.election.identity
        self.guard.renewed_at = -math.inf
        if not held or self._lease is None or self.observed is None:
            return False
        now = self.wall()
        spec = replace(self.observed, holder="", lease_duration_s=1, acquire_time=now)
        try:
            await self.store.replace(
                {**self._lease, "spec": replace(spec, renew_time=now).spec()},
                timeout_s=self.election.renew_deadline_s,
            )
        except API_ERRORS as exc:
            log.warning(
                "could not release the lease %s: %s", self.election.lease_ref, describe(exc)
            )
            return False
        log.info("released the lease %s", self.election.lease_ref)
        return True
