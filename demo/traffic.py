"""What the demo sends through the gateway with the official openai SDK, and what it prints.

Four phases: one answer per chat role (text, upstream model and the usage the model server
counted), embeddings from the embedding role (vectors and their width), one streamed answer
printed chunk by chunk as it arrives, and a load of concurrent requests (half streamed) to one
role while it is rebound to another model, counting every request that did not end in a
complete answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import openai

__all__ = [
    "NO_KEY",
    "RebindResult",
    "ask_each",
    "client",
    "embed",
    "printable",
    "rebind_under_load",
    "say_result",
    "stream_one",
]

PROMPTS = {
    "extract": "Extract the entities from: Ada Lovelace wrote the first program.",
    "keyword": "Keywords of: how does rolegate rebind a role?",
    "query": "What does rolegate do?",
    "vlm": "Describe the table on page 3.",
}
#: What the demo embeds: two chunks of a document, as a RAG application's indexer sends them.
CHUNKS = ("Ada Lovelace wrote the first program.", "rolegate routes LLM roles in Kubernetes.")


def printable(text: str) -> str:
    """``text`` with anything a terminal would act on (control characters) replaced by '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


#: What the SDK sends to a gateway that checks no client (``--auth none``): the upstream key
#: is the role's Secret's, never the client's.
NO_KEY = "unused"


def client(base_url: str, *, api_key: str = NO_KEY) -> openai.AsyncOpenAI:
    """An SDK client for the gateway, no retries (a failure must show). ``api_key`` is the
    client's own credential, sent as ``Authorization: Bearer``: a Kubernetes token when the
    gateway checks clients (``--auth kubernetes``, the chart's default)."""
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


async def ask_each(base_url: str, roles: Sequence[str], *, api_key: str = NO_KEY) -> None:
    """One chat completion per role, printed with the answering model and its usage."""
    async with client(base_url, api_key=api_key) as sdk:
        for role in roles:
            prompt = PROMPTS.get(role, "Hello!")
            answer = await sdk.chat.completions.create(
                model=role, messages=[{"role": "user", "content": prompt}]
            )
            usage = answer.usage
            counted = (
                f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
                if usage
                else "no usage"
            )
            text = printable(answer.choices[0].message.content or "")
            print(f"  {role:<8} -> {answer.model}: {text!r}  ({counted})", flush=True)


async def embed(base_url: str, role: str, *, api_key: str = NO_KEY) -> list[int]:
    """Embed :data:`CHUNKS` through ``role``; prints the model, each vector's width and the
    usage, and returns the widths.

    Raises:
        openai.OpenAIError: the request failed.
        ValueError: the answer does not hold one vector per chunk.
    """
    async with client(base_url, api_key=api_key) as sdk:
        answer = await sdk.embeddings.create(model=role, input=list(CHUNKS))
    widths = [len(item.embedding) for item in answer.data]
    if len(widths) != len(CHUNKS):
        raise ValueError(f"{len(widths)} vectors for {len(CHUNKS)} inputs")
    print(
        f"  {role:<8} -> {answer.model}: {len(widths)} vectors of {widths[0]} floats"
        f"  ({answer.usage.prompt_tokens} prompt tokens)",
        flush=True,
    )
    return widths


async def stream_one(base_url: str, role: str, *, api_key: str = NO_KEY) -> int:
    """One streamed chat completion, each chunk printed as it arrives; returns the count."""
    chunks = 0
    async with client(base_url, api_key=api_key) as sdk:
        stream = await sdk.chat.completions.create(
            model=role,
            messages=[{"role": "user", "content": PROMPTS.get(role, "Hello!")}],
            stream=True,
        )
        print(f"  {role:<8} -> ", end="", flush=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                print(printable(chunk.choices[0].delta.content), end="", flush=True)
                await asyncio.sleep(0.03)  # the model is faster than the eye
    print(f"  [{chunks} chunks as they arrived]", flush=True)
    return chunks


@dataclass
class RebindResult:
    """Requests sent while rebinding: how many, which model answered, what failed."""

    sent: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    switched_after_s: float | None = None

    @property
    def failed(self) -> int:
        """How many requests ended in an error or an incomplete answer."""
        return len(self.failures)


async def _one(sdk: openai.AsyncOpenAI, role: str, streamed: bool) -> str:
    """One request; returns the model that answered. Raises on anything short of an answer."""
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPTS.get(role, "Hello!")}
    ]
    if not streamed:
        answer = await sdk.chat.completions.create(model=role, messages=messages, max_tokens=8)
        if not answer.choices[0].message.content:
            raise ValueError("empty answer")
        return answer.model
    stream = await sdk.chat.completions.create(
        model=role, messages=messages, max_tokens=8, stream=True
    )
    model, finished = "", False
    async for chunk in stream:
        model = chunk.model
        finished = finished or any(c.finish_reason for c in chunk.choices)
    if not finished:
        raise ValueError("stream ended without a finish_reason")
    return model


async def rebind_under_load(
    base_url: str,
    role: str,
    *,
    new_model: str,
    rebind: Callable[[], Awaitable[None]],
    api_key: str = NO_KEY,
    clients: int = 4,
    warmup_s: float = 1.0,
    settle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> RebindResult:
    """Send requests to ``role`` from ``clients`` concurrent loops, call ``rebind`` after
    ``warmup_s`` seconds, and stop ``settle_s`` seconds after ``new_model`` first answers.
    ``api_key``: the clients' credential (see :func:`client`).

    Raises:
        TimeoutError: ``new_model`` did not answer within ``timeout_s`` seconds of the rebind.
    """
    result = RebindResult()
    stop = asyncio.Event()
    rebound_at: float | None = None

    async def loop(index: int, sdk: openai.AsyncOpenAI) -> None:
        streamed = index % 2 == 1
        while not stop.is_set():
            result.sent += 1
            try:
                model = await _one(sdk, role, streamed)
            except (openai.OpenAIError, ValueError) as exc:
                result.failures.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)  # a gateway failing fast must not be hammered
                continue
            result.by_model[model] += 1
            if model == new_model and result.switched_after_s is None and rebound_at:
                result.switched_after_s = time.monotonic() - rebound_at

    async with client(base_url, api_key=api_key) as sdk:
        loops = [asyncio.create_task(loop(i, sdk)) for i in range(clients)]
        try:
            await asyncio.sleep(warmup_s)
            rebound_at = time.monotonic()
            await rebind()
            try:
                async with asyncio.timeout(timeout_s):
                    while result.switched_after_s is None:  # noqa: ASYNC110 - set by the loops
                        await asyncio.sleep(0.05)
            except TimeoutError:
                raise TimeoutError(
                    f"{new_model} did not answer role {role} within {timeout_s:.0f} s of the "
                    f"rebind ({result.sent} requests, {result.failed} failed)"
                ) from None
            await asyncio.sleep(settle_s)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    return result


def say_result(result: RebindResult, old_model: str, new_model: str) -> None:
    """Print the rebinding's outcome (and each failure, should there be any)."""
    after = f"{result.switched_after_s:.2f} s" if result.switched_after_s is not None else "-"
    print(
        f"  {result.sent} requests while rebinding: {result.failed} failed; "
        f"{old_model} answered {result.by_model[old_model]}, "
        f"{new_model} answered {result.by_model[new_model]}; "
        f"first answer from {new_model} {after} after the patch",
        flush=True,
    )
    for failure in result.failures[:10]:
        print(f"    failed: {failure}", file=sys.stderr, flush=True)
