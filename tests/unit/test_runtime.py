"""Runtime.apply: what a reload keeps, resizes, rebuilds and removes (no network)."""

from __future__ import annotations

import json

import pytest

from rolegate_gateway import GatewayConfig, RoleConfig, Runtime, errors
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
