"""The pass-through translator (openai, vllm, ollama, azure_openai) and the binding
registry: requests addressed and shaped per binding, answers passed on as bytes with
usage, first content and a stream's end read on the side (no network)."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr

from rolegate_gateway import ConfigError, Upstream, translators
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators import Endpoint, Usage
from rolegate_gateway.translators.passthrough import TAIL_BYTES, openai_usage


def _upstream(binding: Binding, **kw: object) -> Upstream:
    fields: dict[str, object] = {
        "binding": binding,
        "model": "m1",
        "base_url": "https://up.example/v1",
        "timeout_s": 5,
        "credentials": Credentials(api_key=SecretStr("k")),
    }
    return Upstream.model_validate({**fields, **kw})


def _translator(upstream: Upstream) -> translators.Translator:
    return translators.entry(upstream.binding).translators(upstream, role="r")()


async def _sent_headers(upstream: Upstream, request: translators.UpstreamRequest) -> dict:
    return await translators.entry(upstream.binding).auth(upstream).headers(request)


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


@pytest.mark.parametrize("binding", [Binding.OPENAI, Binding.VLLM, Binding.OLLAMA])
async def test_openai_compatible(binding: Binding) -> None:
    up = _upstream(binding, options={"temperature": 0.1, "top_p": 0.5})
    req = _translator(up).request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "role", "messages": [], "temperature": 0.9}),
    )
    assert str(req.url) == "https://up.example/v1/chat/completions"
    assert "Authorization" not in req.headers  # the translator holds no secret
    assert (await _sent_headers(up, req))["Authorization"] == "Bearer k"
    assert json.loads(req.body) == {"model": "m1", "messages": [], "temperature": 0.9, "top_p": 0.5}


async def test_no_key_no_auth_header() -> None:
    up = _upstream(Binding.OLLAMA, credentials=Credentials())
    req = _translator(up).request(Endpoint.EMBEDDINGS, Payload.of({"model": "r"}))
    assert "Authorization" not in await _sent_headers(up, req)


async def test_azure_url_and_api_key_header() -> None:
    up = _upstream(
        Binding.AZURE_OPENAI,
        base_url="https://res.openai.azure.com",
        azure_deployment="gpt4o",
        azure_api_version="2024-10-21",
    )
    req = _translator(up).request(Endpoint.EMBEDDINGS, Payload.of({"model": "role", "input": "x"}))
    assert str(req.url) == (
        "https://res.openai.azure.com/openai/deployments/gpt4o/embeddings?api-version=2024-10-21"
    )
    sent = await _sent_headers(up, req)
    assert sent["api-key"] == "k"
    assert "Authorization" not in sent


def test_an_unknown_binding_is_a_config_error_naming_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match=r"binding gemini is not supported .*openai"):
        translators.entry("gemini")
    assert set(translators.SUPPORTED_BINDINGS) == {Binding(b) for b in translators.BINDINGS}


def test_a_whole_body_passes_unchanged_and_its_usage_is_read() -> None:
    tr = _translator(_upstream(Binding.OPENAI))
    head = tr.response_headers(200, _headers(Content_Type="application/json", x_request_id="r1"))
    assert (head.stream, head.headers) == (False, {"x-upstream-request-id": "r1"})
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'text with "usage": 1 in it'}}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        }
    ).encode()
    assert tr.response_body(body, end=True) == body
    assert tr.usage == Usage(12, 3, 8)
    assert tr.failure is None


def _events(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


_STREAM = (
    _events(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hi"}}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("piece", [1, 7, 64, len(_STREAM)])
def test_a_stream_passes_unchanged_whatever_its_pieces(piece: int) -> None:
    tr = _translator(_upstream(Binding.VLLM))
    assert tr.response_headers(200, _headers(Content_Type="text/event-stream")).stream
    out = b""
    first_at = None
    for at in range(0, len(_STREAM), piece):
        out += tr.response_body(_STREAM[at : at + piece], end=False)
        if first_at is None and tr.first_content:
            first_at = at
    out += tr.response_body(b"", end=True)
    assert out == _STREAM
    assert tr.usage == Usage(5, 2, 0)
    assert tr.failure is None
    assert first_at is not None
    assert first_at >= _STREAM.index(b'"Hi"') - piece  # not at the empty role chunk
    if piece == 1:  # exact where the pieces are small enough to tell
        assert first_at == _STREAM.index(b'"Hi"') + 1  # its first character


def test_done_without_the_optional_space_ends_a_stream_too() -> None:
    """SSE's space after "data:" is optional; the SDK reads "data:[DONE]" as the end."""
    tr = _translator(_upstream(Binding.OPENAI))
    tr.response_headers(200, _headers(Content_Type="text/event-stream"))
    assert tr.response_body(b'data:{"choices":[]}\n\ndata:[DONE]\n\n', end=True).endswith(
        b"data:[DONE]\n\n"
    )
    assert tr.failure is None


def test_a_stream_ended_without_done_fails_with_an_error_event() -> None:
    """llama.cpp answers a prompt over its context with 200 and an empty stream."""
    tr = _translator(_upstream(Binding.OPENAI))
    tr.response_headers(200, _headers(Content_Type="text/event-stream"))
    out = tr.response_body(b"", end=True)
    assert tr.failure is not None
    assert tr.failure.status == 502
    [event] = out.split(b"\n\n")[:-1]
    assert json.loads(event.removeprefix(b"data: "))["error"]["message"].startswith(
        "the upstream of role 'r' ended its stream without 'data: [DONE]'"
    )


def test_the_tail_keeps_the_last_bytes_across_small_and_large_chunks() -> None:
    tr = _translator(_upstream(Binding.OPENAI))
    tr.response_headers(200, _headers(Content_Type="text/event-stream"))
    usage = _events({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    tr.response_body(b"x" * (TAIL_BYTES * 3), end=False)
    tr.response_body(b"y" * (TAIL_BYTES - 10), end=False)
    tr.response_body(usage, end=False)
    tr.response_body(b"data: [DONE]\n\n", end=True)
    assert tr.usage == Usage(9, 1, 0)


@pytest.mark.parametrize(
    ("data", "usage"),
    [
        (b'{"usage": null}', None),
        (b'{"usage": {"prompt_tokens": "5"}}', None),
        (b'{"usage": {"prompt_tokens": 4, "total_tokens": 4}}', Usage(4, 0, 0)),  # embeddings
        (b'{"usage": {"prompt_tokens": 4', None),  # cut off: no end to the number
        (
            b'{"usage": {"prompt_tokens_details": {"cached_tokens": 2}, "prompt_tokens": 4}}',
            Usage(4, 0, 2),
        ),
        (
            b'{"usage": {"completion_tokens": 3, "prompt_tokens": 4, "total_tokens": 7}}',
            Usage(4, 3, 0),
        ),
        (b'{"usage": {"prompt_tokens": -4}}', None),
        (b'{"data": []}', None),
        (b'{"usage": {"prompt_tokens": true, "completion_tokens": 1}}', None),
    ],
)
def test_usage_reading_is_lenient(data: bytes, usage: Usage | None) -> None:
    assert openai_usage(data) == usage


def test_an_upstream_error_is_passed_on_and_a_401_names_the_role() -> None:
    tr = _translator(_upstream(Binding.OPENAI))
    body = b'{"error": {"message": "bad", "type": "invalid_request_error"}}'
    error = tr.error(400, _headers(Retry_After="3"), body)
    assert (error.status, error.body(), error.headers) == (400, body, {"Retry-After": "3"})
    refused = tr.error(401, _headers(), b'{"error": {"message": "Incorrect API key"}}')
    assert refused.status == 401
    assert json.loads(refused.body())["error"]["code"] == "upstream_unauthorized"
    assert "role 'r'" in json.loads(refused.body())["error"]["message"]
    plain = tr.error(503, _headers(), b"<html>down</html>")
    assert json.loads(plain.body())["error"]["type"] == "upstream_error"
