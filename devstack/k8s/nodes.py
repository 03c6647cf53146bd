"""The simulated nodes of the full test cluster, and how kwok is run to keep them alive.

This module owns the shape of the KWOK Node objects (ordinary ones, and GPU ones that look
like NVIDIA GPU-operator nodes: ``nvidia.com/gpu`` capacity, ``nvidia.com/gpu.*`` labels and
a ``nvidia.com/gpu:NoSchedule`` taint) and kwok's command line. kwok (the controller, not
kwokctl) manages only the Nodes annotated ``kwok.x-k8s.io/node=fake``; the Stage objects in
its ``--config`` (the release's defaults, copied by build.sh) make them Ready, renew their
Leases and move Pods bound to them to Running. Manifests are dicts, never YAML templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "GPU_PRESENT_LABEL",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "KWOK_ANNOTATION",
    "NodeSpec",
    "default_nodes",
    "kwok_argv",
    "node_manifest",
    "ready_nodes",
]

GPU_RESOURCE: Final = "nvidia.com/gpu"
"""The extended resource GPU nodes advertise and GPU pods request."""
GPU_PRESENT_LABEL: Final = "nvidia.com/gpu.present"
GPU_TAINT: Final[dict[str, str]] = {
    "key": "nvidia.com/gpu",
    "value": "present",
    "effect": "NoSchedule",
}
"""The taint on GPU nodes; a GPU pod tolerates it (``operator: Exists`` on the key is enough)."""
KWOK_ANNOTATION: Final = ("kwok.x-k8s.io/node", "fake")
"""The annotation kwok selects the nodes it manages by."""
NODE_LEASE_DURATION_S: Final = 40
"""Lease duration kwok gives simulated nodes (kubelet's default)."""


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One simulated node: its name and its capacity (cpu in cores, memory in GiB)."""

    name: str
    gpus: int = 0
    cpu: int = 16
    memory_gib: int = 64
    pods: int = 110


def default_nodes(
    *, cpu_nodes: int = 2, gpu_nodes: int = 2, gpus_per_node: int = 2
) -> list[NodeSpec]:
    """``kwok-cpu-<i>`` nodes without GPUs and ``kwok-gpu-<i>`` nodes with ``gpus_per_node``."""
    return [NodeSpec(name=f"kwok-cpu-{i}") for i in range(cpu_nodes)] + [
        NodeSpec(name=f"kwok-gpu-{i}", gpus=gpus_per_node) for i in range(gpu_nodes)
    ]


def node_manifest(spec: NodeSpec, *, index: int) -> dict[str, Any]:
    """The Node object for ``spec``; ``index`` (0-based) picks its IP and pod CIDR.

    Its status (capacity, allocatable, addresses) is set at creation, as kwokctl does;
    kwok's node-initialize stage keeps them and adds the conditions and nodeInfo.
    """
    resources: dict[str, str] = {
        "cpu": str(spec.cpu),
        "memory": f"{spec.memory_gib}Gi",
        "pods": str(spec.pods),
        "ephemeral-storage": "100Gi",
    }
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": spec.name,
        "node-role.kubernetes.io/agent": "",
        "type": "kwok",
    }
    taints: list[dict[str, str]] = []
    if spec.gpus:
        resources[GPU_RESOURCE] = str(spec.gpus)
        labels |= {
            GPU_PRESENT_LABEL: "true",
            "nvidia.com/gpu.count": str(spec.gpus),
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.memory": "81559",
        }
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "annotations": {
                KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": labels,
        },
        "spec": {
            "podCIDR": f"10.244.{index}.0/24",
            "podCIDRs": [f"10.244.{index}.0/24"],
            "taints": taints,
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"192.0.2.{index + 1}"},
                {"type": "Hostname", "address": spec.name},
            ],
            "allocatable": resources,
            "capacity": resources,
        },
    }


def ready_nodes(items: list[dict[str, Any]]) -> set[str]:
    """Names of the Nodes (API objects) that are Ready and carry no ``node.kubernetes.io/*``
    taint (the lifecycle ones: not-ready, unreachable, ... that the scheduler would avoid)."""
    ready: set[str] = set()
    for node in items:
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        taints = [t["key"] for t in node["spec"].get("taints", [])]
        if conditions.get("Ready") == "True" and not any(
            key.startswith("node.kubernetes.io/") for key in taints
        ):
            ready.add(node["metadata"]["name"])
    return ready


def kwok_argv(*, kwok: Path, kubeconfig: Path, stages: Path, port: int) -> list[str]:
    """kwok's command line: manage the annotated nodes with ``stages``, serve on ``port``.

    ``port`` (127.0.0.1, plain HTTP) answers ``/healthz``; kwok also serves logs/exec there.
    """
    key, value = KWOK_ANNOTATION
    return [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        f"--node-lease-duration-seconds={NODE_LEASE_DURATION_S}",
        "--cidr=10.244.0.0/16",
        "--node-ip=192.0.2.1",
        f"--server-address=127.0.0.1:{port}",
    ]
