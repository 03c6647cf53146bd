"""The translated bindings (anthropic, bedrock) end to end: the official openai SDK -> the
gateway -> the provider fakes (tests/fakes/anthropic.py, bedrock.py; scenarios picked by
the prompt, tests/fakes/scenarios.py). Behaviour both bindings share is one test body,
parametrized over the two (fixtures: tests/fixtures/providers.py)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import openai
import pytest

from tests.fakes.bedrock import TITAN_V2
from tests.fixtures.providers import (
    ARN,
    BROKEN_STREAM_CODES,
    ERROR_TYPES,
    FINISH,
    PNG,
    ROLE,
    TABLES,
    TEXT,
    TOOLS,
    Launch,
    Provider,
    finish_reasons,
    launch,
    provider,
    streamed_text,
)

__all__ = ["launch", "provider"]  # fixtures, imported by name


async def test_chat_answers_streamed_and_not(provider: Provider) -> None:
    reply = await provider.ask("hi")
    assert reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == provider.model
    chunks = await provider.chunks("hi")
    assert streamed_text(chunks) == TEXT
    assert finish_reasons(chunks) == ["stop"]
    assert len(chunks) > 3  # passed on as deltas, not one chunk
    assert len(provider.fake.requests) == 2


async def test_two_tool_calls_answered_whole(provider: Provider) -> None:
    reply = await provider.ask("#tools", tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {}]
    assert all(c.id.endswith(("_01A", "_01B")) for c in calls)


async def test_two_tool_calls_streamed_through_the_sdks_accumulator(provider: Provider) -> None:
    done: list[tuple[int, str, Any]] = []
    async with provider.client.chat.completions.stream(
        model=ROLE, messages=[{"role": "user", "content": "#tools"}], tools=TOOLS
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.index, event.name, event.parsed_arguments))
        final = await stream.get_final_completion()
    assert done == [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {})]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.parsed_arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {}]


async def test_an_image_reaches_the_provider_as_its_image_block(provider: Provider) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "what is this?"},
    ]
    reply = await provider.ask(content)
    assert reply.choices[0].message.content == TEXT
    sent = provider.fake.requests[-1].body["messages"][0]["content"]
    if provider.binding == "anthropic":
        image = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
        }
        assert sent == [image, {"type": "text", "text": "what is this?"}]
    else:
        image = {"image": {"format": "png", "source": {"bytes": PNG}}}
        assert sent == [image, {"text": "what is this?"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_every_stop_reason_maps_to_a_finish_reason(provider: Provider, stream: bool) -> None:
    expected = {r: finish for finish, rs in FINISH[provider.binding].items() for r in rs}
    assert expected == TABLES[provider.binding]  # the provider's whole vocabulary is covered
    expected["brand_new_reason"] = "stop"  # one added since: stop, not a failure
    got: dict[str, str | None] = {}
    for reason in expected:
        if stream:
            chunks = await provider.chunks(f"#stop:{reason}")
            assert streamed_text(chunks) == "ok"
            [got[reason]] = finish_reasons(chunks)
        else:
            reply = await provider.ask(f"#stop:{reason}")
            assert reply.choices[0].message.content == "ok"
            got[reason] = reply.choices[0].finish_reason
    assert got == expected


async def test_usage_and_token_metrics(provider: Provider) -> None:
    reply = await provider.ask("hi")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 7)
    assert reply.usage.total_tokens == 18
    counted = {"prompt": 11.0, "completion": 7.0, "cached": 0.0}
    assert {kind: provider.tokens(kind) for kind in counted} == counted

    plain = await provider.chunks("hi")
    assert [c for c in plain if c.usage is not None] == []  # no usage chunk unasked
    counted = {"prompt": 22.0, "completion": 14.0, "cached": 0.0}  # counted all the same
    assert {kind: provider.tokens(kind) for kind in counted} == counted

    chunks = await provider.chunks("hi", stream_options={"include_usage": True})
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    assert with_usage[0].choices == []
    assert chunks[-1] is with_usage[0]  # last, after the finish chunk
    usage = with_usage[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 7, 18)

    cached = await provider.ask("#cache")
    assert cached.usage is not None
    assert cached.usage.prompt_tokens == 11 + 20 + 5  # input + cache read + cache write
    assert cached.usage.prompt_tokens_details is not None
    assert cached.usage.prompt_tokens_details.cached_tokens == 20
    counted = {"prompt": 33.0 + 36, "completion": 28.0, "cached": 20.0}
    assert {kind: provider.tokens(kind) for kind in counted} == counted


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_errors_before_the_answer_keep_their_status(provider: Provider, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await provider.ask(provider.error(400), stream=stream)
    assert bad.value.status_code == 400
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["code"] == ERROR_TYPES[provider.binding][400]
    assert len(provider.fake.requests) == 1  # a 400 is not retried
    with pytest.raises(openai.RateLimitError) as limited:
        await provider.ask(provider.error(429), stream=stream)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "1"
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["type"] == "rate_limit_error"
    assert limited.value.body["code"] == ERROR_TYPES[provider.binding][429]
    assert len(provider.fake.requests) == 1 + 3  # the gateway tried twice more, then passed it on
    assert provider.fake.requests[-1].path == provider.fake.requests[-2].path


async def test_overloaded_anthropic_is_503(launch: Launch) -> None:
    provider = await launch("anthropic")
    with pytest.raises(openai.InternalServerError) as err:
        await provider.ask("#error:529:overloaded_error")
    assert err.value.status_code == 503
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "overloaded_error"


@pytest.mark.parametrize("scenario", ["#midstream-error", "#cut"])
async def test_a_stream_that_breaks_raises_in_the_sdk(provider: Provider, scenario: str) -> None:
    stream = await provider.ask(scenario, stream=True)
    seen: list[Any] = []

    async def drain() -> None:
        async for chunk in stream:
            seen.append(chunk)

    with pytest.raises(openai.APIError) as err:
        await drain()
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == BROKEN_STREAM_CODES[provider.binding, scenario]
    assert seen  # the 200 and some chunks came first
    assert finish_reasons(seen) == []
    assert provider.failed() == 1
    await provider.ask("hi")  # the role still serves
    assert provider.failed() == 1


async def test_embeddings_on_an_anthropic_role_are_a_clear_400(launch: Launch) -> None:
    provider = await launch("anthropic")
    with pytest.raises(openai.BadRequestError) as err:
        await provider.client.embeddings.create(model=ROLE, input=["a"])
    assert "binding anthropic serves /v1/chat/completions only" in err.value.message
    assert provider.fake.requests == []


async def test_titan_embeddings_one_call_per_input(launch: Launch) -> None:
    provider = await launch("bedrock", model=TITAN_V2)
    raw = await provider.client.embeddings.with_raw_response.create(
        model=ROLE, input=["a", "b", "c"]
    )
    sent = json.loads(raw.text)["data"]  # the SDK asks for base64 by default, and decodes it
    assert [type(item["embedding"]) for item in sent] == [str] * 3
    reply = raw.parse()
    assert [d.index for d in reply.data] == [0, 1, 2]
    for text, item in zip("abc", reply.data, strict=True):
        generator = random.Random(text)  # the fake's deterministic, normalized embedding
        values = [generator.uniform(-1, 1) for _ in range(8)]
        norm = math.sqrt(sum(x * x for x in values))
        assert item.embedding == pytest.approx([x / norm for x in values], rel=1e-6)
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 3)
    paths = [seen.path for seen in provider.fake.requests]
    assert paths == ["/model/amazon.titan-embed-text-v2%3A0/invoke"] * 3
    assert [seen.body["inputText"] for seen in provider.fake.requests] == ["a", "b", "c"]


async def test_an_arn_model_id_is_sent_percent_encoded_and_signed(launch: Launch) -> None:
    provider = await launch("bedrock", model=ARN)
    assert (await provider.ask("hi")).choices[0].message.content == TEXT
    assert streamed_text(await provider.chunks("hi")) == TEXT
    encoded = ARN.replace(":", "%3A").replace("/", "%2F")
    paths = [seen.path for seen in provider.fake.requests]
    assert paths == [f"/model/{encoded}/converse", f"/model/{encoded}/converse-stream"]
