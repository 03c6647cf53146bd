"""Figures of rolegate alone: memory per role count, reload time, reloads under load.

Owns :func:`rss_by_roles`, :func:`apply_time` and :func:`reloads_under_load`. Each starts
its own ``rolegate-gateway`` process (the real CLI, ``--manifests FILE``) so the
comparison's gateway is never disturbed, and stops it when done.

- memory: a gateway serving N roles, after one request to every role (so every role's
  metrics exist), its RSS now and its peak since it started (VmHWM summed over its
  process tree: :meth:`bench.procs.Meter.peak_rss_bytes`, never reset here, so loading
  the config counts);
- reload: from the moment a new manifest file is renamed into place until ``/readyz``
  reports a new config hash and ``/status`` says that reload was applied (polled every
  2 ms; a refusal or no new hash within the timeout is a failed reload, counted, not
  raised; the gateway polls its files every
  ``reload_interval_s``), for 1 -> N roles (all added) and N -> N (all rebound); plus the
  same config parsed and applied in this process, to split parse/validate from apply;
- reloads under load: ``reloads`` rebinds (the role's model alternates, so each builds a
  new wrapper and drains the old one) while the load generator keeps ``concurrency``
  requests in flight, every other one streamed; every failed request is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import LoadGen, measure, request_body
from bench.loadgen import Load
from bench.procs import Meter
from bench.stats import percentile
from bench.targets import (
    MODEL,
    UPSTREAM_MODEL,
    Target,
    role,
    stage_roles,
    start_rolegate,
    write_roles,
)
from devstack import http
from devstack.poll import wait_until
from devstack.process import Process
from rolegate_gateway import Runtime, load_manifests

__all__ = ["apply_time", "reloads_under_load", "rss_by_roles"]


def _names(count: int) -> list[str]:
    return [MODEL, *(f"{MODEL}-{i}" for i in range(1, count))]


def _roles(count: int, upstream_v1: str, *, model: str = UPSTREAM_MODEL) -> list[dict[str, Any]]:
    return [role(name, upstream_v1, model=model) for name in _names(count)]


def _config_hash(service: Process) -> str | None:
    answer = http.get(service.url + "/readyz", timeout_s=5)
    return str(answer.json().get("config")) if answer.status == 200 else None


def _last_reload(service: Process) -> dict[str, Any]:
    """``lastReload`` of ``/status`` (``{"outcome", "at", "configHash", ...}``), or {}."""
    answer = http.get(service.url + "/status", timeout_s=5)
    return (answer.json().get("lastReload") or {}) if answer.status == 200 else {}


def _target(service: Process) -> Target:
    return Target("rolegate", f"{service.url}/v1/chat/completions", {}, service, Meter.of(service))


def rss_by_roles(
    counts: list[int], upstream_v1: str, workdir: Path, loadgen: LoadGen
) -> list[dict[str, Any]]:
    """Per role count: ``{"roles", "rss_bytes", "peak_rss_bytes", "startup_s"}`` (RSS of the
    tree after one request to every role; peak: VmHWM summed over the tree, since start;
    startup: process start to /readyz 200)."""
    out = []
    for count in counts:
        manifests = write_roles(workdir / f"roles-{count}.yaml", _roles(count, upstream_v1))
        started = time.perf_counter()
        service = start_rolegate(manifests, log_path=workdir / f"rolegate-{count}-roles.log")
        startup_s = time.perf_counter() - started
        try:
            target = _target(service)
            load = Load(
                url=target.url,
                body=request_body(),
                concurrency=min(32, count),
                max_requests=count,
                max_duration_s=60,
                models=tuple(_names(count)),
            )
            result = measure(loadgen, target, load, reset_peak=False)
            assert target.meter is not None
            out.append(
                {
                    "roles": count,
                    "requests_ok": result["ok"],
                    "requests_failed": result["failed"],
                    "rss_bytes": target.meter.rss_bytes(),
                    "peak_rss_bytes": result["peak_rss_bytes"],
                    "startup_s": startup_s,
                }
            )
        finally:
            service.stop()
    return out


def _timed_write(
    service: Process, path: Path, docs: list[dict[str, Any]], *, timeout_s: float = 30
) -> tuple[float, str]:
    """Rename a file of ``docs`` onto ``path``; returns (seconds until the gateway serves
    it, outcome): ``applied`` (``/readyz`` shows a hash other than before, and
    ``/status`` lastReload says applied), ``refused`` (lastReload is a newer refusal),
    ``timeout`` or ``not applied: <outcome>``."""
    before = _config_hash(service)
    before_at = _last_reload(service).get("at")
    staged = stage_roles(path, docs)
    started = time.perf_counter()
    staged.replace(path)
    outcome = "timeout"
    next_status = started

    def settled() -> bool:
        nonlocal outcome, next_status
        current = _config_hash(service)
        if current not in (None, before):
            last = _last_reload(service)
            applied = last.get("outcome") == "applied" and last.get("configHash") == current
            outcome = "applied" if applied else f"not applied: {last.get('outcome')}"
            return True
        if time.perf_counter() >= next_status:  # a refusal leaves the hash as it was
            next_status = time.perf_counter() + 0.05
            last = _last_reload(service)
            if last.get("at") != before_at and last.get("outcome") == "refused":
                outcome = "refused"
                return True
        return False

    with contextlib.suppress(TimeoutError):
        wait_until(settled, timeout_s=timeout_s, poll_s=0.002, tolerate=(OSError,))
    return time.perf_counter() - started, outcome


def _in_process(path: Path) -> tuple[float, float]:
    """(parse + validate seconds, Runtime.apply seconds) of the manifests at ``path``."""
    started = time.perf_counter()
    config = load_manifests(path)
    loaded = time.perf_counter()

    async def apply() -> float:
        runtime = Runtime()
        begin = time.perf_counter()
        runtime.apply(config)
        return time.perf_counter() - begin

    return loaded - started, asyncio.run(apply())


def apply_time(count: int, upstream_v1: str, workdir: Path) -> dict[str, Any]:
    """``{"roles", "apply_s", "rebind_s", "outcomes", "reload_interval_s",
    "load_manifests_s", "runtime_apply_s"}``: end to end through the CLI (1 -> ``count``
    roles, then all of them rebound; None where not applied), and the in-process split of
    the first."""
    interval_s = 0.01
    path = write_roles(workdir / "apply.yaml", _roles(1, upstream_v1))
    service = start_rolegate(
        path, log_path=workdir / "rolegate-apply.log", reload_interval_s=interval_s
    )
    try:
        apply_s, apply_outcome = _timed_write(service, path, _roles(count, upstream_v1))
        rebind_s, rebind_outcome = _timed_write(
            service, path, _roles(count, upstream_v1, model="rebound")
        )
    finally:
        service.stop()
    load_s, runtime_s = _in_process(
        write_roles(workdir / "apply-in-process.yaml", _roles(count, upstream_v1))
    )
    return {
        "roles": count,
        "apply_s": apply_s if apply_outcome == "applied" else None,
        "rebind_s": rebind_s if rebind_outcome == "applied" else None,
        "outcomes": [apply_outcome, rebind_outcome],
        "reload_interval_s": interval_s,
        "load_manifests_s": load_s,
        "runtime_apply_s": runtime_s,
    }


def _reloader(
    service: Process, path: Path, upstream_v1: str, reloads: int, done: list[tuple[float, str]]
) -> Callable[[], None]:
    def run() -> None:
        time.sleep(0.2)  # let the load settle first
        for i in range(reloads):
            model = f"{UPSTREAM_MODEL}-{'ab'[i % 2]}"
            docs = [role(MODEL, upstream_v1, model=model)]
            done.append(_timed_write(service, path, docs, timeout_s=10))
            time.sleep(0.05)  # let requests run on this config before the next

    return run


def reloads_under_load(
    upstream_v1: str,
    workdir: Path,
    loadgen: LoadGen,
    *,
    reloads: int = 20,
    concurrency: int = 32,
) -> dict[str, Any]:
    """``{"reloads", "applied", "failed_reloads": {outcome: count}, "concurrency",
    "requests", "failed", "errors", "duration_s", "reload_p50_s", "reload_max_s"}``
    (reload times of the applied ones); ``failed`` must be 0."""
    path = write_roles(workdir / "reload.yaml", [role(MODEL, upstream_v1)])
    service = start_rolegate(path, log_path=workdir / "rolegate-reload.log", reload_interval_s=0.02)
    done: list[tuple[float, str]] = []
    try:
        target = _target(service)
        load = Load(
            url=target.url,
            body=request_body(),
            stream="mixed",
            concurrency=concurrency,
            warmup_requests=2 * concurrency,
            max_requests=10_000_000,
            max_duration_s=120,
        )
        result = measure(
            loadgen, target, load, during=_reloader(service, path, upstream_v1, reloads, done)
        )
    finally:
        service.stop()
    times_s = [seconds for seconds, outcome in done if outcome == "applied"]
    return {
        "reloads": reloads,
        "applied": len(times_s),
        "failed_reloads": dict(Counter(o for _, o in done if o != "applied")),
        "concurrency": concurrency,
        "requests": result["ok"] + result["failed"],
        "failed": result["failed"],
        "errors": result["errors"],
        "duration_s": result["elapsed_s"],
        "reload_p50_s": percentile(times_s, 0.5),
        "reload_max_s": max(times_s) if times_s else None,
    }
