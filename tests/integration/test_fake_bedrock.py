"""Fidelity of the Bedrock fake and its event-stream encoder: boto3 parses what they send.

If the official ``bedrock-runtime`` client accepts the fake's Converse, ConverseStream and
InvokeModel answers, verifies its event-stream frames' CRCs, and refuses its errors and
signature checks the way it refuses the real service's, the fake speaks the real wire
formats and gateway tests driven through it mean something (reference translation.md
§12.2). No Kubernetes here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import boto3
import pytest
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from devstack import eventstream
from tests.fakes.bedrock import ACCESS_KEY_ID, SECRET_ACCESS_KEY, FakeBedrock
from tests.fakes.fidelity import bedrock_fake, converse_user, in_thread

__all__ = ["bedrock_fake"]  # a fixture, imported for pytest to find

ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
CONVERSE_TOOL_USE = {
    "role": "assistant",
    "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
}
CONVERSE_TOOL_RESULT = {
    "role": "user",
    "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "ok"}]}}],
}
TOOL_CONFIG = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}


def boto(
    fake: FakeBedrock,
    *,
    region: str = "us-east-1",
    access_key_id: str = ACCESS_KEY_ID,
    secret: str = SECRET_ACCESS_KEY,
    token: str | None = None,
) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}),
    )


async def converse(fake: FakeBedrock, text: str, model: str = "m", **kw: Any) -> dict[str, Any]:
    client = boto(fake)
    return await in_thread(
        lambda: client.converse(modelId=model, messages=converse_user(text), **kw)
    )


async def converse_stream(
    fake: FakeBedrock, text: str, seen: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every event of a ConverseStream; with ``seen`` given, events land there as they come."""
    client = boto(fake)
    events = [] if seen is None else seen

    def run() -> None:
        for event in client.converse_stream(modelId="m", messages=converse_user(text))["stream"]:
            events.append(event)

    await in_thread(run)
    return events


async def test_bedrock_converse_parses_text_stop_usage(bedrock_fake: FakeBedrock) -> None:
    answer = await converse(bedrock_fake, "hi")
    assert answer["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "Hello from the fake."}],
    }
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18}
    seen = bedrock_fake.requests[-1]
    assert (seen.path, seen.region, seen.service) == ("/model/m/converse", "us-east-1", "bedrock")
    assert seen.body["messages"] == converse_user("hi")


async def test_bedrock_converse_parses_tools_and_cache(bedrock_fake: FakeBedrock) -> None:
    answer = await converse(bedrock_fake, "#tools")
    assert answer["output"]["message"]["content"] == [
        {"text": "Let me check."},
        {
            "toolUse": {
                "toolUseId": "tooluse_01A",
                "name": "get_weather",
                "input": {"city": "Paris"},
            }
        },
        {"toolUse": {"toolUseId": "tooluse_01B", "name": "get_time", "input": {}}},
    ]
    assert answer["stopReason"] == "tool_use"
    usage = (await converse(bedrock_fake, "#cache"))["usage"]
    assert (usage["cacheReadInputTokens"], usage["cacheWriteInputTokens"]) == (20, 5)
    assert usage["totalTokens"] == 11 + 7 + 20 + 5
    for reason in ("guardrail_intervened", "malformed_tool_use", "brand_new_reason"):
        assert (await converse(bedrock_fake, f"#stop:{reason}"))["stopReason"] == reason


async def test_bedrock_stream_iterates_every_event(bedrock_fake: FakeBedrock) -> None:
    events = await converse_stream(bedrock_fake, "#tools")
    kinds = [next(iter(event)) for event in events]
    assert kinds == [
        "messageStart",
        *["contentBlockDelta"] * 2,  # text: no contentBlockStart
        "contentBlockStop",
        "contentBlockStart",
        *["contentBlockDelta"] * 3,  # "" + 2 fragments
        "contentBlockStop",
        "contentBlockStart",  # get_time: no deltas at all
        "contentBlockStop",
        "messageStop",
        "metadata",  # after messageStop, as the real service sends it
    ]
    assert events[4]["contentBlockStart"]["start"]["toolUse"] == {
        "toolUseId": "tooluse_01A",
        "name": "get_weather",
    }
    fragments = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events[5:8]]
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert events[-2]["messageStop"] == {"stopReason": "tool_use"}
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 11,
        "outputTokens": 7,
        "totalTokens": 18,
    }
    assert events[-1]["metadata"]["metrics"] == {"latencyMs": 42}
    cached = (await converse_stream(bedrock_fake, "#cache"))[-1]["metadata"]["usage"]
    assert (cached["cacheReadInputTokens"], cached["cacheWriteInputTokens"]) == (20, 5)


@pytest.mark.parametrize("member", ["", "throttlingException", "modelStreamErrorException"])
async def test_bedrock_exception_frame_raises_event_stream_error(
    bedrock_fake: FakeBedrock, member: str
) -> None:
    seen: list[dict[str, Any]] = []
    suffix = f":{member}" if member else ""
    with pytest.raises(EventStreamError) as caught:
        await converse_stream(bedrock_fake, f"#midstream-error{suffix}", seen)
    assert caught.value.response["Error"]["Code"] == (member or "throttlingException")
    assert [next(iter(event)) for event in seen] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
    ]


async def test_bedrock_cut_stream_is_an_error(bedrock_fake: FakeBedrock) -> None:
    seen: list[dict[str, Any]] = []
    with pytest.raises(Exception, match="ended prematurely"):
        await converse_stream(bedrock_fake, "#cut", seen)
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "ValidationException"), (429, "ThrottlingException"), (424, "ModelErrorException")],
)
async def test_bedrock_errors_become_client_errors(
    bedrock_fake: FakeBedrock, status: int, code: str
) -> None:
    with pytest.raises(ClientError) as caught:
        await converse(bedrock_fake, f"#error:{status}:{code}")
    response = caught.value.response
    assert (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]) == (
        code,
        status,
    )
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-errortype"].startswith(f"{code}:http://internal.amazon.com/coral/")
    assert headers.get("retry-after") == ("1" if status == 429 else None)


async def test_bedrock_arn_model_id_round_trip(bedrock_fake: FakeBedrock) -> None:
    answer = await converse(bedrock_fake, "hi", model=ARN)
    assert answer["stopReason"] == "end_turn"
    seen = bedrock_fake.requests[-1]
    assert seen.path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse"
    )
    assert (seen.region, seen.service) == ("us-east-1", "bedrock")


async def test_bedrock_region_recorded(bedrock_fake: FakeBedrock) -> None:
    client = boto(bedrock_fake, region="eu-west-1")
    await in_thread(lambda: client.converse(modelId="m", messages=converse_user("hi")))
    seen = bedrock_fake.requests[-1]
    assert (seen.region, seen.service) == ("eu-west-1", "bedrock")


@pytest.mark.parametrize(
    ("client_kw", "code"),
    [
        ({"secret": "wrong-secret"}, "InvalidSignatureException"),
        ({"access_key_id": "AKIDUNKNOWN"}, "UnrecognizedClientException"),
        ({"token": "unexpected-token"}, "UnrecognizedClientException"),
    ],
)
async def test_bedrock_refuses_bad_signatures(
    bedrock_fake: FakeBedrock, client_kw: dict[str, str], code: str
) -> None:
    client = boto(bedrock_fake, **client_kw)
    with pytest.raises(ClientError) as caught:
        await in_thread(lambda: client.converse(modelId="m", messages=converse_user("hi")))
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert bedrock_fake.requests[-1].region is None


async def test_bedrock_session_tokens_and_expiry(bedrock_fake: FakeBedrock) -> None:
    bedrock_fake.allow("ASIATEMP", "temp-secret", "temp-token")
    bedrock_fake.allow("ASIAOLD", "old-secret", "old-token", expires_at=time.time() - 1)
    ok = boto(bedrock_fake, access_key_id="ASIATEMP", secret="temp-secret", token="temp-token")
    await in_thread(lambda: ok.converse(modelId="m", messages=converse_user("hi")))
    assert bedrock_fake.requests[-1].headers["x-amz-security-token"] == "temp-token"
    for client, code in [
        (
            boto(bedrock_fake, access_key_id="ASIATEMP", secret="temp-secret"),
            "UnrecognizedClientException",
        ),
        (
            boto(bedrock_fake, access_key_id="ASIAOLD", secret="old-secret", token="old-token"),
            "ExpiredTokenException",
        ),
    ]:
        with pytest.raises(ClientError) as caught:
            await in_thread(lambda c=client: c.converse(modelId="m", messages=converse_user("hi")))
        assert caught.value.response["Error"]["Code"] == code


@pytest.mark.parametrize(
    ("messages", "extra", "message"),
    [
        ([{"role": "assistant", "content": [{"text": "x"}]}], {}, "must start with a user message"),
        (
            [*converse_user("a"), *converse_user("b")],
            {},
            "must alternate between user and assistant",
        ),
        (converse_user(" "), {}, "is blank"),
        (
            [*converse_user("hi"), CONVERSE_TOOL_USE, CONVERSE_TOOL_RESULT],
            {},
            "The toolConfig field must be defined",
        ),
        (
            [*converse_user("hi"), CONVERSE_TOOL_USE, *converse_user("forgot the result")],
            {"toolConfig": TOOL_CONFIG},
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
        (
            converse_user("hi"),
            {"inferenceConfig": {"temperature": 1.5}},
            "inferenceConfig.temperature",
        ),
    ],
)
async def test_bedrock_validates_like_the_service(
    bedrock_fake: FakeBedrock, messages: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    client = boto(bedrock_fake)
    with pytest.raises(ClientError) as caught:
        await in_thread(lambda: client.converse(modelId="m", messages=messages, **extra))
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert message in caught.value.response["Error"]["Message"]


async def test_bedrock_titan_embeddings(bedrock_fake: FakeBedrock) -> None:
    client = boto(bedrock_fake)

    def embed(model: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.invoke_model(modelId=model, body=json.dumps(body))
        return json.loads(answer["body"].read())

    first = await in_thread(
        lambda: embed("amazon.titan-embed-text-v2:0", {"inputText": "three little words"})
    )
    again = await in_thread(
        lambda: embed("amazon.titan-embed-text-v2:0", {"inputText": "three little words"})
    )
    other = await in_thread(lambda: embed("amazon.titan-embed-text-v1", {"inputText": "other"}))
    wide = await in_thread(
        lambda: embed("amazon.titan-embed-text-v2:0", {"inputText": "x", "dimensions": 256})
    )
    assert first == again
    assert len(first["embedding"]) == 8
    assert first["inputTextTokenCount"] == 3
    assert abs(sum(v * v for v in first["embedding"]) - 1.0) < 1e-9  # v2 normalizes by default
    assert other["embedding"] != first["embedding"]
    assert other["inputTextTokenCount"] == 1
    assert len(wide["embedding"]) == 256
    assert bedrock_fake.requests[0].path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    for model, body in [
        ("amazon.titan-embed-text-v2:0", {"inputText": ["a", "b"]}),
        ("amazon.titan-embed-text-v1", {"inputText": "a", "dimensions": 256}),
        ("cohere.embed-english-v3", {"texts": ["a"], "input_type": "search_document"}),
    ]:
        with pytest.raises(ClientError) as caught:
            await in_thread(lambda m=model, b=body: embed(m, b))
        assert caught.value.response["Error"]["Code"] == "ValidationException"


def sign(fake: FakeBedrock, path: str, body: bytes) -> tuple[str, dict[str, str]]:
    """SigV4-sign a POST the way rolegate does it (reference §10)."""
    url = f"{fake.url}{path}"
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "bedrock", "us-east-1").add_auth(
        request
    )
    return url, dict(request.headers.items())


async def test_bedrock_aiohttp_signing_and_7_byte_pieces(bedrock_fake: FakeBedrock) -> None:
    body = json.dumps({"messages": converse_user("hi")}).encode()
    url, headers = sign(
        bedrock_fake, f"/model/{ARN.replace(':', '%3A').replace('/', '%2F')}/converse-stream", body
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(yarl.URL(url, encoded=True), data=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/vnd.amazon.eventstream"
            chunks = [data async for data, _ in resp.content.iter_chunks()]
        async with session.post(url, data=body, headers=headers) as resp:  # yarl unquotes %3A
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
        url, headers = sign(bedrock_fake, "/model/arn:aws:bedrock:x/abc/converse", body)
        async with session.post(yarl.URL(url, encoded=True), data=body, headers=headers) as resp:
            assert resp.status == 200  # a literal "/" in the model id: the service's odd answer
            assert "UnknownOperationException" in (await resp.json())["Output"]["__type"]
    assert max(map(len, chunks)) <= 7
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(chunks))
    payloads = [json.loads(message.payload) for message in buffer]
    assert all("p" in payload for payload in payloads)  # the padding key botocore ignores


# --- Event stream encoder ------------------------------------------------------------------


def test_eventstream_round_trip_and_crc_checks() -> None:
    frames = [
        eventstream.event("messageStop", {"stopReason": "end_turn"}),
        eventstream.exception("throttlingException", "slow down"),
        eventstream.error("InternalFailure", "boom"),
    ]
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    messages = list(buffer)
    assert messages[0].headers == {
        ":event-type": "messageStop",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(messages[0].payload) == {"stopReason": "end_turn"}
    assert messages[1].headers[":exception-type"] == "throttlingException"
    assert messages[2].headers[":error-message"] == "boom"
    for offset in (9, len(frames[0]) - 10):  # inside the prelude CRC; inside the payload
        broken = bytearray(frames[0])
        broken[offset] ^= 0x01
        buffer = EventStreamBuffer()
        buffer.add_data(bytes(broken))
        with pytest.raises(ChecksumMismatch):
            list(buffer)
