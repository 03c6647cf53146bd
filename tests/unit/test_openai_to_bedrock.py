"""The bedrock translator (OpenAI chat -> Converse / ConverseStream), over the golden cases
of tests/testdata/bedrock (request_*: OpenAI request -> path and Converse body, or a 400;
stream_*: event-stream frames -> the exact OpenAI chunks, fed whole, cut at every byte
offset and one byte at a time; response_*: a Converse answer -> the chat.completion), the
reference's §13 regression rows that apply to Bedrock, the §7.1 stop reasons, the §9
error table, and the official openai SDK parsing what the translator writes. No network.
"""

from __future__ import annotations

import binascii
import json
import logging
import re
import struct
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from devstack import eventstream
from rolegate_gateway import errors
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators.base import Endpoint, Usage
from rolegate_gateway.translators.bedrock_stream import MAX_FRAME_BYTES, ConverseStream
from rolegate_gateway.translators.openai_to_bedrock import BedrockExchange, BedrockTranslator

DATA = Path(__file__).parent.parent / "testdata" / "bedrock"
MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
REQUEST_ID = "7f0c5a3e-1b2d-4c5e-9f60-718293a4b5c6"
_CREATED = re.compile(rb'"created":\d+')


def _exchange(model: str = MODEL, options: dict[str, Any] | None = None) -> BedrockExchange:
    upstream = Upstream.model_validate(
        {
            "binding": "bedrock",
            "model": model,
            "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
            "timeout_s": 30,
            "bedrock_region": "us-east-1",
            "options": options or {},
        }
    )
    return BedrockTranslator(upstream, role="r")()


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def _cases(prefix: str) -> list[Any]:
    files = sorted(DATA.glob(f"{prefix}_*.json"))
    assert files, f"no golden {prefix} cases"
    return [pytest.param(json.loads(f.read_text()), id=f.stem) for f in files]


def _frame(spec: dict[str, Any]) -> bytes:
    if "event" in spec:
        return eventstream.event(spec["event"], spec["payload"])
    if "exception" in spec:
        return eventstream.exception(spec["exception"], spec["message"])
    if "error" in spec:
        return eventstream.error(spec["error"], spec["message"])
    return eventstream.encode_message(spec["headers"], json.dumps(spec["payload"]).encode())


def _stream_bytes(case: dict[str, Any]) -> bytes:
    frames = [bytearray(_frame(spec)) for spec in case["frames"]]
    if "flip" in case:
        frame, offset = case["flip"]
        frames[frame][offset] ^= 0x01
    data = b"".join(frames)
    return data[: len(data) - case.get("cut", 0)]


def _started(case: dict[str, Any]) -> BedrockExchange:
    exchange = _exchange()
    exchange.request(Endpoint.CHAT_COMPLETIONS, Payload.of(case["request"]))
    head = exchange.response_headers(200, _headers(x_amzn_RequestId=REQUEST_ID))
    assert head.stream
    assert head.content_type == "text/event-stream"
    return exchange


def _feed(case: dict[str, Any], pieces: list[bytes]) -> tuple[bytes, BedrockExchange]:
    exchange = _started(case)
    out = b"".join(exchange.response_body(piece, end=False) for piece in pieces)
    return out + exchange.response_body(b"", end=True), exchange


def _events(out: bytes) -> list[Any]:
    """The SSE data events of ``out``: each parsed (``[DONE]`` as that string); the shared
    ``created`` stamp is checked and left out."""
    assert out.endswith(b"\n\n")
    events: list[Any] = []
    stamps = set()
    for block in out[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block
        data = block.removeprefix(b"data: ")
        if data == b"[DONE]":
            events.append("[DONE]")
            continue
        event = json.loads(data)
        if "error" not in event:
            assert (event["id"], event["object"], event["model"]) == (
                REQUEST_ID,
                "chat.completion.chunk",
                MODEL,
            )
            stamps.add(event.pop("created"))
            del event["id"], event["object"], event["model"]
        events.append(event)
    assert len(stamps) <= 1
    assert all(isinstance(s, int) for s in stamps)
    return events


# --- requests ---


@pytest.mark.parametrize("case", _cases("request"))
def test_request_golden(case: dict[str, Any]) -> None:
    exchange = _exchange(case.get("model", MODEL), case.get("options"))
    endpoint = Endpoint(case.get("endpoint", "chat/completions"))
    payload = Payload.of(case["request"])
    if "error" in case:
        with pytest.raises(errors.InvalidRequest) as raised:
            exchange.request(endpoint, payload)
        want = case["error"]
        assert (raised.value.status, raised.value.param) == (want["status"], want["param"])
        assert want["message"] in raised.value.message
        return
    sent = exchange.request(endpoint, payload)
    assert sent.url.raw_path == case["path"]
    assert sent.headers == {"Content-Type": "application/json"}  # no credentials
    assert json.loads(sent.body) == case["body"]


def test_row11_arn_model_id_is_sent_percent_encoded() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    sent = _exchange(arn).request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "r", "messages": [{"role": "user", "content": "hi"}]}),
    )
    quoted = (
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123"
    )
    assert (
        str(sent.url) == f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{quoted}/converse"
    )
    assert sent.url.raw_path == f"/model/{quoted}/converse"  # what aiohttp puts on the wire


def test_row17_tool_choice_none_never_names_a_tool() -> None:
    for path in DATA.glob("request_*.json"):
        case = json.loads(path.read_text())
        if case["request"].get("tool_choice") == "none" and "body" in case:
            choice = case["body"].get("toolConfig", {}).get("toolChoice")
            assert choice is None, path.name
    history = json.loads((DATA / "request_row10_row17_none_with_tool_history.json").read_text())
    sent = _exchange().request(Endpoint.CHAT_COMPLETIONS, Payload.of(history["request"]))
    assert b'"none"' not in sent.body
    assert b"toolChoice" not in sent.body


# --- streams ---


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream_golden(case: dict[str, Any]) -> None:
    exchange = _started(case)
    out = exchange.response_body(_stream_bytes(case), end=False)
    if case["chunks"][-1] == "[DONE]" and {"messageStop", "metadata"} <= {
        f.get("event") for f in case["frames"]
    }:
        assert out.endswith(b"data: [DONE]\n\n")  # at once, not when the connection ends
    out += exchange.response_body(b"", end=True)
    assert _events(out) == case["chunks"]
    usage = case["usage"]
    assert exchange.usage == (Usage(*usage) if usage is not None else None)
    if case["failure"] is None:
        assert exchange.failure is None
    else:
        assert exchange.failure is not None
        assert exchange.failure.status == case["failure"]["status"]


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream_golden_cut_at_every_byte(case: dict[str, Any]) -> None:
    """Every 2-way split (through the exchange's stream reader, which holds all the byte
    handling: building a whole exchange per offset would make this test slow) and 1-byte
    feeds (through the exchange) write the same bytes as the whole stream at once."""
    data = _stream_bytes(case)
    whole = _CREATED.sub(b'"created":0', _feed(case, [data])[0])
    include_usage = case["request"].get("stream_options", {}).get("include_usage", False)
    for at in range(len(data) + 1):
        stream = ConverseStream(role="r", model=MODEL, include_usage=include_usage)
        stream.id = REQUEST_ID
        out = stream.feed(data[:at], end=False) + stream.feed(data[at:], end=False)
        out += stream.feed(b"", end=True)
        assert _CREATED.sub(b'"created":0', out) == whole, f"split at byte {at}"
    ones = _feed(case, [data[i : i + 1] for i in range(len(data))])[0]
    assert _CREATED.sub(b'"created":0', ones) == whole


def test_row04_nothing_with_choices_after_the_finish_chunk() -> None:
    for param in _cases("stream"):
        case = param.values[0]
        events = _events(_feed(case, [_stream_bytes(case)])[0])
        chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
        assert all(len(c["choices"]) == 1 and c["choices"][0]["index"] == 0 for c in chunks)
        finishes = [i for i, c in enumerate(chunks) if c["choices"][0]["finish_reason"]]
        assert finishes in ([], [len(chunks) - 1]), param.id  # once, the last with choices
        if finishes:  # after it: at most the usage chunk, then [DONE] (or an error event)
            tail = events[events.index(chunks[-1]) + 1 :]
            assert all(e == "[DONE]" or "usage" in e or "error" in e for e in tail), param.id


def test_row01_fragments_concatenate_to_the_arguments() -> None:
    case = json.loads((DATA / "stream_row01_fragmented_tool_args.json").read_text())
    data = _stream_bytes(case)
    events = _events(_feed(case, [data[i : i + 1] for i in range(len(data))])[0])
    fragments = [
        call["function"]["arguments"]
        for e in events
        if isinstance(e, dict) and e.get("choices")
        for call in e["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert json.loads("".join(fragments)) == {"city": "Paris"}


def test_first_content_is_the_first_delta() -> None:
    case = {
        "request": {"model": "r", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    }
    exchange = _started(case)
    exchange.response_body(eventstream.event("messageStart", {"role": "assistant"}), end=False)
    assert not exchange.first_content
    delta = {"contentBlockIndex": 0, "delta": {"text": "a"}}
    exchange.response_body(eventstream.event("contentBlockDelta", delta), end=False)
    assert exchange.first_content


def test_a_frame_with_unreadable_headers_is_a_corrupt_frame() -> None:
    headers = b"\x05ab"  # a 5-byte name announced, 2 bytes there, no type: CRCs still right
    prelude = struct.pack("!II", 12 + len(headers) + 2 + 4, len(headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    frame = prelude + headers + b"{}"
    frame += struct.pack("!I", binascii.crc32(frame))
    case = {
        "request": {"model": "r", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    }
    out, exchange = _feed(case, [eventstream.event("messageStart", {"role": "assistant"}) + frame])
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert "corrupt event-stream frame" in _events(out)[-1]["error"]["message"]


def test_a_large_frame_fed_in_pieces_is_read_in_linear_time() -> None:
    """botocore's buffer copies all it holds on each add_data: a 4 MiB frame in 4 KiB
    pieces took 1.5 s (the event loop blocked) before only whole frames reached it."""
    big = eventstream.event(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x" * (4 * 2**20)}}
    )
    stream = ConverseStream(role="r", model=MODEL, include_usage=False)
    stream.feed(eventstream.event("messageStart", {"role": "assistant"}), end=False)
    started = time.perf_counter()
    out = b"".join(stream.feed(big[at : at + 4096], end=False) for at in range(0, len(big), 4096))
    assert time.perf_counter() - started < 0.5
    assert stream.failure is None
    assert json.loads(out.removeprefix(b"data: "))["choices"][0]["delta"]["content"] == (
        "x" * (4 * 2**20)
    )


def test_a_frame_announcing_more_than_the_cap_fails_the_stream() -> None:
    stream = ConverseStream(role="r", model=MODEL, include_usage=False)
    prelude = struct.pack("!II", MAX_FRAME_BYTES + 1, 0)
    out = stream.feed(prelude, end=False)
    assert isinstance(stream.failure, errors.UpstreamUnavailable)
    assert "more than 16 MiB" in _events(out)[-1]["error"]["message"]


#: §7.1, written out here so that a change of the module's table fails.
STOP_REASONS = [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("tool_use", "tool_calls"),
    ("guardrail_intervened", "content_filter"),
    ("content_filtered", "content_filter"),
    ("model_context_window_exceeded", "length"),
    ("malformed_model_output", "stop"),
    ("malformed_tool_use", "stop"),
    ("a_reason_added_later", "stop"),
]


@pytest.mark.parametrize(("reason", "finish"), STOP_REASONS)
def test_row06_every_stop_reason(reason: str, finish: str, caplog: Any) -> None:
    case = {
        "request": {"model": "r", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        "frames": [
            {"event": "messageStart", "payload": {"role": "assistant"}},
            {"event": "messageStop", "payload": {"stopReason": reason}},
            {"event": "metadata", "payload": {"usage": {"inputTokens": 1, "outputTokens": 1}}},
        ],
    }
    caplog.set_level(logging.WARNING)
    events = _events(_feed(case, [_stream_bytes(case)])[0])
    assert events[-2]["choices"][0]["finish_reason"] == finish
    whole = _exchange()
    whole.request(Endpoint.CHAT_COMPLETIONS, Payload.of({**case["request"], "stream": False}))
    answer = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": reason}
    body = json.loads(whole.response_body(json.dumps(answer).encode(), end=True))
    assert body["choices"][0]["finish_reason"] == finish
    logged = reason.startswith("malformed") or reason == "a_reason_added_later"
    assert (reason in caplog.text) == logged


# --- whole answers ---


@pytest.mark.parametrize("case", _cases("response"))
def test_response_golden(case: dict[str, Any]) -> None:
    exchange = _exchange()
    exchange.request(Endpoint.CHAT_COMPLETIONS, Payload.of(case["request"]))
    head = exchange.response_headers(200, _headers(x_amzn_RequestId=REQUEST_ID))
    assert (head.status, head.content_type, head.stream) == (200, "application/json", False)
    assert head.headers == {"x-upstream-request-id": REQUEST_ID}
    body = json.loads(exchange.response_body(json.dumps(case["answer"]).encode(), end=True))
    assert isinstance(body.pop("created"), int)
    assert body == {"id": REQUEST_ID, "model": MODEL, **case["completion"]}
    assert exchange.usage == Usage(*case["usage"])
    assert exchange.failure is None


def test_id_without_a_request_id_header() -> None:
    exchange = _exchange()
    exchange.request(
        Endpoint.CHAT_COMPLETIONS, Payload.of(_cases("response")[0].values[0]["request"])
    )
    assert exchange.response_headers(200, _headers()).headers == {}
    answer = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": "end_turn"}
    body = json.loads(exchange.response_body(json.dumps(answer).encode(), end=True))
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body["id"])
    assert "usage" not in body
    assert exchange.usage is None


@pytest.mark.parametrize(
    "answer",
    [
        b'{"Output":{"__type":"com.amazon.coral.service#UnknownOperationException"},"Version":"1.0"}',
        b'{"stopReason":"end_turn"}',
        b"not json",
    ],
)
def test_a_200_without_output_message_is_a_failure(answer: bytes) -> None:
    exchange = _exchange()
    exchange.request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "r", "messages": [{"role": "user", "content": "x"}]}),
    )
    assert exchange.response_body(answer, end=True) == b""
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert "without output.message" in exchange.failure.message


# --- errors (§9) ---

ERROR_ROWS = [
    (400, "ValidationException", 400, "invalid_request_error"),
    (403, "AccessDeniedException", 403, "permission_error"),
    (404, "ResourceNotFoundException", 404, "not_found_error"),
    (408, "ModelTimeoutException", 504, "timeout_error"),
    (424, "ModelErrorException", 502, "api_error"),
    (429, "ThrottlingException", 429, "rate_limit_error"),
    (429, "ModelNotReadyException", 429, "rate_limit_error"),
    (400, "ServiceQuotaExceededException", 429, "rate_limit_error"),
    (500, "InternalServerException", 500, "api_error"),
    (503, "ServiceUnavailableException", 503, "api_error"),
]


@pytest.mark.parametrize(("status", "code", "client_status", "type_"), ERROR_ROWS)
def test_error_table(status: int, code: str, client_status: int, type_: str) -> None:
    headers = _headers(
        x_amzn_ErrorType=f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        retry_after="3",
    )
    error = _exchange().error(status, headers, b'{"message":"it said so"}')
    assert isinstance(error, errors.UpstreamStatusError)
    assert error.status == client_status
    body = json.loads(error.body())["error"]
    assert body == {"message": f"{code}: it said so", "type": type_, "param": None, "code": code}
    assert error.headers == {"retry-after": "3"}


@pytest.mark.parametrize(
    "code",
    [
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
    ],
)
def test_credential_errors_name_the_roles_secret(code: str) -> None:
    headers = _headers(x_amzn_ErrorType=f"{code}:http://internal.amazon.com/coral/x/")
    error = _exchange().error(403, headers, b'{"Message":"The security token is invalid."}')
    assert error.status == 403
    body = json.loads(error.body())["error"]
    assert body["code"] == "upstream_unauthorized"
    assert "Secret" in body["message"]
    assert "The security token is invalid." in body["message"]


def test_error_code_from_the_body_when_the_header_is_missing() -> None:
    body = b'{"__type":"com.amazonaws.bedrock#ThrottlingException","Message":"slow down"}'
    error = _exchange().error(429, _headers(), body)
    assert error.status == 429
    assert json.loads(error.body())["error"]["message"] == "ThrottlingException: slow down"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b"<html>502 Bad Gateway</html>"),
        ({"x_amzn_ErrorType": "SomethingNewException:http://x/"}, b'{"message":"new"}'),
    ],
)
def test_unknown_errors_are_wrapped_keeping_the_status(
    headers: dict[str, str], body: bytes
) -> None:
    error = _exchange().error(502, _headers(**headers), body)
    assert error.status == 502
    said = json.loads(error.body())["error"]
    assert said["type"] == "upstream_error"
    assert body.decode() in said["message"]


def test_a_401_is_about_the_roles_credentials() -> None:
    error = _exchange().error(401, _headers(), b'{"message":"Unauthorized"}')
    assert json.loads(error.body())["error"]["code"] == "upstream_unauthorized"


# --- the official openai SDK reads what the translator writes ---


def _client(status: int, content_type: str, body: bytes) -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": content_type}, content=body)

    transport = httpx2.MockTransport(answer)
    return openai.OpenAI(
        api_key="k",
        base_url="http://gateway.test/v1",
        http_client=httpx2.Client(transport=transport),
        max_retries=0,
    )


def test_openai_sdk_accumulates_the_translated_stream() -> None:
    case = json.loads((DATA / "stream_row03_text_then_two_tools.json").read_text())
    out, _ = _feed(case, [_stream_bytes(case)])
    client = _client(200, "text/event-stream", out)
    with client.chat.completions.stream(
        model="r", messages=[{"role": "user", "content": "x"}]
    ) as s:
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert [(i, n, json.loads(a)) for i, n, a in calls] == [
        ("tooluse_A", "get_weather", {"city": "Paris"}),
        ("tooluse_B", "get_time", {}),
    ]
    assert final.usage is not None
    assert final.usage.total_tokens == 50


def test_openai_sdk_raises_on_the_translated_error_event() -> None:
    case = json.loads((DATA / "stream_row12_exception_midstream.json").read_text())
    out, _ = _feed(case, [_stream_bytes(case)])
    client = _client(200, "text/event-stream", out)
    stream = client.chat.completions.create(
        model="r", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Too many tokens"):
        for _ in stream:
            pass
