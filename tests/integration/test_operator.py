"""The operator and the gateway as local processes on a real control plane.

Roles and Secrets go in with ``kubectl apply``; what a user sees comes back: status and
Events through kubectl, the config Secret, and answers through the gateway to the official
openai SDK from fake upstreams that record the key each call carried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from devstack.k8s.controlplane import ControlPlane
from devstack.poll import eventually
from devstack.stack import OperatorProcess
from rolegate_gateway import secret_data
from rolegate_gateway.config import GatewayConfig
from tests.conftest import Upstream
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.stack import CONFIG, Stack, running_stack

KEY = "sk-OPERATOR-7f3c9a41d2"
ROTATED = "sk-ROTATED-0be21c77e5"


@pytest.fixture
async def stack(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: None, tmp_path: Path
) -> AsyncIterator[Stack]:
    extra = ["--log-level", "debug", "--resync-interval", "1"]
    async with running_stack(cluster, namespace, kubectl, tmp_path, operator_args=extra) as up:
        yield up


def creds(key: str = KEY, name: str = "llm-creds") -> dict[str, Any]:
    return m.secret(name, apiKey=key)


def openai_role(name: str, up: Upstream, model: str = "gpt-4o-mini", **spec: Any) -> dict[str, Any]:
    return m.role(
        name,
        binding="openai",
        model=model,
        host=up.url,
        credentials={"secretRef": {"name": "llm-creds"}},
        **spec,
    )


def _decoded_runs(text: str) -> list[str]:
    """Every base64-looking run in ``text``, decoded (a Secret's data would be base64)."""
    out = []
    for run in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        with contextlib.suppress(ValueError):
            out.append(base64.b64decode(run + "=" * (-len(run) % 4)).decode("utf-8", "replace"))
    return out


def keys_seen(up: Upstream) -> list[str]:
    return [s.headers.get("Authorization", "") for s in up.fake.seen]


async def test_applied_roles_become_ready_and_are_served(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream(name="a")
    await stack.apply(
        creds(),
        openai_role("extract", up),
        openai_role("query", up, model="gpt-4o", maxAsync=2),
    )
    for name in ("extract", "query"):
        await stack.wait_condition(name, "Ready", ("True", "Served"))
        assert await stack.condition(name, "CredentialsResolved") == ("True", "SecretResolved")
    role = await stack.role("query")
    assert role["status"]["observedGeneration"] == role["metadata"]["generation"]
    assert role["status"]["endpoint"] == up.url

    config = await stack.config()
    assert config is not None
    assert [(r.name, r.upstream.model, r.limits.max_async) for r in config.roles] == [
        ("extract", "gpt-4o-mini", 4),
        ("query", "gpt-4o", 2),
    ]
    await stack.wait_served(["extract", "query"])
    served = await asyncio.to_thread(stack.gateway.status)
    assert served["roles"]["query"]["configHash"] == role["status"]["configHash"]

    async with stack.sdk() as sdk:
        answer = await sdk.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "hi"}]
        )
        chunks = [
            c
            async for c in await sdk.chat.completions.create(
                model="query", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ]
    assert answer.choices[0].message.content
    assert len(chunks) > 1
    assert [s.body["model"] for s in up.fake.seen] == ["gpt-4o-mini", "gpt-4o"]
    assert keys_seen(up) == [f"Bearer {KEY}"] * 2

    await stack.run("delete", "llmrole", "query")
    await stack.wait_served(["extract"])
    config = await stack.config()
    assert config is not None
    assert [r.name for r in config.roles] == ["extract"]

    rows = [line.split() for line in (await stack.run("get", "llmroles")).splitlines()]
    assert rows[0] == ["NAME", "BINDING", "MODEL", "MAXASYNC", "READY", "UPSTREAM", "AGE"]
    assert [row[:5] for row in rows[1:]] == [["extract", "openai", "gpt-4o-mini", "4", "True"]]


async def test_rebinding_under_load_loses_nothing(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    a = await start_upstream(name="a", delay_s=0.05, chunk_delay_s=0.02)
    b = await start_upstream(name="b", delay_s=0.05, chunk_delay_s=0.02)
    await stack.apply(creds(), openai_role("extract", a, maxAsync=8))
    await stack.wait_served(["extract"])

    async def load(sdk: openai.AsyncOpenAI, n: int) -> list[BaseException]:
        async def one(i: int) -> None:
            messages = [{"role": "user", "content": f"req {i}"}]
            if i % 2:
                stream = await sdk.chat.completions.create(
                    model="extract",
                    messages=messages,
                    stream=True,  # type: ignore[arg-type]
                )
                assert [c async for c in stream]
            else:
                await sdk.chat.completions.create(model="extract", messages=messages)  # type: ignore[arg-type]

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    steps = [
        openai_role("extract", a, model="gpt-4o", maxAsync=8),  # other model
        m.role(  # other binding, other upstream
            "extract",
            binding="vllm",
            model="served-model",
            host=b.url,
            maxAsync=8,
            credentials={"secretRef": {"name": "llm-creds"}},
        ),
        openai_role("extract", a, maxAsync=8),  # rolled back
    ]
    async with stack.sdk() as sdk:
        for manifest in steps:
            before = (await stack.role("extract"))["status"]["configHash"]
            loader = asyncio.create_task(load(sdk, 200))
            await asyncio.sleep(0.3)
            await stack.apply(manifest)
            failures = await loader
            assert failures == [], failures[:3]

            async def rebound(before: str = before) -> bool:
                wanted = (await stack.role("extract"))["status"]["configHash"]
                gateway = await asyncio.to_thread(stack.gateway.status)
                return wanted != before and gateway["roles"]["extract"]["configHash"] == wanted

            await eventually(rebound)
            mark_a, mark_b = len(a.fake.seen), len(b.fake.seen)
            await load(sdk, 10)
            spec = manifest["spec"]
            target, other = (b, a) if spec["binding"] == "vllm" else (a, b)
            mark_target, mark_other = (mark_b, mark_a) if target is b else (mark_a, mark_b)
            assert len(other.fake.seen) == mark_other, "a later request reached the old upstream"
            assert [s.body["model"] for s in target.fake.seen[mark_target:]] == [spec["model"]] * 10
    assert a.fake.max_in_flight <= 8
    assert b.fake.max_in_flight <= 8


async def test_a_rotated_key_reaches_the_next_call(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream()
    await stack.apply(creds(), openai_role("extract", up))
    await stack.wait_served(["extract"])
    gateway_pid = stack.gateway.pid
    async with stack.sdk() as sdk:
        await sdk.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "1"}]
        )
        assert keys_seen(up)[-1] == f"Bearer {KEY}"
        await stack.apply(creds(ROTATED))
        async with asyncio.timeout(30):
            while True:
                await sdk.chat.completions.create(
                    model="extract", messages=[{"role": "user", "content": "2"}]
                )
                if keys_seen(up)[-1] == f"Bearer {ROTATED}":
                    break
                await asyncio.sleep(0.2)
    assert stack.gateway.pid == gateway_pid
    assert stack.gateway.running()
    assert stack.operator.running()


async def test_a_role_without_its_secret_is_reported_and_left_out(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream()
    await stack.apply(
        creds(),
        openai_role("extract", up),
        m.role(
            "query",
            binding="openai",
            model="gpt-4o",
            host=up.url,
            credentials={"secretRef": {"name": "query-creds"}},
        ),
    )
    await stack.wait_condition("query", "CredentialsResolved", ("False", "SecretNotFound"))
    await stack.wait_condition("query", "Ready", ("False", "CredentialsNotResolved"))
    await stack.wait_served(["extract"])
    config = await stack.config()
    assert config is not None
    assert [r.name for r in config.roles] == ["extract"]
    status = (await stack.role("query"))["status"]
    message = {c["type"]: c["message"] for c in status["conditions"]}["CredentialsResolved"]
    assert "query-creds not found" in message

    await stack.apply(m.secret("query-creds", other="x"))
    await stack.wait_condition("query", "CredentialsResolved", ("False", "KeyMissing"))
    await stack.apply(m.secret("query-creds", apiKey=KEY))
    await stack.wait_condition("query", "Ready", ("True", "Served"))
    await stack.wait_served(["extract", "query"])
    async with stack.sdk() as sdk:
        await sdk.chat.completions.create(
            model="query", messages=[{"role": "user", "content": "x"}]
        )
        await sdk.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "y"}]
        )

    events = await stack.run("get", "events", "-o", "json")
    reasons = {
        (e["involvedObject"]["name"], e["reason"], e["type"])
        for e in json.loads(events)["items"]
        if e.get("reportingComponent") == "rolegate.dev/operator"
    }
    assert ("query", "SecretNotFound", "Warning") in reasons
    assert ("query", "Served", "Normal") in reasons


async def test_converges_after_a_restart_and_a_resync_writes_nothing(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream()
    await stack.apply(creds(), openai_role("extract", up), openai_role("query", up))
    await stack.wait_served(["extract", "query"])

    await asyncio.to_thread(stack.operator.stop)
    restart = len(stack.operator.log_text())
    await stack.run("delete", "llmrole", "query")
    await stack.apply(openai_role("extract", up, model="gpt-4o"), openai_role("summarize", up))
    stack.operator.start()  # from the main thread, so it dies with the test run
    await asyncio.to_thread(stack.operator.wait_live)
    await stack.wait_condition("summarize", "Ready", ("True", "Served"))
    await stack.wait_served(["extract", "summarize"])
    config = await stack.config()
    assert config is not None
    assert [(r.name, r.upstream.model) for r in config.roles] == [
        ("extract", "gpt-4o"),
        ("summarize", "gpt-4o-mini"),
    ]

    # One pass after the restart wrote one whole config: never a partial one first.
    assert stack.operator.log_text()[restart:].count("wrote gateway config") == 1

    # Converged: timed resyncs (every second here), another restart, and re-applying the
    # same files write nothing.
    before = await stack.versions()
    mark = len(stack.operator.log_text())
    await asyncio.sleep(2.5)
    await asyncio.to_thread(stack.operator.stop)
    stack.operator.start()  # from the main thread, so it dies with the test run
    await asyncio.to_thread(stack.operator.wait_live)
    out = await stack.apply(
        creds(), openai_role("extract", up, model="gpt-4o"), openai_role("summarize", up)
    )
    assert out.count("unchanged") == 3, out
    await asyncio.sleep(2.5)
    log = stack.operator.log_text()[mark:]
    assert log.count("reconciled: Pass(roles=2") >= 4, log[-2000:]
    assert "wrote gateway config" not in log
    assert "wrote the status" not in log
    assert await stack.versions() == before


async def test_no_credential_in_log_status_or_events(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream()
    await stack.apply(creds(), openai_role("extract", up))
    await stack.wait_condition("extract", "Ready", ("True", "Served"))
    await stack.apply(creds(ROTATED))
    async with asyncio.timeout(30):
        while True:
            config = await stack.config()
            key = config.roles[0].upstream.credentials.api_key if config else None
            if key is not None and key.get_secret_value() == ROTATED:
                break
            await asyncio.sleep(0.2)
    seen = [
        stack.operator.log_text(),
        await stack.run("get", "llmroles", "-o", "yaml"),
        await stack.run("get", "events", "-o", "yaml"),
        yaml.safe_dump(await asyncio.to_thread(stack.gateway.status)),
    ]
    for text in seen:
        for found in (text, *_decoded_runs(text)):
            assert KEY not in found
            assert ROTATED not in found
    assert "wrote gateway config" in seen[0]


async def test_all_namespaces_serves_every_namespace(
    cluster: ControlPlane,
    namespace: str,
    kubectl: Kubectl,
    llmrole_crd: None,
    tmp_path: Path,
    start_upstream: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await start_upstream()
    other = f"{namespace}-b"
    suffix = namespace.rsplit("-", 1)[-1]
    await asyncio.to_thread(cluster.kubectl, ["create", "namespace", other])
    operator = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        namespaces=[],
        config_secret=f"{namespace}/{CONFIG}",
        log_path=tmp_path / "operator.log",
    )
    operator.start()
    try:
        for ns, role in ((namespace, f"a-{suffix}"), (other, f"b-{suffix}")):
            docs = [creds(), openai_role(role, up)]
            for doc in docs:
                doc["metadata"]["namespace"] = ns
            path = m.write(tmp_path / f"{ns}.yaml", *docs)
            await asyncio.to_thread(cluster.kubectl, ["apply", "-f", str(path)])

        async def both_served() -> bool:
            found = await asyncio.to_thread(
                kubectl, "get", "secret", CONFIG, "-o", "json", check=False
            )
            if found.returncode != 0:
                return False
            raw = secret_data.decode(json.loads(found.stdout)["data"])
            names = {(r.namespace, r.name) for r in GatewayConfig.from_wire(raw).roles}
            return {(namespace, f"a-{suffix}"), (other, f"b-{suffix}")} <= names

        await eventually(both_served)
    finally:
        operator.stop()
        await asyncio.to_thread(
            cluster.kubectl, ["delete", "namespace", other, "--wait=false"], check=False
        )


async def test_a_config_secret_deleted_by_hand_is_written_again(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream()
    await stack.apply(creds(), openai_role("extract", up))
    await stack.wait_served(["extract"])
    config = await stack.config()
    await stack.run("delete", "secret", CONFIG)

    async def restored() -> bool:
        return await stack.config() == config

    await eventually(restored, timeout_s=10)
    await stack.wait_served(["extract"])
