"""Faults real clusters inflict, around the real operator and gateway processes: a cut
connection, an API server restart, etcd compacted or restarted, a SIGKILLed operator.

Each test runs on a control plane of this module's own (the session's shared one is never
restarted): :func:`plane` keeps an audit log, so a test counts one client's requests by its
User-Agent; :func:`etcd_plane` serves watches from etcd (no watch cache), so compacting etcd
makes a resumed watch end with 410 Gone. Every test stops what it started and checks that no
process of it is left. Convergence times are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import http
from devstack.k8s.controlplane import ControlPlane
from devstack.stack import install_crd
from rolegate_gateway.config import GatewayConfig
from tests.fakes import manifests as m
from tests.fakes.configs import role_config
from tests.fixtures.faults import (
    KEY,
    RESYNC_S,
    Traffic,
    answering_upstream,
    ask,
    gateway,
    models,
    new_namespace,
    operator,
    requests,
    role,
    running,
    utc_now,
    wait,
)

pytestmark = pytest.mark.cluster

#: Longer than kopf's former retry budget for one request (0.5 + 1 + 6 x 2 s = 13.5 s).
OUTAGE_AT_START_S = 18.0


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (watch cache on, as in production) with an audit log."""
    with ControlPlane(bin_dir=k8s_bin_dir, audit=True) as cp:
        install_crd(cp)
        yield cp


@pytest.fixture(scope="module")
def etcd_plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver without a watch cache: etcd serves every watch."""
    with ControlPlane(
        bin_dir=k8s_bin_dir, audit=True, apiserver_args=["--watch-cache=false"]
    ) as cp:
        install_crd(cp)
        yield cp


# -- watch gaps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "resync_s"),
    [("apiserver-restart", RESYNC_S), ("etcd-compaction", RESYNC_S), ("apiserver-restart", 300)],
    ids=["apiserver-restart", "etcd-compaction", "apiserver-restart-relisted"],
)
def test_a_deletion_during_a_watch_gap_is_honoured_within_one_resync(
    fault: str, resync_s: float, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With a resync of 300 s, only the watch listing anew can make the operator read
    fresh lists in time: the third case checks that path on its own."""
    cp: ControlPlane = request.getfixturevalue(
        "plane" if fault == "apiserver-restart" else "etcd_plane"
    )
    ns = new_namespace(cp, tmp_path, request)
    relay = cp.relay()
    op = operator(ns, kubeconfig=relay.kubeconfig, resync_s=resync_s)
    gw = gateway(ns)
    with running(op, gw, relays=(relay,)):
        ns.apply(
            m.secret("c-creds", apiKey=KEY),
            role("a"),
            role("b"),
            role("c", credentials={"secretRef": {"name": "c-creds"}}),
        )
        gw.wait_serving()
        wait("a, b, c served", lambda: models(gw) == ["a", "b", "c"], 30, op, gw)

        relay.cut()
        ns.kubectl("delete", "llmrole", "b")
        ns.kubectl("delete", "secret", "c-creds")
        if fault == "apiserver-restart":
            cp.restart_apiserver()  # its watch cache starts after the deletions
        else:
            ns.apply(role("a", maxAsync=3))  # a change after the deletions, then compacted
            cp.compact_etcd()
        since = utc_now()
        relay.restore()
        took = wait("only a in the config", lambda: ns.config_roles() == ["a"], 30, op)
        ready = wait(
            "c: SecretNotFound",
            lambda: ns.condition("c", "CredentialsResolved") == ("False", "SecretNotFound"),
            30,
            op,
        )
        served = wait("the gateway serves only a", lambda: models(gw) == ["a"], 30, gw)
        print(f"\n{fault}: config {took:.2f} s, status +{ready:.2f} s, gateway +{served:.2f} s")
        assert took <= RESYNC_S
        assert ask(gw, "b") == 404
        assert ask(gw, "c") == 404
        config = ns.config()
        assert config is not None
        assert KEY not in config.to_wire().decode()
        if fault == "etcd-compaction":
            assert config.roles[0].limits.max_async == 3
        # The gap really was one: kopf could not resume its watch of roles (410 Gone, or
        # 429 while the restarted server's cache fills), so it listed them anew.
        wait(
            "kopf listing the roles anew",
            lambda: requests(cp, ns.name, "kopf/", since, resource="llmroles").get("list"),
            10,
            op,
        )


# -- the gateway's watch ----------------------------------------------------------------------


def test_after_an_apiserver_restart_the_gateway_lists_once_and_watches(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    ns.write_config(GatewayConfig(roles=(role_config("a"),)))
    gw = gateway(ns)
    with running(gw):
        gw.wait_serving()
        wait("a served", lambda: models(gw) == ["a"], 30, gw)
        before = requests(plane, ns.name, "rolegate-gateway", "")
        assert before.get("list") == 1, before  # started with one list, then watched
        assert "get" not in before

        since = utc_now()
        plane.restart_apiserver()
        time.sleep(4)  # the Secret unchanged: time for a 410 loop to show, were there one
        after = requests(plane, ns.name, "rolegate-gateway", since)
        print(f"\ngateway requests in the 4 s after the restart: {after}")
        assert after.get("list", 0) <= 1
        assert after.get("watch", 0) <= 2  # one may reach the old server as it stops
        assert "get" not in after
        assert gw.log_text().count("is gone (410)") <= 1

        changed = time.monotonic()
        ns.write_config(GatewayConfig(roles=(role_config("a"), role_config("b"))))
        written = time.monotonic() - changed
        took = wait("b served", lambda: models(gw) == ["a", "b"], 30, gw)
        print(f"change written in {written:.2f} s, served {took:.2f} s later")
        assert took <= 2.0
        assert requests(plane, ns.name, "rolegate-gateway", since) == after  # the watch carried it


# -- crashes and restarts ---------------------------------------------------------------------


def test_sigkill_of_the_operator_during_a_50_role_apply_converges(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    op, gw = operator(ns), gateway(ns)
    names = [f"r{i:02d}" for i in range(50)]
    with running(op, gw):
        op.wait_live()
        gw.wait_serving()
        applying = threading.Thread(target=ns.apply, args=[role(n) for n in names])
        applying.start()
        wait("some roles in the config", lambda: bool(ns.config_roles()), 30, op)
        op.kill()
        applying.join(timeout=60)
        restarted = time.monotonic()
        op.start()
        took = wait("all 50 in the config", lambda: ns.config_roles() == names, 60, op)
        print(f"\nconverged {took:.2f} s after the restart")

        def all_ready() -> bool:
            items = json.loads(ns.kubectl("get", "llmroles", "-o", "json"))["items"]
            return len(items) == 50 and all(
                {(c["type"], c["status"]) for c in (i.get("status") or {}).get("conditions", [])}
                >= {("Ready", "True")}
                for i in items
            )

        wait("every role Ready", all_ready, 60, op)
        print(f"statuses {time.monotonic() - restarted:.2f} s after the restart")
        wait("the gateway serves all 50", lambda: models(gw) == names, 30, gw)
        config = ns.config()
        assert config is not None
        assert len({r.name for r in config.roles}) == len(config.roles) == 50


def test_an_etcd_restart_while_roles_change_converges(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    op, gw = operator(ns), gateway(ns)
    names = [f"e{i:02d}" for i in range(12)]
    kept = names[:8]  # the last four are deleted again
    with running(op, gw):
        op.wait_live()
        gw.wait_serving()
        failures: list[str] = []

        def churn() -> None:
            """Apply then delete roles one by one, each retried until the API takes it."""
            steps = [("apply", n) for n in names] + [("delete", n) for n in names[8:]]
            for verb, name in steps:
                deadline = time.monotonic() + 60
                while True:
                    if verb == "apply":
                        doc = role(name)
                        doc["metadata"]["namespace"] = ns.name
                        path = m.write(ns.tmp / f"{name}.yaml", doc)
                        args = ["apply", "-f", str(path), "--request-timeout=3s"]
                    else:
                        args = ["delete", "llmrole", name, "--ignore-not-found"]
                        args.append("--request-timeout=3s")
                    done = ns.plane.kubectl(args, namespace=ns.name, check=False, timeout_s=10)
                    if done.returncode == 0:
                        break
                    if time.monotonic() > deadline:
                        failures.append(f"{verb} {name}: {done.stderr}")
                        return
                    time.sleep(0.2)
                time.sleep(0.3)

        churner = threading.Thread(target=churn)
        churner.start()
        time.sleep(1.5)
        down = plane.restart_etcd()
        churner.join(timeout=120)
        assert not failures, failures
        took = wait("the config holds the kept roles", lambda: ns.config_roles() == kept, 60, op)
        served = wait("the gateway serves them", lambda: models(gw) == kept, 30, gw)
        print(
            f"\netcd down/up {down:.1f} s; converged {took:.2f} s after the last change, "
            f"gateway +{served:.2f} s"
        )
        for name in kept:
            assert ns.condition(name, "Ready") == ("True", "Served")


def test_a_frozen_operator_catches_up_after_sigcont(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    op = operator(ns)
    with running(op):
        op.wait_live()
        ns.apply(role("a"), role("b"))
        wait("a, b in the config", lambda: ns.config_roles() == ["a", "b"], 30, op)
        op.send(signal.SIGSTOP)
        try:
            ns.kubectl("delete", "llmrole", "b")
            ns.apply(role("c"))
            time.sleep(3)
        finally:
            op.send(signal.SIGCONT)
        took = wait("a, c in the config", lambda: ns.config_roles() == ["a", "c"], 30, op)
        print(f"\ncaught up {took:.2f} s after SIGCONT")
        assert took <= RESYNC_S


# -- an empty install -------------------------------------------------------------------------


def test_an_empty_install_gets_an_empty_config_and_a_ready_gateway(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = new_namespace(plane, tmp_path, request)
    assert json.loads(ns.kubectl("get", "secrets,llmroles", "-o", "json"))["items"] == []
    op, gw = operator(ns), gateway(ns)
    with running(op, gw):
        gw.wait_serving()
        took = wait("an empty config Secret", lambda: ns.config_roles() == [], 30, op)
        ready = wait(
            "the gateway ready",
            lambda: http.get(f"{gw.url}/readyz").status == 200,
            30,
            gw,
        )
        print(f"\nconfig written {took:.2f} s after start; gateway ready +{ready:.2f} s")
        assert models(gw) == []
        assert ask(gw, "anything") == 404


def test_an_operator_started_during_an_apiserver_outage_serves_once_it_is_back(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kopf's own start (API discovery, the namespace list) retries instead of ending the
    operator: an outage longer than its former 13.5 s retry budget is survived (the case
    of a CI run where an apiserver restart outlasted it, and the operator exited 1)."""
    ns = new_namespace(plane, tmp_path, request)
    ns.apply(role("a"))
    relay = plane.relay()
    relay.cut()
    op = operator(ns, kubeconfig=relay.kubeconfig, resync_s=300)  # b below comes by watch
    with running(op, relays=(relay,)):
        began = time.monotonic()
        while time.monotonic() - began < OUTAGE_AT_START_S:
            op.check_running()
            time.sleep(0.5)
        assert ns.config() is None  # nothing reached the API server meanwhile
        relay.restore()
        took = wait("a in the config", lambda: ns.config_roles() == ["a"], 30, op)
        ns.apply(role("b"))  # kopf watches, not only the reconciler's first list
        event = wait("b in the config", lambda: ns.config_roles() == ["a", "b"], 30, op)
        print(f"\nconfig {took:.2f} s after a {OUTAGE_AT_START_S:.0f} s outage; b +{event:.2f} s")


def test_an_operator_started_before_the_crd_waits_for_it_then_serves(
    k8s_bin_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kopf looks for the LLMRole API once (the operator turns its scanning off, so it
    needs no cluster-wide permission): the operator waits for the CRD, says so, and
    serves once it is installed."""
    with ControlPlane(bin_dir=k8s_bin_dir) as cp:
        ns = new_namespace(cp, tmp_path, request)
        op = operator(ns)
        with running(op):
            wait("the operator saying what it waits for", lambda: "crds/" in op.log_tail(), 30, op)
            assert "waiting for the LLMRole API" in op.log_tail()
            install_crd(cp)
            ns.apply(role("a"))
            took = wait("a in the config", lambda: ns.config_roles() == ["a"], 30, op)
            ns.apply(role("b"))
            event = wait("b in the config", lambda: ns.config_roles() == ["a", "b"], 30, op)
        print(f"\nconfig {took:.2f} s after the CRD and a; b +{event:.2f} s")


# -- traffic through the faults ---------------------------------------------------------------


def test_requests_survive_an_apiserver_restart_and_a_gateway_killed_mid_reload(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The gateway serves from its config, not from the API: an apiserver restart loses no
    request. A gateway SIGKILLed during a reload comes back serving the latest config;
    only the requests sent while it was dead fail (its contract)."""
    ns = new_namespace(plane, tmp_path, request)
    op, gw = operator(ns), gateway(ns)
    with answering_upstream() as upstream, running(op, gw):
        ns.apply(m.role("a", binding="vllm", model="tiny", host=upstream, maxAsync=2))
        gw.wait_serving()
        wait("a served", lambda: models(gw) == ["a"], 30, op, gw)
        traffic = Traffic(gw)
        sender = threading.Thread(target=traffic.run, name="fault-traffic")
        sender.start()
        try:
            wait("traffic flowing", lambda: traffic.codes.count(200) >= 10, 30, gw)
            began = traffic.mark()
            plane.restart_apiserver()
            wait("requests after the restart", lambda: traffic.mark() > began + 50, 30, gw)
            through_restart = traffic.codes[began:]
            assert set(through_restart) == {200}, through_restart

            ns.apply(m.role("a", binding="vllm", model="tiny", host=upstream, maxAsync=7))

            def written() -> bool:
                config = ns.config()
                return config is not None and config.roles[0].limits.max_async == 7

            wait("the change in the config Secret", written, 30, op)
            gw.kill()  # as the change reaches it
            killed = traffic.mark()
            ns.apply(m.role("a", binding="vllm", model="tiny", host=upstream, maxAsync=9))
            gw.start()
            gw.wait_serving()
            came_back = time.monotonic()
            took = wait(
                "the latest config served",
                lambda: gw.status()["roles"]["a"]["maxAsync"] == 9,
                30,
                gw,
            )
            resumed = traffic.mark()
            wait("requests after the restart", lambda: traffic.mark() > resumed + 50, 30, gw)
        finally:
            traffic.stop.set()
            sender.join()
        print(
            f"\n{len(through_restart)} requests through the apiserver restart, all 200; "
            f"gateway restarted, latest config in {took:.2f} s "
            f"({time.monotonic() - came_back:.1f} s of traffic after)"
        )
        after = traffic.codes[resumed:]
        assert set(after) == {200}, after
        dead = traffic.codes[killed:resumed]
        assert all(code == 200 or isinstance(code, str) for code in dead), dead  # no 5xx


def test_the_gateway_says_its_config_source_is_down_while_the_apiserver_is(
    plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """While the API server is down the gateway keeps serving its config and says in
    /readyz (still 200) and /status that its config source is down; then that it is back."""
    ns = new_namespace(plane, tmp_path, request)
    ns.write_config(GatewayConfig(roles=(role_config("a"),)))
    gw = gateway(ns)
    with running(gw):
        gw.wait_serving()
        wait("a served", lambda: models(gw) == ["a"], 30, gw)
        outage = threading.Thread(target=plane.restart_apiserver, kwargs={"down_s": 8})
        outage.start()
        try:

            def says_down() -> bool:
                answer = http.get(f"{gw.url}/readyz")
                return answer.status == 200 and "configSource" in json.loads(answer.body)

            # the API server's own shutdown takes up to 10 s before the watch breaks
            took = wait("/readyz saying the config source is down", says_down, 20, gw)
            assert gw.status()["configSource"]["up"] is False
            assert models(gw) == ["a"]  # still serving
        finally:
            outage.join()
        back = wait("the config source back", lambda: gw.status()["configSource"]["up"], 30, gw)
        print(f"\nsource down reported {took:.2f} s into the outage; back {back:.2f} s after")
        assert "configSource" not in http.get_json(f"{gw.url}/readyz")
