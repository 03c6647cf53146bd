"""Edges of the translators found in review: values an upstream or a client may send that
must never become a 500, an invalid answer or a leaked credential (no network)."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from rolegate_gateway import errors
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators import upstream_errors
from rolegate_gateway.translators.base import Endpoint, encode
from rolegate_gateway.translators.bedrock_embeddings import MAX_INPUTS
from rolegate_gateway.translators.openai_to_anthropic import AnthropicTranslator
from rolegate_gateway.translators.openai_to_bedrock import BedrockTranslator

NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _upstream(binding: str, model: str) -> Upstream:
    return Upstream.model_validate(
        {
            "binding": binding,
            "model": model,
            "base_url": "http://127.0.0.1:9",
            "timeout_s": 5,
            "bedrock_region": "us-east-1" if binding == "bedrock" else None,
        }
    )


def test_a_lone_surrogate_from_the_upstream_stays_an_escape() -> None:
    """An upstream's "\\ud83d" decodes to a lone surrogate, which UTF-8 cannot hold."""
    assert encode({"t": "\ud83d é"}) == b'{"t":"\\ud83d \\u00e9"}'
    assert encode({"t": "é"}) == '{"t":"é"}'.encode()
    factory = AnthropicTranslator(_upstream("anthropic", "c"), role="r")
    exchange = factory()
    exchange.request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "r", "messages": [{"role": "user", "content": "x"}]}),
    )
    exchange.response_headers(200, NO_HEADERS)
    body = b'{"id":"m","type":"message","content":[{"type":"text","text":"\\ud83d"}]}'
    answer = json.loads(exchange.response_body(body, end=True))
    assert answer["choices"][0]["message"]["content"] == "\ud83d"


@pytest.mark.parametrize("embedding", [[1e39], ["1"], [float("inf")], [10**400], [True], "x", None])
def test_a_titan_answer_out_of_float32_is_a_502(embedding: object) -> None:
    exchange = BedrockTranslator(_upstream("bedrock", "amazon.titan-embed-text-v2:0"), role="r")()
    exchange.request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": "a"}))
    exchange.response_headers(200, NO_HEADERS)
    body = json.dumps({"embedding": embedding, "inputTextTokenCount": 1}).encode()
    assert exchange.response_body(body, end=True) == b""
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert exchange.more() is None


def test_titan_takes_at_most_openais_number_of_inputs() -> None:
    exchange = BedrockTranslator(_upstream("bedrock", "amazon.titan-embed-text-v2:0"), role="r")()
    many = ["a"] * (MAX_INPUTS + 1)
    with pytest.raises(errors.InvalidRequest, match=f"at most {MAX_INPUTS}"):
        exchange.request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": many}))


def test_a_signature_error_is_quoted_without_what_was_signed() -> None:
    """AWS follows "signature does not match" with the canonical request, whose
    x-amz-security-token line holds the session token."""
    said = (
        "The request signature we calculated does not match the signature you provided.\n\n"
        "The Canonical String for this request should have been\n'POST\n/model/x/converse\n\n"
        "x-amz-security-token:TOKEN-RGLEAK-1\n'\n\nThe String-to-Sign should have been\n'...'"
    )
    error = upstream_errors.credentials_refused("r", 403, NO_HEADERS, said)
    body = json.loads(error.body())["error"]
    assert "does not match the signature you provided" in body["message"]
    assert "RGLEAK" not in body["message"]
    assert body["code"] == "upstream_unauthorized"


def test_a_translated_stream_is_complete_once_done_is_written() -> None:
    """The proxy stops reading there: what the upstream sends (or fails) after it is not
    the client's."""
    exchange = AnthropicTranslator(_upstream("anthropic", "c"), role="r")()
    exchange.request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "r", "stream": True, "messages": [{"role": "user", "content": "x"}]}),
    )
    exchange.response_headers(200, NO_HEADERS)
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
    ]
    raw = b"".join(
        b"event: %s\ndata: %s\n\n" % (n.encode(), json.dumps(d).encode()) for n, d in events
    )
    exchange.response_body(raw, end=False)
    assert not exchange.complete
    out = exchange.response_body(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n', end=False
    )
    assert out.endswith(b"data: [DONE]\n\n")
    assert exchange.complete
    assert exchange.failure is None
