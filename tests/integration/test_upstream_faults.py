"""Upstreams that misbehave: redirects, dropped connections, rate limits, bombs, key echoes.

Every upstream is real: an aiohttp fake (``FakeOpenAI``) or a raw socket server
(``RawUpstream``) on a loopback port; the gateway runs in this process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import openai
import psutil
import pytest

from rolegate_gateway import proxy, upstream
from tests.conftest import Gateway, Upstream, until
from tests.fakes import manifests as m
from tests.fakes.raw_upstream import RawUpstream, gzip_bomb, http_answer

KEY = "sk-rgFAULT/Key+9x=Qm2TzW81vLp0sEcReT"
MIB = 2**20

Setup = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    """Factory: ``await raw(mode=...)`` -> a started raw upstream, closed after the test."""
    started: list[RawUpstream] = []

    async def factory(**knobs: Any) -> RawUpstream:
        server = await RawUpstream(**knobs).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.close()


@pytest.fixture
def setup(tmp_path: Path, start_gateway: Callable[..., Awaitable[Gateway]]) -> Setup:
    """``await setup(host, binding=..., **spec)``: a gateway serving role "extract" with
    the key :data:`KEY`."""

    async def factory(host: str, **spec: Any) -> Gateway:
        m.write(
            tmp_path / "roles.yaml",
            m.role("extract", host=host, credentials={"secretRef": {"name": "k"}}, **spec),
            m.secret("k", apiKey=KEY),
        )
        return await start_gateway(tmp_path)

    return factory


def _ask(client: openai.AsyncOpenAI, **kw: Any) -> Awaitable[Any]:
    return client.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "the prompt"}], **kw
    )


async def _post(gw: Gateway, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    payload = {"model": "extract", "messages": [{"role": "user", "content": "the prompt"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.v1}/chat/completions", json={**payload, **extra}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def _count(gw: Gateway, family: str, **labels: str) -> float:
    """The sum of a metric family's samples for role "extract" matching ``labels``."""
    total = 0.0
    for metric in gw.runtime.registry.collect():
        for sample in metric.samples:
            if sample.name != family or sample.labels.get("role") != "extract":
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("binding", ["openai", "azure_openai"])
async def test_redirects_are_refused_and_nothing_reaches_their_target(
    start_upstream: Callable[..., Awaitable[Upstream]],
    raw: Callable[..., Awaitable[RawUpstream]],
    setup: Setup,
    status: int,
    binding: str,
) -> None:
    elsewhere = await raw(mode="ok")  # answers whatever reaches it, and records it
    up = await start_upstream(name="A")
    location = elsewhere.url.removesuffix("/v1") + "/v1/chat/completions"
    up.fake.fail_status = status
    up.fake.fail_headers = {"Location": location}
    if binding == "azure_openai":
        spec = {"azure": {"deployment": "d", "apiVersion": "2024-10-21"}}
        gw = await setup(up.url.removesuffix("/v1"), binding=binding, **spec)
    else:
        gw = await setup(up.url, binding=binding)
    code, _, body = await _post(gw)
    assert code == 502
    error = json.loads(body)["error"]
    assert "'extract'" in error["message"]
    assert "redirect" in error["message"]
    assert elsewhere.url.removesuffix("/v1") not in body.decode()
    assert str(status) in error["message"]
    assert (elsewhere.connections, bytes(elsewhere.received)) == (0, b"")
    assert len(up.fake.seen) == 1  # not retried either


# -- dropped connections --------------------------------------------------------------------


async def test_reused_connections_reset_by_the_upstream_are_retried(
    raw: Callable[..., Awaitable[RawUpstream]], setup: Setup
) -> None:
    """Each upstream connection answers once, then is reset on its next request."""
    server = await raw(mode="reset_reused")
    gw = await setup(server.url, maxAsync=8)
    gate = asyncio.Semaphore(8)

    async def one() -> int:
        async with gate, http.post(f"{gw.v1}/chat/completions", json=payload) as resp:
            await resp.read()
            return resp.status

    payload = {"model": "extract", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as http:
        codes = await asyncio.gather(*(one() for _ in range(300)))
    assert codes.count(200) == 300, sorted(set(codes))
    assert server.resets >= 100  # the case under test happened, many times
    assert _count(gw, "rolegate_upstream_errors_total") == 0


async def test_a_reused_connection_that_breaks_while_the_upstream_works_is_not_retried(
    raw: Callable[..., Awaitable[RawUpstream]], setup: Setup
) -> None:
    """Every connection in the pool is reused, and the upstream dies on one request after
    working on it for a while: that request was paid for once and is sent once."""
    server = await raw(mode="crash_on_poison", poison_s=1.0)
    gw = await setup(server.url, maxAsync=8)

    async def ask(content: str) -> int:
        payload = {"model": "extract", "messages": [{"role": "user", "content": content}]}
        async with http.post(f"{gw.v1}/chat/completions", json=payload) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as http:
        assert await asyncio.gather(*(ask("warm") for _ in range(6))) == [200] * 6
        code = await ask("poison")
    poisoned = [r for r in server.requests if "poison" in json.dumps(r.body)]
    assert code == 502
    assert len(poisoned) == 1


async def test_a_fresh_connection_reset_after_the_request_is_not_retried(
    raw: Callable[..., Awaitable[RawUpstream]],
    setup: Setup,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await raw(mode="reset_fresh")
    gw = await setup(server.url)
    with caplog.at_level(logging.WARNING, logger="rolegate_gateway.proxy"):
        code, _, body = await _post(gw)
    assert code == 502
    message = json.loads(body)["error"]["message"]
    assert "Connection reset by peer" in message
    assert "'extract'" in message
    assert "127.0.0.1" not in message  # no address in what the client sees
    assert len(server.requests) == 1  # a paid call is not sent twice
    [record] = [r for r in caplog.records if r.name == "rolegate_gateway.proxy"]
    text = record.getMessage()
    assert text.count("upstream") == 2  # "the upstream of role …" and "(upstream http://…)"
    assert text.count(server.url.removesuffix("/v1")) == 1


async def test_an_aborted_stream_ends_with_an_error_event_and_the_next_call_works(
    raw: Callable[..., Awaitable[RawUpstream]],
    setup: Setup,
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    server = await raw(mode="abort_stream", abort_every=2)  # the 1st, 3rd, … are cut off
    gw = await setup(server.url)
    client = sdk(gw)
    for _ in range(20):
        stream = await _ask(client, stream=True)
        parts: list[str | None] = []

        async def read(stream: Any = stream, parts: list[str | None] = parts) -> None:
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as err:
            await read()
        assert parts == ["raw-0 ", "raw-1 "]
        assert "'extract'" in str(err.value)
        stream = await _ask(client, stream=True)
        assert [c.choices[0].delta.content async for c in stream] == ["raw-0 ", "raw-1 ", "raw-2 "]
    assert server.resets == 20
    stats = gw.runtime.roles["extract"].queue.stats()
    assert (stats["running"], stats["completed_total"], stats["failed_total"]) == (0, 20, 20)


# -- rate limits ----------------------------------------------------------------------------


async def test_a_long_retry_after_is_passed_on_at_once_with_rate_limit_headers(
    upstream: Upstream, setup: Setup, sdk: Callable[[Gateway], openai.AsyncOpenAI]
) -> None:
    gw = await setup(upstream.url)  # timeoutSeconds 180: 7 s would fit in the budget
    upstream.fake.fail_status = 429
    upstream.fake.fail_headers = {
        "Retry-After": "7",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "7s",
    }
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as err:
        await _ask(sdk(gw))
    elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed
    headers = err.value.response.headers
    assert headers["Retry-After"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "7s"
    assert len(upstream.fake.seen) == 1


# -- answer size ----------------------------------------------------------------------------


def _reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (proc(5), ``clear_refs``: 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    """This process's VmHWM (bytes) since the last reset (``/proc/self/clear_refs``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise AssertionError("no VmHWM in /proc/self/status")


async def test_a_gzip_bomb_is_refused_with_bounded_memory(
    raw: Callable[..., Awaitable[RawUpstream]], setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 64 * MIB)  # the default is 256 MiB
    bomb = gzip_bomb(200 * MIB)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    server = await raw(mode="raw", answer=http_answer(200, bomb, headers))
    gw = await setup(server.url)
    # The peak of this call only: reset the process's high-water mark (VmHWM) first; the
    # lifetime peak (ru_maxrss) may be an earlier test's.
    _reset_peak_rss()
    rss_before = psutil.Process().memory_info().rss
    code, _, body = await _post(gw)
    peak = _peak_rss_bytes()
    growth_mib = (peak - rss_before) / MIB
    print(f"gzip bomb: {len(bomb)} bytes inflating to 200 MiB; peak RSS +{growth_mib:.0f} MiB")
    assert code == 502
    cap_mib = upstream.MAX_ANSWER_BYTES // MIB
    assert f"larger than {cap_mib} MiB" in json.loads(body)["error"]["message"]
    assert growth_mib < 256  # the cap (64 MiB) and its copy, not the 200 MiB


# -- scrubbing ------------------------------------------------------------------------------


def _echoes() -> list[str]:
    """The key as an upstream might echo it, each form as it appears in a JSON string."""
    raw = KEY.encode()
    json_escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    return [
        KEY,
        json_escaped,
        json_escaped.upper().replace("\\U", "\\u"),
        "\\u0073" + KEY[1:],
        quote(KEY, safe=""),
        quote(KEY),
        quote_plus(KEY),
        re.sub("%[0-9A-F]{2}", lambda hexed: hexed[0].lower(), quote(KEY, safe="")),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"Bearer " + raw).decode(),  # another alignment
        base64.b64encode(b"api-key:" + raw).decode(),  # and the third
        raw.hex(),
    ]


def _forms_in(text: str) -> list[str]:
    found = []
    for form in [*_echoes(), KEY[-12:]]:
        decoded = json.loads(f'"{form}"') if "\\u" in form else form
        if form in text or decoded in text:
            found.append(form)
    return found


@pytest.mark.parametrize("status", [400, 500])
async def test_echoed_keys_never_reach_the_client(
    upstream: Upstream, setup: Setup, status: int
) -> None:
    gw = await setup(upstream.url)
    echoes = _echoes()
    message = "you sent: " + " | ".join(echoes)
    upstream.fake.fail_status = status
    if status == 400:  # an OpenAI error body: passed on, scrubbed
        error = {"message": message, "type": "invalid_request_error", "code": "echo"}
        upstream.fake.fail_body = json.dumps({"error": error}).replace("\\\\u", "\\u").encode()
    else:  # plain text: wrapped
        upstream.fake.fail_body = message.encode()
    code, _, body = await _post(gw)
    assert code == status
    text = body.decode()
    seen = json.loads(body)["error"]["message"]
    assert "you sent: " in seen  # the rest of the message is kept
    assert _forms_in(text) == []
    assert _forms_in(seen) == []
    for word in seen.split():  # nothing that base64-decodes to the key either
        try:
            decoded = base64.b64decode(word + "==")
        except ValueError:
            continue
        assert KEY.encode()[4:-4] not in decoded


async def test_the_masked_key_of_a_401_is_replaced_by_the_role(
    upstream: Upstream, setup: Setup, sdk: Callable[[Gateway], openai.AsyncOpenAI]
) -> None:
    gw = await setup(upstream.url)
    upstream.fake.fail_status = 401
    masked = f"{KEY[:8]}{'*' * 20}{KEY[-4:]}"
    error = {
        "message": f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    upstream.fake.fail_body = json.dumps({"error": error}).encode()
    with pytest.raises(openai.AuthenticationError) as err:
        await _ask(sdk(gw))
    text = err.value.response.text
    assert "the upstream of role 'extract' refused the role's credentials (401)" in text
    assert KEY[-4:] not in text
    assert KEY[:8] not in text
    assert _count(gw, "rolegate_upstream_errors_total", kind="status") == 1


# -- whose error ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "upstream_errors"), [(400, 0), (422, 0), (404, 1), (403, 1)])
async def test_client_caused_statuses_are_not_upstream_errors(
    upstream: Upstream, setup: Setup, status: int, upstream_errors: int
) -> None:
    gw = await setup(upstream.url)
    upstream.fake.fail_status = status
    code, _, body = await _post(gw)
    assert code == status
    assert json.loads(body)["error"]["code"] == "fake_failure"  # the upstream's own body
    assert _count(gw, "rolegate_requests_total", code=str(status)) == 1
    assert _count(gw, "rolegate_upstream_errors_total") == upstream_errors


async def test_a_client_that_stops_reading_frees_its_slot(
    upstream: Upstream, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "WRITE_TIMEOUT_S", 0.3)
    gw = await setup(upstream.url, timeoutSeconds=30)
    upstream.fake.chunks = 2000
    upstream.fake.chunk_bytes = 64 * 1024  # 128 MiB offered: far more than socket buffers
    body = json.dumps(
        {"model": "extract", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    loop = asyncio.get_running_loop()
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        await loop.sock_sendall(client, head + body)  # and never reads
        await until(lambda: upstream.fake.started)
        queue = gw.runtime.roles["extract"].queue
        started = loop.time()
        await until(lambda: queue.running == 0, timeout_s=5)
        freed_s = loop.time() - started
        await until(lambda: upstream.fake.cancelled == 1)  # the upstream call was cancelled
    assert freed_s < 2, freed_s
    assert queue.stats()["cancelled_total"] == 1
    assert _count(gw, "rolegate_requests_total", code="499") == 1
    assert _count(gw, "rolegate_upstream_errors_total") == 0


async def test_an_upstream_silent_after_its_headers_is_the_upstreams_timeout(
    raw: Callable[..., Awaitable[RawUpstream]],
    setup: Setup,
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    """The write timeout covers writes to the client only, not the wait for a chunk. Nothing
    reached the client yet, so the timeout is the answer's status (504), which the client's
    SDK can retry on, rather than a 200 with an error event."""
    server = await raw(mode="stall_stream")
    gw = await setup(server.url, timeoutSeconds=0.5)
    with pytest.raises(openai.APIStatusError, match=r"did not answer within 0\.5 s") as raised:
        await _ask(sdk(gw), stream=True)
    assert raised.value.status_code == 504
    assert _count(gw, "rolegate_upstream_errors_total", kind="timeout") == 1
    assert _count(gw, "rolegate_requests_total", code="499") == 0


async def test_a_stream_whose_gaps_fit_the_timeout_outlasts_it(
    start_upstream: Callable[..., Awaitable[Upstream]],
    setup: Setup,
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
) -> None:
    """timeoutSeconds bounds each gap of a stream, not the whole stream: 8 chunks 0.2 s
    apart under a 0.5 s timeout all arrive (the deadline moves on with every chunk), and
    the stream then ends cleanly."""
    slow = await start_upstream(name="slow", chunks=8, chunk_delay_s=0.2)
    gw = await setup(slow.url, timeoutSeconds=0.5)
    started = time.monotonic()
    stream = await _ask(sdk(gw), stream=True)
    chunks = [chunk async for chunk in stream]
    assert time.monotonic() - started > 1.2  # well past one timeout
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 8
    assert _count(gw, "rolegate_upstream_errors_total") == 0


async def test_an_unexpected_exception_is_a_counted_500(
    upstream: Upstream, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await setup(upstream.url)

    class Broken:
        def request(self, endpoint: Any, payload: Any) -> Any:
            raise RuntimeError("a bug")

    gw.runtime.roles["extract"].wrapper.translator = Broken  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="rolegate_gateway.proxy"):
        code, _, body = await _post(gw)
    assert code == 500
    assert json.loads(body)["error"] == {
        "message": "internal gateway error",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert _count(gw, "rolegate_requests_total", code="500") == 1
    assert _count(gw, "rolegate_requests_total", code="200") == 0
    assert gw.runtime.roles["extract"].queue.stats()["failed_total"] == 1
    [record] = [r for r in caplog.records if r.name == "rolegate_gateway.proxy"]
    assert "extract" in record.getMessage()
    assert record.exc_info is not None
    assert upstream.fake.seen == []
