"""The gateway's config Secret source on a real API server: watch, resume, break, refuse.

The source runs in-process against a real ``Runtime``, talking to the API server through
the control plane's relay (``devstack.relay``), which the test cuts, so a broken watch is a
real dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.k8s.controlplane import ApiRelay, ControlPlane
from rolegate_gateway.config import GatewayConfig, RoleConfig
from rolegate_gateway.kube import ConfigSecretSource
from rolegate_gateway.runtime import Runtime
from rolegate_operator.render import config_secret
from tests.conftest import until
from tests.fakes.configs import role_config
from tests.fixtures.cluster import Kubectl

NAME = "gw-config"


def role(name: str) -> RoleConfig:
    return role_config(name, key="sk-CFGSECRET-1")


@pytest.fixture
def relay(cluster: ControlPlane) -> Iterator[ApiRelay]:
    """A relay to the API server (``relay.kubeconfig`` goes through it)."""
    relay = cluster.relay()
    yield relay
    relay.close()


async def test_watch_resumes_and_reconnects_without_reloading(
    namespace: str,
    kubectl: Kubectl,
    relay: ApiRelay,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kubeconfig = relay.kubeconfig

    async def write(config: GatewayConfig | None, raw: str | None = None) -> None:
        body = config_secret(config or GatewayConfig(), namespace=namespace, name=NAME)
        if raw is not None:
            body["data"] = {"config.json": base64.b64encode(raw.encode()).decode()}
        path = tmp_path / "secret.json"
        path.write_text(json.dumps(body))
        await asyncio.to_thread(kubectl, "apply", "-f", str(path))

    runtime = Runtime()
    source = ConfigSecretSource(
        namespace, NAME, runtime, kubeconfig=kubeconfig, watch_timeout_s=1, retry_delay_s=0.1
    )
    assert await source.load_once() is False  # not written yet: nothing served, no error
    assert runtime.config is None

    first = GatewayConfig(roles=(role("extract"),))
    await write(first)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: runtime.config_hash == first.hash, timeout_s=10)
        wrapper, report = runtime.roles["extract"].wrapper, runtime.last_reload

        # The server ends each watch after 1 s: resumed from its resourceVersion (no new
        # read), no reload.
        watches, reads = source.watches, source.reads
        await until(lambda: source.watches >= watches + 3, timeout_s=15)
        assert source.reads == reads
        assert runtime.last_reload is report

        # A dropped watch is resumed from its resourceVersion, like one the server ended.
        watches = source.watches
        relay.cut()
        relay.restore()
        await until(lambda: source.watches > watches + 1, timeout_s=15)
        assert source.reads == reads
        assert runtime.last_reload is report

        # The API server unreachable for a while: started over with a read of the same
        # content once it is back; no reload.
        relay.cut("refuse")
        await asyncio.sleep(1.5)
        relay.restore()
        await until(lambda: source.reads == reads + 1, timeout_s=15)
        watches = source.watches
        await until(lambda: source.watches > watches, timeout_s=15)
        assert runtime.last_reload is report

        # A real change still arrives, and the unchanged role keeps its wrapper.
        second = GatewayConfig(roles=(role("extract"), role("query")))
        await write(second)
        await until(lambda: runtime.config_hash == second.hash, timeout_s=10)
        assert runtime.roles["extract"].wrapper is wrapper
        assert runtime.last_reload is not None
        assert runtime.last_reload.added == ("query",)

        # A broken config is refused and the good one keeps serving.
        await write(None, raw='{"version": "rolegate.dev/gateway-config/v0"}')
        await until(
            lambda: runtime.last_reload is not None and runtime.last_reload.outcome == "refused",
            timeout_s=10,
        )
        assert runtime.last_reload.error is not None
        assert "v0" in runtime.last_reload.error
        assert sorted(runtime.roles) == ["extract", "query"]

        # The Secret deleted: seen, and the roles keep serving.
        with caplog.at_level(logging.WARNING, logger="rolegate_gateway.kube"):
            await asyncio.to_thread(kubectl, "delete", "secret", NAME)
            await until(lambda: "was deleted" in caplog.text, timeout_s=10)
        assert sorted(runtime.roles) == ["extract", "query"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()
        runtime.close()


async def test_unreachable_api_is_retried_not_fatal(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    runtime = Runtime()
    source = ConfigSecretSource("ns", NAME, runtime, kubeconfig=kubeconfig, retry_delay_s=0.05)
    assert await source.load_once() is False
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await source.close()
    assert runtime.config is None
