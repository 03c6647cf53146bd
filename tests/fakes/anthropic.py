"""A loopback fake of Anthropic's Messages API (``POST /v1/messages``; and ``GET /v1/models``,
the model list the gateway's upstream health check reads), faithful enough for
the official ``anthropic`` SDK to parse every answer (tests/integration/test_fake_anthropic.py).

It owns the Anthropic wire format of the scripted answers in ``scenarios.py``: the Message
body, the SSE stream (``message_start``, blocks, a ``ping``, ``message_delta``,
``message_stop``; written in 11-byte pieces), the error body
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with ``request-id`` and
``retry-after`` headers, and the in-band ``event: error``. It checks what the real API
checks cheaply: an API key (``x-api-key``, or ``Authorization: Bearer`` as SDK 2.x sends),
``anthropic-version``, ``model``/``max_tokens``/``messages``, roles, empty text blocks,
``tool_use``/``tool_result`` pairing, and sampling parameters under 2026-10-21.

Sources: reference translation.md §0.1, §1, §3, §4.1, §5, §12.2;
https://docs.anthropic.com/en/api/messages, /en/api/messages-streaming, /en/api/errors,
/en/api/versioning.

    async with FakeAnthropic(api_key="sk-test") as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-test", max_retries=0)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.fakes.scenarios import (
    Answer,
    FakeServer,
    Seen,
    UnknownScenario,
    answer_for,
    cut_connection,
    last_user_text,
    send_cut_body,
    write_in_pieces,
)

VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
SAMPLING_REJECTED_BY = "2026-10-21"  # rejects temperature/top_p/top_k (reference §0.1)
PIECE_BYTES = 11

Problem = tuple[int, str, str]  # HTTP status, error type, message


class FakeAnthropic(FakeServer):
    """Fake Messages API. ``api_key``: the one key accepted (any non-empty key if None).

    Attributes: ``url`` (base URL; the SDK appends ``/v1/messages``), ``requests``
    (``Seen`` records, in arrival order)."""

    def __init__(
        self, *, api_key: str | None = None, models: tuple[str, ...] = ("claude-x",)
    ) -> None:
        """``models``: the ids ``GET /v1/models`` lists, newest first."""
        super().__init__()
        self.api_key = api_key
        self.models = models

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 2**20)  # the API's request size limit
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        """``GET /v1/models`` (https://docs.anthropic.com/en/api/models-list): a page of
        ModelInfo (``type``, ``id``, ``display_name``, ``created_at``), ``limit`` 1-1000
        (default 20) and ``after_id``, with ``has_more``, ``first_id``, ``last_id``."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(Seen(request.raw_path, headers, {}))
        request_id = f"req_fake{len(self.requests):06d}"
        if (problem := _check_auth(headers, self.api_key)) is not None:
            return _error(problem, request_id)
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error((400, "invalid_request_error", "limit: 1 to 1000"), request_id)
        ids = list(self.models)
        after = request.query.get("after_id")
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = ids[:limit]
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model.replace("-", " ").title(),
                "created_at": "2025-02-19T00:00:00Z",
            }
            for model in page
        ]
        body = {
            "data": data,
            "has_more": len(ids) > limit,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        return web.json_response(body, headers={"request-id": request_id})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(
            Seen(request.raw_path, headers, body if isinstance(body, dict) else {})
        )
        request_id = f"req_fake{len(self.requests):06d}"
        if (problem := _check(headers, body, self.api_key)) is not None:
            return _error(problem, request_id)
        assert isinstance(body, dict)
        try:
            answer = answer_for(last_user_text(body["messages"]), body)
        except UnknownScenario as unknown:
            return _error((400, "invalid_request_error", str(unknown)), request_id)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if answer.error is not None:
            status, kind = answer.error
            return _error((status, kind, f"fake {kind}"), request_id)
        message_id = f"msg_fake{len(self.requests):06d}"
        if not body.get("stream"):
            if answer.midstream_error is not None:  # no stream to break: fail up front
                kind = answer.midstream_error or "overloaded_error"
                return _error((529, kind, "Overloaded"), request_id)
            message = _message(message_id, body["model"], answer, _content(answer))
            data = json.dumps(message).encode()
            if answer.cut:
                headers = {"Content-Type": "application/json", "request-id": request_id}
                return await send_cut_body(request, data, headers)
            return web.json_response(message, headers={"request-id": request_id})
        events = _events(message_id, body["model"], answer)
        return await _stream(request, events, answer, request_id)


def _check_auth(headers: dict[str, str], api_key: str | None) -> Problem | None:
    """The first reason the real API would refuse these headers (key, version), or None."""
    bearer = headers.get("authorization", "")
    key = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
    if not key:
        return 401, "authentication_error", "x-api-key header is required"
    if api_key is not None and key != api_key:
        return 401, "authentication_error", "invalid x-api-key"
    version = headers.get("anthropic-version")
    if version is None:
        return 400, "invalid_request_error", "anthropic-version: header is required"
    if version not in VERSIONS:
        return 400, "invalid_request_error", f"anthropic-version: invalid version {version!r}"
    return None


def _check(headers: dict[str, str], body: Any, api_key: str | None) -> Problem | None:
    """The first reason the real API would refuse this request, or None."""
    if (problem := _check_auth(headers, api_key)) is not None:
        return problem
    version = headers["anthropic-version"]
    if not isinstance(body, dict):
        return 400, "invalid_request_error", "There was an error parsing the body as JSON"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return 400, "invalid_request_error", f"{name}: Field required"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return 400, "invalid_request_error", "max_tokens: Input should be a positive integer"
    if version == SAMPLING_REJECTED_BY:
        for name in ("temperature", "top_p", "top_k"):
            if name in body:
                return 400, "invalid_request_error", f"{name}: not supported on {version}"
    if isinstance(body.get("system"), list) and _empty_text(body["system"]):
        return 400, "invalid_request_error", "system: text content blocks must be non-empty"
    return _check_messages(body["messages"])


def _check_messages(messages: Any) -> Problem | None:
    if not isinstance(messages, list) or not messages:
        return 400, "invalid_request_error", "messages: at least one message is required"
    pending: set[str] = set()  # tool_use ids of the previous message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return (
                400,
                "invalid_request_error",
                (
                    'messages: Unexpected role "system". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.'
                ),
            )
        if role not in ("user", "assistant"):
            return 400, "invalid_request_error", f"messages.{i}.role: should be user or assistant"
        content = message.get("content")
        last_assistant = i == len(messages) - 1 and role == "assistant"
        if not content and not last_assistant:
            return (
                400,
                "invalid_request_error",
                (
                    "messages: all messages must have non-empty content except for the optional "
                    "final assistant message"
                ),
            )
        blocks = content if isinstance(content, list) else []
        if not all(isinstance(block, dict) for block in blocks):
            return 400, "invalid_request_error", f"messages.{i}.content: expected blocks"
        if _empty_text(blocks):
            return 400, "invalid_request_error", "messages: text content blocks must be non-empty"
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if unexpected := results - pending:
            return (
                400,
                "invalid_request_error",
                (
                    f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(sorted(map(str, unexpected)))}. Each `tool_result` block "
                    "must have "
                    "a corresponding `tool_use` block in the previous message."
                ),
            )
        if missing := pending - results:
            return (
                400,
                "invalid_request_error",
                (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(sorted(missing))}. Each `tool_use` block must "
                    "have a corresponding `tool_result` block in the next message."
                ),
            )
        pending = {b["id"] for b in blocks if b.get("type") == "tool_use" and "id" in b}
    return None


def _empty_text(blocks: list[Any]) -> bool:
    return any(
        isinstance(b, dict) and b.get("type") == "text" and not b.get("text") for b in blocks
    )


def _content(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.text:
        blocks.append({"type": "text", "text": "".join(answer.text)})
    for tool in answer.tools:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{tool.suffix}",
                "name": tool.name,
                "input": tool.input,
            }
        )
    return blocks


def _usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": answer.input_tokens,
        "cache_creation_input_tokens": answer.cache_write_tokens,
        "cache_read_input_tokens": answer.cache_read_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _message(
    message_id: str, model: str, answer: Answer, content: list[dict[str, Any]]
) -> dict[str, Any]:
    done = bool(content)  # a streamed message_start carries no content and no stop reason yet
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": answer.stop_reason if done else None,
        "stop_sequence": None,
        "usage": _usage(answer, answer.output_tokens if done else 1),
    }


def _events(message_id: str, model: str, answer: Answer) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed answer: (event name, data), in order."""
    message = _message(message_id, model, answer, [])
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": message})]
    index = 0
    if answer.text:
        events.append(
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        )
        events.append(("ping", {}))
        for text in answer.text:
            delta = {"type": "text_delta", "text": text}
            events.append(("content_block_delta", {"index": 0, "delta": delta}))
        events.append(("content_block_stop", {"index": 0}))
        index = 1
    for tool in answer.tools:
        block = {"type": "tool_use", "id": f"toolu_{tool.suffix}", "name": tool.name, "input": {}}
        events.append(("content_block_start", {"index": index, "content_block": block}))
        for fragment in tool.fragments:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            events.append(("content_block_delta", {"index": index, "delta": delta}))
        events.append(("content_block_stop", {"index": index}))
        index += 1
    stop = {"stop_reason": answer.stop_reason, "stop_sequence": None}
    usage = {"output_tokens": answer.output_tokens}  # message_start's input counts stand
    events.append(("message_delta", {"delta": stop, "usage": usage}))
    events.append(("message_stop", {}))
    return events


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


async def _stream(
    request: web.Request,
    events: list[tuple[str, dict[str, Any]]],
    answer: Answer,
    request_id: str,
) -> web.StreamResponse:
    if answer.midstream_error is not None:
        kind = answer.midstream_error or "overloaded_error"
        error = {"error": {"type": kind, "message": "Overloaded"}}
        events = [*events[:4], ("error", error)]
    data = b"".join(_sse(name, payload) for name, payload in events)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "request-id": request_id,
        }
    )
    await response.prepare(request)
    if answer.cut:
        await write_in_pieces(response, data[: len(data) // 2], PIECE_BYTES)
        cut_connection(request)
        return response
    await write_in_pieces(response, data, PIECE_BYTES)
    await response.write_eof()
    return response


def _error(problem: Problem, request_id: str) -> web.Response:
    status, kind, message = problem
    headers = {"request-id": request_id}
    if status == 429:
        headers["retry-after"] = "1"
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return web.json_response(body, status=status, headers=headers)
