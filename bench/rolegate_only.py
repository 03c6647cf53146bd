"""Figures of rolegate alone: memory per role count, reload time, reloads under load.

Owns :func:`rss_by_roles`, :func:`apply_time` and :func:`reloads_under_load`. Each starts
its own ``rolegate-gateway`` process (the real CLI, ``--manifests FILE``) so the
comparison's gateway is never disturbed, and stops it when done.

- memory: a gateway serving N roles, after one request to every role (so every role's
  metrics exist), its RSS now and its peak (VmHWM);
- reload: from the moment a new manifest file is renamed into place until ``/readyz``
  reports the new config hash (polled every 2 ms; the gateway polls its files every
  ``reload_interval_s``), for 1 -> N roles (all added) and N -> N (all rebound); plus the
  same config parsed and applied in this process, to split parse/validate from apply;
- reloads under load: ``reloads`` rebinds (the role's model alternates, so each builds a
  new wrapper and drains the old one) while the load generator keeps ``concurrency``
  requests in flight, every other one streamed; every failed request is counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import LoadGen, measure, request_body
from bench.loadgen import Load
from bench.procs import Meter, Service, http_get, wait_until
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
from rolegate_gateway import Runtime, load_manifests

__all__ = ["apply_time", "reloads_under_load", "rss_by_roles"]


def _names(count: int) -> list[str]:
    return [MODEL, *(f"{MODEL}-{i}" for i in range(1, count))]


def _roles(count: int, upstream_v1: str, *, model: str = UPSTREAM_MODEL) -> list[dict[str, Any]]:
    return [role(name, upstream_v1, model=model) for name in _names(count)]


def _config_hash(service: Service) -> str | None:
    status, body = http_get(service.url + "/readyz", timeout_s=5)
    return str(json.loads(body).get("config")) if status == 200 else None


def _target(service: Service) -> Target:
    return Target(
        "rolegate", f"{service.url}/v1/chat/completions", {}, service, Meter(service.proc.pid)
    )


def rss_by_roles(
    counts: list[int], upstream_v1: str, workdir: Path, loadgen: LoadGen
) -> list[dict[str, Any]]:
    """Per role count: ``{"roles", "rss_bytes", "peak_rss_bytes", "startup_s"}`` (RSS after
    one request to every role; peak: VmHWM; startup: process start to /readyz 200)."""
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
            result = measure(loadgen, target, load)
            assert target.meter is not None
            out.append(
                {
                    "roles": count,
                    "requests_ok": result["ok"],
                    "requests_failed": result["failed"],
                    "rss_bytes": target.meter.rss_bytes(),
                    "peak_rss_bytes": target.meter.hwm_bytes(),
                    "startup_s": startup_s,
                }
            )
        finally:
            service.stop()
    return out


def _timed_write(service: Service, path: Path, docs: list[dict[str, Any]]) -> float:
    """Seconds from renaming a file of ``docs`` onto ``path`` until the gateway serves the
    new config."""
    before = _config_hash(service)
    staged = stage_roles(path, docs)
    started = time.perf_counter()
    staged.replace(path)
    wait_until(lambda: _config_hash(service) != before, timeout_s=60)
    return time.perf_counter() - started


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
    """``{"roles", "apply_s", "rebind_s", "reload_interval_s", "load_manifests_s",
    "runtime_apply_s"}``: end to end through the CLI (1 -> ``count`` roles, then all of
    them rebound), and the in-process split of the first."""
    interval_s = 0.01
    path = write_roles(workdir / "apply.yaml", _roles(1, upstream_v1))
    service = start_rolegate(
        path, log_path=workdir / "rolegate-apply.log", reload_interval_s=interval_s
    )
    try:
        apply_s = _timed_write(service, path, _roles(count, upstream_v1))
        rebind_s = _timed_write(service, path, _roles(count, upstream_v1, model="rebound"))
    finally:
        service.stop()
    load_s, runtime_s = _in_process(
        write_roles(workdir / "apply-in-process.yaml", _roles(count, upstream_v1))
    )
    return {
        "roles": count,
        "apply_s": apply_s,
        "rebind_s": rebind_s,
        "reload_interval_s": interval_s,
        "load_manifests_s": load_s,
        "runtime_apply_s": runtime_s,
    }


def _reloader(
    service: Service, path: Path, upstream_v1: str, reloads: int, times_s: list[float]
) -> Callable[[], None]:
    def run() -> None:
        time.sleep(0.2)  # let the load settle first
        for i in range(reloads):
            model = f"{UPSTREAM_MODEL}-{'ab'[i % 2]}"
            times_s.append(_timed_write(service, path, [role(MODEL, upstream_v1, model=model)]))
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
    """``{"reloads", "applied", "concurrency", "requests", "failed", "errors",
    "duration_s", "reload_p50_s", "reload_max_s"}``; ``failed`` must be 0."""
    path = write_roles(workdir / "reload.yaml", [role(MODEL, upstream_v1)])
    service = start_rolegate(path, log_path=workdir / "rolegate-reload.log", reload_interval_s=0.02)
    times_s: list[float] = []
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
            loadgen, target, load, during=_reloader(service, path, upstream_v1, reloads, times_s)
        )
        status = json.loads(http_get(service.url + "/status")[1])
    finally:
        service.stop()
    return {
        "reloads": reloads,
        "applied": len(times_s),
        "last_reload": status.get("lastReload", {}).get("outcome"),
        "concurrency": concurrency,
        "requests": result["ok"] + result["failed"],
        "failed": result["failed"],
        "errors": result["errors"],
        "duration_s": result["elapsed_s"],
        "reload_p50_s": percentile(times_s, 0.5),
        "reload_max_s": max(times_s) if times_s else None,
    }
