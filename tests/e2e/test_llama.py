"""The main job end to end on real components: LLMRoles applied to a real kube-apiserver,
reconciled by the operator, served by the gateway from llama.cpp's server, asked by the
official openai SDK.

What the model server computes is checked against a direct call to it: at temperature 0 the
tiny models are deterministic, so an answer through the gateway must carry the same text and
the same usage counts (tokenised by llama.cpp) as the direct answer of the model named.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from devstack.k8s.controlplane import ControlPlane
from devstack.llama.model import MODELS, N_EMBD
from devstack.llama.server import LlamaServer
from devstack.poll import eventually
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.llama import API_KEY
from tests.fixtures.stack import Stack, running_stack

PROMPT = [{"role": "user", "content": "Which entities are in: Ada Lovelace wrote a program?"}]
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture
async def stack(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(cluster, namespace, kubectl, tmp_path) as up:
        yield up


def llama_role(name: str, server: LlamaServer, model: str, **spec: Any) -> dict[str, Any]:
    """A role bound (openai binding) to the llama.cpp server, with its key from llama-creds."""
    return m.role(
        name,
        binding="openai",
        model=model,
        host=server.url,
        credentials={"secretRef": {"name": "llama-creds"}},
        **spec,
    )


@dataclass(frozen=True)
class Direct:
    """A model's own answer to PROMPT, asked of the server without the gateway."""

    text: str
    prompt_tokens: int
    completion_tokens: int


async def direct(server: LlamaServer, model: str, **params: Any) -> Direct:
    async with openai.AsyncOpenAI(base_url=server.url, api_key=API_KEY, max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(model=model, messages=PROMPT, **params)
    assert answer.usage is not None
    return Direct(
        answer.choices[0].message.content or "",
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )


async def ready(stack: Stack, *names: str) -> None:
    for name in names:
        await stack.wait_condition(name, "Ready", ("True", "Served"))
    await stack.wait_served(sorted(names))


async def test_sdk_answers_come_from_the_model_server(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(
        m.secret("llama-creds", apiKey=API_KEY),
        llama_role("extract", llama_server, "tiny-a", options=GREEDY),
        llama_role("query", llama_server, "tiny-b", options=GREEDY),
    )
    await ready(stack, "extract", "query")
    want_a = await direct(llama_server, "tiny-a", **GREEDY)
    want_b = await direct(llama_server, "tiny-b", temperature=0, max_tokens=5)
    assert want_a.text != (await direct(llama_server, "tiny-b", **GREEDY)).text  # two models
    assert want_a.completion_tokens == 12  # the tiny models never stop early

    async with stack.sdk() as sdk:
        # The role's options fill in what the request leaves out.
        answer = await sdk.chat.completions.create(model="extract", messages=PROMPT)
        assert answer.model == "tiny-a"
        assert answer.choices[0].message.content == want_a.text
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
            want_a.prompt_tokens,
            12,
        )
        # The request's own parameters win over the role's options (max_tokens 12 there).
        short = await sdk.chat.completions.create(model="query", messages=PROMPT, max_tokens=5)
        assert short.model == "tiny-b"
        assert short.choices[0].message.content == want_b.text
        assert short.usage is not None
        assert short.usage.completion_tokens == 5

        # Streamed: chunks as llama.cpp produced them, which add up to the same answer.
        stream = await sdk.chat.completions.create(model="extract", messages=PROMPT, stream=True)
        pieces, finish = [], None
        async for chunk in stream:
            assert chunk.model == "tiny-a"
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert sum(1 for p in pieces if p) == 12
        assert "".join(pieces) == want_a.text
        assert finish == "length"

        # Legacy completions pass through too, with the model server's usage.
        completion = await sdk.completions.create(
            model="extract", prompt="Ada Lovelace", max_tokens=3
        )
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 3
        assert completion.model == "tiny-a"


def _post(url: str, body: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """POST ``body`` as JSON with plain urllib (no SDK decoding in between); the JSON answer.

    Raises:
        urllib.error.HTTPError: a non-2xx answer.
    """
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        decoded: dict[str, Any] = json.loads(answer.read())
        return decoded


def _vectors(answer: dict[str, Any]) -> list[list[float]]:
    """The vectors of an embeddings answer, base64 ones decoded (little-endian float32)."""
    out = []
    for index, item in enumerate(answer["data"]):
        assert item["index"] == index
        vector = item["embedding"]
        if isinstance(vector, str):
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        out.append(vector)
    return out


async def test_embeddings_give_one_vector_of_the_model_width_per_input(
    stack: Stack, llama_server: LlamaServer
) -> None:
    # The last two differ only after their 3,000th token: a model server that truncated to
    # its default batch (512 tokens) would give them one vector.
    page = "Ada Lovelace wrote the first program. " * 80
    texts = ["Ada Lovelace wrote the first program.", "x", f"{page}Babbage", f"{page}Menabrea"]
    await stack.apply(
        m.secret("llama-creds", apiKey=API_KEY),
        llama_role("embed", llama_server, "tiny-embed"),
    )
    await ready(stack, "embed")
    direct_url = f"{llama_server.url}/embeddings"
    gateway_url = f"{stack.gateway.url}/v1/embeddings"
    for url, key, model in ((direct_url, API_KEY, "tiny-embed"), (gateway_url, None, "embed")):
        floats = await asyncio.to_thread(
            _post, url, {"model": model, "input": texts, "encoding_format": "float"}, key=key
        )
        encoded = await asyncio.to_thread(
            _post, url, {"model": model, "input": texts, "encoding_format": "base64"}, key=key
        )
        assert all(isinstance(item["embedding"], list) for item in floats["data"])
        assert all(isinstance(item["embedding"], str) for item in encoded["data"])
        want = _vectors(floats)
        assert [len(v) for v in want] == [N_EMBD] * len(texts)  # mean pooling: one per input
        assert _vectors(encoded) == want  # float32 either way: the same numbers exactly
        assert len({tuple(v) for v in want}) == len(texts)  # the inputs differ, so do they
        # One token per byte: the tiny models tokenise bytes.
        assert floats["usage"]["prompt_tokens"] == sum(len(t.encode()) for t in texts)
    async with stack.sdk() as sdk:  # the SDK asks for base64 and decodes it itself
        answer = await sdk.embeddings.create(model="embed", input=texts)
    assert answer.model == "tiny-embed"
    assert [d.embedding for d in answer.data] == want


async def test_a_10000_token_prompt_is_answered_through_the_gateway(
    stack: Stack, llama_server: LlamaServer
) -> None:
    # What a RAG application's extraction prompt weighs; a 512-token context refused it
    # (and a stream past the context ends as an empty 200 stream, with no error at all).
    document = "Ada Lovelace wrote the first program for the Analytical Engine. " * 160
    messages: list[Any] = [{"role": "user", "content": f"Extract the entities:\n{document}"}]
    await stack.apply(
        m.secret("llama-creds", apiKey=API_KEY),
        llama_role("extract", llama_server, "tiny-a", options=GREEDY, timeoutSeconds=120),
    )
    await ready(stack, "extract")
    async with stack.sdk() as plain:
        sdk = plain.with_options(timeout=120)  # one CPU thread reads 10K tokens: seconds
        answer = await sdk.chat.completions.create(model="extract", messages=messages)
        assert answer.usage is not None
        assert answer.usage.prompt_tokens >= 10_000
        assert answer.usage.completion_tokens == GREEDY["max_tokens"]
        assert answer.choices[0].message.content
        stream = await sdk.chat.completions.create(model="extract", messages=messages, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == answer.choices[0].message.content


async def test_kubectl_get_llmroles_shows_the_columns(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(
        m.secret("llama-creds", apiKey=API_KEY),
        llama_role("extract", llama_server, "tiny-a", maxAsync=8),
        llama_role("vlm", llama_server, "tiny-b", maxAsync=2),
    )
    await ready(stack, "extract", "vlm")
    for name in ("extract", "vlm"):  # the gateway lists the models (GET /models)
        await stack.wait_condition(name, "UpstreamReady", ("True", "Reachable"))
    rows = [line.split() for line in (await stack.run("get", "llmroles")).splitlines()]
    assert rows[0] == ["NAME", "BINDING", "MODEL", "MAXASYNC", "READY", "UPSTREAM", "AGE"]
    assert [row[:6] for row in rows[1:]] == [
        ["extract", "openai", "tiny-a", "8", "True", "Reachable"],
        ["vlm", "openai", "tiny-b", "2", "True", "Reachable"],
    ]
    wide = [
        line.split() for line in (await stack.run("get", "llmroles", "-o", "wide")).splitlines()
    ]
    reason = wide[0].index("REASON")
    assert [row[reason] for row in wide[1:]] == ["Served", "Served"]


async def test_a_wrong_key_is_refused_by_the_server_and_a_rotated_one_works(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(
        m.secret("llama-creds", apiKey="sk-wrong"), llama_role("extract", llama_server, "tiny-a")
    )
    await ready(stack, "extract")
    async with stack.sdk() as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="extract", messages=PROMPT, max_tokens=2)
        await stack.apply(m.secret("llama-creds", apiKey=API_KEY))

        async def answered() -> bool:
            try:
                await sdk.chat.completions.create(model="extract", messages=PROMPT, max_tokens=2)
            except openai.AuthenticationError:
                return False
            return True

        await eventually(answered)
    assert stack.gateway.running()


@dataclass
class Call:
    """One request of the load: when it started and ended (loop time), and its outcome."""

    started: float
    ended: float
    model: str = ""
    text: str = ""
    error: str = ""


async def test_rebinding_between_the_models_under_load_loses_nothing(
    stack: Stack, llama_server: LlamaServer
) -> None:
    await stack.apply(
        m.secret("llama-creds", apiKey=API_KEY),
        llama_role("query", llama_server, "tiny-a", maxAsync=2, options=GREEDY),
    )
    await ready(stack, "query")
    want = {model: (await direct(llama_server, model, **GREEDY)).text for model in MODELS}
    assert want["tiny-a"] != want["tiny-b"]
    loop = asyncio.get_running_loop()
    calls: list[Call] = []
    stop = asyncio.Event()

    async def client(index: int, sdk: openai.AsyncOpenAI) -> None:
        while not stop.is_set():
            call = Call(loop.time(), 0.0)
            try:
                if index % 2:
                    stream = await sdk.chat.completions.create(
                        model="query", messages=PROMPT, stream=True
                    )
                    async for chunk in stream:
                        call.model = chunk.model
                        call.text += "".join(c.delta.content or "" for c in chunk.choices)
                else:
                    answer = await sdk.chat.completions.create(model="query", messages=PROMPT)
                    call.model, call.text = answer.model, answer.choices[0].message.content or ""
            except openai.OpenAIError as exc:
                call.error = f"{type(exc).__name__}: {exc}"
            call.ended = loop.time()
            calls.append(call)

    async def answered_by(model: str, since: float) -> bool:
        return any(c.model == model and c.started >= since for c in calls)

    async with stack.sdk() as sdk:
        clients = [asyncio.create_task(client(i, sdk)) for i in range(6)]
        applied: list[tuple[str, float]] = []
        try:
            for model in ("tiny-b", "tiny-a", "tiny-b"):
                await asyncio.sleep(0.5)
                applied.append((model, loop.time()))
                role = llama_role("query", llama_server, model, maxAsync=2, options=GREEDY)
                await stack.apply(role)
                await eventually(lambda m=model, t=applied[-1][1]: answered_by(m, t))
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert [c.error for c in calls if c.error] == []
    # Every answer is the named model's own text: the weights really were switched.
    assert all(c.text == want[c.model] for c in calls), Counter((c.model, c.text) for c in calls)
    # After a switch, once the new model has answered one request started after the apply,
    # every request started later and done before the next apply got the new model. (One
    # still queued at the next apply may rightly run on the model after.)
    ends = [t for _, t in applied[1:]] + [float("inf")]
    for (model, at), until in zip(applied, ends, strict=True):
        first = min(c.ended for c in calls if c.model == model and c.started >= at)
        later = [c for c in calls if c.started > first and c.ended < until]
        assert later, f"no request ran between {model}'s first answer and the next apply"
        assert {c.model for c in later} == {model}
    assert stack.gateway.status()["roles"]["query"]["model"] == "tiny-b"
