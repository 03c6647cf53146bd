"""The results of a run as people read them: the goals, a markdown report, a PNG chart.

Owns :func:`goals` (each goal of the benchmark issue with the measured value; reported,
never asserted), :func:`peer_figures` (the figures side by side per target, and whether
rolegate is ahead of every peer but the floor, nginx, in each; reported, never asserted),
:func:`markdown` and :func:`chart`. Input is the run's JSON document
(see :func:`bench.run.run`); nothing here measures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import lookup

__all__ = ["FLOOR", "chart", "goals", "markdown", "peer_figures"]

_MB = 1_000_000
#: The peer that is the floor (a proxy doing nothing else), not one rolegate must beat.
FLOOR = "nginx"
#: Targets that are not peers: the call without a proxy, and rolegate itself.
_OURS = ("direct", "rolegate", "baseline")


def _find(doc: dict[str, Any], target: str, stream: bool, concurrency: int) -> dict[str, Any]:
    return dict(lookup(doc["results"], target, stream, concurrency) or {})


def _goal(name: str, value: float | None, unit: str, ok: Callable[[float], bool]) -> dict[str, Any]:
    return {"goal": name, "value": value, "unit": unit, "met": None if value is None else ok(value)}


def goals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"goal", "value", "unit", "met"}]``: ``met`` is None where a figure is missing
    (e.g. LiteLLM did not run, or a p99 rests on too few samples). Throughput and latency
    goals are read at concurrency 32, or the highest concurrency measured when 32 was
    not."""
    measured = doc["settings"]["concurrency"]
    concurrency = 32 if 32 in measured else max(measured)
    out = []
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        mine = _find(doc, "rolegate", stream, concurrency)
        theirs = _find(doc, "litellm", stream, concurrency)
        ratio = None
        if mine.get("throughput_rps") and theirs.get("throughput_rps"):
            ratio = mine["throughput_rps"] / theirs["throughput_rps"]
        out.append(
            _goal(
                f"{kind} c={concurrency}: throughput >= 10x LiteLLM's",
                ratio,
                "x",
                lambda v: v >= 10,
            )
        )
        out.append(
            _goal(
                f"{kind} c={concurrency}: added latency p50 <= 1 ms",
                mine.get("added_p50_ms"),
                "ms",
                lambda v: v <= 1,
            )
        )
        out.append(
            _goal(
                f"{kind} c={concurrency}: added latency p99 <= 5 ms",
                mine.get("added_p99_ms") if mine.get("p99_reliable") else None,
                "ms",
                lambda v: v <= 5,
            )
        )
    stream_row = _find(doc, "rolegate", True, concurrency)
    out.append(
        _goal(
            f"stream c={concurrency}: added time to first token p50 <= 1 ms",
            stream_row.get("added_ttft_p50_ms"),
            "ms",
            lambda v: v <= 1,
        )
    )
    alone = doc.get("rolegate_alone", {})
    by_roles = {row["roles"]: row for row in alone.get("rss_by_roles", [])}
    most = max(by_roles) if by_roles else None
    peak = by_roles[most]["peak_rss_bytes"] / _MB if most else None
    out.append(_goal(f"peak RSS with {most} roles <= 150 MB", peak, "MB", lambda v: v <= 150))
    apply = alone.get("apply", {})
    out.append(
        _goal(
            f"{apply.get('roles')}-role config applied in < 1 s",
            apply.get("apply_s"),
            "s",
            lambda v: v < 1,
        )
    )
    reloads = alone.get("reloads_under_load", {})
    out.append(
        _goal(
            f"failed requests during {reloads.get('reloads')} reloads under load == 0",
            reloads.get("failed"),
            "requests",
            lambda v: v == 0,
        )
    )
    return out


def _figure(
    name: str, unit: str, better: str, values: dict[str, float | None], peers: list[str]
) -> dict[str, Any]:
    """One row of :func:`peer_figures`: ``rolegate_ahead`` is True when rolegate's value is
    strictly better than each of ``peers``' (nginx excluded by the caller), False when one
    is as good or better (those are ``not_beaten``), None when a value is missing."""
    sign = 1.0 if better == "higher" else -1.0
    mine = values.get("rolegate")
    not_beaten = []
    if mine is not None:
        for peer in peers:
            theirs = values.get(peer)
            if theirs is not None and sign * theirs >= sign * mine:
                not_beaten.append(peer)
    missing = [p for p in ["rolegate", *peers] if values.get(p) is None]
    ahead = False if not_beaten else None if missing else True
    return {
        "figure": name,
        "unit": unit,
        "better": better,
        "values": values,
        "rolegate_ahead": ahead,
        "not_beaten": not_beaten,
        "missing": missing,
    }


def peer_figures(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of every proxy target side by side: ``[{"figure", "unit", "better"
    ("higher" or "lower"), "values" ({target: value or None}), "rolegate_ahead",
    "not_beaten" (peers as good as rolegate or better), "missing" (targets without the
    figure: skipped, failed, or a p99 on too few samples)}]``, one per figure:

    - throughput as a ratio of the direct call's in the same case (x), at each measured
      concurrency above 1 (32 and 256 by default);
    - added p50 and added p99 (ms; p99 only where ``p99_reliable``), plain and streamed,
      and added time to first token p50 (ms), at each measured concurrency up to 32
      (1 and 32 by default);
    - CPU seconds of the proxy's process tree per 1,000 requests, at the throughput
      concurrencies;
    - peak RSS (MB): the largest sum over the tree of VmHWM in any case.

    ``rolegate_ahead`` compares rolegate with every peer but :data:`FLOOR`; a peer that
    was skipped or failed makes it None unless another peer is already ahead."""
    measured = doc["settings"]["concurrency"]
    busy = [c for c in measured if c > 1] or list(measured)
    light = [c for c in measured if c <= 32] or [min(measured)]
    names = [n for n in doc["targets"] if n != "direct"]
    peers = [n for n in names if n not in (*_OURS, FLOOR)]
    rows = []

    def per_target(stream: bool, concurrency: int, key: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in names:
            row = _find(doc, name, stream, concurrency)
            value = row.get(key)
            if key.endswith("p99_ms") and not row.get("p99_reliable"):
                value = None
            out[name] = value
        return out

    for stream in (False, True):
        kind = "stream" if stream else "plain"
        for c in busy:
            base = _find(doc, "direct", stream, c).get("throughput_rps")
            values = {
                name: (rps / base if rps is not None and base else None)
                for name, rps in per_target(stream, c, "throughput_rps").items()
            }
            rows.append(
                _figure(f"throughput / direct's, {kind} c={c}", "x", "higher", values, peers)
            )
    for key, label in (("added_p50_ms", "+p50"), ("added_p99_ms", "+p99")):
        for stream in (False, True):
            kind = "stream" if stream else "plain"
            for c in light:
                values = per_target(stream, c, key)
                rows.append(_figure(f"{label} ms, {kind} c={c}", "ms", "lower", values, peers))
    for c in light:
        values = per_target(True, c, "added_ttft_p50_ms")
        rows.append(_figure(f"+TTFT p50 ms, stream c={c}", "ms", "lower", values, peers))
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        for c in busy:
            values = per_target(stream, c, "cpu_s_per_1000")
            rows.append(_figure(f"CPU s / 1k req, {kind} c={c}", "s", "lower", values, peers))
    rss = {
        name: (doc["targets"][name]["peak_rss_bytes"] / _MB)
        if doc["targets"][name].get("peak_rss_bytes")
        else None
        for name in names
    }
    rows.append(_figure("peak RSS MB (largest of any case)", "MB", "lower", rss, peers))
    return rows


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _p99(row: dict[str, Any], key: str) -> str:
    return _num(row[key]) if row.get("p99_reliable") else "—"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / _MB:,.0f}"


def markdown(doc: dict[str, Any]) -> str:
    """The report: setup, the side-by-side table, rolegate alone, the goals."""
    machine, settings, up = doc["machine"], doc["settings"], doc["settings"]["upstream"]
    lines = [
        f"# rolegate benchmark, {doc['date']}",
        "",
        f"One machine, loopback only: {machine['cpu_count']} CPUs, load average "
        f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_before'])} before and "
        f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_after'])} after (1/5/15 min); "
        f"Python {machine['python']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + ".",
        "",
        f"Upstream: delay {up['delay_s']:g} s; streams of {up['chunks']} content events "
        f"{up['chunk_interval_s'] * 1000:g} ms apart. Load: one load generator process, closed "
        f"loop at the given concurrency; each measurement records the requests started in a "
        f"window of {settings['max_duration_s']:g} s, the same for every target (held "
        f"open until as many were started as there are connections), entered "
        f"without draining the warm-up; targets take turns, {settings['rounds']} rounds. "
        "Latency percentiles are of the samples pooled over the rounds (*n*); throughput and "
        "CPU are medians over rounds; *+p50* is the median over rounds of the difference to "
        "the direct call of the same round, *+p99* the pooled p99 minus the direct call's. "
        "CPU is the proxy's process tree's from the window's start until it is idle again "
        "(below 2% of a CPU over 100 ms, at most 5 s: LiteLLM logs after answering); peak "
        "RSS is the sum over the tree of each process's VmHWM, reset just before the window.",
        "",
        "rolegate checks no credentials itself (its LLMRoles hold the upstream's); LiteLLM "
        "checks its master key on every request; TensorZero and nginx check none, and "
        "Portkey passes the header on as the upstream's key. Every target gets the same "
        "`Authorization` header and body (but TensorZero's model name, "
        "`tensorzero::model_name::bench`).",
        "",
    ]
    for name, info in doc["targets"].items():
        if info.get("skipped"):
            lines.append(f"**{name} skipped:** {info['skipped']}")
            lines.append("")
        if info.get("error"):
            lines.append(f"**{name} did not run:** {info['error']}")
            lines.append("")
    lines += _peers_section(doc)
    lines += [
        "## Side by side",
        "",
        "| case | target | n | req/s | p50 ms | p99 ms | +p50 ms | +p99 ms | TTFT p50 ms "
        "| +TTFT p50 ms | CPU s / 1k req | peak RSS MB | failed |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in doc["results"]:
        case = f"{'stream' if row['stream'] else 'plain'} c={row['concurrency']}"
        lines.append(
            f"| {case} | {row['target']} | {row['n']:,} | {_num(row['throughput_rps'], 0)} "
            f"| {_num(row['latency_p50_ms'])} | {_p99(row, 'latency_p99_ms')} "
            f"| {_num(row['added_p50_ms'])} | {_p99(row, 'added_p99_ms')} "
            f"| {_num(row['ttft_p50_ms'])} | {_num(row['added_ttft_p50_ms'])} "
            f"| {_num(row['cpu_s_per_1000'], 3)} | {_mb(row['peak_rss_bytes'])} | {row['failed']} |"
        )
    lines += [
        "",
        f"— : fewer than {settings['min_p99_samples']:,} samples pooled (for +p99: in this "
        "row or the direct call's), too few for a p99.",
    ]
    alone = doc["rolegate_alone"]
    lines += [
        "",
        "## rolegate alone",
        "",
        "Peak RSS here is since the gateway started (loading the config counts).",
        "",
        "| roles | RSS MB | peak RSS MB | startup s |",
    ]
    lines.append("|--:|--:|--:|--:|")
    for row in alone["rss_by_roles"]:
        lines.append(
            f"| {row['roles']} | {_mb(row['rss_bytes'])} | {_mb(row['peak_rss_bytes'])} "
            f"| {_num(row['startup_s'])} |"
        )
    apply, reloads = alone["apply"], alone["reloads_under_load"]
    lines += [
        "",
        f"- Config of {apply['roles']} roles applied (1 -> {apply['roles']}, file renamed into "
        f"place -> `/readyz` shows the new hash; the gateway polls every "
        f"{apply['reload_interval_s'] * 1000:g} ms): **{_num(apply['apply_s'], 3)} s**; all "
        f"{apply['roles']} rebound: {_num(apply['rebind_s'], 3)} s. In process: parse and "
        f"validate {_num(apply['load_manifests_s'], 3)} s, `Runtime.apply` "
        f"{_num(apply['runtime_apply_s'], 3)} s.",
        f"- {reloads['applied']} of {reloads['reloads']} reloads (rebinds) applied under load "
        f"(c={reloads['concurrency']}, every other request streamed): "
        f"**{reloads['failed']} failed** of {reloads['requests']} requests; a reload took "
        f"{_num(reloads['reload_p50_s'], 3)} s (median), {_num(reloads['reload_max_s'], 3)} s "
        "at most (applied: `/readyz` shows the new hash and `/status` says applied)"
        + (
            f"; not applied: {reloads['failed_reloads']}." if reloads.get("failed_reloads") else "."
        ),
        "",
        "## Goals (reported, not asserted)",
        "",
        "| goal | measured | met |",
        "|---|--:|---|",
    ]
    for goal in doc["goals"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[goal["met"]]
        digits = 0 if goal["unit"] == "requests" else 2
        lines.append(f"| {goal['goal']} | {_num(goal['value'], digits)} {goal['unit']} | {met} |")
    return "\n".join(lines) + "\n"


def _peers_section(doc: dict[str, Any]) -> list[str]:
    """The markdown of :func:`peer_figures`: the targets' settings, then one row per figure."""
    names = [n for n in doc["targets"] if n != "direct"]
    lines = ["## rolegate and its peers", ""]
    for name in names:
        info = doc["targets"][name]
        said = ", ".join(
            f"{k} {info[k]}"
            for k in ("version", "command", "workers", "processes", "threads")
            if k in info
        )
        state = " (skipped)" if "skipped" in info else " (did not run)" if "error" in info else ""
        lines.append(f"- {name}{state}: {said}")
    lines += [
        "",
        f"Each figure as defined above; *ahead* means rolegate's figure is strictly better than "
        f"every peer's but {FLOOR}'s (the floor: a proxy doing nothing else). Reported, not "
        "asserted; on a shared machine a single run is noisy.",
        "",
        "| figure | " + " | ".join(names) + f" | rolegate ahead of all but {FLOOR} |",
        "|---|" + "--:|" * len(names) + "---|",
    ]
    for row in doc.get("peers") or peer_figures(doc):
        digits = 0 if row["unit"] == "MB" else 3 if row["unit"] == "s" else 2
        cells = " | ".join(_num(row["values"].get(n), digits) for n in names)
        if row["rolegate_ahead"] is True:
            verdict = "yes"
        elif row["rolegate_ahead"] is False:
            verdict = f"**no** (not ahead of {', '.join(row['not_beaten'])})"
        else:
            verdict = f"n/a (no figure for {', '.join(row['missing'])})"
        lines.append(f"| {row['figure']} | {cells} | {verdict} |")
    return [*lines, ""]


def chart(doc: dict[str, Any], path: Path) -> Path:
    """A PNG of throughput, p50 and p99 latency and CPU per request, by case and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["results"]
    cases = list(dict.fromkeys((r["stream"], r["concurrency"]) for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    panels = [
        ("throughput_rps", "throughput, req/s (higher is better)"),
        ("latency_p50_ms", "latency p50, ms"),
        ("latency_p99_ms", "latency p99, ms"),
        ("cpu_s_per_1000", "proxy CPU s per 1,000 requests"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / max(1, len(targets))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for t_index, target in enumerate(targets):
            values = []
            for stream, concurrency in cases:
                row = lookup(rows, target, stream, concurrency) or {}
                values.append(row.get(key) or float("nan"))
            ax.bar([i + t_index * width for i in range(len(cases))], values, width, label=target)
        ax.set_title(title)
        ax.set_xticks([i + width * (len(targets) - 1) / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"{'stream' if s else 'plain'}\nc={c}" for s, c in cases])
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(targets))
    fig.suptitle(f"{' vs '.join(targets)}, {doc['date']} (log scales)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
