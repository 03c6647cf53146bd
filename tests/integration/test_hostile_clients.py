"""Bad requests at the socket level: each a 4xx with OpenAI's error body, counted, not logged
per request; half-closed, idle and slow clients handled on time."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rolegate_gateway import proxy
from rolegate_gateway.keys import GUARD, INTAKE
from rolegate_gateway.settings import MIB, ServerSettings
from tests.conftest import Gateway, Upstream, until
from tests.fakes import manifests as m
from tests.fixtures import raw_http
from tests.fixtures.raw_http import request

CHAT = "/v1/chat/completions"


def _chat(content: str = "hi", **extra: object) -> bytes:
    body = {"model": "extract", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


def _nested(depth: int) -> bytes:
    return b'{"model":"extract","messages":' + b"[" * depth + b"]" * depth + b"}"


def _tiny_lists(size: int) -> bytes:
    head, tail = b'{"model":"extract","messages":[', b"]}"
    count = (size - len(head) - len(tail)) // 3
    return head + b"[]," * (count - 1) + b"[]" + tail


#: (id, the raw request, the status expected).
CASES: list[tuple[str, bytes, int]] = [
    ("lone surrogate escape", request(CHAT, _chat("\ud800").replace(b"\\\\", b"\\")), 400),
    ("lone low surrogate escape", request(CHAT, b'{"model":"extract","x":"\\udc00"}'), 400),
    ("surrogate escape in a key", request(CHAT, b'{"model":"extract","\\ud800":1}'), 400),
    ("CESU-8 surrogate bytes", request(CHAT, _chat("a").replace(b'"a"', b'"\xed\xa0\x80"')), 400),
    ("invalid UTF-8", request(CHAT, _chat("a").replace(b'"a"', b'"\xff\xfe"')), 400),
    ("1,000-deep nesting", request(CHAT, _nested(1_000)), 400),
    ("100,000-deep nesting", request(CHAT, _nested(100_000)), 400),
    ("NaN", request(CHAT, b'{"model":"extract","temperature":NaN}'), 400),
    ("Infinity", request(CHAT, b'{"model":"extract","temperature":-Infinity}'), 400),
    ("1e400", request(CHAT, b'{"model":"extract","temperature":1e400}'), 400),
    ("a 5,000-digit integer", request(CHAT, b'{"model":"extract","n":' + b"7" * 5000 + b"}"), 400),
    ("not JSON", request(CHAT, b"{not json"), 400),
    ("trailing data", request(CHAT, _chat() + b" {}"), 400),
    ("empty body", request(CHAT, b""), 400),
    ("top-level array", request(CHAT, b'[{"model":"extract"}]'), 400),
    ("top-level string", request(CHAT, b'"extract"'), 400),
    ("top-level null", request(CHAT, b"null"), 400),
    ("no model", request(CHAT, b'{"messages":[]}'), 400),
    ("model not a string", request(CHAT, b'{"model":["extract"]}'), 400),
    (
        "gzip declared, body not gzip",
        request(CHAT, _chat(), headers={"Content-Encoding": "gzip"}),
        400,
    ),
    (
        "bad chunking",
        request(
            CHAT,
            b"zz\r\n{}\r\n0\r\n\r\n",
            headers={"Transfer-Encoding": "chunked"},
            content_length=False,
        ),
        400,
    ),
    (
        "Content-Length with Transfer-Encoding",
        request(CHAT, b"2\r\n{}\r\n0\r\n\r\n", headers={"Transfer-Encoding": "chunked"}),
        400,
    ),
    ("100 KB header", request(CHAT, _chat(), headers={"X-Big": "a" * 100_000}), 400),
    ("bad request line", b"GARBAGE\r\n\r\n", 400),
    ("60 MB of tiny lists", request(CHAT, _tiny_lists(60_000_000)), 400),
    (
        "70 MB declared",
        request(CHAT, b"{}", headers={"Content-Length": str(70 * MIB)}, content_length=False),
        413,
    ),
    ("unknown path", request("/v1/nope", _chat()), 404),
    ("wrong method", request(CHAT, method="GET"), 405),
    ("unknown role", request(CHAT, _chat().replace(b'"extract"', b'"nobody"')), 404),
]


@pytest.fixture
async def gateway(
    tmp_path: Path, upstream: Upstream, start_gateway: Callable[..., Awaitable[Gateway]]
) -> Gateway:
    m.write(tmp_path / "roles.yaml", m.role("extract", host=upstream.url, model="tiny-a"))
    return await start_gateway(tmp_path)


def _unrouted(gateway: Gateway, code: int) -> float:
    value = gateway.runtime.registry.get_sample_value(
        "rolegate_requests_total",
        {"role": "", "namespace": "", "binding": "", "model": "", "code": str(code)},
    )
    return value or 0.0


def _log_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("raw", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_request_is_a_counted_4xx_with_openai_body(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture, raw: bytes, status: int
) -> None:
    before = _unrouted(gateway, status)
    with caplog.at_level(logging.INFO):
        answer = await raw_http.exchange(gateway.port, raw)
    assert answer is not None, "the connection closed without an answer"
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert _unrouted(gateway, status) == before + 1
    assert len(_log_lines(caplog)) <= 1
    assert not any(r.exc_info for r in caplog.records)
    assert not upstream.fake.seen  # nothing reached the upstream
    assert gateway.app is not None
    await until(lambda: gateway.app[INTAKE].budget.held == 0)  # type: ignore[index]
    # the gateway still serves
    ok = await raw_http.exchange(gateway.port, request(CHAT, _chat()))
    assert ok is not None
    assert ok.status == 200


async def test_a_flood_of_bad_requests_logs_a_line_or_two(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    kinds = [raw for _, raw, status in CASES if len(raw) < 1_000_000 and status != 413]
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            await asyncio.gather(*(raw_http.exchange(gateway.port, raw) for raw in kinds))
    lines = _log_lines(caplog)
    assert len(lines) <= 12, [r.getMessage() for r in lines]  # one per kind of problem
    assert not any(r.exc_info for r in caplog.records)


async def test_a_client_that_half_closes_after_its_request_gets_the_answer(
    gateway: Gateway,
) -> None:
    answer = await raw_http.exchange(gateway.port, request(CHAT, _chat()), half_close=True)
    assert answer is not None
    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hi from A"


async def test_a_half_closed_client_waits_for_a_slow_answer_and_a_gone_one_is_cancelled(
    gateway: Gateway, upstream: Upstream
) -> None:
    """While the answer is not ready, a half-closed client is probed with interim
    ``100 Continue`` answers: it keeps waiting; a client that closed for good is noticed
    and its upstream call cancelled."""
    upstream.fake.delay_s = 1.5
    answer = await raw_http.exchange(gateway.port, request(CHAT, _chat()), half_close=True)
    assert answer is not None
    assert answer.status == 200

    sock = raw_http.connect(gateway.port)
    sock.sendall(request(CHAT, _chat("leaving")))
    await until(lambda: upstream.fake.started[-1:] == ["leaving"])
    sock.close()  # FIN, like a half-close; the probe's reset tells them apart
    await until(lambda: upstream.fake.cancelled == 1, timeout_s=3)
    role = gateway.runtime.roles["extract"]
    await until(lambda: role.queue.running == 0)
    assert role.queue.cancelled_total == 1


async def test_nesting_at_the_limit_is_never_a_5xx(gateway: Gateway) -> None:
    for depth in range(950, 1000, 6):
        nested = b"[" * depth + b'"\\ud83d\\ude00"' + b"]" * depth
        raw = request(CHAT, b'{"model":"extract","messages":' + nested + b"}")
        answer = await raw_http.exchange(gateway.port, raw)
        assert answer is not None
        assert answer.status in (200, 400), (depth, answer.body[:200])


async def test_a_dead_parsing_worker_is_replaced(gateway: Gateway) -> None:
    """Bodies over 256 KiB are parsed in worker processes; one killed (as by the OOM
    killer) is replaced and the next large body is served."""
    assert gateway.app is not None
    intake = gateway.app[INTAKE]
    large = request(CHAT, _chat("x" * 300_000))
    first = await raw_http.exchange(gateway.port, large)
    assert first is not None
    assert first.status == 200
    pool = intake._pool
    assert pool is not None
    for process in list(pool._processes.values()):  # type: ignore[attr-defined]
        process.kill()
    again = await raw_http.exchange(gateway.port, large)
    assert again is not None
    assert again.status == 200
    assert intake._pool is not pool


async def test_a_gzip_body_is_accepted(gateway: Gateway) -> None:
    raw = request(CHAT, gzip.compress(_chat()), headers={"Content-Encoding": "gzip"})
    answer = await raw_http.exchange(gateway.port, raw)
    assert answer is not None
    assert answer.status == 200


async def test_a_surrogate_pair_escape_is_accepted(gateway: Gateway, upstream: Upstream) -> None:
    body = b'{"model":"extract","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    answer = await raw_http.exchange(gateway.port, request(CHAT, body))
    assert answer is not None
    assert answer.status == 200
    assert upstream.fake.seen[-1].body["messages"][0]["content"] == "\U0001f600"


async def test_slow_idle_and_surplus_connections_are_closed_on_time(
    tmp_path: Path,
    upstream: Upstream,
    start_gateway: Callable[..., Awaitable[Gateway]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 silent connections, 50 slowloris clients and a slow body, with a cap of 260
    connections and 1-2 s timeouts: a normal request is served meanwhile, surplus
    connections are refused at once, the rest are closed on time."""
    m.write(tmp_path / "roles.yaml", m.role("extract", host=upstream.url, model="tiny-a"))
    settings = ServerSettings(
        max_connections=260, keepalive_timeout_s=2.0, header_timeout_s=1.0, body_timeout_s=1.0
    )
    gateway = await start_gateway(tmp_path, settings=settings)
    assert gateway.app is not None
    guard = gateway.app[GUARD]
    loop = asyncio.get_running_loop()

    async def silent() -> tuple[float, bytes]:
        opened = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        data = await raw_http.read_all(reader)
        writer.close()
        return loop.time() - opened, data

    async def slowloris() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        first = loop.time()
        answer = asyncio.create_task(raw_http.read_all(reader))
        try:
            for byte in request(CHAT, _chat())[:60]:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)
                if answer.done():
                    break
        except ConnectionError:
            pass
        data = await answer
        writer.close()
        return loop.time() - first, data

    async def slow_body() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        raw = request(CHAT, _chat())
        writer.write(raw[: raw.index(b"\r\n\r\n") + 5])  # headers and one byte of the body
        sent = loop.time()
        data = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        return loop.time() - sent, data

    with caplog.at_level(logging.INFO):
        idle = [asyncio.create_task(silent()) for _ in range(200)]
        loris = [asyncio.create_task(slowloris()) for _ in range(50)]
        body = asyncio.create_task(slow_body())
        await until(lambda: guard.open == 251)

        began = loop.time()
        ok = await raw_http.exchange(gateway.port, request(CHAT, _chat()))
        assert ok is not None
        assert ok.status == 200
        assert loop.time() - began < 1.0

        surplus = await asyncio.gather(*(silent() for _ in range(20)))
        idle_results = await asyncio.gather(*idle)
        loris_results = await asyncio.gather(*loris)
        body_s, body_answer = await body

    refused = [(t, d) for t, d in surplus if d.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) >= 11, "at most 9 of 20 fit under the cap"
    assert all(t < 0.5 for t, _ in refused), "refused at once"
    assert b'"too_many_connections"' in refused[0][1]
    # Lower bounds are the timeouts; upper bounds leave this 2-core machine's scheduling
    # delays room (one CI run saw an idle connection outlive 3.5 s under load) while still
    # telling "closed on time" from "never closed" (the test would hang on the latter).
    idle_s = sorted(t for t, _ in idle_results)
    assert all(not d for _, d in idle_results), "idle connections get no answer"
    assert idle_s[0] > 1.9, f"closed at keep-alive timeout, not before: {idle_s[:5]}"
    assert idle_s[-1] < 5.0, f"closed at keep-alive timeout: {idle_s[::20]}"
    loris_s = sorted(t for t, _ in loris_results)
    assert all(not d for _, d in loris_results), "slowloris clients get no answer"
    assert loris_s[0] > 0.9, f"closed at header timeout, not before: {loris_s[:5]}"
    assert loris_s[-1] < 4.0, f"closed at header timeout: {loris_s[::5]}"
    assert body_answer.startswith(b"HTTP/1.1 408 ")
    assert 0.9 < body_s < 4.0
    await until(lambda: guard.open == 0)
    lines = _log_lines(caplog)
    assert len(lines) <= 4, [r.getMessage() for r in lines]


async def test_bodies_held_at_once_are_capped_and_given_back(
    tmp_path: Path, upstream: Upstream, start_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    """A body that does not fit the gateway-wide budget gets 429 with Retry-After; a
    client that goes away mid-body gives its share back."""
    m.write(tmp_path / "roles.yaml", m.role("extract", host=upstream.url, model="tiny-a"))
    gateway = await start_gateway(tmp_path, settings=ServerSettings(max_pending_body_bytes=MIB))
    assert gateway.app is not None
    budget = gateway.app[INTAKE].budget
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    big = request(CHAT, b" " * 900_000 + _chat())
    writer.write(big[:100_000])  # the headers declare ~900 KB; most of it never comes
    await writer.drain()
    await until(lambda: budget.held >= 900_000)

    second = await raw_http.exchange(gateway.port, request(CHAT, b" " * 200_000 + _chat()))
    assert second is not None
    assert second.status == 429
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "rate_limit_exceeded"

    writer.close()  # the first client goes away
    await until(lambda: budget.held == 0)
    third = await raw_http.exchange(gateway.port, request(CHAT, b" " * 200_000 + _chat()))
    assert third is not None
    assert third.status == 200
    assert budget.held == 0
    del reader


async def test_too_many_values_are_refused_as_they_arrive_and_nothing_is_held(
    tmp_path: Path, upstream: Upstream, start_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    """A body past ``max_json_values`` gives its budget back while it still arrives, is
    read to its end and dropped (the client reads the 400, not a reset), and never reaches
    a parsing worker; the next body is served."""
    m.write(tmp_path / "roles.yaml", m.role("extract", host=upstream.url, model="tiny-a"))
    settings = ServerSettings(max_json_values=10_000)
    gateway = await start_gateway(tmp_path, settings=settings)
    assert gateway.app is not None
    intake = gateway.app[INTAKE]
    # 200 KB of whitespace (no values), then ~670,000 values in 2 MB
    raw = request(CHAT, b" " * 200_000 + _tiny_lists(2_000_000))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(raw[:200_000])
        await writer.drain()
        await until(lambda: intake.budget.held > 2_100_000)  # what the headers declare
        writer.write(raw[200_000:500_000])  # ~100,000 values: past the limit
        await writer.drain()
        await until(lambda: intake.budget.held == 0)  # given back, most of it to come
        writer.write(raw[500_000:])
        await writer.drain()
        answer = raw_http.parse(await raw_http.read_all(reader))
    finally:
        writer.close()
    assert answer is not None
    assert answer.status == 400
    assert "more than 10,000 JSON values" in answer.json()["error"]["message"]
    assert intake._pool is None  # no worker was started for it
    served = await raw_http.exchange(gateway.port, request(CHAT, _chat("x" * 300_000)))
    assert served is not None
    assert served.status == 200
    assert intake.budget.held == 0


async def test_a_client_that_never_reads_a_whole_answer_is_dropped(
    tmp_path: Path,
    start_upstream: Callable[..., Awaitable[Upstream]],
    start_gateway: Callable[..., Awaitable[Gateway]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 20 MB non-stream answer to a client that never reads: the connection (and the
    answer's memory) goes after the write timeout."""
    monkeypatch.setattr(proxy, "WRITE_TIMEOUT_S", 1.0)
    big = await start_upstream(name="big", embedding_size=3_000_000)
    m.write(tmp_path / "roles.yaml", m.role("embed", host=big.url, model="e"))
    gateway = await start_gateway(tmp_path, settings=ServerSettings(keepalive_timeout_s=60))
    assert gateway.app is not None
    guard = gateway.app[GUARD]
    sock = raw_http.connect(gateway.port, rcvbuf=4096)
    try:
        body = b'{"model":"embed","input":"x"}'
        sock.sendall(request("/v1/embeddings", body, headers={"Connection": "keep-alive"}))
        await until(lambda: guard.open == 1)
        await until(lambda: big.fake.seen)
        await until(lambda: guard.open == 0, timeout_s=5)
    finally:
        sock.close()
