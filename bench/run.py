"""``python -m bench.run`` (``make bench``): one whole benchmark run, written to files.

Owns :class:`Settings`, :func:`run` and the command line. A run starts the upstream, the
load generator and the targets (direct, rolegate, and the peers of :mod:`bench.peers`:
LiteLLM, TensorZero, Portkey's gateway, nginx; each installed into the cache on first use; a
peer that cannot be installed here is reported as skipped with the reason, one that does not
start as an error, and the others still run), measures them
side by side (:mod:`bench.compare`), stops the proxies, measures rolegate alone
(:mod:`bench.rolegate_only`), and writes ``<out>/<name>.json``, ``.md`` and ``.png``.
Logs and manifests go to a temporary directory, removed at the end unless ``--keep`` or a
failure (then its path is printed).
Every process is stopped on the way out, whatever ends the run (an error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, rolegate_only
from bench.compare import MIN_P99_SAMPLES, Budget, Case, LoadGen, aggregate, compare, ints
from bench.peers import PEER_NAMES, PEERS, start_peer
from bench.procs import Meter
from bench.targets import MODEL, Target, role, start_rolegate, start_upstream, write_roles
from bench.upstream import UpstreamSettings
from devstack.process import Process, work_dir

__all__ = ["Settings", "main", "run"]

SCHEMA = "rolegate.dev/bench/v1"


@dataclass(frozen=True)
class Settings:
    """Everything a run varies. Counts are requests or roles; durations are seconds."""

    rounds: int = 3
    concurrency: tuple[int, ...] = (1, 32, 256)
    budget: Budget = field(default_factory=Budget)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    role_counts: tuple[int, ...] = (1, 100, 1000)
    apply_roles: int = 1000
    reloads: int = 20
    reload_concurrency: int = 32
    min_p99_samples: int = MIN_P99_SAMPLES
    #: Another rolegate checkout measured beside this one as target ``baseline`` (a
    #: before/after comparison in one run); None: not measured.
    baseline: Path | None = None
    #: The peers measured (names from :data:`bench.peers.PEER_NAMES`), in that order.
    peers: tuple[str, ...] = PEER_NAMES


def _commit() -> str:
    """The checkout's commit (short), ``+dirty`` when it has changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _versions(info: dict[str, dict[str, Any]]) -> dict[str, str]:
    """rolegate's (with the commit), aiohttp's, and each peer's that ran (``node`` too)."""
    import aiohttp

    versions = {
        "rolegate": f"{metadata.version('rolegate')} ({_commit()})",
        "aiohttp": aiohttp.__version__,
    }
    for name in PEER_NAMES:
        record = info.get(name, {})
        if "url" in record:
            versions[name] = record["version"]
            if record.get("node"):
                versions["node"] = record["node"]
    return versions


def _say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _start_targets(
    workdir: Path, upstream: Process, key: str, stack: contextlib.ExitStack, settings: Settings
) -> tuple[list[Target], dict[str, dict[str, Any]]]:
    """Direct, rolegate, the baseline checkout's rolegate (when given) and the peers asked
    for that install and start, each stopped by ``stack``; and what the results say of each
    (a peer that does not run: ``skipped`` or ``error``, see :func:`bench.peers.start_peer`)."""
    upstream_v1 = f"{upstream.url}/v1"
    auth = {"Authorization": f"Bearer {key}"}  # sent to all: same request everywhere
    targets = [Target("direct", f"{upstream_v1}/chat/completions", auth)]
    info: dict[str, dict[str, Any]] = {"direct": {"url": upstream_v1}}
    manifests = write_roles(workdir / "roles.yaml", [role(MODEL, upstream_v1)])
    gateway = start_rolegate(manifests, log_path=workdir / "rolegate.log")
    stack.callback(gateway.stop)
    targets.append(
        Target("rolegate", f"{gateway.url}/v1/chat/completions", auth, gateway, Meter.of(gateway))
    )
    info["rolegate"] = {
        "url": f"{gateway.url}/v1",
        "command": "rolegate-gateway --manifests FILE",
        "workers": 1,
    }
    if settings.baseline is not None:
        base = start_rolegate(
            manifests, log_path=workdir / "baseline.log", src=settings.baseline.resolve()
        )
        stack.callback(base.stop)
        targets.append(
            Target("baseline", f"{base.url}/v1/chat/completions", auth, base, Meter.of(base))
        )
        info["baseline"] = {"url": f"{base.url}/v1", "src": str(settings.baseline)}
    for peer in PEERS:
        if peer.name not in settings.peers:
            continue
        _say(f"starting {peer.name} {peer.version} (installed first when missing) ...")
        target, info[peer.name] = start_peer(peer, workdir, upstream_v1, auth)
        if target is None:
            why = info[peer.name].get("skipped") or info[peer.name].get("error")
            _say(f"{peer.name} {'skipped' if 'skipped' in info[peer.name] else 'failed'}: {why}")
            continue
        assert target.service is not None
        stack.callback(target.service.stop)
        targets.append(target)
    return targets, info


def run(settings: Settings, *, out_dir: Path, name: str, keep: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document also written to ``out_dir/name.json``
    (with ``name.md`` and ``name.png`` beside it).

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: the upstream, rolegate or
            the load generator failed to start.
    """
    started = time.monotonic()
    loadavg_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(work_dir("rolegate-bench-", keep=keep))
        upstream = start_upstream(workdir, settings.upstream)
        stack.callback(upstream.stop)
        loadgen = LoadGen(workdir / "loadgen.log")
        stack.callback(loadgen.close)
        key = "sk-" + secrets.token_urlsafe(32)
        targets, info = _start_targets(workdir, upstream, key, stack, settings)
        cases = [Case(s, c) for s in (False, True) for c in settings.concurrency]
        runs = compare(
            loadgen, targets, cases, rounds=settings.rounds, budget=settings.budget, progress=_say
        )
        results = aggregate(runs, cases, min_p99_samples=settings.min_p99_samples)
        for target in targets:
            if target.meter is not None:
                mine = [r for r in runs if r["target"] == target.name]
                info[target.name]["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in mine)
                info[target.name]["processes"] = max(r["processes"] for r in mine)
                info[target.name]["threads"] = target.meter.thread_count()
            if target.service is not None:
                target.service.stop()
        _say("rolegate alone: memory by role count, reload time, reloads under load ...")
        upstream_v1 = f"{upstream.url}/v1"
        alone = {
            "rss_by_roles": rolegate_only.rss_by_roles(
                list(settings.role_counts), upstream_v1, workdir, loadgen
            ),
            "apply": rolegate_only.apply_time(settings.apply_roles, upstream_v1, workdir),
            "reloads_under_load": rolegate_only.reloads_under_load(
                upstream_v1,
                workdir,
                loadgen,
                reloads=settings.reloads,
                concurrency=settings.reload_concurrency,
            ),
        }
    for run_ in runs:  # the raw samples are pooled in "results"; too many to keep
        del run_["latencies_s"], run_["ttfts_s"]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": list(loadavg_before),
            "loadavg_after": list(os.getloadavg()),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": _versions(info),
        "settings": {
            "rounds": settings.rounds,
            "concurrency": list(settings.concurrency),
            **dataclasses.asdict(settings.budget),
            "min_p99_samples": settings.min_p99_samples,
            "upstream": dataclasses.asdict(settings.upstream),
        },
        "targets": info,
        "results": results,
        "rolegate_alone": alone,
        "runs": runs,
        "duration_s": time.monotonic() - started,
    }
    doc["goals"] = report.goals(doc)
    doc["peers"] = report.peer_figures(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(report.markdown(doc))
    report.chart(doc, out_dir / f"{name}.png")
    _say(f"done in {doc['duration_s']:.0f} s: {out_dir / name}.{{json,md,png}}")
    return doc


def main(argv: list[str] | None = None) -> int:
    """The command line; see ``--help``."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    d = Settings()
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="(bench/results)")
    p.add_argument("--name", default=datetime.now(UTC).strftime("%Y-%m-%d"), help="file stem")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--concurrency", type=ints, default=d.concurrency, help="e.g. 1,32,256")
    p.add_argument("--max-requests", type=int, default=d.budget.max_requests)
    p.add_argument("--max-duration-s", type=float, default=d.budget.max_duration_s)
    p.add_argument("--delay-s", type=float, default=d.upstream.delay_s)
    p.add_argument("--chunks", type=int, default=d.upstream.chunks)
    p.add_argument("--chunk-interval-s", type=float, default=d.upstream.chunk_interval_s)
    p.add_argument("--role-counts", type=ints, default=d.role_counts, help="e.g. 1,100,1000")
    p.add_argument("--apply-roles", type=int, default=d.apply_roles)
    p.add_argument("--reloads", type=int, default=d.reloads)
    p.add_argument("--keep", action="store_true", help="keep logs and manifests")
    p.add_argument(
        "--baseline",
        type=Path,
        help="another rolegate checkout (e.g. a git worktree of an older commit) measured "
        "beside this one as target 'baseline'",
    )
    for name in PEER_NAMES:
        p.add_argument(f"--no-{name}", action="store_true", help=f"leave {name} out")
    p.add_argument(
        "--no-peers", action="store_true", help="measure direct and rolegate (and --baseline) only"
    )
    args = p.parse_args(argv)
    peers = () if args.no_peers else tuple(n for n in PEER_NAMES if not getattr(args, f"no_{n}"))
    settings = Settings(
        rounds=args.rounds,
        concurrency=args.concurrency,
        budget=Budget(max_requests=args.max_requests, max_duration_s=args.max_duration_s),
        upstream=UpstreamSettings(args.delay_s, args.chunks, args.chunk_interval_s),
        role_counts=args.role_counts,
        apply_roles=args.apply_roles,
        reloads=args.reloads,
        baseline=args.baseline,
        peers=peers,
    )
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        run(settings, out_dir=args.out, name=args.name, keep=args.keep)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run as Ctrl-C does: ``with`` blocks stop every process."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
