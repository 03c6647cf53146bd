"""Runtime.apply: what a reload keeps, resizes, rebuilds and removes (no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from typing import Any

import pytest

from rolegate_gateway import Binding, GatewayConfig, RoleConfig, Runtime, errors, translators
from rolegate_gateway.calls import Call
from tests.fakes.configs import role_config

SECRET = "sk-RGUNIT-55e1d0c9"


def _role(name: str, *, model: str = "m", max_async: int = 2) -> RoleConfig:
    url = "https://user:pw@up.example:8443/v1?token=t"
    return role_config(name, model=model, max_async=max_async, base_url=url, key=SECRET)


def _config(*roles: RoleConfig) -> GatewayConfig:
    return GatewayConfig(roles=roles)


async def test_reload_keeps_resizes_rebuilds_and_removes() -> None:
    runtime = Runtime()
    report = runtime.apply(_config(_role("a"), _role("b")))
    assert (report.outcome, report.added) == ("applied", ("a", "b"))
    a, b = runtime.roles["a"], runtime.roles["b"]
    wrapper_a, queue_a = a.wrapper, a.queue

    assert runtime.apply(_config(_role("a"), _role("b"))).outcome == "unchanged"

    report = runtime.apply(_config(_role("a", max_async=5), _role("b")))
    assert report.resized == ("a",)
    assert (runtime.roles["a"].wrapper, runtime.roles["a"].queue) == (wrapper_a, queue_a)
    assert queue_a.limits.max_async == 5

    report = runtime.apply(_config(_role("a", model="other", max_async=5), _role("b")))
    assert report.rebound == ("a",)
    assert runtime.roles["a"].wrapper is not wrapper_a
    assert runtime.roles["a"].queue is queue_a  # slots in flight still count
    assert wrapper_a.deadline is not None  # the old wrapper drains

    await b.queue.acquire(10)  # a call in flight on b
    report = runtime.apply(_config(_role("a", model="other", max_async=5)))
    assert report.removed == ("b",)
    with pytest.raises(errors.RoleNotFound, match="Known roles: a"):
        runtime.role("b")
    report = runtime.apply(_config(_role("a", model="other", max_async=5), _role("b")))
    assert report.added == ("b",)
    assert runtime.roles["b"].queue is b.queue  # came back while draining: same slots
    assert runtime.roles["b"].queue.running == 1


async def test_status_shows_no_credentials_or_userinfo() -> None:
    runtime = Runtime()
    runtime.apply(_config(_role("a")))
    text = json.dumps(runtime.status())
    assert SECRET not in text
    assert "pw" not in text
    assert "token" not in text
    assert runtime.status()["roles"]["a"]["host"] == "https://up.example:8443/v1"


async def test_close_stops_admitting() -> None:
    runtime = Runtime()
    runtime.apply(_config(_role("a")))
    assert runtime.ready
    runtime.close()
    assert not runtime.ready
    with pytest.raises(errors.Draining):
        await runtime.roles["a"].queue.acquire(10)


async def test_any_failure_building_a_wrapper_refuses_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = Runtime()
    runtime.apply(_config(_role("a")))
    served = runtime.config_hash

    def broken(upstream: object, *, role: str) -> object:
        raise TypeError(f"cannot use {SECRET}")  # a message that quotes a value

    _patch_translators(monkeypatch, broken)
    report = runtime.apply(_config(_role("a", model="other")))
    assert report.outcome == "refused"
    assert report.error == "role default/a: its wrapper could not be built (TypeError)"
    assert runtime.config_hash == served
    assert runtime.roles["a"].config.upstream.model == "m"  # the old config keeps serving
    assert SECRET not in json.dumps(runtime.status())
    refused = runtime.registry.get_sample_value("rolegate_reloads_total", {"outcome": "refused"})
    assert refused == 1


async def test_a_refused_config_leaves_no_series_of_roles_it_would_have_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = Runtime()
    runtime.apply(_config(_role("a")))
    runtime.roles["a"].wrapper.metrics.request(200, 0.1)  # series are made on first use
    real = translators.BINDINGS[Binding.OPENAI].translators

    def broken_for_c(upstream: Any, *, role: str) -> Any:
        if upstream.model == "broken":
            raise TypeError("no")
        return real(upstream, role=role)

    _patch_translators(monkeypatch, broken_for_c)
    report = runtime.apply(_config(_role("a"), _role("b"), _role("c", model="broken")))
    assert report.outcome == "refused"
    assert _series(runtime, "b") == []
    assert _series(runtime, "a")  # the served role keeps its series


def _patch_translators(monkeypatch: pytest.MonkeyPatch, factory: Any) -> None:
    entry = translators.BINDINGS[Binding.OPENAI]
    monkeypatch.setitem(
        translators.BINDINGS, Binding.OPENAI, dataclasses.replace(entry, translators=factory)
    )


def _series(runtime: Runtime, role: str) -> list[str]:
    return sorted(
        f"{sample.name}{sorted(sample.labels.items())}"
        for family in runtime.registry.collect()
        for sample in family.samples
        if sample.labels.get("role") == role
        and not family.name.startswith("rolegate_in")
        and family.name not in ("rolegate_queued", "rolegate_max_async")
    )


async def test_series_of_removed_and_relabelled_roles_are_removed() -> None:
    runtime = Runtime()
    runtime.apply(_config(_role("a"), _role("b")))
    for name in ("a", "b"):
        metrics = runtime.roles[name].wrapper.metrics
        metrics.request(200, 0.1)
        metrics.request(502, 0.1)
        metrics.upstream_error("unavailable")
        metrics.rejected()
    assert any("'model', 'm'" in s for s in _series(runtime, "a"))

    # b is removed while a call is in flight: its series stay until the call ends
    await runtime.roles["b"].queue.acquire(10)
    wrapper_b = runtime.roles["b"].wrapper
    call = Call()
    wrapper_b.enter(call)
    runtime.apply(_config(_role("a", model="other")))  # a relabelled (model), b removed
    runtime.prune()
    assert _series(runtime, "b"), "b drains: its series stay meanwhile"
    assert not [s for s in _series(runtime, "a") if "'model', 'm')" in s]
    wrapper_b.leave(call)
    runtime.prune()
    assert _series(runtime, "b") == []

    # a rebind that keeps the labels (only the host changes) keeps the series
    runtime.roles["a"].wrapper.metrics.request(200, 0.1)
    before = _series(runtime, "a")
    moved = role_config(
        "a", model="other", max_async=2, base_url="https://elsewhere/v1", key=SECRET
    )
    runtime.apply(_config(moved))
    runtime.prune()
    assert _series(runtime, "a") == before


async def test_a_role_of_an_unknown_binding_is_refused_alone() -> None:
    """A config from a newer operator: the role of a binding this gateway does not know is
    left out, shown in /status and a metric, and the other roles are served."""
    runtime = Runtime()
    runtime.apply(_config(_role("a"), _role("b")))
    wire = json.loads(_config(_role("a"), _role("b")).to_wire())
    wire["roles"][1]["upstream"]["binding"] = "gemini"
    wire["roles"][1]["upstream"]["gemini"] = {"project": "p"}  # fields it does not know either
    config = GatewayConfig.from_wire(json.dumps(wire).encode())
    assert [r.name for r in config.roles] == ["a"]
    report = runtime.apply(config)
    assert report.outcome == "applied"
    assert report.removed == ("b",)
    assert list(runtime.roles) == ["a"]
    refused = runtime.status()["refusedRoles"]
    assert refused["b"]["binding"] == "gemini"
    assert "upgrade the gateway" in refused["b"]["reason"]
    sample = runtime.registry.get_sample_value(
        "rolegate_roles_refused", {"role": "b", "namespace": "default", "binding": "gemini"}
    )
    assert sample == 1
    with pytest.raises(errors.RoleNotServed, match="'b' is not served: binding 'gemini'"):
        runtime.role("b")
    assert runtime.role("a") is runtime.roles["a"]
    runtime.apply(_config(_role("a"), _role("b")))  # the binding is known again: served
    assert runtime.status()["refusedRoles"] == {}
    assert (
        runtime.registry.get_sample_value(
            "rolegate_roles_refused", {"role": "b", "namespace": "default", "binding": "gemini"}
        )
        is None
    )
    assert runtime.role("b").config.upstream.binding is Binding.OPENAI


async def test_a_refused_role_changes_the_config_hash() -> None:
    wire = json.loads(_config(_role("a"), _role("b")).to_wire())
    wire["roles"][1]["upstream"]["binding"] = "gemini"
    first = GatewayConfig.from_wire(json.dumps(wire).encode())
    wire["roles"][1]["upstream"]["binding"] = "mistral"
    second = GatewayConfig.from_wire(json.dumps(wire).encode())
    assert first.hash != second.hash != _config(_role("a")).hash


async def test_a_calls_deadline_moves_later_lazily_and_earlier_at_once() -> None:
    """Call keeps one timer at or before its deadline: moved later six times over 0.3 s
    (past the first deadline), the call lives on; moved earlier, it ends then, with the
    timeout's TimeoutError; left, it holds no timer."""
    loop = asyncio.get_running_loop()
    call = Call()
    began = math.inf

    async def run() -> None:
        nonlocal began
        async with asyncio.timeout(None) as timeout, call.start(timeout, loop.time() + 0.2):
            for _ in range(6):
                await asyncio.sleep(0.05)
                call.limit(loop.time() + 0.2)
            began = loop.time()
            call.limit(began + 0.05)
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await run()
    assert 0.04 < loop.time() - began < 0.5
    assert call.due == pytest.approx(began + 0.05)
    assert (call._timer, call.timeout) == (None, None)


async def test_a_call_left_in_time_leaves_no_timer_and_a_drain_cap_cuts_it() -> None:
    loop = asyncio.get_running_loop()
    call = Call()
    async with asyncio.timeout(None) as timeout, call.start(timeout, loop.time() + 60):
        assert call._timer is not None
    assert (call._timer, call.timeout) == (None, None)

    began = loop.time()

    async def capped() -> None:
        async with asyncio.timeout(None) as timeout, call.start(timeout, began + 60):
            call.cap = began + 0.05
            assert call.due is not None
            call.limit(call.due)  # as Runtime.retire does: the deadline, now capped
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await capped()
    assert loop.time() - began < 1
    assert call.due == call.cap
