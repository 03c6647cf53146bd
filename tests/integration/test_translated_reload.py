"""Hot reload across bindings: one role rebound openai -> anthropic -> bedrock by editing
its manifests while clients keep calling it; nothing fails, nothing reaches a binding
older than the one in force when it was sent, and maxAsync holds across all three."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import openai
from aiohttp import web

from tests.conftest import Gateway, Upstream, until
from tests.fakes import manifests as m
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.bedrock import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeBedrock
from tests.fakes.openai_upstream import Peak

ROLE = "chat"
MAX_ASYNC = 3
CLIENTS = 8
PER_TURN = 15  # answers each binding gives after its turn began, before the next edit
DEADLINE_S = 20.0
TEXT = "Hello from the fake."
ORDER = ("openai", "anthropic", "bedrock")
#: Each fake's answer text, whole and streamed (FakeOpenAI's name is "A").
TEXTS = {"openai": ("hi from A", "A-0 A-1 A-2 "), "anthropic": (TEXT,), "bedrock": (TEXT,)}
MODELS = {"openai": "gpt-fake", "anthropic": "claude-fake", "bedrock": "amazon.nova-lite-v1:0"}


@contextlib.contextmanager
def counted(peak: Peak) -> Iterator[None]:
    """One upstream call in flight, counted in ``peak`` (shared by the three fakes). A
    handler starts after the gateway took its slot and ends before the gateway has read
    the answer, so this never counts more than the gateway has running."""
    peak.now += 1
    peak.peak = max(peak.peak, peak.now)
    try:
        yield
    finally:
        peak.now -= 1


class CountedAnthropic(FakeAnthropic):
    def __init__(self, peak: Peak) -> None:
        super().__init__(api_key="sk-ant-reload")
        self.peak = peak

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        with counted(self.peak):  # the handler returns once the whole answer was written
            return await super()._messages(request)


class CountedBedrock(FakeBedrock):
    def __init__(self, peak: Peak) -> None:
        super().__init__()
        self.peak = peak

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        with counted(self.peak):
            return await super()._converse(request)


def who(model: str, text: str) -> str:
    """Which upstream gave an answer: the model names the role's binding at the time, and
    the text must be that binding's fake's."""
    [name] = [name for name, role_model in MODELS.items() if role_model == model]
    assert text in TEXTS[name], (model, text)
    return name


async def ask(client: openai.AsyncOpenAI, *, stream: bool) -> str:
    messages: Any = [{"role": "user", "content": "#slow:0.02"}]  # FakeOpenAI: its delay_s
    if not stream:
        reply = await client.chat.completions.create(model=ROLE, messages=messages)
        return who(reply.model, reply.choices[0].message.content or "")
    chunks = await client.chat.completions.create(model=ROLE, messages=messages, stream=True)
    got = [chunk async for chunk in chunks]
    models = {chunk.model for chunk in got}
    assert len(models) == 1, models
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    return who(models.pop(), text)


async def test_rebind_openai_anthropic_bedrock_under_load(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    peak = Peak()
    upstream.fake.shared, upstream.fake.delay_s, upstream.fake.chunk_delay_s = peak, 0.02, 0.002
    async with CountedAnthropic(peak) as anthropic, CountedBedrock(peak) as bedrock:
        spec: dict[str, Any] = {"maxAsync": MAX_ASYNC}
        turns = {
            "openai": [
                m.role(ROLE, host=upstream.url, binding="openai", model=MODELS["openai"], **spec)
            ],
            "anthropic": [
                m.role(
                    ROLE,
                    host=anthropic.url,
                    binding="anthropic",
                    model=MODELS["anthropic"],
                    credentials={"secretRef": {"name": "claude"}},
                    **spec,
                ),
                m.secret("claude", apiKey="sk-ant-reload"),
            ],
            "bedrock": [
                m.role(
                    ROLE,
                    host=bedrock.url,
                    binding="bedrock",
                    model=MODELS["bedrock"],
                    bedrock={"region": "us-east-1"},
                    credentials={"secretRef": {"name": "aws"}},
                    **spec,
                ),
                m.secret("aws", awsAccessKeyId=ACCESS_KEY_ID, awsSecretAccessKey=SECRET_ACCESS_KEY),
            ],
        }
        path = tmp_path / "roles.yaml"
        m.write(path, *turns["openai"])
        gateway = await start_gateway(tmp_path)
        client = sdk(gateway)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        turn = 0  # index in ORDER of the binding in force
        answers: list[tuple[int, str]] = []  # (turn when sent, who answered)
        failures: list[BaseException] = []
        done = asyncio.Event()

        async def client_loop(i: int) -> None:
            n = 0
            while not done.is_set() and loop.time() < deadline:
                sent_in = turn
                try:
                    answers.append((sent_in, await ask(client, stream=(i + n) % 2 == 0)))
                except Exception as exc:  # every failure is reported below
                    failures.append(exc)
                n += 1

        def answered_in(k: int) -> int:
            return sum(1 for sent_in, name in answers if sent_in == k and name == ORDER[k])

        def turn_done(k: int) -> bool:  # (or a failure: stop waiting, report it)
            return answered_in(k) >= PER_TURN or bool(failures)

        workers = [asyncio.create_task(client_loop(i)) for i in range(CLIENTS)]
        try:
            for k, name in enumerate(ORDER):
                if k:
                    before = gateway.runtime.last_reload
                    m.write(path, *turns[name])
                    await gateway.wait_reload(before)
                    assert gateway.runtime.last_reload is not None
                    assert gateway.runtime.last_reload.rebound == (ROLE,)
                    turn = k
                await until(functools.partial(turn_done, k), timeout_s=DEADLINE_S / 3)
                assert failures == []
        finally:
            done.set()
            await asyncio.gather(*workers)

    assert failures == []
    assert all(sent_in <= ORDER.index(name) for sent_in, name in answers)  # never an older one
    for k, name in enumerate(ORDER):
        assert answered_in(k) >= PER_TURN, name
    counts = {name: sum(1 for _, n in answers if n == name) for name in ORDER}
    seen: dict[str, list[Any]] = {
        "openai": upstream.fake.seen,
        "anthropic": anthropic.requests,
        "bedrock": bedrock.requests,
    }
    assert {name: len(requests) for name, requests in seen.items()} == counts  # one call each
    assert peak.peak == MAX_ASYNC  # reached (8 clients), never exceeded across the swaps
    assert peak.now == 0
    stats = gateway.runtime.roles[ROLE].queue.stats()
    assert stats["failed_total"] == 0
    assert stats["running"] == stats["queued"] == 0
