"""What translation costs: a translated binding beside the pass-through, same upstream timing.

``python -m bench.translated [--rounds N] [--concurrency 1,8] [--json]`` starts the
benchmark's upstream (:mod:`bench.upstream`, which gives the same answer with the same
timing in OpenAI's, Anthropic's and Bedrock's protocol) and three ``rolegate-gateway``
processes, each serving the role ``bench`` on another binding: ``vllm`` (the byte
pass-through), ``anthropic`` and ``bedrock`` (SigV4 with static keys; the upstream does not
check them). The load generator measures them and the upstream itself (``direct``, in
OpenAI's protocol) in turn, every case, several rounds (:func:`bench.compare.compare`).

Printed per case and binding: throughput, latency and time-to-first-token percentiles,
CPU per 1,000 requests of the gateway process, and the translated bindings' added time to
first token over the pass-through's (pooled p50 minus pooled p50). The figures are
ratios within one run; loopback only; bounded by the budget's window per measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from bench.compare import Budget, Case, LoadGen, aggregate, compare, ints, markdown_rows
from bench.procs import Meter
from bench.targets import Target, role, start_rolegate, start_upstream, write_roles
from bench.upstream import UpstreamSettings
from devstack.process import work_dir

__all__ = ["BINDINGS", "main", "measure"]

#: The bindings measured; the first is the pass-through the others are compared with.
BINDINGS = ("vllm", "anthropic", "bedrock")


def _role(binding: str, upstream: str) -> list[dict[str, Any]]:
    """The manifests of role ``bench`` on ``binding`` at the upstream (base URL)."""
    doc = role("bench", f"{upstream}/v1")
    spec = doc["spec"]
    if binding == "vllm":
        return [doc]
    spec["binding"] = binding
    spec["host"] = upstream
    spec["credentials"] = {"secretRef": {"name": "bench-creds"}}
    data = {"apiKey": "bench-key"}
    if binding == "bedrock":
        spec["bedrock"] = {"region": "us-east-1"}
        data = {"awsAccessKeyId": "AKIDBENCH", "awsSecretAccessKey": "bench-secret"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bench-creds", "namespace": "default"},
        "stringData": data,
    }
    return [doc, secret]


def measure(
    *, rounds: int, concurrency: tuple[int, ...], budget: Budget, upstream: UpstreamSettings
) -> dict[str, Any]:
    """Run the comparison; returns ``{"results": [aggregate rows], "added_ttft_ms":
    {binding: {"stream c=N": ms}}, "settings": {...}}``.

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: a process did not start.
    """
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(work_dir("rolegate-translated-", keep=False))
        up = start_upstream(workdir, upstream)
        stack.callback(up.stop)
        loadgen = LoadGen(workdir / "loadgen.log")
        stack.callback(loadgen.close)
        targets = [Target("direct", f"{up.url}/v1/chat/completions")]
        for binding in BINDINGS:
            manifests = write_roles(workdir / f"{binding}.yaml", _role(binding, up.url))
            gateway = start_rolegate(manifests, log_path=workdir / f"{binding}.log")
            stack.callback(gateway.stop)
            url = f"{gateway.url}/v1/chat/completions"
            targets.append(Target(binding, url, {}, gateway, Meter.of(gateway)))
        cases = [Case(s, c) for s in (False, True) for c in concurrency]
        runs = compare(loadgen, targets, cases, rounds=rounds, budget=budget, progress=_say)
        results = aggregate(runs, cases)
    rows = {(r["target"], r["stream"], r["concurrency"]): r for r in results}
    added: dict[str, dict[str, float | None]] = {}
    for binding in BINDINGS[1:]:
        added[binding] = {}
        for c in concurrency:
            mine = rows.get((binding, True, c), {}).get("ttft_p50_ms")
            base = rows.get((BINDINGS[0], True, c), {}).get("ttft_p50_ms")
            added[binding][f"stream c={c}"] = (
                None if mine is None or base is None else round(mine - base, 3)
            )
    return {
        "settings": {
            "rounds": rounds,
            "concurrency": list(concurrency),
            "max_duration_s": budget.max_duration_s,
            "upstream": {
                "delay_s": upstream.delay_s,
                "chunks": upstream.chunks,
                "chunk_interval_s": upstream.chunk_interval_s,
            },
        },
        "results": results,
        "added_ttft_ms": added,
    }


def _say(line: str) -> None:
    print(f"bench.translated: {line}", file=sys.stderr, flush=True)


def _table(doc: dict[str, Any]) -> str:
    lines = [
        "| case | binding | req/s | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | CPU s/1000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ("throughput_rps", "latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p99_ms")
    lines += markdown_rows(doc["results"], (*keys, "cpu_s_per_1000"))
    lines.append("")
    for binding, cases in doc["added_ttft_ms"].items():
        said = ", ".join(f"{case}: {ms} ms" for case, ms in cases.items())
        lines.append(f"added time to first token, {binding} over pass-through: {said}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line; see ``--help``."""
    p = argparse.ArgumentParser(prog="python -m bench.translated", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=ints, default=(1, 8), help="e.g. 1,8")
    p.add_argument("--max-duration-s", type=float, default=3.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-interval-s", type=float, default=0.001)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    doc = measure(
        rounds=args.rounds,
        concurrency=args.concurrency,
        budget=Budget(max_duration_s=args.max_duration_s),
        upstream=UpstreamSettings(0.0, args.chunks, args.chunk_interval_s),
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(_table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
