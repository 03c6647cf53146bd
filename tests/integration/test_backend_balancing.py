"""A ``serve:`` role balanced over its backend's ready pods, as a real API server lists them.

The gateway runs in-process with its config Secret source and its backends' EndpointSlice
watches, both through a relay to a control plane of this module's own (one test restarts
its API server). The test writes the Service and the EndpointSlices itself (no
controller-manager): the "pods" are fake OpenAI upstreams on loopback addresses
(127.0.0.2, 127.0.0.3) and one port, the slices' ``http`` port. The API server refuses
loopback addresses in an IPv4 slice ("may not be in the loopback range"), so the slices say
``addressType: FQDN`` with the address as the name (a valid one; nothing resolves it). The
role's own URL, the Service's name, resolves nowhere: a call that reaches a fake went
through the slices.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from devstack.k8s.controlplane import ApiRelay, ControlPlane
from rolegate_gateway import GatewayConfig, Runtime, create_app, start
from rolegate_gateway.backends import Backends
from rolegate_gateway.config import Backend, RoleConfig
from rolegate_gateway.kube import ConfigSecretSource
from rolegate_operator.render import config_secret
from tests.conftest import until
from tests.fakes.configs import role_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fixtures.chart import token_kubeconfig

pytestmark = pytest.mark.cluster

SERVICE = "rolegate-llama"
SECRET = "gw-config"
PODS = ("127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver of this module only: a test restarts its API server."""
    with ControlPlane(bin_dir=k8s_bin_dir) as cp:
        yield cp


@pytest.fixture
def relay(plane: ControlPlane) -> Iterator[ApiRelay]:
    """The gateway's path to the API server, which a test cuts."""
    relay = plane.relay()
    yield relay
    relay.close()


@dataclass
class Gw:
    """One test's namespace, pods, gateway and its backends."""

    plane: ControlPlane
    namespace: str
    pods: dict[str, FakeOpenAI]
    port: int
    backends: Backends
    url: str

    @property
    def backend(self) -> Backend:
        return Backend(namespace=self.namespace, service=SERVICE)

    async def api(self, path: str, *, method: str = "GET", body: Any = None) -> Any:
        return await asyncio.to_thread(self.plane.api, path, method=method, body=body)

    async def write_slice(self, ready: dict[str, bool], *, name: str = "s1") -> None:
        """Create or replace EndpointSlice ``name`` listing ``ready``'s pods as they say."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": SERVICE}},
            "addressType": "FQDN",
            "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": ok}} for ip, ok in ready.items()
            ],
        }
        try:
            await self.api(f"{path}/{name}", method="PUT", body=body)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            await self.api(path, method="POST", body=body)

    async def delete_slice(self, name: str) -> None:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices/{name}"
        await self.api(path, method="DELETE")

    async def sees(self, *ips: str) -> None:
        """Wait until the gateway's picture of the backend is exactly ``ips``."""
        want = [f"{ip}:{self.port}" for ip in sorted(ips)]
        await until(lambda: self.addresses() == want, timeout_s=15)

    def addresses(self) -> list[str]:
        status = self.backends.status(self.backend)
        return [e["address"] for e in status["endpoints"]] if status["synced"] else []

    def counts(self) -> dict[str, int]:
        return {ip: len(fake.seen) for ip, fake in self.pods.items()}


async def serve_pods() -> tuple[dict[str, FakeOpenAI], int, list[web.AppRunner]]:
    """A fake upstream on each of :data:`PODS`, all on one port."""
    for _ in range(20):
        runners: list[web.AppRunner] = []
        pods = {ip: FakeOpenAI(name=ip) for ip in PODS}
        try:
            runner, port = await start(pods[PODS[0]].app(), host=PODS[0], port=0)
            runners.append(runner)
            for ip in PODS[1:]:
                runners.append((await start(pods[ip].app(), host=ip, port=port))[0])
            return pods, port, runners
        except OSError:  # that port is taken on another address: another one
            for runner in runners:
                await runner.cleanup()
    raise RuntimeError("no port free on every pod address")


def served(name: str, backend: Backend, *, base_url: str | None = None) -> RoleConfig:
    """A role of ``backend`` whose URL is the backend's Service (unless ``base_url``)."""
    url = base_url or f"http://{backend.service}.{backend.namespace}.svc:8000/v1"
    rc = role_config(name, max_async=8, base_url=url)
    return rc.model_copy(update={"upstream": rc.upstream.model_copy(update={"backend": backend})})


@pytest.fixture
async def gw(plane: ControlPlane, relay: ApiRelay) -> AsyncIterator[Gw]:
    """A namespace with the Service; both pods ready in a slice; a gateway serving two
    roles (``extract``, ``query``) of that one backend, synced."""
    namespace = f"t-backends-{secrets.token_hex(3)}"
    plane.kubectl(["create", "namespace", namespace])
    plane.kubectl(
        ["create", "service", "clusterip", SERVICE, "--tcp=8000:8000"], namespace=namespace
    )
    pods, port, runners = await serve_pods()
    gateway: web.AppRunner | None = None
    backend = Backend(namespace=namespace, service=SERVICE)
    roles = (served("extract", backend), served("query", backend))
    secret = config_secret(GatewayConfig(roles=roles), namespace=namespace, name=SECRET)
    plane.api(f"/api/v1/namespaces/{namespace}/secrets", method="POST", body=secret)
    runtime = Runtime()
    source = ConfigSecretSource(namespace, SECRET, runtime, kubeconfig=relay.kubeconfig)
    backends = Backends(
        watch=True, kubeconfig=relay.kubeconfig, watch_timeout_s=5, retry_delay_s=0.1
    )
    app = create_app(runtime, source=source, backends=backends)
    try:
        gateway, gateway_port = await start(app, host="127.0.0.1", port=0, shutdown_timeout_s=2)
        s = Gw(plane, namespace, pods, port, backends, f"http://127.0.0.1:{gateway_port}")
        await s.write_slice(dict.fromkeys(PODS, True))
        await s.sees(*PODS)
        yield s
    finally:
        if gateway is not None:
            await gateway.cleanup()
        for runner in runners:
            await runner.cleanup()
        plane.kubectl(["delete", "namespace", namespace, "--wait=false"], check=False)


@pytest.fixture
async def sdk(gw: Gw) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


async def chat(sdk: openai.AsyncOpenAI, role: str = "extract") -> str:
    answer = await sdk.chat.completions.create(
        model=role, messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content or ""


async def stream(sdk: openai.AsyncOpenAI, role: str = "query") -> str:
    chunks = await sdk.chat.completions.create(
        model=role, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def test_the_sdk_reaches_both_pods_streamed_and_not(gw: Gw, sdk: openai.AsyncOpenAI) -> None:
    answers = [await chat(sdk) for _ in range(4)] + [await stream(sdk) for _ in range(4)]
    assert sorted(answers[:4]) == sorted(f"hi from {ip}" for ip in PODS * 2)
    assert {a.split("-")[0] for a in answers[4:]} == set(PODS)
    assert gw.counts() == dict.fromkeys(PODS, 4)
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/status") as answer:
        status = await answer.json()
    for role in ("extract", "query"):
        assert status["roles"][role]["backend"] == {
            "name": SERVICE,
            "namespace": gw.namespace,
            "synced": True,
            "endpoints": [{"address": f"{ip}:{gw.port}", "inFlight": 0} for ip in PODS],
            "notReady": 0,
        }


async def test_a_pod_marked_not_ready_gets_no_new_call_and_nothing_fails(
    gw: Gw, sdk: openai.AsyncOpenAI
) -> None:
    for fake in gw.pods.values():
        fake.delay_s = 0.02
    done: list[str] = []
    failed: list[BaseException] = []
    todo = iter(range(200))

    async def worker() -> None:
        for i in todo:
            try:
                done.append(await (chat(sdk) if i % 2 else stream(sdk)))
            except openai.APIError as exc:
                failed.append(exc)

    load = [asyncio.create_task(worker()) for _ in range(8)]
    await until(lambda: len(done) >= 40, timeout_s=30)
    first, second = PODS
    await gw.write_slice({first: False, second: True})
    await gw.sees(second)
    at_switch, before = len(done), gw.counts()[first]
    await asyncio.gather(*load)
    assert failed == []
    assert len(done) == 200
    assert at_switch < 150  # the load ran on well after the change
    # Only calls picked before the gateway saw the change (8 at most) reached it after.
    assert gw.counts()[first] - before <= 8
    assert gw.counts()[second] > 200 - at_switch - 8


async def test_a_removed_pod_finishes_its_stream_and_new_calls_go_elsewhere(
    gw: Gw, sdk: openai.AsyncOpenAI
) -> None:
    first, second = PODS
    await gw.write_slice({first: True})
    await gw.sees(first)
    gw.pods[first].chunk_delay_s = 0.4  # 3 chunks: a stream of about 1.6 s
    slow = asyncio.create_task(stream(sdk))
    await until(lambda: gw.pods[first].in_flight == 1, timeout_s=10)
    await gw.write_slice({second: True})  # the first pod leaves the slice
    await gw.sees(second)
    assert [await chat(sdk) for _ in range(3)] == [f"hi from {second}"] * 3
    assert await slow == "".join(f"{first}-{i} " for i in range(3))
    assert len(gw.pods[first].seen) == 1
    assert gw.backends.status(gw.backend)["endpoints"][0]["inFlight"] == 0


async def test_no_ready_pod_is_a_503_with_an_openai_error(gw: Gw, sdk: openai.AsyncOpenAI) -> None:
    await gw.write_slice(dict.fromkeys(PODS, False))
    await until(lambda: gw.backends.status(gw.backend)["notReady"] == 2, timeout_s=15)
    with pytest.raises(openai.APIStatusError) as raised:
        await chat(sdk)
    assert raised.value.status_code == 503
    assert raised.value.body == {
        "message": f"the backend {SERVICE} of role 'extract' in namespace "
        f"{gw.namespace} has no ready pod (2 not ready)",
        "type": "service_unavailable",
        "param": None,
        "code": "backend_not_ready",
    }
    assert gw.counts() == dict.fromkeys(PODS, 0)


async def test_a_slice_changed_while_the_api_server_restarts_is_followed(
    gw: Gw, sdk: openai.AsyncOpenAI, relay: ApiRelay
) -> None:
    """The gateway's watch is cut and the API server restarted (its watch cache starts
    anew); meanwhile the slice of both pods is deleted and another lists only the second.
    Until the gateway can list again it keeps its last picture; then it holds exactly the
    new one (the deleted slice's pods are not kept)."""
    first, second = PODS
    lists = gw.backends.lists
    relay.cut()
    await asyncio.to_thread(gw.plane.restart_apiserver)
    await gw.delete_slice("s1")
    await gw.write_slice({second: True}, name="s2")
    await asyncio.sleep(1)
    assert gw.addresses() == [f"{ip}:{gw.port}" for ip in PODS]  # the last picture
    relay.restore()
    await gw.sees(second)
    assert gw.backends.lists > lists
    before = gw.counts()[first]
    assert [await chat(sdk) for _ in range(4)] == [f"hi from {second}"] * 4
    assert gw.counts()[first] == before


async def test_without_leave_to_list_slices_calls_go_to_the_service(
    gw: Gw, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway whose account may not list EndpointSlices says so once, naming the
    permission, and sends the role's calls to its URL (here the first pod stands in for
    the Service)."""
    gw.plane.kubectl(["create", "serviceaccount", "gw"], namespace=gw.namespace)
    kubeconfig = token_kubeconfig(gw.plane, tmp_path / "k", namespace=gw.namespace, account="gw")
    backends = Backends(watch=True, kubeconfig=kubeconfig, forbidden_delay_s=0.1)
    runtime = Runtime()
    runner, port = await start(create_app(runtime, backends=backends), host="127.0.0.1", port=0)
    try:
        service = f"http://{PODS[0]}:{gw.port}/v1"
        runtime.apply(GatewayConfig(roles=(served("extract", gw.backend, base_url=service),)))
        said = f"not allowed to list endpointslices.discovery.k8s.io in namespace {gw.namespace}"
        await until(lambda: said in caplog.text, timeout_s=10)
        await asyncio.sleep(0.5)  # several more refused lists: still one warning
        assert caplog.text.count(said) == 1
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        async with client:
            assert [await chat(client) for _ in range(3)] == [f"hi from {PODS[0]}"] * 3
        assert backends.status(gw.backend)["synced"] is False
    finally:
        await runner.cleanup()
