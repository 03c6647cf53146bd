"""The gateway's config Secret source on a real API server: watch, resume, break, refuse.

The source runs in-process against a real ``Runtime``, talking to the API server through a
TCP relay the test can cut, so a broken watch is a real dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from devstack.k8s.controlplane import ControlPlane
from rolegate_gateway.config import GatewayConfig, RoleConfig
from rolegate_gateway.kube import ConfigSecretSource
from rolegate_gateway.runtime import Runtime
from rolegate_operator.render import config_secret
from tests.conftest import until
from tests.fakes.configs import role_config
from tests.fixtures.cluster import Kubectl

NAME = "gw-config"


class Relay:
    """A TCP relay on loopback to one address; :meth:`cut` drops every open connection,
    ``refusing`` drops new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.refusing = False  # drop new connections at once (the API server "down")

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def role(name: str) -> RoleConfig:
    return role_config(name, key="sk-CFGSECRET-1")


@pytest.fixture
async def relay(cluster: ControlPlane) -> AsyncIterator[tuple[Relay, Path]]:
    """A relay to the API server and a kubeconfig that goes through it."""
    server = urlsplit(cluster.server)
    relay = Relay(server.hostname or "127.0.0.1", server.port or 443)
    port = await relay.start()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = cluster.tmp_dir / f"relay-{port}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield relay, path
    await relay.close()
    path.unlink()


async def test_watch_resumes_and_reconnects_without_reloading(
    namespace: str,
    kubectl: Kubectl,
    relay: tuple[Relay, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cut, kubeconfig = relay

    async def write(config: GatewayConfig | None, raw: str | None = None) -> None:
        body = config_secret(config or GatewayConfig(), namespace=namespace, name=NAME)
        if raw is not None:
            body["data"]["config.json"] = base64.b64encode(raw.encode()).decode()
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
        cut.cut()
        await until(lambda: source.watches > watches + 1, timeout_s=15)
        assert source.reads == reads
        assert runtime.last_reload is report

        # The API server unreachable for a while: started over with a read of the same
        # content once it is back; no reload.
        cut.refusing = True
        cut.cut()
        await asyncio.sleep(1.5)
        cut.refusing = False
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
