"""The anthropic translator (OpenAI Chat Completions <-> Anthropic Messages), without
network: golden cases in tests/testdata/anthropic/ (a request in, the exact Messages request
out; a Message in, the exact chat.completion out; scripted SSE events in, the exact client
chunks out, whatever the byte chunking) and the reference §13 peer-bug rows that apply to
Anthropic (test_rowNN_*). The error table, the SDK and the SSE parser:
test_anthropic_errors.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from rolegate_gateway import errors
from rolegate_gateway.config import Credentials
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators.base import Endpoint, ResponseHead, Usage
from rolegate_gateway.translators.openai_to_anthropic import (
    AnthropicExchange,
    AnthropicTranslator,
)
from tests.fixtures.anthropic_cases import (
    CASES,
    CREATED,
    HELLO,
    ROLE,
    assert_failure,
    cases,
    client_events,
    has_delta,
    headers_of,
    new_exchange,
    openai_client,
    role_upstream,
    run_pieces,
    sse_event,
    stream_exchange,
    upstream_bytes,
    usage_of,
)

# --- golden: streams ---


@pytest.mark.parametrize("case", cases("stream_"))
def test_stream_golden(case: dict[str, Any]) -> None:
    raw = upstream_bytes(case)
    exchange = stream_exchange(case["include_usage"])
    out = run_pieces(exchange, [raw])
    assert client_events(out) == case["expected"]
    assert exchange.usage == usage_of(case["usage"])
    assert_failure(exchange, case.get("failure"))


@pytest.mark.parametrize("case", cases("stream_"))
def test_stream_golden_at_every_cut(case: dict[str, Any]) -> None:
    """Row 1 for every case: 1-byte feeds and every 2-way split give the same bytes."""
    raw = upstream_bytes(case)
    whole = stream_exchange(case["include_usage"])
    reference = CREATED.sub(b'"created":0', run_pieces(whole, [raw]))
    splits = [[raw[i : i + 1] for i in range(len(raw))]]
    splits += [[raw[:cut], raw[cut:]] for cut in range(1, len(raw))]
    for pieces in splits:
        exchange = stream_exchange(case["include_usage"])
        out = CREATED.sub(b'"created":0', run_pieces(exchange, pieces))
        assert out == reference, [len(p) for p in pieces][:2]
        assert exchange.usage == whole.usage
        assert (exchange.failure and exchange.failure.body()) == (
            whole.failure and whole.failure.body()
        )


@pytest.mark.parametrize("case", cases("stream_"))
def test_first_content_turns_true_with_the_first_delta(case: dict[str, Any]) -> None:
    exchange = stream_exchange(case["include_usage"])
    seen: list[Any] = []
    for event in case["events"]:
        out = exchange.response_body(
            sse_event(event, case.get("line_end", "\n")).encode(), end=False
        )
        seen += client_events(out) if out else []
        assert exchange.first_content == any(has_delta(chunk) for chunk in seen)


# --- golden: whole answers ---


@pytest.mark.parametrize("case", cases("response_"))
def test_response_golden(case: dict[str, Any]) -> None:
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    head = exchange.response_headers(200, headers_of({"request-id": "req_01"}))
    assert head == ResponseHead(200, "application/json", False, {"x-upstream-request-id": "req_01"})
    out = exchange.response_body(json.dumps(case["response"]).encode(), end=True)
    if case["expected"] is None:
        assert out == b""
    else:
        body = json.loads(out)
        assert isinstance(body.pop("created"), int)
        assert body == case["expected"]
    assert exchange.usage == usage_of(case["usage"])
    assert_failure(exchange, case.get("failure"))
    assert exchange.more() is None


def test_a_whole_body_in_several_chunks_is_joined() -> None:
    case = CASES["response_row18_text_tool_text"]
    raw = json.dumps(case["response"]).encode()
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    assert exchange.response_body(raw[:10], end=False) == b""
    body = json.loads(exchange.response_body(raw[10:], end=True))
    assert body["choices"] == case["expected"]["choices"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"content": "text"}'])
def test_a_200_that_is_not_a_message_fails(body: bytes) -> None:
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    assert exchange.response_body(body, end=True) == b""
    assert isinstance(exchange.failure, errors.UpstreamUnavailable)


# --- golden: requests ---


@pytest.mark.parametrize("case", cases("request_"))
def test_request_golden(case: dict[str, Any]) -> None:
    translator = AnthropicTranslator(role_upstream(**case.get("role", {})), role=ROLE)
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
    upstream = role_upstream(credentials=Credentials(api_key=SecretStr("sk-ant-secret")))
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
    translator = AnthropicTranslator(role_upstream(), role=ROLE)
    body = json.loads(translator().request(Endpoint.CHAT_COMPLETIONS, Payload.of(request)).body)
    assert body.get("tool_choice") == expected


def test_anthropic_version_before_2026_10_21_takes_sampling() -> None:
    translator = AnthropicTranslator(role_upstream(anthropic_version="2026-10-20"), role=ROLE)
    payload = Payload.of({"model": ROLE, "messages": HELLO, "temperature": 0.3, "top_p": 0.4})
    body = json.loads(translator().request(Endpoint.CHAT_COMPLETIONS, payload).body)
    assert (body["temperature"], body["top_p"]) == (0.3, 0.4)


# --- rows of reference §13 that apply to Anthropic ---


def _stream_output(name: str, *, byte_by_byte: bool = False) -> tuple[list[Any], AnthropicExchange]:
    case = CASES[name]
    raw = upstream_bytes(case)
    exchange = stream_exchange(case["include_usage"])
    pieces = [raw[i : i + 1] for i in range(len(raw))] if byte_by_byte else [raw]
    return client_events(run_pieces(exchange, pieces)), exchange


def _tool_calls(events: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in events:
        if not has_delta(chunk):
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
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    with caplog.at_level(logging.WARNING):
        body = json.loads(exchange.response_body(json.dumps(message).encode(), end=True))
    assert body["choices"][0]["finish_reason"] == finish
    assert ("unknown anthropic stop reason" in caplog.text) == (reason == "a_reason_added_later")
    stream = stream_exchange(False)
    events = [
        ("message_start", {"message": {**message, "stop_reason": None}}),
        ("message_delta", {"delta": {"stop_reason": reason}}),
        ("message_stop", {}),
    ]
    out = client_events(run_pieces(stream, [sse_event(e).encode() for e in events]))
    assert out[-2]["choices"][0]["finish_reason"] == finish


def test_row07_system_messages_are_hoisted_in_order() -> None:
    body = CASES["request_row07_system_placement"]["upstream_request"]["body"]
    request = AnthropicTranslator(role_upstream(), role=ROLE)().request(
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
    request = AnthropicTranslator(role_upstream(), role=ROLE)().request(
        Endpoint.CHAT_COMPLETIONS, Payload.of(case["request"])
    )
    texts = _all_text_blocks(json.loads(request.body))
    assert texts
    assert all(texts)
    with pytest.raises(errors.InvalidRequest, match="non-empty content"):
        new_exchange({"model": ROLE, "messages": [{"role": "user", "content": ""}]})


def test_row12_an_error_event_raises_in_the_openai_sdk() -> None:
    events, exchange = _stream_output("stream_row12_error_event")
    assert events[-1]["error"]["type"] == "overloaded_error"
    assert not any(
        isinstance(e, dict) and e.get("choices", [{}])[0].get("finish_reason") for e in events
    )
    raw = run_pieces(stream_exchange(True), [upstream_bytes(CASES["stream_row12_error_event"])])
    client = openai_client(raw)
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
        raw = run_pieces(stream_exchange(False), [upstream_bytes(CASES[name])])
        with pytest.raises(openai.APIError, match="before message_stop"):
            for _ in openai_client(raw).chat.completions.create(
                model=ROLE, messages=HELLO, stream=True
            ):
                pass


@pytest.mark.parametrize("version", ["2026-10-21", "2027-01-01"])
@pytest.mark.parametrize("setting", [{"temperature": 1.0}, {"top_p": 1.0}, {"temperature": 0}])
def test_row16_anthropic_version_2026_10_21_refuses_sampling(
    version: str, setting: dict[str, float]
) -> None:
    translator = AnthropicTranslator(role_upstream(anthropic_version=version), role=ROLE)
    payload = Payload.of({"model": ROLE, "messages": HELLO, **setting})
    with pytest.raises(errors.InvalidRequest, match=f"anthropic-version {version}") as info:
        translator().request(Endpoint.CHAT_COMPLETIONS, payload)
    assert info.value.param == next(iter(setting))
    options = AnthropicTranslator(
        role_upstream(anthropic_version=version, options=setting), role=ROLE
    )
    with pytest.raises(errors.InvalidRequest, match="role's options"):
        options().request(Endpoint.CHAT_COMPLETIONS, Payload.of({"model": ROLE, "messages": HELLO}))


def test_row18_every_text_block_joins_the_content() -> None:
    case = CASES["response_row18_text_tool_text"]
    exchange = new_exchange({"model": ROLE, "messages": HELLO})
    body = json.loads(exchange.response_body(json.dumps(case["response"]).encode(), end=True))
    assert body["choices"][0]["message"]["content"] == "Let me check. Done."


def _request_body(request: dict[str, Any], **role: Any) -> bytes:
    translator = AnthropicTranslator(role_upstream(**role), role=ROLE)
    return translator().request(Endpoint.CHAT_COMPLETIONS, Payload.of(request)).body
