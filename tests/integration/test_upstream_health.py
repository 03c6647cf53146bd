"""The gateway's upstream health checks against upstreams on loopback (no control plane):
a check that hangs is cut at its timeout without holding up the other upstreams' checks
or the role's own calls; one check per distinct (URL, credentials) per round; what /status
and /metrics show."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from devstack.poll import eventually
from rolegate_gateway import config
from rolegate_gateway.api import Binding
from rolegate_gateway.app import create_app, start
from rolegate_gateway.config import Credentials, GatewayConfig, Limits, RoleConfig
from rolegate_gateway.health import HealthChecker
from rolegate_gateway.runtime import Runtime
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.configs import role_config

KEY = "sk-HEALTHCHECK-7f3a9c1e55"


class Upstream:
    """An OpenAI-compatible upstream whose ``GET /v1/models`` lists ``models``, or hangs
    (``hang``); it counts those GETs by Authorization header, and answers chat at once."""

    def __init__(self, models: list[str], *, hang: bool = False) -> None:
        self.models = models
        self.hang = hang
        self.lists: Counter[str] = Counter()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._list)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _list(self, request: web.Request) -> web.Response:
        self.lists[request.headers.get("Authorization", "")] += 1
        if self.hang:
            await asyncio.sleep(3600)
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    made = {"hung": Upstream(["m"], hang=True), "fine": Upstream(["m", "other"])}
    runners = []
    for fake in made.values():
        runner, port = await start(fake.app(), host="127.0.0.1", port=0)
        runners.append(runner)
        fake.url = f"http://127.0.0.1:{port}/v1"
    yield made
    for runner in runners:
        await runner.cleanup()


async def _gateway(
    roles: list[Any], **checks: Any
) -> tuple[web.AppRunner, str, Runtime, HealthChecker]:
    runtime = Runtime()
    runtime.apply(GatewayConfig(roles=roles))
    checker = HealthChecker(runtime, **checks)
    runner, port = await start(
        create_app(runtime, health=checker), host="127.0.0.1", port=0, shutdown_timeout_s=1
    )
    return runner, f"http://127.0.0.1:{port}", runtime, checker


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        if answer.content_type == "application/json":
            return await answer.json()
        return await answer.text()


async def test_a_hung_check_is_cut_and_holds_up_neither_other_checks_nor_calls(
    upstreams: dict[str, Upstream],
) -> None:
    hung, fine = upstreams["hung"], upstreams["fine"]
    roles = [
        role_config("stuck", base_url=hung.url, key=KEY),
        role_config("ok", base_url=fine.url, key=KEY),
        role_config("typo", base_url=fine.url, key=KEY, model="mm"),
    ]
    runner, url, _, _ = await _gateway(roles, interval_s=30, timeout_s=1.0)
    try:
        # The role's own call goes through while its check hangs.
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            began = loop.time()
            async with session.post(
                f"{url}/v1/chat/completions",
                json={"model": "stuck", "messages": [{"role": "user", "content": "hi"}]},
            ) as answer:
                assert answer.status == 200
            assert loop.time() - began < 0.5

        async def judged() -> bool:
            roles = (await _get(f"{url}/status"))["roles"]
            return roles["ok"]["upstream"]["state"] == "Reachable"

        # The other upstream's check is not held up by the hung one (timeout 1 s).
        await eventually(judged, timeout_s=0.9, poll_s=0.02, what="ok judged first")

        async def cut() -> bool:
            roles = (await _get(f"{url}/status"))["roles"]
            return roles["stuck"]["upstream"]["state"] == "Unreachable"

        await eventually(cut, timeout_s=3, poll_s=0.05, what="the hung check cut")
        status = await _get(f"{url}/status")
        stuck = status["roles"]["stuck"]["upstream"]
        assert "no answer within 1 s" in stuck["message"]
        assert stuck["checkedAt"]
        typo = status["roles"]["typo"]["upstream"]
        assert typo["state"] == "ModelNotServed"
        assert "'mm' is not served" in typo["message"]
        assert "served: m, other" in typo["message"]
        metrics = await _get(f"{url}/metrics")
        assert (
            'rolegate_upstream_up{binding="openai",model="m",namespace="default",role="ok"} 1.0'
            in metrics
        )
        assert (
            'rolegate_upstream_up{binding="openai",model="m",namespace="default",role="stuck"} 0.0'
            in metrics
        )
        assert "rolegate_upstream_check_duration_seconds_count" in metrics
        assert KEY not in str(status)
        assert KEY not in metrics
    finally:
        await runner.cleanup()


async def test_one_check_per_distinct_upstream_and_key_per_round(
    upstreams: dict[str, Upstream],
) -> None:
    fine = upstreams["fine"]
    roles = [role_config(f"r{i}", base_url=fine.url, key=KEY) for i in range(100)]
    roles += [role_config(f"w{i}", base_url=fine.url, key=KEY + "-other") for i in range(10)]
    runner, url, _, checker = await _gateway(roles, interval_s=0.2, timeout_s=1.0)
    try:
        await eventually(lambda: checker.rounds >= 5, timeout_s=5, poll_s=0.02, what="5 rounds")
        rounds = checker.rounds
        lists = dict(fine.lists)
        assert set(lists) == {f"Bearer {KEY}", f"Bearer {KEY}-other"}
        # one GET per (URL, key) per round: a round in flight may be counted on one side only
        for count in lists.values():
            assert rounds <= count <= rounds + 1
        assert checker.probes in (2 * rounds, 2 * rounds + 1, 2 * rounds + 2)
        status = await _get(f"{url}/status")
        assert {r["upstream"]["state"] for r in status["roles"].values()} == {"Reachable"}
    finally:
        await runner.cleanup()


def anthropic_role(name: str, url: str, model: str, key: str) -> RoleConfig:
    return RoleConfig(
        name=name,
        upstream=config.Upstream(
            binding=Binding.ANTHROPIC,
            model=model,
            base_url=url,
            timeout_s=3,
            credentials=Credentials(api_key=SecretStr(key)),
        ),
        limits=Limits(max_async=2, queue_max_size=5, queue_max_wait_s=1),
    )


async def test_anthropic_roles_are_judged_from_its_model_list() -> None:
    async with FakeAnthropic(api_key=KEY, models=("claude-b", "claude-a")) as fake:
        roles = [
            anthropic_role("fine", fake.url, "claude-a", KEY),
            anthropic_role("typo", fake.url, "claude-c", KEY),
            anthropic_role("revoked", fake.url, "claude-a", KEY + "-revoked"),
        ]
        runner, url, _, checker = await _gateway(roles, interval_s=30, timeout_s=2)
        try:
            await eventually(lambda: checker.rounds >= 1, timeout_s=5, what="a round")
            found = {n: r["upstream"] for n, r in (await _get(f"{url}/status"))["roles"].items()}
            assert found["fine"]["state"] == "Reachable"
            assert found["typo"]["state"] == "ModelNotServed"
            assert found["typo"]["message"].endswith("served: claude-a, claude-b")
            assert found["revoked"]["state"] == "Unauthorized"
            assert "invalid x-api-key" in found["revoked"]["message"]
            assert KEY not in json.dumps(found)
            # one GET per key, with the version header the API requires
            lists = [s for s in fake.requests if s.path.startswith("/v1/models")]
            assert len(lists) == 2
            assert all("anthropic-version" in s.headers for s in lists)
        finally:
            await runner.cleanup()
