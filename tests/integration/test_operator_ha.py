"""Two operator replicas on a real API server, electing a leader through a
``coordination.k8s.io/v1`` Lease: only the leader writes; a SIGKILLed leader is replaced
within the lease duration; a leader paused past its lease wakes up to write nothing; an API
server restart ends with one leader and converged roles.

Short timings (lease 4 s, renew deadline 3 s, retry 0.5 s) keep the tests quick; the bounds
are stated in them. Writes are counted per replica in the API server's audit log: each
replica's User-Agent names its Lease identity (``rolegate-operator (<identity>)``).
Failover times are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from devstack import http
from devstack.k8s.controlplane import ControlPlane
from devstack.stack import OperatorProcess, install_crd
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import api_client
from rolegate_gateway.lease_api import LeaseApi
from rolegate_operator.apply import Kube
from rolegate_operator.leader import Elector, NotLeader
from rolegate_operator.render import config_secret
from rolegate_operator.settings import LeaderElection
from tests.fixtures.faults import (
    CONFIG,
    RESYNC_S,
    Namespace,
    new_namespace,
    role,
    running,
    utc_now,
    wait,
)

pytestmark = pytest.mark.cluster

LEASE = "rolegate-operator"
#: The election's timings in these tests (seconds).
LEASE_S, RENEW_S, RETRY_S = 4.0, 3.0, 0.5
#: What a test allows on top of the lease duration for a takeover: one retry period, and
#: room for a loaded 2-core machine.
TAKEOVER_MARGIN_S = 3.0
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with an audit log (writes counted per replica), restarted by
    one test: this module's own."""
    with ControlPlane(bin_dir=k8s_bin_dir, audit=True) as cp:
        install_crd(cp)
        yield cp


def replica(ns: Namespace, name: str) -> OperatorProcess:
    return OperatorProcess(
        kubeconfig=ns.plane.kubeconfig,
        namespaces=[ns.name],
        config_secret=f"{ns.name}/{CONFIG}",
        log_path=ns.tmp / f"operator-{name}.log",
        extra=["--resync-interval", str(RESYNC_S), "--log-level", "debug"],
        leader_election=[
            "--leader-election-namespace",
            ns.name,
            "--lease-duration",
            str(LEASE_S),
            "--renew-deadline",
            str(RENEW_S),
            "--retry-period",
            str(RETRY_S),
        ],
    )


def report(op: OperatorProcess) -> dict[str, Any]:
    """The liveness report: ``{"reconcile": {...}}`` from a leader (kopf's probe),
    ``{"standby": {...}}`` from a replica waiting for the Lease."""
    return http.get_json(op.liveness, timeout_s=2)


def identity(op: OperatorProcess) -> str:
    answer = report(op)
    if "reconcile" in answer:
        return str(answer["reconcile"]["leader"])
    return str(answer["standby"]["identity"])


def holder(ns: Namespace) -> str:
    """The Lease's holder, as ``kubectl get lease`` shows it ("" for none)."""
    return ns.kubectl("get", "lease", LEASE, "-o", "jsonpath={.spec.holderIdentity}").strip()


def the_leader(ns: Namespace, *replicas: OperatorProcess) -> OperatorProcess | None:
    """The one running replica that runs the operator and holds the Lease; None while that
    is not so (none yet, or two claiming it)."""
    running_ = [op for op in replicas if op.returncode is None]
    leading = [op for op in running_ if "reconcile" in report(op)]
    if len(leading) == 1 and identity(leading[0]) == holder(ns):
        return leading[0]
    return None


def writes_by(plane: ControlPlane, ns: Namespace, who: str, since: str) -> dict[str, int]:
    """Write requests (Secrets, LLMRoles and their status) in ``ns`` by the replica whose
    identity is ``who``, received at or after ``since`` (RFC 3339), by verb and resource."""
    counts: dict[str, int] = {}
    for event in plane.audit_events():
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") != "ResponseComplete"
            or f"({who})" not in str(event.get("userAgent", ""))
            or event.get("verb") not in WRITE_VERBS
            or ref.get("namespace") != ns.name
            or event.get("requestReceivedTimestamp", "") < since
        ):
            continue
        what = "/".join(filter(None, [ref.get("resource"), ref.get("subresource")]))
        key = f"{event['verb']} {what}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def ready(ns: Namespace, *names: str) -> bool:
    return all(ns.condition(name, "Ready")[0] == "True" for name in names)


def start_pair(ns: Namespace, a: OperatorProcess, b: OperatorProcess) -> OperatorProcess:
    """Wait until both answer and one of them leads; returns the leader."""
    a.wait_live()
    b.wait_live()
    wait("one replica leads", lambda: the_leader(ns, a, b), 60, a, b)
    lead = the_leader(ns, a, b)
    assert lead is not None
    return lead


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_lease_api_and_the_write_guard_on_a_real_api_server(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The elector's Lease calls as the API server answers them (create, a write at a stale
    resourceVersion refused with 409, takeover), and a frozen leader's write refused before
    it is sent; the clock is a fake one, so a freeze is one assignment."""
    ns = new_namespace(plane, tmp_path, request)
    clock = Clock()
    api = await api_client(plane.kubeconfig)
    lease = LeaseApi(client.CoordinationV1Api(api), ns.name, LEASE)
    try:
        a, b = (
            Elector(
                lease,
                LeaderElection(
                    lease=(ns.name, LEASE),
                    identity=name,
                    lease_duration_s=LEASE_S,
                    renew_deadline_s=RENEW_S,
                    retry_period_s=RETRY_S,
                ),
                clock=clock,
            )
            for name in ("replica-a", "replica-b")
        )
        assert await a.try_acquire_or_renew()
        assert holder(ns) == "replica-a"
        first = await lease.get(timeout_s=5)
        assert first is not None
        clock.now += RETRY_S
        assert await a.try_acquire_or_renew()  # renewed: a new resourceVersion
        assert not await b.try_acquire_or_renew()
        with pytest.raises(ApiException) as stale:
            await lease.replace(first, timeout_s=5)
        assert stale.value.status == 409

        kube = Kube(api, guard=a.guard)
        clock.now += RENEW_S  # replica-a froze past its renew deadline
        body = config_secret(GatewayConfig(roles=()), namespace=ns.name, name=CONFIG)
        with pytest.raises(NotLeader):
            await kube.write_secret(body, current=None)
        assert ns.config() is None  # nothing was sent
        assert not await b.try_acquire_or_renew()  # unchanged for 3 s of b's clock, not 4
        clock.now += LEASE_S
        assert await b.try_acquire_or_renew()
        assert holder(ns) == "replica-b"
        assert "past the renew deadline" in await a.keep()
        assert await b.release()
        assert holder(ns) == ""
    finally:
        await api.close()


def test_one_of_two_operators_leads_and_only_it_writes(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    a, b = replica(ns, "a"), replica(ns, "b")
    since = utc_now()
    with running(a, b):
        lead = start_pair(ns, a, b)
        follower = b if lead is a else a
        ns.apply(role("r1"), role("r2"))
        wait("r1, r2 in the config", lambda: ns.config_roles() == ["r1", "r2"], 30, a, b)
        wait("r1, r2 Ready", lambda: ready(ns, "r1", "r2"), 30, a, b)
        ns.kubectl("delete", "llmrole", "r2")
        wait("r1 alone in the config", lambda: ns.config_roles() == ["r1"], 30, a, b)
        time.sleep(RESYNC_S)  # a resync of the follower's, were it reconciling

        assert holder(ns) == identity(lead)
        standby = report(follower)["standby"]
        assert standby["holder"] == identity(lead)
        assert "reconcile" not in report(follower)
        assert writes_by(plane, ns, standby["identity"], since) == {}
        wrote = writes_by(plane, ns, identity(lead), since)
        print(f"\nthe leader's writes: {wrote}")
        assert wrote.get("create secrets") == 1
        assert wrote.get("patch llmroles/status", 0) >= 2


def test_a_sigkilled_leader_is_replaced_within_the_lease_duration(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    a, b = replica(ns, "a"), replica(ns, "b")
    with running(a, b):
        lead = start_pair(ns, a, b)
        follower = b if lead is a else a
        ns.apply(role("r1"))
        wait("r1 in the config", lambda: ns.config_roles() == ["r1"], 30, a, b)
        heir = identity(follower)

        lead.kill()
        killed = time.monotonic()
        ns.apply(role("r3"))  # made while nobody leads
        taken = wait("the follower holds the Lease", lambda: holder(ns) == heir, 30, follower)
        leads = time.monotonic() - killed
        wait("it runs the operator", lambda: the_leader(ns, a, b) is follower, 30, follower)
        running_s = time.monotonic() - killed
        wait("r1, r3 in the config", lambda: ns.config_roles() == ["r1", "r3"], 30, follower)
        wait("r3 Ready", lambda: ready(ns, "r3"), 30, follower)
        converged = time.monotonic() - killed
        print(
            f"\nfailover: Lease taken {leads:.2f} s after the SIGKILL (polled {taken:.2f} s), "
            f"operator running {running_s:.2f} s, the change converged {converged:.2f} s"
        )
        assert leads <= LEASE_S + TAKEOVER_MARGIN_S


def test_a_leader_stopped_by_sigterm_hands_over_at_once(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    a, b = replica(ns, "a"), replica(ns, "b")
    with running(a, b):
        lead = start_pair(ns, a, b)
        follower = b if lead is a else a
        heir = identity(follower)
        ns.apply(role("r1"))
        wait("r1 in the config", lambda: ns.config_roles() == ["r1"], 30, a, b)

        lead.send(signal.SIGTERM)
        stopped = time.monotonic()
        assert lead.wait_exit(15) == 0
        exited = time.monotonic() - stopped
        took = wait("the follower holds the Lease", lambda: holder(ns) == heir, 30, follower)
        handed = time.monotonic() - stopped
        print(f"\nSIGTERM: exited {exited:.2f} s, the Lease handed over {handed:.2f} s after it")
        assert "released the lease" in lead.log_text()
        assert took <= 2 * RETRY_S + 1.0  # the follower's next attempt, not the lease's expiry
        ns.apply(role("r2"))
        wait("r1, r2 in the config", lambda: ns.config_roles() == ["r1", "r2"], 30, follower)


def test_a_paused_leader_that_lost_the_lease_writes_nothing(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    a, b = replica(ns, "a"), replica(ns, "b")
    with running(a, b):
        old = start_pair(ns, a, b)
        new = b if old is a else a
        ns.apply(role("r1"), role("r2"))
        wait("r1, r2 Ready", lambda: ready(ns, "r1", "r2"), 30, a, b)
        paused = identity(old)

        old.send(signal.SIGSTOP)
        stopped = utc_now()
        try:
            wait("the other leads", lambda: the_leader(ns, new) is new, 30, new)
            # Changes the paused one would act on when it wakes: a role gone, one new.
            ns.kubectl("delete", "llmrole", "r2")
            ns.apply(role("r3"))
            wait("r1, r3 in the config", lambda: ns.config_roles() == ["r1", "r3"], 30, new)
            wait("r3 Ready", lambda: ready(ns, "r3"), 30, new)
            time.sleep(LEASE_S)  # paused well past the lease duration
        finally:
            old.send(signal.SIGCONT)
        status = old.wait_exit(10)
        log = old.log_text()
        print(f"\nthe woken leader exited with {status}: {log.splitlines()[-1]}")
        assert status == 1
        assert "lost the lease" in log or "write refused" in log
        assert writes_by(plane, ns, paused, stopped) == {}
        assert holder(ns) == identity(new)
        assert ns.config_roles() == ["r1", "r3"]
        assert ready(ns, "r1", "r3")


def test_an_apiserver_restart_ends_with_one_leader_and_converged_roles(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    a, b = replica(ns, "a"), replica(ns, "b")
    with running(a, b):
        start_pair(ns, a, b)
        ns.apply(role("r1"))
        wait("r1 Ready", lambda: ready(ns, "r1"), 30, a, b)

        down = plane.restart_apiserver(down_s=1.0)
        ns.apply(role("r3"))
        restarted: list[str] = []

        def one_leader() -> OperatorProcess | None:
            for op in (a, b):  # as Kubernetes would: a replica that exited starts again
                if op.returncode is not None:
                    assert op.returncode == 1, op.log_tail()
                    restarted.append(op.name)
                    op.start()
            return the_leader(ns, a, b)

        took = wait("one leader again", one_leader, 60)
        wait("r1, r3 in the config", lambda: ns.config_roles() == ["r1", "r3"], 60)
        wait("r1, r3 Ready", lambda: ready(ns, "r1", "r3"), 30)
        print(
            f"\nAPI server down/up {down:.1f} s; replicas that exited and were restarted: "
            f"{len(restarted)}; one leader {took:.2f} s after it was back"
        )
        lead = the_leader(ns, a, b)
        assert lead is not None
        other = b if lead is a else a
        assert "standby" in report(other)
