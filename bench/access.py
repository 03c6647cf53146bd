"""What client access costs: an authenticated request on the cached path beside an open one.

``python -m bench.access [--rounds N] [--concurrency 1,32] [--json FILE]`` starts a real
control plane (devstack's; its binaries are built into the cache on first use), the
benchmark's upstream and three ``rolegate-gateway`` processes serving the same role
``bench`` from the same manifests:

- ``none``: ``--auth none`` (no check at all);
- ``keys``: ``--auth keys``, the client sends an API key (a hash lookup);
- ``kubernetes``: ``--auth kubernetes``, the client sends a ServiceAccount token minted
  for the audience ``rolegate`` and bound to the role by a RoleBinding: a TokenReview and a
  SubjectAccessReview on the first request, then the caches.

The load generator measures them and the upstream (``direct``) in turn, every case,
several rounds (:func:`bench.compare.compare`). Printed: the rows, each gateway's added
p50 latency over ``none`` (pooled p50 minus pooled p50, the same run), and the reviews the
``kubernetes`` gateway asked of the API server for all the requests it served (its
``/status``), and the in-process cost of the cached path alone (:func:`cached_path_us`:
the machine's noise hides a few microseconds in end-to-end latency). Loopback only; bounded
by the budget's window per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.compare import Budget, Case, LoadGen, aggregate, compare, ints, markdown_rows
from bench.procs import Meter
from bench.targets import Target, role, start_rolegate, start_upstream, write_roles
from bench.upstream import UpstreamSettings
from devstack.k8s.controlplane import ControlPlane
from devstack.process import work_dir
from rolegate_gateway.auth.access import Access, Identity, Review
from rolegate_gateway.config import ApiKey, GatewayConfig, RoleConfig, key_digest
from rolegate_gateway.manifests import load_manifests

__all__ = ["MODES", "main", "measure"]

#: The gateways measured; the first is the open one the others are compared with.
MODES = ("none", "keys", "kubernetes")
_API_KEY = "bench-api-key-0123456789abcdef"
_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rolegate-bench-user}
rules: [{apiGroups: [rolegate.dev], resources: [llmroles], verbs: [use]}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bench-client, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bench-client-use, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rolegate-bench-user}
subjects: [{kind: ServiceAccount, name: bench-client, namespace: default}]
"""


def _manifests(upstream: str) -> list[dict[str, Any]]:
    key = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "bench-client-key",
            "namespace": "default",
            "labels": {"rolegate.dev/api-key": "true"},
            "annotations": {"rolegate.dev/roles": "bench"},
        },
        "stringData": {"apiKey": _API_KEY},
    }
    return [role("bench", f"{upstream}/v1"), key]


def _reviews(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/status", timeout=5) as answer:
        access: dict[str, Any] = json.load(answer)["access"]
    return access


class _Granting:
    """A reviewer that knows one token and grants everything: the caches are what is
    measured, so it is asked once per key."""

    async def token(self, token: str) -> Review:
        return Review(Identity(user="system:serviceaccount:default:bench-client"))

    async def allowed(self, identity: Identity, namespace: str, name: str) -> tuple[bool, str]:
        return True, ""

    async def close(self) -> None:
        pass


def cached_path_us(role: RoleConfig, *, calls: int = 100_000) -> dict[str, float]:
    """Microseconds per request of identify + authorize on warm caches, in-process (no
    HTTP), for ``keys`` (an API key: a hash and a dict lookup) and ``kubernetes`` (a
    ServiceAccount token: the hash, the token cache, the decision cache)."""
    headers = {"Authorization": f"Bearer {_API_KEY}"}
    token = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl" + "x" * 800}
    key = ApiKey(namespace="default", name="k", sha256=key_digest(_API_KEY), roles=("*",))
    gates = {
        "keys": (Access("keys"), headers),
        "kubernetes": (Access("kubernetes", reviewer=_Granting()), token),
    }

    async def run() -> dict[str, float]:
        out = {}
        for mode, (access, sent) in gates.items():
            access.sync(GatewayConfig(api_keys=(key,)))
            await access.authorize(await access.identify(sent), role)  # warm
            started = time.perf_counter()
            for _ in range(calls):
                await access.authorize(await access.identify(sent), role)
            out[mode] = round((time.perf_counter() - started) / calls * 1e6, 2)
        return out

    return asyncio.run(run())


def measure(
    *, rounds: int, concurrency: tuple[int, ...], budget: Budget, upstream: UpstreamSettings
) -> dict[str, Any]:
    """Run the comparison; returns ``{"results": [aggregate rows], "added_p50_ms":
    {mode: {case: ms}}, "reviews": {"tokenReviews": n, "accessReviews": n, "requests": n},
    "settings": {...}}``.

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: a process did not start.
        devstack.k8s.controlplane.ControlPlaneError: the control plane did not start.
    """
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(work_dir("rolegate-access-", keep=False))
        _say("starting a control plane")
        plane = stack.enter_context(ControlPlane())
        plane.kubectl(["apply", "-f", "-"], input=_RBAC)
        token = plane.kubectl(
            ["create", "token", "bench-client", "--audience", "rolegate", "--duration", "1h"],
            namespace="default",
        ).stdout.strip()
        up = start_upstream(workdir, upstream)
        stack.callback(up.stop)
        manifests = write_roles(workdir / "roles.yaml", _manifests(up.url))
        loadgen = LoadGen(workdir / "loadgen.log")
        stack.callback(loadgen.close)
        targets = [Target("direct", f"{up.url}/v1/chat/completions")]
        credentials = {"none": None, "keys": _API_KEY, "kubernetes": token}
        gateways = {}
        for mode in MODES:
            extra = ["--auth", mode]
            if mode == "kubernetes":
                extra += ["--kubeconfig", str(plane.kubeconfig)]
            gateway = start_rolegate(manifests, log_path=workdir / f"{mode}.log", extra=extra)
            stack.callback(gateway.stop)
            gateways[mode] = gateway
            secret = credentials[mode]
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            url = f"{gateway.url}/v1/chat/completions"
            targets.append(Target(mode, url, headers, gateway, Meter.of(gateway)))
        cases = [Case(s, c) for s in (False, True) for c in concurrency]
        runs = compare(loadgen, targets, cases, rounds=rounds, budget=budget, progress=_say)
        results = aggregate(runs, cases)
        access = _reviews(gateways["kubernetes"].url)
        cached = cached_path_us(load_manifests(manifests).roles[0])
    rows = {(r["target"], r["stream"], r["concurrency"]): r for r in results}
    added: dict[str, dict[str, float | None]] = {}
    for mode in MODES[1:]:
        added[mode] = {}
        for stream in (False, True):
            for c in concurrency:
                mine = rows.get((mode, stream, c), {}).get("latency_p50_ms")
                base = rows.get((MODES[0], stream, c), {}).get("latency_p50_ms")
                case = f"{'stream' if stream else 'plain'} c={c}"
                added[mode][case] = None if mine is None or base is None else round(mine - base, 3)
    served = sum(r["ok"] + r["failed"] for r in results if r["target"] == "kubernetes")
    return {
        "settings": {
            "rounds": rounds,
            "concurrency": list(concurrency),
            "max_duration_s": budget.max_duration_s,
        },
        "results": results,
        "added_p50_ms": added,
        "cached_path_us": cached,
        "reviews": {
            "tokenReviews": access["tokenReviews"]["made"],
            "accessReviews": access["accessReviews"]["made"],
            "requests": served,
        },
    }


def _say(line: str) -> None:
    print(f"bench.access: {line}", file=sys.stderr, flush=True)


def _table(doc: dict[str, Any]) -> str:
    lines = [
        "| case | target | req/s | p50 ms | p99 ms | CPU s/1000 | ok | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ("throughput_rps", "latency_p50_ms", "latency_p99_ms", "cpu_s_per_1000")
    lines += markdown_rows(doc["results"], keys, counts=True)
    lines.append("")
    for mode, cases in doc["added_p50_ms"].items():
        said = ", ".join(f"{case}: {ms} ms" for case, ms in cases.items())
        lines.append(f"added p50 latency, --auth {mode} over --auth none: {said}")
    for mode, us in doc["cached_path_us"].items():
        lines.append(f"cached path of --auth {mode}, in-process: {us} us per request")
    reviews = doc["reviews"]
    lines.append(
        f"--auth kubernetes asked {reviews['tokenReviews']} TokenReviews and "
        f"{reviews['accessReviews']} SubjectAccessReviews for {reviews['requests']} measured "
        "requests (and their warm-up)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line; see ``--help``."""
    p = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=ints, default=(1, 32), help="e.g. 1,32")
    p.add_argument("--max-duration-s", type=float, default=3.0)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    doc = measure(
        rounds=args.rounds,
        concurrency=args.concurrency,
        budget=Budget(max_duration_s=args.max_duration_s),
        upstream=UpstreamSettings(0.0, 8, 0.001),
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(_table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
