"""Large request bodies: what they cost the gateway in memory and event-loop time.

``python -m bench.large_bodies [--src DIR] [--json]`` runs ``rolegate-gateway`` (from
``DIR/gateway`` when given, e.g. a checkout of an older commit, to compare) against the
benchmark's upstream and measures, each case in one run:

- ``first_large``: the first 2 MB request (which starts the parsing workers);
- ``tiny_lists``: one 60 MB body of ``[]`` items (~40 million values, which a parse would
  turn into as many Python objects; the intake counts them as they arrive and refuses the
  body past its limit); ``tiny_lists_x4``: four at once;
- ``images``: four 8 MB image requests (a base64 data URL, as LightRAG's ``vlm`` role
  sends) one after another, while a stream runs on another role.

For each: the answers' status codes, the longest ``GET /healthz`` took meanwhile (polled
every 10 ms: how long the gateway's event loop was blocked), the gateway's peak resident
memory above its idle level (the sum of VmHWM over its process tree: worker processes
included), and for ``images`` the longest gap between two chunks of the stream (the
upstream sends one every 50 ms).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.procs import Meter, spawn
from devstack.process import Process

__all__ = ["image_body", "measure", "tiny_lists_body"]

MB = 1_000_000
_CHUNK_INTERVAL_S = 0.05
_INTERVAL = ("--chunk-interval-s", str(_CHUNK_INTERVAL_S))


def tiny_lists_body(size: int, *, model: str = "chat") -> bytes:
    """A chat request of about ``size`` bytes whose messages are ``[]`` items."""
    head = b'{"model":"' + model.encode() + b'","messages":['
    count = (size - len(head) - 2) // 3
    return head + b"[]," * (count - 1) + b"[]]}"


def image_body(size: int, *, model: str = "vlm") -> bytes:
    """A chat request carrying a ``size``-byte base64 PNG data URL (random bytes)."""
    data = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    content = [
        {"type": "text", "text": "describe the image"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
    ]
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode()


def _post(base: str, path: str, body: bytes, *, timeout_s: float = 120.0) -> int:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout_s)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    except (ConnectionError, http.client.HTTPException):
        return 0  # the gateway closed the connection: no answer
    finally:
        conn.close()


#: The probe's own process (run with ``-c HOST PORT``): GET /healthz every 10 ms until its
#: stdin closes, then the latencies (seconds) as one JSON line. A process of its own, not a
#: thread of the caller: in a busy caller (pytest with other fixtures' threads and loops,
#: four client threads posting 60 MB each) a thread waits for the GIL, and that wait would
#: be measured as the gateway's.
_PROBE = """
import http.client, json, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
conn = http.client.HTTPConnection(host, port, timeout=60)
while not stop.is_set():
    began = time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    except (ConnectionError, http.client.HTTPException):
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=60)
    latencies.append(time.perf_counter() - began)
    if len(latencies) == 1:
        print("ready", flush=True)
    stop.wait(0.01)
print(json.dumps(latencies), flush=True)
"""


@contextmanager
def _health_probe(base: str) -> Iterator[list[float]]:
    """GET /healthz every 10 ms from a process of its own (:data:`_PROBE`); yields the
    list of latencies (seconds), filled when the block ends.

    Raises:
        RuntimeError: the probe process did not start probing.
    """
    url = urlsplit(base)
    latencies: list[float] = []
    argv = [sys.executable, "-c", _PROBE, url.hostname or "127.0.0.1", str(url.port)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as probe:
        assert probe.stdin is not None
        assert probe.stdout is not None
        if probe.stdout.readline().strip() != "ready":
            probe.kill()
            raise RuntimeError("the /healthz probe process did not start")
        try:
            yield latencies
        finally:
            probe.stdin.close()
            line = probe.stdout.readline()
            probe.wait(30)
            latencies.extend(json.loads(line) if line.strip() else [])


def _stream_gaps(base: str, started: threading.Event) -> list[float]:
    """Run one stream on role ``chat``; the seconds between consecutive chunks."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    body = json.dumps(
        {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    arrivals = []
    while line := answer.readline():
        if line.startswith(b"data:"):
            arrivals.append(time.perf_counter())
            started.set()
    conn.close()
    return [b - a for a, b in itertools.pairwise(arrivals)]


def _case(meter: Meter, base: str, run: Callable[[], list[int]]) -> dict[str, Any]:
    idle = meter.rss_bytes()
    meter.reset_peak()
    with _health_probe(base) as latencies:
        time.sleep(0.1)
        codes = run()
        time.sleep(0.1)
    return {
        "codes": codes,
        "healthz_max_ms": round(1000 * max(latencies), 1),
        "peak_rss_above_idle_mb": round((meter.peak_rss_bytes() - idle) / MB, 1),
    }


def measure(work: Path, *, src: Path | None = None) -> dict[str, Any]:
    """Run the cases (module docstring) on a fresh gateway; the figures by case."""
    env = {"PYTHONPATH": str(src / "gateway")} if src is not None else {}
    # one upstream per role: parsing an 8 MB body must not delay the other role's stream
    upstreams = {
        name: spawn(
            f"upstream-{name}",
            [
                sys.executable,
                "-m",
                "bench.upstream",
                "--chunks",
                "40",
                "--chunk-interval-s",
                str(_CHUNK_INTERVAL_S),
            ],
            log_path=work / f"upstream-{name}.log",
            url_pattern=r"listening on (http://127\.0\.0\.1:\d+)",
            ready_path="/health",
        )
        for name in ("chat", "vlm")
    }
    roles = work / "roles"
    roles.mkdir(exist_ok=True)
    docs = [
        {
            "apiVersion": "rolegate.dev/v1alpha1",
            "kind": "LLMRole",
            "metadata": {"name": name},
            "spec": {"binding": "vllm", "model": "m", "host": upstream.url + "/v1"},
        }
        for name, upstream in upstreams.items()
    ]
    (roles / "roles.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    gateway: Process | None = None
    try:
        gateway = spawn(
            "gateway",
            [sys.executable, "-m", "rolegate_gateway", "--manifests", str(roles), "--port", "0"],
            log_path=work / "gateway.log",
            env=env,
            url_pattern=r"on (http://127\.0\.0\.1:\d+)/v1",
            ready_path="/readyz",
        )
        base = gateway.url
        path = "/v1/chat/completions"
        meter = Meter.of(gateway)
        _post(base, path, image_body(1_000))  # warm up
        tiny = tiny_lists_body(60 * MB)
        image = image_body(8 * MB)
        out: dict[str, Any] = {}
        # the first large body starts the parsing workers, if the gateway has any
        out["first_large"] = _case(meter, base, lambda: [_post(base, path, image_body(2 * MB))])
        out["tiny_lists"] = _case(meter, base, lambda: [_post(base, path, tiny)])
        with ThreadPoolExecutor(4) as pool:
            out["tiny_lists_x4"] = _case(
                meter, base, lambda: list(pool.map(lambda _: _post(base, path, tiny), range(4)))
            )

        def images() -> list[int]:
            started = threading.Event()
            with ThreadPoolExecutor(1) as pool:
                gaps = pool.submit(_stream_gaps, base, started)
                started.wait(10)
                codes = [_post(base, path, image) for _ in range(4)]
                out["stream_max_gap_ms"] = round(1000 * max(gaps.result()), 1)
            return codes

        out["images"] = _case(meter, base, images)
        out["stream_chunk_interval_ms"] = 1000 * _CHUNK_INTERVAL_S
        return out
    finally:
        if gateway is not None:
            gateway.stop()
        for upstream in upstreams.values():
            upstream.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.large_bodies [--src DIR]``: print the figures as JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.large_bodies", description=__doc__)
    p.add_argument("--src", type=Path, help="a rolegate checkout whose gateway to measure")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rolegate-large-bodies-") as tmp:
        print(json.dumps(measure(Path(tmp), src=args.src), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
