"""A ``serve:`` role end to end on the real node: the operator (a process on this machine) runs
the role's vLLM backend on the node's fake GPU, the backend's probes pass, the role becomes
``BackendReady`` and ``Ready``, and the openai SDK gets answers through the gateway (a process
too), which reaches the backend pod on the node's CNI bridge.

The backend image is the test one (devstack/image/backend.py: ``vllm serve`` answered by
llama.cpp on a tiny model); the node is ``gpu_node`` (tests/fixtures/gpu_node.py: 4 fake
``nvidia.com/gpu`` from a kubelet device plugin). Skips where a real node cannot run.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from devstack.k8s.controlplane import ControlPlane
from devstack.k8s.realnode import RealNode
from devstack.poll import eventually
from devstack.stack import install_crd
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl
from tests.fixtures.stack import running_stack

pytestmark = pytest.mark.cluster

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
OTHER_MODEL = "meta-llama/Llama-3.2-1B-Instruct"


async def test_a_served_role_runs_on_the_gpu_node_and_answers_through_the_gateway(
    real_node_plane: ControlPlane,
    real_node_namespace: str,
    gpu_node: RealNode,
    vllm_image: str,
    tmp_path: Path,
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    install_crd(plane)  # the plane is shared: one owner of the CRD per cluster
    kubectl = Kubectl(plane, ns)
    serve: dict[str, Any] = {
        "image": vllm_image,
        "gpus": 1,
        "nodeSelector": {"kubernetes.io/hostname": gpu_node.name},
    }
    extra = ["--resync-interval", "1"]
    async with running_stack(plane, ns, kubectl, tmp_path, operator_args=extra) as stack:
        started = time.monotonic()
        await stack.apply(m.role("chat", binding="vllm", model=MODEL, serve=serve))
        await stack.wait_condition("chat", "BackendReady", ("True", "Available"), timeout_s=240)
        print(f"apply -> BackendReady=True: {time.monotonic() - started:.1f} s")
        await stack.wait_condition("chat", "Ready", ("True", "Served"), timeout_s=60)
        await stack.wait_served(["chat"], timeout_s=60)

        pods = json.loads(await stack.run("get", "pods", "-o", "json"))["items"]
        (pod,) = pods
        assert pod["spec"]["nodeName"] == gpu_node.name
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["vllm", "serve"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}

        sdk = stack.sdk()
        messages: list[Any] = [{"role": "user", "content": "hello"}]
        answer = await sdk.chat.completions.create(model="chat", messages=messages, max_tokens=8)
        assert answer.choices[0].message.content
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 8
        stream = await sdk.chat.completions.create(
            model="chat", messages=messages, max_tokens=8, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text
        await sdk.close()

        await stack.run("delete", "llmrole", "chat", "--wait=true")
        await asyncio.to_thread(
            plane.wait_for,
            "the backend's pods gone",
            lambda: not json.loads(kubectl("get", "pods", "-o", "json").stdout)["items"],
            timeout_s=90,
        )


async def _load(
    sdk: openai.AsyncOpenAI, *, requests: int, concurrency: int, stop: asyncio.Event | None = None
) -> tuple[list[str], list[BaseException]]:
    """Chat calls on role ``chat``, ``concurrency`` at a time: ``requests`` of them, or until
    ``stop`` is set (then at most ``requests``); the models that answered, and the errors."""
    models: list[str] = []
    errors: list[BaseException] = []
    queue = iter(range(requests))
    messages: list[Any] = [{"role": "user", "content": "hi"}]

    async def worker() -> None:
        for n in queue:
            if stop is not None and stop.is_set():
                return
            try:
                if n % 2:
                    answer = await sdk.chat.completions.create(
                        model="chat", messages=messages, max_tokens=4
                    )
                    models.append(answer.model)
                else:
                    stream = await sdk.chat.completions.create(
                        model="chat", messages=messages, max_tokens=4, stream=True
                    )
                    async for chunk in stream:
                        models.append(chunk.model)
            except openai.APIError as exc:
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return models, errors


def _served_calls(kubectl: Kubectl, pod: str) -> int:
    """Chat completions the pod's llama.cpp server answered (its uvicorn access log)."""
    logs = kubectl("logs", pod, "-c", "server", check=False).stdout
    return logs.count('"POST /v1/chat/completions HTTP/1.1" 200')


async def test_two_pods_share_the_calls_and_a_deleted_pod_or_a_rebind_fails_none(
    real_node_plane: ControlPlane,
    real_node_namespace: str,
    gpu_node: RealNode,
    vllm_image: str,
    tmp_path: Path,
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    install_crd(plane)
    kubectl = Kubectl(plane, ns)
    serve: dict[str, Any] = {
        "image": vllm_image,
        "gpus": 1,
        "replicas": 2,
        "nodeSelector": {"kubernetes.io/hostname": gpu_node.name},
    }

    def pods(backend: str) -> list[dict[str, Any]]:
        found = kubectl("get", "pods", f"-l=rolegate.dev/backend={backend}", "-o", "json")
        items: list[dict[str, Any]] = json.loads(found.stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    extra = ["--backend-release-delay", "5"]  # the calls here are short
    async with running_stack(plane, ns, kubectl, tmp_path, operator_args=extra) as stack:
        await stack.apply(m.role("chat", binding="vllm", model=MODEL, serve=serve))
        await stack.wait_condition("chat", "Ready", ("True", "Served"), timeout_s=240)
        old = (await stack.role("chat"))["status"]["backend"]
        sdk = stack.sdk()

        # Ready means one pod serves; the second may still be loading its model. Both pods
        # get calls (least in flight, not kube-proxy's random pick) once the gateway sees
        # both endpoints ready.
        def endpoints() -> int:
            entry = stack.gateway.status()["roles"]["chat"].get("backend") or {}
            return len(entry.get("endpoints", ()))

        async def both_ready() -> bool:
            return await asyncio.to_thread(endpoints) == 2

        await eventually(both_ready, timeout_s=240, what="two ready endpoints")
        models, errors = await _load(sdk, requests=40, concurrency=4)
        assert errors == []
        spread = {
            p["metadata"]["name"]: _served_calls(kubectl, p["metadata"]["name"]) for p in pods(old)
        }
        print(f"calls per pod over 40 requests: {spread}")
        assert len(spread) == 2
        assert all(n >= 8 for n in spread.values()), spread

        # A pod deleted under load: its calls finish, new ones go to the other; none fails.
        victim = sorted(spread)[0]
        running = asyncio.create_task(_load(sdk, requests=120, concurrency=4))
        await asyncio.sleep(0.5)
        kubectl("delete", "pod", victim, "--wait=false")
        _, errors = await running
        assert errors == []
        await asyncio.to_thread(
            plane.wait_for,
            "two ready pods again",
            lambda: (
                sum(
                    1
                    for p in pods(old)
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"].get("conditions", [])
                    )
                )
                == 2
            ),
            timeout_s=120,
        )

        # A rebind to another model under load: the old backend serves until the new one's
        # pods are ready (its startup probe passed), then the calls move; none fails.
        stop = asyncio.Event()
        running = asyncio.create_task(_load(sdk, requests=100_000, concurrency=3, stop=stop))
        await asyncio.sleep(0.5)
        await stack.apply(m.role("chat", binding="vllm", model=OTHER_MODEL, serve=serve))
        await stack.wait_condition("chat", "Ready", ("False", "RollingOut"), timeout_s=30)
        await stack.wait_condition("chat", "Ready", ("True", "Served"), timeout_s=240)
        await asyncio.to_thread(
            plane.wait_for, "the old backend's pods gone", lambda: not pods(old), timeout_s=120
        )
        await asyncio.sleep(1)
        stop.set()
        models, errors = await running
        assert errors == []
        assert models[0] == MODEL
        assert models[-1] == OTHER_MODEL
        assert set(models) == {MODEL, OTHER_MODEL}
        await sdk.close()
