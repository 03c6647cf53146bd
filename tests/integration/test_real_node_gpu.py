"""The real node with fake GPUs (a kubelet device plugin) runs the operator's vLLM backend pod
from the test backend image, and leaves nothing behind.

The node comes from ``gpu_node`` (tests/fixtures/gpu_node.py): the session's real node replaced
by one that runs devstack/k8s/node/gpuplugin with 4 devices. The pod is the Deployment the
operator renders for ``serve: {image, gpus: 1}`` (``backend_deployment``), from the image of
devstack/image/backend.py (``vllm serve`` answered by llama.cpp on a tiny model). Its probes
really run against ``/health``; the openai SDK talks to the pod IP on the node's CNI bridge.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from devstack.k8s import nodegpu
from devstack.k8s.controlplane import ControlPlane
from devstack.k8s.realnode import RealNode
from devstack.process import alive
from rolegate_operator.render.backend import BACKEND_LABEL
from tests.fixtures.gpu_node import GPUS, backend_deployment
from tests.fixtures.real_node import HostState, host_state, leftovers, restart_real_node

pytestmark = pytest.mark.cluster

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # a real vLLM model id: the shim serves its tiny model


def apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    plane.kubectl(["apply", "-f", "-"], namespace=namespace, input=body)


def pods(plane: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    answer = plane.kubectl(["get", "pods", "-l", selector, "-o", "json"], namespace=namespace)
    items: list[dict[str, Any]] = json.loads(answer.stdout)["items"]
    return items


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in pod.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def backend_pods(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """The pods of :func:`backend_deployment` ``name`` (label ``rolegate.dev/backend``)."""
    return pods(plane, namespace, f"{BACKEND_LABEL}={name}")


def ready_pod(plane: ControlPlane, namespace: str, name: str, timeout_s: float) -> dict[str, Any]:
    """Wait until backend ``name``'s one pod is Ready (its probes passed); returns it."""
    plane.wait_for(
        f"pod of {name} Ready",
        lambda: any(
            condition(p, "Ready").get("status") == "True"
            for p in backend_pods(plane, namespace, name)
        ),
        timeout_s=timeout_s,
    )
    (pod,) = backend_pods(plane, namespace, name)
    return pod


def test_node_advertises_the_plugin_s_gpus(
    real_node_plane: ControlPlane, gpu_node: RealNode
) -> None:
    node = real_node_plane.api("/api/v1/nodes/localhost")
    assert node["status"]["capacity"][nodegpu.RESOURCE] == str(GPUS)
    assert node["status"]["allocatable"][nodegpu.RESOURCE] == str(GPUS)
    plugin = gpu_node.components["gpu-plugin"]
    assert plugin.running()
    assert "registered with the kubelet as nvidia.com/gpu (4 devices)" in plugin.log_text()


def test_vllm_backend_pod_gets_a_gpu_passes_its_probes_and_serves_openai(
    real_node_plane: ControlPlane, real_node_namespace: str, vllm_image: str
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    started = time.monotonic()
    apply(plane, ns, backend_deployment("backend", image=vllm_image, model=MODEL))
    pod = ready_pod(plane, ns, "backend", timeout_s=180)
    print(f"backend pod Ready in {time.monotonic() - started:.1f} s")
    (status,) = pod["status"]["containerStatuses"]
    assert status["started"] is True
    assert status["ready"] is True
    assert status["restartCount"] == 0
    assert pod["spec"]["nodeName"] == "localhost"

    env = plane.kubectl(
        ["exec", pod["metadata"]["name"], "-c", "server", "--", "env"], namespace=ns
    )
    visible = [
        line for line in env.stdout.splitlines() if line.startswith("NVIDIA_VISIBLE_DEVICES=")
    ]
    assert len(visible) == 1
    assert visible[0].removeprefix("NVIDIA_VISIBLE_DEVICES=").startswith("fake-gpu-")
    allocated = real_node_plane.node.components["gpu-plugin"].log_text()  # type: ignore[union-attr]
    assert f"Allocate: {visible[0].split('=')[1]}" in allocated

    client = openai.OpenAI(base_url=f"http://{pod['status']['podIP']}:8000/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages: list[Any] = [{"role": "user", "content": "hello"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert answer.model == MODEL
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text

    logs = plane.kubectl(["logs", pod["metadata"]["name"], "-c", "server"], namespace=ns).stdout
    assert f"loaded as {MODEL}" in logs
    assert 'GET /health HTTP/1.1" 200' in logs


def test_a_pod_asking_more_gpus_than_the_node_has_stays_pending(
    real_node_plane: ControlPlane, real_node_namespace: str, vllm_image: str
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    apply(plane, ns, backend_deployment("greedy", image=vllm_image, model=MODEL, gpus=GPUS + 1))

    def unschedulable() -> bool:
        found = backend_pods(plane, ns, "greedy")
        scheduled = condition(found[0], "PodScheduled") if found else {}
        return scheduled.get("reason") == "Unschedulable"

    plane.wait_for("greedy pod Unschedulable", unschedulable, timeout_s=60)
    (pod,) = backend_pods(plane, ns, "greedy")
    assert pod["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in condition(pod, "PodScheduled")["message"]
    assert "nodeName" not in pod["spec"]


def test_the_plugin_registers_again_after_a_kubelet_restart(
    real_node_plane: ControlPlane, real_node_namespace: str, gpu_node: RealNode, vllm_image: str
) -> None:
    """The kubelet empties its device-plugins directory when it starts: the plugin notices,
    serves anew and registers again, and a new pod gets a GPU."""
    plane, ns = real_node_plane, real_node_namespace
    plugin, kubelet = gpu_node.components["gpu-plugin"], gpu_node.components["kubelet"]
    kubelet.stop(grace_s=10.0)
    kubelet.start()
    plane.wait_for(
        "the plugin registered twice",
        lambda: plugin.log_text().count("registered with the kubelet") >= 2,
        timeout_s=60,
    )
    assert "is gone (kubelet restarted?)" in plugin.log_text()
    plane.wait_for(
        f"{GPUS} GPUs allocatable again",
        lambda: (
            plane.api("/api/v1/nodes/localhost")["status"]["allocatable"].get(nodegpu.RESOURCE)
            == str(GPUS)
        ),
        timeout_s=60,
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "after-restart", "labels": {"app": "after-restart"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "localhost"},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "env",
                    "image": vllm_image,
                    "command": ["sh", "-c", "echo gpus=$NVIDIA_VISIBLE_DEVICES"],
                    "resources": {"limits": {nodegpu.RESOURCE: "2"}},
                }
            ],
        },
    }
    apply(plane, ns, pod)
    plane.wait_for(
        "after-restart Succeeded",
        lambda: pods(plane, ns, "app=after-restart")[0]["status"].get("phase") == "Succeeded",
        timeout_s=90,
    )
    logs = plane.kubectl(["logs", "after-restart"], namespace=ns).stdout.strip()
    assert logs.startswith("gpus=fake-gpu-")
    assert len(logs.removeprefix("gpus=").split(",")) == 2


def test_the_gpu_node_leaves_nothing_behind(
    real_node_plane: ControlPlane, gpu_node: RealNode, real_node_baseline: HostState
) -> None:
    plugin = gpu_node.components["gpu-plugin"]
    pid = plugin.pid
    assert pid is not None
    assert alive(pid)
    try:
        gpu_node.stop()
        assert gpu_node.stop_problems == []
        assert not alive(pid)
        assert leftovers(real_node_baseline, host_state()) == []
    finally:  # the session's node again, for the tests after this one
        restart_real_node(real_node_plane)
