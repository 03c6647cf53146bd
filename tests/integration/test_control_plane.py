"""The test control plane itself: pinned versions, API, CEL admission, RBAC, scheduling on
KWOK CPU and GPU nodes, helm, and a teardown that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.k8s import build as k8s_build
from devstack.k8s.build import HELM_VERSION, KUBE_VERSION
from devstack.k8s.controlplane import ControlPlane
from devstack.k8s.nodes import GPU_PRESENT_LABEL, GPU_RESOURCE, GPU_TAINT
from devstack.process import alive, group_members
from tests.fixtures.cluster import Helm, Kubectl

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


# -- the build -----------------------------------------------------------------------------


def test_build_script_agrees_the_cache_is_complete_and_does_nothing(k8s_bin_dir: Path) -> None:
    assert k8s_build.is_built()
    assert sorted(p.name for p in k8s_bin_dir.iterdir()) == sorted(k8s_build.BINARIES)
    again = subprocess.run(
        ["bash", str(k8s_build.BUILD_SCRIPT)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(k8s_bin_dir)
    assert "cache complete" in again.stderr


# -- plain control plane: etcd + kube-apiserver -------------------------------------------


def test_client_and_server_report_the_pinned_version(kubectl: Kubectl) -> None:
    assert KUBE_VERSION.startswith("v1.34.")
    versions = _json(kubectl("version", "-o", "json"))
    assert versions["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert versions["serverVersion"]["gitVersion"] == KUBE_VERSION
    assert (versions["serverVersion"]["major"], versions["serverVersion"]["minor"]) == ("1", "34")
    assert versions["serverVersion"]["gitTreeState"] == "clean"


def test_api_resources_answer_with_core_apps_rbac_and_crds(kubectl: Kubectl) -> None:
    names = set(kubectl("api-resources", "-o", "name").stdout.split())
    assert {
        "pods",
        "namespaces",
        "secrets",
        "serviceaccounts",
        "deployments.apps",
        "roles.rbac.authorization.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "leases.coordination.k8s.io",
    } <= names


def test_namespace_is_created_active_with_its_service_account(
    kubectl: Kubectl, namespace: str
) -> None:
    assert kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}").stdout == (
        "Active"
    )
    assert kubectl("get", "serviceaccount", "default", "-o", "name").stdout.strip() == (
        "serviceaccount/default"
    )


def test_rbac_refuses_a_service_account_what_it_was_not_granted(
    kubectl: Kubectl, namespace: str
) -> None:
    nobody = f"--as=system:serviceaccount:{namespace}:default"
    assert kubectl("auth", "can-i", "list", "secrets").stdout.strip() == "yes"
    refused = kubectl("auth", "can-i", "list", "secrets", nobody, check=False)
    assert (refused.returncode, refused.stdout.strip()) == (1, "no")
    denied = kubectl("get", "secrets", nobody, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    kubectl("create", "role", "read-secrets", "--verb=list", "--resource=secrets")
    kubectl(
        "create",
        "rolebinding",
        "read-secrets",
        "--role=read-secrets",
        f"--serviceaccount={namespace}:default",
    )
    assert kubectl("get", "secrets", nobody).returncode == 0


@pytest.fixture
def widget_crd(cluster: ControlPlane) -> Iterator[str]:
    """A namespaced CRD with an OpenAPI schema and a CEL rule; yields its name."""
    name = "widgets.test.rolegate.dev"
    spec_schema = {
        "type": "object",
        "required": ["minReplicas", "maxReplicas"],
        "properties": {
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "enum": ["fast", "safe"]},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.maxReplicas", "message": CEL_MESSAGE}
        ],
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "test.rolegate.dev",
            "scope": "Namespaced",
            "names": {
                "kind": "Widget",
                "plural": "widgets",
                "singular": "widget",
                "listKind": "WidgetList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl(["apply", "-f", "-"], input=json.dumps(crd))
    cluster.kubectl(["wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s"])
    yield name
    cluster.kubectl(["delete", "crd", name, "--wait=false"], check=False)


def _widget(name: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "test.rolegate.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_crd_cel_rule_accepts_good_and_refuses_bad_objects(
    kubectl: Kubectl, widget_crd: str
) -> None:
    kubectl("apply", "-f", "-", input=_widget("good", minReplicas=1, maxReplicas=3, mode="safe"))
    assert kubectl("get", "widget", "good", "-o", "jsonpath={.spec.maxReplicas}").stdout == "3"

    bad = kubectl(
        "apply", "-f", "-", input=_widget("bad", minReplicas=5, maxReplicas=2), check=False
    )
    assert bad.returncode != 0
    assert CEL_MESSAGE in bad.stderr
    missing = kubectl("get", "widget", "bad", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr

    off_schema = kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=_widget("turbo", minReplicas=1, maxReplicas=2, mode="turbo"),
    )
    assert off_schema.returncode != 0
    assert 'Unsupported value: "turbo"' in off_schema.stderr


# -- helm ------------------------------------------------------------------------------------


def _tiny_chart(root: Path) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": "tiny", "version": "0.1.0"})
    )
    (chart / "values.yaml").write_text(yaml.safe_dump({"greeting": "hello"}))
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: {{ .Release.Name }}-tiny\n"
        "data:\n"
        "  greeting: {{ .Values.greeting | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    return chart


def test_helm_reports_its_pinned_version(helm: Helm) -> None:
    assert helm("version", "--template={{.Version}}").stdout == HELM_VERSION


def test_helm_templates_offline_and_installs_into_the_cluster(
    helm: Helm, kubectl: Kubectl, tmp_path: Path
) -> None:
    chart = _tiny_chart(tmp_path)
    rendered = yaml.safe_load(helm("template", "demo", str(chart), "--set", "greeting=hi").stdout)
    assert rendered["metadata"]["name"] == "demo-tiny"
    assert rendered["data"]["greeting"] == "hi"
    # Offline, helm assumes the Kubernetes minor it was built for (build.sh's ldflags).
    assert rendered["data"]["kubeVersion"] == f"{KUBE_VERSION.rsplit('.', 1)[0]}.0"

    helm("install", "demo", str(chart), "--wait", "--timeout=60s")
    data = _json(kubectl("get", "configmap", "demo-tiny", "-o", "json"))["data"]
    assert data == {"greeting": "hello", "kubeVersion": KUBE_VERSION}
    assert "deployed" in helm("status", "demo").stdout


# -- full control plane: controller-manager, scheduler, kwok nodes --------------------------


def _pod(name: str, *, gpus: int, tolerate_gpu_taint: bool) -> str:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "registry.invalid/model-server:1",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ]
    }
    if tolerate_gpu_taint:
        spec["tolerations"] = [
            {"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}
        ]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def _get_pod(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = cluster.api(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return pod


def _scheduled(pod: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})


def _wait_running(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    cluster.wait_for(
        f"pod {name} Running",
        lambda: _get_pod(cluster, namespace, name)["status"].get("phase") == "Running",
        timeout_s=60,
    )
    return _get_pod(cluster, namespace, name)


def _wait_unschedulable(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    cluster.wait_for(
        f"pod {name} Unschedulable",
        lambda: _scheduled(_get_pod(cluster, namespace, name)).get("reason") == "Unschedulable",
        timeout_s=60,
    )
    return _get_pod(cluster, namespace, name)


@pytest.mark.full_cluster
def test_deployment_becomes_a_replicaset_and_running_pods(
    kubectl: Kubectl, cluster: ControlPlane
) -> None:
    kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=2")
    kubectl("rollout", "status", "deployment/web", "--timeout=90s")

    replicasets = _json(kubectl("get", "replicasets", "-l", "app=web", "-o", "json"))["items"]
    assert len(replicasets) == 1
    owner = replicasets[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Deployment", "web")

    pods = _json(kubectl("get", "pods", "-l", "app=web", "-o", "json"))["items"]
    assert len(pods) == 2
    cpu_nodes = {spec.name for spec in cluster.node_specs if not spec.gpus}
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["name"] == replicasets[0]["metadata"]["name"]
        assert pod["status"]["phase"] == "Running"
        # Without a toleration the GPU taint keeps them on the CPU nodes.
        assert pod["spec"]["nodeName"] in cpu_nodes


@pytest.mark.full_cluster
def test_gpu_pods_bind_only_to_tolerated_gpu_nodes_with_enough_free_gpus(
    kubectl: Kubectl, cluster: ControlPlane, namespace: str
) -> None:
    gpu_nodes = _json(kubectl("get", "nodes", "-l", f"{GPU_PRESENT_LABEL}=true", "-o", "json"))
    capacity = {
        n["metadata"]["name"]: n["status"]["allocatable"][GPU_RESOURCE] for n in gpu_nodes["items"]
    }
    assert capacity == {"kwok-gpu-0": "2", "kwok-gpu-1": "2"}
    in_use = _json(kubectl("get", "pods", "--all-namespaces", "-o", "json"))["items"]
    assert not [p for p in in_use if p["spec"].get("nodeName") in capacity], "GPUs already in use"

    kubectl("create", "-f", "-", input=_pod("untolerated", gpus=1, tolerate_gpu_taint=False))
    refused = _wait_unschedulable(cluster, namespace, "untolerated")
    assert "untolerated taint" in _scheduled(refused)["message"]
    kubectl("delete", "pod", "untolerated", "--wait=false")

    kubectl("create", "-f", "-", input=_pod("gpu-a", gpus=2, tolerate_gpu_taint=True))
    node_a = _wait_running(cluster, namespace, "gpu-a")["spec"]["nodeName"]
    kubectl("create", "-f", "-", input=_pod("gpu-b", gpus=2, tolerate_gpu_taint=True))
    node_b = _wait_running(cluster, namespace, "gpu-b")["spec"]["nodeName"]
    assert {node_a, node_b} == set(capacity), "the second pod must go where GPUs are free"

    kubectl("create", "-f", "-", input=_pod("gpu-c", gpus=1, tolerate_gpu_taint=True))
    full = _wait_unschedulable(cluster, namespace, "gpu-c")
    assert f"Insufficient {GPU_RESOURCE}" in _scheduled(full)["message"]
    assert "nodeName" not in full["spec"]


@pytest.mark.full_cluster
def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    kubectl: Kubectl, cluster: ControlPlane, namespace: str
) -> None:
    kubectl("create", "-f", "-", input=_pod("greedy", gpus=3, tolerate_gpu_taint=True))
    pod = _wait_unschedulable(cluster, namespace, "greedy")
    condition = _scheduled(pod)
    assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    assert f"Insufficient {GPU_RESOURCE}" in condition["message"]
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


# -- teardown --------------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen(["true"]) as proc:
        proc.wait()
    return proc.pid


def _fail_inside(plane: ControlPlane, seen: dict[str, Any]) -> None:
    """Enter ``plane``, record what it runs, check it is up, then raise RuntimeError."""
    with plane:
        seen["pids"], seen["tmp_dir"] = plane.pids(), plane.tmp_dir
        assert set(seen["pids"]) == {"etcd", "kube-apiserver"}
        assert all(alive(pid) for pid in seen["pids"].values())
        assert plane.kubeconfig.is_file()
        raise RuntimeError("boom")


def test_an_error_in_the_block_stops_every_process_and_removes_the_temp_dir(
    k8s_bin_dir: Path,
) -> None:
    # What a SIGKILLed harness leaves: a directory whose owner is gone. The next start sweeps it.
    orphan = Path(tempfile.mkdtemp(prefix="rolegate-k8s-"))
    (orphan / "owner.pid").write_text(str(_dead_pid()))
    seen: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside(ControlPlane(bin_dir=k8s_bin_dir), seen)
    pids: dict[str, int] = seen["pids"]
    assert not [name for name, pid in pids.items() if alive(pid) or group_members(pid)]
    assert not seen["tmp_dir"].exists()
    assert not orphan.exists()


def test_sigterm_stops_a_full_control_plane_run_by_hand(k8s_bin_dir: Path, tmp_path: Path) -> None:
    stderr_path = tmp_path / "harness.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", "up", "--full"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        watchdog = threading.Timer(240, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            ready = next((line for line in proc.stdout if line.startswith("READY ")), None)
            assert ready is not None, stderr_path.read_text()
            info = json.loads(ready.removeprefix("READY "))
            pids: dict[str, int] = info["pids"]
            assert set(pids) == {
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
            }
            assert all(alive(pid) for pid in pids.values())
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 60 s after SIGTERM:\n{stderr_path.read_text()}")
            assert status == 0, stderr_path.read_text()
            assert "stopped" in stderr_path.read_text()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    assert not [name for name, pid in pids.items() if alive(pid) or group_members(pid)]
    assert not Path(info["tmp_dir"]).exists()
