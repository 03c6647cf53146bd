"""Client access wired into the gateway's routes, driven by the official openai SDK and
plain HTTP, with a scripted reviewer in place of the Kubernetes API (the real API server's
TokenReviews and SubjectAccessReviews: tests/integration/test_access.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from rolegate_gateway import Runtime
from rolegate_gateway.auth.access import DOWN_S, Access
from tests.conftest import Gateway, Upstream
from tests.fakes import manifests as m
from tests.fakes.reviewer import APP_A, Reviewer

UPSTREAM_KEY = "sk-upstream-role-key-0001"


@pytest.fixture
def reviewer() -> Reviewer:
    reviewer = Reviewer()
    reviewer.grants = {(APP_A.user, "team-a", "extract")}
    return reviewer


@pytest.fixture
async def gateway(
    tmp_path: Path,
    upstream: Upstream,
    reviewer: Reviewer,
    start_gateway: Callable[..., Awaitable[Gateway]],
) -> Gateway:
    m.write(
        tmp_path / "roles.yaml",
        m.role(
            "extract",
            host=upstream.url,
            namespace="team-a",
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.role("query", host=upstream.url, namespace="team-a"),
        m.secret("creds", "team-a", apiKey=UPSTREAM_KEY),
    )

    def access(runtime: Runtime) -> Access:
        runtime.metrics.count_clients()
        return Access("kubernetes", reviewer=reviewer, count=runtime.metrics.auth_result)

    return await start_gateway(tmp_path, access=access)


def sdk(gateway: Gateway, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key=token, max_retries=0, timeout=30)


async def post(
    gateway: Gateway, role: str, *, token: str | None = None
) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"model": role, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.v1}/chat/completions", json=body, headers=headers) as answer,
    ):
        return answer.status, dict(answer.headers), await answer.json()


async def metrics(gateway: Gateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/metrics") as r:
        return await r.text()


async def test_an_allowed_identity_is_served_and_its_token_stays_here(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with sdk(gateway, "good") as client:
        reply = await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "hi from A"
        stream = await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in parts) == "A-0 A-1 A-2 "
    assert len(upstream.fake.seen) == 2
    for seen in upstream.fake.seen:
        assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # the role's key
        assert "good" not in " ".join(seen.headers.values())
    text = await metrics(gateway)
    assert 'rolegate_auth_total{result="allowed"} 2.0' in text
    assert (
        'rolegate_client_requests_total{client="system:serviceaccount:team-a:app-a",'
        'code="200",namespace="team-a",role="extract"} 2.0'
    ) in text


async def test_a_role_rbac_does_not_grant_is_403_and_never_reaches_the_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    async with sdk(gateway, "good") as client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(
                model="query", messages=[{"role": "user", "content": "hello"}]
            )
    error = denied.value.body
    assert isinstance(error, dict)
    assert error["code"] == "permission_denied"
    assert "'query'" in error["message"]
    assert APP_A.user in error["message"]
    assert "good" not in error["message"]
    assert upstream.fake.seen == []
    text = await metrics(gateway)
    assert 'rolegate_auth_total{result="denied"} 1.0' in text
    counted = 'binding="vllm",code="403",model="tiny",namespace="team-a",role="query"} 1.0'
    assert f"rolegate_requests_total{{{counted}" in text


@pytest.mark.parametrize("token", [None, "garbage"])
async def test_no_or_a_refused_token_is_401_before_anything_else(
    gateway: Gateway, upstream: Upstream, token: str | None
) -> None:
    status, headers, body = await post(gateway, "extract", token=token)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert upstream.fake.seen == []
    assert 'rolegate_auth_total{result="unauthenticated"} 1.0' in await metrics(gateway)
    # An unknown role gets the same answer: who is not authenticated learns no role name.
    assert (await post(gateway, "no-such-role", token=token))[0] == 401


async def test_models_and_unknown_roles_show_only_what_the_caller_may_use(
    gateway: Gateway,
) -> None:
    async with sdk(gateway, "good") as client:
        assert [model.id async for model in client.models.list()] == ["extract"]
        assert (await client.models.retrieve("extract")).id == "extract"
        with pytest.raises(openai.PermissionDeniedError):
            await client.models.retrieve("query")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
    assert "Known roles: extract." in str(missing.value)
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.v1}/models") as r:
        assert r.status == 401


async def test_an_unreachable_api_server_is_503_never_an_open_door(
    gateway: Gateway, upstream: Upstream, reviewer: Reviewer
) -> None:
    reviewer.down = True
    status, headers, body = await post(gateway, "extract", token="good")
    assert status == 503
    assert headers["Retry-After"] == "5"
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "auth_unavailable"
    assert upstream.fake.seen == []
    assert (await post(gateway, "extract", token="other"))[0] == 503  # no review made
    reviewer.down = False
    assert (await post(gateway, "extract", token="good"))[0] == 503  # DOWN_S not yet over
    await asyncio.sleep(DOWN_S)
    assert (await post(gateway, "extract", token="good"))[0] == 200
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/status") as r:
        access = (await r.json())["access"]
    assert access["mode"] == "kubernetes"
    assert access["tokenReviews"]["made"] == 2  # the failed one is not cached


async def test_keys_mode_serves_the_roles_each_manifest_key_names(
    tmp_path: Path, upstream: Upstream, start_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    """``--auth keys``: API key Secrets among the manifests, each allowed the roles of its
    rolegate.dev/roles annotation; editing the file rotates a key, no restart."""
    first, second = "ci-key-" + "1" * 24, "ci-key-" + "2" * 24

    def manifests(key: str) -> None:
        client = m.secret("ci", "team-a", apiKey=key)
        client["metadata"]["labels"] = {"rolegate.dev/api-key": "true"}
        client["metadata"]["annotations"] = {"rolegate.dev/roles": "extract"}
        m.write(
            tmp_path / "roles.yaml",
            m.role("extract", host=upstream.url, namespace="team-a"),
            m.role("query", host=upstream.url, namespace="team-a"),
            client,
        )

    manifests(first)
    gateway = await start_gateway(
        tmp_path, access=lambda runtime: Access("keys", count=runtime.metrics.auth_result)
    )
    assert (await post(gateway, "extract", token=first))[0] == 200
    status, _, body = await post(gateway, "query", token=first)
    assert status == 403
    assert "rolegate.dev/roles" in str(body)
    assert (await post(gateway, "extract", token="not-a-key-at-all-000"))[0] == 401
    previous = gateway.runtime.last_reload
    manifests(second)
    await gateway.wait_reload(previous)
    assert (await post(gateway, "extract", token=first))[0] == 401
    assert (await post(gateway, "extract", token=second))[0] == 200
    assert len(upstream.fake.seen) == 2
    assert gateway.runtime.config is not None  # the manifest holds the key; the config not
    wire = gateway.runtime.config.to_wire().decode()
    assert second not in wire
