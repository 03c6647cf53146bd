"""The real node (kubelet + containerd + runc + kube-proxy) runs real pods, and leaves nothing
behind.

All tests share the session's ``real_node_plane`` (tests/fixtures/real_node.py); each gets a
fresh namespace whose pods are gone before the next test. Pods run the test image
``localhost/rolegate/nodetest`` (devstack/k8s/node/nodetest: a static Go HTTP server with
client modes, no shell). Traffic goes to 127.0.0.1, to this node's pod IPs, and to a
ClusterIP that kube-proxy maps to one of them. The teardown test stops the node, compares
the host with the snapshot from before the plane started, and starts a fresh node.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devstack import http, registry
from devstack.k8s import nodebuild
from devstack.k8s.controlplane import ControlPlane
from devstack.poll import wait_until
from devstack.process import alive, free_ports
from tests.fixtures.real_node import HostState, host_state, leftovers, restart_real_node

pytestmark = pytest.mark.cluster

IMAGE = nodebuild.image("nodetest")
BIN_DIR = nodebuild.bin_dir()
ROOT = Path(__file__).resolve().parents[2]
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def deployment(name: str, *, port: int, host_network: bool) -> dict[str, Any]:
    """A one-replica Deployment of the test image on the real node, serving on
    127.0.0.1:<port> and <pod IP>:<port>, with a readiness probe on /healthz."""
    probe_host = {"host": "127.0.0.1"} if host_network else {}
    container = {
        "name": "web",
        "image": IMAGE.ref,
        "imagePullPolicy": "Never",
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "ADDR", "value": f"127.0.0.1:{port},$(POD_IP):{port}"},
        ],
        "ports": [{"containerPort": port, "name": "http"}],
        "readinessProbe": {
            "httpGet": {**probe_host, "path": "/healthz", "port": port},
            "periodSeconds": 1,
        },
        "securityContext": RESTRICTED,
        "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "localhost"},
                    "hostNetwork": host_network,
                    "dnsPolicy": "Default",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [container],
                },
            },
        },
    }


def service(name: str, *, port: int) -> dict[str, Any]:
    """A ClusterIP Service on port 80 for the pods of Deployment ``name``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": port}]},
    }


def apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    plane.kubectl(["apply", "-f", "-"], namespace=namespace, input=body)


def rolled_out(plane: ControlPlane, namespace: str, name: str) -> float:
    """Wait for Deployment ``name``'s rollout; returns the seconds it took."""
    started = time.monotonic()
    plane.kubectl(
        ["rollout", "status", f"deployment/{name}", "--timeout=90s"],
        namespace=namespace,
        timeout_s=100,
    )
    return time.monotonic() - started


def pod_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    pods = plane.kubectl(
        ["get", "pods", "-l", f"app={name}", "-o", "json"], namespace=namespace
    ).stdout
    items: list[dict[str, Any]] = json.loads(pods)["items"]
    assert len(items) == 1, [p["metadata"]["name"] for p in items]
    return items[0]


def test_node_is_ready_with_containerd(real_node_plane: ControlPlane) -> None:
    node = real_node_plane.api("/api/v1/nodes/localhost")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    info = node["status"]["nodeInfo"]
    assert ready == "True"
    assert (
        info["containerRuntimeVersion"]
        == f"containerd://{nodebuild.CONTAINERD_VERSION.lstrip('v')}"
    )
    assert info["kubeletVersion"] == "v1.34.12"
    assert real_node_plane.node is not None
    rss = real_node_plane.node.rss_bytes()
    print(f"RSS MiB: { {name: round(b / 2**20) for name, b in rss.items()} }")


def test_hostnetwork_pod_serves_logs_exec_and_services(
    real_node_plane: ControlPlane, real_node_namespace: str
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    (port,) = free_ports(1)
    apply(plane, ns, deployment("web", port=port, host_network=True), service("web", port=port))
    print(f"rollout {rolled_out(plane, ns, 'web'):.1f} s")

    assert http.get_text(f"http://127.0.0.1:{port}/") == "hello from nodetest (uid 65532)"
    logs = plane.kubectl(["logs", "deployment/web"], namespace=ns).stdout
    assert f"listening on 127.0.0.1:{port}" in logs
    status = plane.kubectl(
        ["exec", "deployment/web", "--", "/nodetest", "-status"], namespace=ns
    ).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert {k: v.strip() for k, v in fields.items()} == {
        "Uid": "65532",
        "Gid": "65532",
        "CapEff": "0000000000000000",  # drop ALL
        "NoNewPrivs": "1",  # allowPrivilegeEscalation: false
        "Seccomp": "2",  # RuntimeDefault: a filter
    }
    write = plane.kubectl(
        ["exec", "deployment/web", "--", "/nodetest", "-write", "/probe"], namespace=ns, check=False
    )
    assert write.returncode != 0
    assert "read-only file system" in write.stderr

    cluster_ip = plane.kubectl(
        ["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"], namespace=ns
    ).stdout
    plane.wait_for(
        f"ClusterIP {cluster_ip}:80 answering through kube-proxy",
        lambda: http.get_text(f"http://{cluster_ip}:80/", timeout_s=2).startswith("hello"),
        timeout_s=30,
    )
    # From a pod on the bridge network too (as a `helm test` pod calls a Service).
    apply(plane, ns, deployment("client", port=8080, host_network=False))
    rolled_out(plane, ns, "client")
    got = plane.kubectl(
        ["exec", "deployment/client", "--", "/nodetest", "-get", f"http://{cluster_ip}/"],
        namespace=ns,
    ).stdout
    assert got.startswith("hello from nodetest")


def test_run_as_non_root_refuses_a_root_user(
    real_node_plane: ControlPlane, real_node_namespace: str
) -> None:
    plane, ns = real_node_plane, real_node_namespace
    (port,) = free_ports(1)
    manifest = deployment("root", port=port, host_network=True)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {**RESTRICTED, "runAsUser": 0, "runAsGroup": 0}
    apply(plane, ns, manifest)

    def refused() -> bool:
        waiting = pod_of(plane, ns, "root")["status"]["containerStatuses"][0]["state"]
        return waiting.get("waiting", {}).get("reason") == "CreateContainerConfigError"

    plane.wait_for("CreateContainerConfigError", refused, timeout_s=30)


def test_pod_pulls_from_a_local_registry(
    real_node_plane: ControlPlane, real_node_namespace: str, tmp_path: Path
) -> None:
    """An image pushed to ``crane registry serve`` on 127.0.0.1 is pulled over plain HTTP
    (``imagePullPolicy: Always``) once the node knows the registry (hosts.toml)."""
    plane, ns, node = real_node_plane, real_node_namespace, real_node_plane.node
    assert node is not None
    registry.ensure_crane()
    with registry.Registry(disk=tmp_path / "blobs", log_path=tmp_path / "registry.log") as reg:
        reg.wait_serving()
        ref = f"{reg.host}/rolegate/nodetest:pulled"
        registry.push(IMAGE.archive, ref)
        node.add_registry(reg.host)
        (port,) = free_ports(1)
        manifest = deployment("pulled", port=port, host_network=True)
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        container.update(image=ref, imagePullPolicy="Always")
        apply(plane, ns, manifest)
        rolled_out(plane, ns, "pulled")
        assert http.get_text(f"http://127.0.0.1:{port}/").startswith("hello")


def test_teardown_leaves_nothing_behind(
    real_node_plane: ControlPlane, real_node_namespace: str, real_node_baseline: HostState
) -> None:
    """A bridge-network pod behind a Service (a veth, the bridge, kube-proxy's rules), then
    the node's stop: the host is as it was before the plane started."""
    plane, ns = real_node_plane, real_node_namespace
    node = plane.node
    assert node is not None
    apply(plane, ns, deployment("cni", port=8080, host_network=False), service("cni", port=8080))
    rolled_out(plane, ns, "cni")
    pod_ip = pod_of(plane, ns, "cni")["status"]["podIP"]
    assert http.get_text(f"http://{pod_ip}:8080/").startswith("hello")
    during = host_state()
    assert node.bridge in during.links
    assert "kube-proxy" in during.rules.get("nft list tables", "kube-proxy")
    assert during.sysctls == real_node_baseline.sysctls, "the kubelet changed host sysctls"
    in_host_mounts = [line for line in leftovers(real_node_baseline, during) if "mount" in line]
    assert in_host_mounts == [], "the node's mounts must stay in its namespace"
    shims = [_rss_mib(pid) for pid in _node_pids() if _exe(pid).endswith("shim-runc-v2")]
    print(f"shim RSS MiB: {shims}")
    pids = _node_pids()
    assert len(pids) >= 4  # kubelet, containerd, kube-proxy, the pod's shim

    started = time.monotonic()
    try:
        node.stop()
        print(f"node stop {time.monotonic() - started:.1f} s")
        assert node.stop_problems == []
        assert leftovers(real_node_baseline, host_state()) == []
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        restart_real_node(plane)


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _node_pids() -> list[int]:
    """Pids of the processes running a binary of the node cache (kubelet, containerd, the
    shims, kube-proxy)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "exe")).parent == BIN_DIR:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_sigkilled_harness_leaves_nothing_behind(
    real_node_plane: ControlPlane, real_node_baseline: HostState, tmp_path: Path
) -> None:
    """A harness (``python -m devstack up --full --node``) SIGKILLed while a bridge pod runs
    behind a Service: its kubelet, containerd and kube-proxy die with it, and the node's
    watchdog sweeps the rest (the shim, the container, the veth and the bridge, kube-proxy's
    tables, the cgroups, the host directories) within seconds, with no later node needed."""
    plane = real_node_plane
    assert plane.node is not None
    plane.node.stop()  # one real node per machine: the harness gets it
    harness = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", "--full", "--node"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "up.log").open("w"),
        text=True,
    )
    try:
        info = _ready_line(harness, timeout_s=180)
        env = {**os.environ, "KUBECONFIG": info["kubeconfig"]}
        (port,) = free_ports(1)
        objects = [
            deployment("killed", port=port, host_network=False),
            service("killed", port=port),
        ]
        kubectl = [str(plane.bin_dir / "kubectl"), "-n", "default"]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        subprocess.run([*kubectl, "apply", "-f", "-"], input=body, env=env, check=True, text=True)
        subprocess.run(
            [*kubectl, "rollout", "status", "deployment/killed", "--timeout=90s"],
            env=env,
            check=True,
            capture_output=True,
        )
        pids = _node_pids()
        assert any(_exe(pid).endswith("shim-runc-v2") for pid in pids)
        harness.kill()
        harness.wait(30)
        killed = time.monotonic()
        wait_until(
            lambda: not _node_pids() and leftovers(real_node_baseline, host_state()) == [],
            timeout_s=60,
            what="the watchdog's sweep",
            poll_s=0.5,
        )
        print(f"\nswept {time.monotonic() - killed:.1f} s after the harness's SIGKILL")
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(30)
        restart_real_node(plane)


def _ready_line(harness: subprocess.Popen[str], *, timeout_s: float) -> dict[str, Any]:
    """The JSON of ``python -m devstack up``'s ``READY {...}`` line (read by a thread: a
    silent harness cannot hang the test)."""
    assert harness.stdout is not None
    stdout = harness.stdout
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith("READY "):
            loaded: dict[str, Any] = json.loads(line.removeprefix("READY "))
            return loaded
    raise AssertionError(f"no READY line from devstack up (exit {harness.poll()})")
