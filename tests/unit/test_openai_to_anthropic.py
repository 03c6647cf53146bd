"""The anthropic translator (OpenAI Chat Completions <-> Anthropic Messages) and its SSE
parser, without network: golden cases in tests/testdata/anthropic/ (a request in, the
exact Messages request out; a Message in, the exact chat.completion out; scripted SSE
events in, the exact client chunks out, whatever the byte chunking), the reference §13
peer-bug rows that apply to Anthropic (test_rowNN_*), the error table (§5), and the
official openai SDK parsing the translated stream."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr

from rolegate_gateway import Upstream, errors
from rolegate_gateway.config import Credentials
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators.base import Endpoint, ResponseHead, Usage
from rolegate_gateway.translators.openai_to_anthropic import (
    AnthropicExchange,
    AnthropicTranslator,
)
from rolegate_gateway.translators.sse import EventTooLarge, ServerSentEvent, SSEParser

DATA = Path(__file__).parent.parent / "testdata" / "anthropic"
CASES: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text()) for path in sorted(DATA.glob("*.json"))
}
ROLE = "writer"
HELLO = [{"role": "user", "content": "Hello"}]
_CREATED = re.compile(rb'"created":\d+')


def _cases(prefix: str) -> list[Any]:
    return [pytest.param(case, id=name) for name, case in CASES.items() if name.startswith(prefix)]


def _upstream(**fields: Any) -> Upstream:
    base = {
        "binding": "anthropic",
        "model": "claude-test-model",
        "base_url": "https://api.anthropic.test",
        "timeout_s": 30,
    }
    return Upstream.model_validate({**base, **fields})


def _headers(values: dict[str, str] | None = None) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values or {}))


def _exchange(request: dict[str, Any], **role: Any) -> AnthropicExchange:
    exchange = AnthropicTranslator(_upstream(**role), role=ROLE)()
    exchange.request(Endpoint.CHAT_COMPLETIONS, Payload.of(request))
    return exchange


_STREAMING = AnthropicTranslator(_upstream(), role=ROLE)  # built once: cuts make thousands
_STREAM_PAYLOADS = {
    include_usage: Payload.of(
        {
            "model": ROLE,
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": include_usage},
        }
    )
    for include_usage in (False, True)
}


def _stream_exchange(include_usage: bool) -> AnthropicExchange:
    exchange = _STREAMING()
    exchange.request(Endpoint.CHAT_COMPLETIONS, _STREAM_PAYLOADS[include_usage])
    head = exchange.response_headers(200, _headers({"request-id": "req_01"}))
    assert head == ResponseHead(200, "text/event-stream", True, {"x-upstream-request-id": "req_01"})
    return exchange


def _sse_event(event: Any, line_end: str = "\n") -> str:
    if isinstance(event, str):
        return event  # raw bytes of the stream, as written
    name, data = event
    return f"event: {name}{line_end}data: {json.dumps({'type': name, **data})}{line_end}{line_end}"


def _upstream_bytes(case: dict[str, Any]) -> bytes:
    line_end = case.get("line_end", "\n")
    return "".join(_sse_event(event, line_end) for event in case["events"]).encode()


def _run(exchange: AnthropicExchange, pieces: list[bytes]) -> bytes:
    """What the proxy does: every piece, then ``end`` (unless the stream failed)."""
    out = []
    for piece in pieces:
        out.append(exchange.response_body(piece, end=False))
        if exchange.failure is not None:
            return b"".join(out)
    out.append(exchange.response_body(b"", end=True))
    return b"".join(out)


def _client_events(out: bytes) -> list[Any]:
    """The client's SSE events: chunk objects without ``created``, "[DONE]", comments."""
    text = out.decode()
    assert text.endswith("\n\n"), text[-80:]
    events: list[Any] = []
    created: set[int] = set()
    for block in text.split("\n\n")[:-1]:
        assert "\n" not in block, block
        if block.startswith(":"):
            events.append(block)
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        if data == "[DONE]":
            events.append(data)
            continue
        chunk = json.loads(data)
        if "error" not in chunk:
            created.add(chunk.pop("created"))
        events.append(chunk)
    assert len(created) <= 1  # one created for the whole stream
    assert all(isinstance(value, int) for value in created)
    return events


def _usage(value: dict[str, int] | None) -> Usage | None:
    return None if value is None else Usage(**value)


def _assert_failure(exchange: AnthropicExchange, expected: dict[str, Any] | None) -> None:
    if expected is None:
        assert exchange.failure is None
        return
    assert exchange.failure is not None
    assert exchange.failure.status == expected["status"]
    error = json.loads(exchange.failure.body())["error"]
    assert (error["type"], error["code"]) == (expected["type"], expected["code"])
    if "message" in expected:
        assert error["message"] == expected["message"]


def _has_delta(chunk: Any) -> bool:
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return False
    delta = chunk["choices"][0]["delta"]
    return bool(delta.get("content") or delta.get("tool_calls"))


# --- golden: streams ---


@pytest.mark.parametrize("case", _cases("stream_"))
def test_stream_golden(case: dict[str, Any]) -> None:
    raw = _upstream_bytes(case)
    exchange = _stream_exchange(case["include_usage"])
    out = _run(exchange, [raw])
    assert _client_events(out) == case["expected"]
    assert exchange.usage == _usage(case["usage"])
    _assert_failure(exchange, case.get("failure"))


@pytest.mark.parametrize("case", _cases("stream_"))
def test_stream_golden_at_every_cut(case: dict[str, Any]) -> None:
    """Row 1 for every case: 1-byte feeds and every 2-way split give the same bytes."""
    raw = _upstream_bytes(case)
    whole = _stream_exchange(case["include_usage"])
    reference = _CREATED.sub(b'"created":0', _run(whole, [raw]))
    splits = [[raw[i : i + 1] for i in range(len(raw))]]
    splits += [[raw[:cut], raw[cut:]] for cut in range(1, len(raw))]
    for pieces in splits:
        exchange = _stream_exchange(case["include_usage"])
        out = _CREATED.sub(b'"created":0', _run(exchange, pieces))
        assert out == reference, [len(p) for p in pieces][:2]
        assert exchange.usage == whole.usage
        assert (exchange.failure and exchange.failure.body()) == (
            whole.failure and whole.failure.body()
        )


@pytest.mark.parametrize("case", _cases("stream_"))
def test_first_content_turns_true_with_the_first_delta(case: dict[str, Any]) -> None:
    exchange = _stream_exchange(case["include_usage"])
    seen: list[Any] = []
    for event in case["events"]:
        out = exchange.response_body(
            _sse_event(event, case.get("line_end", "\n")).encode(), end=False
        )
        seen += _client_events(out) if out else []
        assert exchange.first_content == any(_has_delta(chunk) for chunk in seen)


# --- golden: whole answers ---


@pytest.mark.parametrize("case", _cases("response_"))
def test_response_golden(case: dict[str, Any]) -> None:
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    head = exchange.response_headers(200, _headers({"request-id": "req_01"}))
    assert head == ResponseHead(200, "application/json", False, {"x-upstream-request-id": "req_01"})
    out = exchange.response_body(json.dumps(case["response"]).encode(), end=True)
    if case["expected"] is None:
        assert out == b""
    else:
        body = json.loads(out)
        assert isinstance(body.pop("created"), int)
        assert body == case["expected"]
    assert exchange.usage == _usage(case["usage"])
    _assert_failure(exchange, case.get("failure"))
    assert exchange.more() is None


def test_a_whole_body_in_several_chunks_is_joined() -> None:
    case = CASES["response_row18_text_tool_text"]
    raw = json.dumps(case["response"]).encode()
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    assert exchange.response_body(raw[:10], end=False) == b""
    body = json.loads(exchange.response_body(raw[10:], end=True))
    assert body["choices"] == case["expected"]["choices"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"content": "text"}'])
def test_a_200_that_is_not_a_message_fails(body: bytes) -> None:
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    assert exchange.response_body(body, end=True) == b""
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)


# --- golden: requests ---


@pytest.mark.parametrize("case", _cases("request_"))
def test_request_golden(case: dict[str, Any]) -> None:
    translator = AnthropicTranslator(_upstream(**case.get("role", {})), role=ROLE)
    endpoint = Endpoint(case.get("endpoint", "chat/completions"))
    payload = Payload.of(case["request"])
    if "refused" in case:
        refused = case["refused"]
        with pytest.raises(errors.InvalidRequest) as info:
            translator().request(endpoint, payload)
        assert info.value.status == refused["status"]
        assert info.value.param == refused["param"]
        assert refused["message"] in info.value.message
        return
    request = translator().request(endpoint, payload)
    expected = case["upstream_request"]
    assert str(request.url) == expected["url"]
    assert request.headers == expected["headers"]
    assert json.loads(request.body) == expected["body"]


def test_the_request_holds_no_credentials() -> None:
    upstream = _upstream(credentials=Credentials(api_key=SecretStr("sk-ant-secret")))
    request = AnthropicTranslator(upstream, role=ROLE)().request(
        Endpoint.CHAT_COMPLETIONS, Payload.of({"model": ROLE, "messages": HELLO})
    )
    assert b"sk-ant-secret" not in request.body
    assert set(request.headers) == {"Content-Type", "anthropic-version"}


_TOOLS = [{"type": "function", "function": {"name": "f"}}]
_FUNCTION = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "tools", "expected"),
    [
        ("auto", None, _TOOLS, {"type": "auto"}),
        ("none", None, _TOOLS, {"type": "none"}),
        ("required", None, _TOOLS, {"type": "any"}),
        (_FUNCTION, None, _TOOLS, {"type": "tool", "name": "f"}),
        ("auto", True, _TOOLS, {"type": "auto"}),
        ("auto", False, _TOOLS, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, _TOOLS, {"type": "any", "disable_parallel_tool_use": True}),
        (
            _FUNCTION,
            False,
            _TOOLS,
            {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        ),
        ("none", False, _TOOLS, {"type": "none"}),  # never on none
        (None, False, _TOOLS, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, _TOOLS, None),
        (None, None, _TOOLS, None),
        (None, False, None, None),  # no tools: no tool_choice to carry the flag
    ],
)
def test_tool_choice_forms(tool_choice: Any, parallel: Any, tools: Any, expected: Any) -> None:
    request: dict[str, Any] = {"model": ROLE, "messages": HELLO}
    for key, value in (("tool_choice", tool_choice), ("parallel_tool_calls", parallel)):
        if value is not None:
            request[key] = value
    if tools is not None:
        request["tools"] = tools
    translator = AnthropicTranslator(_upstream(), role=ROLE)
    body = json.loads(translator().request(Endpoint.CHAT_COMPLETIONS, Payload.of(request)).body)
    assert body.get("tool_choice") == expected


def test_anthropic_version_before_2026_10_21_takes_sampling() -> None:
    translator = AnthropicTranslator(_upstream(anthropic_version="2026-10-20"), role=ROLE)
    payload = Payload.of({"model": ROLE, "messages": HELLO, "temperature": 0.3, "top_p": 0.4})
    body = json.loads(translator().request(Endpoint.CHAT_COMPLETIONS, payload).body)
    assert (body["temperature"], body["top_p"]) == (0.3, 0.4)


# --- rows of reference §13 that apply to Anthropic ---


def _stream_output(name: str, *, byte_by_byte: bool = False) -> tuple[list[Any], AnthropicExchange]:
    case = CASES[name]
    raw = _upstream_bytes(case)
    exchange = _stream_exchange(case["include_usage"])
    pieces = [raw[i : i + 1] for i in range(len(raw))] if byte_by_byte else [raw]
    return _client_events(_run(exchange, pieces)), exchange


def _tool_calls(events: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in events:
        if not _has_delta(chunk):
            continue
        for call in chunk["choices"][0]["delta"].get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id", "")
            entry["name"] += call["function"].get("name", "")
            entry["arguments"] += call["function"]["arguments"]
    return calls


def test_row01_tool_arguments_fed_one_byte_at_a_time() -> None:
    events, _ = _stream_output("stream_text_and_two_tools_usage", byte_by_byte=True)
    assert json.loads(_tool_calls(events)[0]["arguments"]) == {"city": "Paris"}


def test_row02_a_tool_without_arguments_gets_an_empty_object() -> None:
    events, _ = _stream_output("stream_row02_tools_without_arguments")
    assert [call["arguments"] for call in _tool_calls(events).values()] == ["{}", "{}"]
    events, _ = _stream_output("stream_text_and_two_tools_usage")
    assert _tool_calls(events)[1]["arguments"] == "{}"


def test_row03_tool_indices_are_dense_and_choice_index_zero() -> None:
    events, _ = _stream_output("stream_text_and_two_tools_usage")  # blocks 1 and 2
    assert sorted(_tool_calls(events)) == [0, 1]
    events, _ = _stream_output("stream_server_tools_not_counted")  # block 2
    assert list(_tool_calls(events)) == [0]
    assert all(
        c["choices"][0]["index"] == 0 for c in events if isinstance(c, dict) and c["choices"]
    )


def test_row04_nothing_with_choices_after_the_finish_chunk() -> None:
    for name in ("stream_row04_nothing_after_finish", "stream_text_and_two_tools_usage"):
        events, _ = _stream_output(name)
        chunks = [e for e in events if isinstance(e, dict)]
        finish = next(i for i, c in enumerate(chunks) if c["choices"][0]["finish_reason"])
        assert all(c["choices"] == [] for c in chunks[finish + 1 :])
        assert events[-1] == "[DONE]"


def test_row05_usage_chunk_once_when_asked_with_cache_tokens() -> None:
    events, exchange = _stream_output("stream_cache_usage_set_not_add")
    usage_chunks = [e for e in events if isinstance(e, dict) and "usage" in e]
    assert len(usage_chunks) == 1
    assert usage_chunks[0]["usage"]["prompt_tokens"] == 10 + 20 + 40  # a later delta kept them
    assert usage_chunks[0]["usage"]["prompt_tokens_details"] == {"cached_tokens": 40}
    assert exchange.usage == Usage(70, 5, 40)
    events, exchange = _stream_output("stream_text_no_usage")
    assert not any(isinstance(e, dict) and "usage" in e for e in events)
    assert exchange.usage == Usage(25, 4, 0)  # recorded for the gateway all the same


#: Reference §3.1, written out here so that a change of the translator's table fails.
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
    "a_reason_added_later": "stop",
    None: "stop",
}


@pytest.mark.parametrize(("reason", "finish"), FINISH.items())
def test_row06_every_stop_reason(
    reason: str | None, finish: str, caplog: pytest.LogCaptureFixture
) -> None:
    message = {"id": "msg_1", "model": "m", "content": [], "stop_reason": reason, "usage": {}}
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    with caplog.at_level(logging.WARNING):
        body = json.loads(exchange.response_body(json.dumps(message).encode(), end=True))
    assert body["choices"][0]["finish_reason"] == finish
    assert ("unknown anthropic stop reason" in caplog.text) == (reason == "a_reason_added_later")
    stream = _stream_exchange(False)
    events = [
        ("message_start", {"message": {**message, "stop_reason": None}}),
        ("message_delta", {"delta": {"stop_reason": reason}}),
        ("message_stop", {}),
    ]
    out = _client_events(_run(stream, [_sse_event(e).encode() for e in events]))
    assert out[-2]["choices"][0]["finish_reason"] == finish


def test_row07_system_messages_are_hoisted_in_order() -> None:
    body = CASES["request_row07_system_placement"]["upstream_request"]["body"]
    request = AnthropicTranslator(_upstream(), role=ROLE)().request(
        Endpoint.CHAT_COMPLETIONS, Payload.of(CASES["request_row07_system_placement"]["request"])
    )
    sent = json.loads(request.body)
    assert sent["system"] == body["system"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]


def _all_text_blocks(value: Any) -> list[str]:
    if isinstance(value, list):
        return [t for v in value for t in _all_text_blocks(v)]
    if isinstance(value, dict):
        own = [value["text"]] if value.get("type") == "text" else []
        return own + [t for v in value.values() for t in _all_text_blocks(v)]
    return []


def test_row08_no_empty_text_block_is_sent() -> None:
    case = CASES["request_row08_empty_text_never_sent"]
    request = AnthropicTranslator(_upstream(), role=ROLE)().request(
        Endpoint.CHAT_COMPLETIONS, Payload.of(case["request"])
    )
    texts = _all_text_blocks(json.loads(request.body))
    assert texts
    assert all(texts)
    with pytest.raises(errors.InvalidRequest, match="non-empty content"):
        _exchange({"model": ROLE, "messages": [{"role": "user", "content": ""}]})


def test_row12_an_error_event_raises_in_the_openai_sdk() -> None:
    events, exchange = _stream_output("stream_row12_error_event")
    assert events[-1]["error"]["type"] == "overloaded_error"
    assert not any(
        isinstance(e, dict) and e.get("choices", [{}])[0].get("finish_reason") for e in events
    )
    raw = _run(_stream_exchange(True), [_upstream_bytes(CASES["stream_row12_error_event"])])
    client = _openai_client(raw)
    stream = client.chat.completions.create(model=ROLE, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass
    assert exchange.failure is not None


def test_row13_max_tokens_default_and_a_truncated_tool_call() -> None:
    default = json.loads(_request_body({"model": ROLE, "messages": HELLO}))
    assert default["max_tokens"] == 4096
    role = json.loads(_request_body({"model": ROLE, "messages": HELLO}, anthropic_max_tokens=64000))
    assert role["max_tokens"] == 64000
    events, _ = _stream_output("stream_row13_max_tokens_mid_tool")
    assert _tool_calls(events)[0]["arguments"] == '{"path": "a.txt", "text": "Par'
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_row14_a_cut_stream_ends_with_an_error_event() -> None:
    for name in ("stream_row14_eof_mid_event", "stream_row14_eof_before_message_stop"):
        events, exchange = _stream_output(name)
        assert "[DONE]" not in events
        assert events[-1]["error"]["code"] == "upstream_unavailable"
        assert isinstance(exchange.failure, errors.UpstreamUnavailable)
        assert exchange.usage is None
        raw = _run(_stream_exchange(False), [_upstream_bytes(CASES[name])])
        with pytest.raises(openai.APIError, match="before message_stop"):
            for _ in _openai_client(raw).chat.completions.create(
                model=ROLE, messages=HELLO, stream=True
            ):
                pass


@pytest.mark.parametrize("version", ["2026-10-21", "2027-01-01"])
@pytest.mark.parametrize("setting", [{"temperature": 1.0}, {"top_p": 1.0}, {"temperature": 0}])
def test_row16_anthropic_version_2026_10_21_refuses_sampling(
    version: str, setting: dict[str, float]
) -> None:
    translator = AnthropicTranslator(_upstream(anthropic_version=version), role=ROLE)
    payload = Payload.of({"model": ROLE, "messages": HELLO, **setting})
    with pytest.raises(errors.InvalidRequest, match=f"anthropic-version {version}") as info:
        translator().request(Endpoint.CHAT_COMPLETIONS, payload)
    assert info.value.param == next(iter(setting))
    options = AnthropicTranslator(_upstream(anthropic_version=version, options=setting), role=ROLE)
    with pytest.raises(errors.InvalidRequest, match="role's options"):
        options().request(Endpoint.CHAT_COMPLETIONS, Payload.of({"model": ROLE, "messages": HELLO}))


def test_row18_every_text_block_joins_the_content() -> None:
    case = CASES["response_row18_text_tool_text"]
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    body = json.loads(exchange.response_body(json.dumps(case["response"]).encode(), end=True))
    assert body["choices"][0]["message"]["content"] == "Let me check. Done."


def _request_body(request: dict[str, Any], **role: Any) -> bytes:
    translator = AnthropicTranslator(_upstream(**role), role=ROLE)
    return translator().request(Endpoint.CHAT_COMPLETIONS, Payload.of(request)).body


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
    exchange = _exchange({"model": ROLE, "messages": HELLO})
    error = exchange.error(status, _headers(_RETRY), _anthropic_error(kind, message))
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
    error = _exchange({"model": ROLE, "messages": HELLO}).error(status, _headers(), body)
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
    error = _exchange({"model": ROLE, "messages": HELLO}).error(status, _headers(), body)
    assert error.status == client_status
    detail = json.loads(error.body())["error"]
    assert detail["type"] == "upstream_error"
    assert body.decode() in detail["message"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [("overloaded_error", 503), ("api_error", 500), ("rate_limit_error", 429), ("new_error", 502)],
)
def test_stream_error_event_status_per_type(kind: str, status: int) -> None:
    exchange = _stream_exchange(False)
    events = [
        ("message_start", {"message": {"id": "msg_1", "model": "m", "usage": {}}}),
        ("error", {"error": {"type": kind, "message": "boom"}}),
    ]
    out = _client_events(_run(exchange, [_sse_event(e).encode() for e in events]))
    assert out[-1]["error"] == {"message": "boom", "type": kind, "param": None, "code": kind}
    assert exchange.failure is not None
    assert exchange.failure.status == status


# --- the official openai SDK reads the translated stream ---


def _openai_client(sse: bytes) -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse)

    transport = httpx2.MockTransport(answer)
    return openai.OpenAI(
        base_url="http://gateway.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def test_the_openai_sdk_accumulates_the_translated_stream() -> None:
    case = CASES["stream_text_and_two_tools_usage"]
    raw = _upstream_bytes(case)
    translated = _run(_stream_exchange(True), [raw[i : i + 1] for i in range(len(raw))])
    client = _openai_client(translated)
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
    exchange = _stream_exchange(False)
    out = b""
    for _ in range(17):
        out += exchange.response_body(b"data: " + b"x" * 2**20, end=False)
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)
    assert _client_events(out)[-1]["error"]["code"] == "upstream_unavailable"
