"""Property: whatever body a client sends to /v1, the gateway never answers 5xx, and every
4xx it gives is OpenAI's error body (Hypothesis, a bounded number of examples)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolegate_gateway import start
from tests.conftest import Gateway
from tests.fakes import manifests as m

EXAMPLES = 400

#: Text with what breaks naive handling: lone surrogates, NUL, non-BMP, quotes, escapes.
_TEXT = st.text(
    alphabet=st.characters(codec=None, exclude_categories=())
    | st.sampled_from('\ud800\udfff\\"\x00😀'),
    max_size=12,
)
_NUMBERS = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    # around int()'s limit of 4,300 digits: written into the JSON text by _encode
    | st.integers(4290, 4310).map(lambda digits: f"@@digits{digits}@@")
)
_LEAVES = st.none() | st.booleans() | _NUMBERS | _TEXT
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=40,
)
_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]) | _TEXT, "content": _JSON}
    ),
    max_size=3,
)
_BODIES = st.fixed_dictionaries(
    {"model": st.sampled_from(["extract", "extract", "nobody", ""]) | _JSON},
    optional={
        "messages": _MESSAGES | _JSON,
        "prompt": _TEXT | _JSON,
        "input": _TEXT | st.lists(st.integers(0, 300), max_size=5) | _JSON,
        "stream": st.booleans() | _JSON,
        "temperature": _NUMBERS | _JSON,
        "max_tokens": _JSON,
        "model_extra": _JSON,
    },
)


_DIGITS = re.compile(rb'"@@digits(\d+)@@"')


def _encode(body: Any, mangle: int) -> bytes:
    """JSON text (NaN/Infinity as Python writes them; lone surrogates escaped), then
    sometimes damaged: truncated, a byte flipped, or wrapped."""
    raw = json.dumps(body, allow_nan=True).encode()
    raw = _DIGITS.sub(lambda found: b"9" * int(found.group(1)), raw)
    match mangle % 6:
        case 0:
            return raw[: len(raw) // 2]
        case 1:
            i = mangle % max(1, len(raw))
            return raw[:i] + bytes([mangle % 256]) + raw[i + 1 :]
        case 2:
            return b"[" + raw + b"]"
        case _:
            return raw


def _check(port: int, path: str, raw: bytes, sent: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, raw, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        sent.append(answer.status)
    finally:
        conn.close()
    assert answer.status < 500, (answer.status, raw[:200], data[:200])
    if answer.status >= 400:
        error = json.loads(data)["error"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert set(error) == {"message", "type", "param", "code"}


async def _upstream() -> tuple[web.AppRunner, str]:
    """An upstream that answers every POST with a fixed completion, whatever the body."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
        )

    app = web.Application(client_max_size=128 * 1024 * 1024)
    app.router.add_post("/v1/{tail:.*}", answer)
    runner, port = await start(app, host="127.0.0.1", port=0, shutdown_timeout_s=1)
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_any_body_gets_a_non_5xx_answer_and_4xx_are_openai_errors(
    tmp_path: Path, start_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    runner, url = await _upstream()
    try:
        m.write(tmp_path / "roles.yaml", m.role("extract", host=url, model="tiny"))
        gateway = await start_gateway(tmp_path)
        paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(path=paths, body=_BODIES, mangle=st.integers(0, 10_000))
        def prop(path: str, body: dict[str, Any], mangle: int) -> None:
            _check(gateway.port, path, _encode(body, mangle), sent)

        sent: list[int] = []

        await asyncio.to_thread(prop)
        counted = gateway.runtime.registry.get_sample_value
        total = sum(
            counted("rolegate_requests_total", labels) or 0.0 for labels in _request_labels(gateway)
        )
        assert total == len(sent)  # every request counted once, under its own code
        assert len(sent) >= EXAMPLES // 2
    finally:
        await runner.cleanup()


def _request_labels(gateway: Gateway) -> list[dict[str, str]]:
    out = []
    for family in gateway.runtime.registry.collect():
        if family.name == "rolegate_requests":
            out += [s.labels for s in family.samples if s.name == "rolegate_requests_total"]
    return out
