"""Rollout truth in status, end to end: three real gateway processes keep their Leases in a
real API server, the operator (``--await-gateways``) turns them into ``status.gateways`` and
``Ready``, and kstatus itself (the Go library Flux uses, built by devstack) reads the result.

A rebind is ``RollingOut`` until every live replica serves it, then ``Served`` 3/3; a frozen
(SIGSTOP) replica holds a change back only until its Lease expires (2/2), and counts again
once thawed; Leases come back after an API server restart and are deleted on a clean stop.
The control plane is this module's own (one test restarts its API server). Times are
printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import kstatus
from devstack.k8s.controlplane import ControlPlane
from devstack.stack import GatewayProcess, OperatorProcess, install_crd
from rolegate_gateway import leases
from tests.fakes import manifests as m
from tests.fixtures.cluster import capture_suspended
from tests.fixtures.faults import (
    CONFIG,
    NOWHERE,
    Namespace,
    new_namespace,
    running,
    utc_now,
    wait,
)

pytestmark = pytest.mark.cluster

#: The gateways' Lease duration and renew interval here (seconds): short, so a frozen
#: replica stops counting within seconds.
LEASE_S = 4
RENEW_S = 0.5


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver of this module's own (a test restarts the API server)."""
    with ControlPlane(bin_dir=k8s_bin_dir) as cp:
        install_crd(cp)
        yield cp


@pytest.fixture(scope="session")
def kstatus_bin(pytestconfig: pytest.Config) -> Path:
    """rolegate-kstatus, built first (about a minute) when missing."""
    with capture_suspended(pytestconfig):
        return kstatus.ensure()


def gateways(ns: Namespace, count: int = 3) -> list[GatewayProcess]:
    presence = ["--presence-lease-duration", str(LEASE_S), "--presence-renew", str(RENEW_S)]
    return [
        GatewayProcess(
            kubeconfig=ns.plane.kubeconfig,
            config_secret=f"{ns.name}/{CONFIG}",
            log_path=ns.tmp / f"gateway-{i}.log",
            extra=presence,
        )
        for i in range(count)
    ]


def awaiting_operator(ns: Namespace, serving: Namespace | None = None) -> OperatorProcess:
    """The operator writing ``ns``'s config Secret for the roles of ``serving`` (default
    ``ns``), with ``--await-gateways``."""
    return OperatorProcess(
        kubeconfig=ns.plane.kubeconfig,
        namespaces=[(serving or ns).name],
        config_secret=f"{ns.name}/{CONFIG}",
        log_path=ns.tmp / "operator.log",
        await_gateways=True,
        extra=["--log-level", "debug"],
    )


def role(name: str, model: str) -> dict[str, Any]:
    return m.role(name, binding="vllm", model=model, host=NOWHERE)


def llmrole(ns: Namespace, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(ns.kubectl("get", "llmrole", name, "-o", "json"))
    return body


def ready(body: dict[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of Ready; empty before there is one."""
    for cond in (body.get("status") or {}).get("conditions", []):
        if cond["type"] == "Ready":
            return cond["status"], cond["reason"], cond["message"]
    return "", "", ""


def shows(
    ns: Namespace,
    name: str,
    want: tuple[str, str],
    serving: int,
    total: int,
    *,
    roles: Namespace | None = None,
) -> bool:
    """Whether role ``name`` (in ``roles``, default ``ns``) has Ready ``want`` with
    ``serving`` of ``total`` replicas, for its current spec (observedGeneration) and the
    config the gateways of ``ns`` were given."""
    body = llmrole(roles or ns, name)
    status = body.get("status") or {}
    config = ns.config()
    hashes = {r.name: r.hash for r in config.roles} if config else {}
    return (
        ready(body)[:2] == want
        and status.get("gateways") == {"serving": serving, "total": total}
        and status.get("observedGeneration") == body["metadata"]["generation"]
        and status.get("configHash") == hashes.get(name)
    )


def served_by(ns: Namespace, count: int, *, roles: Namespace | None = None) -> Callable[[], bool]:
    """Whether role extract is Ready, Served by ``count`` of ``count`` replicas."""
    return lambda: shows(ns, "extract", ("True", "Served"), count, count, roles=roles)


def lease_names(ns: Namespace) -> list[str]:
    found = ns.kubectl("get", "leases", "-l", leases.selector(CONFIG), "-o", "json")
    return sorted(item["metadata"]["name"] for item in json.loads(found)["items"])


def ready_events(ns: Namespace, name: str) -> list[tuple[str, str]]:
    """(reason, eventTime) of the operator's Ready Events about role ``name``, oldest first."""
    found = json.loads(ns.kubectl("get", "events.events.k8s.io", "-o", "json"))["items"]
    mine = [
        e
        for e in found
        if e["regarding"]["name"] == name and e.get("note", "").startswith("Ready=")
    ]
    return sorted(((e["reason"], e["eventTime"]) for e in mine), key=lambda e: e[1])


def seconds_since(before: str, after: str) -> float:
    """Seconds from one RFC 3339 time to another (both this machine's clock)."""
    parse = datetime.datetime.fromisoformat
    return (parse(after) - parse(before)).total_seconds()


def served_after(ns: Namespace, name: str, before: str) -> float:
    """Seconds from ``before`` (RFC 3339) to the last Served Event of role ``name``: when the
    operator wrote Ready=Served, to the microsecond."""
    return seconds_since(before, ready_events(ns, name)[-1][1])


def test_ready_waits_for_every_live_gateway_replica(
    plane: ControlPlane, kstatus_bin: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    gws, op = gateways(ns), awaiting_operator(ns)
    with running(op, *gws):
        for gw in gws:
            gw.wait_serving()
        op.wait_live()
        wait("three gateway Leases", lambda: len(lease_names(ns)) == 3, 30, op, *gws)

        # A new role: kubectl apply -> Served by 3 of 3.
        before = utc_now()
        ns.apply(role("extract", "tiny"))
        wait("Served 3/3", served_by(ns, 3), 60, op, *gws)
        took = served_after(ns, "extract", before)
        print(f"\nkubectl apply -> Ready=Served by 3 of 3 gateway replicas: {took:.3f} s")
        assert ready(llmrole(ns, "extract"))[2].endswith("served by 3 of 3 gateway replicas")
        assert kstatus.compute(llmrole(ns, "extract"), command=kstatus_bin)[0] == "Current"

        # A rebind: RollingOut (an Event says so) until every replica serves it.
        before = utc_now()
        ns.apply(role("extract", "tiny-2"))
        wait("Served 3/3 again", served_by(ns, 3), 60, op, *gws)
        took = served_after(ns, "extract", before)
        (was, written), (now, served) = ready_events(ns, "extract")[-2:]
        assert (was, now) == ("RollingOut", "Served")
        # RollingOut is posted by the pass that writes the config: the data plane's share.
        rollout = seconds_since(written, served)
        print(f"rebind: kubectl apply -> Ready=Served by 3 of 3: {took:.3f} s")
        print(f"rebind: config written (RollingOut) -> Served by 3 of 3: {rollout:.3f} s")
        for gw in gws:
            assert gw.status()["roles"]["extract"]["model"] == "tiny-2"

        # One replica frozen: a change stays RollingOut (2 of 3) until its Lease expires.
        gws[2].send(signal.SIGSTOP)
        try:
            frozen = time.monotonic()
            ns.apply(role("extract", "tiny-3"))
            rolling = ("False", "RollingOut")
            wait("RollingOut 2/3", lambda: shows(ns, "extract", rolling, 2, 3), 30, op)
            body = llmrole(ns, "extract")
            assert ready(body)[2].startswith("served by 2 of 3 gateway replicas")
            assert kstatus.compute(body, command=kstatus_bin)[0] == "InProgress"
            wait("Served 2/2", served_by(ns, 2), 30, op)
            held = time.monotonic() - frozen
            print(f"frozen replica: RollingOut until its Lease expired, {held:.2f} s")
            assert held >= LEASE_S - 2 * RENEW_S - 0.5  # not before its Lease could expire
            assert kstatus.compute(llmrole(ns, "extract"), command=kstatus_bin)[0] == "Current"
        finally:
            gws[2].send(signal.SIGCONT)

        # Thawed: it catches up and counts again.
        wait("Served 3/3 after the thaw", served_by(ns, 3), 30, op, *gws)
        assert gws[2].status()["roles"]["extract"]["model"] == "tiny-3"

        def all_live() -> bool:
            return all(gw.status()["presence"]["liveReplicas"] == 3 for gw in gws)

        wait("every replica counting 3 live", all_live, 10, op, *gws)
    assert lease_names(ns) == []  # each gateway deleted its Lease on its clean stop


def test_leases_come_back_after_an_api_server_restart(
    plane: ControlPlane, kstatus_bin: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    gws, op = gateways(ns), awaiting_operator(ns)
    with running(op, *gws):
        for gw in gws:
            gw.wait_serving()
        op.wait_live()
        ns.apply(role("extract", "tiny"))
        wait("Served 3/3", served_by(ns, 3), 60, op, *gws)

        down = plane.restart_apiserver(down_s=2)
        print(f"\nkube-apiserver down and back in {down:.1f} s")
        restarted, back = time.monotonic(), utc_now()

        def renewed() -> bool:
            presences = [gw.status()["presence"] for gw in gws]
            return all(p["error"] is None and p["renewedAt"] > back for p in presences)

        wait("every gateway renewing again", renewed, 60, op, *gws)
        ns.apply(role("extract", "tiny-2"))
        wait("Served 3/3 after the restart", served_by(ns, 3), 60, op, *gws)
        print(f"restart -> a rebind Served 3/3: {time.monotonic() - restarted:.2f} s")
        assert len(lease_names(ns)) == 3
        assert kstatus.compute(llmrole(ns, "extract"), command=kstatus_bin)[0] == "Current"
    assert lease_names(ns) == []


def test_leases_are_polled_when_the_config_namespace_is_not_served(
    plane: ControlPlane, kstatus_bin: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The roles in one namespace, the config Secret and the gateways in another that the
    operator does not serve: kopf brings no Lease event, the Leases are polled instead."""
    ns = new_namespace(plane, tmp_path, request)
    team = new_namespace(plane, tmp_path, request)
    gws, op = gateways(ns, count=2), awaiting_operator(ns, team)
    with running(op, *gws):
        for gw in gws:
            gw.wait_serving()
        op.wait_live()
        team.apply(role("extract", "tiny"))
        wait("Served 2/2", served_by(ns, 2, roles=team), 60, op, *gws)
        before = utc_now()
        team.apply(role("extract", "tiny-2"))
        wait("Served 2/2 again", served_by(ns, 2, roles=team), 60, op, *gws)
        took = served_after(team, "extract", before)
        print(f"\npolled Leases: kubectl apply -> Ready=Served by 2 of 2: {took:.3f} s")
        assert kstatus.compute(llmrole(team, "extract"), command=kstatus_bin)[0] == "Current"
