"""A loopback fake of the Bedrock runtime, faithful enough for ``boto3``'s
``bedrock-runtime`` client to parse every answer (tests/integration/test_fake_bedrock.py).

It owns: ``POST /model/{modelId}/converse`` (JSON) and ``/converse-stream`` (AWS event
stream, written in 7-byte pieces, with the padding key ``"p"`` in every payload, no
``contentBlockStart`` for text, and ``metadata`` after ``messageStop`` as the real service
sends it), ``/invoke`` for Titan text embeddings, and the Converse body checks. Errors
(``x-amzn-ErrorType`` + ``{"message"}``) and SigV4 verification live in ``aws.py``; the
answers are the scripted ones of ``scenarios.py``; ``#midstream-error[:<member>]`` sends a
modeled exception frame (default ``throttlingException``). A path the routes do not match
(a model id with a literal ``/``) gets the real service's HTTP 200
``UnknownOperationException``.

Sources: reference translation.md §0.2-0.4, §0.6, §6.1, §7, §8, §9, §10, §11, §12.2;
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
/API_runtime_ConverseStream.html, /API_runtime_InvokeModel.html;
https://docs.aws.amazon.com/bedrock/latest/userguide/titan-embedding-models.html;
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html.

    async with FakeBedrock() as fake:  # knows ACCESS_KEY_ID / SECRET_ACCESS_KEY
        client = boto3.client(
            "bedrock-runtime", endpoint_url=fake.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
        )
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from devstack import eventstream
from tests.fakes.aws import AwsError, Known, request_id, verify_sigv4
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

ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
PIECE_BYTES = 7
TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_KEYS = {TITAN_V2: {"inputText", "dimensions", "normalize", "embeddingTypes"}} | {
    model: {"inputText"}
    for model in ("amazon.titan-embed-text-v1", "amazon.titan-embed-g1-text-02")
}
# ConverseStream exception members (reference §8.1) and the operation error a plain call gets
STREAM_ERRORS = {
    "throttlingException": (429, "ThrottlingException"),
    "modelStreamErrorException": (424, "ModelErrorException"),
    "internalServerException": (500, "InternalServerException"),
    "serviceUnavailableException": (503, "ServiceUnavailableException"),
    "validationException": (400, "ValidationException"),
}
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _validation(message: str) -> AwsError:
    return AwsError(400, "ValidationException", message)


class FakeBedrock(FakeServer):
    """Fake Bedrock runtime. ``credentials``: access key id -> (secret, session token or
    None); the default accepts ``ACCESS_KEY_ID``/``SECRET_ACCESS_KEY`` without a token.

    Attributes: ``url`` (the endpoint URL), ``requests`` (``Seen`` records with ``region``
    and ``service`` from the verified credential scope)."""

    def __init__(self, *, credentials: Mapping[str, tuple[str, str | None]] | None = None) -> None:
        super().__init__()
        self.known: dict[str, Known] = {}
        for access_key_id, (secret, token) in (
            credentials or {ACCESS_KEY_ID: (SECRET_ACCESS_KEY, None)}
        ).items():
            self.allow(access_key_id, secret, token)

    def allow(
        self,
        access_key_id: str,
        secret: str,
        token: str | None = None,
        *,
        expires_at: float | None = None,
    ) -> None:
        """Accept signatures made with these credentials from now on (FakeSTS's ``on_issue``)."""
        self.known[access_key_id] = Known(secret, token, expires_at)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 2**20)
        app.router.add_post("/model/{model}/converse", self._converse)
        app.router.add_post("/model/{model}/converse-stream", self._converse)
        app.router.add_post("/model/{model}/invoke", self._invoke)
        app.router.add_route("*", "/{tail:.*}", self._unknown_operation)
        return app

    async def _enter(self, request: web.Request) -> dict[str, Any]:
        """Record the request, verify its signature, parse its body.

        Raises:
            AwsError: a signature/credential problem (403) or a body that is not JSON.
        """
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        seen = Seen(request.raw_path, headers, body if isinstance(body, dict) else {})
        self.requests.append(seen)
        seen.region, seen.service = verify_sigv4(request, raw, self.known, service="bedrock")
        if not isinstance(body, dict):
            raise AwsError(400, "SerializationException", "Unexpected content in the request body")
        return body

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        stream = request.path.endswith("/converse-stream")
        try:
            body = await self._enter(request)
            _check_converse(body)
            answer = answer_for(last_user_text(body["messages"]), body)
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            if answer.error is not None:
                status, code = answer.error
                raise AwsError(status, code, f"fake {code}")
            if answer.midstream_error is not None and not stream:
                member = answer.midstream_error or "throttlingException"
                status, code = STREAM_ERRORS.get(member, (500, "InternalServerException"))
                raise AwsError(status, code, f"fake {code}")
        except UnknownScenario as unknown:
            return _validation(str(unknown)).response()
        except AwsError as error:
            return error.response()
        if stream:
            return await _stream(request, answer)
        data = json.dumps(
            {
                "output": {"message": {"role": "assistant", "content": _content(answer)}},
                "stopReason": answer.stop_reason,
                "usage": _usage(answer),
                "metrics": {"latencyMs": 42},
            }
        ).encode()
        headers = {"Content-Type": "application/json", **request_id()}
        if answer.cut:
            return await send_cut_body(request, data, headers)
        return web.Response(body=data, headers=headers)

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        """InvokeModel for Titan text embeddings; one ``inputText`` per call (reference §11).
        An ``inputText`` of ``#error:...`` or ``#slow:...`` acts as it does in a chat."""
        try:
            body = await self._enter(request)
            model = unquote(request.raw_path.split("/")[2])
            if model not in TITAN_KEYS:
                raise _validation("The provided model identifier is invalid.")
            return await _embed(model, body)
        except UnknownScenario as unknown:
            return _validation(str(unknown)).response()
        except AwsError as error:
            return error.response()

    async def _unknown_operation(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(Seen(request.raw_path, headers, {}))
        body = {
            "Output": {"__type": "com.amazon.coral.service#UnknownOperationException"},
            "Version": "1.0",
        }
        return web.json_response(body, headers=request_id())


def _check_converse(body: dict[str, Any]) -> None:
    """Raise the ValidationException the service gives for a body it refuses, if any."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _validation(
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: "
            "Member must not be null"
        )
    if not all(
        isinstance(m, dict) and all(isinstance(b, dict) for b in m.get("content") or [])
        for m in messages
    ):
        raise AwsError(400, "SerializationException", "messages: expected objects")
    temperature = (body.get("inferenceConfig") or {}).get("temperature", 0)
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        raise _validation(
            f"1 validation error detected: Value '{temperature}' at 'inferenceConfig.temperature' "
            "failed to satisfy constraint: Member must have value less than or equal to 1"
        )
    previous = "assistant"
    pending: set[str] = set()  # toolUseIds of the previous assistant turn
    for i, message in enumerate(messages):
        role = message.get("role")
        if i == 0 and role != "user":
            raise _validation(
                "A conversation must start with a user message. "
                "Try again with a conversation that starts with a user message."
            )
        if role not in ("user", "assistant") or role == previous:
            raise _validation(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        previous = role
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise _validation(
                f"The content field in the Message object at messages.{i} is empty. "
                "Add a ContentBlock object to the content field and try again."
            )
        for j, block in enumerate(content):
            if "text" in block and not str(block["text"]).strip():
                raise _validation(
                    f"The text field in the ContentBlock object at messages.{i}.content.{j} is "
                    "blank. Add text to the text field, and try again."
                )
            if ("toolUse" in block or "toolResult" in block) and "toolConfig" not in body:
                raise _validation(
                    "The toolConfig field must be defined when using toolUse and toolResult "
                    "content blocks."
                )
        results = {b["toolResult"].get("toolUseId") for b in content if "toolResult" in b}
        if results - pending:
            raise _validation(
                f"The number of toolResult blocks at messages.{i}.content exceeds the number "
                "of toolUse blocks of previous turn."
            )
        if pending - results:
            raise _validation(
                f"Expected toolResult blocks at messages.{i}.content for the following Ids: "
                + ", ".join(sorted(pending - results))
            )
        pending = {b["toolUse"].get("toolUseId") for b in content if "toolUse" in b}


def _content(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"text": "".join(answer.text)}] if answer.text else []
    for tool in answer.tools:
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": f"tooluse_{tool.suffix}",
                    "name": tool.name,
                    "input": tool.input,
                }
            }
        )
    return blocks


def _usage(answer: Answer) -> dict[str, int]:
    cache = {
        "cacheReadInputTokens": answer.cache_read_tokens,
        "cacheWriteInputTokens": answer.cache_write_tokens,
    }
    return {
        "inputTokens": answer.input_tokens,
        "outputTokens": answer.output_tokens,
        "totalTokens": answer.input_tokens + answer.output_tokens + sum(cache.values()),
        **{name: count for name, count in cache.items() if count},
    }


def _frames(answer: Answer) -> list[bytes]:
    """The event-stream frames of a streamed answer (reference §8.3)."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    index = 0
    if answer.text:  # text blocks have no contentBlockStart
        events += [
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}})
            for t in answer.text
        ]
        events.append(("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    for tool in answer.tools:
        start = {"toolUse": {"toolUseId": f"tooluse_{tool.suffix}", "name": tool.name}}
        events.append(("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        for fragment in tool.fragments:
            delta = {"toolUse": {"input": fragment}}
            events.append(("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    events.append(("messageStop", {"stopReason": answer.stop_reason}))
    events.append(("metadata", {"usage": _usage(answer), "metrics": {"latencyMs": 42}}))
    return [
        eventstream.event(name, {**payload, "p": _PAD[: 1 + (7 * n) % len(_PAD)]})
        for n, (name, payload) in enumerate(events)
    ]


async def _stream(request: web.Request, answer: Answer) -> web.StreamResponse:
    frames = _frames(answer)
    if answer.midstream_error is not None:
        member = answer.midstream_error or "throttlingException"
        frames = [*frames[:3], eventstream.exception(member, "Too many tokens, please wait.")]
    data = b"".join(frames)
    if answer.cut:  # three whole frames, then half of the fourth
        data = b"".join(frames[:3]) + frames[3][: len(frames[3]) // 2]
    response = web.StreamResponse(
        headers={"Content-Type": "application/vnd.amazon.eventstream", **request_id()}
    )
    await response.prepare(request)
    await write_in_pieces(response, data, PIECE_BYTES)
    if answer.cut:
        cut_connection(request)
        return response
    await response.write_eof()
    return response


async def _embed(model: str, body: dict[str, Any]) -> web.Response:
    """Titan's answer: a deterministic embedding of ``inputText`` and its word count."""
    extra = sorted(set(body) - TITAN_KEYS[model])
    if extra:
        raise _validation(f"Malformed input request: extraneous key [{extra[0]}] is not permitted")
    text = body.get("inputText")
    if not isinstance(text, str):
        found = "JSONArray" if isinstance(text, list) else type(text).__name__
        raise _validation(
            f"Malformed input request: #/inputText: expected type: String, found: {found}"
        )
    size = body.get("dimensions", 8)
    if "dimensions" in body and size not in (256, 512, 1024):
        raise _validation(
            f"Malformed input request: #/dimensions: {size} is not a valid enum value"
        )
    answer = answer_for(text, body)
    if answer.delay_s:
        await asyncio.sleep(answer.delay_s)
    if answer.error is not None:
        raise AwsError(answer.error[0], answer.error[1], f"fake {answer.error[1]}")
    generator = random.Random(text)
    embedding = [generator.uniform(-1, 1) for _ in range(size)]
    if model == TITAN_V2 and body.get("normalize", True):
        norm = math.sqrt(sum(value * value for value in embedding)) or 1.0
        embedding = [value / norm for value in embedding]
    tokens = len(text.split())
    headers = {"X-Amzn-Bedrock-Input-Token-Count": str(tokens), **request_id()}
    return web.json_response(
        {"embedding": embedding, "inputTextTokenCount": tokens}, headers=headers
    )
