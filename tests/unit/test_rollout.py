"""status.gateways and Ready from the gateway replicas' Leases, without a cluster: which
Lease events wake the reconciler, expiry by the operator's own clock, the counts, and a
status written only when they change.

The real API server and real gateways run in tests/integration/test_rollout_status.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from rolegate_gateway import leases
from rolegate_gateway.api import ConditionStatus, GatewaysStatus
from rolegate_operator.gateways import Gateways, ready_check
from rolegate_operator.reconcile import Reconciler
from rolegate_operator.render import Check
from rolegate_operator.settings import Settings
from rolegate_operator.store import Store
from tests.unit.test_api_keys import woke
from tests.unit.test_reconcile import FakeKube, Secrets, llmrole

SERVED = Check(ConditionStatus.TRUE, "Served", "served through the gateway config")


def lease(
    name: str,
    *,
    version: int,
    hashes: dict[str, str] | None = None,
    renew: int = 0,
    duration: int = 10,
    namespace: str = "rolegate",
    config: str = "gw-config",
) -> dict[str, Any]:
    notes = {k: v for k, v in leases.report_annotations("cfg", hashes or {}).items() if v}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(version),
            "labels": leases.labels(config),
            "annotations": notes,
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration,
            "renewTime": f"2026-12-02T05:00:{renew:02d}.000000Z",
        },
    }


# -- Ready from the counts ---------------------------------------------------------------------


def test_ready_waits_for_every_live_replica() -> None:
    rolling = ready_check(SERVED, GatewaysStatus(serving=2, total=3))
    assert (rolling.status, rolling.reason) == (ConditionStatus.FALSE, "RollingOut")
    assert rolling.message.startswith("served by 2 of 3 gateway replicas")
    none = ready_check(SERVED, GatewaysStatus(serving=0, total=0))
    assert (none.status, none.reason) == (ConditionStatus.FALSE, "RollingOut")
    assert "no gateway replica reports yet" in none.message
    done = ready_check(SERVED, GatewaysStatus(serving=3, total=3))
    assert (done.status, done.reason) == (ConditionStatus.TRUE, "Served")
    assert done.message.endswith("served by 3 of 3 gateway replicas")
    unknown = ready_check(SERVED, None, unknown="the gateway Leases cannot be listed: HTTP 403")
    assert (unknown.status, unknown.reason) == (ConditionStatus.UNKNOWN, "GatewaysUnknown")
    # Only a role that is otherwise Ready waits: a broken one says what is broken.
    broken = Check(ConditionStatus.FALSE, "SecretNotFound", "Secret team/creds not found")
    assert ready_check(broken, GatewaysStatus(serving=0, total=3)) is broken


# -- events: what wakes the reconciler ---------------------------------------------------------


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


@pytest.fixture
def gateways(clock: list[float]) -> Gateways:
    settings = Settings(config_secret=("rolegate", "gw-config"), await_gateways=True)
    return Gateways(Store(stale=False), settings, clock=lambda: clock[0])


def test_a_renewal_wakes_nothing_an_arrival_a_departure_or_new_hashes_do(
    gateways: Gateways, clock: list[float]
) -> None:
    assert gateways.event("ADDED", lease("gw-a", version=1, hashes={"x": "1"}))
    clock[0] += 3
    assert not gateways.event("MODIFIED", lease("gw-a", version=2, hashes={"x": "1"}, renew=3))
    assert not gateways.event("MODIFIED", lease("gw-a", version=2, hashes={"x": "1"}, renew=3))
    assert gateways.event("MODIFIED", lease("gw-a", version=3, hashes={"x": "2"}, renew=4))
    assert gateways.event(None, lease("gw-b", version=4))  # listed by a watch started over
    assert gateways.event("DELETED", lease("gw-b", version=5))
    # Someone else's: another config Secret's replicas, another namespace.
    assert not gateways.event("ADDED", lease("gw-c", version=6, config="other"))
    assert not gateways.event("ADDED", lease("gw-d", version=7, namespace="team"))
    # A late event older than what is held changes nothing.
    assert not gateways.event("MODIFIED", lease("gw-a", version=2, hashes={"x": "1"}, renew=3))


def test_expiry_is_judged_by_the_operators_clock(gateways: Gateways, clock: list[float]) -> None:
    gateways.event("ADDED", lease("gw-a", version=1, duration=10))
    gateways.event("ADDED", lease("gw-b", version=2, duration=4))
    assert gateways.due() == 104.0
    gateways.judge((), config_hash="cfg")
    assert not gateways.expired()
    clock[0] = 104.0
    assert gateways.expired()  # b stopped renewing: a pass is due
    assert gateways.due() == 110.0
    gateways.judge((), config_hash="cfg")
    assert not gateways.expired()
    # a renews: its expiry moves on, and the due time with it.
    clock[0] = 106.0
    assert not gateways.event("MODIFIED", lease("gw-a", version=3, duration=10, renew=6))
    assert gateways.due() == 116.0
    # b comes back (SIGCONT): a replica appeared, counted again.
    assert gateways.event("MODIFIED", lease("gw-b", version=4, duration=4, renew=7))
    # A DELETED of an expired Lease changes no count.
    clock[0] = 200.0
    assert not gateways.event("DELETED", lease("gw-a", version=5))


# -- the reconcile pass ------------------------------------------------------------------------


@pytest.fixture
def world(clock: list[float]) -> tuple[Reconciler, FakeKube, list[dict[str, Any]]]:
    kube = FakeKube()
    store = Store(stale=False)
    roles = [llmrole("extract"), llmrole("query")]
    for role in roles:
        store.roles.put(("team", role["metadata"]["name"]), 1, role)
    Secrets(store)["team", "creds"] = {"apiKey": "sk-ROLLOUT-0123456789"}
    settings = Settings(config_secret=("rolegate", "gw-config"), await_gateways=True)
    reconciler = Reconciler(settings, kube, store=store)
    reconciler.gateways = Gateways(store, settings, clock=lambda: clock[0])
    return reconciler, kube, roles


def ready(kube: FakeKube, name: str) -> tuple[str, str, str]:
    status = kube.statuses[name]
    cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["reason"], cond["message"]


def see(kube: FakeKube, roles: list[dict[str, Any]]) -> None:
    """The statuses written, as the watch delivers them later."""
    for role in roles:
        name = role["metadata"]["name"]
        role["status"] = kube.statuses.get(name, role["status"])
        role["metadata"]["resourceVersion"] = str(kube.versions.get(name, 1))


async def test_ready_follows_the_rollout_and_writes_only_on_change(
    world: tuple[Reconciler, FakeKube, list[dict[str, Any]]], clock: list[float]
) -> None:
    reconciler, kube, roles = world
    await reconciler.reconcile()
    assert ready(kube, "extract")[:2] == ("False", "RollingOut")
    assert "no gateway replica reports yet" in ready(kube, "extract")[2]
    assert kube.statuses["extract"]["gateways"] == {"serving": 0, "total": 0}
    hashes = {
        r["metadata"]["name"]: kube.statuses[r["metadata"]["name"]]["configHash"] for r in roles
    }
    see(kube, roles)

    # Two replicas serve it, a third still the old config.
    old = {"extract": "0000000000000000"}
    for i, served in enumerate((hashes, hashes, old)):
        reconciler.lease_event("ADDED", lease(f"gw-{i}", version=10 + i, hashes=served))
    await reconciler.reconcile()
    assert ready(kube, "extract") == (
        "False",
        "RollingOut",
        "served by 2 of 3 gateway replicas; the others still serve an older config",
    )
    assert kube.statuses["query"]["gateways"] == {"serving": 2, "total": 3}
    see(kube, roles)
    writes, events = kube.writes["status"], len(kube.events)
    assert woke(reconciler)  # by the arrivals

    # Renewals change nothing: no wake-up, and a pass writes nothing.
    clock[0] += 3
    for i, served in enumerate((hashes, hashes, old)):
        reconciler.lease_event("MODIFIED", lease(f"gw-{i}", version=20 + i, hashes=served, renew=3))
    assert not woke(reconciler)
    await reconciler.reconcile()
    assert kube.writes["status"] == writes

    # The third replica stops renewing: once its Lease expires, every live one serves.
    clock[0] += 10
    assert reconciler.gateways.expired()
    for i in range(2):
        reconciler.lease_event("MODIFIED", lease(f"gw-{i}", version=30 + i, hashes=hashes, renew=9))
    await reconciler.reconcile()
    assert ready(kube, "extract")[:2] == ("True", "Served")
    assert ready(kube, "extract")[2].endswith("served by 2 of 2 gateway replicas")
    assert kube.statuses["extract"]["gateways"] == {"serving": 2, "total": 2}
    assert len(kube.events) == events + 2  # Ready flipped, for each role
    see(kube, roles)
    await reconciler.reconcile()
    assert kube.writes["status"] == writes + 2


async def test_without_await_gateways_ready_means_in_the_config(
    world: tuple[Reconciler, FakeKube, list[dict[str, Any]]], clock: list[float]
) -> None:
    reconciler, kube, _ = world
    settings = dataclasses.replace(reconciler.settings, await_gateways=False)
    reconciler.gateways = Gateways(reconciler.store, settings, clock=lambda: clock[0])
    reconciler.lease_event("ADDED", lease("gw-0", version=10))
    await reconciler.reconcile()
    assert ready(kube, "extract")[:2] == ("True", "Served")
    assert kube.statuses["extract"]["gateways"] == {"serving": 0, "total": 1}


async def test_a_role_not_in_the_config_shows_no_gateways(
    world: tuple[Reconciler, FakeKube, list[dict[str, Any]]],
) -> None:
    reconciler, kube, roles = world
    await reconciler.reconcile()
    assert kube.statuses["query"]["gateways"] == {"serving": 0, "total": 0}
    see(kube, roles)
    # It leaves the config: its counts go (null in the merge patch), not left stale.
    roles[1]["spec"]["credentials"]["secretRef"]["name"] = "missing"
    reconciler.store.roles.put(("team", "query"), 2, roles[1])
    await reconciler.reconcile()
    assert ready(kube, "query")[1] == "CredentialsNotResolved"
    assert "gateways" not in kube.statuses["query"]
    see(kube, roles)
    writes = kube.writes["status"]
    await reconciler.reconcile()
    assert kube.writes["status"] == writes  # and nothing is rewritten after


async def test_leases_that_cannot_be_listed_leave_ready_unknown(
    world: tuple[Reconciler, FakeKube, list[dict[str, Any]]],
) -> None:
    reconciler, kube, _ = world
    await reconciler.gateways.refresh(kube)  # the stand-in has no API client: a bug's path
    assert reconciler.gateways.unknown is not None
    await reconciler.reconcile()
    assert ready(kube, "extract")[:2] == ("Unknown", "GatewaysUnknown")
    assert "gateways" not in kube.statuses["extract"]


async def test_leases_are_polled_where_no_watch_brings_them(
    gateways: Gateways, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gateways.watched(())  # every namespace
    assert gateways.watched(("team", "rolegate"))
    assert not gateways.watched(("team",))
    listed = [[lease("gw-a", version=1)], [lease("gw-a", version=2, renew=3)], []]
    woken: list[float] = []

    async def refresh(kube: Any) -> None:  # what each list brings, the way refresh records it
        for body in listed.pop(0):
            gateways.event("MODIFIED", body)
        if not listed:
            gateways.event("DELETED", lease("gw-a", version=3))

    async def no_wait(_: float) -> None:
        if not listed:
            raise asyncio.CancelledError

    monkeypatch.setattr(gateways, "refresh", refresh)
    monkeypatch.setattr(asyncio, "sleep", no_wait)
    with pytest.raises(asyncio.CancelledError):
        await gateways.poll(FakeKube(), lambda: woken.append(clock[0]))
    assert len(woken) == 2  # it appeared, a renewal changed nothing, it went


def omitted(name: str, *, version: int, config: str) -> dict[str, Any]:
    """A replica's Lease serving ``config`` with more roles than its annotation holds: its
    role hashes are left out, only the config hash says what it serves."""
    body = lease(name, version=version)
    too_many = {"pad": "x" * leases.MAX_ROLE_HASHES_BYTES}
    notes = leases.report_annotations(config, too_many)
    assert notes[leases.ROLE_HASHES_OMITTED_ANNOTATION]
    body["metadata"]["annotations"] = {k: v for k, v in notes.items() if v}
    return body


async def test_a_replica_without_role_hashes_still_serves_the_roles_a_change_left_alone(
    world: tuple[Reconciler, FakeKube, list[dict[str, Any]]],
) -> None:
    # 10,000 roles: a Lease holds only the config hash. One role changes; until the replica
    # reloads, the other roles are still served as they are (not all RollingOut, not every
    # status rewritten), because the operator knows what the config before held.
    reconciler, kube, roles = world
    before = (await reconciler.reconcile()).config_hash
    reconciler.lease_event("ADDED", omitted("gw-0", version=10, config=before))
    await reconciler.reconcile()
    assert ready(kube, "query")[:2] == ready(kube, "extract")[:2] == ("True", "Served")
    see(kube, roles)

    roles[0]["spec"]["model"] = "gpt-4o"  # extract changes
    roles[0]["metadata"]["generation"] = 2
    reconciler.store.roles.put(("team", "extract"), 50, roles[0])
    writes = kube.writes["status"]
    after = (await reconciler.reconcile()).config_hash
    assert after != before
    assert ready(kube, "extract")[:2] == ("False", "RollingOut")
    assert kube.statuses["extract"]["gateways"] == {"serving": 0, "total": 1}
    assert kube.statuses["query"]["gateways"] == {"serving": 1, "total": 1}
    assert ready(kube, "query")[:2] == ("True", "Served")
    assert kube.writes["status"] == writes + 1  # extract's only
    see(kube, roles)

    # The replica reloads: it serves the new config, extract is Ready again.
    reconciler.lease_event("MODIFIED", omitted("gw-0", version=11, config=after))
    await reconciler.reconcile()
    assert ready(kube, "extract")[:2] == ("True", "Served")
    assert kube.statuses["extract"]["gateways"] == {"serving": 1, "total": 1}
    # A config hash the operator never judged (an operator restarted since) serves nothing.
    reconciler.lease_event("MODIFIED", omitted("gw-0", version=12, config="f" * 16))
    await reconciler.reconcile()
    assert kube.statuses["query"]["gateways"] == {"serving": 0, "total": 1}
