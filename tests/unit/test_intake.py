"""parse_body: a client's JSON object split into members kept as the client wrote them."""

from __future__ import annotations

import json

import pytest

from rolegate_gateway import errors
from rolegate_gateway.intake import BodyBudget, Payload, join_object, parse_body


def test_members_keep_the_clients_json_text() -> None:
    raw = b' {"model" : "extract",\n "temperature": 1.0, "x": "\\u00e9\\n", "n": [1, {"a": null}]} '
    payload = parse_body(raw)
    assert payload.model == "extract"
    assert payload.size == len(raw)
    assert payload.members == {
        "model": b'"extract"',
        "temperature": b"1.0",
        "x": b'"\\u00e9\\n"',
        "n": b'[1, {"a": null}]',
    }
    assert payload.value("n") == [1, {"a": None}]


def test_join_rebuilds_an_equal_object() -> None:
    obj = {"model": "r", "messages": [{"role": "user", "content": 'héllo "q" 😀'}], "k": 2}
    payload = Payload.of(obj)
    assert json.loads(join_object(payload.members)) == obj
    assert json.loads(join_object({"é\n": b"1"})) == {"é\n": 1}


def test_a_repeated_key_keeps_the_last_value_as_json_loads_does() -> None:
    raw = b'{"model":"a","model":"b"}'
    assert parse_body(raw).model == json.loads(raw)["model"] == "b"


def test_an_empty_object_has_no_model() -> None:
    with pytest.raises(errors.InvalidRequest, match="'model'"):
        parse_body(b"{}")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model":"a",}', "Expecting property name"),
        (b'{"model" "a"}', "Expecting ':'"),
        (b'{"model":"a" "b":1}', "Expecting ','"),
        (b'{"model":}', "Expecting value"),
        (b'{"model":"a"} x', "Extra data"),
        (b'{"model":"a","t":NaN}', "NaN is not a JSON number"),
        (b'{"model":"a","t":1e999}', "too large"),
        (b'{"model":"a","t":"\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"model":"a","t":"\xed\xa0\x80"}', "not UTF-8"),
        (b'{"model":"a","t":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"model":"a","n":' + b"1" * 5000 + b"}", "Exceeds the limit"),
        (b'{"model":' + b"1" * 5000 + b"}", "Exceeds the limit"),
        (b'{"model":"a","t":"\\udc00"}', "lone UTF-16 surrogate"),
        (b'{"model":"a","t":"\\ud83d x \\ude00"}', "lone UTF-16 surrogate"),
        (b'{"model":"a","t":"\\ud83d\\\\ude00"}', "lone UTF-16 surrogate"),
        (b'{"model":"a","t":"\\\\\\ud83d"}', "lone UTF-16 surrogate"),
        (b"[]", "must be a JSON object"),
        (b"", "must be a JSON object"),
    ],
)
def test_refusals_say_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=message) as caught:
        parse_body(raw)
    assert caught.value.status == 400


def test_the_value_count_bounds_the_parse() -> None:
    raw = b'{"model":"a","m":[' + b"[]," * 99 + b"[]]}"
    assert parse_body(raw, max_values=300).model == "a"
    with pytest.raises(errors.InvalidRequest, match="more than 100 JSON values"):
        parse_body(raw, max_values=100)


@pytest.mark.parametrize(
    "text",
    [
        b'"\\ud83d\\ude00"',  # a pair
        b'"\\\\ud800"',  # a backslash and the text ud800
        b'"\\\\\\\\udc00 \\uD83D\\uDE00"',  # two backslashes, text; a pair in capitals
    ],
)
def test_surrogate_pairs_and_literal_text_are_fine(text: bytes) -> None:
    assert parse_body(b'{"model":"a","t":' + text + b"}").value("t") == json.loads(text)


def test_nesting_at_the_limit_with_a_surrogate_pair_is_a_400_or_accepted() -> None:
    """Every depth is either parsed or refused as too deep: never a RecursionError."""
    outcomes = set()
    for depth in range(900, 1000, 3):
        raw = b'{"model":"a","t":' + b"[" * depth + b'"\\ud83d\\ude00"' + b"]" * depth + b"}"
        outcome = "parsed"
        try:
            parse_body(raw)
        except errors.InvalidRequest as exc:
            outcome = exc.message
        outcomes.add(outcome)
    assert outcomes <= {"parsed", "the request body is not valid JSON: nested too deeply"}


def test_the_budget_refuses_with_429_only_when_something_is_held() -> None:
    budget = BodyBudget(100)
    budget.reserve(150)  # alone, a body larger than the budget still passes
    with pytest.raises(errors.QueueFull) as caught:
        budget.reserve(1)
    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "1"}
    budget.release(150)
    budget.reserve(100)
    assert budget.held == 100
