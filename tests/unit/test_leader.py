"""The leader elector's decisions (client-go's rules) on a fake Lease store and a fake
clock: expiry judged by when THIS process saw the record change, 409 Conflict as "another
candidate won", renew deadline, release; and the write guard a paused leader hits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_operator import cli
from rolegate_operator.apply import Kube
from rolegate_operator.leader import Elector, LeaseGuard, NotLeader, Record
from rolegate_operator.settings import LeaderElection, pod_namespace

LEASE = ("ops", "rolegate-operator")


class Clock:
    """A monotonic clock that moves only when told (or when the elector sleeps)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeLeases:
    """One Lease in memory with the API server's optimistic concurrency: a write at a
    resourceVersion other than the stored one is 409. ``down`` makes every call fail as a
    cut connection; ``before_write`` runs once before the next replace (a rival's write)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.calls: list[str] = []
        self.down = False
        self.before_write: Callable[[], None] | None = None

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise OSError("connection refused")

    def _store(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = {
            "metadata": {
                "name": LEASE[1],
                "namespace": LEASE[0],
                "resourceVersion": str(self.version),
            },
            "spec": spec,
        }
        return self.lease

    async def get(self, *, timeout_s: float) -> dict[str, Any] | None:
        assert timeout_s > 0
        self._call("get")
        return self.lease

    async def create(self, spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        self._call("create")
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(spec)

    async def replace(self, lease: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        assert timeout_s > 0
        self._call("replace")
        if self.before_write is not None:
            rival, self.before_write = self.before_write, None
            rival()
        assert self.lease is not None
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(lease["spec"])

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"]["holderIdentity"]


def election(identity: str) -> LeaderElection:
    return LeaderElection(lease=LEASE, identity=identity)  # 15 / 10 / 2 s


def elector(store: FakeLeases, clock: Clock, identity: str, wall: str = "") -> Elector:
    stamp = wall or "2026-12-02T05:00:00.000000Z"
    return Elector(store, election(identity), clock=clock, wall=lambda: stamp, sleep=clock.sleep)


async def test_the_first_candidate_creates_the_lease_and_a_second_waits() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    assert store.holder == "a"
    assert a.guard.allowed()
    for _ in range(20):  # a renews every 2 s for 40 s: b never gets it
        clock.now += 2
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
    assert b.holder == "a"
    assert not b.guard.allowed()
    assert store.lease is not None
    assert store.lease["spec"]["leaseTransitions"] == 0


async def test_a_leaders_renewal_is_one_request() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    store.calls.clear()
    assert await a.try_acquire_or_renew()
    assert store.calls == ["replace"]


async def test_expiry_is_judged_from_when_this_process_saw_the_record_change() -> None:
    store, clock = FakeLeases(), Clock()
    # The holder's clock is a day behind: its renewTime looks long expired by wall clock.
    a = elector(store, clock, "a", wall="2026-12-01T05:00:00.000000Z")
    b = elector(store, clock, "b")
    assert await a.try_acquire_or_renew()
    clock.now += 5  # a stops renewing (dead); b first looks 5 s later
    assert not await b.try_acquire_or_renew()  # first seen now: 15 s from now
    clock.now += 14.9
    assert not await b.try_acquire_or_renew()
    clock.now += 0.2
    assert await b.try_acquire_or_renew()
    assert store.holder == "b"
    assert store.lease is not None
    assert store.lease["spec"]["leaseTransitions"] == 1


async def test_a_holder_with_a_longer_lease_duration_is_waited_for() -> None:
    """After an upgrade that shortened the durations, a standby waits out the holder's
    own (longer) duration: the old leader may write until then."""
    store, clock = FakeLeases(), Clock()
    old = Elector(
        store,
        LeaderElection(lease=LEASE, identity="old", lease_duration_s=40, renew_deadline_s=30),
        clock=clock,
        wall=lambda: "2026-12-02T05:00:00.000000Z",
        sleep=clock.sleep,
    )
    assert await old.try_acquire_or_renew()
    new = elector(store, clock, "new")  # 15 s
    assert not await new.try_acquire_or_renew()
    clock.now += 20  # past the standby's 15 s, within the holder's 40 s
    assert not await new.try_acquire_or_renew()
    clock.now += 20.1
    assert await new.try_acquire_or_renew()


async def test_a_changing_record_is_never_expired() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.acquire()
    for _ in range(10):
        clock.now += 9  # b looks rarely; a renewed in between each time
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()


async def test_a_conflict_means_another_candidate_won() -> None:
    store, clock = FakeLeases(), Clock()
    a, b, c = (elector(store, clock, n) for n in "abc")
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    assert not await c.try_acquire_or_renew()
    clock.now += 16  # a died; b and c both see it expired

    def c_wins() -> None:
        store.before_write = None
        assert store.lease is not None
        store._store({**store.lease["spec"], "holderIdentity": "c"})

    store.before_write = c_wins
    assert not await b.try_acquire_or_renew()  # its write carried the version it read: 409
    assert store.holder == "c"
    assert not b.guard.allowed()
    assert b.last_error is not None
    assert "409" in b.last_error


async def test_of_two_creates_one_wins() -> None:
    store, clock = FakeLeases(), Clock()
    b = elector(store, clock, "b")
    real_get = store.get

    async def stale_read(*, timeout_s: float) -> dict[str, Any] | None:
        await real_get(timeout_s=timeout_s)
        store._store(Record("a", 15).spec())  # a's create lands between b's read and create
        return None

    store.get = stale_read  # type: ignore[method-assign]
    assert not await b.try_acquire_or_renew()
    assert store.holder == "a"
    assert b.last_error is not None
    assert "409" in b.last_error


async def test_a_leader_that_cannot_renew_stops_at_the_renew_deadline() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    acquired = clock.now
    store.down = True
    why = await a.keep()
    assert "past the renew deadline of 10 s" in why
    assert "connection refused" in why
    assert 10 <= clock.now - acquired <= 12  # tried every 2 s until 10 s had passed
    with pytest.raises(NotLeader):
        a.guard.check()


async def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    assert store.lease is not None
    store._store({**store.lease["spec"], "holderIdentity": "usurper"})
    why = await a.keep()
    assert why == "it is held by usurper"
    assert not a.guard.allowed()


async def test_a_paused_leader_gives_up_before_it_renews() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    await a.acquire()
    clock.now += 20  # SIGSTOP for 20 s: monotonic time went on
    store.calls.clear()
    assert "renew deadline" in await a.keep()
    assert store.calls == []  # not even a late renewal


async def test_a_released_lease_is_taken_at_the_next_attempt() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    assert await a.release()
    assert store.holder is None
    assert store.lease is not None
    assert store.lease["spec"]["leaseDurationSeconds"] == 1
    assert not a.guard.allowed()
    clock.now += 2
    assert await b.try_acquire_or_renew()
    assert not await a.release()  # no longer ours: nothing written
    assert store.holder == "b"


async def test_a_follower_keeps_trying_through_api_trouble() -> None:
    store, clock = FakeLeases(), Clock()
    a = elector(store, clock, "a")
    store.down = True
    assert not await a.try_acquire_or_renew()
    assert a.last_error == "read: connection refused"
    store.down = False
    await a.acquire()
    assert a.guard.allowed()
    assert a.last_error is None


def test_the_guard_refuses_once_the_renew_deadline_passed() -> None:
    clock = Clock()
    guard = LeaseGuard(renew_deadline_s=10, clock=clock)
    with pytest.raises(NotLeader):
        guard.check()  # never renewed
    guard.renewed_at = clock.now
    clock.now += 9.9
    guard.check()
    clock.now += 0.1
    with pytest.raises(NotLeader):
        guard.check()


async def test_every_write_of_kube_checks_the_guard_before_sending() -> None:
    clock = Clock()
    guard = LeaseGuard(renew_deadline_s=10, clock=clock)
    guard.renewed_at = clock.now - 30  # a leader paused for 30 s
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))  # nothing there
    try:
        kube = Kube(api, guard=guard)
        meta = {"name": "x", "namespace": "ns"}
        writes = [
            kube.write_secret({"metadata": meta}, current=None),
            kube.patch_status("ns", "x", resource_version="1", status={}),
            kube.post_event({"metadata": meta}),
            kube.apply({"kind": "Service", "metadata": meta}),
            kube.delete_backend_object("Service", "ns", "x"),
        ]
        for write in writes:
            with pytest.raises(NotLeader):
                await write
        assert kube.writes == {"secret": 0, "status": 0, "event": 0, "backend": 0}
    finally:
        await api.close()


def test_election_timings_are_checked() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaderElection(lease=LEASE, identity="a", lease_duration_s=10, renew_deadline_s=10)
    with pytest.raises(ValueError, match="positive"):
        LeaderElection(lease=LEASE, identity="a", retry_period_s=0)
    run = ["run", "--namespace", "a", "--gateway-config-secret", "a/b"]
    with pytest.raises(SystemExit) as exited:
        cli.main([*run, "--lease-duration", "4", "--renew-deadline", "5"])
    assert exited.value.code == 2


def test_election_flags_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = ["run", "--namespace", "a", "--gateway-config-secret", "a/b"]
    monkeypatch.setenv("POD_NAME", "rolegate-operator-7d9f-x2")
    args = cli.parser().parse_args(run)
    chosen = cli._leader_election(args)
    assert chosen is not None
    assert (chosen.lease_duration_s, chosen.renew_deadline_s, chosen.retry_period_s) == (15, 10, 2)
    assert chosen.lease[1] == "rolegate-operator"
    assert chosen.identity.startswith("rolegate-operator-7d9f-x2_")
    assert chosen.identity != cli._leader_election(args).identity  # type: ignore[union-attr]
    assert cli._leader_election(cli.parser().parse_args([*run, "--no-leader-elect"])) is None
    named = cli.parser().parse_args([*run, "--leader-election-namespace", "ops"])
    assert cli._leader_election(named).lease == ("ops", "rolegate-operator")  # type: ignore[union-attr]
    (tmp_path / "namespace").write_text("team-a\n")
    assert pod_namespace(tmp_path / "namespace") == "team-a"
    assert pod_namespace(tmp_path / "absent") == "default"
