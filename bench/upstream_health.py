"""What the upstream health checks cost and how fast they see a broken upstream.

``python -m bench.upstream_health [--roles 100 1000 10000] [--interval 1] [--window 10]``

For each role count, a gateway app in this process (the real ``create_app`` and
``HealthChecker``, no Kubernetes) serves that many roles on one loopback upstream, half of
them with one key and half with another (two distinct (upstream, key) pairs), and:

- counts the model-list GETs the upstream receives over ``--window`` seconds: the check
  traffic per interval, to compare with the role count;
- then breaks the upstream (its model list answers 401) and times until every role is
  judged ``Unauthorized`` in the gateway (the operator's share, the Lease write and a
  reconcile pass, is measured on real processes by ``tests/e2e/test_upstream_health.py``:
  about 1 s at a 1 s interval);
- and reports the size of the Lease annotation (``rolegate.dev/upstream``) with every role
  failing, against its 40 KiB bound.

Prints one JSON object per role count. Loopback only; bounded by the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

from aiohttp import web

from devstack.poll import eventually
from rolegate_gateway.app import create_app, start
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.health import HealthChecker
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.upstream_report import MAX_UPSTREAM_BYTES, UpstreamReport, encode
from tests.fakes.configs import role_config

KEYS = ("sk-BENCH-HEALTH-key-one-0001", "sk-BENCH-HEALTH-key-two-0002")


class CountingUpstream:
    """``GET /v1/models`` listing one model, counted per key; 401 once ``broken``."""

    def __init__(self) -> None:
        self.lists: Counter[str] = Counter()
        self.broken = False

    async def models(self, request: web.Request) -> web.Response:
        said = request.headers.get("Authorization", "")
        self.lists["key one" if said.endswith(KEYS[0]) else "key two"] += 1
        if self.broken:
            return web.json_response({"error": {"message": "invalid key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        return app


async def measure(roles: int, *, interval_s: float, window_s: float) -> dict[str, Any]:
    """One role count's numbers (see the module docstring)."""
    upstream = CountingUpstream()
    up_runner, up_port = await start(upstream.app(), host="127.0.0.1", port=0)
    base = f"http://127.0.0.1:{up_port}/v1"
    runtime = Runtime()
    runtime.apply(
        GatewayConfig(
            roles=[role_config(f"r{i:05}", base_url=base, key=KEYS[i % 2]) for i in range(roles)]
        )
    )
    checker = HealthChecker(runtime, interval_s=interval_s, timeout_s=2.0)
    runner, _ = await start(create_app(runtime, health=checker), host="127.0.0.1", port=0)
    try:
        await eventually(lambda: checker.rounds >= 1, timeout_s=60, poll_s=0.01)
        before, rounds = Counter(upstream.lists), checker.rounds
        await asyncio.sleep(window_s)
        made = upstream.lists - before
        rounds = checker.rounds - rounds
        upstream.broken = True
        broke = time.monotonic()
        await eventually(
            lambda: all(v.state == "Unauthorized" for v in checker.verdicts.values()),
            timeout_s=60,
            poll_s=0.005,
        )
        flip_s = time.monotonic() - broke
        annotation = encode(checker.published())
        report = UpstreamReport.decode(annotation)
        return {
            "roles": roles,
            "distinct_upstream_keys": 2,
            "interval_s": interval_s,
            "window_s": window_s,
            "rounds": rounds,
            "model_list_gets": dict(made),
            "gets_per_interval": round(sum(made.values()) / max(rounds, 1), 2),
            "broken_to_judged_s": round(flip_s, 3),
            "lease_annotation_bytes_all_failing": len(annotation.encode()),
            "lease_annotation_bound_bytes": MAX_UPSTREAM_BYTES,
            "roles_left_out_of_lease": report.more if report else None,
        }
    finally:
        await runner.cleanup()
        await up_runner.cleanup()


async def main(args: argparse.Namespace) -> None:
    for roles in args.roles:
        result = await measure(roles, interval_s=args.interval, window_s=args.window)
        print(json.dumps(result), flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.upstream_health", description=__doc__)
    p.add_argument("--roles", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--interval", type=float, default=1.0, help="check interval, s (1)")
    p.add_argument("--window", type=float, default=10.0, help="counting window, s (10)")
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
