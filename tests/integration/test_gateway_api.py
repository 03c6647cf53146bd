"""The gateway's OpenAI-compatible API, driven by the official openai SDK."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Gateway, Upstream
from tests.fakes import manifests as m


@pytest.fixture
async def gateway(
    tmp_path: Path, upstream: Upstream, start_gateway: Callable[..., Awaitable[Gateway]]
) -> Gateway:
    m.write(
        tmp_path / "roles.yaml",
        m.role(
            "extract",
            host=upstream.url,
            model="tiny-a",
            options={"temperature": 0.2, "max_tokens": 64},
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.role("query", host=upstream.url, model="tiny-q", namespace="team-b"),
        m.secret("creds", apiKey="sk-test-upstream-key"),
    )
    return await start_gateway(tmp_path)


@pytest.fixture
def client(gateway: Gateway, sdk: Callable[[Gateway], openai.AsyncOpenAI]) -> openai.AsyncOpenAI:
    return sdk(gateway)


async def test_chat_completion_reaches_the_roles_model(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    reply = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content == "hi from A"
    assert reply.usage is not None
    assert reply.usage.total_tokens > 0
    seen = upstream.fake.seen[-1]
    assert seen.body["model"] == "tiny-a"  # the role name was replaced by the role's model
    assert seen.headers["Authorization"] == "Bearer sk-test-upstream-key"


async def test_role_options_fill_in_and_the_request_wins(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "x"}], temperature=0.9
    )
    body = upstream.fake.seen[-1].body
    assert body["temperature"] == 0.9
    assert body["max_tokens"] == 64


async def test_streamed_chat_arrives_chunk_by_chunk(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    stream = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in parts) == "A-0 A-1 A-2 "
    assert upstream.fake.seen[-1].body["stream"] is True


async def test_stream_is_passed_on_as_it_arrives(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    """The first chunk reaches the client long before the upstream's last one is sent."""
    upstream.fake.chunks = 4
    upstream.fake.chunk_delay_s = 0.5
    stream = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    import time

    t0 = time.monotonic()
    arrivals = []
    async for _ in stream:
        arrivals.append(time.monotonic() - t0)
    assert arrivals[0] < 0.4, arrivals  # not buffered until the 2+ s stream ends
    assert arrivals[-1] > 1.5, arrivals


async def test_completions_and_embeddings(client: openai.AsyncOpenAI, upstream: Upstream) -> None:
    done = await client.completions.create(model="query", prompt="say")
    assert done.choices[0].text == "completed by A"
    assert upstream.fake.seen[-1].path == "/v1/completions"
    stream = await client.completions.create(model="query", prompt="say", stream=True)
    assert [c.choices[0].text async for c in stream] == ["A-0 ", "A-1 ", "A-2 "]
    emb = await client.embeddings.create(model="query", input=["a", "b"])
    assert [d.embedding for d in emb.data] == [[0.1, 0.2, 0.0], [0.1, 0.2, 1.0]]
    assert upstream.fake.seen[-1].body["model"] == "tiny-q"


async def test_models_list_each_role_with_binding_and_model(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    by_id = {m.id: m for m in models.data}
    assert sorted(by_id) == ["extract", "query"]
    extra = by_id["query"].model_extra or {}
    assert extra["metadata"] == {"namespace": "team-b", "binding": "vllm", "model": "tiny-q"}
    one = await client.models.retrieve("extract")
    assert (one.model_extra or {})["metadata"]["model"] == "tiny-a"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_a_cookie_an_upstream_set_is_not_sent_with_later_requests(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    # Set on one client's (failed) call, a cookie must not reach the upstream again with the
    # next calls, another client's, in another namespace. The upstream is named "localhost":
    # aiohttp's default jar ignores cookies from IP addresses, and providers have names.
    named = upstream.url.replace("127.0.0.1", "localhost")
    m.write(
        tmp_path / "roles.yaml",
        m.role("extract", host=named, model="tiny-a"),
        m.role("query", host=named, model="tiny-q", namespace="team-b"),
    )
    client = sdk(await start_gateway(tmp_path))
    upstream.fake.fail_status, upstream.fake.fail_times = 400, 1
    upstream.fake.fail_headers = {"Set-Cookie": "affinity=client-a; Path=/"}
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "a"}]
        )
    for role in ("extract", "query"):
        await client.chat.completions.create(
            model=role, messages=[{"role": "user", "content": "b"}]
        )
    assert len(upstream.fake.seen) == 3
    assert [s.headers.get("Cookie") for s in upstream.fake.seen] == [None, None, None]


async def test_unknown_role_is_404_listing_the_known_ones(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(
            model="summarize", messages=[{"role": "user", "content": "x"}]
        )
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert "Known roles: extract, query." in body["message"]


@pytest.mark.parametrize(
    ("data", "headers", "fragment"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[1, 2]", {}, "JSON object"),
        (b'{"messages": []}', {}, "'model'"),
        (b'{"model": "extract"}', {"X-Priority": "high"}, "X-Priority"),
    ],
)
async def test_bad_requests_get_400_with_openai_body(
    gateway: Gateway, data: bytes, headers: dict[str, str], fragment: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.v1}/chat/completions", data=data, headers=headers) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"]


async def test_unknown_path_and_method_get_openai_bodies(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.v1}/images/generations", json={}) as resp:
            assert resp.status == 404
            assert "error" in await resp.json()
        async with http.get(f"{gateway.v1}/chat/completions") as resp:
            assert resp.status == 405
            assert "error" in await resp.json()


async def test_upstream_error_status_and_body_are_passed_on(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    upstream.fake.fail_status = 422
    with pytest.raises(openai.UnprocessableEntityError) as err:
        await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "fake_failure"


async def test_non_json_upstream_error_is_wrapped(
    client: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    upstream.fake.fail_status = 503
    upstream.fake.fail_body = b"<html>overloaded</html>"
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 503
    assert isinstance(err.value.body, dict)
    assert "overloaded" in err.value.body["message"]


async def test_health_ready_status_and_metrics(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "x"}]
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{gateway.url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{gateway.url}/status") as resp:
            status = await resp.json()
        async with http.get(f"{gateway.url}/metrics") as resp:
            metrics = await resp.text()
    role = status["roles"]["extract"]
    assert role["binding"] == "vllm"
    assert role["model"] == "tiny-a"
    assert role["maxAsync"] == 4
    assert role["queue"]["completed_total"] == 1
    assert status["config"]["hash"] == gateway.runtime.config_hash
    assert status["lastReload"]["outcome"] == "applied"
    assert status["lastReload"]["configHash"] == gateway.runtime.config_hash
    line = (
        'rolegate_requests_total{binding="vllm",code="200",model="tiny-a",'
        'namespace="default",role="extract"} 1.0'
    )
    assert line in metrics
    assert "rolegate_request_duration_seconds_bucket" in metrics
    assert 'rolegate_in_flight{binding="vllm"' in metrics
    assert 'rolegate_reloads_total{outcome="applied"} 1.0' in metrics
    assert "rolegate_config_info{" in metrics


async def test_azure_openai_binding(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    root = upstream.url.removesuffix("/v1")  # Azure's resource endpoint has no /v1
    m.write(
        tmp_path / "roles.yaml",
        m.role(
            "summarize",
            binding="azure_openai",
            model="gpt-4o",
            host=root,
            azure={"deployment": "gpt4o-prod", "apiVersion": "2024-10-21"},
            credentials={"secretRef": {"name": "azure"}},
        ),
        m.secret("azure", apiKey="azure-key-1"),
    )
    gw = await start_gateway(tmp_path)
    reply = await sdk(gw).chat.completions.create(
        model="summarize", messages=[{"role": "user", "content": "x"}]
    )
    assert reply.choices[0].message.content == "hi from A"
    seen = upstream.fake.seen[-1]
    assert seen.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert seen.query == {"api-version": "2024-10-21"}
    assert seen.headers["api-key"] == "azure-key-1"
    assert "Authorization" not in seen.headers


def _tokens(gateway: Gateway, role: str, kind: str) -> float:
    labels = {"role": role, "namespace": "default", "binding": "vllm", "model": "tiny-a"}
    value = gateway.runtime.registry.get_sample_value(
        "rolegate_tokens_total", {**labels, "kind": kind}
    )
    return value or 0.0


async def test_tokens_are_counted_from_the_upstreams_usage(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    """rolegate_tokens_total: from a whole answer's usage, and from a stream's final usage
    chunk when the client asked for one; a stream without usage counts nothing."""
    reply = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.usage is not None
    assert _tokens(gateway, "extract", "prompt") == reply.usage.prompt_tokens
    assert _tokens(gateway, "extract", "completion") == 5
    stream = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    _ = [chunk async for chunk in stream]
    assert _tokens(gateway, "extract", "completion") == 5  # no usage asked, none counted
    stream = await client.chat.completions.create(
        model="extract",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    assert _tokens(gateway, "extract", "completion") == 10
    assert (
        _tokens(gateway, "extract", "prompt") == reply.usage.prompt_tokens + usage[0].prompt_tokens
    )
    assert _tokens(gateway, "extract", "cached") == 0


async def test_a_stream_ended_without_done_is_a_failed_request(
    client: openai.AsyncOpenAI, gateway: Gateway, upstream: Upstream
) -> None:
    """llama.cpp ends a stream whose prompt exceeds its context with 200 and no [DONE]:
    the client's stream ends with an error event (the SDK raises) and it counts as failed."""
    upstream.fake.no_done = True
    stream = await client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match=r"ended its stream without 'data: \[DONE\]'"):
        _ = [chunk async for chunk in stream]
    role = gateway.runtime.roles["extract"]
    assert role.queue.stats()["failed_total"] == 1
    labels = {"role": "extract", "namespace": "default", "binding": "vllm", "model": "tiny-a"}
    assert (
        gateway.runtime.registry.get_sample_value(
            "rolegate_requests_total", {**labels, "code": "502"}
        )
        == 1
    )


async def test_a_stream_that_fails_before_its_first_byte_is_an_http_error(
    client: openai.AsyncOpenAI, gateway: Gateway, upstream: Upstream
) -> None:
    """Nothing was sent yet, so the failure is the answer's status (502), not a 200 with an
    error event: the SDK sees a status it can retry on."""
    upstream.fake.empty_stream = True
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(
            model="extract", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert raised.value.status_code == 502
    assert "ended its stream without 'data: [DONE]'" in raised.value.message
    labels = {"role": "extract", "namespace": "default", "binding": "vllm", "model": "tiny-a"}
    assert (
        gateway.runtime.registry.get_sample_value(
            "rolegate_requests_total", {**labels, "code": "502"}
        )
        == 1
    )
