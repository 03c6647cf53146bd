"""The anthropic translator's error table (reference §5), the official openai SDK parsing
its stream, and its SSE parser (read by event, never by TCP chunk), without network."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rolegate_gateway import errors
from rolegate_gateway.translators.sse import EventTooLarge, ServerSentEvent, SSEParser
from tests.fixtures.anthropic_cases import (
    CASES,
    HELLO,
    ROLE,
    client_events,
    headers_of,
    new_exchange,
    openai_client,
    run_pieces,
    sse_event,
    stream_exchange,
    upstream_bytes,
)

# --- errors (reference §5) ---

_RETRY = {"retry-after": "7", "request-id": "req_01"}


def _anthropic_error(kind: str, message: str) -> bytes:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_01"}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (400, "invalid_request_error", "max_tokens: too big", (400, "invalid_request_error", None)),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 208310 tokens > 200000 maximum",
            (400, "invalid_request_error", "context_length_exceeded"),
        ),
        (402, "billing_error", "credit balance too low", (402, "billing_error", None)),
        (403, "permission_error", "no access to model", (403, "permission_error", None)),
        (404, "not_found_error", "model: claude-x", (404, "not_found_error", None)),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum size",
            (413, "invalid_request_error", "request_too_large"),
        ),
        (
            429,
            "rate_limit_error",
            "Number of requests has exceeded",
            (429, "rate_limit_error", None),
        ),
        (500, "api_error", "Internal server error", (500, "api_error", None)),
        (504, "timeout_error", "Request timed out", (504, "timeout_error", None)),
        (529, "overloaded_error", "Overloaded", (503, "overloaded_error", None)),
        (409, "conflict_error", "a type added since", (409, "conflict_error", None)),
    ],
)
def test_error_table(status: int, kind: str, message: str, expected: tuple[Any, ...]) -> None:
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    error = exchange.error(status, headers_of(_RETRY), _anthropic_error(kind, message))
    client_status, openai_type, code = expected
    assert error.status == client_status
    assert json.loads(error.body())["error"] == {
        "message": message,
        "type": openai_type,
        "param": None,
        "code": code or kind,
    }
    assert error.headers == {"retry-after": "7"}  # request-id goes with answers, not errors


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, _anthropic_error("authentication_error", "invalid x-api-key")),
        (403, _anthropic_error("authentication_error", "invalid x-api-key")),
        (401, b"<html>Unauthorized</html>"),
    ],
)
def test_refused_credentials_name_the_role_key(status: int, body: bytes) -> None:
    error = new_exchange({"model": ROLE, "messages": HELLO}).error(status, headers_of(), body)
    assert error.status == status
    detail = json.loads(error.body())["error"]
    assert detail["code"] == "upstream_unauthorized"
    assert "role 'writer'" in detail["message"]
    assert "Secret" in detail["message"]


@pytest.mark.parametrize(
    ("status", "body", "client_status"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", 502),
        (529, b"overloaded", 503),
        (500, b'{"message": "not anthropic\'s shape"}', 500),
    ],
)
def test_an_error_of_another_shape_is_wrapped(status: int, body: bytes, client_status: int) -> None:
    error = new_exchange({"model": ROLE, "messages": HELLO}).error(status, headers_of(), body)
    assert error.status == client_status
    detail = json.loads(error.body())["error"]
    assert detail["type"] == "upstream_error"
    assert body.decode() in detail["message"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [("overloaded_error", 503), ("api_error", 500), ("rate_limit_error", 429), ("new_error", 502)],
)
def test_stream_error_event_status_per_type(kind: str, status: int) -> None:
    exchange = stream_exchange(False)
    events = [
        ("message_start", {"message": {"id": "msg_1", "model": "m", "usage": {}}}),
        ("error", {"error": {"type": kind, "message": "boom"}}),
    ]
    out = client_events(run_pieces(exchange, [sse_event(e).encode() for e in events]))
    assert out[-1]["error"] == {"message": "boom", "type": kind, "param": None, "code": kind}
    assert exchange.failure is not None
    assert exchange.failure.status == status


# --- the official openai SDK reads the translated stream ---


def test_the_openai_sdk_accumulates_the_translated_stream() -> None:
    case = CASES["stream_text_and_two_tools_usage"]
    raw = upstream_bytes(case)
    translated = run_pieces(stream_exchange(True), [raw[i : i + 1] for i in range(len(raw))])
    client = openai_client(translated)
    with client.chat.completions.stream(
        model=ROLE, messages=HELLO, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_01A", "get_weather", {"city": "Paris"}),
        ("toolu_01B", "get_time", {}),
    ]
    assert choice.finish_reason == "tool_calls"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (25, 42)
    chunks = list(client.chat.completions.create(model=ROLE, messages=HELLO, stream=True))
    assert len(chunks) == len([e for e in case["expected"] if isinstance(e, dict)])  # ping skipped


# --- the SSE parser ---


def test_sse_events_split_anywhere_with_every_line_end() -> None:
    text = (
        b"event: a\r\ndata: 1\r\n\r\n: comment\n\ndata:2\rdata: 3\r\revent: c\ndata: {}\n\n"
        b"data: 4\r\n\ndata: 5\n\n"
    )
    expected = [
        ServerSentEvent("a", b"1"),
        ServerSentEvent("message", b"2\n3"),
        ServerSentEvent("c", b"{}"),
        ServerSentEvent("message", b"4"),
        ServerSentEvent("message", b"5"),
    ]
    for cut in range(len(text) + 1):
        parser = SSEParser()
        assert parser.feed(text[:cut]) + parser.feed(text[cut:]) == expected
        assert not parser.pending
    for cut in range(len(text) - 1):  # every 3-way split, the middle piece one byte
        parser = SSEParser()
        pieces = (text[:cut], text[cut : cut + 1], text[cut + 1 :])
        assert [e for piece in pieces for e in parser.feed(piece)] == expected, cut
    parser = SSEParser()
    assert [e for i in range(len(text)) for e in parser.feed(text[i : i + 1])] == expected


def test_sse_pending_bytes_and_size_limit() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: x\ndata: 1\n\n\n") == [ServerSentEvent("x", b"1")]
    assert not parser.pending  # blank lines are not an event
    assert parser.feed(b"event: y\ndata: 2\n") == []
    assert parser.pending
    assert parser.feed(b"\n") == [ServerSentEvent("y", b"2")]
    assert SSEParser().feed(b"event: only-a-name\n\n") == []  # no data: not dispatched
    small = SSEParser(max_event_bytes=8)
    with pytest.raises(EventTooLarge):
        small.feed(b"data: 0123456789")


def test_an_endless_event_is_a_failure() -> None:
    exchange = stream_exchange(False)
    out = b""
    for _ in range(17):
        out += exchange.response_body(b"data: " + b"x" * 2**20, end=False)
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert client_events(out)[-1]["error"]["code"] == "upstream_unavailable"
