"""A gateway config larger than a Secret holds uncompressed, on a real API server.

The operator gzips the config into its Secret (``config.json.gz``): more than 1 MiB of
config JSON reaches the gateway, which serves a role from it. Past what even gzip fits in a
Secret, nothing is written, the gateway keeps serving the config it has, and every role
says why (``Ready=False, ConfigTooLarge``, with an Event).

The roles are few and big (a long ``options`` value each) rather than 10,000 small ones,
so the test takes seconds; ``python -m bench.scale`` measures 10,000 real-sized roles.
They go in with server-side apply, as client-side apply keeps a copy of each object in an
annotation, which may hold no more than 256 KiB.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.k8s.controlplane import ControlPlane
from rolegate_gateway import secret_data
from tests.conftest import Upstream
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.stack import CONFIG, Stack, running_stack

KEY = "sk-CONFIGSIZE-5be0c1d2e3"
#: Characters of each role's padding option: 4 roles of it are > 1 MiB of config JSON.
PAD = 300_000


@pytest.fixture
async def stack(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: None, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(cluster, namespace, kubectl, tmp_path) as up:
        yield up


def big_role(name: str, up: Upstream, padding: str) -> dict[str, Any]:
    return m.role(
        name,
        binding="openai",
        model="gpt-4o-mini",
        host=up.url,
        credentials={"secretRef": {"name": "llm-creds"}},
        options={"user": padding},
    )


async def server_side_apply(stack: Stack, *docs: dict[str, Any]) -> None:
    for doc in docs:
        doc["metadata"]["namespace"] = stack.namespace
    path = m.write(stack.tmp / f"apply-{secrets.token_hex(3)}.yaml", *docs)
    await stack.run("apply", "--server-side", "-f", str(path))


async def stored_bytes(stack: Stack) -> int:
    body = json.loads(await stack.run("get", "secret", CONFIG, "-o", "json"))
    assert list(body["data"]) == [secret_data.CONFIG_GZ_KEY]
    return secret_data.stored_bytes(body["data"])


async def test_more_than_a_mebibyte_of_config_is_served_and_past_gzip_roles_say_why(
    stack: Stack, start_upstream: Callable[..., Awaitable[Upstream]]
) -> None:
    up = await start_upstream(name="a")
    names = [f"big-{i}" for i in range(4)]
    await server_side_apply(
        stack,
        m.secret("llm-creds", apiKey=KEY),
        *(big_role(n, up, f"{n} says hello. " * (PAD // 16)) for n in names),
    )
    for name in names:
        await stack.wait_condition(name, "Ready", ("True", "Served"), timeout_s=60)
    await stack.wait_served(names, timeout_s=30)
    config = await stack.config()
    assert config is not None
    assert len(config.to_wire()) > 1024 * 1024
    assert await stored_bytes(stack) < 64 * 1024
    async with stack.sdk() as sdk:
        answer = await sdk.chat.completions.create(
            model="big-3", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content
    assert up.fake.seen[-1].headers["Authorization"] == f"Bearer {KEY}"

    # Random padding compresses little (base64: 6 bits a character): 6 more such roles are
    # past what a Secret holds.
    noisy = [f"noisy-{i}" for i in range(6)]
    await server_side_apply(
        stack, *(big_role(n, up, secrets.token_urlsafe(PAD * 3 // 4)) for n in noisy)
    )
    for name in [*names, *noisy]:
        await stack.wait_condition(name, "Ready", ("False", "ConfigTooLarge"), timeout_s=60)
    role = await stack.role("noisy-0")
    ready = next(c for c in role["status"]["conditions"] if c["type"] == "Ready")
    assert "more than the 1048576 bytes (1 MiB) a Secret holds" in ready["message"]
    assert "keeps serving its previous config" in ready["message"]
    events = await stack.run("get", "events", "--field-selector", "reason=ConfigTooLarge")
    assert "noisy-0" in events
    # What does not fit is not written: the gateway serves the last config that did (the
    # operator may have written one with a few of the new roles before the rest arrived).
    config = await stack.config()
    assert config is not None
    assert await stored_bytes(stack) <= secret_data.SECRET_MAX_BYTES
    await asyncio.sleep(1)
    assert (await stack.config()) == config
    served = await stack.served()
    assert set(names) <= set(served)
    assert served == sorted(r.name for r in config.roles)
    assert set(noisy) - set(served)

    # Removing the noise serves the first roles again.
    await stack.run("delete", "llmrole", *noisy)
    for name in names:
        await stack.wait_condition(name, "Ready", ("True", "Served"), timeout_s=60)
