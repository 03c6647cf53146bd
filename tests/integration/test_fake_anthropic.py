"""Fidelity of the Anthropic fake: the official ``anthropic`` SDK parses what it sends.

If the SDK accepts the fake's answers and streams, and turns its errors into the same
exception classes it raises for the real Messages API, the fake speaks the real wire format
and gateway tests driven through it mean something (reference translation.md §12.2). No
Kubernetes here.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam

from tests.fakes.anthropic import FakeAnthropic

KEY = "sk-ant-test"
CLAUDE_TOOL_USE: Any = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
}
CLAUDE_TOOL_RESULT: Any = {
    "role": "user",
    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
}


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def claude_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def claude(claude_fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=claude_fake.url, api_key=KEY, max_retries=0)
    yield client
    await client.close()


async def create(client: anthropic.AsyncAnthropic, text: str, **kw: Any) -> anthropic.types.Message:
    return await client.messages.create(model="claude-x", max_tokens=64, messages=user(text), **kw)


async def post_raw(fake: FakeAnthropic, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    sent = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **headers}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v1/messages", json=body, headers=sent) as resp,
    ):
        return resp.status, await resp.json()


async def test_anthropic_create_parses_text_stop_usage(
    claude: anthropic.AsyncAnthropic, claude_fake: FakeAnthropic
) -> None:
    message = await create(claude, "hi")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from the fake."  # type: ignore[union-attr]
    assert (message.stop_reason, message.model) == ("end_turn", "claude-x")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)
    seen = claude_fake.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["anthropic-version"] == "2026-10-21"  # SDK 2.x default (§0.1)
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["messages"] == user("hi")


async def test_anthropic_create_parses_tools(claude: anthropic.AsyncAnthropic) -> None:
    message = await create(claude, "#tools")
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    text, weather, clock = message.content
    assert text.text == "Let me check."  # type: ignore[union-attr]
    assert (weather.id, weather.name, weather.input) == (  # type: ignore[union-attr]
        "toolu_01A",
        "get_weather",
        {"city": "Paris"},
    )
    assert (clock.name, clock.input) == ("get_time", {})  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


async def test_anthropic_cache_usage(claude: anthropic.AsyncAnthropic) -> None:
    usage = (await create(claude, "#cache")).usage
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (5, 20)
    async with claude.messages.stream(model="m", max_tokens=9, messages=user("#cache")) as stream:
        final = await stream.get_final_message()
    assert (final.usage.cache_creation_input_tokens, final.usage.cache_read_input_tokens) == (5, 20)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)


@pytest.mark.parametrize("reason", ["max_tokens", "refusal", "pause_turn", "brand_new_reason"])
async def test_anthropic_stop_reason_verbatim(
    claude: anthropic.AsyncAnthropic, reason: str
) -> None:
    assert (await create(claude, f"#stop:{reason}")).stop_reason == reason


async def test_anthropic_stream_accumulates_tools(claude: anthropic.AsyncAnthropic) -> None:
    kinds: list[str] = []
    async with claude.messages.stream(model="m", max_tokens=9, messages=user("#tools")) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 3
    assert kinds.count("input_json") == 3  # "" + 2 fragments; get_time streams none
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Let me check."  # type: ignore[union-attr]
    assert [b.input for b in final.content[1:]] == [{"city": "Paris"}, {}]  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)


async def test_anthropic_stream_text_deltas(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(model="m", max_tokens=9, messages=user("hi")) as stream:
        deltas = [text async for text in stream.text_stream]
    assert len(deltas) > 1
    assert "".join(deltas) == "Hello from the fake."


async def test_anthropic_stream_arrives_in_11_byte_chunks_with_ping(
    claude_fake: FakeAnthropic,
) -> None:
    body = {"model": "m", "max_tokens": 9, "stream": True, "messages": user("hi")}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{claude_fake.url}/v1/messages", json=body, headers=headers) as r,
    ):
        assert r.headers["Content-Type"].startswith("text/event-stream")
        chunks = [data async for data, _ in r.content.iter_chunks()]
    assert max(map(len, chunks)) <= 11
    assert b"event: ping\n" in b"".join(chunks)


@pytest.mark.parametrize(
    ("status", "kind", "error_class"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_errors_map_to_sdk_classes(
    claude: anthropic.AsyncAnthropic, status: int, kind: str, error_class: type, stream: bool
) -> None:
    with pytest.raises(error_class) as caught:
        await create(claude, f"#error:{status}:{kind}", stream=stream)
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert error.body["error"]["type"] == kind  # type: ignore[index]
    assert error.body["request_id"] == error.response.headers["request-id"]  # type: ignore[index]
    assert error.response.headers.get("retry-after") == ("1" if status == 429 else None)


async def stream_kinds(client: anthropic.AsyncAnthropic, text: str, kinds: list[str]) -> None:
    """Consume a stream of the helper, noting each event's type in ``kinds`` as it comes."""
    async with client.messages.stream(model="m", max_tokens=9, messages=user(text)) as stream:
        async for event in stream:
            kinds.append(event.type)


async def test_anthropic_midstream_error_raises(claude: anthropic.AsyncAnthropic) -> None:
    kinds: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        await stream_kinds(claude, "#midstream-error", kinds)
    assert caught.value.status_code == 200
    assert caught.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert kinds[0] == "message_start"
    assert "message_stop" not in kinds


async def test_anthropic_cut_is_an_error(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIConnectionError):
        await create(claude, "#cut")
    kinds: list[str] = []
    with pytest.raises(Exception, match="incomplete chunked read"):
        await stream_kinds(claude, "#cut", kinds)
    assert kinds[0] == "message_start"
    assert "message_stop" not in kinds


async def test_anthropic_auth_and_version(claude_fake: FakeAnthropic) -> None:
    wrong = anthropic.AsyncAnthropic(base_url=claude_fake.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await create(wrong, "hi")
    await wrong.close()
    old = anthropic.AsyncAnthropic(
        base_url=claude_fake.url,
        api_key=KEY,
        max_retries=0,
        default_headers={"anthropic-version": "2023-06-01"},
    )
    await create(old, "hi")
    await old.close()
    assert claude_fake.requests[-1].headers["anthropic-version"] == "2023-06-01"
    body = {"model": "m", "max_tokens": 9, "messages": user("hi")}
    assert (await post_raw(claude_fake, body))[0] == 200  # x-api-key
    status, answer = await post_raw(claude_fake, body, **{"x-api-key": ""})
    assert (status, answer["error"]["type"]) == (401, "authentication_error")
    status, answer = await post_raw(claude_fake, body, **{"anthropic-version": "2099-01-01"})
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "non-empty"),
        (
            {"messages": [{"role": "system", "content": "x"}, *user("hi")]},
            'Unexpected role "system"',
        ),
        ({"temperature": 0.5}, "temperature"),
        (
            {"messages": [*user("hi"), CLAUDE_TOOL_USE, *user("no result")]},
            "without `tool_result` blocks",
        ),
        ({"messages": [CLAUDE_TOOL_RESULT]}, "unexpected `tool_use_id`"),
    ],
)
async def test_anthropic_validates_like_the_api(
    claude_fake: FakeAnthropic, change: dict[str, Any], message: str
) -> None:
    body = {"model": "m", "max_tokens": 9, "messages": user("hi"), **change}
    body = {name: value for name, value in body.items() if value is not None}
    status, answer = await post_raw(claude_fake, body, **{"anthropic-version": "2026-10-21"})
    assert status == 400
    assert answer["type"] == "error"
    assert message in answer["error"]["message"]


async def test_anthropic_accepts_what_the_api_accepts(claude_fake: FakeAnthropic) -> None:
    body = {
        "model": "m",
        "max_tokens": 9,
        "temperature": 0.5,  # fine on 2023-06-01
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            *user("one"),
            *user("two"),  # consecutive same-role turns are allowed
            CLAUDE_TOOL_USE,
            {
                "role": "user",
                "content": [*CLAUDE_TOOL_RESULT["content"], {"type": "text", "text": "more"}],
            },
            {"role": "assistant", "content": ""},  # an empty final assistant turn (prefill)
        ],
    }
    status, answer = await post_raw(claude_fake, body)
    assert status == 200, answer
    assert answer["content"][0]["text"] == "Hello from the fake."


async def test_anthropic_echo_slow_and_unknown(
    claude: anthropic.AsyncAnthropic, claude_fake: FakeAnthropic
) -> None:
    echoed = await create(claude, "#echo")
    assert json.loads(echoed.content[0].text) == claude_fake.requests[-1].body  # type: ignore[union-attr]
    started = time.monotonic()
    slow = await create(claude, "#slow:0.3")
    assert time.monotonic() - started >= 0.3
    assert slow.content[0].text == "Hello from the fake."  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError, match="unknown scenario"):
        await create(claude, "#no-such-scenario")


async def test_anthropic_models_list_parses_and_pages() -> None:
    async with FakeAnthropic(api_key=KEY, models=("claude-b", "claude-a", "claude-x")) as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key=KEY, max_retries=0)
        try:
            page = await client.models.list(limit=2)
            assert [m.id for m in page.data] == ["claude-b", "claude-a"]
            assert page.has_more
            assert page.data[0].type == "model"
            assert [m.id async for m in client.models.list(limit=2)] == [
                "claude-b",
                "claude-a",
                "claude-x",
            ]
            wrong = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-no", max_retries=0)
            with pytest.raises(anthropic.AuthenticationError):
                await wrong.models.list()
            await wrong.close()
        finally:
            await client.close()
