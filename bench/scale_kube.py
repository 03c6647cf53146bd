"""The control-plane part of :mod:`bench.scale`: LLMRoles applied with kubectl to a real
API server, served by the real operator and gateway processes.

Owns :func:`control_plane` (one devstack control plane, then :func:`kube_apply` per role
count, each in a fresh namespace with its own operator, run with ``--await-gateways``, and
gateway, its presence Lease on) and :func:`api_writes` (the API server's own count of write
requests, by resource and verb). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Meter
from devstack import http
from devstack.k8s.controlplane import ControlPlane
from devstack.stack import GatewayProcess, OperatorProcess, install_crd

__all__ = ["RESYNC_S", "api_key", "api_writes", "control_plane", "kube_apply", "role_name", "say"]

_TEAMS = ("search", "billing", "support", "ingest", "legal", "growth", "platform", "research")
_TASKS = ("extract", "keyword", "query", "summarize", "classify", "translate", "vlm", "rerank")
#: The resync interval of the operator here (seconds): the no-op pass is awaited this long.
RESYNC_S = 20.0


def say(line: str) -> None:
    """Progress, on stderr."""
    print(f"bench.scale {time.strftime('%H:%M:%S')}: {line}", file=sys.stderr, flush=True)


def role_name(i: int) -> str:
    """A realistic role name: ``<team>-<task>-<n>`` (``search-extract-00000``)."""
    return f"{_TEAMS[i % 8]}-{_TASKS[(i // 8) % 8]}-{i:05d}"


def api_key(length: int) -> str:
    """A random API key of ``length`` characters (``sk-`` and base64url: incompressible)."""
    return ("sk-" + secrets.token_urlsafe(length))[:length]


def _write_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _kube_docs(count: int, namespace: str, host: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """(Secrets, LLMRoles): role i is ``role_name(i)`` with its own Secret ``key-<i>``."""
    secrets_, roles = [], []
    for i in range(count):
        meta = {"name": f"key-{i:05d}", "namespace": namespace}
        secrets_.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta,
                "stringData": {"apiKey": api_key(72)},
            }
        )
        roles.append(
            {
                "apiVersion": "rolegate.dev/v1alpha1",
                "kind": "LLMRole",
                "metadata": {"name": role_name(i), "namespace": namespace},
                "spec": {
                    "binding": "openai",
                    "model": "bench-model",
                    "host": host,
                    "maxAsync": 4,
                    "credentials": {"secretRef": {"name": f"key-{i:05d}"}},
                    **({"options": {"temperature": 0.2}} if i % 3 == 0 else {}),
                },
            }
        )
    return secrets_, roles


def api_writes(plane: ControlPlane) -> dict[str, int]:
    """``{"<resource> <VERB>": count}`` of the API server's write requests so far
    (``apiserver_request_total`` of /metrics, summed over codes and scopes)."""
    text = plane.kubectl(["get", "--raw", "/metrics"], timeout_s=60).stdout
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            key = f"{labels.get('resource', '')} {labels['verb']}"
            out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _served(gateway: GatewayProcess) -> int:
    with contextlib.suppress(OSError, ValueError):
        return len(gateway.status().get("roles") or {})
    return -1


def _config_hash(gateway: GatewayProcess) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return str(http.get_json(gateway.url + "/readyz", timeout_s=5).get("config"))
    return None


def _ready_count(plane: ControlPlane, namespace: str) -> int:
    out = plane.kubectl(
        [
            "get",
            "llmroles",
            "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        ],
        namespace=namespace,
        timeout_s=120,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip() == "True")


def _wait(check: Callable[[], bool], *, timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll_s)
    return False


@contextlib.contextmanager
def _stack(
    plane: ControlPlane, namespace: str, workdir: Path, *, await_gateways: bool = True
) -> Iterator[tuple[Any, Any]]:
    """An operator (``--await-gateways`` unless told otherwise, resync every
    :data:`RESYNC_S`) and a gateway (its presence Lease on) for ``namespace``."""
    plane.kubectl(["create", "namespace", namespace])
    secret = f"{namespace}/gw-config"
    operator = OperatorProcess(
        kubeconfig=plane.kubeconfig,
        namespaces=[namespace],
        config_secret=secret,
        log_path=workdir / f"operator-{namespace}.log",
        extra=["--resync-interval", str(RESYNC_S), "--log-level", "debug"],
        await_gateways=await_gateways,
    )
    gateway = GatewayProcess(
        kubeconfig=plane.kubeconfig,
        config_secret=secret,
        log_path=workdir / f"gateway-{namespace}.log",
        log_level="info",
    )
    operator.start()
    gateway.start()
    try:
        operator.wait_live(timeout_s=60)
        gateway.wait_serving(timeout_s=60)
        yield operator, gateway
    finally:
        gateway.stop()
        operator.stop()


def _passes(log: Path) -> list[dict[str, Any]]:
    """The operator's ``reconciled: Pass(...)`` lines, as dicts."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"reconciled: Pass\((.*)\)", line)
        if found:
            fields = dict(re.findall(r"(\w+)=([^,]+)", found.group(1)))
            out.append({k: v.strip("'") for k, v in fields.items()})
    return out


def kube_apply(
    plane: ControlPlane,
    count: int,
    workdir: Path,
    host: str,
    *,
    changes: int = 0,
    server_side: bool = False,
    await_gateways: bool = True,
) -> dict[str, Any]:
    """``kubectl apply -f`` (``--server-side`` with ``server_side``) of ``count`` roles
    (their Secrets applied first, not timed) into a fresh namespace with its own operator
    and gateway; then, with ``changes``, that many one-role changes and a no-op resync."""
    namespace = f"scale-{count}{'-ssa' if server_side else ''}{'' if await_gateways else '-na'}"
    result: dict[str, Any] = {
        "roles": count,
        "server_side": server_side,
        "await_gateways": await_gateways,
    }
    with _stack(plane, namespace, workdir, await_gateways=await_gateways) as (operator, gateway):
        secrets_, roles = _kube_docs(count, namespace, host)
        say(f"{count} roles: applying {count} Secrets (setup, not timed)")
        plane.kubectl(
            [
                "apply",
                "--server-side",
                "-f",
                str(_write_docs(workdir / f"secrets-{count}.yaml", secrets_)),
            ],
            timeout_s=600,
        )
        meter = Meter.of(operator)
        peak = 0
        cpu_before, writes_before = meter.cpu_s(), api_writes(plane)
        path = _write_docs(workdir / f"roles-{count}.yaml", roles)
        say(f"{count} roles: kubectl apply -f {path.name}")
        started = time.perf_counter()
        ssa = ["--server-side"] if server_side else []
        plane.kubectl(["apply", *ssa, "-f", str(path)], timeout_s=600)
        result["kubectl_s"] = round(time.perf_counter() - started, 2)
        say(f"{count} roles: kubectl done in {result['kubectl_s']} s; waiting for the gateway")

        def all_served() -> bool:
            nonlocal peak
            peak = max(peak, meter.rss_bytes())
            return _served(gateway) == count

        ok = _wait(all_served, timeout_s=600, poll_s=0.2)
        result["served_s"] = round(time.perf_counter() - started, 2) if ok else None
        say(f"{count} roles: served by the gateway after {result['served_s']} s")

        def all_ready() -> bool:
            nonlocal peak
            peak = max(peak, meter.rss_bytes())
            return _ready_count(plane, namespace) == count

        ok = _wait(all_ready, timeout_s=600, poll_s=2)
        result["ready_s"] = round(time.perf_counter() - started, 2) if ok else None
        say(f"{count} roles: all Ready after {result['ready_s']} s")
        result["operator_cpu_s"] = round(meter.cpu_s() - cpu_before, 2)
        result["operator_rss_peak_sampled_bytes"] = peak
        result["operator_rss_bytes"] = meter.rss_bytes()
        result["operator_vmhwm_bytes"] = meter.peak_rss_bytes()
        result["gateway_rss_bytes"] = Meter.of(gateway).rss_bytes()
        result["api_writes"] = _diff(api_writes(plane), writes_before)
        sample = plane.kubectl(
            ["get", "llmrole", role_name(count - 1), "-o", "json"], namespace=namespace
        )
        status = json.loads(sample.stdout).get("status") or {}
        result["sample_status"] = {
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions", [])
            ],
            "gateways": status.get("gateways"),
        }
        if changes:
            log = workdir / f"operator-{namespace}.log"
            result["settle_s"] = _settle(log)
            result["noop_resync"] = _noop_resync(plane, operator, log)
            result["change"] = _changes(plane, namespace, gateway, changes, log)
    return result


def _settle(log: Path, *, quiet_s: float = 5.0, timeout_s: float = 300.0) -> float | None:
    """Wait until the operator is idle: its last pass wrote no status and no pass followed
    for ``quiet_s`` (with ``--await-gateways`` and more roles than a gateway Lease lists,
    every config change flips every role's Ready to RollingOut and back: thousands of
    writes). Seconds waited, None past ``timeout_s``."""
    started = time.monotonic()
    seen, since = -1, time.monotonic()
    while time.monotonic() - started < timeout_s:
        passes = _passes(log)
        if len(passes) != seen:
            seen, since = len(passes), time.monotonic()
        elif time.monotonic() - since >= quiet_s and passes[-1].get("statuses_written") == "0":
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def _changes(
    plane: ControlPlane, namespace: str, gateway: GatewayProcess, times: int, log: Path
) -> dict[str, Any]:
    """Rebind one role ``times`` times (a new model each), each once the operator is idle;
    seconds from ``kubectl patch`` starting until ``/readyz`` shows a new config hash, and
    until the operator was idle again (``settle_s``: its status writes of the change)."""
    took, settle = [], []
    for i in range(times):
        before = _config_hash(gateway)
        name = role_name(42 + i)
        patch = json.dumps({"spec": {"model": f"changed-{i}"}})
        started = time.perf_counter()
        plane.kubectl(
            ["patch", "llmrole", name, "--type", "merge", "-p", patch], namespace=namespace
        )
        ok = _wait(
            lambda was=before: _config_hash(gateway) not in (None, was),  # type: ignore[misc]
            timeout_s=60,
            poll_s=0.005,
        )
        took.append(round(time.perf_counter() - started, 3) if ok else None)
        model = gateway.status()["roles"][name].get("model")
        say(f"changed role {name}: served after {took[-1]} s (model {model})")
        settle.append(_settle(log))
        say(f"the operator was idle again {settle[-1]} s later")
    done = sorted(t for t in took if t is not None)
    return {
        "times_s": took,
        "settle_s": settle,
        "p50_s": done[len(done) // 2] if done else None,
        "max_s": done[-1] if done else None,
    }


def _noop_resync(plane: ControlPlane, operator: OperatorProcess, log: Path) -> dict[str, Any]:
    """Wait for the next fresh pass with nothing changed (the operator idle: :func:`_settle`
    first); its API writes and duration."""
    before_passes = len(_passes(log))
    writes_before = api_writes(plane)
    cpu_before = Meter.of(operator).cpu_s()
    say(f"waiting up to {2 * RESYNC_S:.0f} s for a no-op resync pass")

    def resynced() -> bool:
        return any(p.get("list_s") not in (None, "None") for p in _passes(log)[before_passes:])

    _wait(resynced, timeout_s=2 * RESYNC_S + 30, poll_s=0.5)
    time.sleep(1)
    fresh = [p for p in _passes(log)[before_passes:] if p.get("list_s") not in (None, "None")]
    writes = _diff(api_writes(plane), writes_before)
    return {
        "pass": fresh[0] if fresh else None,
        "passes_seen": len(_passes(log)) - before_passes,
        "api_writes": writes,
        "role_or_secret_writes": sum(
            v for k, v in writes.items() if k.split()[0] in ("secrets", "llmroles", "events")
        ),
        "operator_cpu_s": round(Meter.of(operator).cpu_s() - cpu_before, 2),
    }


def control_plane(
    counts: tuple[int, ...],
    workdir: Path,
    host: str,
    changes: int,
    *,
    both: bool = True,
    await_gateways: bool = True,
) -> list[Any]:
    """On one control plane: :func:`kube_apply` of the first count with client-side and
    (``both``) with server-side apply, then of each other count (the last with ``changes``
    one-role changes and a no-op resync)."""
    out = []
    with ControlPlane() as plane:
        install_crd(plane)
        first = changes * (len(counts) == 1)
        out.append(
            kube_apply(
                plane, counts[0], workdir, host, changes=first, await_gateways=await_gateways
            )
        )
        if both:
            out.append(kube_apply(plane, counts[0], workdir, host, server_side=True))
        for count in counts[1:]:
            last = count == counts[-1]
            out.append(kube_apply(plane, count, workdir, host, changes=changes if last else 0))
    return out
