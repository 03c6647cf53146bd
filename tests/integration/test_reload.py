"""Hot reload through the manifests source: edit a file, the gateway follows, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from rolegate_gateway import Binding, translators
from tests.conftest import Gateway, Upstream, until
from tests.fakes import manifests as m
from tests.fakes.openai_upstream import Peak

StartUpstream = Callable[..., Awaitable[Upstream]]
StartGateway = Callable[..., Awaitable[Gateway]]
Sdk = Callable[[Gateway], openai.AsyncOpenAI]


async def _served_by(client: openai.AsyncOpenAI, text: str, *, stream: bool) -> str:
    """Ask role "extract"; return the name of the upstream that answered."""
    messages: Any = [{"role": "user", "content": text}]
    if not stream:
        reply = await client.chat.completions.create(model="extract", messages=messages)
        return reply.system_fingerprint or ""
    chunks = await client.chat.completions.create(model="extract", messages=messages, stream=True)
    names = {c.system_fingerprint async for c in chunks}
    assert len(names) == 1, names
    return names.pop() or ""


async def _edit(gw: Gateway, path: Path, *docs: dict[str, Any]) -> None:
    before = gw.runtime.last_reload
    m.write(path, *docs)
    await gw.wait_reload(before)


async def test_rebind_under_load_loses_nothing(
    tmp_path: Path, start_upstream: StartUpstream, start_gateway: StartGateway, sdk: Sdk
) -> None:
    """200 requests, half streamed; the role is rebound from A to B while they run."""
    peak = Peak()
    a = await start_upstream(name="A", delay_s=0.01, chunk_delay_s=0.005, shared=peak)
    b = await start_upstream(name="B", delay_s=0.01, chunk_delay_s=0.005, shared=peak)
    path = tmp_path / "roles.yaml"
    m.write(path, m.role("extract", host=a.url, model="model-a", maxAsync=4))
    gw = await start_gateway(tmp_path)
    client = sdk(gw)

    wave1 = [
        asyncio.create_task(_served_by(client, f"w1-{i}", stream=i % 2 == 0)) for i in range(100)
    ]
    await until(lambda: len(a.fake.seen) >= 20)  # swap mid-wave
    await _edit(gw, path, m.role("extract", host=b.url, model="model-b", maxAsync=4))
    assert gw.runtime.last_reload is not None
    assert gw.runtime.last_reload.rebound == ("extract",)
    wave2 = [
        asyncio.create_task(_served_by(client, f"w2-{i}", stream=i % 2 == 0)) for i in range(100)
    ]

    results = await asyncio.gather(*wave1, *wave2, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert results[100:] == ["B"] * 100  # every request after the swap reached B
    assert results[:100].count("A") >= 20
    assert results[:100].count("B") > 0  # queued at the swap: moved to the new binding
    assert {s.body["model"] for s in b.fake.seen} == {"model-b"}
    assert peak.peak <= 4  # the role's concurrency, both upstreams together
    assert gw.runtime.roles["extract"].queue.stats()["failed_total"] == 0


async def test_invalid_edit_is_refused_and_traffic_stays_on_the_old_config(
    tmp_path: Path, upstream: Upstream, start_gateway: StartGateway, sdk: Sdk
) -> None:
    path = tmp_path / "roles.yaml"
    m.write(path, m.role("extract", host=upstream.url, model="good"))
    gw = await start_gateway(tmp_path)
    client = sdk(gw)
    good_hash = gw.runtime.config_hash
    upstream.fake.delay_s = 0.02
    running = asyncio.gather(*(_served_by(client, str(i), stream=i % 2 == 0) for i in range(40)))
    await _edit(gw, path, m.role("extract", host=upstream.url, model="bad", maxAsync=0))

    assert await running == ["A"] * 40
    assert await _served_by(client, "after", stream=False) == "A"
    assert upstream.fake.seen[-1].body["model"] == "good"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/status") as resp:
            status = await resp.json()
        async with http.get(f"{gw.url}/metrics") as resp:
            metrics = await resp.text()
    assert status["config"]["hash"] == good_hash
    refusal = status["lastReload"]
    assert refusal["outcome"] == "refused"
    assert "roles.yaml" in refusal["error"]
    assert "LLMRole default/extract" in refusal["error"]
    assert "spec.maxAsync" in refusal["error"]
    assert 'rolegate_reloads_total{outcome="refused"} 1.0' in metrics


async def test_a_role_whose_binding_the_gateway_lacks_is_left_out_alone(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: StartGateway,
    sdk: Sdk,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An older gateway meeting a binding it does not serve (here: bedrock taken out of its
    registry) serves the config's other roles, the edit included, and says which it left
    out: a newer operator never freezes it."""
    monkeypatch.delitem(translators.BINDINGS, Binding.BEDROCK, raising=False)
    path = tmp_path / "roles.yaml"
    m.write(path, m.role("extract", host=upstream.url))
    gw = await start_gateway(tmp_path)
    await _edit(
        gw,
        path,
        m.role("extract", host=upstream.url, model="changed"),
        m.role("other", binding="bedrock", model="x", bedrock={"region": "us-east-1"}),
    )
    assert gw.runtime.last_reload is not None
    assert gw.runtime.last_reload.outcome == "applied"
    assert sorted(gw.runtime.roles) == ["extract"]
    assert await _served_by(sdk(gw), "x", stream=False) == "A"
    assert upstream.fake.seen[-1].body["model"] == "changed"
    refused = gw.runtime.status()["refusedRoles"]["other"]
    assert "binding bedrock is not supported by this gateway" in refused["reason"]
    with pytest.raises(openai.NotFoundError, match="'other' is not served: binding bedrock"):
        await sdk(gw).chat.completions.create(
            model="other", messages=[{"role": "user", "content": "x"}]
        )


async def test_unchanged_role_keeps_its_wrapper_and_max_async_resizes_in_place(
    tmp_path: Path, upstream: Upstream, start_gateway: StartGateway, sdk: Sdk
) -> None:
    path = tmp_path / "roles.yaml"
    m.write(
        path, m.role("extract", host=upstream.url, maxAsync=1), m.role("query", host=upstream.url)
    )
    gw = await start_gateway(tmp_path)
    extract, query = gw.runtime.roles["extract"], gw.runtime.roles["query"]
    wrappers = (extract.wrapper, query.wrapper)
    queues = (extract.queue, query.queue)

    upstream.fake.gate = asyncio.Event()
    client = sdk(gw)
    tasks = [asyncio.create_task(_served_by(client, str(i), stream=False)) for i in range(3)]
    await until(lambda: extract.queue.queued >= 2)
    await _edit(
        gw,
        path,
        m.role("extract", host=upstream.url, maxAsync=3),
        m.role("query", host=upstream.url),
    )
    assert gw.runtime.last_reload is not None
    assert gw.runtime.last_reload.resized == ("extract",)
    assert gw.runtime.last_reload.rebound == ()
    assert (gw.runtime.roles["extract"].wrapper, gw.runtime.roles["query"].wrapper) == wrappers
    assert (gw.runtime.roles["extract"].queue, gw.runtime.roles["query"].queue) == queues
    await until(lambda: upstream.fake.in_flight >= 3, timeout_s=2)
    upstream.fake.gate.set()
    assert await asyncio.gather(*tasks) == ["A"] * 3


async def test_in_flight_stream_past_the_drain_deadline_is_cut_with_503(
    tmp_path: Path, start_upstream: StartUpstream, start_gateway: StartGateway, sdk: Sdk
) -> None:
    """timeout 0.5 s, grace 0.2 s: the old binding's calls get 1.2 s after the swap."""
    a = await start_upstream(name="A", chunks=20, chunk_delay_s=0.25)  # a 5 s stream
    b = await start_upstream(name="B")
    path = tmp_path / "roles.yaml"
    m.write(path, m.role("extract", host=a.url, timeoutSeconds=0.5))
    gw = await start_gateway(tmp_path, drain_grace_s=0.2)
    client = sdk(gw)
    stream = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "long"}], stream=True
    )
    await _edit(gw, path, m.role("extract", host=b.url, timeoutSeconds=0.5))
    assert gw.runtime.status()["draining"][0]["inFlight"] == 1
    with pytest.raises(openai.APIError) as err:
        async for _ in stream:
            pass
    assert "drain deadline" in str(err.value)
    assert await _served_by(client, "next", stream=True) == "B"
    assert gw.runtime.status()["draining"] == []


async def test_removed_role_finishes_in_flight_calls_then_answers_404(
    tmp_path: Path, upstream: Upstream, start_gateway: StartGateway, sdk: Sdk
) -> None:
    path = tmp_path / "roles.yaml"
    m.write(
        path, m.role("extract", host=upstream.url, maxAsync=1), m.role("query", host=upstream.url)
    )
    gw = await start_gateway(tmp_path)
    client = sdk(gw)
    upstream.fake.gate = asyncio.Event()
    running = asyncio.create_task(_served_by(client, "running", stream=True))
    await until(lambda: upstream.fake.started)
    queued = asyncio.create_task(_served_by(client, "queued", stream=False))
    await until(lambda: gw.runtime.roles["extract"].queue.queued >= 1)
    await _edit(gw, path, m.role("query", host=upstream.url))

    with pytest.raises(openai.NotFoundError):
        await queued  # never started: answered at once
    with pytest.raises(openai.NotFoundError):
        await _served_by(client, "new", stream=False)
    upstream.fake.gate.set()
    assert await running == "A"  # in flight: finished on the removed role's wrapper
