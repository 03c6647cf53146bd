"""Backends of ``serve:`` roles on a real control plane with a scheduler, a controller-manager
and KWOK nodes (CPU nodes, and tainted GPU nodes with 2 ``nvidia.com/gpu`` each).

The operator runs as a process; what a user sees comes back through kubectl: the
Deployment, Service and cache claim it made, where the scheduler put the pods, the role's
``BackendReady`` and ``Ready``, and what the garbage collector did.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devstack.k8s.controlplane import ControlPlane
from devstack.poll import eventually
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.stack import Stack, running_stack

pytestmark = pytest.mark.full_cluster

BACKEND = "rolegate.dev/backend"


@pytest.fixture
async def stack(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: None, tmp_path: Path
) -> AsyncIterator[Stack]:
    extra = ["--resync-interval", "1", "--log-level", "debug", "--backend-release-delay", "1"]
    async with running_stack(cluster, namespace, kubectl, tmp_path, operator_args=extra) as up:
        yield up


def served(name: str, model: str = "org/Tiny-1B", **serve: Any) -> dict[str, Any]:
    return m.role(name, binding="vllm", model=model, serve=serve)


async def get(stack: Stack, kind: str, *names: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["get", kind, *names, "-o", "json"] + ([f"-l={selector}"] if selector else [])
    body = json.loads(await stack.run(*args))
    items: list[dict[str, Any]] = body.get("items", [body]) if "items" in body else [body]
    return items


async def backend_of(stack: Stack, role: str) -> str:
    status = (await stack.role(role)).get("status") or {}
    return str(status.get("backend", ""))


async def wait_backend(stack: Stack, role: str) -> str:
    async def named() -> str:
        return await backend_of(stack, role)

    await eventually(named, what=f"status.backend of {role}")
    return await backend_of(stack, role)


async def gone(stack: Stack, kind: str, name: str) -> bool:
    out = await stack.run("get", kind, name, "--ignore-not-found", "-o", "name")
    return not out.strip()


async def test_a_gpu_role_gets_a_backend_on_a_gpu_node_and_becomes_ready(stack: Stack) -> None:
    started = time.monotonic()
    await stack.apply(
        served("extract", gpus=1, cache={"size": "1Gi", "storageClassName": "manual"})
    )
    name = await wait_backend(stack, "extract")
    # No volume for the claim yet: the pod cannot be scheduled, the role says why.
    await stack.wait_condition("extract", "BackendReady", ("False", "Unschedulable"))
    _, reason = await stack.condition("extract", "Ready")
    assert reason == "BackendNotReady"
    status = (await stack.role("extract"))["status"]
    backend_ready = next(c for c in status["conditions"] if c["type"] == "BackendReady")
    assert "unbound immediate PersistentVolumeClaims" in backend_ready["message"]
    await stack.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{stack.namespace}"[:63]},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": "/nonexistent-kwok"},
            },
        }
    )
    await stack.wait_condition("extract", "BackendReady", ("True", "Available"), timeout_s=60)
    await stack.wait_condition("extract", "Ready", ("True", "Served"))
    print(f"apply -> BackendReady=True: {time.monotonic() - started:.1f} s")
    [deployment] = await get(stack, "deployment", name)
    [service] = await get(stack, "service", name)
    [claim] = await get(stack, "pvc", f"{name}-cache")
    for obj in (deployment, service, claim):
        owners = obj["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"]) for o in owners] == [("LLMRole", "extract")]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rolegate-operator"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][:3] == ["org/Tiny-1B", "--served-model-name", "org/Tiny-1B"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [pod] = await get(stack, "pods", selector=f"{BACKEND}={name}")
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")  # tolerates the GPU taint, has GPUs
    status = (await stack.role("extract"))["status"]
    assert status["endpoint"] == f"http://{name}.{stack.namespace}.svc:8000/v1"
    wide = await stack.run("get", "llmr", "extract", "-o", "wide")
    assert name in wide
    config = await stack.config()
    assert config is not None
    [role] = config.roles
    assert role.upstream.backend is not None
    assert role.upstream.backend.service == name

    # A resync of an unchanged cluster writes nothing (resync every second here).
    mark = len(stack.operator.log_text())
    await asyncio.sleep(3)
    log = stack.operator.log_text()[mark:]
    assert log.count("reconciled: Pass(roles=1") >= 2  # resyncs did run
    assert "applied" not in log
    assert "wrote gateway config" not in log
    assert "wrote the status" not in log


async def test_more_gpus_than_a_node_has_says_unschedulable_and_a_fix_recovers(
    stack: Stack,
) -> None:
    await stack.apply(served("query", gpus=3))
    await stack.wait_condition("query", "BackendReady", ("False", "Unschedulable"))
    status = (await stack.role("query"))["status"]
    message = next(c for c in status["conditions"] if c["type"] == "BackendReady")["message"]
    assert "Insufficient nvidia.com/gpu" in message
    assert "nodes are available" in message
    never = status["backend"]
    await stack.apply(served("query", gpus=2))
    await stack.wait_condition("query", "BackendReady", ("True", "Available"), timeout_s=60)
    assert await backend_of(stack, "query") != never
    await eventually(lambda: gone(stack, "deployment", never), what=f"{never} deleted")
    await eventually(lambda: gone(stack, "service", never), what=f"service {never} deleted")


async def test_a_rebind_keeps_the_old_backend_serving_until_the_new_one_is_available(
    stack: Stack,
) -> None:
    await stack.apply(served("vlm", gpus=1))
    await stack.wait_condition("vlm", "Ready", ("True", "Served"), timeout_s=60)
    old = await backend_of(stack, "vlm")
    await stack.apply(served("vlm", model="org/Bigger-70B", gpus=3))  # fits no node
    await stack.wait_condition("vlm", "Ready", ("False", "RollingOut"))
    await stack.wait_condition("vlm", "BackendReady", ("False", "Unschedulable"))
    config = await stack.config()
    assert config is not None
    [role] = config.roles  # still the old model on the old backend: calls keep working
    assert role.upstream.model == "org/Tiny-1B"
    assert role.upstream.backend is not None
    assert role.upstream.backend.service == old
    await asyncio.sleep(2)  # resyncs: the old backend is kept while it serves
    assert not await gone(stack, "deployment", old)
    assert await backend_of(stack, "vlm") == old

    await stack.apply(served("vlm", model="org/Bigger-70B", gpus=2))
    await stack.wait_condition("vlm", "Ready", ("True", "Served"), timeout_s=60)
    new = await backend_of(stack, "vlm")
    assert new != old
    config = await stack.config()
    assert config is not None
    assert config.roles[0].upstream.model == "org/Bigger-70B"
    await eventually(lambda: gone(stack, "deployment", old), what=f"{old} deleted")
    remaining = await get(stack, "deployment", selector="app.kubernetes.io/component=model-server")
    assert [d["metadata"]["name"] for d in remaining] == [new]


async def test_two_roles_with_one_spec_share_one_backend_until_both_go(stack: Stack) -> None:
    started = time.monotonic()
    await stack.apply(served("a", gpus=0), served("b", gpus=0))
    name = await wait_backend(stack, "a")
    assert await wait_backend(stack, "b") == name

    async def owners() -> list[str]:
        found = await get(stack, "deployment", selector=f"{BACKEND}={name}")
        return sorted(o["name"] for d in found for o in d["metadata"]["ownerReferences"])

    await eventually(lambda: owners_are(owners, ["a", "b"]), what="two owners")
    deployments = await get(
        stack, "deployment", selector="app.kubernetes.io/component=model-server"
    )
    assert len(deployments) == 1
    await stack.wait_condition("a", "BackendReady", ("True", "Available"), timeout_s=60)
    print(f"kubectl apply -> BackendReady=True on KWOK: {time.monotonic() - started:.1f} s")
    await stack.wait_condition("b", "Ready", ("True", "Served"))

    await stack.run("delete", "llmrole", "a")
    await eventually(lambda: owners_are(owners, ["b"]), what="one owner left")
    await asyncio.sleep(2)  # a few resyncs: the backend stays for b
    assert not await gone(stack, "deployment", name)
    await stack.wait_condition("b", "Ready", ("True", "Served"))

    await stack.run("delete", "llmrole", "b")
    await eventually(lambda: gone(stack, "deployment", name), timeout_s=60, what="collected")
    await eventually(lambda: gone(stack, "service", name), timeout_s=60, what="svc collected")


async def owners_are(owners: Any, want: list[str]) -> bool:
    return bool(await owners() == want)


async def test_a_backend_deleted_by_hand_comes_back(stack: Stack) -> None:
    await stack.apply(served("summarize", gpus=0))
    name = await wait_backend(stack, "summarize")
    await stack.wait_condition("summarize", "BackendReady", ("True", "Available"), timeout_s=60)
    await stack.run("delete", "deployment", name, "--wait=false")
    await stack.wait_condition("summarize", "BackendReady", ("True", "Available"), timeout_s=60)
    [deployment] = await get(stack, "deployment", name)
    assert deployment["metadata"]["labels"][BACKEND] == name


async def test_the_gateway_follows_the_pods_the_endpointslice_controller_lists(
    stack: Stack,
) -> None:
    # KWOK pods do not run (their 10.244.x addresses answer nothing, and the API server
    # refuses loopback addresses in an EndpointSlice): this checks the gateway's picture of
    # the slices the real controller writes; the calls themselves go to real pods in
    # tests/e2e/test_backend_real_node.py and to fakes in test_backend_balancing.py.
    await stack.apply(served("chat", gpus=0, replicas=2))
    name = await wait_backend(stack, "chat")
    await stack.wait_condition("chat", "Ready", ("True", "Served"), timeout_s=60)
    pods = await get(stack, "pods", selector=f"{BACKEND}={name}")
    ips = sorted(f"{p['status']['podIP']}:8000" for p in pods)

    def picture() -> list[str]:
        backend = stack.gateway.status()["roles"]["chat"]["backend"]
        return sorted(e["address"] for e in backend["endpoints"]) if backend["synced"] else []

    await eventually(lambda: picture() == ips, what=f"the gateway lists {ips}")
    leaving = pods[0]
    patch = '{"status":{"conditions":[{"type":"Ready","status":"False"}]}}'
    await stack.run(
        "patch", "pod", leaving["metadata"]["name"], "--subresource=status", "-p", patch
    )
    staying = [ip for ip in ips if not ip.startswith(f"{leaving['status']['podIP']}:")]
    await eventually(lambda: picture() == staying, what=f"the gateway lists only {staying}")


async def test_a_sigkilled_operator_and_an_apiserver_restart_still_converge(
    stack: Stack,
) -> None:
    await stack.apply(served("a", gpus=0))
    await stack.wait_condition("a", "Ready", ("True", "Served"), timeout_s=60)
    old = await backend_of(stack, "a")
    stack.operator.kill()  # no goodbye: mid-whatever it was doing
    await stack.apply(served("a", model="org/Other-2B", gpus=0), served("b", model="org/B", gpus=0))
    await asyncio.to_thread(stack.cluster.restart_apiserver, down_s=2)
    stack.operator.start()  # from the main thread, so it dies with the test run
    await asyncio.to_thread(stack.operator.wait_live)
    await stack.wait_condition("a", "Ready", ("True", "Served"), timeout_s=90)
    await stack.wait_condition("b", "Ready", ("True", "Served"), timeout_s=60)
    assert await backend_of(stack, "a") != old
    await eventually(lambda: gone(stack, "deployment", old), timeout_s=60, what=f"{old} deleted")
    deployments = await get(
        stack, "deployment", selector="app.kubernetes.io/component=model-server"
    )
    names = sorted(d["metadata"]["name"] for d in deployments)
    assert names == sorted([await backend_of(stack, "a"), await backend_of(stack, "b")])
    config = await stack.config()
    assert config is not None
    assert {(r.name, r.upstream.model) for r in config.roles} == {
        ("a", "org/Other-2B"),
        ("b", "org/B"),
    }
