"""/v1/embeddings on the bedrock binding: Titan text embeddings through InvokeModel, one
call per input (reference translation.md §11, §13 row 15), answered as OpenAI's list in
float or base64 encoding, and read back by the official openai SDK. No network."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx2
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from rolegate_gateway import errors
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators.base import Endpoint, Usage
from rolegate_gateway.translators.openai_to_bedrock import BedrockExchange, BedrockTranslator

TITAN_V2 = "amazon.titan-embed-text-v2:0"
BASE = "https://bedrock-runtime.eu-west-1.amazonaws.com"
#: exactly representable in float32, so both encodings give these numbers back
VECTORS = [[0.5, -1.25, 3.0], [0.125, 2.0, -0.75], [1.0, 0.0, -2.5]]
COUNTS = [3, 5, 7]


def _exchange(model: str = TITAN_V2, options: dict[str, Any] | None = None) -> BedrockExchange:
    upstream = Upstream.model_validate(
        {
            "binding": "bedrock",
            "model": model,
            "base_url": BASE,
            "timeout_s": 30,
            "options": options or {},
        }
    )
    return BedrockTranslator(upstream, role="r")()


def _ok() -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"x-amzn-RequestId": "rid"}))


def _titan(i: int) -> bytes:
    return json.dumps({"embedding": VECTORS[i], "inputTextTokenCount": COUNTS[i]}).encode()


def _run(exchange: BedrockExchange, request: dict[str, Any]) -> tuple[list[Any], bytes]:
    """Drive the calls as the proxy does; return the bodies sent and the answer."""
    sent = [json.loads(exchange.request(Endpoint.EMBEDDINGS, Payload.of(request)).body)]
    i = 0
    while True:
        head = exchange.response_headers(200, _ok())
        assert (head.status, head.content_type, head.stream) == (200, "application/json", False)
        answer = exchange.response_body(_titan(i), end=True)
        following = exchange.more()
        if following is None:
            return sent, answer
        assert answer == b""  # only the last call answers the client
        assert following.url.raw_path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
        sent.append(json.loads(following.body))
        i += 1


def test_row15_three_inputs_are_three_calls_with_summed_usage() -> None:
    exchange = _exchange()
    request = {"model": "r", "input": ["a", "b", "c"], "encoding_format": "float"}
    first = exchange.request(Endpoint.EMBEDDINGS, Payload.of(request))
    assert str(first.url) == f"{BASE}/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert first.headers == {"Content-Type": "application/json"}
    sent, answer = _run(_exchange(), request)
    assert sent == [{"inputText": "a"}, {"inputText": "b"}, {"inputText": "c"}]
    assert json.loads(answer) == {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": VECTORS[i]} for i in range(3)],
        "model": TITAN_V2,
        "usage": {"prompt_tokens": 15, "total_tokens": 15},
    }


def test_usage_is_set_after_the_last_call() -> None:
    exchange = _exchange()
    _run(exchange, {"model": "r", "input": ["a", "b", "c"]})
    assert exchange.usage == Usage(15, 0, 0)
    assert exchange.failure is None


def test_a_string_input_is_one_call_with_dimensions_on_v2() -> None:
    sent, answer = _run(_exchange(), {"model": "r", "input": "hello", "dimensions": 256})
    assert sent == [{"inputText": "hello", "dimensions": 256}]
    assert len(json.loads(answer)["data"]) == 1


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_base64_and_float_give_the_same_numbers(encoding: str | None) -> None:
    request: dict[str, Any] = {"model": "r", "input": ["a", "b", "c"]}
    if encoding is not None:
        request["encoding_format"] = encoding
    data = json.loads(_run(_exchange(), request)[1])["data"]
    got = [item["embedding"] for item in data]
    if encoding == "base64":
        assert all(isinstance(e, str) for e in got)
        got = [list(struct.unpack(f"<{len(VECTORS[0])}f", base64.b64decode(e))) for e in got]
    assert got == VECTORS


@pytest.mark.parametrize(
    "model",
    ["cohere.embed-english-v3", "amazon.nova-lite-v1:0", "amazon.titan-embed-image-v1"],
)
def test_models_other_than_titan_text_are_refused(model: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="Titan text embedding models") as raised:
        _exchange(model).request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": "x"}))
    assert raised.value.param == "model"
    assert model in raised.value.message


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_refused_inputs(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        _exchange().request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", **request_}))
    assert raised.value.param == param


def test_dimensions_on_a_fixed_size_model_are_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="takes dimensions"):
        _exchange("amazon.titan-embed-text-v1").request(
            Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": "x", "dimensions": 256})
        )
    sent, _ = _run(_exchange("amazon.titan-embed-g1-text-02"), {"model": "r", "input": "x"})
    assert sent == [{"inputText": "x"}]


def test_the_roles_options_fill_in_dimensions() -> None:
    sent, _ = _run(_exchange(options={"dimensions": 512}), {"model": "r", "input": "x"})
    assert sent == [{"inputText": "x", "dimensions": 512}]


def test_an_answer_without_an_embedding_is_a_failure_and_stops_the_calls() -> None:
    exchange = _exchange()
    exchange.request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": ["a", "b"]}))
    assert exchange.response_body(b'{"message":"odd"}', end=True) == b""
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert exchange.more() is None


def test_an_error_between_calls_is_mapped() -> None:
    exchange = _exchange()
    exchange.request(Endpoint.EMBEDDINGS, Payload.of({"model": "r", "input": ["a", "b"]}))
    exchange.response_body(_titan(0), end=True)
    assert exchange.more() is not None
    headers = CIMultiDictProxy(CIMultiDict({"x-amzn-ErrorType": "ThrottlingException:x"}))
    error = exchange.error(429, headers, b'{"message":"slow"}')
    assert error.status == 429


def test_openai_sdk_decodes_the_default_base64_answer() -> None:
    bodies: list[dict[str, Any]] = []

    def gateway(request: httpx2.Request) -> httpx2.Response:
        payload = json.loads(request.content)
        bodies.append(payload)
        _, answer = _run(_exchange(), payload)
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=answer)

    client = openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(gateway)),
        max_retries=0,
    )
    result = client.embeddings.create(model="r", input=["a", "b", "c"])
    assert bodies[0]["encoding_format"] == "base64"  # the SDK's default
    assert [item.embedding for item in result.data] == VECTORS
    assert result.usage.prompt_tokens == 15
