"""rolegate with many roles: the config's size, the gateway alone, and the control plane.

``python -m bench.scale [--quick]`` measures, with progress on stderr, and writes
``bench/results/<date>-scale.{json,md}``:

1. **encoding**: the config Secret's size for 1,000 and 10,000 roles with realistic names
   (``<team>-<task>-<n>``, 8 namespaces, four bindings, options on a third of them) and a
   distinct random API key each (as many Secrets would hold), as plain JSON and gzipped
   (:mod:`rolegate_gateway.secret_data`), and per API key length how many roles fit a
   Secret;
2. **gateway alone** (:mod:`bench.rolegate_only`, the real ``rolegate-gateway --manifests``):
   RSS with 1, 1,000 and 10,000 roles after a request to each, the time to apply 10,000
   roles (from a file; and in this process: the config Secret's bytes decoded, parsed,
   validated and applied to a ``Runtime``);
3. **control plane** (devstack's etcd and kube-apiserver on loopback, the real operator
   and gateway processes, run as a user runs them: the operator with
   ``--await-gateways``, the gateway with its presence Lease): ``kubectl apply -f`` of one
   file of 1,000 and (a fresh namespace, operator and gateway) of 5,000 LLMRoles, each with
   its own API-key Secret applied beforehand, until the gateway serves every one (its
   ``/status``) and until every role is ``Ready``; the operator's RSS and CPU meanwhile;
   then with 5,000 roles present: one changed role until the gateway serves the change
   (``/readyz``'s config hash), several times; and a no-op resync: the API writes it makes
   (the API server's ``apiserver_request_total`` by resource and verb) and how long the
   pass takes (the operator's ``reconciled: Pass(...)`` log line).

Everything runs on 127.0.0.1; every wait is bounded. The machine is whatever this runs on
(the load average is recorded): on a shared 2-core machine the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench import rolegate_only
from bench.compare import LoadGen
from bench.scale_kube import api_key, control_plane, role_name, say
from bench.targets import start_upstream
from bench.upstream import UpstreamSettings
from devstack.process import work_dir
from rolegate_gateway import secret_data
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials, GatewayConfig, Limits, RoleConfig, Upstream
from rolegate_gateway.runtime import Runtime

__all__ = ["main", "measure"]

RESULTS = Path(__file__).resolve().parent / "results"
_BINDINGS = (
    (Binding.OPENAI, "gpt-4o-mini", "https://api.openai.com/v1"),
    (Binding.ANTHROPIC, "claude-3-5-haiku-20241022", "https://api.anthropic.com"),
    (Binding.AZURE_OPENAI, "gpt4o", "https://team-llm.openai.azure.com"),
    (Binding.VLLM, "Qwen/Qwen2.5-7B-Instruct", "http://vllm-qwen.team-ml.svc:8000/v1"),
)


def realistic_config(count: int, *, key_chars: int = 72) -> GatewayConfig:
    """``count`` roles as an operator renders them from realistic LLMRoles, each with its
    own random API key of ``key_chars`` characters."""
    roles = []
    for i in range(count):
        binding, model, url = _BINDINGS[i % 4]
        roles.append(
            RoleConfig(
                name=role_name(i),
                namespace=f"team-{role_name(i).split('-')[0]}",
                upstream=Upstream(
                    binding=binding,
                    model=model,
                    base_url=url,
                    timeout_s=180,
                    options={"temperature": 0.2} if i % 3 == 0 else {},
                    credentials=Credentials(api_key=SecretStr(api_key(key_chars))),
                    azure_api_version="2024-10-21" if binding is Binding.AZURE_OPENAI else None,
                    azure_deployment="gpt4o" if binding is Binding.AZURE_OPENAI else None,
                    anthropic_version="2023-06-01" if binding is Binding.ANTHROPIC else None,
                    anthropic_max_tokens=4096 if binding is Binding.ANTHROPIC else None,
                ),
                limits=Limits(max_async=4, queue_max_size=1000, queue_max_wait_s=60),
            )
        )
    return GatewayConfig(roles=tuple(roles))


def encoding(counts: tuple[int, ...], key_lengths: tuple[int, ...]) -> dict[str, Any]:
    """``{"by_roles": [{"roles", "raw_bytes", "gzip_bytes", "gzip_s", "margin"}],
    "by_key_chars": [{"key_chars", "gzip_bytes_per_role", "roles_per_secret"}]}``; margin:
    how many times the gzipped config fits a Secret's 1 MiB."""
    limit = secret_data.SECRET_MAX_BYTES
    rows = []
    for count in counts:
        raw = realistic_config(count).to_wire()
        started = time.perf_counter()
        data = secret_data.encode(raw)
        gzip_s = time.perf_counter() - started
        size = secret_data.stored_bytes(data)
        rows.append(
            {
                "roles": count,
                "raw_bytes": len(raw),
                "gzip_bytes": size,
                "gzip_s": round(gzip_s, 4),
                "margin": round(limit / size, 2),
            }
        )
    per_key = []
    for chars in key_lengths:
        sample = 2000
        size = len(gzip.compress(realistic_config(sample, key_chars=chars).to_wire(), 9, mtime=0))
        per_role = size / sample
        per_key.append(
            {
                "key_chars": chars,
                "gzip_bytes_per_role": round(per_role, 1),
                "roles_per_secret": int(limit / per_role),
            }
        )
    return {"secret_max_bytes": limit, "by_roles": rows, "by_key_chars": per_key}


def wire_apply(count: int) -> dict[str, float]:
    """Seconds to turn the config Secret's data of ``count`` roles into a served config in
    this process: ``decode_s`` (base64 + gunzip), ``parse_s`` (``GatewayConfig.from_wire``:
    JSON and validation), ``apply_s`` (``Runtime.apply`` of all of them, new)."""
    data = secret_data.encode(realistic_config(count).to_wire())
    started = time.perf_counter()
    raw = secret_data.decode(data)
    decoded = time.perf_counter()
    config = GatewayConfig.from_wire(raw)
    parsed = time.perf_counter()

    async def apply() -> float:
        warm = Runtime()  # the first apply of a process imports and builds what all share
        warm.apply(realistic_config(1))
        warm.close()
        runtime = Runtime()
        begin = time.perf_counter()
        runtime.apply(config)
        took = time.perf_counter() - begin
        runtime.close()
        return took

    apply_s = asyncio.run(apply())
    return {
        "roles": count,
        "decode_s": round(decoded - started, 4),
        "parse_s": round(parsed - decoded, 4),
        "apply_s": round(apply_s, 4),
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Everything in the module docstring; ``quick``: small counts (a smoke run)."""
    role_counts = (1, 50, 200) if quick else (1, 1000, 10_000)
    kube_counts = (50, 200) if quick else (1000, 5000)
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    say("encoding: config sizes")
    doc["encoding"] = encoding((1000, 10_000) if not quick else (100, 1000), (51, 64, 72, 110, 164))
    say("in-process: decode, parse and apply of the config Secret's data")
    doc["wire_apply"] = [wire_apply(c) for c in ((1000, 10_000) if not quick else (100,))]
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(work_dir("rolegate-scale-", keep=False))
        up = start_upstream(workdir, UpstreamSettings(0.0, 8, 0.001))
        stack.callback(up.stop)
        loadgen = LoadGen(workdir / "loadgen.log")
        stack.callback(loadgen.close)
        host = f"{up.url}/v1"
        say(f"gateway alone: RSS with {role_counts} roles")
        doc["rss"] = rolegate_only.rss_by_roles(list(role_counts), host, workdir, loadgen)
        say(f"gateway alone: applying {role_counts[-1]} roles from a file")
        doc["apply"] = rolegate_only.apply_time(role_counts[-1], host, workdir)
        say(f"control plane: kubectl apply of {kube_counts} roles")
        doc["kube"] = control_plane(kube_counts, workdir, host, changes=5)
    doc["load_after"] = os.getloadavg()
    return doc


def rerun_kube(count: int, *, changes: int = 3, await_gateways: bool = True) -> dict[str, Any]:
    """:func:`control_plane` of ``count`` roles alone (its own upstream), stamped with the
    date and the load average before and after."""
    load = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(work_dir("rolegate-scale-", keep=False))
        up = start_upstream(workdir, UpstreamSettings(0.0, 8, 0.001))
        stack.callback(up.stop)
        (entry,) = control_plane(
            (count,), workdir, f"{up.url}/v1", changes, both=False, await_gateways=await_gateways
        )
    load.append(os.getloadavg()[0])
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {**entry, "date": date, "load": load}


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.0f} MB"


def markdown(doc: dict[str, Any]) -> str:
    """The results as the Markdown file committed beside the JSON."""
    lines = [
        f"# rolegate at scale — {doc['date']}",
        "",
        f"`python -m bench.scale` on {doc['cpus']} CPUs (load average before "
        f"{doc['load_before'][0]:.2f}, after {doc['load_after'][0]:.2f}; a shared machine: "
        "other engineers' tests ran meanwhile, so the times are upper bounds).",
        "",
        "## The config Secret",
        "",
        "| roles | JSON | gzipped | gzip time | fits 1 MiB |",
        "|---|---|---|---|---|",
    ]
    for r in doc["encoding"]["by_roles"]:
        lines.append(
            f"| {r['roles']:,} | {r['raw_bytes']:,} B | {r['gzip_bytes']:,} B | "
            f"{r['gzip_s'] * 1000:.0f} ms | {r['margin']}x |"
        )
    lines += [
        "",
        "| API key length | gzipped bytes a role | roles a Secret holds |",
        "|---|---|---|",
    ]
    for r in doc["encoding"]["by_key_chars"]:
        lines.append(
            f"| {r['key_chars']} | {r['gzip_bytes_per_role']} | {r['roles_per_secret']:,} |"
        )
    lines += [
        "",
        "## The gateway alone",
        "",
        "| roles | RSS | peak RSS | startup |",
        "|---|---|---|---|",
    ]
    for r in doc["rss"]:
        lines.append(
            f"| {r['roles']:,} | {_mb(r['rss_bytes'])} | {_mb(r['peak_rss_bytes'])} | "
            f"{r['startup_s']:.1f} s |"
        )
    a = doc["apply"]
    lines += [
        "",
        f"Applying {a['roles']:,} roles from a manifest file: {a['apply_s']} s end to end "
        f"(1 -> {a['roles']:,}; rebinding all: {a['rebind_s']} s), of which YAML and "
        f"validation {a['load_manifests_s']:.2f} s and `Runtime.apply` "
        f"{a['runtime_apply_s']:.2f} s.",
        "",
        "From the config Secret's data, in-process: "
        + "; ".join(
            f"{w['roles']:,} roles: gunzip {w['decode_s']} s, parse {w['parse_s']} s, "
            f"apply {w['apply_s']} s"
            for w in doc["wire_apply"]
        )
        + ".",
        "",
        "## On the control plane (operator --await-gateways, gateway presence on)",
        "",
        "| roles | kubectl apply | gateway serves all | all Ready | operator CPU | "
        "operator RSS (peak sampled) | gateway RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in doc["kube"]:
        how = " (--server-side)" if k.get("server_side") else ""
        how += "" if k.get("await_gateways", True) else " (--no-await-gateways)"
        lines.append(
            f"| {k['roles']:,} | {k['kubectl_s']} s{how} | {k['served_s']} s | {k['ready_s']} s | "
            f"{k['operator_cpu_s']} s | {_mb(k['operator_rss_peak_sampled_bytes'])} | "
            f"{_mb(k['gateway_rss_bytes'])} |"
        )
    for k in doc["kube"]:
        lines.append("")
        how = " (--server-side)" if k.get("server_side") else ""
        how += "" if k.get("await_gateways", True) else " (--no-await-gateways)"
        lines.append(f"API writes for {k['roles']:,} roles{how}: {k['api_writes']}")
        lines.append(f"Sample role status: `{json.dumps(k['sample_status'])}`")
        if "change" in k:
            c, n = k["change"], k["noop_resync"]
            lines += [
                "",
                f"One changed role with {k['roles']:,} present (each once the operator was "
                f"idle), kubectl patch -> gateway serves it: p50 {c['p50_s']} s, max "
                f"{c['max_s']} s ({c['times_s']}); the operator was idle again "
                f"{c.get('settle_s')} s later (see 'Reading this run').",
                "",
                f"No-op resync with {k['roles']:,} roles: {n['role_or_secret_writes']} writes "
                f"of Secrets, LLMRoles or Events (all API writes meanwhile: {n['api_writes']}; "
                f"the gateway's Lease renewals are among them); the pass: {n['pass']}; "
                f"operator CPU meanwhile {n['operator_cpu_s']} s.",
            ]
    notes = doc.get("notes_md")  # what a person wrote about the run, kept across reruns
    return "\n".join(lines) + "\n" + (f"\n{notes}" if notes else "")


def main(argv: list[str] | None = None) -> int:
    """The command line; see ``--help``."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default=datetime.date.today().isoformat() + "-scale")
    p.add_argument(
        "--kube-only",
        type=int,
        metavar="ROLES",
        help="only the control-plane run of ROLES roles (with one-role changes and a no-op "
        "resync); its entry replaces that of the same count in --out/--name's JSON",
    )
    p.add_argument(
        "--no-await-gateways",
        dest="await_gateways",
        action="store_false",
        help="with --kube-only: the operator's Ready does not wait for gateway Leases",
    )
    args = p.parse_args(argv)
    if args.kube_only:
        earlier = args.out / f"{args.name}.json"
        if not earlier.is_file():
            p.error(f"--kube-only updates a full run's results: {earlier} does not exist")
        doc = json.loads(earlier.read_text())
        entry = rerun_kube(args.kube_only, await_gateways=args.await_gateways)

        def same(k: dict[str, Any]) -> bool:
            return (k["roles"], k.get("server_side"), k.get("await_gateways", True)) == (
                args.kube_only,
                False,
                args.await_gateways,
            )

        doc["kube"] = [k for k in doc["kube"] if not same(k)] + [entry]
        doc.setdefault("reruns", []).append(
            {"roles": args.kube_only, "date": entry["date"], "load": entry["load"]}
        )
    else:
        doc = measure(quick=args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
