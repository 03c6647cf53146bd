"""Backends: EndpointSlices read as the pods to call, and the least-in-flight picker."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.backends import Address, Backends, ready_addresses
from rolegate_gateway.config import Backend, GatewayConfig, RoleConfig
from tests.fakes.configs import role_config

BACKEND = Backend(namespace="team", service="rolegate-llama")


def endpoint(ip: str, **conditions: bool | None) -> dict[str, Any]:
    """One slice endpoint; a condition given as None is left out."""
    given = {k: v for k, v in conditions.items() if v is not None}
    return {"addresses": [ip], "conditions": given}


def slice_(name: str, *endpoints: dict[str, Any], port: int = 8000) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": port}],
        "endpoints": list(endpoints),
    }


def served(name: str, backend: Backend = BACKEND) -> RoleConfig:
    rc = role_config(name, base_url=f"http://{backend.service}.{backend.namespace}.svc:8000/v1")
    return rc.model_copy(update={"upstream": rc.upstream.model_copy(update={"backend": backend})})


def picture(*ips: str) -> list[dict[str, Any]]:
    return [slice_("s1", *(endpoint(ip, ready=True) for ip in ips))]


async def backends_with(*ips: str, roles: tuple[str, ...] = ("extract",)) -> Backends:
    backends = Backends()
    backends.sync(GatewayConfig(roles=tuple(served(r) for r in roles)))
    backends.replace(BACKEND, picture(*ips))
    return backends


# -- slices -----------------------------------------------------------------------------------


def test_only_ready_endpoints_that_are_not_terminating_take_calls() -> None:
    slices = [
        slice_(
            "a",
            endpoint("10.0.0.1", ready=True),
            endpoint("10.0.0.2", ready=False),
            endpoint("10.0.0.3", ready=None),  # absent: ready, per the API
            endpoint("10.0.0.4", ready=True, terminating=True),  # publishNotReadyAddresses
            endpoint("10.0.0.5", ready=False, serving=True, terminating=True),
        )
    ]
    ready, not_ready = ready_addresses(slices, "http")
    assert ready == (Address("10.0.0.1", 8000), Address("10.0.0.3", 8000))
    assert not_ready == 3


def test_the_port_is_the_named_one_and_several_slices_add_up() -> None:
    slices = [
        slice_("a", endpoint("10.0.0.1"), port=8000),
        slice_("b", endpoint("10.0.0.2"), endpoint("10.0.0.1"), port=8000),  # moving between
        {"metadata": {"name": "c"}, "ports": [{"name": "grpc", "port": 9090}], "endpoints": []},
        {"metadata": {"name": "empty"}, "ports": None, "endpoints": None},
    ]
    ready, not_ready = ready_addresses(slices, "http")
    assert [str(a) for a in ready] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert not_ready == 0
    slices[2]["endpoints"] = [endpoint("10.0.0.9")]
    assert ready_addresses(slices, "grpc")[0] == (Address("10.0.0.9", 9090),)
    unnamed = [{"metadata": {"name": "u"}, "ports": [{"port": 80}], "endpoints": [endpoint("h")]}]
    assert ready_addresses(unnamed, "") == ((Address("h", 80),), 0)


def test_a_pick_routes_to_the_pod_keeping_path_and_query_exact() -> None:
    backends = Backends()
    backends.sync(GatewayConfig(roles=(served("extract"),)))
    backends.replace(BACKEND, [slice_("s", endpoint("fd00::7"))])
    pick = backends.pick(BACKEND, role="extract")
    assert pick is not None
    url = URL("http://rolegate-llama.team.svc:8000/v1/a%2Fb?x=%2F&y=1%202", encoded=True)
    assert str(pick.route(url)) == "http://[fd00::7]:8000/v1/a%2Fb?x=%2F&y=1%202"


# -- picking ----------------------------------------------------------------------------------


async def test_sequential_calls_alternate_between_idle_pods() -> None:
    backends = await backends_with("10.0.0.1", "10.0.0.2", "10.0.0.3")
    seen = []
    for _ in range(6):
        with backends.pick(BACKEND, role="extract") as pick:  # type: ignore[union-attr]
            seen.append(pick.address.host)
    assert Counter(seen) == {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 2}


async def test_the_least_busy_pod_is_picked_counting_every_role_of_the_backend() -> None:
    backends = await backends_with("10.0.0.1", "10.0.0.2", roles=("extract", "query"))
    held = [backends.pick(BACKEND, role="extract") for _ in range(3)]
    assert Counter(p.address.host for p in held if p) == {"10.0.0.1": 2, "10.0.0.2": 1}
    # The other role sees extract's calls: its call goes to the pod with one.
    other = backends.pick(BACKEND, role="query")
    assert other is not None
    assert other.address.host == "10.0.0.2"
    status = backends.status(BACKEND)
    assert status["synced"] is True
    assert status["endpoints"] == [
        {"address": "10.0.0.1:8000", "inFlight": 2},
        {"address": "10.0.0.2:8000", "inFlight": 2},
    ]
    for pick in [*held, other]:
        assert pick is not None
        pick.release()
        pick.release()  # twice counts once
    assert [e["inFlight"] for e in backends.status(BACKEND)["endpoints"]] == [0, 0]


async def test_a_call_that_fails_or_is_cancelled_releases_its_pod() -> None:
    backends = await backends_with("10.0.0.1")
    started = asyncio.Event()

    async def call(fail: bool) -> None:
        with backends.pick(BACKEND, role="extract"):  # type: ignore[union-attr]
            started.set()
            if fail:
                raise errors.UpstreamTimeout("slow")
            await asyncio.sleep(3600)

    with pytest.raises(errors.UpstreamTimeout):
        await call(fail=True)
    started.clear()
    task = asyncio.create_task(call(fail=False))
    await started.wait()
    assert backends.status(BACKEND)["endpoints"][0]["inFlight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backends.status(BACKEND)["endpoints"][0]["inFlight"] == 0


async def test_a_pod_that_leaves_gets_no_new_call_and_its_calls_finish() -> None:
    backends = await backends_with("10.0.0.1", "10.0.0.2")
    held = [backends.pick(BACKEND, role="extract") for _ in range(2)]
    backends.replace(BACKEND, picture("10.0.0.2"))  # 10.0.0.1 is gone
    new = [backends.pick(BACKEND, role="extract") for _ in range(3)]
    assert {p.address.host for p in new if p} == {"10.0.0.2"}
    for pick in [*held, *new]:
        assert pick is not None
        pick.release()
    assert backends.status(BACKEND)["endpoints"] == [{"address": "10.0.0.2:8000", "inFlight": 0}]


async def test_no_ready_pod_is_a_503_and_no_picture_means_the_service() -> None:
    backends = Backends()
    config = GatewayConfig(roles=(served("extract"),))
    backends.sync(config)
    assert backends.pick(BACKEND, role="extract") is None  # not listed yet: the Service
    assert backends.status(BACKEND)["synced"] is False
    backends.replace(BACKEND, [slice_("s", endpoint("10.0.0.1", ready=False))])
    with pytest.raises(errors.BackendNotReady) as raised:
        backends.pick(BACKEND, role="extract")
    assert raised.value.status == 503
    assert raised.value.message == (
        "the backend rolegate-llama of role 'extract' in namespace team has no ready pod "
        "(1 not ready)"
    )
    assert b'"code": "backend_not_ready"' in raised.value.body()
    # Dropped from the config: no longer known, calls of a role naming it go to base_url.
    backends.sync(GatewayConfig())
    assert backends.pick(BACKEND, role="extract") is None
    await backends.close()


async def test_a_call_right_after_a_new_backend_waits_for_its_first_list() -> None:
    backends = Backends()
    backends.sync(GatewayConfig(roles=(served("extract"),)))
    pool = backends._pools[BACKEND]
    pool.task = asyncio.create_task(asyncio.sleep(60))  # a watch whose list is on its way
    try:
        assert backends.pick(BACKEND, role="extract") is None  # no picture yet
        asyncio.get_running_loop().call_later(0.2, backends.replace, BACKEND, picture("10.0.0.7"))
        pick = await backends.first_pick(BACKEND, role="extract")
        assert pick is not None
        assert pick.address == Address("10.0.0.7", 8000)  # not the Service's address
        pick.release()
    finally:
        pool.task.cancel()
    # Not watched at all (standalone): no wait, the Service's address.
    standalone = Backends()
    standalone.sync(GatewayConfig(roles=(served("extract"),)))
    assert await asyncio.wait_for(standalone.first_pick(BACKEND, role="extract"), 0.1) is None
