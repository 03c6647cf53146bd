"""The real node's fake GPUs: a kubelet device plugin that advertises ``nvidia.com/gpu``.

This module owns the plugin's cache entry and its process handling for
:class:`~devstack.k8s.realnode.RealNode` (``NodeOptions(gpus=4)``):

- the binary ``<cache root>/gpuplugin-<kube version>/bin/rolegate-fake-gpu-plugin``, built by
  ``build.sh --node`` from ``node/gpuplugin`` (a Go module of its own: grpc and
  ``k8s.io/kubelet`` at the control plane's version) into a cache entry of its own, keyed by
  its sources (``stamp``; build.sh's ``gpu_expected_stamp`` computes the same), so the
  node's own entry is not rebuilt for it;
- its command line (:func:`plugin_argv`), its start as a node component and the wait for its
  registration (:func:`start`: the Node's ``status.allocatable`` shows the devices).

The plugin serves the kubelet's device-plugin API v1beta1 on a socket in
``/var/lib/kubelet/device-plugins`` (a path the kubelet hard-codes; a tmpfs in the node's mount
namespace, so the plugin runs there too), registers with ``kubelet.sock``, advertises
``count`` healthy devices ``fake-gpu-<i>``, answers Allocate with
``NVIDIA_VISIBLE_DEVICES=<ids>`` and no device nodes, and serves and registers again when
the kubelet (re)starts and empties that directory.

Reference: https://kubernetes.io/docs/concepts/extend-kubernetes/compute-storage-net/device-plugins/
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

from devstack.cache import cache_root, files_digest
from devstack.k8s import build
from devstack.process import Process

__all__ = [
    "BINARY",
    "RESOURCE",
    "SOCKET",
    "SOURCES",
    "allocatable",
    "binary",
    "cache_dir",
    "expected_stamp",
    "is_built",
    "plugin_argv",
    "start",
]

_HERE: Final = Path(__file__).resolve().parent
BINARY: Final = "rolegate-fake-gpu-plugin"
"""The plugin's file name (the watchdog's sweep recognises a stray one by it)."""
RESOURCE: Final = "nvidia.com/gpu"
"""The extended resource the plugin advertises (as NVIDIA's device plugin does)."""
SOURCES: Final = (  # as build.sh's gpu_sources, in its order
    _HERE / "node" / "gpuplugin" / "go.mod",
    _HERE / "node" / "gpuplugin" / "go.sum",
    _HERE / "node" / "gpuplugin" / "main.go",
)
SOCKET: Final = "rolegate-fake-gpu.sock"
"""The plugin's socket name in the kubelet's device-plugins directory."""


def cache_dir() -> Path:
    """``<cache root>/gpuplugin-<kube version>``, as build.sh's ``gpu_dest``."""
    return cache_root() / f"gpuplugin-{build.KUBE_VERSION}"


def binary() -> Path:
    """The plugin (it may not exist yet: ``nodebuild.ensure()`` builds it)."""
    return cache_dir() / "bin" / BINARY


def expected_stamp() -> str:
    """The sha256 (hex) over :data:`SOURCES`' bytes, in order: the cache entry's key."""
    return files_digest(SOURCES)


def is_built() -> bool:
    """Whether the plugin is built from the current sources."""
    try:
        if (cache_dir() / "stamp").read_text().strip() != expected_stamp():
            return False
    except OSError:
        return False
    return os.access(binary(), os.X_OK)


def plugin_argv(
    plugin: Path, *, count: int, resource: str = RESOURCE, socket: str = SOCKET
) -> list[str]:
    """The plugin's command line: ``count`` healthy devices of ``resource``, serving on
    ``socket`` in the kubelet's (default) device-plugins directory.

    Raises:
        ValueError: ``count`` is not positive.
    """
    if count < 1:
        raise ValueError(f"a fake GPU plugin advertises at least one device, not {count}")
    return [str(plugin), f"-count={count}", f"-resource={resource}", f"-socket={socket}"]


def allocatable(kubectl: Path, kubeconfig: Path, node: str, resource: str = RESOURCE) -> str:
    """``status.allocatable[resource]`` of Node ``node`` ('' when absent or kubectl fails)."""
    answer = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "get", "node", node, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if answer.returncode != 0:
        return ""
    found: str = json.loads(answer.stdout)["status"].get("allocatable", {}).get(resource, "")
    return found


def start(
    add: Callable[[str, list[str]], Process],
    *,
    count: int,
    allocatable: Callable[[], str],
    timeout_s: float,
) -> Process:
    """Start the plugin with ``count`` devices as the node's component ``gpu-plugin``
    (``add(name, argv)`` starts a supervised process in the node's mount namespace: the
    kubelet's device-plugins directory is there) and wait until it has registered and the
    Node advertises them (``allocatable()`` returns the Node's allocatable count as a string,
    e.g. :func:`allocatable`); returns the process.

    Raises:
        FileNotFoundError: the plugin is not built (``python -m devstack build node``).
        ValueError: ``count`` is not positive.
        devstack.process.ProcessDied: the plugin exited.
        devstack.process.NotReady: not advertised within ``timeout_s`` seconds.
    """
    if not is_built():
        raise FileNotFoundError(f"no {binary()}: python -m devstack build node")
    plugin = add("gpu-plugin", plugin_argv(binary(), count=count))
    plugin.wait_ready(
        lambda: "registered with the kubelet" in plugin.log_text() and allocatable() == str(count),
        what=f"{count} x {RESOURCE} in the Node's allocatable",
        timeout_s=timeout_s,
    )
    return plugin
