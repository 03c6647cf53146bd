"""Upstream health end to end on real components: LLMRoles on a real kube-apiserver, the
operator and gateway processes, llama.cpp's server as the upstream. What a GitOps user sees
in ``kubectl get llmr``: ``UpstreamReady`` turns False with the reason (a model not served,
a wrong key, an upstream down) and back to True, with Events; the checks cost one request
per interval per distinct (upstream, key), however many roles share it; and no credential
shows anywhere.

The gateway checks every :data:`INTERVAL_S` seconds here (30 s by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devstack import kstatus
from devstack.k8s.controlplane import ControlPlane
from devstack.llama.model import MODELS
from devstack.llama.server import LlamaServer
from devstack.poll import eventually
from devstack.process import free_ports
from rolegate_gateway.app import start
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.llama import API_KEY
from tests.fixtures.stack import Stack, running_stack

#: Seconds between the gateway's upstream checks in these tests.
INTERVAL_S = 1.0
WRONG_KEY = "sk-WRONG-4c1d9e7a2b"
CHECKS = ["--upstream-check-interval", str(INTERVAL_S), "--upstream-check-timeout", "1"]


@pytest.fixture
async def stack(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(cluster, namespace, kubectl, tmp_path, gateway_args=CHECKS) as up:
        yield up


def llama_role(name: str, url: str, model: str, secret: str = "llama-creds") -> dict[str, Any]:
    return m.role(
        name,
        binding="openai",
        model=model,
        host=url,
        credentials={"secretRef": {"name": secret}},
    )


async def upstream_ready(stack: Stack, name: str) -> dict[str, Any]:
    status = (await stack.role(name)).get("status") or {}
    found = [c for c in status.get("conditions", []) if c["type"] == "UpstreamReady"]
    return found[0] if found else {}


async def operator_events(stack: Stack, name: str) -> set[tuple[str, str]]:
    events = json.loads(await stack.run("get", "events", "-o", "json"))["items"]
    return {
        (e["reason"], e["type"])
        for e in events
        if e.get("reportingComponent") == "rolegate.dev/operator"
        and e["involvedObject"]["name"] == name
        and "UpstreamReady" in (e.get("message") or "")
    }


async def test_a_model_not_served_is_false_naming_the_served_ones_and_back(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(m.secret("llama-creds", apiKey=API_KEY))
    await stack.apply(llama_role("extract", llama_server.url, "tiny-a"))
    await stack.wait_condition("extract", "UpstreamReady", ("True", "Reachable"))
    await stack.wait_condition("extract", "Ready", ("True", "Served"))

    await stack.apply(llama_role("extract", llama_server.url, "tiny-c"))  # a typo
    await stack.wait_condition("extract", "UpstreamReady", ("False", "ModelNotServed"))
    message = (await upstream_ready(stack, "extract"))["message"]
    assert "model 'tiny-c' is not served" in message
    assert "served: tiny-a, tiny-b" in message
    assert "gateway replica" in message
    # routing is unchanged: the role is still served (its calls get the upstream's error)
    assert (await stack.condition("extract", "Ready")) == ("True", "Served")
    shown = await stack.run("get", "llmr", "extract")
    assert "ModelNotServed" in shown  # the Upstream column
    # kstatus (Flux, the cli-utils applier) reads Ready/Reconciling/Stalled: still Current
    if kstatus.is_built():
        body = await stack.role("extract")
        assert (await asyncio.to_thread(kstatus.compute, body))[0] == "Current"

    await stack.apply(llama_role("extract", llama_server.url, "tiny-b"))
    await stack.wait_condition("extract", "UpstreamReady", ("True", "Reachable"))
    events = await operator_events(stack, "extract")
    assert ("ModelNotServed", "Warning") in events
    assert ("Reachable", "Normal") in events


async def test_a_wrong_key_is_unauthorized_until_rotated(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(m.secret("llama-creds", apiKey=WRONG_KEY))
    await stack.apply(llama_role("query", llama_server.url, "tiny-a"))
    await stack.wait_condition("query", "UpstreamReady", ("False", "Unauthorized"))
    assert "answered 401" in (await upstream_ready(stack, "query"))["message"]

    await stack.apply(m.secret("llama-creds", apiKey=API_KEY))  # rotated
    await stack.wait_condition("query", "UpstreamReady", ("True", "Reachable"))
    await assert_no_credential(stack, API_KEY, WRONG_KEY)


async def assert_no_credential(stack: Stack, *secrets: str) -> None:
    """No secret in role statuses, Events, the processes' logs, /status or /metrics."""
    seen = {
        "statuses": await stack.run("get", "llmr", "-o", "json"),
        "events": await stack.run("get", "events", "-o", "json"),
        "gateway log": stack.gateway.log_text(),
        "operator log": stack.operator.log_text(),
        "status": json.dumps(await asyncio.to_thread(stack.gateway.status)),
        "metrics": await asyncio.to_thread(_get_text, f"{stack.gateway.url}/metrics"),
    }
    seen["statuses"] = json.dumps(
        [i.get("status") for i in json.loads(seen["statuses"])["items"]]
    )  # (a spec never holds a key: credentials are Secret refs)
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a credential in the {where}"


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


async def test_an_upstream_down_is_unreachable_then_true_once_back(
    stack: Stack, llama_models: dict[str, Path], tmp_path: Path
) -> None:
    port = free_ports(1)[0]

    def server() -> LlamaServer:
        return LlamaServer(
            {alias: llama_models[alias] for alias in MODELS},
            workdir=tmp_path,
            port=port,
            api_key=API_KEY,
        )

    upstream = server()
    upstream.start()
    try:
        await asyncio.to_thread(upstream.wait_serving)
        await stack.apply(m.secret("llama-creds", apiKey=API_KEY))
        await stack.apply(llama_role("vlm", upstream.url, "tiny-a"))
        await stack.wait_condition("vlm", "UpstreamReady", ("True", "Reachable"))

        broke = time.monotonic()
        upstream.stop()
        # within two check intervals, plus the Lease write and the operator's pass
        await stack.wait_condition(
            "vlm", "UpstreamReady", ("False", "Unreachable"), timeout_s=2 * INTERVAL_S * 1.2 + 3
        )
        flipped_s = time.monotonic() - broke
        print(
            f"\nbroken upstream -> UpstreamReady=False: {flipped_s:.2f} s (interval {INTERVAL_S} s)"
        )

        upstream = server()
        upstream.start()
        await asyncio.to_thread(upstream.wait_serving)
        back = time.monotonic()
        await stack.wait_condition(
            "vlm", "UpstreamReady", ("True", "Reachable"), timeout_s=2 * INTERVAL_S * 1.2 + 3
        )
        print(f"upstream back -> UpstreamReady=True: {time.monotonic() - back:.2f} s")
    finally:
        upstream.stop()


class CountingProxy:
    """A reverse proxy to the llama.cpp server that counts the model-list GETs by key."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.lists: Counter[str] = Counter()
        self.url = ""

    async def _forward(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == "/v1/models":
            said = request.headers.get("Authorization", "")
            self.lists[{f"Bearer {API_KEY}": "key", f"Bearer {WRONG_KEY}": "wrong key"}[said]] += 1
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.target + request.path.removeprefix("/v1"),
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app


#: Role counts of the traffic test (ROLEGATE_UPSTREAM_HEALTH_ROLES=100,1000 to measure more).
ROLE_COUNTS = [int(n) for n in os.environ.get("ROLEGATE_UPSTREAM_HEALTH_ROLES", "100").split(",")]


@pytest.mark.parametrize("roles", ROLE_COUNTS)
async def test_many_roles_on_one_upstream_cost_one_check_per_interval_and_key(
    stack: Stack, llama_server: LlamaServer, roles: int
) -> None:
    proxy = CountingProxy(llama_server.url)
    runner, port = await start(proxy.app(), host="127.0.0.1", port=0)
    proxy.url = f"http://127.0.0.1:{port}/v1"
    try:
        await stack.apply(m.secret("llama-creds", apiKey=API_KEY))
        await stack.apply(m.secret("wrong-creds", apiKey=WRONG_KEY))
        docs = [llama_role(f"r{i:03}", proxy.url, "tiny-a") for i in range(roles)]
        docs += [llama_role(f"w{i}", proxy.url, "tiny-a", "wrong-creds") for i in range(3)]
        await stack.apply(*docs)
        await stack.wait_served([d["metadata"]["name"] for d in docs], timeout_s=60 + roles / 10)

        window_s = 10 * INTERVAL_S
        rounds_before = (await asyncio.to_thread(stack.gateway.status))["upstreamChecks"]["rounds"]
        before = Counter(proxy.lists)
        await asyncio.sleep(window_s)
        rounds = (await asyncio.to_thread(stack.gateway.status))["upstreamChecks"]["rounds"]
        made = proxy.lists - before
        rounds -= rounds_before
        print(
            f"\n{roles + 3} roles, 2 distinct (upstream, key): {dict(made)} model-list GETs "
            f"in {window_s:g} s over {rounds} rounds (interval {INTERVAL_S} s)"
        )
        assert set(made) == {"key", "wrong key"}
        for count in made.values():
            assert abs(count - rounds) <= 1  # one per round, a round at each edge aside
        assert rounds <= window_s / (0.8 * INTERVAL_S) + 1

        async def judged() -> bool:
            items = json.loads(await stack.run("get", "llmr", "-o", "json"))["items"]
            reasons = Counter(
                c["reason"]
                for i in items
                for c in (i.get("status") or {}).get("conditions", [])
                if c["type"] == "UpstreamReady"
            )
            return reasons == Counter({"Reachable": roles, "Unauthorized": 3})

        await eventually(judged, timeout_s=30 + roles / 20, poll_s=0.5, what="every role judged")
    finally:
        await runner.cleanup()
